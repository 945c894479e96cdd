"""What users install, checked as they receive it, not as the checkout runs.

support/shipped.py builds each shipped form once per session, outside the checkout: the sdist
and the wheel (`python -m build`) installed into a fresh venv, and functions/ copied alone with a
fresh venv from its requirements.txt. The end-to-end tests of the other modules run those (the
adapter commands from the wheel's venv, functions-framework from the deployed copy's); the tests
here check what an end-to-end test would only show as a confusing failure: a module the package
leaves out, a dependency requirements.txt does not name, pins that disagree, an entry point that
does not start, a pynetdicom the edge was not built for.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support.gcp import FunctionServer
from support.shipped import (
    FUNCTIONS_ARCHIVE_EXCLUDES,
    FUNCTIONS_DIR,
    REPO,
    built_distributions,
    clean_env,
    functions_deploy,
    wheel_venv,
)
from support.terraform import load_module

SOURCE_PACKAGES = {"edge_listener": REPO / "edge_listener", "dicom_adapter": FUNCTIONS_DIR / "dicom_adapter"}
ENTRY_POINTS = ("stow_upload", "dead_letter", "sweep", "qido", "export_fanout", "deliver")


def source_modules() -> set[str]:
    """Every module of the two packages as a path inside the wheel (edge_listener/intake/x.py)."""
    return {
        f"{package}/{path.relative_to(root).as_posix()}"
        for package, root in SOURCE_PACKAGES.items()
        for path in root.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def module_names() -> set[str]:
    names = set()
    for path in source_modules():
        parts = path.removesuffix(".py").split("/")
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def requirement_names(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    return {canonicalize_name(r.name): r for r in requirements}


def test_the_wheel_holds_every_module_of_the_source_tree_and_nothing_else():
    wheel = zipfile.ZipFile(built_distributions().wheel)
    shipped = {name for name in wheel.namelist() if name.endswith(".py")}
    assert source_modules() - shipped == set(), "modules missing from the wheel (pyproject's package discovery)"
    assert shipped - source_modules() == set(), "modules in the wheel that the source tree does not have"
    entry_points = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "dicom-adapter = edge_listener.cli:main" in entry_points


def test_the_sdist_holds_every_module_and_what_the_build_needs():
    with tarfile.open(built_distributions().sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    expected = {path.replace("dicom_adapter/", "functions/dicom_adapter/", 1) for path in source_modules()}
    assert expected - names == set()
    assert {"pyproject.toml", "README.md"} <= names


IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
found = {}
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    found[top] = package.__file__
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), top + "."):
        found[info.name] = importlib.import_module(info.name).__file__
print(json.dumps(found))
"""


def _import_every_module(python: Path, cwd: Path, *packages: str) -> dict[str, str]:
    result = subprocess.run([str(python), "-c", IMPORT_EVERY_MODULE, *packages], cwd=cwd, env=clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_every_module_imports_from_the_wheel_in_a_fresh_venv(tmp_path: Path):
    installed = wheel_venv()
    found = _import_every_module(installed.python, tmp_path, "edge_listener", "dicom_adapter")
    assert set(found) == module_names()
    outside = {name: path for name, path in found.items() if not Path(path).is_relative_to(installed.path)}
    assert outside == {}, "imported from outside the venv (the checkout?)"


def test_every_module_of_the_deployed_functions_imports_from_their_own_venv():
    """What the gen2 build gives the functions: main.py and every dicom_adapter module (the
    DIMSE sender that only some entry points import lazily, too) import from that venv alone."""
    deploy = functions_deploy()
    found = _import_every_module(deploy.venv.python, deploy.source, "main", "dicom_adapter")
    assert set(found) == {"main"} | {name for name in module_names() if name.startswith("dicom_adapter")}
    assert all(Path(path).is_relative_to(deploy.source) for path in found.values())


def test_the_functions_copy_leaves_out_what_terraforms_archive_leaves_out():
    archive = load_module().resource("archive_file", "functions", kind="data")
    assert archive["excludes"] == ["**/__pycache__/**", "**/*.pyc"]
    assert FUNCTIONS_ARCHIVE_EXCLUDES == ("__pycache__", "*.pyc")


def test_pynetdicom_is_pinned_to_one_version_everywhere():
    from edge_listener.front.fastpath.guard import PYNETDICOM_VERSION

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    edge = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}["pynetdicom"]
    functions = requirement_names(FUNCTIONS_DIR / "requirements.txt")["pynetdicom"]
    assert str(edge.specifier) == str(functions.specifier) == f"=={PYNETDICOM_VERSION}"
    for python in (wheel_venv().python, functions_deploy().venv.python):
        version = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('pynetdicom'))"],
                                 capture_output=True, text=True, env=clean_env(), check=True).stdout.strip()
        assert version == PYNETDICOM_VERSION


def _under_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs (at module level or inside functions), not those under
    `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _under_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _local_module_path(name: str) -> Path | None:
    base = FUNCTIONS_DIR.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def external_imports_of_main() -> set[str]:
    """The modules outside functions/ that main.py needs at run time, following every import of
    functions/'s own modules (lazy ones inside functions too), as dotted names."""
    external: set[str] = set()
    seen: set[str] = set()
    pending = ["main"]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _local_module_path(module)
        assert path, module
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                parent = f"{base}.{node.module}" if node.module else base
                names = [parent] + [f"{parent}.{alias.name}" for alias in node.names]
            else:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if _local_module_path(name):
                    pending.append(name)
                elif name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] not in ("main", "dicom_adapter"):
                    external.add(name)
    return external


@cache
def _distribution_of_file() -> dict[Path, str]:
    owners = {}
    for distribution in metadata.distributions():
        for file in distribution.files or []:
            owners[Path(distribution.locate_file(file)).resolve()] = canonicalize_name(distribution.metadata["Name"])
    return owners


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides `module` (None: not a module, e.g. a class)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen", "namespace"):
        return None  # a namespace package (google, google.cloud) belongs to no one distribution
    return _distribution_of_file().get(Path(spec.origin).resolve())


# pydicom's codec plugins: nothing imports them, pydicom finds them installed (the transforms'
# transcoding needs them, and numpy, which pydicom's pixel handling imports lazily).
PYDICOM_PLUGINS = {"numpy", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pylibjpeg-rle", "pyjpegls"}


def test_requirements_name_every_distribution_main_imports():
    """functions/requirements.txt against main.py's whole import closure, mapped to distributions
    through this venv's installed metadata: nothing missing (a deployed function would crash at
    import), nothing named that no module imports (but pydicom's plugins, checked below)."""
    needed = {d for d in map(distribution_of, external_imports_of_main()) if d}
    named = set(requirement_names(FUNCTIONS_DIR / "requirements.txt"))
    assert {"pynetdicom", "pydicom", "google-cloud-storage", "functions-framework"} <= needed, needed
    assert needed - named == set(), "imported by main.py's closure but not in functions/requirements.txt"
    assert named - needed - PYDICOM_PLUGINS == set(), "in functions/requirements.txt but imported by nothing main.py runs"
    assert PYDICOM_PLUGINS <= named


def test_the_deployed_functions_can_encode_every_lossless_target():
    """The plugins requirements.txt names are the ones pydicom encodes the transforms' lossless
    targets with, in the functions' own venv."""
    code = (
        "from pydicom.pixels import get_encoder; from dicom_adapter.transforms.transcode import check_target; "
        "targets = ['1.2.840.10008.1.2.4.90', '1.2.840.10008.1.2.4.80', '1.2.840.10008.1.2.5']; "
        "[check_target(t, allow_lossy=False) for t in targets]; "
        "print(all(get_encoder(t).is_available for t in targets))"
    )
    deploy = functions_deploy()
    result = subprocess.run([str(deploy.venv.python), "-c", code], capture_output=True, text=True, cwd=deploy.source, env=clean_env(), timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]


@pytest.mark.parametrize("target", ENTRY_POINTS)
def test_each_entry_point_starts_under_functions_framework_from_the_deployed_copy(tmp_path: Path, target: str):
    """functions-framework from the venv built from requirements.txt alone, in the folder that
    holds only functions/'s files: the server imports main.py, finds the target and listens.
    (The cloud end-to-end tests then drive each one with real events.)"""
    deploy = functions_deploy()
    server = FunctionServer(tmp_path, target, {"DICOM_ADAPTER_DICOMWEB_ADDRESS": "http://127.0.0.1:9/dicom-web"}, deploy=deploy)
    assert server.process.cmd[0] == str(deploy.venv.script("functions-framework")) and server.process.cwd == str(deploy.source)
    server.start()
    try:
        assert server.process.is_running(), server.logs()
        assert "Traceback" not in server.logs()
    finally:
        server.stop()
