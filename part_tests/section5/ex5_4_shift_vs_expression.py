"""Exercise 5.4 — Does the shift predict the trait?

Pearson's r is computed here in float64 from its definition; the figure is read back trace by trace.
"""

from __future__ import annotations

import math

import numpy as np

from part_tests._common import call, check, exercise, expect_value_error, fail, passed, require_implemented

NAME = "shift_vs_expression"

# Shift and score related but not linearly, so that Pearson and Spearman differ; far from the
# origin, so that a correlation without centring differs too.
ROWS = [
    {"name": "evil_control", "trait": "evil", "shift": 0.2, "trait_score": 24.0},
    {"name": "evil_mild", "trait": "evil", "shift": 3.1, "trait_score": 31.0},
    {"name": "evil_severe", "trait": "evil", "shift": 8.7, "trait_score": 82.0},
    {"name": "sycophantic_control", "trait": "sycophantic", "shift": -0.4, "trait_score": 27.0},
    {"name": "sycophantic_mild", "trait": "sycophantic", "shift": 1.2, "trait_score": 48.0},
    {"name": "sycophantic_severe", "trait": "sycophantic", "shift": 5.0, "trait_score": 66.0},
    {"name": "hallucinating_mild", "trait": "hallucinating", "shift": 2.4, "trait_score": 22.0},
]


def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def _ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    for rank, i in enumerate(order):
        r[i] = float(rank)
    return r


@exercise("5.4", "shift_vs_expression")
def test_shift_vs_expression(shift_vs_expression) -> None:
    """r is Pearson's correlation of shift and trait score (centred, on the values, not their ranks); the figure
    has one trace per trait, named by the trait, with the rows' shifts as x, scores as y and names as text."""
    require_implemented(shift_vs_expression, NAME)
    import plotly.graph_objects as go

    rows = [dict(r) for r in ROWS]

    def run(rows):  # the figure comes back as its dict (the tests compare plain values only)
        out = shift_vs_expression(rows)
        if type(out) is tuple and len(out) == 2 and type(out[1]) is go.Figure:
            return out[0], out[1].to_dict()
        return out

    out = call(run, rows, name=NAME)
    check(rows == ROWS, f"{NAME} changed the results it was given: leave them as they are")
    if not isinstance(out, tuple) or len(out) != 2:
        fail(f"{NAME} should return a tuple (r, fig), got {type(out).__name__}")
    r, fig = out
    if not isinstance(r, (float, int, np.floating)):
        fail(f"{NAME} should return r as a Python float, got {type(r).__name__}")
    r = float(r)
    x, y = [row["shift"] for row in ROWS], [row["trait_score"] for row in ROWS]
    want = _pearson(x, y)
    if abs(r - want) > 1e-6:
        if abs(r - _pearson(_ranks(x), _ranks(y))) < 1e-6:
            fail(f"{NAME}: r was computed on the ranks (Spearman's correlation): Pearson's r uses the values")
        uncentred = sum(a * b for a, b in zip(x, y)) / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))
        if abs(r - uncentred) < 1e-6:
            fail(f"{NAME}: r was computed without centring (the cosine of the raw values): subtract the means first")
        if abs(r - want ** 2) < 1e-6:
            fail(f"{NAME} returned r squared: return r itself (its sign says which way the relation goes)")
        fail(f"{NAME} returned r = {r:.6f}, expected Pearson's r = {want:.6f}")
    if not isinstance(fig, dict) or not isinstance(fig.get("data"), (list, tuple)):
        fail(f"{NAME} should return a plotly go.Figure as its second value, got {type(fig).__name__}")
    traits = list(dict.fromkeys(row["trait"] for row in ROWS))
    traces = {t.get("name"): t for t in fig["data"] if isinstance(t, dict)}
    missing = [t for t in traits if t not in traces]
    check(not missing, f"{NAME}'s figure should have one trace per trait named by the trait; missing {missing}, found "
                       f"{list(traces)}")
    for t in traits:
        rows_t = [row for row in ROWS if row["trait"] == t]
        tr = traces[t]
        as_list = lambda key: [v.item() if hasattr(v, "item") else v for v in list(tr.get(key) if tr.get(key) is not None else ())]  # noqa: E731
        got = sorted(zip(as_list("x"), as_list("y"), as_list("text")))
        wantp = sorted((row["shift"], row["trait_score"], row["name"]) for row in rows_t)
        if [g[:2] for g in got] == [(b, a) for a, b, _ in wantp]:
            fail(f"{NAME}: the {t} trace has the axes swapped: shift on x, trait score on y")
        check(got == wantp, f"{NAME}: the {t} trace should hold the points (shift, trait_score) with the set names as "
                            f"text: expected {wantp}, got {got}")
    passed("test_shift_vs_expression")


@exercise("5.4", "shift_vs_expression")
def test_shift_vs_expression_input_checks(shift_vs_expression) -> None:
    """Fewer than three rows, and equal shifts or equal scores (no correlation), are rejected with ValueError."""
    require_implemented(shift_vs_expression, NAME)
    same_shift = [dict(r, shift=1.0) for r in ROWS]
    same_score = [dict(r, trait_score=50.0) for r in ROWS]
    for rows, what in [(ROWS[:2], "two rows"), ([], "no rows"), (same_shift, "rows whose shifts are all equal"),
                       (same_score, "rows whose trait scores are all equal")]:
        expect_value_error(shift_vs_expression, rows, name=NAME, what=what)
    passed("test_shift_vs_expression_input_checks")
