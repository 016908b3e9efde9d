"""The package's shape, as ARCHITECTURE.md states it: floors, no import circles, small modules, docstrings.

Every ``agilerl_selfsft`` import is read from the source (module level, inside functions and under
``TYPE_CHECKING``), so a lazy import cannot hide a circle or an import that reaches up a floor.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "agilerl_selfsft"
MAX_LINES = 400


def floors() -> dict[str, int]:
    """The floor of each top-level unit (a package or a module), from ARCHITECTURE.md's ``floors`` block."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    block = re.search(r"```floors\n(.*?)```", text, re.DOTALL)
    assert block, "ARCHITECTURE.md has no ```floors block"
    out = {}
    for line in block.group(1).strip().splitlines():
        floor, names = line.split(":")
        out.update({name: int(floor) for name in names.split()})
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """The ``agilerl_selfsft`` modules a file imports (``from pkg import submodule`` names the submodule only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("agilerl_selfsft")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agilerl_selfsft"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules if len(submodules) == len(node.names) else submodules | {node.module}
    return {m for m in found if m in MODULES}


def unit(module: str) -> str:
    """The top-level package or module a module belongs to (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_floor():
    units = {unit(m) for m in MODULES}
    assert units == set(floors()), "ARCHITECTURE.md's floors must name every package and top-level module"


def test_no_import_reaches_up_a_floor():
    floor = floors()
    upward = [
        f"{m} (floor {floor[unit(m)]}) imports {t} (floor {floor[unit(t)]})"
        for m, path in MODULES.items()
        for t in imports(path)
        if unit(t) != unit(m) and floor[unit(t)] >= floor[unit(m)]
    ]
    assert upward == []


def test_no_import_circle():
    graph = {m: imports(path) - {m} for m, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                pytest.fail("import circle: " + " -> ".join(trail[trail.index(t):] + [t]))
            if t not in state:
                visit(t, trail + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agilerl_selfsft.env.gym import X\n"
                      "def f():\n    from agilerl_selfsft.generation import decode, rollout\n")
    assert imports(source) == {"agilerl_selfsft.env.gym", "agilerl_selfsft.generation", "agilerl_selfsft.generation.decode"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small_and_documented(module):
    path = MODULES[module]
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.relative_to(REPO)} is over {MAX_LINES} lines"
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(REPO)} has no module docstring"
