"""While a graded test runs, watch for notebook code that reaches into the test.

A test calls the student's function, and that function runs in the same process as the test: it
could fetch the test's frames (`sys._getframe`, `inspect.currentframe`, an exception's
`__traceback__.tb_frame`) and rewrite the expected values or the checks in them, swap a function's
`__code__`, patch a class of the tests or of a library, or set a trace function. An audit hook
(PEP 578), installed when the grading kernel starts (`grading/sandbox.py`) and impossible to remove
from Python, notes each of these when the code asking is notebook code and a graded test is
running. The graded runner (`grading/runner.py`) opens and closes the watch around each test with
an audit event of its own and fails the test when anything was noted. Honest exercise code never
does any of this; outside graded tests (in the student's own cells) nothing is noted.
"""

from __future__ import annotations

EVENT = "persona_course.graded_test"
ACK = "watching"

# Audit events through which code gets at frames or changes code it does not own.
_EVENTS = ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_referrers",
           "gc.get_referents", "gc.get_objects", "sys.addaudithook", "ctypes.dlopen", "ctypes.dlsym",
           "ctypes.addressof", "ctypes.cdata", "ctypes.string_at", "ctypes.wstring_at", "ctypes.call_function")
_FRAME_ATTRS = ("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_globals", "f_locals")
_HELPERS = ("inspect.py", "traceback.py")  # the stdlib helpers that hand out frames on request


def notebook_file(filename: str) -> bool:
    """Whether code compiled under `filename` was written in a notebook cell (IPython and ipykernel
    compile cells to names like these)."""
    return filename.startswith("<ipython-input") or "/ipykernel_" in filename or filename.startswith("<cell")


def install() -> bool:
    """Add the audit hook (once per process); True if it was added now."""
    import sys

    if getattr(sys, "_persona_course_watch", False):
        return False
    _getframe, _isinstance, _getattr, _type, _str, _len = sys._getframe, isinstance, getattr, type, str, len
    _notebook_file = notebook_file
    state = {"active": False, "busy": False, "noted": []}

    def notebook(frame) -> bool:
        if frame is None:
            return False
        return _notebook_file(frame.f_code.co_filename)

    def asked_by_notebook() -> bool:
        # frame 0 is this function, 1 the hook, 2 whoever raised the event (or a stdlib helper)
        asker = _getframe(2)
        if notebook(asker):
            return True
        return asker is not None and asker.f_code.co_filename.endswith(_HELPERS) and notebook(asker.f_back)

    def hook(event: str, args: tuple) -> None:
        if event == EVENT:
            action, box = args[0], args[1]
            state["busy"] = True
            try:
                from_notebook = asked_by_notebook()
            finally:
                state["busy"] = False
            if from_notebook:  # the tested function tried to open or close the watch itself
                state["noted"].append(f"audit event {EVENT!r} {action!r}")
                return
            if action == "start":
                state["active"], state["noted"] = True, []
                box.append(ACK)
            elif action == "end":
                state["active"] = False
                box.extend(state["noted"])
                state["noted"] = []
            return
        if not state["active"] or state["busy"]:
            return
        if event == "object.__getattr__":
            if args[1] not in _FRAME_ATTRS:
                return
            what = f"read .{args[1]}"
        elif event == "object.__setattr__":
            target, attr = args[0], args[1]
            if attr != "__code__" and not (_isinstance(target, _type) and _getattr(target, "__module__", "") != "__main__"):
                return
            what = f"set {_getattr(target, '__qualname__', _type(target).__name__)}.{attr}"
        elif event in _EVENTS:
            what = event
        else:
            return
        state["busy"] = True
        try:
            if asked_by_notebook() and _len(state["noted"]) < 20:
                state["noted"].append(_str(what))
        finally:
            state["busy"] = False

    sys.addaudithook(hook)
    sys._persona_course_watch = True
    return True
