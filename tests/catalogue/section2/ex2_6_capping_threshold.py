"""Exercise 2.6 — The capping threshold

Wrong implementations of compute_capping_threshold that its tests must reject, and correct ones written
another way.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section2._shared import ref


@mistake("test_compute_capping_threshold", "1 - quantile")
def tau_one_minus(projections, quantile=0.25):
    return ref.compute_capping_threshold(projections, 1 - quantile)


@mistake("test_compute_capping_threshold", "percent")
def tau_percentile_confusion(projections, quantile=0.25):
    return float(np.percentile(np.asarray(projections, dtype=float), quantile))


@mistake("test_compute_capping_threshold", "must not be divided by 100")
def tau_divided_by_100(projections, quantile=0.25):
    return ref.compute_capping_threshold(projections, quantile / 100)


@mistake("test_compute_capping_threshold", "maximum")
def tau_max(projections, quantile=0.25):
    return float(np.max(np.asarray(projections, dtype=float)))


@mistake("test_compute_capping_threshold", "mean")
def tau_mean(projections, quantile=0.25):
    return float(np.mean(np.asarray(projections, dtype=float)))


@mistake("test_compute_capping_threshold", "Python float")
def tau_tensor(projections, quantile=0.25):
    return torch.quantile(torch.as_tensor(np.asarray(projections, dtype=np.float64)), quantile)


@mistake("test_compute_capping_threshold_input_checks", "raise ValueError")
def tau_accepts_percent(projections, quantile=0.25):
    q = quantile / 100 if quantile > 1 else quantile
    return float(np.quantile(np.asarray(projections, dtype=float), q))


@mistake("test_compute_capping_threshold", "linear interpolation")
def tau_nearest(projections, quantile=0.25):
    return float(np.quantile(np.asarray(projections, dtype=float), quantile, method="nearest"))


@mistake("test_compute_capping_threshold", "quantile argument was ignored")
def tau_ignores_quantile(projections, quantile=0.25):
    return float(np.quantile(np.asarray(projections, dtype=float), 0.25))


@mistake("test_compute_capping_threshold", "bfloat16")
def tau_numpy_on_tensor(projections, quantile=0.25):
    if not 0 <= quantile <= 1:
        raise ValueError("quantile must be in [0, 1]")
    x = np.asarray(projections, dtype=np.float64)  # fails on a bfloat16 tensor
    if x.size == 0:
        raise ValueError("no projections")
    return float(np.quantile(x, quantile))


@mistake("test_compute_capping_threshold_input_checks", "0 and 1 are valid")
def tau_rejects_bounds(projections, quantile=0.25):
    if not 0 < quantile < 1:
        raise ValueError("quantile must be strictly between 0 and 1")
    return ref.compute_capping_threshold(projections, quantile)


@mistake("test_compute_capping_threshold_input_checks", "raise ValueError")
@correct("test_compute_capping_threshold")
def tau_torch_no_checks(projections, quantile=0.25):
    """Correct maths, no input checks: torch raises RuntimeError, not ValueError, on bad input."""
    return float(torch.quantile(torch.as_tensor(projections).double().flatten(), quantile))


@mistake("test_compute_capping_threshold", "sorted it in place")
def tau_sorts_in_place(projections, quantile=0.25):
    """Linear interpolation by hand, after sorting the caller's list in place."""
    if not 0 <= quantile <= 1:
        raise ValueError("quantile must be in [0, 1]")
    xs = projections.float().tolist() if isinstance(projections, torch.Tensor) else projections
    if len(xs) == 0:
        raise ValueError("no projections")
    xs.sort()
    pos = quantile * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (pos - lo) * (xs[hi] - xs[lo]))


# correct alternatives


@correct("test_compute_capping_threshold", "test_compute_capping_threshold_input_checks")
def tau_alt_torch_float32(projections, quantile=0.25):
    """torch.quantile in float32 (differs from np.quantile in float64 by float32 rounding)."""
    if not 0 <= quantile <= 1:
        raise ValueError("quantile must be a fraction in [0, 1]")
    x = torch.as_tensor(projections).detach().float().flatten()
    if x.numel() == 0:
        raise ValueError("no projections")
    return torch.quantile(x, quantile).item()


@correct("test_compute_capping_threshold", "test_compute_capping_threshold_input_checks")
def tau_alt_percentile(projections, quantile=0.25):
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile is a fraction in [0, 1], got {quantile}")
    x = torch.as_tensor(projections).float().numpy() if isinstance(projections, torch.Tensor) else np.asarray(projections, dtype=float)
    if len(x) == 0:
        raise ValueError("empty")
    return float(np.percentile(x, 100 * quantile))


@correct("test_compute_capping_threshold", "test_compute_capping_threshold_input_checks")
def tau_alt_by_hand(projections, quantile=0.25):
    """Sorted values, linear interpolation written out."""
    xs = sorted(float(p) for p in (projections.float().tolist() if isinstance(projections, torch.Tensor) else projections))
    if not xs or not 0.0 <= quantile <= 1.0:
        raise ValueError("need projections and a quantile in [0, 1]")
    pos = quantile * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


# wrong ones found by the property-based inputs


@mistake("test_compute_capping_threshold", "clamp the upper index")
def tau_by_hand_unclamped(projections, quantile=0.25):
    """Linear interpolation written out, with the upper neighbour taken as lo + 1 unconditionally."""
    xs = sorted(float(p) for p in (projections.float().tolist() if isinstance(projections, torch.Tensor) else projections))
    if not xs or not 0.0 <= quantile <= 1.0:
        raise ValueError("need projections and a quantile in [0, 1]")
    pos = quantile * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] + (pos - lo) * (xs[lo + 1] - xs[lo])


@mistake("test_compute_capping_threshold", "linear")
def tau_rank_rounded(projections, quantile=0.25):
    """The value at the rounded position round(q * (n - 1)): right whenever that position is whole."""
    xs = sorted(float(p) for p in (projections.float().tolist() if isinstance(projections, torch.Tensor) else projections))
    if not xs or not 0.0 <= quantile <= 1.0:
        raise ValueError("need projections and a quantile in [0, 1]")
    return xs[round(quantile * (len(xs) - 1))]
