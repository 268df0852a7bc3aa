"""Every utils module imports on its own, and no utils module imports another in a cycle (at the
top of the file or inside a function: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parents[1] / "utils"
MODULES = sorted(p.stem for p in UTILS.glob("*.py") if p.stem != "__init__")


def utils_imports(name: str) -> set[str]:
    """The utils modules that utils/<name>.py imports, anywhere in the file."""
    tree = ast.parse((UTILS / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("utils."):
                    found.add(a.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.module == "utils":
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("utils."):
                found.add(node.module.split(".")[1])
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_utils():
    graph = {m: utils_imports(m) for m in MODULES}
    assert "judge" in graph and {"offline_judge", "self_judge", "endpoint_judge", "toy_judge"} <= graph["judge"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in utils: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", MODULES)
def test_every_utils_module_imports(name):
    importlib.import_module(f"utils.{name}")
