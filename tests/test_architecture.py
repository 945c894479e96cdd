"""The edge's layout rules (edge_listener/__init__.py, docs/architecture.md), checked on the source.

- Imports run one way: cli → runtime → intake / front → services → buffer → the shared package
  (dicom_adapter), which never imports the edge; no import cycles between modules.
- pynetdicom's internals are named only in front/fastpath/: no other module of the edge reads,
  writes or imports a private pynetdicom attribute.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pynetdicom
import pytest

REPO = Path(__file__).resolve().parents[1]
EDGE = REPO / "edge_listener"
SHARED = REPO / "functions" / "dicom_adapter"
FAST_PATH = EDGE / "front" / "fastpath"

# A package may import its own modules and those of a lower rank; never a higher or equal one.
RANKS = {"__main__": 7, "cli": 6, "runtime": 5, "intake": 4, "front": 4, "services": 3, "buffer": 2, "metrics": 1, "stop_signals": 1}
# Names of pynetdicom's that its documentation offers for use despite the underscore.
PUBLIC_BY_DOCUMENTATION = {"_config"}


def _modules(root: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package, *parts])] = path
    return found


def _imports(module: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """The modules `module` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


EDGE_MODULES = _modules(EDGE, "edge_listener")


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _own(imported: str) -> str | None:
    """The edge module an import names (the longest known prefix), or None."""
    parts = imported.split(".")
    for end in range(len(parts), 1, -1):
        candidate = ".".join(parts[:end])
        if candidate in EDGE_MODULES:
            return candidate
    return None


def test_every_module_of_the_edge_is_in_a_package_of_the_picture():
    loose = [m for m in EDGE_MODULES if m != "edge_listener" and _package(m) not in RANKS]
    assert loose == []


def test_imports_run_one_way():
    wrong = []
    for module, path in EDGE_MODULES.items():
        package = _package(module)
        if package is None:
            continue
        for imported in _imports(module, path):
            target = _own(imported)
            if target is None or target == "edge_listener":
                continue
            target_package = _package(target)
            if target_package != package and RANKS[target_package] >= RANKS[package]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_shared_package_never_imports_the_edge():
    wrong = [
        f"{module} imports {imported}"
        for module, path in _modules(SHARED, "dicom_adapter").items()
        for imported in _imports(module, path)
        if imported.split(".")[0] == "edge_listener"
    ]
    assert wrong == []


def test_no_import_cycles():
    graph = {
        module: {target for imported in _imports(module, path, top_level_only=True) if (target := _own(imported)) and target != module}
        for module, path in EDGE_MODULES.items()
    }
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" → ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package's __init__ imported by its own modules is not a cycle of modules.
    assert [c for c in cycles if not all(EDGE_MODULES[m].name == "__init__.py" for m in c.split(" → ")[:1])] == []


def _private_names_of_pynetdicom() -> set[str]:
    """Every private attribute, method and module-level name pynetdicom defines."""
    names: set[str] = set()
    for path in Path(pynetdicom.__file__).parent.rglob("*.py"):
        if "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_") and not node.name.startswith("__"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_") and not node.attr.startswith("__"):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id.startswith("_") and not node.id.startswith("__"):
                names.add(node.id)
    return names - PUBLIC_BY_DOCUMENTATION


PYNETDICOM_PRIVATE = _private_names_of_pynetdicom()


def _named_private(path: Path) -> set[str]:
    """pynetdicom private names this module uses that it does not define itself: attributes
    read or written (`assoc._accepted_cx`) and names imported from pynetdicom."""
    tree = ast.parse(path.read_text(), str(path))
    defined: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute):
            if isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                defined.add(node.attr)
            else:
                used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            used.update(alias.name for alias in node.names if alias.name.startswith("_"))
        elif isinstance(node, (ast.AnnAssign, ast.Assign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    defined.add(target.id)
    return (used - defined) & PYNETDICOM_PRIVATE


def test_only_the_fast_path_names_private_pynetdicom_attributes():
    outside = {
        module: sorted(names)
        for module, path in EDGE_MODULES.items()
        if not path.is_relative_to(FAST_PATH) and (names := _named_private(path))
    }
    assert outside == {}


def test_the_private_name_check_finds_what_the_fast_path_uses():
    """The check above is not vacuous: it sees the fast path's own uses."""
    used = set().union(*(_named_private(path) for path in FAST_PATH.glob("*.py")))
    assert {"_accepted_cx", "_idle_timer", "_kill_thread", "_c_find_scp", "_move_scp", "_recv_pdu"} <= used


@pytest.mark.parametrize("service", ["store", "query", "retrieve", "commitment"])
def test_each_service_binds_plain_pynetdicom_handlers(service):
    """The services speak pynetdicom's public handler protocol: none of them imports the fast path."""
    path = EDGE / "services" / f"{service}.py"
    assert not any(name.startswith("edge_listener.front") for name in _imports(f"edge_listener.services.{service}", path))
