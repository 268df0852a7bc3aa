"""Every exercise test passes the reference, fails the stub with 'not implemented yet', and fails
every wrong implementation in the catalogue with a message naming the mistake; every correct
alternative passes.

The catalogue is declared beside each mistake (`tests.catalogue.mistake` / `correct`, one module per
exercise under `tests/catalogue/<section>/`); each test names the exercise and the student object it
is run on with `part_tests._common.exercise`.
"""

from __future__ import annotations

import importlib

import pytest

from tests.catalogue import entries, targets
from utils.reference import load, sections

SECTION_MODULES = {name: name.split("_")[0] for name in sections()}  # section1_persona_space -> section1
FULL = {short: full for full, short in SECTION_MODULES.items()}


def _test_fn(short, test_name):
    return getattr(importlib.import_module(f"part_tests.{short}"), test_name)


def _tests(short: str) -> dict[str, str]:
    """test name -> the name of the student object it is run on."""
    mod = importlib.import_module(f"part_tests.{short}")
    out = {}
    for name in dir(mod):
        fn = getattr(mod, name)
        if name.startswith("test_") and callable(fn):
            out[name] = getattr(fn, "target", None)
    return out


def _legacy(short: str):
    """The old one-module catalogue (a CATALOGUE dict), while a section still has one."""
    try:
        mod = importlib.import_module(f"tests.catalogue.{short}")
    except ModuleNotFoundError:
        return None
    return mod if hasattr(mod, "CATALOGUE") else None


def _targets() -> list[tuple[str, str, str]]:
    return [(short, t, ref) for short in SECTION_MODULES.values() for t, ref in sorted(targets(short).items())]


def _entries(wrong: bool) -> list[tuple[str, str, object, str | None, str]]:
    out = []
    for short in SECTION_MODULES.values():
        legacy = _legacy(short)
        if legacy is None:
            out += [(e.section, e.test, e.obj, e.phrase, e.id) for e in entries(short) if (e.phrase is not None) == wrong]
        elif wrong:
            out += [(short, t, m[0], m[1], f"{short}.{t}[{i}]") for t, (_, ms) in legacy.CATALOGUE.items()
                    for i, m in enumerate(ms)]
        else:
            out += [(short, t, fn, None, f"{short}.{t}[{i}]")
                    for t, fns in getattr(legacy, "CORRECT_ALTERNATIVES", {}).items() for i, fn in enumerate(fns)]
    return out


TARGETS = _targets()
MISTAKES = _entries(wrong=True)
ALTERNATIVES = _entries(wrong=False)


@pytest.mark.parametrize("short,test_name,ref_name", TARGETS, ids=[f"{t[0]}.{t[1]}" for t in TARGETS])
def test_reference_passes(short, test_name, ref_name):
    _test_fn(short, test_name)(getattr(load(FULL[short]), ref_name))


@pytest.mark.parametrize("short,test_name,ref_name", TARGETS, ids=[f"{t[0]}.{t[1]}" for t in TARGETS])
def test_stub_fails(short, test_name, ref_name):
    stub = getattr(load(FULL[short], stub=True), ref_name, None)
    with pytest.raises(AssertionError, match="not implemented yet"):
        _test_fn(short, test_name)(stub)


@pytest.mark.parametrize("short,test_name,alternative", [a[:3] for a in ALTERNATIVES], ids=[a[4] for a in ALTERNATIVES])
def test_correct_alternative_passes(short, test_name, alternative):
    _test_fn(short, test_name)(alternative)


@pytest.mark.parametrize("short,test_name,wrong,phrase", [m[:4] for m in MISTAKES], ids=[m[4] for m in MISTAKES])
def test_mistake_fails(short, test_name, wrong, phrase):
    with pytest.raises(AssertionError) as info:
        _test_fn(short, test_name)(wrong)
    assert phrase.lower() in str(info.value).lower(), f"failure message {str(info.value)!r} does not name the mistake ({phrase!r})"
    assert "not implemented yet" not in str(info.value)


def test_every_test_has_a_catalogue():
    """Each test function in part_tests names its exercise's object and has catalogue entries (a test
    no wrong answer fails is a bug); every entry names a test that exists."""
    for short in SECTION_MODULES.values():
        tests = _tests(short)
        legacy = _legacy(short)
        if legacy is not None:
            missing = set(tests) - set(legacy.CATALOGUE)
            assert not missing, f"{short}: tests without a catalogue of mistakes: {sorted(missing)}"
            empty = [n for n, (_, ms) in legacy.CATALOGUE.items() if not ms]
            assert not empty, f"{short}: catalogue entries with no mistakes: {empty}"
            continue
        unmarked = sorted(n for n, target in tests.items() if not target)
        assert not unmarked, f"{short}: tests not marked with @exercise(number, target): {unmarked}"
        declared = [e for e in entries(short)]
        unknown = sorted({e.test for e in declared} - set(tests))
        assert not unknown, f"{short}: catalogue entries for tests that do not exist: {unknown}"
        with_mistakes = {e.test for e in declared if e.phrase is not None}
        missing = sorted(set(tests) - with_mistakes)
        assert not missing, f"{short}: tests without a catalogue of mistakes: {missing}"
