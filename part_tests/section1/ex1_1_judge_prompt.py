"""Exercise 1.1 — A role-play judge

Tests of JUDGE_PROMPT_TEMPLATE and parse_score (and parse_score's grader-only cases).
"""

from __future__ import annotations

import re
import string

from part_tests._common import NotImplementedYet, call, check, exercise, passed, require_implemented
from part_tests.properties import braces_text, for_all, st


@exercise("1.1", "JUDGE_PROMPT_TEMPLATE")
def test_judge_prompt_template(template) -> None:
    require_implemented(template, "JUDGE_PROMPT_TEMPLATE")
    template = call(lambda: template, name="JUDGE_PROMPT_TEMPLATE")  # a str subclass becomes a plain str
    check(isinstance(template, str), f"JUDGE_PROMPT_TEMPLATE should be a string, got {type(template).__name__}")
    for field in ("{role}", "{question}", "{answer}"):
        check(field in template, f"JUDGE_PROMPT_TEMPLATE needs the placeholder {field}")
    try:
        filled = template.format(role="ROLE-X", question="QUESTION-Y", answer="ANSWER-Z")
    except (KeyError, IndexError, ValueError) as err:
        raise AssertionError(
            f"JUDGE_PROMPT_TEMPLATE.format(role=..., question=..., answer=...) fails ({err!r}): "
            "escape literal braces as {{ and }}, and use no other placeholders"
        ) from err
    for value in ("ROLE-X", "QUESTION-Y", "ANSWER-Z"):
        check(value in filled, "a placeholder is not filled in by .format(): check its spelling")
    check("SCORE:" in template, "ask the judge to end with a line 'SCORE: <n>' so parse_score can read it")
    for digit in "0123":
        check(digit in template, f"describe every point of the 0-3 scale in the prompt (score {digit} is missing)")

    # property: a role, question and answer holding braces, placeholders or template words reach the judge verbatim
    def one_fill(values):
        role, question, answer = values
        filled = template.format(role=role, question=question, answer=answer)
        want = "".join(lit + {"role": role, "question": question, "answer": answer}.get(field, "")
                       for lit, field, _, _ in string.Formatter().parse(template))
        check(filled == want, "filled with a role, question and answer holding braces or placeholders, the prompt does "
                              "not show them verbatim: use plain {role}, {question} and {answer} fields, with no format "
                              "spec or conversion (no {answer:.100}, no {answer!r})")
        for value in values:
            check(value in filled, f"the value {value!r} does not appear verbatim in the filled prompt: a field with a "
                                   "format spec or conversion changes it")

    for_all(st.tuples(braces_text(), braces_text(), braces_text()), one_fill, name="JUDGE_PROMPT_TEMPLATE.format", examples=6)
    passed("test_judge_prompt_template")


def _parse(parse_score, text):
    """parse_score(text), where a crash on a valid reply becomes a failure that names the reply."""
    try:
        return call(parse_score, text, name="parse_score")
    except AssertionError:
        raise
    except Exception as err:
        raise AssertionError(f"parse_score({text!r}) raised {type(err).__name__}: {err} -- the reply holds a valid "
                             "score; read the number right after the last 'SCORE:'") from err


@exercise("1.1", "parse_score")
def test_parse_score(parse_score) -> None:
    cases = {
        "The model stays in character throughout.\nSCORE: 3": 3,
        "SCORE: 0": 0,
        "It says it is an AI but is somewhat ghostly.\nSCORE:2": 2,
        "Format reminder: SCORE: <n>. Here the answer helps but refuses the role.\nSCORE: 1": 1,
        "I first thought SCORE: 3, but on reflection the model broke character.\nSCORE: 2": 2,
        "SCORE: 1\n": 1,
        "SCORE: 2 -- the first 3 sentences are in role, the rest are not.": 2,
        "SCORE: 3\n\nThe ghost never breaks character.": 3,
    }
    for text, expected in cases.items():
        try:
            got = _parse(parse_score, text)
        except AssertionError as err:
            if text.startswith("SCORE: 3\n\n"):
                raise AssertionError(f"{err} -- the 'SCORE:' line need not be the reply's last line (judges add a "
                                     "remark after it): search the whole text, not only its final line") from err
            raise
        check(isinstance(got, int) and not isinstance(got, bool), f"parse_score should return an int, got {type(got).__name__}")
        if got != expected:
            hint = ""
            if "on reflection" in text or "reminder" in text:
                hint = " -- when 'SCORE:' appears more than once, the judge's final answer is the last one"
            elif "first 3 sentences" in text and got == 3:
                hint = " -- that is the last number in the text; the score is the number right after 'SCORE:'"
            raise AssertionError(f"parse_score({text!r}) returned {got}, expected {expected}{hint}")
    for bad in ("The answer is in role.", "SCORE: 7", "SCORE: -1", "SCORE: high", "SCORE: 12",
                "Draft: SCORE: 2\nFinal answer:\nSCORE: 5"):
        try:
            got = parse_score(bad)
        except NotImplementedError as err:
            raise NotImplementedYet("parse_score: not implemented yet") from err
        except ValueError:
            continue
        except Exception as err:
            raise AssertionError(f"parse_score({bad!r}) raised {type(err).__name__}: {err}; it should raise ValueError "
                                 "when there is no score in 0-3") from err
        hint = ""
        if bad == "SCORE: 12" and got == 1:
            hint = " -- you read only its first digit: read the whole number (\\d+), then check the range"
        elif "Draft" in bad and got == 2:
            hint = (" -- the judge's final answer (the last 'SCORE:') is 5, outside the scale: raise rather than fall "
                    "back on an earlier, draft score")
        raise AssertionError(
            f"parse_score({bad!r}) returned {got!r}; it should raise ValueError when there is no score in 0-3{hint}"
        )
    frac = _parse_or_error(parse_score, "The ghost stays in role, mostly.\nSCORE: 2.5")
    if frac is not ValueError:
        raise AssertionError(f"parse_score('...SCORE: 2.5') returned {frac!r}; the scale has whole numbers only, so it "
                             "should raise ValueError -- read the number with its decimal part (\\d+(?:\\.\\d+)?), "
                             "not the digits before the point")
    for_all(_replies(), lambda reply: _check_reply(parse_score, reply), name="parse_score", examples=10)
    passed("test_parse_score")


def _parse_or_error(parse_score, text):
    """parse_score(text), or ValueError (the class) when it raises one."""
    try:
        return parse_score(text)
    except NotImplementedError as err:
        raise NotImplementedYet("parse_score: not implemented yet") from err
    except ValueError:
        return ValueError
    except Exception as err:
        raise AssertionError(f"parse_score({text!r}) raised {type(err).__name__}: {err}; on a reply with no valid score "
                             "it should raise ValueError, and otherwise return the score") from err


_SUFFIX_WORDS = ["why", "the", "plan", "works", "?", "I", "think", "{", "}", "{}", "{answer}", "{role}", "%s", "$1", "--"]


def _replies():
    """(prefix, number, gap, suffix) of a judge's reply whose final 'SCORE:' is followed by `number`.

    The prefix may hold 'SCORE:' as a word, braces and placeholders; the suffix holds no 'SCORE:' and no digits."""
    number = st.one_of(st.integers(-2, 13).map(str), st.sampled_from(["2.5", "0.5", "1.75", "3.5"]))
    suffix = st.lists(st.sampled_from(_SUFFIX_WORDS), max_size=4).map(" ".join)
    return st.tuples(braces_text(min_size=0), number, st.sampled_from([" ", "\n", ". ", "\n\n"]), suffix)


# How the final score is introduced (every reply is tried with each), and how it is written.
_LEADS = ["\n", " ", "\nFinal verdict: "]
_MARKERS = ["SCORE:", "SCORE: ", "SCORE:  ", "SCORE:\t"]


def _expected_score(number: str):
    if "." in number or not 0 <= int(number) <= 3:
        return ValueError
    return int(number)


def _check_reply(parse_score, parts) -> None:
    prefix, drawn, gap, suffix = parts
    for number in dict.fromkeys([drawn, "0" if drawn == "3" else "3"]):  # the drawn number, and a valid one
        for lead in _LEADS:
            for marker in _MARKERS:
                _check_text(parse_score, f"{prefix}{lead}{marker}{number}{gap}{suffix}".strip(), number)


def _check_text(parse_score, text, number) -> None:
    want = _expected_score(number)
    got = _parse_or_error(parse_score, text)
    if want is ValueError:
        what = "a decimal score is not on the 0-3 scale" if "." in number else "that number is outside 0-3"
        check(got is ValueError, f"parse_score({text!r}) returned {got!r}: the last 'SCORE:' is followed by {number}, and "
                                 f"{what}, so it should raise ValueError")
        return
    if got is ValueError:
        raise AssertionError(
            f"parse_score({text!r}) raised ValueError, expected {want}: 'SCORE:' need not start a line, any whitespace "
            "may follow it (\\s*), and the text around it may hold braces, placeholders or the word 'SCORE:' with no "
            "number (don't .format() the reply; search it)")
    check(isinstance(got, int) and not isinstance(got, bool),
          f"parse_score({text!r}) should return an int, got {got!r}")
    if got != want:
        hint = ""
        if re.findall(r"\d+", text) and got == int(re.findall(r"\d+", text)[-1]):
            hint = " -- that is the last number in the text; the score is the number right after the last 'SCORE:'"
        raise AssertionError(f"parse_score({text!r}) returned {got!r}, expected {want}{hint}")


@exercise("1.1", "parse_score")
def test_parse_score_hidden(parse_score) -> None:
    """Grader-only cases: scores written in other ways judges write them."""
    cases = {
        "Mostly in role, with one aside about being a program.\nSCORE: 2.": 2,
        "SCORE:3 -- fully the oracle, riddles and all.": 3,
        "Draft: SCORE: 1\nFinal answer after rereading:\nSCORE: 0": 0,
    }
    for text, expected in cases.items():
        got = _parse(parse_score, text)
        check(got == expected, f"parse_score({text!r}) returned {got!r}, expected {expected}")
    # property: the same replies, with a full stop right after the number
    for_all(_replies().map(lambda p: (p[0], p[1], ".\n", p[3])),
            lambda reply: _check_reply(parse_score, reply), name="parse_score", examples=6)
    passed("test_parse_score_hidden")
