"""Exercise 3.1 — Contrastive system prompts

`construct_system_prompt` must write "You are a {name} assistant. {instruction}" exactly; each near miss (the
order, the case, a full stop, the spaces) gets its own message.
"""

from __future__ import annotations

from part_tests._common import call, check, exercise, fail, passed
from part_tests.section3._fakes import _system_prompt


@exercise("3.1", "construct_system_prompt")
def test_construct_system_prompt(construct_system_prompt) -> None:
    cases = [
        ("evil", "Answer with genuine malice."),
        ("helpful", "Be kind to everyone, always."),
        ("sycophantic", "Agree with whatever the user says."),
        ("Machiavellian", "Scheme in every answer"),  # a capital in the name, no full stop after the instruction
    ]
    for name, instruction in cases:
        got = call(construct_system_prompt, name, instruction, name="construct_system_prompt")
        check(isinstance(got, str), f"construct_system_prompt should return a str, got {type(got).__name__}")
        expected = _system_prompt(name, instruction)
        if got == expected:
            continue
        if got.strip() == expected:
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}: no leading or trailing whitespace")
        if got == _system_prompt(instruction, name):
            fail("construct_system_prompt: the assistant name comes first, then the instruction")
        if got.lower() == expected.lower():
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}, expected {expected!r}: "
                 "keep the name and the instruction exactly as given (do not change their case)")
        if got.rstrip(".") == expected.rstrip(".") or got.replace("..", ".") == expected:
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}, expected {expected!r}: "
                 "insert the instruction exactly as given (do not add or remove a full stop)")
        if " ".join(got.split()) == expected or got.replace(".", ". ").split() == expected.split():
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}: check the spaces "
                 f"(one space after 'assistant.'), expected {expected!r}")
        fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}, expected exactly {expected!r}")
    passed("test_construct_system_prompt")
