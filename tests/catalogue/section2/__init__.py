"""Catalogue of plausible wrong implementations for Section 2; each must fail its test with a
message that names the mistake.

One module per exercise (`ex2_<M>_<name>.py`, beside `part_tests/section2/`), each mistake declared
where it is defined with `@mistake(test, phrase)`, each correct alternative with `@correct(test, ...)`;
the reference solutions they build on are loaded once in `_shared.py`.
"""
