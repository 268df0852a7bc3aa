"""Exercise 5.6 — Scoring the screen: AUROC: wrong and correct implementations."""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake


def _checked(scores, labels):
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels)
    if y.shape != s.shape or not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels")
    y = y.bool()
    if y.all() or not y.any():
        raise ValueError("one class")
    return s[y], s[~y]


def _auc(pos, neg, tie):
    d = pos[:, None] - neg[None, :]
    return float((d > 0).double().mean() + tie * (d == 0).double().mean())


@mistake("test_auroc", "inverted")
def inverted(scores, labels):
    pos, neg = _checked(scores, labels)
    return _auc(neg, pos, 0.5)


@mistake("test_auroc", "ties as wins")
def ties_win(scores, labels):
    pos, neg = _checked(scores, labels)
    return float((pos[:, None] >= neg[None, :]).double().mean())


@mistake("test_auroc", "ties as losses")
def ties_lose(scores, labels):
    pos, neg = _checked(scores, labels)
    return _auc(pos, neg, 0.0)


@mistake("test_auroc", "float")
def returns_tensor(scores, labels):
    pos, neg = _checked(scores, labels)
    d = pos[:, None] - neg[None, :]
    return (d > 0).double().mean() + 0.5 * (d == 0).double().mean()


@mistake("test_auroc_input_checks", "ValueError")
def no_checks(scores, labels):
    s = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels).bool()
    n = min(len(s), len(y))
    pos, neg = s[:n][y[:n]], s[:n][~y[:n]]
    if not len(pos) or not len(neg):
        return 0.5
    return _auc(pos, neg, 0.5)


@correct("test_auroc", "test_auroc_input_checks")
def by_ranks(scores, labels):
    """The Mann-Whitney form: mean ranks (ties averaged) of the positives."""
    pos, neg = _checked(scores, labels)
    s = torch.cat([pos, neg])
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=s.dtype)
    for value in s.unique():  # average the ranks of ties
        tied = s == value
        ranks[tied] = ranks[tied].mean()
    n1, n0 = len(pos), len(neg)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
