"""The grading kernel: an IPython kernel that runs a student's notebook inside a bubblewrap sandbox.

nbgrader runs student code with the grader's rights, in the submission's folder. The course's
nbgrader configuration (nbgrader/nbgrader_config.py) therefore executes every submission with the
kernel `persona-course-grader`, whose launcher is this module:

    python -m grading.sandbox install    # register the kernel in this environment (setup.sh does it)
    python -m grading.sandbox check      # say whether the sandbox works on this machine

Inside the sandbox the whole file system is read-only (the course's code and tests included) except
the submission's own folder and a private /tmp; the course folder (other students' submissions, the
gradebook, the source notebooks with their hidden tests) is hidden behind an empty directory; the
course's cache and HOME point into the private /tmp, so one submission's files are never read while
grading another; the kernel has its own process namespace, so it can neither see nor signal the
grader, and every process it leaves behind dies with it; file sizes and core dumps are capped.

Without bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`) the kernel refuses to start, unless
PERSONA_GRADING_UNSANDBOXED=1 is set, which runs it plainly (with private cache and HOME folders)
after a loud warning.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "persona-course-grader"
SANDBOX_FLAG = "PERSONA_COURSE_SANDBOX"  # set inside the sandbox
UNSANDBOXED = "PERSONA_GRADING_UNSANDBOXED"
FILE_SIZE_LIMIT = 1 << 30  # 1 GiB: no submission writes more than a few MB
TMP_SIZE = 2 << 30  # the private /tmp


COURSE_ROOT = Path(__file__).resolve().parent.parent
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


def startup_lines(root: Path = COURSE_ROOT) -> str:
    """The kernel's exec_lines, run before any notebook cell.

    First the course's folder goes to the front of sys.path and the submission's folder to the end:
    a student's own module still imports, but a folder handed in beside the notebook and named like
    the course's packages (utils/, part_tests/, grading/) or a library shadows nothing. (The kernel
    runs with -P, so the submission's folder is not on the path while the kernel starts.) Then the
    libraries' namespaces are recorded, so that graded cells can put back what a cell replaces
    (grading/fingerprint.py); the audit hook that watches graded tests for notebook code reaching
    into them is added (grading/watch.py); and the handler that puts the whole kernel back as it
    started before each graded cell is installed (grading/kernel_reset.py; the grader sends the
    request).
    """
    return ("--IPKernelApp.exec_lines=import os as _os, sys as _sys; "
            f"_sys.path[:] = [{str(root)!r}] + [p for p in _sys.path if p not in ('', '.', _os.getcwd(), {str(root)!r})] "
            "+ [_os.getcwd()]; del _os, _sys; "
            "import grading.fingerprint as _g; _g.record_pristine(); del _g; "
            "import grading.watch as _w; _w.install(); del _w; "
            "import grading.kernel_reset as _r; _r.install(); del _r")


def course_root(start: Path) -> Path | None:
    """The nbgrader course folder above `start` (it holds nbgrader_config.py or gradebook.db)."""
    for folder in (start, *start.parents):
        if (folder / "nbgrader_config.py").exists() or (folder / "gradebook.db").exists():
            return folder
    return None


def _private_env(tmp: str) -> dict[str, str]:
    return {
        "HOME": f"{tmp}/home",
        "TMPDIR": tmp,
        "PERSONA_COURSE_CACHE": f"{tmp}/course-cache",
        "MPLCONFIGDIR": f"{tmp}/matplotlib",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        SANDBOX_FLAG: "1",
    }


def bwrap_command(kernel_argv: list[str], cwd: Path, connection_file: Path) -> list[str]:
    """The bubblewrap command line that runs `kernel_argv` sandboxed, in `cwd`."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise FileNotFoundError("bubblewrap (bwrap) is not installed")
    cmd = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--size", str(TMP_SIZE), "--tmpfs", "/tmp"]
    root = course_root(cwd)
    hidden_root = root is not None and root != cwd
    code = _code_paths()
    # The course's code and Python may live under /tmp (a CI checkout) or under the course folder:
    # they come back read-only over the private /tmp, and over the hidden course folder.
    cmd += _rebind([p for p in code if _under(p, Path("/tmp")) and not (hidden_root and _under(p, root))])
    if hidden_root:
        cmd += ["--tmpfs", str(root)]  # hide the course folder ...
        cmd += _rebind([p for p in code if _under(p, root) and p != root])
    cmd += ["--bind", str(cwd), str(cwd)]  # ... but for this submission's own folder
    cmd += ["--ro-bind", str(connection_file), str(connection_file)]
    cmd += ["--dir", "/tmp/home", "--dir", "/tmp/course-cache"]
    for key, value in _private_env("/tmp").items():
        cmd += ["--setenv", key, value]
    # ipykernel watches JPY_PARENT_PID, which the new process namespace hides: it would take the
    # grader for dead. --die-with-parent ends the kernel with the grader instead.
    cmd += ["--unsetenv", "JPY_PARENT_PID"]
    cmd += ["--chdir", str(cwd), "--", *kernel_argv]
    return cmd


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _code_paths() -> list[Path]:
    """What the kernel must read: the course's code, this Python and its packages."""
    repo = Path(__file__).resolve().parent.parent
    candidates = [repo, Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent]
    candidates += [Path(p) for p in sys.path if p and os.path.isdir(p)]
    candidates += [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.isdir(p)]
    found: list[Path] = []
    for p in sorted({c.resolve() for c in candidates}, key=lambda q: len(q.parts)):
        if not any(_under(p, q) for q in found):  # an enclosing folder is bound already
            found.append(p)
    return found


def _rebind(paths: list[Path]) -> list[str]:
    args: list[str] = []
    for p in paths:
        args += ["--ro-bind", str(p), str(p)]
    return args


def _limit_resources() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def launch(connection_file: str) -> None:
    """Replace this process by the sandboxed kernel (the kernelspec's argv calls this)."""
    cwd = Path.cwd().resolve()
    conn = Path(connection_file).resolve()
    # -P (Python 3.11+): the working directory, the submission's folder, is not put on sys.path
    # while the kernel starts; IPython then does not add it either (startup_lines puts it last).
    kernel = [sys.executable, *SAFE_PATH, "-m", "ipykernel_launcher", "-f", str(conn), "--IPKernelApp.ignore_cwd=True",
              startup_lines()]
    _limit_resources()
    try:
        cmd = bwrap_command(kernel, cwd, conn)
    except FileNotFoundError:
        if os.environ.get(UNSANDBOXED) != "1":
            sys.stderr.write(
                "persona-course-grader: bubblewrap (bwrap) is not installed, so student code would run with the "
                "grader's rights. Install it (apt-get install bubblewrap), or set PERSONA_GRADING_UNSANDBOXED=1 "
                "to grade without a sandbox at your own risk.\n")
            raise SystemExit(2)
        sys.stderr.write("persona-course-grader: WARNING: grading WITHOUT a sandbox (PERSONA_GRADING_UNSANDBOXED=1): "
                         "student code can read and write everything the grader can.\n")
        tmp = tempfile.mkdtemp(prefix="persona-grading-")
        env = dict(os.environ, **_private_env(tmp))
        env.pop(SANDBOX_FLAG)
        for sub in ("home", "course-cache"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        os.execve(sys.executable, kernel, env)
    os.execv(cmd[0], cmd)


def kernel_spec() -> dict:
    return {
        # The script by its path (not `-m grading.sandbox`): the launcher runs in the submission's
        # folder, outside the sandbox, and must not import anything handed in there.
        "argv": [sys.executable, *SAFE_PATH, str(COURSE_ROOT / "grading" / "sandbox.py"), "-f", "{connection_file}"],
        "display_name": "Python 3 (course grader, sandboxed)",
        "language": "python",
        # An interrupt travels as a message: a signal to the launcher would stop at bubblewrap.
        "interrupt_mode": "message",
        "metadata": {"debugger": False},
    }


def install(prefix: str = sys.prefix) -> Path:
    """Register the grading kernel in this environment (share/jupyter/kernels/persona-course-grader)."""
    folder = Path(prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1) + "\n")
    return folder


def check() -> str:
    """Run a command in the sandbox and report whether the course files are read-only there."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as d:
        conn = Path(d) / "conn.json"
        conn.write_text("{}")
        probe = [sys.executable, "-c", f"open({str(repo / 'part_tests' / '__init__.py')!r}, 'a')"]
        proc = subprocess.run(bwrap_command(probe, Path(d), conn), capture_output=True, text=True)
    if proc.returncode == 0:
        raise RuntimeError("the sandbox started but the course files were writable inside it")
    if "Read-only file system" not in proc.stderr:
        raise RuntimeError(f"the sandbox did not start: {proc.stderr.strip()[-500:]}")
    return "sandbox works: the course files are read-only to student code"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install"]:
        print(f"installed kernel {KERNEL_NAME!r} in {install()}")
        return 0
    if argv[:1] == ["check"]:
        try:
            print(check())
        except (RuntimeError, FileNotFoundError) as err:
            print(f"sandbox check failed: {err}", file=sys.stderr)
            return 1
        return 0
    if len(argv) == 2 and argv[0] == "-f":
        launch(argv[1])
        return 0  # not reached: launch replaces the process
    print("usage: python -m grading.sandbox install | check | -f CONNECTION_FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
