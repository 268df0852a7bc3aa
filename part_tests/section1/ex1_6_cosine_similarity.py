"""Exercise 1.6 — Cosine similarity, raw and centred

Tests of compute_cosine_similarity_matrix and compute_cosine_similarity_matrix_centered (and their input checks).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import check, exercise, expect_value_error, fail, passed, using
from part_tests.properties import for_all, st
from part_tests.section1._shared import _NAMES, _attempt, _geometry, _geometry_bf16, _show, _undirected
from part_tests.shapes import expect_tensor


# The shape of the exercise's signature (solutions/section1_persona_space.py), checked with expect_tensor.
SIMILARITY = Float[Tensor, "n_personas n_personas"]


def _cos_matrix(X: torch.Tensor) -> torch.Tensor:
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T


def _check_sim(out, vectors, expected_fn, label: str, centred: bool, atol: float = 1e-4) -> None:
    check(isinstance(out, tuple) and len(out) == 2, f"{label} should return (sim, names), got {type(out).__name__}")
    sim, names = out
    n = len(vectors)
    expect_tensor(sim, SIMILARITY, f"{label}: sim", n_personas=n)
    sim = sim.detach().double().cpu()
    names = list(names)
    check(sorted(names) == sorted(vectors), f"{label}: names should be the persona names {sorted(vectors)}, got {names}")
    X = torch.stack([vectors[k].double() for k in names])
    want = expected_fn(X)
    if names != list(vectors):
        in_dict_order = expected_fn(torch.stack([vectors[k].double() for k in vectors]))
        if torch.allclose(sim, in_dict_order, atol=atol) and not torch.allclose(sim, want, atol=atol):
            fail(f"{label}: the rows of sim are in the order of `vectors` but names is in another order: "
                 "row i and column i must belong to names[i]")
        fail(f"{label}: names should be list(vectors), in the dict's order {list(vectors)}, got {names} -- don't sort "
             "the names: the caller orders the dict (group by group, so the heatmap shows blocks)")
    if torch.allclose(sim, want, atol=atol):
        return
    numbers = f"max abs difference {(sim - want).abs().max().item():.3g}; sim[0, 1] expected {want[0, 1].item():.5f}, got {sim[0, 1].item():.5f}"
    in_dict_order = expected_fn(torch.stack([vectors[k].double() for k in vectors]))
    if names != list(vectors) and torch.allclose(sim, in_dict_order, atol=atol):
        fail(f"{label}: the rows of sim are in the order of `vectors` but names is in another order: "
             "row i and column i must belong to names[i]")
    if next(iter(vectors.values())).dtype in (torch.bfloat16, torch.float16):  # right on float32 vectors, wrong here
        fail(f"{label}: on bf16 vectors your result is off by up to {(sim - want).abs().max().item():.2g}: you computed in "
            f"bf16; convert the vectors to float32 first (.float()) ({numbers})")
    if not torch.allclose(torch.diagonal(sim), torch.ones(n, dtype=torch.float64), atol=max(atol, 1e-3)):
        fail(f"{label}: the diagonal should be 1 (a vector's cosine with itself), got {_show(torch.diagonal(sim))}: "
             "normalise each vector (dot products are not cosine similarities)")
    if centred:
        if torch.allclose(sim, _cos_matrix(X), atol=atol):
            fail(f"{label}: this is the raw cosine matrix: subtract the mean persona vector (over personas) first")
        if torch.allclose(sim, _cos_matrix(X - X.mean(dim=1, keepdim=True)), atol=atol):
            fail(f"{label}: you centred each vector by its own mean over dimensions; subtract the mean *vector* "
                 "over personas (mean over dim 0)")
        if torch.allclose(sim, _cos_matrix(X - X.mean()), atol=atol):
            fail(f"{label}: you subtracted one number (the mean of all entries); subtract the mean *vector* over "
                 "personas, X.mean(dim=0)")
    elif torch.allclose(sim, _cos_matrix(X - X.mean(dim=0, keepdim=True)), atol=atol):
        fail(f"{label}: the raw matrix should not be centred (that is compute_cosine_similarity_matrix_centered's job)")
    fail(f"{label}: sim[i, j] should be the cosine similarity of the vectors of names[i] and names[j] ({numbers})")


def _random_vectors(names, seed: int, dtype: str, d: int = 8) -> dict[str, torch.Tensor]:
    """Vectors with a shared component (like persona means), in the order of `names`."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g, dtype=torch.float64) * 5
    return {n: (common + torch.randn(d, generator=g, dtype=torch.float64)).to(getattr(torch, dtype)) for n in names}


def _vector_sets(min_size: int):
    """(names in a non-alphabetical order, seed, dtype): min_size to 6 vectors, float32 or bf16."""
    return st.tuples(st.permutations(_NAMES).flatmap(lambda p: st.integers(min_size, 6).map(lambda k: p[:k])),
                     st.integers(0, 2**16), st.sampled_from(["float32", "bfloat16"]))


def _one_sim(fn, case, expected_fn, label, centred) -> None:
    names, seed, dtype = case
    vectors = _random_vectors(names, seed, dtype)
    what = f"{len(names)} {dtype} vector{'s' if len(names) > 1 else ''}"
    try:
        out = _attempt(fn, dict(vectors), name=label)
        _check_sim(out, vectors, expected_fn, f"{label} on {what}", centred=centred, atol=1e-3 if centred else 1e-4)
    except AssertionError as err:
        hint = (" -- a single vector has a 1x1 matrix [[1.0]]: keep X two-dimensional, [1, d_model] (no .squeeze())"
                if len(names) == 1 else "")
        raise AssertionError(f"{err}{hint}") from err


def _ref_cosine_matrix(vectors):
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    return _cos_matrix(X), names


@exercise("1.6", "compute_cosine_similarity_matrix")
def test_compute_cosine_similarity_matrix(compute_cosine_similarity_matrix) -> None:
    vectors = _geometry()
    label = "compute_cosine_similarity_matrix"
    out = _attempt(compute_cosine_similarity_matrix, vectors, name=label)
    _check_sim(out, vectors, _cos_matrix, label, centred=False)
    out = _attempt(compute_cosine_similarity_matrix, {k: v.float() for k, v in vectors.items()}, name=label)
    _check_sim(out, {k: v.float() for k, v in vectors.items()}, _cos_matrix, label + " (float32 vectors)", centred=False)
    sim = out[0].detach().double()
    low, _ = _geometry_bf16()
    out = _attempt(compute_cosine_similarity_matrix, low, name=label)
    _check_sim(out, low, _cos_matrix, label + " (bf16 vectors)", centred=False, atol=2e-5)
    # property: one to six vectors, in any order of names, float32 or bf16
    for_all(_vector_sets(1), lambda case: _one_sim(compute_cosine_similarity_matrix, case, _cos_matrix, label, False),
            name=label, examples=6)
    passed("test_compute_cosine_similarity_matrix", f"on the test's vectors, which share a big component like real persona means, raw cosines are all >= {float(sim.min()):.3f}")


@exercise("1.6", "compute_cosine_similarity_matrix_centered")
def test_compute_cosine_similarity_matrix_centered(compute_cosine_similarity_matrix_centered) -> None:
    label = "compute_cosine_similarity_matrix_centered"
    centre = lambda X: _cos_matrix(X - X.mean(dim=0, keepdim=True))  # noqa: E731
    low, _ = _geometry_bf16()
    with using(compute_cosine_similarity_matrix_centered, compute_cosine_similarity_matrix=_ref_cosine_matrix):
        vectors = _geometry()
        out = _attempt(compute_cosine_similarity_matrix_centered, vectors, name=label)
        check(all(torch.equal(vectors[k], v) for k, v in _geometry().items()),
              f"{label} modified the vectors passed in: centre a copy")
        _check_sim(out, vectors, centre, label, centred=True)
        out16 = _attempt(compute_cosine_similarity_matrix_centered, dict(low), name=label)
        _check_sim(out16, low, centre, label + " (bf16 vectors)", centred=True, atol=1e-3)
        # property: two to six vectors, in any order of names, float32 or bf16
        for_all(_vector_sets(2), lambda case: _one_sim(compute_cosine_similarity_matrix_centered, case, centre, label, True),
                name=label, examples=6)
    sim, names = out
    sim = sim.detach().double()
    i, j = names.index("assistant"), names.index("oracle")
    passed("test_compute_cosine_similarity_matrix_centered",
           f"on the test's vectors, after centring, cos(assistant, oracle) = {float(sim[i, j]):+.2f}")


@exercise("1.6", "compute_cosine_similarity_matrix")
def test_compute_cosine_similarity_matrix_input_checks(compute_cosine_similarity_matrix) -> None:
    label = "compute_cosine_similarity_matrix"
    expect_value_error(compute_cosine_similarity_matrix, {}, name=label, what="an empty dict (no vectors)")
    for what, bad in _undirected():
        expect_value_error(compute_cosine_similarity_matrix, {"calm": torch.randn(16), "broken": bad}, name=label,
                           what=f"{what} (it has no direction, so no cosine: returning 0 or NaN hides the problem)")
    # property: one undirected vector among zero to four good ones, at any position
    def one_bad(case):
        n_good, where, kind = case
        what, bad = _undirected()[kind]
        items = [(f"good{i}", torch.randn(16)) for i in range(n_good)]
        items.insert(min(where, n_good), ("broken", bad))
        expect_value_error(compute_cosine_similarity_matrix, dict(items), name=label,
                           what=f"{what} at position {min(where, n_good)} of {n_good + 1} vectors: check every vector")

    for_all(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 2)), one_bad, name=label, examples=6)
    passed("test_compute_cosine_similarity_matrix_input_checks")


@exercise("1.6", "compute_cosine_similarity_matrix_centered")
def test_compute_cosine_similarity_matrix_centered_input_checks(compute_cosine_similarity_matrix_centered) -> None:
    label = "compute_cosine_similarity_matrix_centered"
    with using(compute_cosine_similarity_matrix_centered, compute_cosine_similarity_matrix=_ref_cosine_matrix_checked):
        expect_value_error(compute_cosine_similarity_matrix_centered, {}, name=label, what="an empty dict (no vectors)")
        expect_value_error(compute_cosine_similarity_matrix_centered, {"only": torch.randn(16)}, name=label,
                           what="a single vector (centred, it is the zero vector)")
        for what, bad in _undirected()[1:]:
            expect_value_error(compute_cosine_similarity_matrix_centered, {"calm": torch.randn(16), "broken": bad},
                               name=label, what=what)
        twin = torch.randn(16)
        expect_value_error(compute_cosine_similarity_matrix_centered, {"calm": twin, "twin": twin.clone()}, name=label,
                           what="two identical vectors (centred, both are zero: check the centred vectors for a zero "
                           "one, not only the vectors passed in)")
        # property: one vector equal to the mean of the others (centred, it is exactly zero), at any position
        def one_mean(case):
            k, where, seed = case
            g = torch.Generator().manual_seed(seed)
            others = [torch.randint(-5, 6, (6,), generator=g).double() for _ in range(k)]
            items = [(f"v{i}", v) for i, v in enumerate(others)]
            items.insert(min(where, k), ("middle", torch.stack(others).sum(0) / k))
            expect_value_error(compute_cosine_similarity_matrix_centered, dict(items), name=label,
                               what=f"a vector equal to the mean of the {k} other{'s' if k > 1 else ''} (centred, it is "
                               "zero): check the centred vectors for a zero one, not only for identical vectors")

        for_all(st.tuples(st.sampled_from([1, 2, 4]), st.integers(0, 4), st.integers(0, 2**16)), one_mean, name=label,
                examples=6)
    passed("test_compute_cosine_similarity_matrix_centered_input_checks")


def _ref_cosine_matrix_checked(vectors):
    """The course's raw cosine matrix with its input checks, for the centred version to call."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[k].double() for k in names])
    if not bool(torch.isfinite(X).all()) or not bool(X.any(dim=1).all()):
        raise ValueError("a vector is zero or holds NaN/inf")
    return _cos_matrix(X), names
