"""What the tests judge with, compared by identity, and the libraries as the grading kernel started.

- `fingerprint()` / `changed_since(before)`: the namespaces of the course's modules, of the libraries
  the tests compute with, of torch.Tensor and nn.Module, and the interpreter's import, trace and output
  hooks, taken before a student's function runs and compared (by identity) after it returns. The
  tests' `call` (through part_tests/_guard.py) and the graded runner (grading/runner.py) fail a test
  when anything changed.
- `record_pristine()` / `restore_pristine()`: the grading kernel records the library namespaces at
  start-up (grading/sandbox.py); the runner puts back whatever a cell replaced before the tests run.
- `patched_library_functions()`: library functions that notebook code replaced (and that could not
  be put back, outside the grading kernel).
"""

from __future__ import annotations

import sys
import types

from grading import COURSE_PACKAGES
from grading.watch import notebook_file

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

    The grading kernel calls this at start-up (grading/sandbox.py); `graded` (grading/runner.py) then
    puts back whatever a cell replaced, so a patched `torch.allclose` or `print` neither passes a wrong answer nor fails a
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
    """(name, namespace dict) of the course's modules (COURSE_PACKAGES), the guarded libraries,
    and the torch.Tensor and nn.Module classes."""
    found = [(name, vars(module)) for name, module in list(sys.modules.items())
             if module is not None and (name.startswith(COURSE_PACKAGES) or name in _RESTORED)
             and name.split(".")[0] in (*COURSE_PACKAGES, *_RESTORED)]
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
    modules (utils, part_tests, grading), of the guarded libraries, of torch.Tensor and nn.Module (copies,
    taken as they are now), and the interpreter's import, trace and output hooks."""
    return {"namespaces": [(name, ns, dict(ns)) for name, ns in _watched_namespaces()], "hooks": _hooks()}


def changed_since(before: dict) -> list[str]:
    """'module.name' of the functions, classes and submodules that differ from `before` (a
    `fingerprint()`): replaced, removed, or added by notebook code (or added to the tests' or the
    grader's modules)."""
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
                        and (_from_notebook(value) or name.split(".")[0] in _NOTHING_ADDED)]
    hooks = _hooks()
    for label, value in before["hooks"].items():
        now = hooks[label]
        if now is not value and not (isinstance(value, tuple) and len(now) == len(value)
                                     and all(a is b for a, b in zip(now, value))):
            changed.append(label)
    return sorted(changed)


_MISSING = object()
# The course's packages to whose modules nothing at all is added while a test runs (in utils, only
# what notebook code adds counts).
_NOTHING_ADDED = tuple(p for p in COURSE_PACKAGES if p != "utils")
