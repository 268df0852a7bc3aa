"""Grade a whole class in parallel on Dask, into one gradebook.

    python -m grading.classroom autograde ASSIGNMENT|--all [--workers N | --scheduler ADDRESS |
        --jobqueue slurm|pbs [--jobs J]] [--db URL] [--force] [--course nbgrader/] [--task-timeout S]

Every collected submission (`<course>/submitted/<student>/<assignment>/`) is one Dask task, graded
exactly as `nbgrader autograde ASSIGNMENT --student S --force` grades it (grading/grade_task.py runs
that command on a private copy), on a LocalCluster by default (one single-threaded worker process per
core), any scheduler, or SLURM/PBS jobs (grading/cluster.py). The gradebook is the course's SQLite
file by default (the command is its one writer) or a PostgreSQL database shared by all workers
(`--db postgresql+psycopg://...`; grading/gradebook.py).

Before anything is written, the gradebook and the scheduler are checked: either unreachable is one
clear error and exit code 2. Then the students are created, already graded submissions are skipped
(unless --force), and the rest are sent out; each result is recorded as it arrives (the autograded
folder, the tamper report's rows, the scores), replacing whatever an earlier run recorded for the
same student and assignment. A worker that dies mid-task has its task rerun elsewhere by Dask; a
task that fails or runs past its wall limit is listed with its reason, and leaves no half-written
submission. At the end `<course>/grades.csv` lists student, assignment, score, max_score, status.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

from grading import gradebook
from grading.cluster import SchedulerError, connect
from grading.grade_task import Result, Task, read_tree, run, write_tree

DEFAULT_COURSE = Path(__file__).resolve().parent.parent / "nbgrader"
TAMPER_HEADER = ["student", "assignment", "cell", "line", "what", "code"]


def discover(course: Path, assignment: str | None) -> list[tuple[str, str]]:
    """(student, assignment) for each collected submission, of one assignment or all of them."""
    pairs = []
    for folder in sorted((course / "submitted").glob("*/*")):
        if folder.is_dir() and (assignment is None or folder.name == assignment):
            pairs.append((folder.parent.name, folder.name))
    return pairs


def configured_db_url(course: Path) -> str | None:
    """c.CourseDirectory.db_url from the course's nbgrader_config.py, if it sets one."""
    from traitlets.config.loader import PyFileConfigLoader

    try:
        config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    except Exception:
        return None
    url = config.get("CourseDirectory", {}).get("db_url")
    return url if isinstance(url, str) and url else None


def autograded_present(course: Path, student: str, assignment: str, url: str) -> bool:
    from nbgrader.api import Gradebook

    with Gradebook(url) as gb:
        names = [nb.name for nb in gb.find_assignment(assignment).notebooks]
    folder = course / "autograded" / student / assignment
    return all((folder / f"{n}.ipynb").exists() for n in names)


def record(course: Path, url: str, result: Result) -> None:
    """Write one result into the course: autograded folder, tamper rows, then the gradebook (SQLite).

    The files go first and the scores last, so a submission counts as graded (and is skipped by a
    rerun) only once everything is in place; each part replaces what was there for this submission."""
    s, a = result.student, result.assignment
    if result.status != "graded":
        if not gradebook.is_sqlite(url):
            gradebook.forget_unscored(url, s, a)
        return
    dest = course / "autograded" / s / a
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    write_tree(result.autograded, dest)
    replace_tamper_rows(course / "tamper_report.csv", s, a, result.tamper_rows)
    if gradebook.is_sqlite(url):
        with tempfile.TemporaryDirectory() as tmp:
            private = Path(tmp) / "gradebook.db"
            private.write_bytes(result.gradebook or b"")
            gradebook.record_submission(url, f"sqlite:///{private}", s, a)


def replace_tamper_rows(report: Path, student: str, assignment: str, rows: list[list[str]]) -> None:
    kept = []
    if report.exists():
        kept = [r for r in list(csv.reader(open(report, newline="")))[1:] if r[:2] != [student, assignment]]
    if not kept and not rows and not report.exists():
        return
    tmp = report.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TAMPER_HEADER)
        w.writerows(kept + rows)
    tmp.replace(report)


def write_summary(path: Path, url: str, pairs: list[tuple[str, str]], status: dict) -> None:
    found = gradebook.scores(url, pairs)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score", "status"])
        for s, a in pairs:
            st = status.get((s, a), "graded")
            got = found.get((s, a)) if st in ("graded", "skipped") else None
            w.writerow([s, a, "" if got is None else got["score"], "" if got is None else got["max_score"], st])


def autograde(course: Path, assignment: str | None, *, db: str | None = None, scheduler: str | None = None,
              workers: int | None = None, jobqueue: str | None = None, jobs: int = 1, force: bool = False,
              task_timeout: float = 1800.0, progress: bool = True, out=sys.stdout, client=None,
              jobqueue_options: dict | None = None) -> dict:
    """Grade the class; returns {"results": {(student, assignment): Result}, "skipped": [...], ...}.

    Raises GradebookError or SchedulerError before anything is written; `client`: an existing Dask
    client to use instead of connecting (tests)."""
    from distributed import as_completed
    from tqdm import tqdm

    course = Path(course).resolve()
    url = db or configured_db_url(course) or gradebook.default_url(course)
    pairs = discover(course, assignment)
    if not pairs:
        raise gradebook.GradebookError(f"no collected submissions under {course / 'submitted'}"
                                       + (f" for {assignment}" if assignment else ""))
    assignments = sorted({a for _, a in pairs})
    gradebook.check(url, assignments)  # read only
    t0 = time.monotonic()
    done = {p for p in gradebook.graded(url, pairs) if autograded_present(course, *p, url)}
    todo = [p for p in pairs if force or p not in done]
    skipped = [p for p in pairs if p not in todo]
    own_client = client is None and bool(todo)
    cluster = None
    if own_client:
        client, cluster = connect(scheduler, workers, jobqueue, jobs, jobqueue_options=jobqueue_options)
    results: dict[tuple[str, str], Result] = {}
    try:
        gradebook.add_students(url, sorted({s for s, _ in todo}))
        config = (course / "nbgrader_config.py").read_text()
        sources = {a: read_tree(course / "source" / a) for a in assignments}
        seed = None
        if gradebook.is_sqlite(url) and todo:
            with tempfile.TemporaryDirectory() as tmp:
                gradebook.snapshot(url, Path(tmp) / "seed.db")
                seed = client.scatter((Path(tmp) / "seed.db").read_bytes(), broadcast=True)
        futures, pending = {}, []
        for s, a in todo:
            task = Task(s, a, config, sources[a], read_tree(course / "submitted" / s / a),
                        None if gradebook.is_sqlite(url) else url, task_timeout)
            fut = client.submit(run, task, seed, key=f"grade-{a}-{s}", retries=2, pure=False)
            futures[fut.key] = (s, a)
            pending.append(fut)
        bar = tqdm(total=len(futures), desc="grading", unit="submission", disable=not progress, file=sys.stderr)
        for fut in as_completed(pending):
            s, a = futures[fut.key]
            try:
                result = fut.result()
            except Exception as err:  # the task never finished: its workers kept dying, or Dask gave up
                result = Result(s, a, "failed", f"{type(err).__name__}: {err}"[:1200])
            record(course, url, result)
            results[(s, a)] = result
            bar.update(1)
        bar.close()
        status = {p: r.status for p, r in results.items()} | {p: "skipped" for p in skipped}
        write_summary(course / "grades.csv", url, pairs, status)
    finally:
        if own_client:
            client.close()
            if cluster is not None:
                cluster.close()
    failures = [r for r in results.values() if r.status != "graded"]
    print(f"graded {len(results) - len(failures)}, skipped {len(skipped)} (already graded; --force regrades), "
          f"failed {len(failures)} of {len(pairs)} submissions in {time.monotonic() - t0:.1f} s; "
          f"gradebook {gradebook.redact(url)}; summary {course / 'grades.csv'}", file=out)
    for r in failures:
        print(f"  FAILED {r.student}/{r.assignment} ({r.status}): {r.reason}", file=out)
    return {"results": results, "skipped": skipped, "url": url, "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading.classroom", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("autograde", help="grade every collected submission of an assignment (or --all)")
    p.add_argument("assignment", nargs="?")
    p.add_argument("--all", action="store_true", help="every assignment with collected submissions")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="LocalCluster workers (default: one per core)")
    where.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--jobqueue", choices=["slurm", "pbs"], help="submit the workers as batch jobs")
    p.add_argument("--jobs", type=int, default=1, help="batch jobs to start with --jobqueue (16 workers each)")
    p.add_argument("--jobqueue-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dask-jobqueue option for the jobs, e.g. queue=short, account=abc, walltime=04:00:00")
    p.add_argument("--db", help="gradebook URL (default: the course's, else sqlite:///<course>/gradebook.db)")
    p.add_argument("--force", action="store_true", help="regrade submissions already graded")
    p.add_argument("--course", default=str(DEFAULT_COURSE), help="the nbgrader course folder")
    p.add_argument("--task-timeout", type=float, default=1800.0, help="wall limit of one task, seconds")
    p.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if bool(args.assignment) == bool(args.all):
        parser.error("name one ASSIGNMENT or pass --all")
    try:
        options = dict(o.split("=", 1) for o in args.jobqueue_option)
    except ValueError:
        parser.error("--jobqueue-option takes KEY=VALUE")
    try:
        outcome = autograde(Path(args.course), None if args.all else args.assignment, db=args.db,
                            scheduler=args.scheduler, workers=args.workers, jobqueue=args.jobqueue, jobs=args.jobs,
                            force=args.force, task_timeout=args.task_timeout, progress=not args.no_progress,
                            jobqueue_options=options)
    except (gradebook.GradebookError, SchedulerError) as err:
        print(f"error: {err} (nothing was written)", file=sys.stderr)
        return 2
    return 1 if any(r.status != "graded" for r in outcome["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
