"""The course's packages are layered: imports run grading -> part_tests -> utils, never back up.

Read from the source (every import statement, at the top of a file or inside a function, and every
`importlib.import_module("...")` / `__import__("...")` with a literal name), for every module of
utils/, part_tests/ and grading/, sub-packages included:

- no module in utils/ imports part_tests or grading;
- no module in part_tests/ imports grading, except part_tests/_guard.py, the one documented seam
  (the tests' `call` takes the grader's identity fingerprint through it), and it imports
  grading.fingerprint alone;
- the grading kernel's launcher (grading/sandbox.py) imports the standard library alone: it runs
  by its path in the submission's folder, outside the sandbox;
- no module of utils/, part_tests/ or grading/ is longer than 700 lines (one idea per module).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from grading import COURSE_PACKAGES

ROOT = Path(__file__).resolve().parent.parent
SEAM = "part_tests/_guard.py"
LAUNCHER = "grading/sandbox.py"
MAX_LINES = 700


def modules(package: str) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def imported(source: str) -> set[str]:
    """Absolute module names that `source` imports anywhere (relative imports stay in their package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from grading import fingerprint`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return found


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_the_import_reader_sees_every_kind_of_import():
    source = ("import grading.runner\nfrom part_tests import _common\nfrom . import sibling\n"
              "def f():\n    from grading.watch import notebook_file\n    importlib.import_module('utils.config')\n")
    assert imported(source) >= {"grading.runner", "part_tests", "part_tests._common", "grading.watch", "utils.config"}
    assert "sibling" not in top(imported(source))


def test_the_course_packages_are_the_three_layers():
    assert COURSE_PACKAGES == ("utils", "part_tests", "grading")
    assert all((ROOT / p / "__init__.py").exists() for p in COURSE_PACKAGES)


@pytest.mark.parametrize("path", modules("utils"))
def test_utils_imports_neither_part_tests_nor_grading(path):
    wrong = top(imported((ROOT / path).read_text())) & {"part_tests", "grading"}
    assert not wrong, f"{path} imports {sorted(wrong)}: utils is the lowest layer (grading -> part_tests -> utils)"


@pytest.mark.parametrize("path", modules("part_tests"))
def test_part_tests_reaches_grading_only_through_the_seam(path):
    names = imported((ROOT / path).read_text())
    reaching = sorted(n for n in names if n.split(".")[0] == "grading")
    if path == SEAM:
        assert reaching and set(reaching) <= {"grading.fingerprint", "grading.fingerprint.changed_since",
                                              "grading.fingerprint.fingerprint"}, reaching
    else:
        assert not reaching, (f"{path} imports {reaching}: part_tests reaches grading only through {SEAM} "
                              "(imports run grading -> part_tests -> utils)")


def test_the_seam_says_what_it_is():
    doc = ast.get_docstring(ast.parse((ROOT / SEAM).read_text())) or ""
    assert "the one place" in doc.lower() and "grading" in doc


def test_the_launcher_imports_the_standard_library_alone():
    names = top(imported((ROOT / LAUNCHER).read_text())) - {"__future__"}
    assert names and names <= set(sys.stdlib_module_names), sorted(names - set(sys.stdlib_module_names))


@pytest.mark.parametrize("path", [m for package in COURSE_PACKAGES for m in modules(package)])
def test_no_module_is_over_700_lines(path):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines: split it (one idea per module, at most {MAX_LINES})"
