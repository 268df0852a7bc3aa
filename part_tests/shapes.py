"""One place that checks what a student's function returned against its jaxtyping annotation.

    from jaxtyping import Float
    from torch import Tensor
    from part_tests.shapes import expect_tensor

    acts = expect_tensor(got, Float[Tensor, "n d_model"], "extract_response_activations", n=3, d_model=64)

Every shape or dtype mismatch in the exercise tests goes through `expect_tensor`, so every message
reads the same way, with the dimension names bound to the numbers the test expected:

    extract_response_activations returned shape (3, 65), expected (n, d_model) = (3, 64)
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["expect_tensor", "dim_names", "describe"]

_KIND_WORDS = {"float": "a floating-point", "int": "an integer", "bool": "a boolean"}


def _spec_parts(spec: Any) -> tuple[str, str | None]:
    """(dimension string, dtype kind or None) of a jaxtyping type or a plain dimension string."""
    if isinstance(spec, str):
        return spec, None
    dim_str = getattr(spec, "dim_str", None)
    if dim_str is None:
        raise TypeError(f"expect_tensor needs a jaxtyping type such as Float[Tensor, 'n d'] or a dimension string, got {spec!r}")
    dtypes = set(getattr(spec, "dtypes", ()) or ())
    kind = None
    if dtypes and "float32" in dtypes and "int64" not in dtypes:
        kind = "float"
    elif dtypes and "int64" in dtypes and "float32" not in dtypes:
        kind = "int"
    elif dtypes == {"bool"}:
        kind = "bool"
    return dim_str, kind


def dim_names(spec: Any) -> list[str]:
    """The dimension names of a spec, e.g. ['n', 'd_model'] for Float[Tensor, 'n d_model']."""
    return _spec_parts(spec)[0].split()


def describe(spec: Any, dims: dict[str, int]) -> str:
    """'(n, d_model) = (3, 64)': the expected shape with its names bound ('?' where unbound)."""
    names = dim_names(spec)
    values = [str(dims.get(n, int(n) if n.isdigit() else "?")) for n in names]
    if len(names) == 1:
        return f"({names[0]},) = ({values[0]},)"
    return f"({', '.join(names)}) = ({', '.join(values)})"


def _kind_of(x: torch.Tensor) -> str:
    if x.dtype == torch.bool:
        return "bool"
    return "float" if (x.is_floating_point() or x.is_complex()) else "int"


def expect_tensor(x: Any, spec: Any, name: str, *, finite: bool = True, **dims: int) -> torch.Tensor:
    """Check that `x` is a torch.Tensor of the annotated shape and dtype kind; return it.

    `spec` is a jaxtyping type (`Float[Tensor, "n d_model"]`) or a dimension string (`"n d_model"`);
    `dims` binds names to sizes. An unbound name must take the same size wherever it appears
    (`"n n"` is square). With `finite`, NaN or inf values fail too.
    """
    dim_str, kind = _spec_parts(spec)
    names = dim_str.split()
    want = describe(spec, dims)
    if not issubclass(type(x), torch.Tensor):  # type(), not isinstance: an object can fake its __class__
        got = type(x).__name__
        extra = ""
        if type(x).__module__ == "numpy":
            extra = ": keep the result a tensor (torch.from_numpy converts a numpy array)"
        elif isinstance(x, (list, tuple)):
            extra = ": stack the rows into one tensor (torch.stack)"
        raise AssertionError(f"{name} should return a torch.Tensor of shape {want}, got a {got}{extra}")
    from part_tests._common import plain

    x = plain(x, name)  # a Tensor subclass becomes a plain Tensor: its overrides of .shape, .dtype ... never run
    shape = tuple(x.shape)
    if len(shape) != len(names):
        raise AssertionError(f"{name} returned shape {shape} ({len(shape)} dims), expected {want}")
    bound: dict[str, int] = {}
    for n, size in zip(names, shape):
        expected = int(n) if n.isdigit() else dims.get(n, bound.get(n))
        if expected is not None and size != expected:
            raise AssertionError(f"{name} returned shape {shape}, expected {describe(spec, {**bound, **dims})}")
        if not n.isdigit():
            bound.setdefault(n, size)
    if kind is not None and _kind_of(x) != kind:
        raise AssertionError(f"{name} returned dtype {x.dtype}, expected {_KIND_WORDS[kind]} tensor of shape {want}")
    if finite and kind != "bool" and not bool(torch.isfinite(x.float()).all()):
        raise AssertionError(f"{name} returned NaN or inf values (shape {shape})")
    return x
