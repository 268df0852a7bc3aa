"""Exercise 3.1 — Contrastive system prompts

`construct_system_prompt` must write "You are a {name} assistant. {instruction}" exactly; each near miss (the
order, the case, a full stop, the spaces) gets its own message. An empty or blank name is a ValueError; then a
property over names and instructions that hold braces, placeholders and spaces at their ends: both go in as given.
"""

from __future__ import annotations

from part_tests._common import NotImplementedYet, call, check, exercise, fail, passed
from part_tests.properties import for_all, st
from part_tests.section3._fakes import AWKWARD_TEXTS, _direct, _guarded, _system_prompt


_PAD = st.sampled_from(["", "", " ", "  "])
# whole awkward strings, the exercise's own placeholder names among them
_TEXT = st.sampled_from(AWKWARD_TEXTS)

# the template's own placeholder in the name, with positional braces: what str.replace or a second format meets
_IN_NAME = st.sampled_from(["{instruction}", "{instruction} {}", "{0} {instruction}"])

# a name and an instruction a user may type: braces, placeholders, spaces at either end
_NAMES_AND_INSTRUCTIONS = st.tuples(st.tuples(_PAD, _TEXT, st.just(" "), _IN_NAME, _PAD).map("".join),
                                    st.tuples(_PAD, _TEXT, _PAD).map("".join))


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

    # an empty or blank assistant name is a ValueError (the check at the top of the exercise's cell)
    for blank in ("", "   "):
        try:
            got = construct_system_prompt(blank, "Be kind.")
        except ValueError:
            continue
        except NotImplementedError as err:
            raise NotImplementedYet("construct_system_prompt: not implemented yet -- replace the `raise "
                                    "NotImplementedError` in the cell above with your code.") from err
        except Exception as err:
            raise AssertionError(f"construct_system_prompt({blank!r}, 'Be kind.') raised {type(err).__name__} ({err}); "
                                 "an empty or blank assistant name should raise a ValueError") from err
        fail(f"construct_system_prompt({blank!r}, 'Be kind.') returned {got!r}: an empty or blank assistant name should "
             "raise a ValueError (keep the check at the top of the cell)")

    # names and instructions are text, inserted as given: braces are not placeholders, outer spaces stay
    def check_one(case):
        name, instruction = case
        try:
            got = _direct(construct_system_prompt, name, instruction, name="construct_system_prompt")
        except (NotImplementedYet, AssertionError):
            raise
        except Exception as err:
            raise AssertionError(f"construct_system_prompt({name!r}, {instruction!r}) raised {type(err).__name__} "
                                 f"({err}): braces inside the name or the instruction are text, not placeholders; "
                                 "insert both with one f-string (no second .format on text that holds them)") from err
        expected = "You are a " + name + " assistant. " + instruction
        if got == expected:
            return
        if isinstance(got, str) and got == "You are a " + name.strip() + " assistant. " + instruction.strip():
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}: the name (or the instruction) "
                 "was stripped; insert both exactly as given, spaces included")
        fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}, expected exactly {expected!r}: "
             "insert the name and the instruction as given; braces or a '{answer}' inside them are text, not "
             "placeholders to fill (one f-string or one str.format call, not str.replace or a second format)")

    _guarded(lambda: for_all(_NAMES_AND_INSTRUCTIONS, check_one, name="construct_system_prompt on text with braces",
                             examples=5), "construct_system_prompt")
    passed("test_construct_system_prompt")
