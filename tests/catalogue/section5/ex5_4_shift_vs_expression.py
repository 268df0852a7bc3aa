"""Exercise 5.4 — Does the shift predict the trait?: wrong and correct implementations."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from tests.catalogue import correct, mistake


def _xy(results):
    if len(results) < 3:
        raise ValueError("too few")
    x = torch.tensor([float(r["shift"]) for r in results], dtype=torch.float64)
    y = torch.tensor([float(r["trait_score"]) for r in results], dtype=torch.float64)
    if bool((x == x[0]).all()) or bool((y == y[0]).all()):
        raise ValueError("constant")
    return x, y


def _fig(results, swap=False):
    fig = go.Figure()
    for trait in dict.fromkeys(r["trait"] for r in results):
        rows = [r for r in results if r["trait"] == trait]
        xs, ys = [r["shift"] for r in rows], [r["trait_score"] for r in rows]
        fig.add_scatter(x=ys if swap else xs, y=xs if swap else ys, text=[r["name"] for r in rows], name=str(trait),
                        mode="markers")
    return fig


def _pearson(x, y):
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / (dx.norm() * dy.norm()))


@mistake("test_shift_vs_expression", "ranks")
def spearman(results):
    x, y = _xy(results)
    return _pearson(x.argsort().argsort().double(), y.argsort().argsort().double()), _fig(results)


@mistake("test_shift_vs_expression", "centring")
def uncentred(results):
    x, y = _xy(results)
    return float((x * y).sum() / (x.norm() * y.norm())), _fig(results)


@mistake("test_shift_vs_expression", "squared")
def r_squared(results):
    x, y = _xy(results)
    return _pearson(x, y) ** 2, _fig(results)


@mistake("test_shift_vs_expression", "swapped")
def swapped_axes(results):
    x, y = _xy(results)
    return _pearson(x, y), _fig(results, swap=True)


@mistake("test_shift_vs_expression", "one trace per trait")
def one_trace(results):
    x, y = _xy(results)
    fig = go.Figure(go.Scatter(x=x.tolist(), y=y.tolist(), text=[r["name"] for r in results], name="finetunes"))
    return _pearson(x, y), fig


@mistake("test_shift_vs_expression", "go.Figure")
def returns_dict(results):
    x, y = _xy(results)
    return _pearson(x, y), {"x": x.tolist(), "y": y.tolist()}


@mistake("test_shift_vs_expression_input_checks", "ValueError")
def no_checks(results):
    x = torch.tensor([float(r["shift"]) for r in results] or [0.0], dtype=torch.float64)
    y = torch.tensor([float(r["trait_score"]) for r in results] or [0.0], dtype=torch.float64)
    return float(torch.nan_to_num(torch.corrcoef(torch.stack([x, y]))[0, 1])), _fig(results)


@correct("test_shift_vs_expression", "test_shift_vs_expression_input_checks")
def with_corrcoef(results):
    x, y = _xy(results)
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1]), _fig(results)
