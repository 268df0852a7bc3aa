"""Exercise 1.9 — The paper's vectors, ranked along the axis

Wrong rank_by_cosine, and rank_by_cosine written another way.
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import factory, ref


def _rank(vectors, axis, *, measure="cos", ascending=False, check_shape=True, as_tensor=False):
    out = []
    for n, v in vectors.items():
        if check_shape and v.shape != axis.shape:
            raise ValueError("shape")
        v, a = v.float(), axis.float()
        value = {"cos": torch.nn.functional.cosine_similarity(v, a, dim=-1), "dot": v @ a,
                 "proj": v @ a / a.norm()}[measure]
        out.append((n, value if as_tensor else float(value)))
    return sorted(out, key=lambda x: float(x[1]), reverse=not ascending)


@factory
def _wrong_rank(**mistake):
    def wrong(vectors, axis):
        return _rank(vectors, axis, **mistake)
    return wrong


@mistake("test_rank_by_cosine_input_checks", "ValueError")
@correct("test_rank_by_cosine")
def rank_no_shape_check(vectors, axis):
    out = []
    for n, v in vectors.items():
        out.append((n, float((v.float() * axis.float()).sum() / (v.float().norm() * axis.float().norm()))))
    return sorted(out, key=lambda x: x[1], reverse=True)


@mistake("test_rank_by_cosine", "absolute value")
def rank_abs(vectors, axis):
    out = [(n, abs(float(torch.nn.functional.cosine_similarity(v.float(), axis.float(), dim=0)))) for n, v in vectors.items()]
    return sorted(out, key=lambda x: x[1], reverse=True)


@mistake("test_rank_by_cosine", "bf16")
def rank_in_input_dtype(vectors, axis):
    out = []
    for n, v in vectors.items():
        if v.shape != axis.shape:
            raise ValueError("shape")
        out.append((n, float(torch.nn.functional.cosine_similarity(v, axis, dim=0))))
    return sorted(out, key=lambda x: x[1], reverse=True)


@mistake("test_rank_by_cosine_input_checks", "length 16")
def rank_ndim_check_only(vectors, axis):
    for n, v in vectors.items():
        if v.ndim != 1:
            raise ValueError(f"{n}: select one layer first")
    return _rank(vectors, axis, check_shape=False)


@correct("test_rank_by_cosine", "test_rank_by_cosine_input_checks")
def alt_rank_unit_vectors(vectors, axis):
    if not torch.isfinite(axis).all() or axis.norm() == 0:
        raise ValueError("bad axis")
    u = torch.nn.functional.normalize(axis.double(), dim=0)
    out = []
    for n, v in vectors.items():
        if v.shape != axis.shape:
            raise ValueError(f"{n}: shape {tuple(v.shape)} differs from the axis {tuple(axis.shape)}")
        if not torch.isfinite(v).all() or v.norm() == 0:
            raise ValueError(f"{n}: no direction")
        out.append((n, (torch.nn.functional.normalize(v.double(), dim=0) @ u).item()))
    out.sort(key=lambda x: -x[1])
    return out


@mistake("test_rank_by_cosine_input_checks", "an axis that is zero")
def rank_shape_check_only(vectors, axis):
    """Checks shapes, but a zero or NaN axis gives NaN cosines (F.cosine_similarity's eps gives 0)."""
    for n, v in vectors.items():
        if v.shape != axis.shape:
            raise ValueError(f"{n}: shape differs from the axis")
    return rank_no_shape_check(vectors, axis)


@mistake("test_rank_by_cosine_input_checks", "compare the shapes, not the number of entries")
def rank_numel_check(vectors, axis):
    """Compares the number of entries, not the shapes, and flattens."""
    for n, v in vectors.items():
        if v.numel() != axis.numel():
            raise ValueError(f"{n}: size differs from the axis")
        v = v.float()
        if not torch.isfinite(v).all() or v.norm() == 0:
            raise ValueError(f"{n}: no direction")
    a = axis.float()
    if not torch.isfinite(a).all() or a.norm() == 0:
        raise ValueError("bad axis")
    return rank_no_shape_check({n: v.flatten() for n, v in vectors.items()}, axis)


# Made by the factories above: each declared on the line that makes it.
mistake("test_rank_by_cosine", "dot product")(_wrong_rank(measure="dot"))
mistake("test_rank_by_cosine", "projection")(_wrong_rank(measure="proj"))
mistake("test_rank_by_cosine", "sorted")(_wrong_rank(ascending=True))
mistake("test_rank_by_cosine", "floats")(_wrong_rank(as_tensor=True))


@mistake("test_rank_by_cosine", "signed cosine")
def rank_sorted_by_size(vectors, axis):
    """Sorts by the size of the cosine (abs), not its signed value."""
    return sorted(ref.rank_by_cosine(vectors, axis), key=lambda item: abs(item[1]), reverse=True)
