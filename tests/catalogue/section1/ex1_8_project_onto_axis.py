"""Exercise 1.8 — Ranking personas along the axis

Wrong project_personas_onto_axis, and one written another way.
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import factory, ref


def _proj(vectors, axis, *, divide="axis", sign=1.0, ascending=False, as_tensor=False):
    out = {}
    for n, a in vectors.items():
        value = a.float() @ axis.float()
        if divide in ("axis", "both"):
            value = value / axis.float().norm()
        if divide == "both":
            value = value / a.float().norm()
        value = sign * value
        out[n] = value if as_tensor else float(value)
    return dict(sorted(out.items(), key=lambda kv: float(kv[1]), reverse=not ascending))


@factory
def _wrong_proj(**mistake):
    def wrong(vectors, axis):
        return _proj(vectors, axis, **mistake)
    return wrong


@mistake("test_project_personas_onto_axis", "divided by ‖v‖²")
def proj_divided_twice(vectors, axis):
    out = {n: float(a.float() @ axis.float() / axis.float().norm() ** 2) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


@mistake("test_project_personas_onto_axis", "subtracted the mean")
def proj_centred(vectors, axis):
    mean = torch.stack([v.float() for v in vectors.values()]).mean(0)
    out = {n: float((a.float() - mean) @ axis.float() / axis.float().norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


@mistake("test_project_personas_onto_axis", "bf16")
def proj_in_input_dtype(vectors, axis):
    out = {n: float(a @ axis / axis.norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


@correct("test_project_personas_onto_axis")
def alt_proj_numpy(vectors, axis):
    import numpy as np

    v = axis.double().numpy()
    out = {n: float(np.dot(a.double().numpy(), v) / np.linalg.norm(v)) for n, a in vectors.items()}
    return {n: out[n] for n in sorted(out, key=out.get, reverse=True)}


@mistake("test_project_personas_onto_axis_input_checks", "an axis that is zero")
def proj_no_axis_check(vectors, axis):
    """The reference maths without checking the axis: a zero axis gives NaN projections."""
    out = {}
    for n, a in vectors.items():
        if a.shape != axis.shape:
            raise ValueError("shape")
        out[n] = float(a.float() @ axis.float() / axis.float().norm())
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


@mistake("test_project_personas_onto_axis_input_checks", "NaN")
def proj_zero_check_only(vectors, axis):
    if axis.norm() == 0:
        raise ValueError("zero axis")
    return proj_no_axis_check(vectors, axis)


@mistake("test_project_personas_onto_axis_input_checks", "select a layer first")
def proj_no_shape_check(vectors, axis):
    if not torch.isfinite(axis).all() or axis.norm() == 0:
        raise ValueError("bad axis")
    out = {n: float((a.float() * axis.float()).sum() / axis.float().norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


@mistake("test_project_personas_onto_axis_input_checks", "compare a.shape with the axis's shape")
def proj_matmul_no_shape_check(vectors, axis):
    """a @ v with no shape check: a [num_layers, d] vector fails in float(), but a [1, d] row passes silently."""
    axis = axis.float()
    if not torch.isfinite(axis).all() or axis.norm() == 0:
        raise ValueError("bad axis")
    out = {n: float(a.float() @ axis / axis.norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


@correct("test_project_personas_onto_axis_input_checks")
def alt_proj_checked(vectors, axis):
    import numpy as np

    v = axis.double().numpy()
    if not np.isfinite(v).all() or not v.any():
        raise ValueError("axis has no direction")
    for n, a in vectors.items():
        if tuple(a.shape) != tuple(axis.shape):
            raise ValueError(f"{n}: wrong shape")
    return alt_proj_numpy(vectors, axis)


# Made by the factories above: each declared on the line that makes it.
mistake("test_project_personas_onto_axis", "not divided")(_wrong_proj(divide="none"))
mistake("test_project_personas_onto_axis", "sign")(_wrong_proj(sign=-1.0))
mistake("test_project_personas_onto_axis", "cosine")(_wrong_proj(divide="both"))
mistake("test_project_personas_onto_axis", "sorted")(_wrong_proj(ascending=True))
mistake("test_project_personas_onto_axis", "Python floats")(_wrong_proj(as_tensor=True))


@mistake("test_project_personas_onto_axis", "signed value")
def proj_sorted_by_size(vectors, axis):
    """Sorts by the size of the projection (abs), not its signed value."""
    out = ref.project_personas_onto_axis(vectors, axis)
    return dict(sorted(out.items(), key=lambda kv: abs(kv[1]), reverse=True))
