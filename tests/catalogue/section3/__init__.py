"""Catalogue of plausible wrong implementations for Section 3 (each must fail its test), and of correct
ones written another way (each must pass), one module per exercise beside `part_tests/section3/`.

Wrong implementations look up `generate`, `ask_judge`, `score_trait_response`, ... in their module's
globals, exactly as a student's functions look them up in the notebook's: the tests swap those names
for fakes with `using(...)`, so the same plumbing is exercised. `tests.catalogue.entries("section3")`
imports every module here and returns what they declared.
"""
