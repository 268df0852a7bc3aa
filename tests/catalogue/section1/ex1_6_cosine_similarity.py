"""Exercise 1.6 — Cosine similarity, raw and centred

Wrong compute_cosine_similarity_matrix and compute_cosine_similarity_matrix_centered (the centred ones that
call `compute_cosine_similarity_matrix` get the course's version from the test, through this module's globals).
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import ref


def _stack(vectors, names=None):
    names = list(vectors) if names is None else names
    return torch.stack([vectors[n].double() for n in names]), names


def _cos(X):
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T


@mistake("test_compute_cosine_similarity_matrix", "normalise")
def cos_dot_products(vectors):
    X, names = _stack(vectors)
    return X @ X.T, names


@mistake("test_compute_cosine_similarity_matrix", "names[i]")
def cos_names_sorted(vectors):
    X, _ = _stack(vectors)
    return _cos(X), sorted(vectors)


@mistake("test_compute_cosine_similarity_matrix", "don't sort the names")
def cos_sorted_consistently(vectors):
    """Rows, columns and names all in sorted order: consistent, but not the caller's order."""
    return ref.compute_cosine_similarity_matrix({k: vectors[k] for k in sorted(vectors)})


@mistake("test_compute_cosine_similarity_matrix_centered", "don't sort the names")
def cen_sorted_consistently(vectors):
    return ref.compute_cosine_similarity_matrix_centered({k: vectors[k] for k in sorted(vectors)})


@mistake("test_compute_cosine_similarity_matrix", "should not be centred")
def cos_centred_in_raw(vectors):
    X, names = _stack(vectors)
    return _cos(X - X.mean(0)), names


@mistake("test_compute_cosine_similarity_matrix", "(sim, names)")
def cos_only_sim(vectors):
    return ref.compute_cosine_similarity_matrix(vectors)[0]


@mistake("test_compute_cosine_similarity_matrix_centered", "raw cosine")
def cen_not_centred(vectors):
    X, names = _stack(vectors)
    return _cos(X), names


@mistake("test_compute_cosine_similarity_matrix_centered", "own mean over dimensions")
def cen_wrong_axis(vectors):
    X, names = _stack(vectors)
    return _cos(X - X.mean(dim=1, keepdim=True)), names


@mistake("test_compute_cosine_similarity_matrix_centered", "normalise")
def cen_not_normalised(vectors):
    X, names = _stack(vectors)
    Xc = X - X.mean(0)
    return Xc @ Xc.T, names


@mistake("test_compute_cosine_similarity_matrix_centered", "modified the vectors")
def cen_in_place(vectors):
    X, names = _stack(vectors)
    mean = X.mean(0).to(next(iter(vectors.values())).dtype)
    for v in vectors.values():
        v -= mean
    X, names = _stack(vectors)
    return _cos(X), names


@mistake("test_compute_cosine_similarity_matrix_centered", "names[i]")
def cen_names_sorted(vectors):
    X, _ = _stack(vectors)
    return _cos(X - X.mean(0)), sorted(vectors)


@mistake("test_compute_cosine_similarity_matrix", "returned shape")
def cos_wrong_dim(vectors):
    X, names = _stack(vectors)
    return torch.nn.functional.cosine_similarity(X[:, None], X[None], dim=1), names


@mistake("test_compute_cosine_similarity_matrix", "torch.Tensor")
def cos_numpy(vectors):
    sim, names = ref.compute_cosine_similarity_matrix(vectors)
    return sim.numpy(), names


@mistake("test_compute_cosine_similarity_matrix", "bf16")
def cos_in_input_dtype(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n] for n in names])
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names


@mistake("test_compute_cosine_similarity_matrix_centered", "one number")
def cen_global_mean(vectors):
    X, names = _stack(vectors)
    return _cos(X - X.mean()), names


@mistake("test_compute_cosine_similarity_matrix_centered", "bf16")
def cen_in_input_dtype(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n] for n in names])
    X = X - X.mean(dim=0, keepdim=True)
    return compute_cosine_similarity_matrix(dict(zip(names, X)))  # noqa: F821


@mistake("test_compute_cosine_similarity_matrix_input_checks", "should raise ValueError")
@correct("test_compute_cosine_similarity_matrix")
def alt_cos_broadcast(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n].float() for n in names])
    return torch.nn.functional.cosine_similarity(X[:, None, :], X[None, :, :], dim=-1), names


@correct("test_compute_cosine_similarity_matrix")
def alt_cos_sklearn(vectors):
    import numpy as np
    from sklearn.metrics.pairwise import cosine_similarity

    names = list(vectors)
    X = np.stack([vectors[n].double().numpy() for n in names])
    return torch.from_numpy(cosine_similarity(X)), names


@correct("test_compute_cosine_similarity_matrix_centered")
def alt_cen_normalize(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n].double() for n in names])
    Xn = torch.nn.functional.normalize(X - X.mean(0), dim=1)
    return (Xn @ Xn.T).float(), names


@mistake("test_compute_cosine_similarity_matrix_input_checks", "a zero vector")
def cos_clamped_norm(vectors):
    """The reference maths with a clamped norm: a zero vector silently gets cosine 0."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names])
    Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Xn @ Xn.T, names


@mistake("test_compute_cosine_similarity_matrix_input_checks", "NaN")
def cos_zero_check_only(vectors):
    """Refuses a zero vector, but lets NaN through."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names])
    if (X.norm(dim=1) == 0).any():
        raise ValueError("zero vector")
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names


@correct("test_compute_cosine_similarity_matrix_input_checks")
def alt_cos_checked(vectors):
    names = list(vectors)
    if len(names) == 0:
        raise ValueError("empty")
    X = torch.stack([vectors[n].double() for n in names])
    norms = X.norm(dim=1)
    if not torch.isfinite(norms).all() or (norms == 0).any():
        raise ValueError("a vector has no direction")
    Xn = X / norms[:, None]
    return (Xn @ Xn.T).float(), names


@mistake("test_compute_cosine_similarity_matrix_centered_input_checks", "a single vector")
def cen_no_count_check(vectors):
    """Centres a single vector into zeros and passes it on (its cosine matrix is [[nan]] or [[0]])."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names])
    Xc = X - X.mean(dim=0, keepdim=True)
    Xn = Xc / Xc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Xn @ Xn.T, names


@mistake("test_compute_cosine_similarity_matrix_centered_input_checks", "check the centred vectors")
def cen_checks_before_centring(vectors):
    """Checks the vectors passed in, but not the centred ones (two identical vectors centre to zero: NaN)."""
    names = list(vectors)
    if len(names) < 2:
        raise ValueError("need two vectors")
    X = torch.stack([vectors[n].float() for n in names])
    if not torch.isfinite(X).all() or (X.norm(dim=1) == 0).any():
        raise ValueError("a vector is zero or not finite")
    Xc = X - X.mean(dim=0, keepdim=True)
    Xn = Xc / Xc.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names


@correct("test_compute_cosine_similarity_matrix_centered_input_checks")
def alt_cen_checked(vectors):
    if len(vectors) < 2:
        raise ValueError("need two vectors")
    names = list(vectors)
    X = torch.stack([vectors[n].double() for n in names])
    return compute_cosine_similarity_matrix(dict(zip(names, X - X.mean(0))))  # noqa: F821 (the notebook's, via `using`)


@mistake("test_compute_cosine_similarity_matrix", "single vector")
def cos_squeezed(vectors):
    """Squeezes the stacked matrix (to drop a leftover dimension): one vector becomes [d_model]."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names]).squeeze()
    if not bool(torch.isfinite(X).all()) or not bool(X.any(dim=-1).all()):
        raise ValueError("a vector has no direction")
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names


@mistake("test_compute_cosine_similarity_matrix_centered_input_checks", "not only for identical vectors")
def cen_checks_duplicates(vectors):
    """Refuses identical vectors (the case it thought of), not a vector that centres to zero in general."""
    names = list(vectors)
    if len(names) < 2:
        raise ValueError("need two vectors")
    X = torch.stack([vectors[n].double() for n in names])
    if not torch.isfinite(X).all() or (X.norm(dim=1) == 0).any():
        raise ValueError("a vector is zero or not finite")
    if any(torch.equal(X[i], X[j]) for i in range(len(names)) for j in range(i)):
        raise ValueError("identical vectors centre to zero")
    Xc = X - X.mean(dim=0, keepdim=True)
    Xn = Xc / Xc.norm(dim=1, keepdim=True)
    return (Xn @ Xn.T).float(), names


@correct("test_compute_cosine_similarity_matrix_centered", "test_compute_cosine_similarity_matrix_centered_input_checks")
def alt_cen_tolerance(vectors):
    """Refuses a centred vector whose norm is tiny next to the vectors' size (not only exactly zero)."""
    names = list(vectors)
    if len(names) < 2:
        raise ValueError("need two vectors")
    X = torch.stack([vectors[n].double() for n in names])
    if not torch.isfinite(X).all():
        raise ValueError("a vector is not finite")
    Xc = X - X.mean(dim=0, keepdim=True)
    if (Xc.norm(dim=1) <= 1e-9 * (1 + X.norm(dim=1).max())).any():
        raise ValueError("a centred vector is zero: it has no direction")
    Xn = Xc / Xc.norm(dim=1, keepdim=True)
    return (Xn @ Xn.T).float(), names
