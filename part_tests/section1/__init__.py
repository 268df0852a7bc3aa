"""Tests for Section 1 — Mapping persona space. Each takes the student's object first.

One module per exercise (`ex1_<M>_<name>.py`, its header in the docstring), helpers several exercises
share in `_shared.py`. A notebook calls them as `from part_tests import section1 as tests;
tests.test_<exercise>(obj)`: every test is re-exported here, wrapped so that a failure shows as a
short message (friendly_tests).
"""

from __future__ import annotations

from part_tests._common import friendly_tests
from part_tests.section1.ex1_1_judge_prompt import (
    test_judge_prompt_template,
    test_parse_score,
    test_parse_score_hidden,
)
from part_tests.section1.ex1_2_generate_all_responses import test_generate_all_responses
from part_tests.section1.ex1_3_format_messages import test_format_messages, test_format_messages_input_checks
from part_tests.section1.ex1_4_response_activations import (
    test_extract_response_activations,
    test_extract_response_activations_input_checks,
)
from part_tests.section1.ex1_5_persona_vectors import test_extract_persona_vectors
from part_tests.section1.ex1_6_cosine_similarity import (
    test_compute_cosine_similarity_matrix,
    test_compute_cosine_similarity_matrix_centered,
    test_compute_cosine_similarity_matrix_input_checks,
    test_compute_cosine_similarity_matrix_centered_input_checks,
)
from part_tests.section1.ex1_7_pca_axis import (
    test_pca_decompose_persona_vectors,
    test_pca_decompose_persona_vectors_input_checks,
)
from part_tests.section1.ex1_8_project_onto_axis import (
    test_project_personas_onto_axis,
    test_project_personas_onto_axis_input_checks,
)
from part_tests.section1.ex1_9_rank_by_cosine import test_rank_by_cosine, test_rank_by_cosine_input_checks

__all__ = [
    "test_judge_prompt_template",
    "test_parse_score",
    "test_parse_score_hidden",
    "test_generate_all_responses",
    "test_format_messages",
    "test_format_messages_input_checks",
    "test_extract_response_activations",
    "test_extract_response_activations_input_checks",
    "test_extract_persona_vectors",
    "test_compute_cosine_similarity_matrix",
    "test_compute_cosine_similarity_matrix_centered",
    "test_compute_cosine_similarity_matrix_input_checks",
    "test_compute_cosine_similarity_matrix_centered_input_checks",
    "test_pca_decompose_persona_vectors",
    "test_pca_decompose_persona_vectors_input_checks",
    "test_project_personas_onto_axis",
    "test_project_personas_onto_axis_input_checks",
    "test_rank_by_cosine",
    "test_rank_by_cosine_input_checks",
]

friendly_tests(globals())
