"""The package layout: imports point down the data flow only, and no module imports itself in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

# Each part of `workbench` with its layer: a module may import only its own layer or earlier ones.
LAYERS = {
    "errors": 0,
    "clock": 0,
    "paths": 0,
    "config": 0,
    "roles": 0,
    "tasks": 0,
    "__init__": 0,
    "store": 1,
    "ingest": 2,
    "replay": 3,
    "evaluate": 4,
    "drift": 5,
    "decide": 6,
    "ops": 7,
    "live": 8,
    "cli": 9,
    "views": 9,
    "views_tasks": 9,
}
PACKAGE = REPO / "workbench"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The `workbench` modules a file imports (``from workbench.x import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "workbench"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "workbench":
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()


def test_every_part_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(LAYERS), "a new part of workbench needs its place in LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_imports_point_down_the_flow(module):
    mine = LAYERS[_part(module)]
    later = sorted(
        n for n in _imports(MODULES[module], top_level_only=False) if n in MODULES and LAYERS[_part(n)] > mine
    )
    assert not later, f"{module} (layer {mine}) imports later stages: {later}"


def test_no_import_cycles_at_module_level():
    graph = {m: {n for n in _imports(p, top_level_only=True) if n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_tests_mirror_the_packages():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    test_dirs = {p.name for p in (REPO / "tests").iterdir() if p.is_dir()}
    assert packages <= test_dirs, f"no tests folder for {sorted(packages - test_dirs)}"


def test_test_modules_have_unique_basenames():
    """pytest imports test modules by basename (no packages under tests/): two with one name cannot both run."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
