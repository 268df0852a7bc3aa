"""Section 4's catalogue of mistakes: one module per exercise (`ex4_<M>_<name>.py`, beside
`part_tests/section4/ex4_<M>_<name>.py`), each wrong implementation declared where it is defined with
`@mistake(test, phrase)` and each correct alternative with `@correct(test, ...)`; the reference's
namespace and the notebook's names in `_shared.py`. `tests.catalogue.entries("section4")` reads them.
"""
