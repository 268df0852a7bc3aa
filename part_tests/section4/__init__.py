"""Tests for Section 4 — Steering with persona vectors. Each takes the student's object first.

Expected values come from the course's utils (utils.steering.Steerer, utils.generation.generate,
utils.chat.format_chat) or from small computations here, never from the solutions. Where a test
can tell candidate mistakes apart, it computes what each would have produced and names the one
that matches.

One module per exercise (`ex4_<M>_<name>.py`, its docstring opening with the exercise's header),
helpers used by several exercises in `_fakes.py`. A notebook runs them as
`from part_tests import section4 as tests; tests.test_activation_steerer(ActivationSteerer)`.
"""

from __future__ import annotations

from part_tests._common import friendly_tests
from part_tests.section4.ex4_1_activation_steerer import test_activation_steerer, test_activation_steerer_input_checks
from part_tests.section4.ex4_2_steered_generation import test_generate_with_steerer, test_run_steering_experiment
from part_tests.section4.ex4_3_projections import (
    test_compute_trait_projections,
    test_compute_trait_projections_input_checks,
)
from part_tests.section4.ex4_4_trait_pipeline import test_run_trait_pipeline
from part_tests.section4.ex4_5_trait_geometry import test_trait_cosine_matrix, test_trait_cosine_matrix_input_checks

__all__ = [
    "test_activation_steerer",
    "test_activation_steerer_input_checks",
    "test_generate_with_steerer",
    "test_run_steering_experiment",
    "test_compute_trait_projections",
    "test_compute_trait_projections_input_checks",
    "test_run_trait_pipeline",
    "test_trait_cosine_matrix",
    "test_trait_cosine_matrix_input_checks",
]

friendly_tests(globals())  # each module wraps its own tests already (friendly() leaves a wrapped test as it is)
