"""Exercise 4.5 — The geometry of trait vectors

Tests of trait_cosine_matrix: hand-built vectors with known cosines, bfloat16 vectors, a property
over random vectors (one vector, one dimension, float32 and bfloat16), and its input checks (with a
property placing a bad vector anywhere among good ones).
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
from part_tests.properties import for_all, st
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


def _other_normalisation(sim: torch.Tensor, vectors: dict, names: list[str]) -> str | None:
    """Name the matrix `sim` is, where it is a likely mistake's (None otherwise)."""
    X = torch.stack([vectors[n].double() for n in names])
    Xc = X - X.mean(dim=1, keepdim=True)
    for Y, why in [(Xc / Xc.norm(dim=1, keepdim=True), "torch.corrcoef (a Pearson correlation) subtracts each vector's own"
                                                       " mean over its dimensions: a cosine does not"),
                   (X / X.norm(), "divided by the norm of the whole stack: normalise each row, X / X.norm(dim=1,"
                                  " keepdim=True)"),
                   (X / X.norm(dim=0, keepdim=True), "normalised the columns (dim=0): normalise each vector, X / X.norm(dim=1,"
                                                     " keepdim=True)")]:
        want = Y @ Y.T
        if sim.shape == want.shape and bool(torch.isfinite(want).all()) and torch.allclose(sim.double(), want, atol=1e-4):
            return why
    return None


def _check_random_vectors(trait_cosine_matrix, name: str) -> None:
    """Property: 1 to 5 random vectors (a single one included) of 1 to 8 dimensions, float32 or bfloat16: sim is the
    [n, n] matrix of cosines computed here in float64, names the dict's keys in the order of the rows."""
    traits = ["evil", "sycophantic", "humorous", "optimistic", "impolite"]

    def check_one(example):
        n, d, dtype, seed = example
        g = torch.Generator().manual_seed(seed)
        vectors = {t: (torch.randn(d, generator=g) + 0.1).to(dtype) for t in traits[:n]}
        what = f"{n} {str(dtype).replace('torch.', '')} vector(s) of {d} dimension(s)"
        try:
            out = call(trait_cosine_matrix, vectors, name=name)
        except (AssertionError, NotImplementedError):
            raise
        except Exception as err:
            fail(f"{name} raised {type(err).__name__} ({err}) for {what}: one vector, or vectors of one dimension, are"
                 " valid input (squeeze()? keep the stack [n, d])")
        got = out[0] if isinstance(out, tuple) and out else None
        if isinstance(got, torch.Tensor) and got.numel() == n * n and tuple(got.shape) != (n, n):
            fail(f"{name} with {what} returned sim of shape {tuple(got.shape)}, not [{n}, {n}]: a dimension of size 1 was"
                 " squeezed away (squeeze()?); stack the vectors into [n, d] and keep both dimensions of sim")
        sim, names = _sim_and_names(out, vectors, name)
        want = _cosines(vectors, names)
        if torch.allclose(sim.double(), want, atol=1e-4):
            return
        why = _other_normalisation(sim, vectors, names)
        if sim.dtype in (torch.bfloat16, torch.float16) or (dtype == torch.bfloat16 and torch.allclose(sim.double(), want, atol=3e-2)):
            why = why or "computed in bfloat16: convert the vectors to float32 first"
        fail(f"{name} with {what}: sim is not the matrix of cosines" + (f": {why}" if why else f"; got\n{sim}\nexpected\n{want}"))

    for_all(st.tuples(st.integers(1, 5), st.integers(1, 8), st.sampled_from([torch.float32, torch.bfloat16]),
                      st.integers(0, 1000)), check_one, name=f"{name} over random vectors", examples=8)


@exercise("4.5", "trait_cosine_matrix")
def test_trait_cosine_matrix(trait_cosine_matrix) -> None:
    """Hand-built vectors with known cosines (1, 0, -1, 1/sqrt 2), then bfloat16 vectors (cosines
    to float32 precision), then a property over random vectors (a single one, one dimension,
    float32 and bfloat16). Input checks: the next test."""
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
        why = _other_normalisation(sim, vectors, names)
        if why:
            fail(f"{name}: {why}")
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
    _check_random_vectors(trait_cosine_matrix, name)
    passed("test_trait_cosine_matrix")


@exercise("4.5", "trait_cosine_matrix")
def test_trait_cosine_matrix_input_checks(trait_cosine_matrix) -> None:
    """2-D vectors (all layers: pick one first), vectors of different sizes and vectors with no direction (zero, NaN,
    inf) are rejected with ValueError; then a property: one such vector anywhere among good ones."""
    require_implemented(trait_cosine_matrix, "trait_cosine_matrix")
    for bad, what in [({"a": torch.ones(3, 4), "b": torch.ones(3, 4)}, "2-D vectors ([n_layers, d_model]): pick one layer first"),
                      ({"a": torch.ones(4), "b": torch.ones(5)}, "vectors of different sizes ([4] and [5])"),
                      ({"a": torch.zeros(4), "b": torch.ones(4)}, "a zero vector (it has no direction, hence no cosine)"),
                      ({"a": torch.tensor([1.0, float("nan"), 0.0, 2.0]), "b": torch.ones(4)}, "a vector holding NaN"),
                      ({"a": torch.tensor([1.0, float("inf"), 0.0, 2.0]), "b": torch.ones(4)}, "a vector holding inf")]:
        expect_value_error(trait_cosine_matrix, bad, name="trait_cosine_matrix", what=what)

    def check_one(example):
        """Property: one bad vector among 1 to 4 good ones, anywhere in the dict, with its flaw anywhere in it."""
        n, at, where, d = example
        good = {f"trait{i}": torch.arange(1.0, d + 1) * (i + 1) for i in range(n)}
        flawed = [(torch.zeros(d), "a zero vector"), (torch.ones(d + 1), f"a vector of size {d + 1} among vectors of size {d}"),
                  (torch.ones(2, d), "a 2-D vector ([n_layers, d_model])")]
        flawed += [(torch.ones(d).index_fill(0, torch.tensor([where % d]), float(x)), f"a vector holding {x}")
                   for x in ("nan", "inf", "-inf")]
        for vector, what in flawed:
            items = list(good.items())
            items.insert(at % (n + 1), ("bad", vector))
            expect_value_error(trait_cosine_matrix, dict(items), name="trait_cosine_matrix",
                               what=f"{what} (in position {at % (n + 1)} of {n + 1})")

    for_all(st.tuples(st.integers(1, 4), st.integers(0, 4), st.integers(0, 7), st.integers(2, 8)), check_one,
            name="trait_cosine_matrix's input checks", examples=4)
    passed("test_trait_cosine_matrix_input_checks")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
