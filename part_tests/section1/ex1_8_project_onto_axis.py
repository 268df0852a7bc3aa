"""Exercise 1.8 — Ranking personas along the axis

Tests of project_personas_onto_axis (and its input checks).
"""

from __future__ import annotations

import torch

from part_tests._common import check, exercise, expect_value_error, fail, passed
from part_tests.properties import coefficients, for_all, st
from part_tests.section1._shared import _NAMES, _attempt, _geometry, _geometry_bf16, _undirected, _unit


def _check_projections(out, vectors, axis, label, tol) -> None:
    names = list(vectors)
    check(isinstance(out, dict), f"{label} should return a dict name -> projection, got {type(out).__name__}")
    check(set(out) == set(names), f"{label}: expected a projection for every persona {sorted(names)}, got {sorted(out)}")
    for k, v in out.items():
        check(isinstance(v, float), f"{label}: projections should be Python floats (use float(...)), got {type(v).__name__} for {k!r}")
    A = {k: vectors[k].double() for k in names}
    v = axis.double()
    want = {k: float(A[k] @ v / v.norm()) for k in names}
    mean = torch.stack(list(A.values())).mean(0)
    low = axis.dtype in (torch.bfloat16, torch.float16)
    for k in names:
        scale = tol * (1 + A[k].norm().item())
        if abs(out[k] - want[k]) <= scale:
            continue
        numbers = f"expected {want[k]:.6g}, got {out[k]:.6g}"
        if low and abs(out[k] - want[k]) <= 1e-2 * (1 + abs(want[k])):
            fail(f"{label}[{k!r}] is off by {abs(out[k] - want[k]):.3g} on bf16 vectors: you computed in bf16; convert "
                 f"the vectors and the axis to float32 first (.float()) ({numbers})")
        if abs(out[k] + want[k]) <= scale:
            fail(f"{label}: the sign is flipped for {k!r}: the projection is a·v/‖v‖ with v the axis ({numbers})")
        if abs(out[k] - want[k] * v.norm().item()) <= scale * v.norm().item():
            fail(f"{label}: the projection of {k!r} is a·v, not divided by ‖v‖ (the axis given here has norm "
                 f"{v.norm().item():.3g}) ({numbers})")
        if abs(out[k] - want[k] / v.norm().item()) <= scale:
            fail(f"{label}: the projection of {k!r} is divided by ‖v‖²: that is the coefficient of the projected vector; "
                 f"the projection a·v/‖v‖ divides by ‖v‖ once ({numbers})")
        if abs(out[k] - want[k] / A[k].norm().item()) <= 1e-3:
            fail(f"{label}: you computed the cosine (dividing by ‖a‖ too); the projection a·v/‖v‖ keeps activation units ({numbers})")
        if abs(out[k] - float((A[k] - mean) @ v / v.norm())) <= scale:
            fail(f"{label}: you subtracted the mean persona vector before projecting; project the vectors as given ({numbers})")
        fail(f"{label}[{k!r}] should be a·v/‖v‖ ({numbers})")
    order = list(out)
    if order != sorted(names, key=lambda k: want[k], reverse=True) and order == sorted(names, key=lambda k: abs(want[k]), reverse=True):
        fail(f"{label}: the dict is sorted by the size of the projection (abs); sort by the signed value, highest first "
             f"(a negative projection is the role-play end); got {order}")
    check(order == sorted(names, key=lambda k: want[k], reverse=True),
          f"{label}: the dict should be sorted from the highest projection (most Assistant-like) to the lowest; got {order}")


@exercise("1.8", "project_personas_onto_axis")
def test_project_personas_onto_axis(project_personas_onto_axis) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    u = _unit(torch.stack([vectors[k].double() for k in ("assistant", "editor")]).mean(0) - X.mean(0))
    axis = (3.0 * u).float()  # deliberately not unit length
    label = "project_personas_onto_axis"
    out = _attempt(project_personas_onto_axis, vectors, axis, name=label)
    _check_projections(out, vectors, axis, label, 1e-5)
    low, low_axis = _geometry_bf16()
    out = _attempt(project_personas_onto_axis, dict(low), low_axis, name=label)
    _check_projections(out, low, low_axis, label + " (bf16 vectors and axis)", 1e-5)
    # property: one to six vectors in any order of names, an axis scaled by a fractional or negative number,
    # float32 or bf16
    cases = st.tuples(st.permutations(_NAMES).flatmap(lambda p: st.integers(1, 6).map(lambda k: p[:k])),
                      coefficients().filter(lambda c: c != 0), st.sampled_from(["float32", "bfloat16"]),
                      st.integers(0, 2**16))
    for_all(cases, lambda case: _one_projection(project_personas_onto_axis, *case), name=label, examples=6)
    passed("test_project_personas_onto_axis")


def _one_projection(fn, names, scale, dtype, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    d = 12
    common = torch.randn(d, generator=g, dtype=torch.float64) * 3
    vectors = {n: (common + torch.randn(d, generator=g, dtype=torch.float64)).to(getattr(torch, dtype)) for n in names}
    axis = (scale * _unit(torch.randn(d, generator=g, dtype=torch.float64))).to(getattr(torch, dtype))
    label = f"project_personas_onto_axis on {len(names)} {dtype} vector(s), the axis scaled by {scale}"
    out = _attempt(fn, dict(vectors), axis, name=label)
    try:
        _check_projections(out, vectors, axis, label, 1e-5)
    except AssertionError as err:
        raise AssertionError(f"{err} -- a negative or fractional axis length changes every a·v but not a·v/‖v‖'s "
                             "meaning: divide by the norm (always positive), and sort by the signed value") from err


@exercise("1.8", "project_personas_onto_axis")
def test_project_personas_onto_axis_input_checks(project_personas_onto_axis) -> None:
    label = "project_personas_onto_axis"
    vectors = {"calm": torch.randn(16), "bold": torch.randn(16)}
    for what, bad in _undirected():
        expect_value_error(project_personas_onto_axis, vectors, bad, name=label,
                           what=f"an axis that is {what.split(' ', 1)[1]} (there is no direction to project onto)")
    expect_value_error(project_personas_onto_axis, {"per_layer": torch.randn(4, 16)}, torch.randn(16), name=label,
                       what="a vector whose shape differs from the axis (a [num_layers, d_model] tensor: select a layer first)")
    expect_value_error(project_personas_onto_axis, {"calm": torch.randn(16), "row": torch.randn(1, 16)}, torch.randn(16),
                       name=label, what="a vector of shape [1, d_model] against an axis of shape [d_model] (a row kept "
                       "2-D, X[i:i+1]: `a @ v` still gives one number, so compare a.shape with the axis's shape)")
    # property: one vector of the wrong shape among zero to four good ones, at any position
    def one_misfit(case):
        n_good, where, shape = case
        items = [(f"good{i}", torch.randn(16)) for i in range(n_good)]
        items.insert(min(where, n_good), ("misfit", torch.randn(*shape)))
        expect_value_error(project_personas_onto_axis, dict(items), torch.randn(16), name=label,
                           what=f"a vector of shape {tuple(shape)} at position {min(where, n_good)} of {n_good + 1} "
                           "against an axis of shape (16,): compare every vector's shape with the axis's")

    for_all(st.tuples(st.integers(0, 4), st.integers(0, 4), st.sampled_from([(4, 16), (1, 16), (8,), (16, 1)])),
            one_misfit, name=label, examples=6)
    passed("test_project_personas_onto_axis_input_checks")
