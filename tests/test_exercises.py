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


TARGETS = [(short, t, ref) for short in SECTION_MODULES.values() for t, ref in sorted(targets(short).items())]
MISTAKES = [(e.section, e.test, e.obj, e.phrase, e.id) for e in entries() if e.phrase is not None]
ALTERNATIVES = [(e.section, e.test, e.obj, e.id) for e in entries() if e.phrase is None]


@pytest.mark.parametrize("short,test_name,ref_name", TARGETS, ids=[f"{t[0]}.{t[1]}" for t in TARGETS])
def test_reference_passes(short, test_name, ref_name):
    _test_fn(short, test_name)(getattr(load(FULL[short]), ref_name))


@pytest.mark.parametrize("short,test_name,ref_name", TARGETS, ids=[f"{t[0]}.{t[1]}" for t in TARGETS])
def test_stub_fails(short, test_name, ref_name):
    stub = getattr(load(FULL[short], stub=True), ref_name, None)
    with pytest.raises(AssertionError, match="not implemented yet"):
        _test_fn(short, test_name)(stub)


@pytest.mark.parametrize("short,test_name,alternative", [a[:3] for a in ALTERNATIVES], ids=[a[3] for a in ALTERNATIVES])
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
    no wrong answer fails is a bug); every entry names a test that exists; every section has a catalogue."""
    from tests.catalogue import sections as catalogued

    assert set(catalogued()) == set(SECTION_MODULES.values()), \
        f"sections without a catalogue package: {sorted(set(SECTION_MODULES.values()) - set(catalogued()))}"
    for short in SECTION_MODULES.values():
        tests = targets(short)
        unmarked = sorted(n for n, target in tests.items() if not target)
        assert not unmarked, f"{short}: tests not marked with @exercise(number, target): {unmarked}"
        declared = entries(short)
        unknown = sorted({e.test for e in declared} - set(tests))
        assert not unknown, f"{short}: catalogue entries for tests that do not exist: {unknown}"
        missing = sorted(set(tests) - {e.test for e in declared if e.phrase is not None})
        assert not missing, f"{short}: tests without a catalogue of mistakes: {missing}"


def test_each_exercise_module_opens_with_its_header():
    """One exercise header everywhere: each per-exercise test and catalogue module opens with
    `Exercise N.M — Name`, the header of the section's source."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for short, full in FULL.items():
        headers = set(re.findall(r"^# ## (Exercise \d+\.\d+ — .+)$", (root / "solutions" / f"{full}.py").read_text(), re.M))
        for folder in (root / "part_tests" / short, root / "tests" / "catalogue" / short):
            for path in sorted(folder.glob("ex*.py")):
                first = (path.read_text().split('"""')[1].strip().splitlines() or [""])[0]
                assert any(first == h or first.startswith((h + ".", h + ":")) for h in headers), f"{path.relative_to(root)} opens with {first!r}, not one of {sorted(headers)}"
