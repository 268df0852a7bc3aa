"""Exercise 5.6 — Scoring the screen: AUROC.

Expected values are computed here from the definition: every positive against every negative,
ties counting one half.
"""

from __future__ import annotations

import numpy as np
import torch

from part_tests._common import call, check, exercise, expect_value_error, fail, passed, require_implemented

NAME = "auroc"


def _auc(scores, labels, tie=0.5):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum(1.0 if p > n else tie if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


CASES = [
    ([0.9, 0.8, 0.3, 0.5, 0.1, 0.7], [1, 1, 0, 1, 0, 0]),
    ([1.0, 2.0, 2.0, 3.0, 2.0, 0.5, 2.0], [0, 1, 0, 1, 1, 0, 0]),  # ties across the classes
    ([5.0, 5.0, 5.0, 5.0], [1, 0, 1, 0]),  # all tied: 0.5
]


@exercise("5.6", "auroc")
def test_auroc(auroc) -> None:
    """The share of (positive, negative) pairs the scores order correctly, ties counting one half; lists and tensors,
    int and bool labels."""
    require_implemented(auroc, NAME)
    for scores, labels in CASES:
        want = _auc(scores, labels)
        for s, y, how in [(scores, labels, "lists"), (torch.tensor(scores), torch.tensor(labels).bool(), "a tensor and bool labels")]:
            got = call(auroc, s, y, name=NAME)
            if isinstance(got, torch.Tensor):
                fail(f"{NAME} should return a Python float, got a tensor")
            check(isinstance(got, (float, int, np.floating)), f"{NAME} should return a float, got {type(got).__name__}")
            got = float(got)
            if abs(got - want) > 1e-6:
                if abs(got - (1 - want)) < 1e-6:
                    fail(f"{NAME}: the labels are inverted: label 1 (inducing) is the positive class, and the AUROC is the "
                         "chance that a positive scores higher than a negative")
                if abs(got - _auc(scores, labels, tie=1.0)) < 1e-6:
                    fail(f"{NAME} counts ties as wins: a tie between a positive and a negative counts one half")
                if abs(got - _auc(scores, labels, tie=0.0)) < 1e-6:
                    fail(f"{NAME} counts ties as losses: a tie between a positive and a negative counts one half")
                fail(f"{NAME}({scores}, {labels}) given as {how} returned {got}, expected {want}")
    passed("test_auroc")


@exercise("5.6", "auroc")
def test_auroc_input_checks(auroc) -> None:
    """Different lengths, labels other than 0/1, and a missing class are rejected with ValueError."""
    require_implemented(auroc, NAME)
    for args, what in [(([0.1, 0.2, 0.3], [0, 1]), "3 scores and 2 labels"),
                       (([0.1, 0.2, 0.3], [0, 1, 2]), "a label 2 (labels are 0/1)"),
                       (([0.1, 0.2, 0.3], [1, 1, 1]), "labels with no negative"),
                       (([0.1, 0.2], [0, 0]), "labels with no positive")]:
        expect_value_error(auroc, *args, name=NAME, what=what)
    passed("test_auroc_input_checks")
