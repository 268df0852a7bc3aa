"""Time grading a synthetic class serially and on Dask; check nothing is lost or recorded twice.

    nice -n 10 python benchmarks/grade_class.py --students 8 --sections 3 --workers 2 --gradebook sqlite
    python benchmarks/grade_class.py --students 16 --sections 1,2,3,4 --workers 16 --gradebook postgres

The class is made from the course's own material (grading/synthetic.py): for each section, student
k hands in, in turn, the solutions, the solutions with one plausible mistake planted in one cell, a
half-done notebook, a half-done notebook that replaces the course's tests, and (once per section) the
solutions with an endless loop in one cell; then the cycle starts again without the loop.

Runs, each into a fresh copy of the class:
- serial: `nbgrader autograde SECTION --student S --force` for one submission after another (the
  command each parallel task runs), the reference scores and tamper report;
- parallel: `grading.classroom.autograde` on a LocalCluster of --workers single-threaded workers,
  into the chosen gradebook (SQLite, or a throwaway PostgreSQL server);
- worker_kill: --kill-trials regrades (--force) of the parallel class, each with one worker killed
  mid-task: `lost` counts submissions without their serial scores afterwards, `doubled` those recorded
  more than once (gradebook rows or tamper-report rows).
`submission_cost` splits one solutions submission of --cost-section (1) into nbgrader's start-up and
kernel start, the setup cells (imports), the model-loading cell, the other cells (tests included) and
nbgrader's work after the last cell.

Writes benchmarks/results/grading_scale.json (merged per configuration). Needs: this repository's
virtualenv (requirements.txt), bubblewrap (`apt-get install bubblewrap`), and for --gradebook postgres
PostgreSQL's server binaries (`apt-get install postgresql`; initdb/pg_ctl on PATH or under
/usr/lib/postgresql/*/bin). Runs as root or not (as root the server runs as the postgres user).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grading import gradebook, synthetic  # noqa: E402
from grading.classroom import autograde  # noqa: E402
from grading.pgserver import throwaway_postgres  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "grading_scale.json"


def class_plan(students: int) -> list[str]:
    """The kind of submission each student hands in (one loop per section)."""
    cycle = ["perfect", "planted", "half", "tamper"]
    plan = []
    for k in range(students):
        plan.append("loop" if k == 4 else cycle[(k if k < 4 else k - 1) % 4])
    return plan


def build(folder: Path, sections: list[str], students: int, db_url: str | None) -> Path:
    course = synthetic.make_course(folder, sections, db_url=db_url)
    for section in sections:
        nbs = synthetic.notebooks(course, section)
        for k, kind in enumerate(class_plan(students)):
            synthetic.hand_in(course, f"s{k:03d}_{kind}", section, nbs[kind])
    return course


def tamper_rows(course: Path) -> list[tuple]:
    report = course / "tamper_report.csv"
    rows = list(map(tuple, csv.reader(open(report)))) if report.exists() else []
    return sorted(rows[1:])  # without the header


def serial(course: Path, pairs) -> dict:
    times = []
    t0 = time.monotonic()
    for student, section in pairs:
        t = time.monotonic()
        synthetic.nbgrader(course, "autograde", section, "--student", student, "--force")
        times.append(time.monotonic() - t)
    return {"wall_s": time.monotonic() - t0, "median_submission_s": statistics.median(times)}


def compare(url: str, course: Path, pairs, reference: dict) -> tuple[bool, int]:
    got = gradebook.scores(url, pairs)
    lost = sum(1 for p in pairs if p not in got or got[p]["cells"] != reference["scores"][p]["cells"])
    return got == reference["scores"] and tamper_rows(course) == reference["tamper"], lost


def doubled(url: str, course: Path, pairs, reference: dict) -> int:
    rows = [gradebook.submission_rows(url, s, a) for s, a in pairs]
    extra_tamper = max(0, len(tamper_rows(course)) - len(reference["tamper"]))
    return sum(1 for n in rows if n > 1) + extra_tamper


def drop_bytecode() -> None:
    from grading import COURSE_PACKAGES

    for package in COURSE_PACKAGES:
        for cache in (ROOT / package).rglob("__pycache__"):
            shutil.rmtree(cache)


def submission_cost(folder: Path, section: str) -> dict:
    """Where the time goes for one solutions submission (serial nbgrader, one process): as nbgrader
    runs it in a checkout without the course's bytecode ("before"), and after grade_task.precompile
    ("after", what every classroom task gets)."""
    from grading.grade_task import precompile

    course = synthetic.make_course(folder, [section])
    synthetic.hand_in(course, "perfect", section, synthetic.notebooks(course, section)["perfect"])
    drop_bytecode()
    before = _one_cost(course, section)
    precompile()
    return {"section": section, "before_without_course_bytecode": before, "after_precompiled": _one_cost(course, section)}


def _one_cost(course: Path, section: str) -> dict:
    student = "perfect"
    start = datetime.now().astimezone()
    t = time.monotonic()
    before = os.times()
    synthetic.nbgrader(course, "autograde", section, "--student", student, "--force")
    after = os.times()
    wall = time.monotonic() - t
    import nbformat

    nb = nbformat.read(course / "autograded" / student / section / f"{section}.ipynb", as_version=4)
    cells = []
    for cell in nb.cells:
        ex = cell.metadata.get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            begin = datetime.fromisoformat(ex["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(ex["shell.execute_reply"].replace("Z", "+00:00"))
            cells.append(((begin - start).total_seconds(), (end - begin).total_seconds(), cell))
    first, last = cells[0][0], cells[-1][0] + cells[-1][1]
    setup = sum(d for _, d, c in cells if c.metadata.get("nbgrader", {}).get("grade_id") == "code-1")
    model = sum(d for _, d, c in cells if "load_course_model(" in c.source)
    tests = sum(d for _, d, c in cells if c.metadata.get("nbgrader", {}).get("grade") and "tests." in c.source)
    return {"wall_s": round(wall, 2),
            # nbgrader's own CPU time: the kernel runs in bubblewrap's PID namespace and is not counted
            "grader_cpu_s": round(after.children_user + after.children_system - before.children_user - before.children_system, 2),
            "startup_and_kernel_start_s": round(first, 2), "setup_cell_s": round(setup, 2),
            "model_load_cells_s": round(model, 2), "graded_test_cells_s": round(tests, 2),
            "other_cells_s": round(sum(d for _, d, _c in cells) - setup - model - tests, 2),
            "after_last_cell_s": round(wall - last, 2)}


def _pairs(course: Path) -> list[tuple[str, str]]:
    return [(d.parent.name, d.name) for d in sorted((course / "submitted").glob("*/*")) if d.is_dir()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=8, help="submissions per section")
    p.add_argument("--sections", default="3", help="comma-separated section numbers, e.g. 1,2,3,4")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gradebook", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--kill-trials", type=int, default=1)
    p.add_argument("--cost-section", type=int, default=1, help="the section whose per-submission cost is split")
    p.add_argument("--no-cost", action="store_true", help="skip the per-submission cost breakdown")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    sections = [synthetic.section_name(int(n)) for n in args.sections.split(",")]
    report = {"machine": {"cpus": os.cpu_count()}, "runs": [], "worker_kill": {}}
    with tempfile.TemporaryDirectory(prefix="grade-class-") as tmp, \
            (throwaway_postgres() if args.gradebook == "postgres" else contextlib.nullcontext(None)) as pg_url:
        tmp = Path(tmp)
        print(f"building a class of {args.students} x {len(sections)} submissions ...", flush=True)
        ser = build(tmp / "serial", sections, args.students, None)
        par = tmp / "parallel"
        if pg_url:
            build(par, sections, args.students, pg_url)
        else:
            shutil.copytree(ser, par)
        pairs = _pairs(ser)
        if not args.no_cost:
            report["submission_cost"] = submission_cost(tmp / "cost", synthetic.section_name(args.cost_section))
            print("submission cost:", report["submission_cost"], flush=True)
        print("serial ...", flush=True)
        s = serial(ser, pairs)
        url_ser = gradebook.default_url(ser)
        reference = {"scores": gradebook.scores(url_ser, pairs), "tamper": tamper_rows(ser)}
        report["runs"].append({"submissions": len(pairs), "workers": 1, "engine": "nbgrader serial (--student each)",
                               "gradebook": "sqlite", **{k: round(v, 2) for k, v in s.items()},
                               "identical_to_serial": True, "lost": 0})
        print(report["runs"][-1], flush=True)
        print(f"parallel on {args.workers} workers ...", flush=True)
        url = pg_url or gradebook.default_url(par)
        from distributed import Client

        from grading.cluster import local_cluster

        cluster = local_cluster(args.workers)
        client = Client(cluster)
        try:
            t = time.monotonic()
            out = autograde(par, None, db=pg_url, client=client, progress=True)
            wall = time.monotonic() - t
            same, lost = compare(url, par, pairs, reference)
            times = [r.seconds for r in out["results"].values()]
            cpu = [r.cpu_seconds for r in out["results"].values() if r.cpu_seconds]
            report["runs"].append({"submissions": len(pairs), "workers": args.workers, "engine": "dask LocalCluster",
                                   "gradebook": args.gradebook, "wall_s": round(wall, 2),
                                   "median_submission_s": round(statistics.median(times), 2),
                                   "median_grader_cpu_s": round(statistics.median(cpu), 2) if cpu else None,
                                   "identical_to_serial": same, "lost": lost})
            print(report["runs"][-1], flush=True)
            kills = {"trials": 0, "lost": 0, "doubled": 0, "killed_tasks": []}
            for _ in range(args.kill_trials):
                killed = {}
                killer = threading.Thread(target=lambda: killed.update(key=synthetic.kill_worker_mid_task(client, 8)))
                killer.start()
                autograde(par, None, db=pg_url, client=client, force=True, progress=False)
                killer.join()
                _, lost = compare(url, par, pairs, reference)
                kills["trials"] += 1
                kills["lost"] += lost
                kills["doubled"] += doubled(url, par, pairs, reference)
                kills["killed_tasks"].append(killed.get("key"))
            report["worker_kill"] = kills
            print("worker kill:", kills, flush=True)
        finally:
            client.close()
            cluster.close()
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out_path.read_text()) if out_path.exists() else {}
    key = f"students={args.students} sections={args.sections} workers={args.workers} gradebook={args.gradebook} cpus={os.cpu_count()}"
    previous[key] = report
    out_path.write_text(json.dumps(previous, indent=1) + "\n")
    print(f"wrote {out_path} [{key}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
