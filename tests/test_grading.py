"""The pieces of tamper-proof grading, one by one (the nbgrader round trip runs them together)."""

from __future__ import annotations

import builtins
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jupytext
import pytest
import torch

from grading import COURSE_PACKAGES
from grading import fingerprint as fp
from grading import runner as g
from grading.digest import course_digest
from grading.tamper import SUSPICIOUS, suspicious_lines
from utils.reference import sections
from utils.sources import solution_code

ROOT = Path(__file__).resolve().parent.parent


def _notebook_function(source: str, name: str):
    """A function compiled the way IPython compiles a notebook cell."""
    namespace: dict = {}
    exec(compile(source, "/tmp/ipykernel_1234/987654321.py", "exec"), namespace)
    return namespace[name]


def test_digest_mismatch_fails_only_when_grading():
    with pytest.raises(g.GradingError, match="differ from the ones this assignment was generated"):
        g.graded("section1", digest="0" * 64, nonce="a1b2c3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tests = g.graded("section1", digest="0" * 64)  # a student's own run: a warning only
    assert any("differ" in str(w.message) for w in caught)
    assert callable(tests.test_parse_score)


def test_pass_is_confirmed_with_the_nonce(capsys):
    from utils.reference import load

    tests = g.graded("section1", digest=course_digest(), nonce="feedbeef")
    tests.test_parse_score(load("section1").parse_score)
    assert g.PASS_LINE.format(test="test_parse_score", nonce="feedbeef") in capsys.readouterr().out
    with pytest.raises(AssertionError):
        tests.test_parse_score(lambda text: 0)
    assert "feedbeef" not in capsys.readouterr().out


def test_patched_library_functions_are_put_back():
    real_allclose, real_print = torch.allclose, builtins.print
    fp.record_pristine()
    try:
        torch.allclose = _notebook_function("def allclose(*a, **k):\n    return True\n", "allclose")
        builtins.print = _notebook_function("def print(*a, **k):\n    return None\n", "print")
        torch.Tensor.__eq__ = _notebook_function("def eq(self, other):\n    return True\n", "eq")
        assert set(fp.patched_library_functions()) >= {"torch.allclose", "builtins.print", "torch.Tensor.__eq__"}
        restored = fp.restore_pristine()
        assert {"torch.allclose", "builtins.print", "torch.Tensor.__eq__"} <= set(restored)
        assert torch.allclose is real_allclose and builtins.print is real_print
        assert not bool((torch.zeros(2) == torch.ones(2)).any())
        assert fp.patched_library_functions() == []
    finally:
        torch.allclose, builtins.print = real_allclose, real_print
        if "__eq__" in vars(torch.Tensor) and fp._from_notebook(vars(torch.Tensor)["__eq__"]):
            del torch.Tensor.__eq__
        sys.modules.pop(fp.PRISTINE_MODULE, None)


def test_unrestorable_patch_refuses_to_grade():
    real = torch.isclose
    sys.modules.pop(fp.PRISTINE_MODULE, None)  # no start-up record: nothing to put back
    torch.isclose = _notebook_function("def isclose(*a, **k):\n    return True\n", "isclose")
    try:
        with pytest.raises(g.GradingError, match="torch.isclose"):
            g.graded("section1", digest=course_digest(), nonce="cafe")
    finally:
        torch.isclose = real


@pytest.mark.parametrize("what,line", [
    ("sys.modules", "sys.modules['part_tests.section1'] = fake"),
    ("builtins", "import builtins; builtins.print = len"),
    ("IPython internals", "get_ipython().set_custom_exc((Exception,), h)"),
    ("the course's tests", "import part_tests.section1 as t"),
    ("the course's tests", "import grading.runner as r"),
    ("the course's tests", "from grading import fingerprint"),
    ("import machinery", "sys.meta_path.insert(0, Finder())"),
    ("frames", "sys._getframe(1).f_globals['check'] = ok"),
    ("process control", "os._exit(0)"),
    ("library patching", "torch.allclose = lambda *a, **k: True"),
    ("writing files", "open(path, 'a').write('x')"),
    ("code made at run time", "exec(compile(src, '/usr/lib/python3.11/threading.py', 'exec'), ns)"),
    ("IPython internals", "get_ipython().input_transformers_post.append(rewrite)"),
    ("code objects", "check.__code__ = noop.__code__"),
])
def test_tamper_report_flags(what, line):
    assert what in SUSPICIOUS
    assert suspicious_lines(line)[0][0] in (what, "sys.modules", "builtins"), suspicious_lines(line)


@pytest.mark.parametrize("line", ["pattern = re.compile(r'SCORE:\\s*(\\d+)')", "model.eval()",
                                  "from IPython.display import display, Markdown"])
def test_tamper_report_leaves_common_honest_lines_alone(line):
    assert suspicious_lines(line) == []


@pytest.mark.parametrize("section", sections())
def test_reference_solutions_are_not_flagged(section):
    """An honest answer must not land in the tamper report: every reference solution cell is clean."""
    path = ROOT / "solutions" / f"{section}.py"
    for cell in jupytext.read(path).cells:
        if "exercise" in cell.metadata.get("tags", []):
            assert suspicious_lines(solution_code(cell.source)) == [], f"{section}: {suspicious_lines(solution_code(cell.source))}"


def test_generated_graded_cells_use_the_runner():
    import json

    for section in sections():
        nb = json.loads((ROOT / "nbgrader" / "source" / section / f"{section}.ipynb").read_text())
        graded_cells = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade")
                        and not c["metadata"]["nbgrader"].get("solution")]
        assert graded_cells
        for cell in graded_cells:
            src = "".join(cell["source"])
            assert "from grading.runner import graded" in src and g.NONCE_PLACEHOLDER in src
            assert f"in {COURSE_PACKAGES!r}]]" in src, "a graded cell forgets every course package"
            assert f"digest={course_digest()!r}" in src, f"{section}: stale digest: run python scripts/generate.py"
            assert "from part_tests import section" not in src


def test_the_digest_covers_every_course_package_and_its_sub_packages(tmp_path):
    from grading.digest import course_files

    wanted = [f"{package}/__init__.py" for package in COURSE_PACKAGES] + [
        "part_tests/section9/__init__.py", "part_tests/section9/ex9_1_name.py", "grading/deep/er.py", "data/x/y.json"]
    for rel in wanted + ["part_tests/section9/__pycache__/ex9_1_name.cpython-311.py", "solutions/section9_x.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in course_files(tmp_path)) == sorted(wanted)
    before = course_digest(tmp_path)
    (tmp_path / "grading/deep/er.py").write_text("x = 2\n")
    assert course_digest(tmp_path) != before


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (setup.sh installs it as root)")
def test_sandbox_makes_the_course_read_only():
    proc = subprocess.run([sys.executable, "-m", "grading.sandbox", "check"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "read-only" in proc.stdout


def _forget_part_tests() -> None:
    """Drop the part_tests and grading modules, as a graded cell does, so the next import reads them afresh
    (utils stays: this test process shares it with the other tests)."""
    for name in [m for m in sys.modules if m.split(".")[0] in COURSE_PACKAGES and m.split(".")[0] != "utils"]:
        sys.modules.pop(name)


# A wrong answer that, when the test calls it, switches off the checks of the test that called it.
_DISARMING = '''
import sys, torch
def compute_cosine_similarity_matrix(vectors):
    frame = sys._getframe(1)
    while frame is not None:
        names = frame.f_globals
        if names.get("__name__", "").startswith("part_tests"):
            for attr in list(names):
                if attr.startswith("_check") or attr in ("check", "fail"):
                    names[attr] = lambda *a, **k: None
        frame = frame.f_back
    return torch.zeros(len(vectors), len(vectors), dtype=torch.float64), list(vectors)
'''


def test_a_function_that_disarms_the_test_while_it_runs_fails():
    import importlib

    try:
        _forget_part_tests()
        plain = importlib.import_module("part_tests.section1")
        disarming = _notebook_function(_DISARMING, "compute_cosine_similarity_matrix")
        # the test notices as soon as the function returns (part_tests._common.call), graded or not
        with pytest.raises(AssertionError, match=r"compute_cosine_similarity_matrix replaced part_tests\._common\.check"):
            plain.test_compute_cosine_similarity_matrix(disarming)
        _forget_part_tests()
        tests = importlib.import_module("grading.runner").graded("section1", digest=course_digest(), nonce="feedbeef")
        with pytest.raises(AssertionError, match="replaced part_tests._common.check"):
            tests.test_compute_cosine_similarity_matrix(_notebook_function(_DISARMING, "compute_cosine_similarity_matrix"))
    finally:
        _forget_part_tests()


def test_fingerprint_sees_patches_and_ignores_honest_runs():
    from utils.reference import load

    before = fp.fingerprint()
    load("section1").compute_cosine_similarity_matrix({"a": torch.ones(3), "b": torch.arange(3.0)})
    assert fp.changed_since(before) == []
    real = torch.isclose
    try:
        torch.isclose = _notebook_function("def isclose(*a, **k):\n    return True\n", "isclose")
        assert "torch.isclose" in fp.changed_since(before)
    finally:
        torch.isclose = real


# A wrong answer that rewrites the tests' check functions in place: same objects, new code.
_RECODING = '''
import sys, torch
def compute_cosine_similarity_matrix(vectors):
    for name, module in list(sys.modules.items()):
        if name.startswith("part_tests") and module is not None:
            for attr in ("check", "fail"):
                target = getattr(module, attr, None)
                if target is not None and hasattr(target, "__code__"):
                    target.__code__ = (lambda *a, **k: None).__code__
            for attr, target in list(vars(module).items()):
                if attr.startswith("_check") and hasattr(target, "__code__"):
                    target.__code__ = (lambda *a, **k: None).__code__
    return torch.zeros(len(vectors), len(vectors), dtype=torch.float64), list(vectors)
'''


def test_the_watch_sees_a_function_that_rewrites_the_tests_code():
    import importlib

    from grading import watch

    try:
        _forget_part_tests()
        plain = importlib.import_module("part_tests.section1")
        plain.test_compute_cosine_similarity_matrix(_notebook_function(_RECODING, "compute_cosine_similarity_matrix"))
        _forget_part_tests()  # the bare test was fooled, and its identity-based fingerprint would be too: same function objects
        watch.install()  # the grading kernel does this at start-up; here it stays in this test process
        tests = importlib.import_module("grading.runner").graded("section1", digest=course_digest(), nonce="feedbeef")
        with pytest.raises(AssertionError, match=r"reached into it \(set check.__code__"):
            tests.test_compute_cosine_similarity_matrix(_notebook_function(_RECODING, "compute_cosine_similarity_matrix"))
        tests.test_parse_score(importlib.import_module("utils.reference").load("section1").parse_score)  # honest: passes
    finally:
        _forget_part_tests()
