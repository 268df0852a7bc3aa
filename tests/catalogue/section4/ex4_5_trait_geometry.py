"""Exercise 4.5 — The geometry of trait vectors

Wrong and correct trait_cosine_matrix, each declared with the test it must fail (and the phrase its
message must name) or pass.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section4._shared import ref


def _check_vectors(vectors, directions=True):
    if any(torch.as_tensor(v).ndim != 1 for v in vectors.values()):
        raise ValueError("pick one layer first")
    if len({torch.as_tensor(v).shape[0] for v in vectors.values()}) != 1:
        raise ValueError("sizes differ")
    if directions and any(not torch.isfinite(torch.as_tensor(v)).all() or not torch.as_tensor(v).any() for v in vectors.values()):
        raise ValueError("a vector has no direction")


@mistake("test_trait_cosine_matrix_input_checks", "a zero vector")
def cos_no_direction_check(vectors):
    """Checks shapes, but a zero or NaN vector gives a NaN row."""
    _check_vectors(vectors, directions=False)
    names = list(vectors)
    X = torch.stack([torch.as_tensor(vectors[n]).float() for n in names])
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


def _stack(vectors, dtype=torch.float32):
    _check_vectors(vectors)
    names = list(vectors)
    return torch.stack([torch.as_tensor(vectors[n]).to(dtype) for n in names]), names


@mistake("test_trait_cosine_matrix", "dot products")
def cos_dot_products(vectors):
    X, names = _stack(vectors)
    return X @ X.T, names


@mistake("test_trait_cosine_matrix", "centred")
def cos_centred(vectors):
    X, names = _stack(vectors)
    X = X - X.mean(0)
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


@mistake("test_trait_cosine_matrix", "keep the sign")
def cos_abs(vectors):
    sim, names = ref.trait_cosine_matrix(vectors)
    return sim.abs(), names


@mistake("test_trait_cosine_matrix", "order of `names`")
def cos_sorted_names(vectors):
    sim, names = ref.trait_cosine_matrix(vectors)
    return sim, sorted(names)


@mistake("test_trait_cosine_matrix", "returned shape (4,)")
def cos_rowwise(vectors):
    """F.cosine_similarity(X, X): each row with itself, shape [n]."""
    X, names = _stack(vectors)
    return torch.nn.functional.cosine_similarity(X, X, dim=-1), names


@mistake("test_trait_cosine_matrix", "should return a torch.Tensor")
def cos_numpy(vectors):
    X, names = _stack(vectors)
    X = X / X.norm(dim=1, keepdim=True)
    return (X @ X.T).numpy(), names


@mistake("test_trait_cosine_matrix", "bfloat16")
def cos_keeps_dtype(vectors):
    """Stacks without converting: bfloat16 vectors give bfloat16 cosines."""
    _check_vectors(vectors)
    names = list(vectors)
    X = torch.stack([vectors[n] for n in names])
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


@mistake("test_trait_cosine_matrix", "bfloat16")
def cos_bf16_then_float(vectors):
    """Computes in the vectors' dtype and converts only the result."""
    sim, names = cos_keeps_dtype(vectors)
    return sim.float(), names


@correct("test_trait_cosine_matrix", "test_trait_cosine_matrix_input_checks")
def cos_pairwise(vectors):
    """Correct: F.cosine_similarity with broadcasting."""
    X, names = _stack(vectors)
    return torch.nn.functional.cosine_similarity(X[:, None, :], X[None, :, :], dim=-1), names


@correct("test_trait_cosine_matrix", "test_trait_cosine_matrix_input_checks")
def cos_numpy_float64(vectors):
    """Correct: numpy in float64 inside, a float64 tensor out, names sorted (rows in the same order)."""
    _check_vectors(vectors)
    names = sorted(vectors)
    X = np.stack([torch.as_tensor(vectors[n]).double().numpy() for n in names])
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return torch.from_numpy(X @ X.T), names


@correct("test_trait_cosine_matrix", "test_trait_cosine_matrix_input_checks")
def cos_loops(vectors):
    """Correct: one cosine at a time."""
    _check_vectors(vectors)
    names = list(vectors)
    v = [torch.as_tensor(vectors[n]).float() for n in names]
    sim = torch.empty(len(names), len(names))
    for i in range(len(names)):
        for j in range(len(names)):
            sim[i, j] = (v[i] @ v[j]) / (v[i].norm() * v[j].norm())
    return sim, names


@mistake("test_trait_cosine_matrix_input_checks", "a vector holding inf")
def cos_no_inf_check(vectors):
    """Refuses zero and NaN vectors, but not one holding inf (its row of cosines is NaN)."""
    _check_vectors(vectors, directions=False)
    if any(torch.isnan(torch.as_tensor(v)).any() or not torch.as_tensor(v).any() for v in vectors.values()):
        raise ValueError("a vector has no direction")
    names = list(vectors)
    X = torch.stack([torch.as_tensor(vectors[n]).float() for n in names])
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


@mistake("test_trait_cosine_matrix_input_checks", "pick one layer")
def cos_flattens_layers(vectors):
    flat = {k: torch.as_tensor(v).reshape(-1) for k, v in vectors.items()}
    size = min(v.shape[0] for v in flat.values())
    return ref.trait_cosine_matrix({k: v[:size] for k, v in flat.items()})


@mistake("test_trait_cosine_matrix_input_checks", "different sizes")
@correct("test_trait_cosine_matrix")  # no size check: full credit for the maths
def cos_no_size_check(vectors):
    """Rejects 2-D vectors, then truncates to the shortest."""
    if any(torch.as_tensor(v).ndim != 1 for v in vectors.values()):
        raise ValueError("pick one layer first")
    size = min(torch.as_tensor(v).shape[0] for v in vectors.values())
    return ref.trait_cosine_matrix({k: torch.as_tensor(v)[:size] for k, v in vectors.items()})


@mistake("test_trait_cosine_matrix_input_checks", "ValueError")
def cos_numpy_no_checks(vectors):
    X, names = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(-1)[:4] for v in vectors.values()]), list(vectors)
    X = X / X.norm(dim=1, keepdim=True)
    return (X @ X.T).numpy(), names


# -- one vector, one dimension, other normalisations, a bad vector that is not the first ---------------------
@mistake("test_trait_cosine_matrix", "squeeze")
def cos_squeezed(vectors):
    """Squeezes the stack 'in case a vector came as [1, d]': one vector (or one dimension) loses a dimension."""
    X, names = _stack(vectors)
    X = X.squeeze()
    X = X / X.norm(dim=-1, keepdim=True)
    return X @ X.T if X.ndim == 2 else (X @ X).reshape(-1), names


@mistake("test_trait_cosine_matrix", "torch.corrcoef")
def cos_corrcoef(vectors):
    X, names = _stack(vectors)
    return torch.corrcoef(X), names


@mistake("test_trait_cosine_matrix", "whole stack")
def cos_global_norm(vectors):
    X, names = _stack(vectors)
    X = X / X.norm()
    return X @ X.T, names


@mistake("test_trait_cosine_matrix", "NaN or inf")  # the hand-built vectors have zero columns
def cos_norm_columns(vectors):
    X, names = _stack(vectors)
    X = X / X.norm(dim=0, keepdim=True)
    return X @ X.T, names


@mistake("test_trait_cosine_matrix_input_checks", "in position 1")
def cos_checks_first_vector_only(vectors):
    """Checks the first vector only ('they all come from the same run')."""
    first = {k: v for k, v in list(vectors.items())[:1]}
    _check_vectors(first)
    if any(torch.as_tensor(v).shape != torch.as_tensor(next(iter(first.values()))).shape for v in vectors.values()):
        raise ValueError("sizes differ")
    names = list(vectors)
    X = torch.stack([torch.as_tensor(vectors[n]).float() for n in names])
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names


@mistake("test_trait_cosine_matrix_input_checks", "-inf")
def cos_checks_plus_inf_only(vectors):
    """Looks for NaN and +inf by comparison (`v == inf`): a vector holding -inf gets through."""
    _check_vectors(vectors, directions=False)
    if any(torch.isnan(v).any() or (v == float("inf")).any() or not v.any() for v in map(torch.as_tensor, vectors.values())):
        raise ValueError("a vector has no direction")
    names = list(vectors)
    X = torch.stack([torch.as_tensor(vectors[n]).float() for n in names])
    return (X / X.norm(dim=1, keepdim=True)).nan_to_num() @ (X / X.norm(dim=1, keepdim=True)).nan_to_num().T, names


@correct("test_trait_cosine_matrix", "test_trait_cosine_matrix_input_checks")
def cos_normalize_float64(vectors):
    """Correct: F.normalize in float64, a float32 result."""
    X, names = _stack(vectors, torch.float64)
    X = torch.nn.functional.normalize(X, dim=1)
    return (X @ X.T).float(), names
