"""The edge image's recipe (Dockerfile + .dockerignore) reproduced without a container engine.

No Docker runs on these machines, so the image cannot be built; what can be checked is that its
recipe installs a working edge. This reads the Dockerfile and does what its build stage does,
under a temporary root instead of `/`: the build context filtered by .dockerignore (Docker's
rules: patterns in order, the last match wins, `!` re-includes, `**` spans folders, a pattern
that matches a folder matches all below it), each COPY into WORKDIR, and each RUN command (split
on `&&`) with its absolute paths moved under the root and `python` being the Python of the FROM
image's version. The final stage's `COPY --from=build` copies to the same paths, so the venv is
run where the build stage made it, with the final stage's ENV and ENTRYPOINT.

Only the instructions the recipe uses are understood (FROM, ENV, WORKDIR, COPY, RUN, and the
run-time ones the final stage sets); anything else fails loudly rather than being skipped.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .shipped import REPO, base_python, clean_env, run_logged, shipped_root

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
RUNTIME_ONLY = {"USER", "EXPOSE", "HEALTHCHECK", "LABEL"}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions grouped by FROM (each group starts with its FROM)."""
    grouped: list[list[tuple[str, str]]] = []
    for op, arg in instructions:
        if op == "FROM":
            grouped.append([])
        grouped[-1].append((op, arg))
    return grouped


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class DockerIgnore:
    """.dockerignore's patterns: (re-included?, regex) in file order."""

    patterns: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def read(cls, path: Path = DOCKERIGNORE) -> "DockerIgnore":
        patterns = []
        for line in path.read_text().splitlines() if path.exists() else []:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((negated, _pattern_regex(cleaned)))
        return cls(tuple(patterns))

    def excludes(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negated, regex in self.patterns:
            if any(regex.match(prefix) for prefix in prefixes):
                excluded = not negated
        return excluded


def build_context(source: Path, ignore: DockerIgnore) -> list[str]:
    """Relative paths of the files `docker build` would send from `source`."""
    files = []
    for folder, dirs, names in os.walk(source):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), source)
            if not ignore.excludes(relative):
                files.append(relative)
    return sorted(files)


@dataclass
class ImageBuild:
    """The build stage's result under `root`, and how the final stage runs it."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    def under_root(self, path: str) -> str:
        return str(self.root / path.lstrip("/"))

    def command(self, *args: str) -> list[str]:
        """ENTRYPOINT + args, its program looked up on the image's PATH."""
        program, *rest = self.entrypoint
        found = shutil.which(program, path=self.env["PATH"])
        if not found:
            raise RuntimeError(f"ENTRYPOINT {program} is not on the image's PATH {self.env['PATH']}")
        return [found, *rest, *args]


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def _parse_env(arg: str, env: dict[str, str]) -> dict[str, str]:
    values = {}
    for item in shlex.split(arg):
        name, _, value = item.partition("=")
        values[name] = _expand(value, {**env, **values})
    return values


def _copy(context: Path, sources: list[str], dest: Path) -> None:
    for source in sources:
        matches = sorted(context.glob(source.rstrip("/"))) if any(c in source for c in "*?[") else [context / source.rstrip("/")]
        if not matches or not all(m.exists() for m in matches):
            raise RuntimeError(f"COPY {source}: not in the build context (.dockerignore excludes it?)")
        for match in matches:
            if match.is_dir():
                shutil.copytree(match, dest, dirs_exist_ok=True)  # a folder's contents, as Docker copies
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(match, dest / match.name)


def _python_of(from_image: str) -> str:
    """The interpreter standing in for the FROM image's `python` (same major.minor)."""
    wanted = re.match(r"python:(\d+\.\d+)", from_image)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not wanted or wanted.group(1) != here:
        raise RuntimeError(f"the image is FROM {from_image}; this test runs Python {here}")
    return base_python()


def _run(build: ImageBuild, command: str, cwd: Path, env: dict[str, str], python: str) -> None:
    for step in command.split("&&"):
        argv = shlex.split(step)
        argv = [build.under_root(a) if a.startswith("/") else a for a in argv]
        if argv[0] == "python":
            argv[0] = python
        elif not os.path.isabs(argv[0]) and not shutil.which(argv[0]):
            raise RuntimeError(f"RUN {step.strip()}: {argv[0]} is not available here")
        run_logged(argv, cwd=cwd, env=env)


@functools.cache
def image_build() -> ImageBuild:
    """The Dockerfile's build stage done under a temporary root; the final stage's ENV and
    ENTRYPOINT with the root's paths."""
    build_stage, *_, final_stage = stages(dockerfile_instructions())
    build = ImageBuild(shipped_root() / "image-root")
    context = shipped_root() / "image-context"
    for relative in build_context(REPO, DockerIgnore.read()):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, context / relative)

    env = clean_env()
    workdir = build.root
    python = _python_of(build_stage[0][1].split()[0])
    for op, arg in build_stage[1:]:
        if op == "ENV":
            env.update(_parse_env(arg, env))
        elif op == "WORKDIR":
            workdir = Path(build.under_root(arg))
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(arg)
            _copy(context, sources, workdir / dest)
        elif op == "RUN":
            _run(build, arg, workdir, env, python)
        else:
            raise RuntimeError(f"the build stage's {op} is not reproduced here")

    runtime_env = clean_env()
    for op, arg in final_stage[1:]:
        if op == "ENV":
            values = _parse_env(arg, runtime_env)
            if "PATH" in values:
                # Folders the build made (the venv's bin/) are under the root; the rest are this machine's.
                values["PATH"] = os.pathsep.join(
                    build.under_root(p) if Path(build.under_root(p)).is_dir() else p for p in values["PATH"].split(os.pathsep)
                )
            runtime_env.update(values)
            build.env.update(values)
        elif op == "COPY":
            if not arg.startswith("--from=build "):
                raise RuntimeError(f"the final stage's COPY {arg} is not reproduced here")
            source, dest = shlex.split(arg)[1:]
            if source != dest:
                raise RuntimeError(f"COPY --from=build {source} {dest}: the venv must keep its path (its scripts name it)")
        elif op == "ENTRYPOINT":
            build.entrypoint = list(json.loads(arg))
        elif op == "CMD":
            build.cmd = list(json.loads(arg))
        elif op not in RUNTIME_ONLY | {"RUN"}:  # its RUNs make the non-root user, which changes nothing here
            raise RuntimeError(f"the final stage's {op} is not reproduced here")
    if not build.entrypoint:
        raise RuntimeError("the Dockerfile's final stage has no ENTRYPOINT")
    return build
