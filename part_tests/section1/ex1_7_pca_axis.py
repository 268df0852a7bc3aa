"""Exercise 1.7 — PCA and the Assistant Axis

Tests of pca_decompose_persona_vectors (and its input checks).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import check, exercise, expect_value_error, fail, passed
from part_tests.properties import for_all, st
from part_tests.section1._shared import _NAMES, VECTOR, _attempt, _geometry, _show, _unit
from part_tests.shapes import expect_tensor


# The shape of the exercise's signature (solutions/section1_persona_space.py), checked with expect_tensor.
PCA_COORDS = Float[Tensor, "n_personas 2"]


def _pca_reference(X: torch.Tensor, centre: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    Xc = X - X.mean(0, keepdim=True) if centre else X
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    coords = Xc @ Vh[:2].T
    var = S**2 / (S**2).sum()
    return coords, var[:2], Vh[:2]


def _same_up_to_sign(a: torch.Tensor, b: torch.Tensor, atol=1e-6) -> bool:
    if a.shape != b.shape:
        return False
    for k in range(a.shape[1]):
        s = 1.0 if float(a[:, k] @ b[:, k]) >= 0 else -1.0
        if not torch.allclose(a[:, k] * s, b[:, k], atol=atol, rtol=1e-5):
            return False
    return True


@exercise("1.7", "pca_decompose_persona_vectors")
def test_pca_decompose_persona_vectors(pca_decompose_persona_vectors) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    defaults = ["assistant", "editor"]
    label = "pca_decompose_persona_vectors"
    out = _attempt(pca_decompose_persona_vectors, vectors, defaults, name=label)
    check(isinstance(out, tuple) and len(out) == 3, f"{label} should return (assistant_axis, pca_coords, pca), got {type(out).__name__}")
    axis, coords, pca = out
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    d = X.shape[1]
    axis = expect_tensor(axis, VECTOR, f"{label}: assistant_axis", d_model=d).detach().double().cpu()
    d_mean = torch.stack([vectors[k].double() for k in defaults]).mean(0)
    roles = [k for k in names if k not in defaults]
    r_mean = torch.stack([vectors[k].double() for k in roles]).mean(0)
    want = _unit(d_mean - r_mean)
    ref_coords, ref_var, ref_pcs = _pca_reference(X)
    if not torch.allclose(axis, want, atol=1e-4):
        numbers = f"expected {_show(want)}, got {_show(axis)}"
        if torch.allclose(axis, -want, atol=1e-4):
            fail(f"{label}: the axis points the wrong way: it is mean(default) - mean(roles), pointing *toward* the Assistant")
        if torch.allclose(_unit(axis), want, atol=1e-4):
            fail(f"{label}: the axis has the right direction but norm {axis.norm().item():.3g}: normalise it to unit length")
        first = torch.stack([vectors[k].double() for k in names[:len(defaults)]]).mean(0) - \
            torch.stack([vectors[k].double() for k in names[len(defaults):]]).mean(0)
        if torch.allclose(_unit(axis), _unit(first), atol=1e-4):
            fail(f"{label}: you took the first {len(defaults)} vectors as the defaults; the defaults are the personas "
                 f"*named* in default_personas ({defaults}), wherever they stand in `vectors` ({numbers})")
        if torch.allclose(_unit(axis).abs(), ref_pcs[0].abs(), atol=1e-4):
            fail(f"{label}: assistant_axis is PC1; the axis is the difference of means, mean(defaults) - mean(roles), "
                 f"normalised ({numbers})")
        fail(f"{label}: assistant_axis should be (mean(default vectors) - mean(role vectors)) / its norm ({numbers})")
    check(hasattr(pca, "explained_variance_ratio_") and hasattr(pca, "components_"),
          f"{label}: the third value should be the fitted sklearn PCA, got {type(pca).__name__}")
    if isinstance(coords, np.ndarray):
        coords = torch.from_numpy(np.ascontiguousarray(coords))
    coords = expect_tensor(coords, PCA_COORDS, f"{label}: pca_coords", n_personas=len(names)).detach().double().cpu()
    if not _same_up_to_sign(coords, ref_coords, atol=1e-3):
        for perm_name, order in (("sorted by name", sorted(names)),
                                 ("defaults first", defaults + [n for n in names if n not in defaults])):
            idx = [names.index(n) for n in order]
            if _same_up_to_sign(coords, ref_coords[idx], atol=1e-3) and order != names:
                fail(f"{label}: pca_coords rows are {perm_name}; row i must be the persona list(vectors)[i]")
        if _same_up_to_sign(coords, _pca_reference(X, centre=False)[0], atol=1e-3):
            fail(f"{label}: the PCA was run on uncentred data: subtract the mean persona vector first (sklearn's PCA does)")
        fail(f"{label}: pca_coords should be the projections of every persona (defaults and roles, {len(names)} rows) "
             "onto the first two principal components of all persona vectors -- fit the PCA on all personas, not only "
             f"the roles (pca_coords[:, 0] expected {_show(ref_coords[:, 0], 4)} up to sign, got {_show(coords[:, 0], 4)})")
    ratio = np.asarray(pca.explained_variance_ratio_, dtype=float)
    check(ratio.shape[0] >= 2 and np.allclose(ratio[:2], ref_var.numpy(), atol=1e-4),
          f"{label}: the PCA's explained_variance_ratio_ {ratio[:2]} does not match a PCA of all persona vectors {ref_var.numpy()}")
    check(np.asarray(pca.components_).shape[0] == 2,
          f"{label}: the PCA has {np.asarray(pca.components_).shape[0]} components; fit PCA(n_components=2) (the notebook "
          "uses pca.components_ as the two PCs of the plot)")
    pcs = torch.as_tensor(np.asarray(pca.components_, dtype=float))[:2]
    check(pcs.shape == ref_pcs.shape and torch.allclose((pcs * ref_pcs).sum(1).abs(), torch.ones(2, dtype=torch.float64), atol=1e-3),
          f"{label}: the PCA's components_ are not the principal components of all persona vectors")
    own = (X - X.mean(0, keepdim=True)) @ pcs.T  # pca.transform(X): the coordinates along the returned PCs, signs included
    if not torch.allclose(coords, own, atol=1e-3):
        fail(f"{label}: pca_coords are not the coordinates of the returned PCA (pca.transform(X)): a column's sign "
             "is flipped or the coordinates come from another fit -- the notebook orients each PC with "
             "pca.components_, so return the coordinates of that same fitted PCA (fit_transform)")
    # property: three to seven personas in any order, any non-empty set of defaults with at least one role left
    cases = st.permutations(_NAMES).flatmap(lambda p: st.integers(3, 7).flatmap(
        lambda n: st.tuples(st.just(p[:n]), st.sets(st.sampled_from(p[:n]), min_size=1, max_size=n - 1),
                            st.integers(0, 2**16))))
    for_all(cases, lambda case: _one_pca(pca_decompose_persona_vectors, *case), name=label, examples=6)
    passed("test_pca_decompose_persona_vectors",
           f"on the test's vectors: PC1 explains {ratio[0]:.0%}, |cos(axis, PC1)| = {abs(float(_unit(pcs[0]) @ axis)):.2f}")


def _one_pca(fn, names, default_set, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    d = 8
    vectors = {n: (torch.randn(d, generator=g) * 2 + 3).float() for n in names}
    defaults = [n for n in names if n in default_set][::-1]  # the caller's order need not be the dict's
    roles = [n for n in names if n not in default_set]
    label = f"pca_decompose_persona_vectors with personas {list(names)} and default_personas={defaults}"
    hint = (" -- the defaults are the personas named in default_personas, wherever they stand in `vectors` (one "
            "default or one role is enough); the roles are all the others")
    out = _attempt(fn, dict(vectors), list(defaults), name=label)
    check(isinstance(out, tuple) and len(out) == 3, f"{label} should return (assistant_axis, pca_coords, pca)")
    axis, coords, pca = out
    axis = expect_tensor(axis, VECTOR, f"{label}: assistant_axis", d_model=d).detach().double().cpu()
    X = torch.stack([vectors[k].double() for k in names])
    want = _unit(torch.stack([vectors[k].double() for k in defaults]).mean(0)
                 - torch.stack([vectors[k].double() for k in roles]).mean(0))
    check(torch.allclose(axis, want, atol=1e-4), f"{label}: assistant_axis expected {_show(want)}, got {_show(axis)}{hint}")
    if isinstance(coords, np.ndarray):
        coords = torch.from_numpy(np.ascontiguousarray(coords))
    coords = expect_tensor(coords, PCA_COORDS, f"{label}: pca_coords", n_personas=len(names)).detach().double().cpu()
    ref_coords, ref_var, _ = _pca_reference(X)
    check(_same_up_to_sign(coords, ref_coords, atol=1e-3),
          f"{label}: pca_coords should be the coordinates of every persona, row i for list(vectors)[i], on the first "
          f"two principal components of all persona vectors{hint}")
    ratio = np.asarray(pca.explained_variance_ratio_, dtype=float)
    check(ratio.shape[0] >= 2 and np.allclose(ratio[:2], ref_var.numpy(), atol=1e-4),
          f"{label}: explained_variance_ratio_ {ratio[:2]} does not match a PCA of all persona vectors {ref_var.numpy()}")


@exercise("1.7", "pca_decompose_persona_vectors")
def test_pca_decompose_persona_vectors_input_checks(pca_decompose_persona_vectors) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    expect_value_error(pca_decompose_persona_vectors, vectors, ["assistant", "not_a_persona"],
                       name="pca_decompose_persona_vectors",
                       what="an unknown default persona name (it has no vector: a typo would silently shift the axis)")
    # property: one misspelt name among any of the personas, at any position of default_personas
    def one_unknown(case):
        picked, where = case
        names, pos = list(picked), min(where, len(picked))
        names.insert(pos, names[0][:-1] + "_")  # a near miss: "assistan_"
        expect_value_error(pca_decompose_persona_vectors, vectors, names, name="pca_decompose_persona_vectors",
                           what=f"default_personas={names}, where {names[pos]!r} has no vector: "
                           "check every name")

    for_all(st.tuples(st.lists(st.sampled_from(list(vectors)), min_size=1, max_size=3, unique=True), st.integers(0, 3)),
            one_unknown, name="pca_decompose_persona_vectors", examples=6)
    passed("test_pca_decompose_persona_vectors_input_checks")
