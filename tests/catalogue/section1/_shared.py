"""What the Section 1 catalogue modules share: the reference solutions, and `factory`, which names each
mistake a factory makes after the call that made it (`_wrong_extract(span='all')`), so that every entry
has its own readable test id.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from utils.reference import load

ref = load("section1")


def _show(value: Any) -> str:
    return getattr(value, "__name__", None) or repr(value) if callable(value) else repr(value)


def factory(make: Callable[..., Callable]) -> Callable[..., Callable]:
    """A factory of wrong (or correct) implementations whose products are named after the call that made them."""

    @functools.wraps(make)
    def named(*args: Any, **kwargs: Any) -> Callable:
        made = make(*args, **kwargs)
        made.__qualname__ = f"{make.__name__}({', '.join([*map(_show, args), *(f'{k}={_show(v)}' for k, v in kwargs.items())])})"
        return made

    return named
