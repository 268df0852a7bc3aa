"""What Section 3's catalogue modules share: the course's reference solutions, loaded once.

The names the tests swap for fakes or stand-ins (`generate`, `ask_judge`, `construct_system_prompt`,
`score_trait_response`, `extract_all_layer_activations`) are bound in each exercise's own module, not
here: `part_tests._common.using` replaces a name in the globals of the module that defines the function
under test, as it does in a student's notebook.
"""

from __future__ import annotations

from utils.reference import load

ref = load("section3")
