"""Tests for Section 3 — Contrastive prompting. Each takes the student's object first.

Expected values come from the course's utils (chat spans, response_mean_activations) or from small
computations written out here; judges, generation and scorers are replaced by fakes where the test
is about plumbing, so every test is fast, offline and deterministic.

One module per exercise (`ex3_<M>_<name>.py`, its docstring opening with the exercise's header), the
stand-ins several exercises share in `_fakes.py`. A notebook imports the package as before::

    from part_tests import section3 as tests
    tests.test_construct_system_prompt(construct_system_prompt)
"""

from __future__ import annotations

from part_tests._common import friendly_tests
from part_tests.section3.ex3_1_system_prompts import test_construct_system_prompt
from part_tests.section3.ex3_2_contrastive_responses import test_generate_contrastive_responses
from part_tests.section3.ex3_3_judge_scores import test_score_coherence, test_score_trait_response
from part_tests.section3.ex3_4_effective_pairs import test_filter_effective_pairs
from part_tests.section3.ex3_5_contrastive_vectors import (
    test_extract_all_layer_activations,
    test_extract_contrastive_vectors,
    test_extract_contrastive_vectors_input_checks,
)
from part_tests.section3.ex3_6_layer_sweep import test_steering_effect_by_layer
from part_tests.section3.ex3_7_sae_features import test_feature_activation_differences, test_top_sae_features_by_cosine

__all__ = [
    "test_construct_system_prompt",
    "test_generate_contrastive_responses",
    "test_score_trait_response",
    "test_score_coherence",
    "test_filter_effective_pairs",
    "test_extract_all_layer_activations",
    "test_extract_contrastive_vectors",
    "test_extract_contrastive_vectors_input_checks",
    "test_steering_effect_by_layer",
    "test_top_sae_features_by_cosine",
    "test_feature_activation_differences",
]

friendly_tests(globals())
