"""The grading kernel's reset (grading/kernel_reset.py), run in the real grading kernel: what a
student cell installs before a graded cell is put back, and an honest notebook has nothing put back."""

from __future__ import annotations

import os
import shutil
import textwrap

import pytest

from grading import COURSE_PACKAGES
from grading.kernel_reset import MESSAGE, REPLY

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None and os.environ.get("PERSONA_GRADING_UNSANDBOXED") != "1",
                                reason="the grading kernel needs bubblewrap (setup.sh installs it)")

FAKE_GRADED = """
class _Fake:
    def __init__(self, nonce): self.nonce = nonce
    def __getattr__(self, name): return lambda *a, **k: print(f"graded {name}: passed ({self.nonce})")
"""
# Each attack: (code a student cell runs, what the reset must report having put back)
ATTACKS = {
    "__import__ hands out a fake runner": (FAKE_GRADED + """
import builtins, types
_real_import = builtins.__import__
def _imp(name, *a, **k):
    if name == "grading.runner":
        m = types.ModuleType(name); m.graded = lambda section, digest=None, nonce="": _Fake(nonce); return m
    return _real_import(name, *a, **k)
builtins.__import__ = _imp
""", "builtins.__import__"),
    "an input transformer rewrites the graded cell": ("""
def _rewrite(lines):
    return ['print("rewritten")\\n'] if any("probe" in l for l in lines) else lines
get_ipython().input_transformers_post.append(_rewrite)
""", "shell.input_transformers_post"),
    "an AST transformer rewrites the graded cell": ("""
import ast
class _T(ast.NodeTransformer):
    def visit_Constant(self, node):
        return ast.Constant("rewritten") if node.value == "probe" else node
get_ipython().ast_transformers.append(_T())
""", "shell.ast_transformers"),
    "an import finder hands out a fake runner": (FAKE_GRADED + """
import sys, importlib.abc, importlib.util
class _Loader(importlib.abc.Loader):
    def create_module(self, spec): return None
    def exec_module(self, m): m.graded = lambda section, digest=None, nonce="": _Fake(nonce)
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, _Loader()) if name == "grading.runner" else None
sys.meta_path.insert(0, _Finder())
""", "sys.meta_path"),
    "the notebook's __builtins__ is swapped": ("""
import builtins
_b = dict(vars(builtins)); _b["print"] = lambda *a, **k: None
globals()["__builtins__"] = _b
""", "__builtins__"),
    "output, tracebacks and events are hijacked": ("""
import sys
class _W:
    def __init__(self, s): self.s = s
    def write(self, t): return self.s.write(t.replace("probe", "rewritten"))
    def __getattr__(self, n): return getattr(self.s, n)
sys.stdout = _W(sys.stdout)
get_ipython().showtraceback = lambda *a, **k: None
get_ipython().events.register("pre_run_cell", lambda info: None)
""", "sys.stdout"),
    "a package written into the submission folder and put first on sys.path": (FAKE_GRADED + """
import os, sys
os.makedirs("shadow/grading", exist_ok=True)
open("shadow/grading/__init__.py", "w").write("")
open("shadow/grading/runner.py", "w").write("def graded(*a, **k):\\n    raise SystemExit\\n")
sys.path.insert(0, os.path.abspath("shadow"))
for name in [m for m in sys.modules if m.split(".")[0] == "grading"]:
    del sys.modules[name]
""", "sys.path"),
    "a finder cached for the course's folder hands out a fake package": ("""
import os, sys
from importlib.machinery import FileFinder, SourceFileLoader
os.makedirs("/tmp/cached/grading", exist_ok=True)
open("/tmp/cached/grading/__init__.py", "w").write("")
open("/tmp/cached/grading/runner.py", "w").write("graded = 'fake'\\n")
sys.path_importer_cache[sys.path[0]] = FileFinder("/tmp/cached", (SourceFileLoader, [".py"]))
for name in [m for m in sys.modules if m.split(".")[0] == "grading"]:
    del sys.modules[name]
""", "sys.path_importer_cache"),
    "a library module made up with a borrowed spec (its code would run inside the graded cell)": ("""
import sys, types, jaxtyping
_fake = types.ModuleType("jaxtyping")
_fake.__spec__ = jaxtyping.__spec__
_fake.__getattr__ = lambda name: getattr(jaxtyping, name)
sys.modules["jaxtyping"] = _fake
""", "sys.modules['jaxtyping']"),
    "a standard library method the graded cell calls is patched": ("""
import pathlib
_read = pathlib.Path.read_bytes
pathlib.Path.read_bytes = lambda self: _read(self)
""", "Path.read_bytes"),
    "a fake torch in sys.modules": ("""
import sys, types
sys.modules["torch"] = types.ModuleType("torch")
""", "sys.modules['torch']"),
}
PROBE = """
import sys, builtins, torch, grading.runner as _m
print("probe", type(_m.graded).__name__, getattr(torch, "allclose", None) is not None, len(sys.meta_path))
"""


SHADOW = "raise RuntimeError('a package from the submission folder was imported')\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from jupyter_client.manager import start_new_kernel

    cwd = os.getcwd()
    folder = tmp_path_factory.mktemp("submission")
    # A submission may hand in files beside its notebook: a package named like the course's must not
    # shadow it, while a student's own module still imports.
    for package, module in (("part_tests", "_common"), ("grading", "runner")):
        (folder / package).mkdir()
        (folder / package / "__init__.py").write_text(SHADOW)
        (folder / package / f"{module}.py").write_text(SHADOW)
    (folder / "my_helpers.py").write_text("ANSWER = 42\n")
    os.chdir(folder)
    try:
        km, kc = start_new_kernel(kernel_name="persona-course-grader", startup_timeout=120)
    finally:
        os.chdir(cwd)
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _run(kc, code: str) -> tuple[str, str]:
    msg_id = kc.execute(textwrap.dedent(code))
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "error":
            out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=120)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]["status"], "".join(out)


def _reset(kc) -> dict:
    request = kc.session.msg(MESSAGE, {"token": "t0k3n"})
    kc.shell_channel.send(request)
    while True:
        reply = kc.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            assert reply["msg_type"] == REPLY and reply["content"]["token"] == "t0k3n"
            return reply["content"]


def test_the_submission_folder_shadows_nothing(kernel):
    status, out = _run(kernel, "import part_tests._common, grading.runner, my_helpers\n"
                               "print(part_tests._common.__file__, grading.runner.__file__, my_helpers.ANSWER)")
    assert status == "ok" and not any("submission" in f for f in out.split()[:2]) and out.split()[2] == "42", out


def test_honest_cells_have_nothing_put_back(kernel):
    status, out = _run(kernel, "import torch\nx = torch.ones(3)\nprint(float(x.sum()))\n" + PROBE)
    assert status == "ok" and "probe function True" in out, out
    baseline = _reset(kernel)
    assert baseline == {"status": "ok", "token": "t0k3n", "restored": []}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_reset_puts_back_what_a_cell_installed(kernel, attack):
    code, expected = ATTACKS[attack]
    _, clean = _run(kernel, PROBE)
    status, out = _run(kernel, code)
    assert status == "ok", f"the attack itself failed: {out}"
    reset = _reset(kernel)
    assert reset["status"] == "ok" and expected in reset["restored"], reset
    status, out = _run(kernel, PROBE)
    assert status == "ok" and out == clean, f"after the reset the graded cell still ran differently: {out!r} vs {clean!r}"


# A thread whose target is not notebook code (exec of a string) and keeps patching the fresh runner.
EXEC_THREAD_ATTACK = '''
import threading
_src = """
import sys, time
while True:
    g = sys.modules.get("grading.runner")
    if g is not None:
        g.graded = "patched by a thread"
    time.sleep(0.001)
"""
threading.Thread(target=exec, args=(_src, {}), name="exec-thread", daemon=True).start()
'''


def test_a_thread_running_code_from_a_string_is_stopped(kernel):
    _, clean = _run(kernel, PROBE)
    status, out = _run(kernel, EXEC_THREAD_ATTACK)
    assert status == "ok", out
    reset = _reset(kernel)
    assert reset["status"] == "ok" and "thread 'exec-thread' stopped" in reset["restored"], reset
    fresh = ("import sys, time; time.sleep(0.05)\n"
             f"[sys.modules.pop(m) for m in [m for m in sys.modules if m.split('.')[0] in {COURSE_PACKAGES!r}]]\n")
    status, out = _run(kernel, fresh + PROBE)  # as a graded cell, which imports the runner afresh
    assert status == "ok" and out == clean, f"after the reset the thread still patched the runner: {out!r} vs {clean!r}"


# A thread that swallows the SystemExit the reset sends it (it could keep undoing the reset).
THREAD_ATTACK = """
import threading, time
def _keep_patching():
    while True:
        try:
            time.sleep(0.001)
        except BaseException:
            pass
threading.Thread(target=_keep_patching, daemon=True).start()
"""


def test_a_thread_that_will_not_stop_fails_the_reset(kernel):
    status, _ = _run(kernel, THREAD_ATTACK)
    assert status == "ok"
    reset = _reset(kernel)
    assert reset["status"] == "error" and "kept running" in reset["error"], reset


def test_the_grading_kernel_watches_graded_tests(kernel):
    """The audit hook is installed at start-up: a tested function that fetches the test's frames fails."""
    status, out = _run(kernel, """
import sys, torch
import grading.runner as _g, grading.digest as _d
def compute_cosine_similarity_matrix(vectors):
    sys._getframe(1)  # what a function that edits the test's expected values starts with
    names = list(vectors)
    stacked = torch.stack([vectors[n].double() for n in names])
    unit = stacked / stacked.norm(dim=1, keepdim=True)
    return unit @ unit.T, names
_t = _g.graded("section1", digest=_d.course_digest(), nonce="0" * 32)
_t.test_compute_cosine_similarity_matrix(compute_cosine_similarity_matrix)
""")
    assert status == "error" and "reached into it (sys._getframe" in out, out

