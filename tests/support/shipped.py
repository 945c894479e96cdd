"""What users install, built once per test session outside the checkout, for the tests to run.

The development venv has the checkout installed editable, which hides packaging mistakes (a
module the wheel leaves out, a dependency functions/requirements.txt does not name). So the
end-to-end tests run the shipped forms instead:

  wheel_venv()        `python -m build` (an sdist, then the wheel built from that sdist), the
                      wheel installed non-editable into a fresh venv: what `pip install` users,
                      scripts/install-adapter.sh and the edge image run.
  functions_deploy()  functions/ copied alone into an empty folder (with terraform's archive
                      excludes) and a fresh venv from its requirements.txt alone: what the Cloud
                      Functions gen2 build deploys.
  image_venv()        the Dockerfile's build stage reproduced (support/image_recipe.py).

Everything lives in one temporary folder outside the checkout, removed at exit. Setting
DICOM_ADAPTER_TEST_INSTALL=checkout makes the end-to-end tests run the editable checkout instead
(a quicker loop while developing; refused under CI=true, and tests/test_shipped.py checks the
shipped forms either way).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO / "functions"
# terraform/functions.tf's archive_file excludes, as shutil patterns (test_shipped checks they agree).
FUNCTIONS_ARCHIVE_EXCLUDES = ("__pycache__", "*.pyc")
PIP_QUIET = ("--quiet", "--disable-pip-version-check")


def use_checkout() -> bool:
    """Whether DICOM_ADAPTER_TEST_INSTALL=checkout asks for the editable checkout (never in CI)."""
    if os.environ.get("DICOM_ADAPTER_TEST_INSTALL", "shipped") != "checkout":
        return False
    if os.environ.get("CI") == "true":
        raise RuntimeError("DICOM_ADAPTER_TEST_INSTALL=checkout is a development shortcut; CI tests what users install")
    return True


@functools.cache
def shipped_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="dicom-adapter-shipped-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def run_logged(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 900) -> None:
    """Run a build step; a failure raises with the step's own output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: a shipped install must not see the checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def base_python() -> str:
    """The interpreter the development venv was made from (a venv made from a venv's python is
    made from the same base anyway; naming it keeps the new venv independent of .venv)."""
    return getattr(sys, "_base_executable", sys.executable)


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.path / "bin" / name

    def pip_install(self, *args: str, cwd: Path | None = None) -> None:
        run_logged([str(self.python), "-m", "pip", "install", *PIP_QUIET, *args], cwd=cwd, env=clean_env())


def create_venv(path: Path) -> Venv:
    run_logged([base_python(), "-m", "venv", str(path)], env=clean_env())
    return Venv(path)


@dataclass(frozen=True)
class Distributions:
    sdist: Path
    wheel: Path


@functools.cache
def built_distributions() -> Distributions:
    """`python -m build` of the checkout: the sdist, then the wheel built from the unpacked sdist
    (so the wheel proves the sdist is complete too)."""
    out = shipped_root() / "dist"
    run_logged([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], env=clean_env())
    (sdist,) = out.glob("dicom_adapter-*.tar.gz")
    (wheel,) = out.glob("dicom_adapter-*.whl")
    return Distributions(sdist, wheel)


@functools.cache
def wheel_venv() -> Venv:
    """A fresh venv with the built wheel installed (regular, non-editable)."""
    env = create_venv(shipped_root() / "wheel-venv")
    env.pip_install(str(built_distributions().wheel))
    return env


@dataclass(frozen=True)
class FunctionsDeploy:
    """functions/ as Cloud Functions receives it: the source folder and the venv built from it."""

    source: Path
    venv: Venv

    def command(self, target: str, port: int, signature: str | None = None) -> list[str]:
        """functions-framework as the Python buildpack starts it (cwd: the source folder)."""
        command = [str(self.venv.script("functions-framework")), "--target", target, "--source", "main.py",
                   "--port", str(port), "--host", "127.0.0.1"]
        return command + (["--signature-type", signature] if signature else [])


@functools.cache
def functions_deploy() -> FunctionsDeploy:
    root = shipped_root() / "functions-deploy"
    source = root / "source"
    shutil.copytree(FUNCTIONS_DIR, source, ignore=shutil.ignore_patterns(*FUNCTIONS_ARCHIVE_EXCLUDES))
    env = create_venv(root / "venv")
    env.pip_install("-r", str(source / "requirements.txt"))
    return FunctionsDeploy(source, env)


def adapter_program() -> list[str]:
    """The `dicom-adapter` command the end-to-end tests run: the wheel's console script."""
    installed = Venv(Path(sys.prefix)) if use_checkout() else wheel_venv()
    return [str(installed.script("dicom-adapter"))]


def functions_under_test() -> FunctionsDeploy:
    """The functions the end-to-end tests serve: the deployed copy and its own venv."""
    return FunctionsDeploy(FUNCTIONS_DIR, Venv(Path(sys.prefix))) if use_checkout() else functions_deploy()
