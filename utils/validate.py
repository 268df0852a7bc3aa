"""Checks at the boundary of the ``utils`` functions that take tensors and numbers from a learner.

One helper per kind of argument; each raises ``ValueError`` naming the argument and saying what
was wrong (NaN, inf, a zero vector, an integer or boolean tensor, a shape that does not match the
model), so a mistake stops where it is made instead of spreading NaN through a forward pass:

    vector = check_vector(vector, "vector", d_model=64)           # 1-D, float, finite
    axis = check_vector(axis, "axis", d_model=64, nonzero=True)    # ... and not all zeros
    coeff = check_number(coeff, "coeff")                           # a finite real, not a bool
    layer = check_index(layer, "layer", n=28)                      # an int (not a bool) in [0, n)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["LayerIndexError", "check_index", "check_matrix", "check_number", "check_numbers", "check_vector",
           "model_d_model"]


class LayerIndexError(ValueError, IndexError):
    """A layer (or other index) argument that is not an integer: a ValueError, and an IndexError
    for code that catches the out-of-range case."""


def _describe(x: Any) -> str:
    return f"{x!r} (a {type(x).__name__})"


def check_number(x: Any, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """``x`` as a float: a finite real number (a Python/NumPy number or a one-element tensor),
    never a bool. ``positive`` / ``nonnegative`` add the sign check."""
    if isinstance(x, bool) or (isinstance(x, Tensor) and x.dtype == torch.bool):
        raise ValueError(f"{name} must be a number, got {_describe(x)}")
    if isinstance(x, Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be one number, got a tensor of shape {tuple(x.shape)}")
        x = x.item()
    if isinstance(x, (str, bytes)):
        raise ValueError(f"{name} must be a real number, got {_describe(x)}")
    if not isinstance(x, numbers.Real):
        try:
            x = float(x)  # numpy scalars, Decimal, ...
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a real number, got {_describe(x)}") from None
    try:
        value = float(x)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float: {x!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_numbers(xs: Any, name: str) -> list[float]:
    """A list of finite real numbers (each checked as by :func:`check_number`)."""
    if isinstance(xs, Tensor):
        xs = xs.reshape(-1).tolist() if xs.dtype != torch.bool else [True]
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence) and not hasattr(xs, "__iter__"):
        raise ValueError(f"{name} must be a list of numbers, got {_describe(xs)}")
    return [check_number(x, f"{name}[{i}]") for i, x in enumerate(xs)]


def check_index(x: Any, name: str, n: int | None = None) -> int:
    """``x`` as an int in ``[0, n)``: a bool or a float is refused (``layer=True`` is not block 1)
    with :class:`LayerIndexError`; an integer out of range raises ``IndexError``."""
    if isinstance(x, bool) or (isinstance(x, Tensor) and x.dtype == torch.bool):
        raise LayerIndexError(f"{name} must be an int, got {_describe(x)}")
    if isinstance(x, Tensor) and x.numel() == 1 and not x.is_floating_point():
        x = int(x.item())
    if not isinstance(x, numbers.Integral):
        raise LayerIndexError(f"{name} must be an int, got {_describe(x)}")
    x = int(x)
    if n is not None and not 0 <= x < n:
        raise IndexError(f"{name} must be an index in [0, {n - 1}] (0-based), got {x}")
    return x


def _as_float_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, (bool, numbers.Number, str, bytes)) or x is None:
        raise ValueError(f"{name} must be a tensor, got {_describe(x)}")
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} must be a tensor, got {type(x).__name__} ({e})") from None
    if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype} (an integer or boolean "
                         "tensor is not a direction; convert with .float() if you mean it)")
    if x.is_complex():
        raise ValueError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    return x


def _check_finite(x: Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(f"{name} has {n_nan} NaN and {n_inf} infinite entries (of {x.numel()})")


def check_vector(v: Any, name: str, d_model: int | None = None, *, nonzero: bool = False) -> Float[Tensor, "d_model"]:
    """``v`` as a 1-D floating-point tensor (``[d_model]``), finite; ``nonzero`` also refuses an
    all-zero vector (a direction to normalise or project onto)."""
    v = _as_float_tensor(v, name)
    if v.ndim != 1:
        raise ValueError(f"{name} must have shape [d_model]{f' = [{d_model}]' if d_model else ''}, "
                         f"got {tuple(v.shape)}")
    if d_model is not None and v.shape[0] != d_model:
        raise ValueError(f"{name} has {v.shape[0]} entries, but the model's d_model is {d_model}")
    if v.numel() == 0:
        raise ValueError(f"{name} is empty")
    _check_finite(v, name)
    if nonzero and not bool((v != 0).any()):
        raise ValueError(f"{name} is a zero vector: it has no direction")
    return v


def check_matrix(m: Any, name: str, rows: int | None = None, d_model: int | None = None, *,
                 nonzero_rows: bool = False) -> Float[Tensor, "n d_model"]:
    """``m`` as a 2-D floating-point tensor ``[n, d_model]``, finite; ``nonzero_rows`` refuses a
    row of zeros (each row is a direction)."""
    m = _as_float_tensor(m, name)
    if m.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d_model], got {tuple(m.shape)}")
    if rows is not None and m.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got {m.shape[0]}")
    if d_model is not None and m.shape[1] != d_model:
        raise ValueError(f"{name} has rows of {m.shape[1]} entries, but the model's d_model is {d_model}")
    if m.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(m.shape)})")
    _check_finite(m, name)
    if nonzero_rows:
        zero = (m == 0).all(dim=1).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"{name} has all-zero rows {zero[:5]}: a zero row has no direction")
    return m


def model_d_model(model) -> int:
    """The residual-stream width of a model (its text config's ``hidden_size``)."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.hidden_size)
