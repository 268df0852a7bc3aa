"""Real nbgrader on a temporary course, with the instructors' commands: release, autograde, feedback, export.

For each section: a submission made from the solutions scores full marks, the untouched release
scores zero, a submission with a planted mistake loses exactly that exercise's points, and a
submission that edits a locked test cell (to `pass`) gains nothing. Autograde runs offline on the
CPU (nbgrader sets NBGRADER_EXECUTION, which selects the tiny models), in the sandboxed grading
kernel (grading/sandbox.py) with the course's GuardedExecute (grading/executor.py).

For Sections 1 and 4, tampering submissions must score exactly what their honest part deserves:
a half-solved notebook that also replaces the tests, fakes course modules, edits the course's files
on disk, swallows exceptions, patches the libraries the tests use, or loops forever.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grading.digest import course_files
from tests.test_kernel_reset import THREAD_ATTACK
from utils.reference import sections
from utils.sources import solution_code

ROOT = Path(__file__).resolve().parent.parent
HIDDEN_CALL = re.compile(r"\btests\.test_\w+_hidden\(")  # a grader-only test call
pytestmark = pytest.mark.slow

# A plausible mistake planted in each section's solutions: (text in one exercise cell, its
# replacement). Exactly the test cell that checks that exercise must lose its points.
PLANTED = {
    "section1_persona_space": ("score = int(matches[-1])", "score = int(matches[0])"),
    "section2_assistant_axis": ("return float(np.quantile(x, quantile))", "return float(np.quantile(x, 1 - quantile))"),
    "section3_contrastive_prompting": ('if pos["score"] >= threshold', 'if pos["score"] > threshold'),
    "section4_steering": ("X = X / X.norm(dim=1, keepdim=True)", "X = X"),
    "section5_finetuning": ("+ 0.5 * (diff == 0).double().mean())", "+ 1.0 * (diff == 0).double().mean())"),
}


def _nbgrader(course: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PERSONA_COURSE_MODEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args, "--force"] if args[0] not in ("export", "release_assignment") else [sys.executable, "-m", "nbgrader", *args],
        cwd=course, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0 or not check, f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _solution_filled(release: nbformat.NotebookNode, source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The release notebook with each solution cell filled in from the source (what a perfect student submits)."""
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in source.cells}
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = solution_code(by_id[meta["grade_id"]].source)
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "nbgrader" / "nbgrader_config.py", course / "nbgrader_config.py")
    exchange = course / "exchange"
    exchange.mkdir()
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.Exchange.root = {str(exchange)!r}\nc.Exchange.path_includes_course = True\n")
    shutil.copytree(ROOT / "nbgrader" / "source", course / "source")
    return course


def _half_filled(release, source) -> nbformat.NotebookNode:
    """An honest student who solved the first half of the exercises and left the rest as stubs."""
    full = _solution_filled(release, source)
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    solution_cells = [i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("solution")]
    for i in solution_cells[: len(solution_cells) // 2]:
        nb.cells[i].source = full.cells[i].source
    return nb


def _with_code(nb, code: str, where: str = "first") -> nbformat.NotebookNode:
    """`nb` with `code` appended to its first (or last) solution cell, the cells a student edits."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    cell = cells[0] if where == "first" else cells[-1] if where == "last" else cells[len(cells) // 2]
    cell.source = cell.source.rstrip("\n") + "\n\n" + code.strip("\n") + "\n"
    return nb


# Tampering, as a student would write it in an exercise cell. {module} is the section's test module.
TAMPER_REPLACE_TESTS = """
import part_tests.{module} as _t, part_tests._common as _c
for _n in dir(_t):
    if _n.startswith("test_"):
        setattr(_t, _n, lambda *a, _n=_n, **k: print(f"\u2713 {{_n}}: all checks passed"))
_c.check = lambda *a, **k: None
_c.fail = lambda *a, **k: None
"""
TAMPER_FAKE_MODULES = """
import sys, types
_fake = types.ModuleType("part_tests.{module}")
_fake.__getattr__ = lambda name: (lambda *a, **k: print(f"\u2713 {{name}}: all checks passed"))
sys.modules["part_tests.{module}"] = _fake
class _Fake:
    def __init__(self, nonce): self.nonce = nonce
    def __getattr__(self, name): return lambda *a, **k: print(f"graded {{name}}: passed ({{self.nonce}})")
_g = types.ModuleType("grading.runner")
_g.graded = lambda section, digest=None, nonce="": _Fake(nonce)
_g.NONCE_PLACEHOLDER = "__GRADING_NONCE__"
sys.modules["grading.runner"] = _g
"""
TAMPER_DISK = """
import part_tests.{module} as _t, sqlite3, glob, os
try:
    with open(_t.__file__, "a") as _f:
        _f.write("\ndef test_parse_score(*a, **k):\n    print('ok')\n")
except OSError as _e:
    print("could not edit the tests:", type(_e).__name__)
for _db in glob.glob("../../../gradebook.db") + glob.glob("../../../../gradebook.db"):
    try:
        _con = sqlite3.connect(_db)
        _con.execute("UPDATE grade SET manual_score = 99")
        _con.commit()
    except Exception as _e:
        print("could not edit the gradebook:", type(_e).__name__)
print("files I can see above me:", os.listdir("../.."))
"""
TAMPER_EXCEPTIONS = """
_ip = get_ipython()
_ip.set_custom_exc((BaseException,), lambda *a, **k: None)
_ip.showtraceback = lambda *a, **k: None
"""
TAMPER_LIBRARIES = """
import torch, numpy, builtins
torch.allclose = lambda *a, **k: True
torch.isclose = lambda a, b, *r, **k: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
numpy.allclose = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: True
_real_print = print
builtins.print = lambda *a, **k: None
"""
TAMPER_IMPORT = """
import builtins, types
class _Fake:
    def __init__(self, nonce): self.nonce = nonce
    def __getattr__(self, name): return lambda *a, **k: print(f"graded {{name}}: passed ({{self.nonce}})")
_real_import = builtins.__import__
def _imp(name, *a, **k):
    if name == "grading.runner":
        _m = types.ModuleType(name)
        _m.graded = lambda section, digest=None, nonce="": _Fake(nonce)
        return _m
    return _real_import(name, *a, **k)
builtins.__import__ = _imp
"""
TAMPER_TRANSFORMER = """
import re
def _rewrite(lines):
    source = "".join(lines)
    found = re.search(r"nonce='([0-9a-f]{{32}})'", source)
    if not found:
        return lines
    return [f'print("graded {{t}}: passed ({{found.group(1)}})")\\n' for t in re.findall(r"tests\\.(test_\\w+)\\(", source)]
get_ipython().input_transformers_post.append(_rewrite)
"""
LOOP_INTERRUPTIBLE = """
while True:  # a runaway loop that an interrupt stops
    pass
"""
LOOP_STUBBORN = """
import time
while True:  # a runaway loop that swallows the interrupt
    try:
        time.sleep(0.05)
    except BaseException:
        pass
"""
ATTACKED = ("section1_persona_space", "section4_steering")


def _course_files_digest() -> str:
    """The course's files (its packages and data), and whatever sits in the checkout's own cache:
    grading writes neither."""
    h = hashlib.sha256()
    for p in course_files(ROOT):
        h.update(p.read_bytes())
    for p in sorted((ROOT / ".cache").rglob("*")) if (ROOT / ".cache").exists() else []:
        h.update(str(p.relative_to(ROOT)).encode())
    return h.hexdigest()


def _points(cell) -> float:
    return float(cell.metadata.get("nbgrader", {}).get("points", 0))


@pytest.mark.parametrize("section", sections())
def test_roundtrip(course, section):
    src_nb = nbformat.read(course / "source" / section / f"{section}.ipynb", as_version=4)
    graded = [c for c in src_nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    total = sum(_points(c) for c in graded)
    assert total > 0, f"{section}: no graded cells"

    _nbgrader(course, "generate_assignment", section)
    _nbgrader(course, "release_assignment", section)
    release = nbformat.read(course / "release" / section / f"{section}.ipynb", as_version=4)
    hidden_in_source = any("BEGIN HIDDEN TESTS" in c.source for c in src_nb.cells)
    assert not any("HIDDEN TESTS" in c.source or HIDDEN_CALL.search(c.source) for c in release.cells), f"{section}: hidden tests leaked into the release"

    subs = {"perfect": _solution_filled(release, src_nb), "untouched": release}
    module = section.split("_")[0]
    attacked = section in ATTACKED
    if attacked:
        half = _half_filled(release, src_nb)
        subs["half"] = half
        subs["aaa_disk"] = _with_code(release, TAMPER_DISK.format(module=module))  # graded first
        subs["tamper_replace"] = _with_code(half, TAMPER_REPLACE_TESTS.format(module=module))
        subs["tamper_modules"] = _with_code(half, TAMPER_FAKE_MODULES.format(module=module))
        subs["tamper_exceptions"] = _with_code(half, TAMPER_EXCEPTIONS)
        subs["tamper_libraries"] = _with_code(half, TAMPER_LIBRARIES)
        if section == ATTACKED[0]:  # the kernel-level attacks, on one section (each costs a grading run)
            subs["tamper_import"] = _with_code(half, TAMPER_IMPORT.format(module=module))
            subs["tamper_transformer"] = _with_code(half, TAMPER_TRANSFORMER.format(module=module))
            subs["tamper_thread"] = _with_code(half, THREAD_ATTACK)
    files_before = _course_files_digest()
    tamper = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in tamper.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = "pass  # edited by the student"
    subs["tamperer"] = tamper
    assert section in PLANTED, f"{section}: add a planted mistake to PLANTED"
    old, new = PLANTED[section]
    planted = _solution_filled(release, src_nb)
    mistake_cells = [c for c in planted.cells if c.metadata.get("nbgrader", {}).get("solution") and old in c.source]
    assert len(mistake_cells) == 1, f"{section}: the planted mistake's text {old!r} must occur in exactly one solution cell"
    mistake_cells[0].source = mistake_cells[0].source.replace(old, new)
    mistake_cell = mistake_cells[0].metadata["nbgrader"]["grade_id"]
    subs["planted"] = planted
    for student, nb in subs.items():
        d = course / "submitted" / student / section
        d.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, d / f"{section}.ipynb")

    _nbgrader(course, "autograde", section)
    assert _course_files_digest() == files_before, f"{section}: grading changed the course's test files or wrote into its .cache/"
    _nbgrader(course, "generate_feedback", section)
    _nbgrader(course, "export", "--to", str(course / "grades.csv"))

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        def score(student):
            return gb.find_submission(section, student).score

        def cell_scores(student):
            nb = gb.find_submission_notebook(section, section, student)
            return {g.name: g.score for g in nb.grades}

        if hidden_in_source:  # the grader restored and ran them: a submission without them cannot dodge them
            assert any(HIDDEN_CALL.search(c.source or "") for c in gb.find_notebook(section, section).source_cells)
        assert score("perfect") == pytest.approx(total), f"{section}: solutions scored {score('perfect')}/{total}: {cell_scores('perfect')}"
        assert score("untouched") == 0, f"{section}: the untouched release scored {score('untouched')}: {cell_scores('untouched')}"
        assert score("tamperer") == 0, f"{section}: editing locked test cells gained {score('tamperer')} points"
        perfect, planted_scores = cell_scores("perfect"), cell_scores("planted")
        lost = {k for k in perfect if planted_scores[k] < perfect[k]}
        assert len(lost) == 1, f"{section}: a mistake planted in {mistake_cell} changed the scores of {sorted(lost) or 'no cell'}"
        assert score("planted") == pytest.approx(total - perfect[lost.pop()])
        if attacked:
            honest = cell_scores("half")
            assert 0 < score("half") < total, f"{section}: the half-solved submission scored {score('half')}/{total}"
            kernel_attacks = ("tamper_import", "tamper_transformer") if section == ATTACKED[0] else ()
            for student in ("tamper_replace", "tamper_modules", "tamper_exceptions", "tamper_libraries") + kernel_attacks:
                got = cell_scores(student)
                gained = {k: (honest[k], got[k]) for k in honest if got[k] != honest[k]}
                assert not gained, f"{section}: {student} scored differently from its honest part (honest, got): {gained}"
            assert score("aaa_disk") == 0, f"{section}: a submission that edits the course's files scored {score('aaa_disk')}"
            if section == ATTACKED[0]:  # a thread that survives the reset could undo it: nothing is graded after it
                assert score("tamper_thread") == 0, f"{section}: a submission with an unstoppable thread scored {score('tamper_thread')}"
            assert cell_scores("perfect") == perfect and score("perfect") == pytest.approx(total)
        tamper_log = course / "tamper_report.csv"
        if attacked:
            flagged = {r["student"] for r in csv.DictReader(open(tamper_log))}
            assert {"aaa_disk", "tamper_replace", "tamper_modules", "tamper_exceptions", "tamper_libraries"} <= flagged
            assert not flagged & {"perfect", "half", "untouched", "planted"}, f"honest submissions flagged: {flagged}"

    rows = list(csv.DictReader(open(course / "grades.csv")))
    assert any(r["assignment"] == section and r["student_id"] == "perfect" for r in rows)
    assert (course / "feedback" / "perfect" / section / f"{section}.html").exists()


def test_runaway_cells_cost_a_bounded_time(course):
    """An endless loop costs at most the documented per-cell limit (plus the restart grace), and the
    cells before it keep their points; after one that ignores the interrupt, the later cells are not run."""
    import time

    section = "section4_steering"
    src_nb = nbformat.read(course / "source" / section / f"{section}.ipynb", as_version=4)
    if not (course / "release" / section).exists():
        _nbgrader(course, "generate_assignment", section)
    release = nbformat.read(course / "release" / section / f"{section}.ipynb", as_version=4)
    config = (ROOT / "nbgrader" / "nbgrader_config.py").read_text()
    limit = int(re.search(r"c\.GuardedExecute\.timeout = (\d+)", config).group(1))
    nb = _with_code(_solution_filled(release, src_nb), LOOP_INTERRUPTIBLE, where="middle")
    nb = _with_code(nb, LOOP_STUBBORN, where="last")
    d = course / "submitted" / "looper" / section
    d.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, d / f"{section}.ipynb")
    t0 = time.monotonic()
    _nbgrader(course, "autograde", section, "--student", "looper")
    elapsed = time.monotonic() - t0
    assert elapsed < 2 * limit + 15 + 120, f"two runaway cells took {elapsed:.0f} s to grade (limit {limit} s a cell)"
    from nbgrader.api import Gradebook

    cells = [c for c in src_nb.cells if c.metadata.get("nbgrader", {}).get("grade") or c.metadata.get("nbgrader", {}).get("solution")]
    last_solution = max(i for i, c in enumerate(cells) if c.metadata["nbgrader"].get("solution"))
    after = {c.metadata["nbgrader"]["grade_id"] for c in cells[last_solution:] if c.metadata["nbgrader"].get("grade")}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        got = {g.name: g.score for g in gb.find_submission_notebook(section, section, "looper").grades}
        want = {g: (0.0 if g in after else _points(next(c for c in cells if c.metadata["nbgrader"]["grade_id"] == g))) for g in got
                if any(c.metadata["nbgrader"]["grade_id"] == g and not c.metadata["nbgrader"].get("solution") for c in cells)}
    assert {g: got[g] for g in want} == want, f"runaway loops changed scores beyond the looping exercise: {got} vs {want}"
