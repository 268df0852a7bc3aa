"""Tests for Section 5 — Persona shifts from finetuning: predict, prevent, flag. One module per
exercise; each test takes the student's object first. Expected values come from the course's utils
or from small computations in the tests, never from the solutions."""

from __future__ import annotations

from part_tests._common import friendly_tests
from part_tests.section5.ex5_1_training_example import test_training_example, test_training_example_input_checks
from part_tests.section5.ex5_2_train_step import test_train_step, test_train_step_input_checks
from part_tests.section5.ex5_3_finetuning_shift import (test_finetuning_shift, test_finetuning_shift_input_checks,
                                                        test_last_prompt_activations)
from part_tests.section5.ex5_4_shift_vs_expression import test_shift_vs_expression, test_shift_vs_expression_input_checks
from part_tests.section5.ex5_5_projection_difference import (test_projection_difference,
                                                             test_projection_difference_input_checks)
from part_tests.section5.ex5_6_auroc import test_auroc, test_auroc_input_checks

__all__ = [name for name in dir() if name.startswith("test_")]

friendly_tests(globals())
