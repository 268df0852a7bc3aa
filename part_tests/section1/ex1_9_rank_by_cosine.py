"""Exercise 1.9 — The paper's vectors, ranked along the axis

Tests of rank_by_cosine (and its input checks).
"""

from __future__ import annotations

import torch

from part_tests._common import check, exercise, expect_value_error, fail, passed
from part_tests.properties import coefficients, for_all, st
from part_tests.section1._shared import _attempt, _undirected


def _traits(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    d = 32
    axis = torch.randn(d, generator=g) * 4
    u = axis / axis.norm()
    # traits at known cosines with very different norms, so a dot product ranks them differently
    traits = {}
    for name, cos, norm in (("calm", 0.8, 1.0), ("theatrical", -0.7, 50.0), ("precise", 0.5, 30.0),
                            ("mystical", -0.2, 2.0), ("playful", 0.1, 80.0)):
        r = torch.randn(d, generator=g)
        r = r - (r @ u) * u
        r = r / r.norm()
        traits[name] = ((cos * u + (1 - cos**2) ** 0.5 * r) * norm).to(dtype)
    return traits, axis.to(dtype)


def _check_ranking(out, traits, axis, label, tol) -> None:
    check(isinstance(out, list), f"{label} should return a list of (name, cosine) pairs, got {type(out).__name__}")
    check(all(isinstance(p, tuple) and len(p) == 2 for p in out), f"{label}: each item should be a (name, cosine) tuple")
    check(sorted(n for n, _ in out) == sorted(traits), f"{label}: expected one entry per vector {sorted(traits)}, got {[n for n, _ in out]}")
    for n, c in out:
        check(isinstance(c, float), f"{label}: cosines should be Python floats, got {type(c).__name__} for {n!r}")
    a = axis.double()
    want = {n: float(torch.nn.functional.cosine_similarity(v.double(), a, dim=0)) for n, v in traits.items()}
    low = axis.dtype in (torch.bfloat16, torch.float16)
    for n, c in out:
        if abs(c - want[n]) <= tol:
            continue
        numbers = f"expected {want[n]:+.6f}, got {c:+.6f}"
        if low and abs(c - want[n]) <= 2e-2:
            fail(f"{label}: the cosine of {n!r} is off by {abs(c - want[n]):.2g} on bf16 vectors: you computed in bf16; "
                 f"convert to float32 first (.float()) ({numbers})")
        if abs(c - abs(want[n])) <= tol:
            fail(f"{label}: the value for {n!r} is the absolute value of its cosine; keep the sign (a negative cosine "
                 f"points away from the Assistant) ({numbers})")
        if abs(c - float(traits[n].double() @ a / a.norm())) <= 1e-3 * (1 + abs(c)):
            fail(f"{label}: the value for {n!r} is a projection (divided by the axis norm only); a cosine divides by both norms ({numbers})")
        if abs(c - float(traits[n].double() @ a)) <= 1e-3 * (1 + abs(c)):
            fail(f"{label}: the value for {n!r} is a dot product; a cosine divides by both norms ({numbers})")
        fail(f"{label}: cosine of {n!r} with the axis: {numbers}")
    got_order = [n for n, _ in out]
    if got_order != sorted(traits, key=lambda n: want[n], reverse=True) and \
            got_order == sorted(traits, key=lambda n: abs(want[n]), reverse=True):
        fail(f"{label}: the list is sorted by the size of the cosine (abs); sort by the signed cosine, highest first; "
             f"got {got_order}")
    check([n for n, _ in out] == sorted(traits, key=lambda n: want[n], reverse=True),
          f"{label}: the list should be sorted by cosine, highest first; got {[n for n, _ in out]}")


@exercise("1.9", "rank_by_cosine")
def test_rank_by_cosine(rank_by_cosine) -> None:
    label = "rank_by_cosine"
    traits, axis = _traits()
    out = _attempt(rank_by_cosine, traits, axis, name=label)
    _check_ranking(out, traits, axis, label, 1e-4)
    traits16, axis16 = _traits(torch.bfloat16)
    out = _attempt(rank_by_cosine, traits16, axis16, name=label)
    _check_ranking(out, traits16, axis16, label + " (bf16 vectors)", 1e-4)
    # property: one to six traits at any cosines and norms, an axis scaled by a fractional or negative number,
    # float32 or bf16
    cases = st.tuples(st.integers(1, 6), coefficients().filter(lambda c: c != 0), st.sampled_from(["float32", "bfloat16"]),
                      st.integers(0, 2**16))
    for_all(cases, lambda case: _one_ranking(rank_by_cosine, *case), name=label, examples=6)
    passed("test_rank_by_cosine")


def _one_ranking(fn, n, scale, dtype, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    d = 16
    base = torch.randn(d, generator=g, dtype=torch.float64)
    axis = (scale * base / base.norm()).to(getattr(torch, dtype))
    traits = {f"trait{i}": (torch.randn(d, generator=g, dtype=torch.float64) + (i - n / 2) * 0.4 * base)
              * float(torch.rand(1, generator=g) * 20 + 0.5) for i in range(n)}
    traits = {k: v.to(getattr(torch, dtype)) for k, v in traits.items()}
    label = f"rank_by_cosine on {n} {dtype} vector(s), the axis scaled by {scale}"
    out = _attempt(fn, dict(traits), axis, name=label)
    try:
        _check_ranking(out, traits, axis, label, 1e-4)
    except AssertionError as err:
        raise AssertionError(f"{err} -- with an axis of negative or fractional length and vectors of any norm: divide by "
                             "both norms (always positive), keep the sign, and sort by the signed cosine") from err


@exercise("1.9", "rank_by_cosine")
def test_rank_by_cosine_input_checks(rank_by_cosine) -> None:
    traits, axis = _traits()
    d = axis.shape[0]
    for what, v in (("a [num_layers, d_model] tensor where one layer's row was meant: select a layer first", torch.randn(4, d)),
                    (f"a vector of length {d // 2} against an axis of length {d}", torch.randn(d // 2)),
                    ("a [1, d_model] row kept 2-D, X[i:i+1]: compare the shapes, not the number of entries", torch.randn(1, d))):
        expect_value_error(rank_by_cosine, {"calm": traits["calm"], "bad": v}, axis, name="rank_by_cosine",
                           what=f"a vector whose shape differs from the axis ({what})")
    for what, bad in _undirected(d):
        expect_value_error(rank_by_cosine, {"calm": traits["calm"]}, bad, name="rank_by_cosine",
                           what=f"an axis that is {what.split(' ', 1)[1]} (a cosine with it is undefined)")
        expect_value_error(rank_by_cosine, {"calm": traits["calm"], "broken": bad}, axis, name="rank_by_cosine",
                           what=f"{what} among the vectors (a cosine with it is undefined)")
    # property: one vector of the wrong shape or with no direction among zero to four good ones, at any position
    bads = [("a [4, d_model] tensor", torch.randn(4, d)), ("a [1, d_model] row", torch.randn(1, d)),
            ("a vector of half the length", torch.randn(d // 2)), *_undirected(d)]

    def one_bad(case):
        n_good, where, kind = case
        what, bad = bads[kind]
        items = [(f"good{i}", torch.randn(d)) for i in range(n_good)]
        items.insert(min(where, n_good), ("bad", bad))
        expect_value_error(rank_by_cosine, dict(items), axis, name="rank_by_cosine",
                           what=f"{what} at position {min(where, n_good)} of {n_good + 1} vectors: check every vector")

    for_all(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, len(bads) - 1)), one_bad,
            name="rank_by_cosine", examples=8)
    passed("test_rank_by_cosine_input_checks")
