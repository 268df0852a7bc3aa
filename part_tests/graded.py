"""How a graded (locked) nbgrader cell runs its tests: afresh from the course's own files.

The nbgrader version of each section's test cell reads

    import sys; [sys.modules.pop(m) for m in [m for m in sys.modules if m.split(".")[0] in ("part_tests", "utils")]]
    from part_tests.graded import graded
    tests = graded("section1", digest="…", nonce="__GRADING_NONCE__")
    tests.test_parse_score(parse_score)

so that nothing a notebook cell did to `part_tests` or `utils` (replacing a test with a no-op, putting a
fake module into `sys.modules`) reaches the tests: the first line forgets every course module, and
the import reads them again from disk. `graded` then

- checks that the course's files on disk are the ones the assignment was generated from (`digest`),
  so a submission that edited them cannot change another student's grade unnoticed;
- puts back the library functions the tests rely on, as the grading kernel recorded them before any
  cell ran (`torch.allclose = lambda *a, **k: True` in a cell changes nothing), and refuses to run
  when one was replaced by notebook code and cannot be put back (outside the grading kernel);
- prints, after each test that passed, a confirmation carrying the per-cell `nonce` that the grader
  writes into the cell only when it runs it (utils/autograde.py). The grader counts a cell as passed
  only when it sees every confirmation with that nonce, so printing a fake pass line, or hiding a
  failure from the notebook's output, earns nothing.

Run by a student outside nbgrader (the nonce is still the placeholder), it behaves like the plain
test cell: a digest mismatch is only a warning, since a student's copy of the course may be newer.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import types
import warnings
from pathlib import Path

from part_tests.watch import ACK as WATCH_ACK
from part_tests.watch import EVENT as WATCH_EVENT
from part_tests.watch import notebook_file

_audit = sys.audit  # bound when the graded cell imports this module, just after the kernel was reset

NONCE_PLACEHOLDER = "__GRADING_NONCE__"
PASS_LINE = "graded {test}: passed ({nonce})"

_ROOT = Path(__file__).resolve().parent.parent
# The files the tests execute or read: the test package, the utils package (with the tiny models'
# configs and tokenizers) and the course data.
_TRACKED = (("part_tests", "**/*.py"), ("utils", "**/*.py"), ("utils/assets/tiny-qwen2", "*"),
            ("utils/assets/tiny-gemma2", "*"), ("data", "**/*"))


class GradingError(AssertionError):
    """The grading environment is not what the assignment was generated for."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m\u2717 {line}\x1b[0m" if i == 0 else f"  {line}" for i, line in enumerate(str(self).splitlines())]


def course_files(root: Path = _ROOT) -> list[Path]:
    files: set[Path] = set()
    for folder, pattern in _TRACKED:
        files.update(p for p in (root / folder).glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def course_digest(root: Path = _ROOT) -> str:
    """sha256 over the relative paths and contents of the course files the tests depend on."""
    h = hashlib.sha256()
    for path in course_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


# Library namespaces whose functions the tests call to decide pass or fail.
_GUARDED = ("builtins", "math", "re", "json", "numpy", "numpy.linalg", "torch", "torch.linalg",
            "torch.nn.functional", "torch.testing", "sklearn.decomposition")


def _from_notebook(obj) -> bool:
    """Whether `obj` is a function written in a notebook cell (IPython compiles cells to such files)."""
    code = getattr(obj, "__code__", None) or getattr(getattr(obj, "__func__", None), "__code__", None)
    if code is None:
        call = getattr(type(obj), "__call__", None)
        code = getattr(call, "__code__", None)
        if code is None:
            return False
    return notebook_file(code.co_filename)


def patched_library_functions() -> list[str]:
    """'torch.allclose'-style names of library functions that notebook code replaced."""
    found = []
    for modname in _GUARDED:
        module = sys.modules.get(modname)
        if module is None:
            continue
        for attr, value in list(vars(module).items()):
            if callable(value) and _from_notebook(value):
                found.append(f"{modname}.{attr}")
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    if tensor is not None:
        found += [f"torch.Tensor.{a}" for a, v in list(vars(tensor).items()) if callable(v) and _from_notebook(v)]
    return found


PRISTINE_MODULE = "_course_pristine"
_RESTORED = _GUARDED + ("torch.nn",)


def record_pristine() -> None:
    """Remember the library namespaces as they are before any notebook cell runs.

    The grading kernel calls this at start-up (utils/sandbox.py); `graded` then puts back whatever a
    cell replaced, so a patched `torch.allclose` or `print` neither passes a wrong answer nor fails a
    right one.
    """
    import importlib as _il

    snapshot = {}
    for name in _RESTORED:
        try:
            module = _il.import_module(name)
        except ImportError:
            continue
        snapshot[name] = dict(vars(module))
    torch = sys.modules.get("torch")
    if torch is not None:
        snapshot["torch.Tensor"] = dict(vars(torch.Tensor))
        snapshot["torch.nn.Module"] = dict(vars(torch.nn.Module))
    holder = types.ModuleType(PRISTINE_MODULE)
    holder.snapshot = snapshot
    sys.modules[PRISTINE_MODULE] = holder


def _namespace(name: str):
    if name in ("torch.Tensor", "torch.nn.Module"):
        torch = sys.modules.get("torch")
        return None if torch is None else (torch.Tensor if name == "torch.Tensor" else torch.nn.Module)
    return sys.modules.get(name)


# Rebound while the kernel runs, by the kernel itself (input, for stdin forwarding) or by torch
# (manual_seed, wrapped when torch._dynamo loads): put back only when a notebook cell did it.
_VOLATILE = ("builtins.input", "builtins.getpass", "torch.manual_seed")


def restore_pristine() -> list[str]:
    """Put back every recorded library attribute that was replaced; return their names."""
    holder = sys.modules.get(PRISTINE_MODULE)
    if holder is None:
        return []
    restored = []
    for name, saved in holder.snapshot.items():
        target = _namespace(name)
        if target is None:
            continue
        current = vars(target)
        for attr in [a for a, v in current.items() if a not in saved and _from_notebook(v)]:
            try:
                delattr(target, attr)  # added by a cell (e.g. torch.Tensor.__eq__ over the inherited one)
            except (AttributeError, TypeError):
                continue
            restored.append(f"{name}.{attr}")
        for attr, value in saved.items():
            if f"{name}.{attr}" in _VOLATILE and attr in current and not _from_notebook(current[attr]):
                continue
            if current.get(attr, value) is not value or attr not in current:
                try:
                    setattr(target, attr, value)
                except (AttributeError, TypeError):
                    continue
                restored.append(f"{name}.{attr}")
    return restored


def _watched_namespaces() -> list[tuple[str, dict]]:
    """(name, namespace dict) of the course's part_tests and utils modules, the guarded libraries,
    and the torch.Tensor and nn.Module classes."""
    found = [(name, vars(module)) for name, module in list(sys.modules.items())
             if module is not None and (name.startswith(("part_tests", "utils")) or name in _RESTORED)
             and name.split(".")[0] in ("part_tests", "utils", *_RESTORED)]
    torch = sys.modules.get("torch")
    if torch is not None:
        found += [("torch.Tensor", vars(torch.Tensor)), ("torch.nn.Module", vars(torch.nn.Module))]
    return found


def _hooks() -> dict:
    import builtins

    return {"sys.meta_path": tuple(sys.meta_path), "sys.path": tuple(sys.path), "sys.trace": sys.gettrace(),
            "sys.profile": sys.getprofile(),
            "sys.stdout": sys.stdout, "builtins.__import__": builtins.__import__}


def fingerprint() -> dict:
    """What the tests compute and judge with, to compare by identity: the namespaces of the course's
    part_tests and utils modules, of the guarded libraries, of torch.Tensor and nn.Module (copies,
    taken as they are now), and the interpreter's import, trace and output hooks."""
    return {"namespaces": [(name, ns, dict(ns)) for name, ns in _watched_namespaces()], "hooks": _hooks()}


def changed_since(before: dict) -> list[str]:
    """'module.name' of the functions, classes and submodules that differ from `before` (a
    `fingerprint()`): replaced, removed, or added by notebook code (or added to part_tests)."""
    changed = []
    for name, live, saved in before["namespaces"]:
        for attr, value in saved.items():
            now = live.get(attr, _MISSING)
            if now is value or not (callable(value) or isinstance(value, types.ModuleType)):
                continue
            label = f"{name}.{attr}"
            if label in _VOLATILE and not _from_notebook(now):
                continue
            changed.append(label)
        if len(live) != len(saved) or live.keys() != saved.keys():
            changed += [f"{name}.{attr}" for attr, value in list(live.items()) if attr not in saved
                        and not isinstance(value, types.ModuleType)
                        and (_from_notebook(value) or name.startswith("part_tests"))]
    hooks = _hooks()
    for label, value in before["hooks"].items():
        now = hooks[label]
        if now is not value and not (isinstance(value, tuple) and len(now) == len(value)
                                     and all(a is b for a, b in zip(now, value))):
            changed.append(label)
    return sorted(changed)


_MISSING = object()


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
                   "from (part_tests/, utils/ or data/ changed)")
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
