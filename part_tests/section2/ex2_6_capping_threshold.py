"""Exercise 2.6 — The capping threshold

Tests of `compute_capping_threshold`: `test_compute_capping_threshold`, `test_compute_capping_threshold_input_checks`.
"""

from __future__ import annotations

import numpy as np
import torch

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    exercise,
    expect_value_error,
    fail,
    friendly_tests,
    passed,
    require_implemented,
)
from part_tests.properties import for_all, st


THRESHOLD_X = [-1.0, 3.0, 0.5, 2.0, -2.0, 1.0, 4.0, 0.0, 1.5]  # sorted: -2 -1 0 .5 1 1.5 2 3 4


@exercise("2.6", "compute_capping_threshold")
def test_compute_capping_threshold(compute_capping_threshold) -> None:
    require_implemented(compute_capping_threshold, "compute_capping_threshold")
    x = THRESHOLD_X
    arr = np.array(x)
    for q in (0.25, 0.1, 0.3, 0.5):
        want = float(np.quantile(arr, q))
        given = list(x)
        got = call(compute_capping_threshold, given, q, name="compute_capping_threshold")
        if given != x:
            fail("compute_capping_threshold changed the list of projections it was given (sorted it in place?): sort a "
                 "copy (sorted(x), np.sort(x)) and leave the caller's data as it was")
        check(isinstance(got, float) and not isinstance(got, bool),
              f"compute_capping_threshold should return a Python float, got {type(got).__name__} (use float(...))")
        if abs(got - want) > 1e-6 * max(1.0, abs(want)):  # float32 arithmetic (torch.quantile) is fine
            hints = [
                (float(np.quantile(arr, 1 - q)), f"you took the {1 - q:.2f} quantile: tau is the {q} quantile (low projections are the drifted ones), not 1 - quantile"),
                (float(np.percentile(arr, q)), f"you computed the {q}th PERCENTILE, not the {q} quantile: quantile is a fraction "
                 "(0.25 = the 25th percentile); np.percentile expects percent, and a fraction must not be divided by 100 again"),
                (float(arr.max()), "you returned the maximum; tau is a quantile of the projections"),
                (float(arr.mean()), "you returned the mean; tau is a quantile of the projections"),
                (float(arr.min()), "you returned the minimum; tau is a quantile of the projections"),
                (float(np.quantile(arr, 0.25)), "that is the 0.25 quantile whatever quantile is asked for: the quantile "
                 "argument was ignored"),
            ]
            for method in ("nearest", "lower", "higher", "midpoint"):
                hints.append((float(np.quantile(arr, q, method=method)), f"that is np.quantile's '{method}' method: tau "
                              "uses linear interpolation between the two nearest projections (np.quantile's default)"))
            for value, hint in hints:
                if abs(got - value) < 1e-6 * max(1.0, abs(value)):
                    fail(f"compute_capping_threshold(x, {q}) = {got}, expected {want}: {hint}")
            fail(f"compute_capping_threshold(x, {q}) = {got}, expected {want} (np.quantile with linear interpolation)")
    containers = [(arr, "a numpy array"), (torch.tensor(x), "a float32 tensor"),
                  (torch.tensor(x, dtype=torch.bfloat16), "a bfloat16 tensor (projections from a half-precision model)")]
    for container, what in containers:
        pristine = container.copy() if isinstance(container, np.ndarray) else container.clone()
        try:
            got = call(compute_capping_threshold, container, 0.25, name="compute_capping_threshold")
        except AssertionError:
            raise
        except Exception as err:
            extra = (": numpy has no bfloat16 and torch.quantile takes only float32/float64, so convert first "
                     "(projections.float())") if "bfloat16" in what else ""
            fail(f"compute_capping_threshold failed on {what} ({type(err).__name__}: {str(err)[:100]}){extra}")
        check(isinstance(got, float) and abs(got - 0.0) < 1e-6,
              f"compute_capping_threshold(projections, 0.25) on {what} returned {got!r}, expected the Python float 0.0")
        same = np.array_equal(container, pristine) if isinstance(container, np.ndarray) else torch.equal(container, pristine)
        if not same:
            fail(f"compute_capping_threshold changed the projections it was given ({what}; sorted in place?): sort a copy "
                 "(np.sort(x), torch.sort(x).values) and leave the caller's data as it was")

    # --- property: 1 to 11 projections (a single one too), any quantile in [0, 1], four containers
    values = st.lists(st.floats(-50, 50, allow_nan=False).map(lambda f: round(f, 2)), min_size=1, max_size=11)
    kinds = st.sampled_from(["list", "numpy", "float32", "bfloat16"])
    for_all(st.tuples(values, st.floats(0.0, 1.0), kinds), lambda case: _check_threshold_case(compute_capping_threshold, *case),
            name="compute_capping_threshold", examples=10)
    passed("test_compute_capping_threshold")


def _check_threshold_case(compute_capping_threshold, values: list[float], q: float, kind: str) -> None:
    if kind == "list":
        given, exact = list(values), np.array(values, dtype=np.float64)
    elif kind == "numpy":
        given, exact = np.array(values), np.array(values, dtype=np.float64)
    else:
        given = torch.tensor(values, dtype=torch.float32 if kind == "float32" else torch.bfloat16)
        exact = given.double().numpy()
    want = float(np.quantile(exact, q))
    what = f"{len(values)} projection{'s' if len(values) > 1 else ''} ({kind}) and quantile {q!r}"
    try:
        got = compute_capping_threshold(given, q)
    except NotImplementedError as err:
        raise NotImplementedYet("compute_capping_threshold: not implemented yet") from err
    except Exception as err:
        one = (" With one projection (or quantile 1.0) the position q * (n - 1) is the last index: there is no next "
               "value to interpolate towards, so clamp the upper index (min(lo + 1, n - 1))") if isinstance(err, IndexError) else ""
        fail(f"compute_capping_threshold raised {type(err).__name__}: {err} for {what}.{one}")
    check(isinstance(got, float) and not isinstance(got, bool),
          f"compute_capping_threshold should return a Python float, got {type(got).__name__} for {what}")
    if abs(got - want) > 1e-5 * max(1.0, float(np.abs(exact).max())):
        fail(f"compute_capping_threshold = {got} for {what}, expected {want}: the {q!r} quantile with linear "
             "interpolation (np.quantile's default), of the values as given")


@exercise("2.6", "compute_capping_threshold")
def test_compute_capping_threshold_input_checks(compute_capping_threshold) -> None:
    require_implemented(compute_capping_threshold, "compute_capping_threshold")
    x = THRESHOLD_X
    for q in (0.0, 1.0):  # valid edges: only that they are accepted (their values are the maths test's job)
        try:
            call(compute_capping_threshold, x, q)
        except NotImplementedError as err:
            raise NotImplementedYet("compute_capping_threshold: not implemented yet") from err
        except ValueError:
            fail(f"compute_capping_threshold(x, {q}) raised ValueError: 0 and 1 are valid quantiles (the minimum and the "
                 "maximum); reject only values outside [0, 1]")
    for bad_q in (25, -0.1, 1.5):
        expect_value_error(compute_capping_threshold, x, bad_q, name="compute_capping_threshold",
                           what=f"quantile = {bad_q} (quantile is a fraction in [0, 1]; the paper's 25th percentile is 0.25)")
    expect_value_error(compute_capping_threshold, [], 0.25, name="compute_capping_threshold", what="an empty list of projections")
    passed("test_compute_capping_threshold_input_checks")


friendly_tests(globals())
