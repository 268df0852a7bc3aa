"""Every exercise test passes the reference, fails the stub with 'not implemented yet', and fails
every wrong implementation in the section's catalogue with a message naming the mistake."""

from __future__ import annotations

import importlib

import pytest

from utils.reference import load, sections

SECTION_MODULES = {name: name.split("_")[0] for name in sections()}  # section1_persona_space -> section1


def _cases():
    for full, short in SECTION_MODULES.items():
        try:
            cat = importlib.import_module(f"tests.catalogue.{short}").CATALOGUE
        except ModuleNotFoundError:
            continue
        for test_name, (ref_name, mistakes) in cat.items():
            yield full, short, test_name, ref_name, mistakes


def _alternatives():
    """Correct implementations written another way: each must pass (a test that rejects one is a bug)."""
    for short in SECTION_MODULES.values():
        alts = getattr(importlib.import_module(f"tests.catalogue.{short}"), "CORRECT_ALTERNATIVES", {})
        for test_name, fns in alts.items():
            for i, fn in enumerate(fns):
                yield short, test_name, i, fn


CASES = list(_cases())
ALTERNATIVES = list(_alternatives())


def _test_fn(short, test_name):
    return getattr(importlib.import_module(f"part_tests.{short}"), test_name)


@pytest.mark.parametrize("full,short,test_name,ref_name", [c[:4] for c in CASES], ids=[f"{c[1]}.{c[2]}" for c in CASES])
def test_reference_passes(full, short, test_name, ref_name):
    _test_fn(short, test_name)(getattr(load(full), ref_name))


@pytest.mark.parametrize("full,short,test_name,ref_name", [c[:4] for c in CASES], ids=[f"{c[1]}.{c[2]}" for c in CASES])
def test_stub_fails(full, short, test_name, ref_name):
    stub = getattr(load(full, stub=True), ref_name, None)
    with pytest.raises(AssertionError, match="not implemented yet"):
        _test_fn(short, test_name)(stub)


@pytest.mark.parametrize("short,test_name,i,alternative", ALTERNATIVES, ids=[f"{a[0]}.{a[1]}[{a[2]}]" for a in ALTERNATIVES])
def test_correct_alternative_passes(short, test_name, i, alternative):
    _test_fn(short, test_name)(alternative)


MISTAKES = [(c[1], c[2], i, m[0], m[1]) for c in CASES for i, m in enumerate(c[4])]


@pytest.mark.parametrize("short,test_name,i,wrong,phrase", MISTAKES, ids=[f"{m[0]}.{m[1]}[{m[2]}]" for m in MISTAKES])
def test_mistake_fails(short, test_name, i, wrong, phrase):
    with pytest.raises(AssertionError) as info:
        _test_fn(short, test_name)(wrong)
    assert phrase.lower() in str(info.value).lower(), f"failure message {str(info.value)!r} does not name the mistake ({phrase!r})"
    assert "not implemented yet" not in str(info.value)


def test_every_test_has_a_catalogue():
    """Each test function in part_tests has catalogue entries (a test no wrong answer fails is a bug)."""
    for full, short in SECTION_MODULES.items():
        mod = importlib.import_module(f"part_tests.{short}")
        tests = {n for n in dir(mod) if n.startswith("test_")}
        cat = importlib.import_module(f"tests.catalogue.{short}").CATALOGUE
        missing = tests - set(cat)
        assert not missing, f"{short}: tests without a catalogue of mistakes: {sorted(missing)}"
        empty = [n for n, (_, ms) in cat.items() if not ms]
        assert not empty, f"{short}: catalogue entries with no mistakes: {empty}"
