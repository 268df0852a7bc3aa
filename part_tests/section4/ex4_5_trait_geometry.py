"""Exercise 4.5 — The geometry of trait vectors

Tests of trait_cosine_matrix: hand-built vectors with known cosines, bfloat16 vectors, and its
input checks.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    call,
    check,
    exercise,
    expect_value_error,
    fail,
    passed,
    require_implemented,
)
from part_tests.shapes import expect_tensor


def _cosines(v: dict[str, torch.Tensor], names: list[str], centre: bool = False) -> torch.Tensor:
    x = {k: t.double() for k, t in v.items()}
    if centre:
        mean = torch.stack(list(x.values())).mean(0)
        x = {k: t - mean for k, t in x.items()}
    return torch.tensor([[float(x[a] @ x[b] / (x[a].norm() * x[b].norm())) for b in names] for a in names], dtype=torch.float64)


def _sim_and_names(out, vectors, name: str):
    check(isinstance(out, tuple) and len(out) == 2, f"{name} should return a tuple (sim, names)")
    sim, names = out
    names = list(names)
    check(sorted(names) == sorted(vectors), f"{name}: names should be the dict's keys, got {names}")
    sim = expect_tensor(sim, Float[Tensor, "n_traits n_traits"], name, n_traits=len(vectors))
    return sim, names


@exercise("4.5", "trait_cosine_matrix")
def test_trait_cosine_matrix(trait_cosine_matrix) -> None:
    """Hand-built vectors with known cosines (1, 0, -1, 1/sqrt 2), then bfloat16 vectors (cosines
    to float32 precision). Input checks: the next test."""
    require_implemented(trait_cosine_matrix, "trait_cosine_matrix")
    name = "trait_cosine_matrix"
    vectors = {
        "evil": torch.tensor([2.0, 0.0, 0.0, 0.0]),
        "impolite": torch.tensor([3.0, 3.0, 0.0, 0.0]),
        "optimistic": torch.tensor([0.0, 0.0, 5.0, 0.0]),
        "apathetic": torch.tensor([-1.0, 0.0, 0.0, 0.0]),
    }
    sim, names = _sim_and_names(call(trait_cosine_matrix, vectors, name=name), vectors, name)
    sim = sim.double()
    want = _cosines(vectors, names)
    if not torch.allclose(sim, want, atol=1e-5):
        dots = torch.tensor([[float(vectors[a].double() @ vectors[b].double()) for b in names] for a in names], dtype=torch.float64)
        if torch.allclose(sim, dots, atol=1e-5):
            fail(f"{name} returned dot products: divide each vector by its norm first")
        if torch.allclose(sim, _cosines(vectors, names, centre=True), atol=1e-5):
            fail(f"{name} centred the vectors: trait vectors are differences of means already; do not subtract their mean")
        if torch.allclose(sim, want.abs(), atol=1e-5):
            fail(f"{name} returned |cosine|: keep the sign (opposite traits point in opposite directions)")
        order = list(vectors)
        if names != order and torch.allclose(sim, _cosines(vectors, order), atol=1e-5):
            fail("the rows of sim are not in the order of `names`: return the names in the order you stacked the vectors")
        fail(f"{name}: sim[i, j] should be the cosine of vectors[names[i]] and vectors[names[j]]; got\n{sim}\nexpected\n{want}")

    # bfloat16 vectors (as saved from a half-precision run): cosines computed in float32
    g = torch.Generator().manual_seed(4)
    half = {k: torch.randn(64, generator=g).to(torch.bfloat16) for k in ("evil", "sycophantic", "humorous", "optimistic", "impolite")}
    sim, names = _sim_and_names(call(trait_cosine_matrix, half, name=name), half, name)
    want = _cosines(half, names)
    err = float((sim.double() - want).abs().max())
    if err > 1e-4:
        if sim.dtype in (torch.bfloat16, torch.float16) or err > 1e-3:
            fail(f"{name} computed the cosines of bfloat16 vectors in bfloat16 (largest error {err:.1e}, returned"
                 f" {sim.dtype}): convert the vectors to float32 first (torch.stack(...).float())")
        fail(f"{name}: the cosines of bfloat16 vectors are off by up to {err:.1e}: compute them in float32")
    passed("test_trait_cosine_matrix")


@exercise("4.5", "trait_cosine_matrix")
def test_trait_cosine_matrix_input_checks(trait_cosine_matrix) -> None:
    """2-D vectors (all layers: pick one first), vectors of different sizes and vectors with no direction (zero, NaN,
    inf) are rejected with ValueError."""
    require_implemented(trait_cosine_matrix, "trait_cosine_matrix")
    for bad, what in [({"a": torch.ones(3, 4), "b": torch.ones(3, 4)}, "2-D vectors ([n_layers, d_model]): pick one layer first"),
                      ({"a": torch.ones(4), "b": torch.ones(5)}, "vectors of different sizes ([4] and [5])"),
                      ({"a": torch.zeros(4), "b": torch.ones(4)}, "a zero vector (it has no direction, hence no cosine)"),
                      ({"a": torch.tensor([1.0, float("nan"), 0.0, 2.0]), "b": torch.ones(4)}, "a vector holding NaN"),
                      ({"a": torch.tensor([1.0, float("inf"), 0.0, 2.0]), "b": torch.ones(4)}, "a vector holding inf")]:
        expect_value_error(trait_cosine_matrix, bad, name="trait_cosine_matrix", what=what)
    passed("test_trait_cosine_matrix_input_checks")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
