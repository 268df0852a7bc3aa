"""Property-based inputs for the exercise tests: whole classes of inputs, drawn the same way every run.

A test checks its hand-built cases first (their messages name the likeliest mistake), then a
property over inputs drawn by `hypothesis` from a strategy that covers a class: sizes that do and do
not divide the batch size, strings with braces and template words, fractional and negative
coefficients, empty and single-element containers. The draws are derandomised (the same examples on
every machine and every run), bounded in number, and never stored on disk; a failure is shrunk to
the smallest input that still fails and shown to the student:

    from part_tests.properties import for_all, st

    def check_one(n):                         # raises AssertionError with a teaching message
        got = call(student_fn, list(range(n)), batch_size=4)
        check(len(got) == n, f"{n} records in, {len(got)} out: the last, partial batch was dropped")

    for_all(st.integers(1, 11), check_one, name="extract_all", examples=8)
    # AssertionError: 5 records in, 4 out: the last, partial batch was dropped
    #   (smallest failing input found: 5)
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# hypothesis keeps a small cache beside the code it runs (`.hypothesis/`): keep it out of the
# student's folder (and out of the repository) in the temporary directory.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "persona-course-hypothesis"))

__all__ = ["braces_text", "coefficients", "for_all", "sizes", "st"]

# No explain phase: it traces the code under test (sys.settrace), which the grading watch forbids.
_PHASES = (Phase.explicit, Phase.generate, Phase.shrink)


class _Failed(Exception):
    """Carries the check's own failure out of hypothesis, which shrinks on it."""


def for_all(strategy: st.SearchStrategy, check_one: Callable[[Any], None], *, name: str, examples: int = 10) -> None:
    """Run `check_one(example)` on `examples` inputs drawn from `strategy` (derandomised, no database).

    `check_one` raises AssertionError with a message for the student; the first failure is shrunk
    and re-raised with the smallest failing input appended. A 'not implemented yet' failure is passed
    on unchanged, and so is an error the check does not turn into an AssertionError."""
    failure: dict[str, Any] = {}

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=False,
              phases=_PHASES, suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(strategy)
    def run(example):
        try:
            check_one(example)
        except AssertionError as err:
            if "not implemented yet" in str(err):
                raise
            failure["example"], failure["error"] = example, err
            raise _Failed() from None

    try:
        run()
    except _Failed:
        err, example = failure["error"], failure["example"]
        shown = repr(example)
        shown = shown if len(shown) <= 300 else shown[:300] + " ..."
        raise AssertionError(f"{name}: {err}\n  (smallest failing input found: {shown})") from None


def sizes(max_size: int = 11) -> st.SearchStrategy[int]:
    """Counts from 1 to `max_size`: with a batch size of 4 these cover full, partial and single batches."""
    return st.integers(min_value=1, max_value=max_size)


# Text a user may type that meets str.format / str.replace templating: braces, placeholders, template words.
_AWKWARD = ["{", "}", "{}", "{0}", "{answer}", "{question}", "{response}", "{conversation}", "{{", "}}",
            "%s", "SCORE:", "\\n", "$1", "REFUSAL"]


def braces_text(min_size: int = 1) -> st.SearchStrategy[str]:
    """Short strings that mix plain words with braces, placeholders and template words."""
    words = st.sampled_from(["why", "the", "plan", "works", "?", "I", "think", *_AWKWARD])
    return st.lists(words, min_size=min_size, max_size=6).map(" ".join)


def coefficients() -> st.SearchStrategy[float]:
    """Steering coefficients that are not whole numbers, and negative ones (catches int(alpha))."""
    return st.sampled_from([0.5, -0.5, 1.5, -1.25, 2.75, 0.25, -3.0, 0.0])
