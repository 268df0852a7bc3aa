"""Numbers for the book's prose, taken from the executed notebook (MyST-NB's `glue`).

The book's observations about its own run ("PC1 explains 19 % of the variance") must come from
the run, not be typed by hand: a code cell glues the value and the markdown pastes it,

    glue("s1_pc1_share", ratio[0])                # in a code cell
    {glue:text}`s1_pc1_share:.0%`                 # in a markdown cell (tagged book-only)

`glue` calls MyST-NB's glue when it is importable and a kernel is running, and does nothing
otherwise, so a notebook that glues also runs in plain Jupyter, under nbgrader, or as a script.
Values are converted to plain Python numbers and strings first: MyST-NB pastes a value's
`text/plain` form, and `np.float32(0.19)` or `tensor(0.19)` would not format as a number.
"""

from __future__ import annotations

from typing import Any

__all__ = ["glue", "glue_all", "plain"]


def plain(value: Any) -> Any:
    """A Python bool/int/float/str for a numpy or torch scalar (or a 1-element array); other values unchanged."""
    if value is None:
        return None
    for kind in (str, bool, int, float):  # exact Python types (np.float64 is a float subclass)
        if isinstance(value, kind):
            return kind(value)
    item = getattr(value, "item", None)
    if callable(item):
        size = getattr(value, "size", 1)
        size = size() if callable(size) else size
        if hasattr(size, "__iter__"):  # torch.Size
            n = 1
            for s in size:
                n *= s
            size = n
        if size == 1:
            return item()
    return value


def _myst_glue():
    try:
        from IPython import get_ipython
        from myst_nb import glue as myst_glue
    except ImportError:
        return None
    return myst_glue if get_ipython() is not None else None


def glue(name: str, value: Any) -> None:
    """Glue `value` under `name` for the book's prose (not displayed). Returns nothing, so that a
    cell ending with a glue call shows no output."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a glue name must be a non-empty string, got {name!r}")
    value = plain(value)
    myst_glue = _myst_glue()
    if myst_glue is not None:
        myst_glue(name, value, display=False)


def glue_all(values: dict[str, Any]) -> None:
    """Glue every `name: value` of a dict."""
    for name, value in values.items():
        glue(name, value)
