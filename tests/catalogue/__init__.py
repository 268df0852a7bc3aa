"""The catalogue of mistakes: wrong implementations each exercise test must reject, and correct
implementations written another way that it must accept.

Each entry is declared where it is defined, next to the code of the mistake:

    from tests.catalogue import correct, mistake

    @mistake("test_activation_capper", "sign")      # must fail this test, with a message naming "sign"
    class CapperFlippedSign(ActivationCapper): ...

    @correct("test_activation_capper", "test_activation_capper_input_checks")
    class CapperWithExitStack: ...

    mistake("test_parse_score", "last")(functools.partial(...))   # the call form, for a partial or lambda

A mistake may be stacked under several `@mistake` lines (one per test it must fail). Layout: one
module per exercise, `tests/catalogue/<section>/ex<N>_<M>_<name>.py`, with the exercise's header
(`Exercise N.M — Name`) in its docstring, beside `part_tests/<section>/ex<N>_<M>_<name>.py`, its test.
The section is read from the module's name; `entries(section)` imports every module of a section's
package and returns what they declared. `tests/test_exercises.py` runs them all.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Entry", "correct", "entries", "mistake", "sections", "targets"]


@dataclass(frozen=True)
class Entry:
    """One catalogue entry: `obj` must fail (`phrase` set) or pass (`phrase` None) `section`.`test`."""

    section: str  # "section2"
    test: str  # "test_activation_capper"
    obj: Any  # the wrong (or correct) function or class
    phrase: str | None  # what the failure message must name; None for a correct alternative
    where: str  # "tests.catalogue.section2.ex2_7_activation_capper:CapperFlippedSign"

    @property
    def id(self) -> str:
        return f"{self.section}.{self.test}[{self.where.rsplit(':', 1)[-1]}]"


_REGISTRY: list[Entry] = []


def _section_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 3 or parts[:2] != ["tests", "catalogue"] or not parts[2].startswith("section"):
        raise ValueError(f"catalogue entries live in tests/catalogue/sectionN/...; {module!r} is not there")
    return parts[2]


def _name(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None and hasattr(obj, "func"):  # functools.partial
        name = f"partial({getattr(obj.func, '__qualname__', 'fn')})"
    return name or type(obj).__name__


def _register(tests: tuple[str, ...], phrase: str | None, module: str | None) -> Callable[[Any], Any]:
    if not tests or not all(isinstance(t, str) and t.startswith("test_") for t in tests):
        raise ValueError(f"name the test(s) the entry is for, e.g. 'test_activation_capper'; got {tests!r}")

    def decorate(obj: Any) -> Any:
        mod = module or getattr(obj, "__module__", None) or ""
        if mod in ("functools", "builtins") or not mod.startswith("tests.catalogue."):
            import inspect

            frame = inspect.currentframe().f_back  # the catalogue module that called mistake(...)(obj)
            mod = frame.f_globals.get("__name__", mod) if frame is not None else mod
        section = _section_of(mod)
        for test in tests:
            _REGISTRY.append(Entry(section, test, obj, phrase, f"{mod}:{_name(obj)}"))
        return obj

    return decorate


def mistake(test: str, phrase: str, *, module: str | None = None) -> Callable[[Any], Any]:
    """Declare a wrong implementation: it must fail `test` with a message containing `phrase`
    (case-insensitive), and not with 'not implemented yet'."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError("a mistake names the phrase its failure message must contain")
    return _register((test,), phrase, module)


def correct(*tests: str, module: str | None = None) -> Callable[[Any], Any]:
    """Declare a correct implementation written another way: it must pass every test named."""
    return _register(tests, None, module)


def sections() -> list[str]:
    """The sections whose catalogue is a package of per-exercise modules."""
    here = importlib.import_module(__name__)
    return sorted(m.name for m in pkgutil.iter_modules(here.__path__) if m.ispkg and m.name.startswith("section"))


def entries(section: str | None = None) -> list[Entry]:
    """Every entry declared by the catalogue package of `section` (all sections when None)."""
    for sec in [section] if section else sections():
        pkg = importlib.import_module(f"{__name__}.{sec}")
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    return [e for e in _REGISTRY if section is None or e.section == section]


def targets(short: str) -> dict[str, str | None]:
    """Each test of `part_tests.<short>` -> the name of the student object it runs on (its
    `@exercise` mark; None for a test that has none, which `tests/test_exercises.py` reports)."""
    mod = importlib.import_module(f"part_tests.{short}")
    return {name: getattr(getattr(mod, name), "target", None) for name in dir(mod)
            if name.startswith("test_") and callable(getattr(mod, name))}
