"""The class's one gradebook, as `python -m grading.classroom` uses it (nbgrader's SQLAlchemy database).

- SQLite (the default, `sqlite:///<course>/gradebook.db`) has ONE writer: the command itself. Each
  worker grades against a private copy of the gradebook and sends back its copy; `record_submission`
  then copies that one submission's scores and comments into the class's gradebook. The scores are
  the ones nbgrader's own SaveAutoGrades computed in the worker, copied field by field, so they equal
  serial grading; a second recording of the same submission overwrites the same rows.
- PostgreSQL (`postgresql+psycopg://user:password@host:port/db`) takes many writers: each worker's
  nbgrader writes its submission straight into the shared database, as `nbgrader autograde --student`
  does; nbgrader's submission rows are unique per (student, assignment), so a rerun replaces, never
  duplicates.

`check(url, assignments)` is the first thing the command does: one clear error (GradebookError) when
the database cannot be reached or an assignment was never generated, before anything is written.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry


class GradebookError(RuntimeError):
    """The gradebook cannot be used: unreachable, or missing what grading needs."""


def default_url(course: Path) -> str:
    return f"sqlite:///{Path(course).resolve() / 'gradebook.db'}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def check(url: str, assignments: list[str]) -> None:
    """Raise GradebookError unless the database answers and holds every assignment (read only)."""
    if is_sqlite(url):
        path = sqlite_path(url)
        if not path.exists():
            raise GradebookError(f"no gradebook at {path}: run `nbgrader generate_assignment` first")
    else:
        import sqlalchemy as sa

        engine = sa.create_engine(url, connect_args={"connect_timeout": 10}, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as con:
                con.execute(sa.text("SELECT 1"))
                if not sa.inspect(con).has_table("assignment"):
                    raise GradebookError(f"the database {redact(url)} holds no nbgrader gradebook: run "
                                         "`nbgrader generate_assignment ASSIGNMENT --db URL` first")
        except sa.exc.OperationalError as err:
            reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
            raise GradebookError(f"cannot reach the gradebook {redact(url)}: {reason}") from None
        finally:
            engine.dispose()
    with Gradebook(url) as gb:
        missing = []
        for a in assignments:
            try:
                if not gb.find_assignment(a).notebooks:
                    missing.append(a)
            except MissingEntry:
                missing.append(a)
    if missing:
        raise GradebookError(f"assignment(s) {', '.join(missing)} not in the gradebook {redact(url)}: "
                             "run `nbgrader generate_assignment` for them first")


def add_students(url: str, students: list[str]) -> None:
    """Create the students once, before the workers start (they would race to create them)."""
    with Gradebook(url) as gb:
        known = {s.id for s in gb.students}
        for s in students:
            if s not in known:
                gb.add_student(s)


def graded(url: str, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (student, assignment) pairs whose submission has its autograded scores recorded."""
    done = set()
    with Gradebook(url) as gb:
        for student, assignment in pairs:
            with contextlib.suppress(MissingEntry):
                sub = gb.find_submission(assignment, student)
                grades = [g for nb in sub.notebooks for g in nb.grades]
                if grades and all(g.auto_score is not None or g.manual_score is not None or g.needs_manual_grade
                                  for g in grades) and any(g.auto_score is not None for g in grades):
                    done.add((student, assignment))
    return done


def scores(url: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """{(student, assignment): {"score", "max_score", "cells": {grade id: score}, "comments": {...}}}."""
    out = {}
    with Gradebook(url) as gb:
        for student, assignment in pairs:
            with contextlib.suppress(MissingEntry):
                sub = gb.find_submission(assignment, student)
                out[(student, assignment)] = {
                    "score": sub.score, "max_score": sub.max_score,
                    "cells": {f"{nb.name}/{g.name}": g.score for nb in sub.notebooks for g in nb.grades},
                    "comments": {f"{nb.name}/{c.name}": c.comment for nb in sub.notebooks for c in nb.comments},
                }
    return out


def submission_rows(url: str, student: str, assignment: str) -> int:
    """How many submission rows the gradebook holds for (student, assignment) (1 once graded, never 2)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as con:
            return con.execute(sa.text(
                "SELECT count(*) FROM submitted_assignment s JOIN assignment a ON s.assignment_id = a.id "
                "WHERE s.student_id = :s AND a.name = :a"), {"s": student, "a": assignment}).scalar()
    finally:
        engine.dispose()


def snapshot(url: str, dest: Path) -> None:
    """A consistent copy of a SQLite gradebook at `dest` (the seed each worker grades against)."""
    with sqlite3.connect(sqlite_path(url)) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)


def record_submission(url: str, private_url: str, student: str, assignment: str) -> None:
    """Copy one submission's autograded results from a worker's private gradebook into the class's.

    Everything nbgrader's autograde wrote for the submission is copied field by field: the timestamp,
    each notebook's late penalty and flag, each grade's scores and each comment. An existing
    submission is updated in place (nbgrader keeps one row per student and assignment), so recording
    the same result twice changes nothing.
    """
    with Gradebook(private_url) as src_gb, Gradebook(url) as gb:
        src = src_gb.find_submission(assignment, student)
        sub = gb.update_or_create_submission(assignment, student, timestamp=src.timestamp)
        for src_nb in src.notebooks:
            nb = gb.find_submission_notebook(src_nb.name, assignment, student)
            nb.late_submission_penalty, nb.flagged = src_nb.late_submission_penalty, src_nb.flagged
            grades = {g.name: g for g in nb.grades}
            for g in src_nb.grades:
                dst = grades[g.name]
                dst.auto_score, dst.manual_score = g.auto_score, g.manual_score
                dst.extra_credit, dst.needs_manual_grade = g.extra_credit, g.needs_manual_grade
            comments = {c.name: c for c in nb.comments}
            for c in src_nb.comments:
                comments[c.name].auto_comment, comments[c.name].manual_comment = c.auto_comment, c.manual_comment
        sub.timestamp = src.timestamp
        gb.db.commit()


def forget_unscored(url: str, student: str, assignment: str) -> None:
    """Remove a submission that a failed task left without scores (PostgreSQL: nothing half-written stays)."""
    with Gradebook(url) as gb:
        with contextlib.suppress(MissingEntry):
            sub = gb.find_submission(assignment, student)
            if all(g.auto_score is None and g.manual_score is None for nb in sub.notebooks for g in nb.grades):
                gb.remove_submission(assignment, student)
