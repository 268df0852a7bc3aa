"""A throwaway PostgreSQL server for one class's gradebook (tests and benchmarks/grade_class.py).

    with throwaway_postgres() as url:   # postgresql+psycopg://grader:<password>@127.0.0.1:<port>/gradebook
        ...

`initdb` writes a data folder in a temporary directory, `pg_ctl` starts the server on a free loopback
port with password authentication only (scram-sha-256: the grading kernel shares the machine's
network, so the server must never trust a local connection), and the server and its folder are
removed at the end. The binaries are looked for on PATH, then in /usr/lib/postgresql/*/bin (Debian's
`postgresql` package); `server_binaries()` is None where there are none.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "grader"
DATABASE = "gradebook"


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None where PostgreSQL's server is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(folder, "initdb"), os.X_OK) and os.access(os.path.join(folder, "pg_ctl"), os.X_OK):
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(port: int | None = None):
    """Start a private PostgreSQL server; yield its SQLAlchemy URL; stop it and delete its data."""
    bins = server_binaries()
    if bins is None:
        raise FileNotFoundError("PostgreSQL's server (initdb, pg_ctl) is not installed: apt-get install postgresql")
    port = port or free_port()
    password = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="gradebook-pg-") as tmp:
        data, pwfile = Path(tmp) / "data", Path(tmp) / "pw"
        pwfile.write_text(password + "\n")
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        owner = _owner()  # initdb refuses to run as root: the server then runs as an unprivileged user
        if owner is not None:
            os.chown(tmp, owner, -1)
            os.chown(pwfile, owner, -1)
        _run([bins / "initdb", "-D", data, "-U", USER, "--pwfile", pwfile, "--auth", "scram-sha-256",
              "-E", "UTF8", "--no-sync"], env, owner)
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off -c max_connections=200"
        _run([bins / "pg_ctl", "-D", data, "-o", opts, "-l", Path(tmp) / "log", "-w", "-t", "60", "start"], env, owner)
        try:
            _run([bins / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
                 dict(env, PGPASSWORD=password), owner) if (bins / "createdb").exists() else _create_db(port, password)
            yield f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port}/{DATABASE}"
        finally:
            subprocess.run([str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           env=env, capture_output=True, user=owner)


def _create_db(port: int, password: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user=USER, password=password, dbname="postgres",
                         autocommit=True) as con:
        con.execute(f"CREATE DATABASE {DATABASE}")


def _owner() -> int | None:
    """The unprivileged user that runs the server when we are root (postgres, else nobody)."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_uid
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")


def _run(cmd: list, env: dict, user: int | None = None) -> None:
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, user=user,
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed: {(proc.stdout + proc.stderr).strip()[-1500:]}")
