"""Tests for Section 2 — The Assistant Axis: drift monitoring and activation capping.

Each test takes the student's object first and builds its own fixtures (the tiny offline model, its
half-precision copy and chat-template variants, or hand-built geometry on a fake model); expected
values come from `utils` or from small independent computations here. Where a result is wrong, the
test computes what each likely mistake would have produced and names the one that matched.

One module per exercise (`ex2_<M>_<name>.py`, opening with the exercise's header), fakes shared by
several exercises in `_fakes.py`. Students call `from part_tests import section2 as tests;
tests.test_<exercise>(obj)`.
"""

from part_tests._common import friendly_tests
from part_tests.section2.ex2_1_record_hidden_shapes import test_record_hidden_shapes
from part_tests.section2.ex2_2_conversation_analyzer import test_conversation_analyzer
from part_tests.section2.ex2_3_rate_delusion_risk import test_rate_delusion_risk, test_rate_delusion_risk_input_checks
from part_tests.section2.ex2_4_visualize_transcript_drift import test_visualize_transcript_drift
from part_tests.section2.ex2_5_generate_with_steering import test_generate_with_steering
from part_tests.section2.ex2_6_capping_threshold import (
    test_compute_capping_threshold,
    test_compute_capping_threshold_input_checks,
)
from part_tests.section2.ex2_7_activation_capper import test_activation_capper, test_activation_capper_input_checks
from part_tests.section2.ex2_8_capping_experiment import test_compute_turn_projections, test_run_capping_experiment

__all__ = [
    "test_record_hidden_shapes",
    "test_conversation_analyzer",
    "test_rate_delusion_risk",
    "test_rate_delusion_risk_input_checks",
    "test_visualize_transcript_drift",
    "test_generate_with_steering",
    "test_compute_capping_threshold",
    "test_compute_capping_threshold_input_checks",
    "test_activation_capper",
    "test_activation_capper_input_checks",
    "test_compute_turn_projections",
    "test_run_capping_experiment",
]

friendly_tests(globals())
