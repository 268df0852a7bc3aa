"""Grading a whole class on Dask (grading/classroom.py): the same scores as serial nbgrader, one gradebook.

One tiny class of Section 3 (the fastest to grade): a perfect submission, one with a planted mistake,
and one that replaces the course's tests. It is graded once serially (`nbgrader autograde`, the
reference), then on a 2-worker LocalCluster into the course's SQLite gradebook and into a throwaway
PostgreSQL server, with one worker killed mid-task in the PostgreSQL run. Each must give the serial
scores, comments and tamper report, record each submission once, and a rerun must skip them all.
An unreachable gradebook or scheduler is one clear error before anything is written; a task past its
wall limit is killed and reported; the SLURM and PBS configurations write the job script we mean.
"""

from __future__ import annotations

import csv
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from grading import gradebook, synthetic
from grading.classroom import autograde, main
from grading.cluster import SchedulerError, jobqueue_cluster
from grading.gradebook import GradebookError
from grading.grade_task import Task, read_tree, run
from grading.pgserver import free_port, server_binaries, throwaway_postgres

SECTION = synthetic.section_name(3)
STUDENTS = ("perfect", "planted", "tamper")


def _hand_in_class(course: Path) -> None:
    nbs = synthetic.notebooks(course, SECTION)
    for student in STUDENTS:
        synthetic.hand_in(course, student, SECTION, nbs[student])


def _tamper_rows(course: Path) -> list[tuple]:
    report = course / "tamper_report.csv"
    return sorted(map(tuple, csv.reader(open(report)))) if report.exists() else []


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The reference: the class graded by nbgrader itself, one submission after another."""
    course = synthetic.make_course(tmp_path_factory.mktemp("serial"), [SECTION])
    _hand_in_class(course)
    synthetic.nbgrader(course, "autograde", SECTION, "--force")
    pairs = [(s, SECTION) for s in STUDENTS]
    return {"scores": gradebook.scores(gradebook.default_url(course), pairs), "tamper": _tamper_rows(course),
            "course": course}


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from grading.cluster import local_cluster

    cluster = local_cluster(2)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.slow
def test_sqlite_class_equals_serial_and_rerun_skips(serial, client, tmp_path):
    course = synthetic.make_course(tmp_path / "course", [SECTION])
    _hand_in_class(course)
    out = autograde(course, SECTION, client=client, progress=False)
    pairs = out["pairs"]
    assert {r.status for r in out["results"].values()} == {"graded"}, {p: r.reason for p, r in out["results"].items()}
    got = gradebook.scores(out["url"], pairs)
    assert got == serial["scores"], f"parallel grading differs from serial: {got} vs {serial['scores']}"
    assert got[("perfect", SECTION)]["score"] == got[("perfect", SECTION)]["max_score"] > 0
    assert got[("planted", SECTION)]["score"] < got[("perfect", SECTION)]["score"]
    assert _tamper_rows(course) == serial["tamper"] and any(r[0] == "tamper" for r in serial["tamper"])
    assert all(gradebook.submission_rows(out["url"], s, SECTION) == 1 for s in STUDENTS)
    rows = list(csv.DictReader(open(course / "grades.csv")))
    assert {(r["student"], r["status"]) for r in rows} == {(s, "graded") for s in STUDENTS}
    assert all(float(r["score"]) == got[(r["student"], SECTION)]["score"] for r in rows)
    feedback_source = course / "autograded" / "perfect" / SECTION / f"{SECTION}.ipynb"
    assert feedback_source.exists(), "the autograded notebook (what generate_feedback reads) was not written"

    again = autograde(course, SECTION, client=client, progress=False)  # nothing left to grade
    assert again["results"] == {} and sorted(again["skipped"]) == sorted(pairs)
    assert gradebook.scores(out["url"], pairs) == got and _tamper_rows(course) == serial["tamper"]
    assert {r["status"] for r in csv.DictReader(open(course / "grades.csv"))} == {"skipped"}


@pytest.mark.slow
@pytest.mark.skipif(server_binaries() is None, reason="PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
def test_postgres_class_equals_serial_with_a_worker_killed(serial, client, tmp_path):
    with throwaway_postgres() as url:
        course = synthetic.make_course(tmp_path / "course", [SECTION], db_url=url)
        _hand_in_class(course)
        killed = {}
        killer = threading.Thread(target=lambda: killed.update(key=synthetic.kill_worker_mid_task(client, after=4)))
        killer.start()
        out = autograde(course, SECTION, db=url, client=client, progress=False)
        killer.join()
        assert killed.get("key"), "no grading task was seen running, so no worker was killed"
        assert {r.status for r in out["results"].values()} == {"graded"}, {p: r.reason for p, r in out["results"].items()}
        got = gradebook.scores(url, out["pairs"])
        assert got == serial["scores"], f"PostgreSQL grading with a killed worker differs from serial: {got}"
        assert all(gradebook.submission_rows(url, s, SECTION) == 1 for s in STUDENTS), "a submission was recorded twice"
        assert _tamper_rows(course) == serial["tamper"]
        assert not (course / "gradebook.db").exists(), "a SQLite gradebook was written beside the PostgreSQL one"


def test_unreachable_database_is_one_error_before_anything_is_written(tmp_path, capsys):
    course = tmp_path / "course"
    (course / "submitted" / "ann" / SECTION).mkdir(parents=True)
    shutil.copy(synthetic.ROOT / "nbgrader" / "nbgrader_config.py", course / "nbgrader_config.py")
    url = f"postgresql+psycopg://grader:x@127.0.0.1:{free_port()}/gradebook"
    with pytest.raises(GradebookError, match="cannot reach the gradebook"):
        autograde(course, SECTION, db=url, progress=False)
    assert main(["autograde", SECTION, "--course", str(course), "--db", url]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nothing was written" in err and ":x@" not in err, err
    assert sorted(p.name for p in course.iterdir()) == ["nbgrader_config.py", "submitted"]
    # SQLite: no gradebook (the assignment was never generated) is the same kind of error
    assert main(["autograde", SECTION, "--course", str(course)]) == 2
    assert sorted(p.name for p in course.iterdir()) == ["nbgrader_config.py", "submitted"]


def test_unreachable_scheduler_is_one_error_before_anything_is_written(tmp_path, monkeypatch):
    course = tmp_path / "course"
    (course / "submitted" / "ann" / SECTION).mkdir(parents=True)
    (course / "submitted" / "ann" / SECTION / f"{SECTION}.ipynb").write_text("{}")
    shutil.copy(synthetic.ROOT / "nbgrader" / "nbgrader_config.py", course / "nbgrader_config.py")
    from nbgrader.api import Gradebook

    url = gradebook.default_url(course)
    with Gradebook(url) as gb:  # an assignment as generate_assignment leaves it
        gb.add_assignment(SECTION)
        gb.add_notebook(SECTION, SECTION)
    before = (course / "gradebook.db").read_bytes()
    with pytest.raises(SchedulerError, match="cannot reach the Dask scheduler"):
        autograde(course, SECTION, scheduler=f"tcp://127.0.0.1:{free_port()}", progress=False)
    assert (course / "gradebook.db").read_bytes() == before, "the gradebook changed although grading never started"
    with sqlite3.connect(course / "gradebook.db") as con:
        assert con.execute("SELECT count(*) FROM student").fetchone()[0] == 0
    assert not (course / "autograded").exists() and not (course / "grades.csv").exists()


@pytest.mark.slow
def test_a_task_past_its_wall_limit_is_killed_and_reported(tmp_path):
    course = synthetic.make_course(tmp_path / "course", [SECTION])
    synthetic.hand_in(course, "looper", SECTION, synthetic.notebooks(course, SECTION)["loop"])
    seed = (course / "gradebook.db").read_bytes()
    task = Task("looper", SECTION, (course / "nbgrader_config.py").read_text(), read_tree(course / "source" / SECTION),
                read_tree(course / "submitted" / "looper" / SECTION), None, wall_limit=5)
    result = run(task, seed)
    assert result.status == "timeout" and "wall limit of 5 s" in result.reason
    assert result.seconds < 30 and not result.autograded and result.gradebook is None


@pytest.mark.parametrize("kind, directive", [("slurm", "#SBATCH -p"), ("pbs", "#PBS -q")])
def test_jobqueue_configuration_writes_the_job_script(kind, directive):
    cluster = jobqueue_cluster(kind, n_jobs=0, queue="classq", walltime="01:00:00")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert f"{directive} classq" in script and "01:00:00" in script, script
    assert "--nthreads 1" in script and "--nworkers 16" in script, script
    assert f"cd {synthetic.ROOT}" in script and "bin/activate" in script and "CUDA_VISIBLE_DEVICES=" in script
