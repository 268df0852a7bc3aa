"""The catalogue of Section 1 — Mapping persona space: one module per exercise, beside
`part_tests/section1/ex1_<M>_<name>.py`; each wrong implementation is declared where it is defined
with `@mistake(test, phrase)`, each correct one written another way with `@correct(test, ...)`."""
