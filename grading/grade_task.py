"""One (student, assignment) grading task, as a Dask worker runs it (grading/classroom.py sends them).

The task grades exactly as `nbgrader autograde ASSIGNMENT --student S --force` does in the course
folder, because it IS that command, run in a subprocess: the same nbgrader configuration (the course's
nbgrader_config.py: the sandboxed grading kernel, GuardedExecute with its per-cell limits, nonces and
kernel reset, the tamper list), on a private copy of the course's parts it needs:

    <workspace>/nbgrader_config.py      the course's, plus the gradebook's URL
    <workspace>/source/<assignment>/    the assignment's source (nbgrader copies its files over)
    <workspace>/submitted/<student>/<assignment>/
    <workspace>/gradebook.db            SQLite only: a copy of the class's gradebook (the seed)

The workspace is the kernel's hidden course folder (grading/sandbox.py), so the gradebook, its URL and
the source stay out of the student's reach as in serial grading. The files travel as bytes, so a
worker needs no shared file system. The task sends back the autograded folder, the tamper report's
rows, and (SQLite) its private gradebook; the client records them (one writer).

Limits: the per-cell limits are nbgrader's (GuardedExecute); `wall_limit` seconds bound the whole task
as a backstop (the nbgrader process and everything under it are killed). The nbgrader process dies
with the worker that started it (PR_SET_PDEATHSIG), so a killed worker leaves no grader behind to
write into a shared gradebook while Dask reruns the task elsewhere.
"""

from __future__ import annotations

import csv
import ctypes
import io
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Task:
    student: str
    assignment: str
    config: str  # the course's nbgrader_config.py text
    source: dict[str, bytes]  # the assignment's source folder: relative path -> bytes
    submitted: dict[str, bytes]  # the submission's folder
    db_url: str | None  # None: grade against the seed (private SQLite copy)
    wall_limit: float = 1800.0


@dataclass
class Result:
    student: str
    assignment: str
    status: str  # "graded", "failed", "timeout"
    reason: str = ""
    seconds: float = 0.0
    worker: str = ""
    cpu_seconds: float = 0.0  # CPU time of nbgrader and the kernel (what one core must give one submission)
    autograded: dict[str, bytes] = field(default_factory=dict)
    tamper_rows: list[list[str]] = field(default_factory=list)
    gradebook: bytes | None = None  # the private SQLite gradebook after grading


def read_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_tree(files: dict[str, bytes], folder: Path) -> None:
    for rel, data in files.items():
        dest = folder / rel
        if ".." in Path(rel).parts:
            raise ValueError(f"refusing a path outside the folder: {rel}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def precompile(root: Path = COURSE_ROOT) -> None:
    """Write the course packages' bytecode (checked-hash .pyc files beside the sources), once per process.

    The grading kernel cannot write them (the course is read-only in the sandbox, and the kernel runs
    with PYTHONDONTWRITEBYTECODE), and it re-imports the course's packages from disk before each
    graded cell, so without them every import compiles the sources again. Checked-hash .pyc files are
    used only while they match their source byte for byte; the grader writes them from the course's
    own files, outside the sandbox, where no student code runs."""
    global _PRECOMPILED
    if _PRECOMPILED:
        return
    import compileall
    import py_compile

    from grading import COURSE_PACKAGES

    for package in COURSE_PACKAGES:
        compileall.compile_dir(root / package, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    _PRECOMPILED = True


_PRECOMPILED = False


def _die_with_parent() -> None:
    os.setsid()  # its own process group: the wall limit kills the whole group
    with_libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with_libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def nbgrader_command(task: Task) -> list[str]:
    return [sys.executable, "-m", "nbgrader", "autograde", task.assignment, "--student", task.student, "--force"]


def run(task: Task, seed: bytes | None = None) -> Result:
    """Grade one submission in a private workspace; never raises for a grading failure."""
    t0 = time.monotonic()
    worker = socket.gethostname()
    precompile()
    with tempfile.TemporaryDirectory(prefix=f"grade-{task.student}-") as tmp:
        ws = Path(tmp)
        db_url = task.db_url or f"sqlite:///{ws / 'gradebook.db'}"
        (ws / "nbgrader_config.py").write_text(
            task.config + f"\n# added by grading/grade_task.py\nc.CourseDirectory.root = {str(ws)!r}\n"
                          f"c.CourseDirectory.db_url = {db_url!r}\n")
        write_tree(task.source, ws / "source" / task.assignment)
        write_tree(task.submitted, ws / "submitted" / task.student / task.assignment)
        if task.db_url is None:
            if seed is None:
                raise ValueError("a SQLite task needs the seed gradebook")
            (ws / "gradebook.db").write_bytes(seed)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(COURSE_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        env.pop("PERSONA_COURSE_MODEL", None)
        log = ws / "nbgrader.log"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, "wb") as out:
            proc = subprocess.Popen(nbgrader_command(task), cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            try:
                code = proc.wait(timeout=task.wall_limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return Result(task.student, task.assignment, "timeout",
                              f"the task ran past its wall limit of {task.wall_limit:.0f} s and was killed",
                              time.monotonic() - t0, worker)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if code != 0:
            return Result(task.student, task.assignment, "failed", f"nbgrader autograde exited with {code}: "
                          + _last_errors(log.read_text(errors="replace")), time.monotonic() - t0, worker, cpu)
        folder = ws / "autograded" / task.student / task.assignment
        rows = []
        if (ws / "tamper_report.csv").exists():
            rows = list(csv.reader(io.StringIO((ws / "tamper_report.csv").read_text())))[1:]
        return Result(task.student, task.assignment, "graded", "", time.monotonic() - t0, worker, cpu,
                      read_tree(folder) if folder.exists() else {}, rows,
                      (ws / "gradebook.db").read_bytes() if task.db_url is None else None)


def _last_errors(log: str) -> str:
    lines = [line for line in log.splitlines() if "ERROR" in line or "Error" in line] or log.splitlines()
    return " | ".join(lines[-4:])[-1200:]
