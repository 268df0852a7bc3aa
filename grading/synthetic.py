"""A synthetic class made from the course's own material, to test and time class grading.

`make_course(folder, sections)` copies the course's nbgrader configuration and sources into a
temporary course folder and runs `nbgrader generate_assignment` for each section (into the given
gradebook URL); `submissions(course, section, kinds)` builds the notebooks students would hand in:

- "perfect": the release notebook with each answer cell taken from solutions (the source notebook);
- "planted": perfect, but for one plausible mistake planted in one answer cell (PLANTED);
- "half": the first half of the answers filled in, the rest left as stubs;
- "tamper": half, plus a cell that replaces the course's tests (it must gain nothing, and be listed
  in the tamper report);
- "loop": perfect, plus an endless loop in the middle answer cell (it costs that cell's limit);
- "untouched": the release as handed out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from utils.sources import solution_code

ROOT = Path(__file__).resolve().parent.parent

# One plausible mistake per section: (text in one answer cell, its replacement).
PLANTED = {
    "section1_persona_space": ("score = int(matches[-1])", "score = int(matches[0])"),
    "section2_assistant_axis": ("return float(np.quantile(x, quantile))", "return float(np.quantile(x, 1 - quantile))"),
    "section3_contrastive_prompting": ('if pos["score"] >= threshold', 'if pos["score"] > threshold'),
    "section4_steering": ("X = X / X.norm(dim=1, keepdim=True)", "X = X"),
}
TAMPER = """
import part_tests.{module} as _t
for _n in dir(_t):
    if _n.startswith("test_"):
        setattr(_t, _n, lambda *a, _n=_n, **k: print(f"\\u2713 {{_n}}: all checks passed"))
"""
LOOP = """
while True:  # a runaway loop that an interrupt stops
    pass
"""
KINDS = ("perfect", "planted", "half", "tamper", "loop", "untouched")


def section_name(number: int) -> str:
    return next(name for name in PLANTED if name.startswith(f"section{number}_"))


def nbgrader(course: Path, *args: str, db_url: str | None = None) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PERSONA_COURSE_MODEL", None)
    cmd = [sys.executable, "-m", "nbgrader", *args]
    if db_url:
        cmd.append(f"--CourseDirectory.db_url={db_url}")
    proc = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def make_course(folder: Path, sections: list[str], db_url: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "nbgrader" / "nbgrader_config.py", folder / "nbgrader_config.py")
    for section in sections:
        shutil.copytree(ROOT / "nbgrader" / "source" / section, folder / "source" / section, dirs_exist_ok=True)
        nbgrader(folder, "generate_assignment", section, "--force", db_url=db_url)
    return folder


def _copy(nb):
    return nbformat.from_dict(json.loads(json.dumps(nb)))


def _answers(nb):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]


def notebooks(course: Path, section: str) -> dict[str, nbformat.NotebookNode]:
    """{kind: notebook} for every kind in KINDS."""
    source = nbformat.read(course / "source" / section / f"{section}.ipynb", as_version=4)
    release = nbformat.read(course / "release" / section / f"{section}.ipynb", as_version=4)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in source.cells}
    perfect = _copy(release)
    for cell in _answers(perfect):
        cell.source = solution_code(by_id[cell.metadata["nbgrader"]["grade_id"]].source)
    planted = _copy(perfect)
    old, new = PLANTED[section]
    hits = [c for c in _answers(planted) if old in c.source]
    if len(hits) != 1:
        raise ValueError(f"{section}: the planted mistake's text must occur in exactly one answer cell")
    hits[0].source = hits[0].source.replace(old, new)
    half = _copy(release)
    answers = _answers(half)
    for cell, full in list(zip(answers, _answers(perfect)))[: len(answers) // 2]:
        cell.source = full.source
    tamper = _copy(half)
    first = _answers(tamper)[0]
    first.source = first.source.rstrip("\n") + "\n\n" + TAMPER.format(module=section.split("_")[0]).strip("\n") + "\n"
    loop = _copy(perfect)
    middle = _answers(loop)[len(_answers(loop)) // 2]
    middle.source = middle.source.rstrip("\n") + "\n\n" + LOOP.strip("\n") + "\n"
    return {"perfect": perfect, "planted": planted, "half": half, "tamper": tamper, "loop": loop, "untouched": release}


def hand_in(course: Path, student: str, section: str, nb) -> None:
    folder = course / "submitted" / student / section
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{section}.ipynb")
    (folder / "timestamp.txt").write_text("2026-12-01 12:00:00.000000 UTC")


def kill_worker_mid_task(client, after: float = 5.0, timeout: float = 600.0) -> str | None:
    """Wait until a grading task runs, let it run `after` seconds, then SIGKILL its worker process
    (the nanny starts a new one; Dask reruns the task). Returns the task's key, or None if none ran."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = {w: [k for k in keys if str(k).startswith("grade-")] for w, keys in client.processing().items()}
        busy = {w: keys for w, keys in busy.items() if keys}
        if busy:
            worker, keys = next(iter(busy.items()))
            time.sleep(after)
            pid = client.run(os.getpid, workers=[worker]).get(worker)
            if pid:
                os.kill(pid, signal.SIGKILL)
                return str(keys[0])
        time.sleep(0.5)
    return None
