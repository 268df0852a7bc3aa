"""How a graded (locked) nbgrader cell runs its tests: afresh from the course's own files.

The nbgrader version of each section's test cell reads

    import sys; [sys.modules.pop(m) for m in [m for m in sys.modules if m.split(".")[0] in ('utils', 'part_tests', 'grading')]]
    from grading.runner import graded
    tests = graded("section1", digest="…", nonce="__GRADING_NONCE__")
    tests.test_parse_score(parse_score)

so that nothing a notebook cell did to the course's packages (`grading.COURSE_PACKAGES`: replacing a
test with a no-op, putting a fake module into `sys.modules`) reaches the tests: the first line forgets
every course module, and the import reads them again from disk. `graded` then

- checks that the course's files on disk are the ones the assignment was generated from (`digest`,
  grading/digest.py), so a submission that edited them cannot change another student's grade unnoticed;
- puts back the library functions the tests rely on, as the grading kernel recorded them before any
  cell ran (`torch.allclose = lambda *a, **k: True` in a cell changes nothing), and refuses to run
  when one was replaced by notebook code and cannot be put back (outside the grading kernel;
  grading/fingerprint.py);
- prints, after each test that passed, a confirmation carrying the per-cell `nonce` that the grader
  writes into the cell only when it runs it (grading/executor.py). The grader counts a cell as passed
  only when it sees every confirmation with that nonce, so printing a fake pass line, or hiding a
  failure from the notebook's output, earns nothing.

Run by a student outside nbgrader (the nonce is still the placeholder), it behaves like the plain
test cell: a digest mismatch is only a warning, since a student's copy of the course may be newer.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

from grading.digest import course_digest
from grading.fingerprint import PRISTINE_MODULE, changed_since, fingerprint, patched_library_functions, restore_pristine
from grading.watch import ACK as WATCH_ACK
from grading.watch import EVENT as WATCH_EVENT

_audit = sys.audit  # bound when the graded cell imports this module, just after the kernel was reset

NONCE_PLACEHOLDER = "__GRADING_NONCE__"
PASS_LINE = "graded {test}: passed ({nonce})"


class GradingError(AssertionError):
    """The grading environment is not what the assignment was generated for."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m\u2717 {line}\x1b[0m" if i == 0 else f"  {line}" for i, line in enumerate(str(self).splitlines())]


class _Graded:
    """The fresh test module of a section; each test it hands out confirms a pass with the nonce."""

    def __init__(self, module: types.ModuleType, nonce: str):
        self._module = module
        self._nonce = nonce

    def __getattr__(self, name: str):
        test = getattr(self._module, name)
        if not name.startswith("test_"):
            return test
        nonce = self._nonce

        def run(*args, **kwargs):
            before = fingerprint()
            box: list = []
            _audit(WATCH_EVENT, "start", box)
            if box != [WATCH_ACK] and sys.modules.get(PRISTINE_MODULE) is not None:  # in the grading kernel
                raise GradingError(f"{name}: the grading kernel's watch did not answer; the test cannot run")
            try:
                result = test(*args, **kwargs)
            finally:
                noted: list = []
                _audit(WATCH_EVENT, "end", noted)
            if noted:
                raise GradingError(
                    f"{name}: while the test ran, the tested code reached into it ({', '.join(noted[:4])}"
                    f"{' ...' if len(noted) > 4 else ''}); a function under test must compute its answer, not "
                    "inspect or change the test")
            changed = changed_since(before)
            if changed:
                raise GradingError(
                    f"{name}: while the test ran, something replaced what the tests check with "
                    f"({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); a function under test must "
                    "compute its answer, not change the tests or the libraries")
            if nonce != NONCE_PLACEHOLDER:
                print(PASS_LINE.format(test=name, nonce=nonce))
            return result

        run.__name__ = name
        run.__doc__ = test.__doc__
        return run


def graded(section: str, digest: str, nonce: str = NONCE_PLACEHOLDER) -> _Graded:
    """The tests of `section` ('section1'), loaded from disk, after the integrity checks above."""
    grading = nonce != NONCE_PLACEHOLDER
    found = course_digest()
    if found != digest:
        message = ("the course's test files on this machine differ from the ones this assignment was generated "
                   "from (utils/, part_tests/, grading/ or data/ changed)")
        if grading:
            raise GradingError(message + ": grade against a fresh copy of the course, and regenerate the "
                               "assignment (nbgrader generate_assignment) if the course was updated on purpose")
        warnings.warn(message + "; the tests run anyway", stacklevel=2)
    restored = restore_pristine()
    if restored:
        print(f"(the grader put back {', '.join(sorted(restored)[:5])}{' ...' if len(restored) > 5 else ''}, "
              "which a cell above had replaced)")
    patched = patched_library_functions()
    if patched:
        raise GradingError(
            "a notebook cell replaced library functions that the tests rely on: " + ", ".join(sorted(patched))
            + ". Remove those assignments (and restart the kernel) so that the tests can check your work.")
    module = importlib.import_module(f"part_tests.{section}")
    return _Graded(module, nonce)
