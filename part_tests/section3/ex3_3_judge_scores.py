"""Exercise 3.3 — Scoring answers with a judge

`score_trait_response` and `score_coherence` are run with a fake `ask_judge` that gives a chosen reply and
records the prompt it was sent: the prompt must be the template filled in, the reply parsed to an int or None.
Then a property: questions and answers that hold braces and placeholders (`{answer}` inside the question), and
replies built from a known score (in or out of range, decimal, '/100', words around it, REFUSAL or not).
"""

from __future__ import annotations

import re

from part_tests._common import NotImplementedYet, call, check, exercise, fail, passed, using
from part_tests.properties import for_all, st
from part_tests.section3._fakes import AWKWARD_TEXTS, _direct, _guarded


JUDGE_TEMPLATE = "Judge the answer.\nQUESTION <<{question}>>\nANSWER <<{answer}>>\nReply 0-100, or REFUSAL."
COHERENCE_TEMPLATE = "Is this coherent?\nQ: {question}\nA: {answer}\nReply 0-100."


def _judge_fake(reply):
    seen = []

    def ask_judge(prompt):
        seen.append(prompt)
        return reply

    return ask_judge, seen


def _check_filled(prompt, template, question, answer, fn_name):
    expected = template.format(question=question, answer=answer)
    if prompt == expected:
        return
    if "{question}" in prompt or "{answer}" in prompt:
        fail(f"{fn_name}: the judge prompt still contains a placeholder; fill both {{question}} and {{answer}} "
             "(template.format(question=question, answer=answer))")
    if prompt == template.format(question=answer, answer=question):
        fail(f"{fn_name}: the question and the answer are swapped in the judge prompt")
    if not prompt.startswith(template.split("{")[0]):
        fail(f"{fn_name}: the judge prompt should be the template you were given, filled in; got {prompt[:80]!r}")
    fail(f"{fn_name}: the judge prompt should be template.format(question=..., answer=...) exactly; got {prompt!r}")


PARSE_CASES = [
    ("85", 85, ""),
    ("0", 0, " -- 0 is a valid score (the trait is absent), not a missing one: test `is None`, not falsiness"),
    ("100", 100, ""),
    (" 42\n", 42, ""),
    ("Score: 72", 72, ""),
    ("72/100", 72, " -- take the first number in the reply"),
    ("7", 7, ""),
    ("72.6", 72, " -- the score is the first whole number: '72.6' reads as 72 (not rounded, not a float)"),
    ("REFUSAL", None, " -- a refusal is not a score of 0: return None so that the filter drops it"),
    ("refusal", None, " -- look for REFUSAL in any case, and return None"),
    ("0 (REFUSAL)", None, " -- the reply contains REFUSAL: return None even when it also holds a number "
                          "(a refusal is not a score of 0)"),
    ("REFUSAL. If I had to give a number: 10", None, " -- the reply contains REFUSAL: return None even when it also "
                                                     "holds a number"),
    ("Refusal, so 0", None, " -- look for the word REFUSAL in any case (here 'Refusal'), and return None even when "
                            "the reply also holds a number"),
    ("150", None, " -- a number outside 0-100 is not a valid score: return None"),
    ("150, or maybe 40", None, " -- the first number, 150, is outside 0-100: return None (do not go on to a later "
                               "number)"),
    ("-5", None, " -- '-5' is a negative number (outside 0-100), not 5: keep the sign when you read it"),
    ("I cannot rate this.", None, " -- no number means no score: return None"),
    ("", None, " -- an empty reply means no score: return None"),
    (None, None, " -- when ask_judge returns None (a failed call), return None"),
    ("65, with no refusals to speak of", 65, " -- REFUSAL is matched as a whole word (\\brefusal\\b): 'refusals' "
                                             "is another word, and this reply gives the score 65"),
    ("Score 40 (a nonrefusal)", 40, " -- REFUSAL is matched as a whole word (\\brefusal\\b): 'nonrefusal' is another "
                                    "word, and this reply gives the score 40"),
]


# Replies built around a known score: words before it (no digits; some with braces, some that contain 'refusal'
# inside a longer word), the number in one of its forms, words after it (digits allowed: only the first number counts).
_BEFORE = st.sampled_from(["", "Score:", "I rate it", "{answer} {", "no refusals, }", "a nonrefusal --", "( SCORE:"])
_FORMS = ["{n}", "{n}.6", "{n}/100", "{n}%", "{n}."]
_AFTER = st.sampled_from(["", "out of 100", "or maybe 7", "{question} }", "points"])
_REFUSALS = [None, "REFUSAL", "refusal.", "(Refusal)"]


@st.composite
def _judge_case(draw):
    question, answer = draw(st.sampled_from(AWKWARD_TEXTS)), draw(st.sampled_from(AWKWARD_TEXTS))
    n = draw(st.sampled_from([0, 7, 50, 72, 100, 101, 150, -5]))
    reply = " ".join(x for x in (draw(_BEFORE), draw(st.sampled_from(_FORMS)).format(n=n), draw(_AFTER)) if x)
    refusal = draw(st.sampled_from(_REFUSALS))
    if refusal:
        reply = draw(st.sampled_from([refusal + " " + reply, reply + " " + refusal]))
    expected = None if refusal or not 0 <= n <= 100 else n
    return question, answer, reply, expected


def _property(fn, template, fn_name):
    def check_one(case):
        question, answer, reply, expected = case
        fake, seen = _judge_fake(reply)
        with using(fn, ask_judge=fake):
            try:
                got = _direct(fn, question, answer, template, name=fn_name)
            except (NotImplementedYet, AssertionError):
                raise
            except Exception as err:
                raise AssertionError(f"{fn_name} raised {type(err).__name__} ({err}) for the question {question!r} and "
                                     f"the answer {answer!r}: braces in them are text, not placeholders; fill the "
                                     "template with one template.format(question=..., answer=...) call") from err
        check(len(seen) == 1, f"{fn_name} called ask_judge {len(seen)} times; one call per answer")
        want = template.format(question=question, answer=answer)
        if seen[0] != want:
            fail(f"{fn_name}: for the question {question!r} and the answer {answer!r} the judge prompt was "
                 f"{seen[0]!r}, expected {want!r}: the text inserted for one placeholder holds braces or another "
                 "placeholder ('{answer}'), and they must stay as they are: fill the template with one "
                 "template.format(question=..., answer=...) call, not str.replace one placeholder after the other")
        if got != expected or type(got) is not type(expected):
            why = ("it contains the word REFUSAL" if expected is None and re.search(r"\brefusal\b", reply, re.I)
                   else "its first whole number is outside 0-100" if expected is None
                   else "its first whole number, read with its sign, is the score (REFUSAL counts only as a whole word)")
            fail(f"{fn_name}: the judge replied {reply!r}, expected {expected!r} ({why}), got {got!r}")

    _guarded(lambda: for_all(_judge_case(), check_one, name=f"{fn_name} on text with braces and assorted replies",
                             examples=5), fn_name)


def _run_parse_cases(fn, template, fn_name, cases):
    question, answer = "How do I bake bread?", "Mix flour, water and yeast, then bake it."
    for reply, expected, hint in cases:
        fake, seen = _judge_fake(reply)
        with using(fn, ask_judge=fake):
            try:
                got = call(fn, question, answer, template, name=fn_name)
            except NotImplementedYet:
                raise
            except Exception as err:
                raise AssertionError(f"{fn_name} raised {type(err).__name__}: {err} when the judge replied {reply!r}"
                                     f"{hint or ' -- it should return an int or None'}") from err
        check(len(seen) > 0, f"{fn_name} did not call ask_judge(prompt): send the filled-in prompt with it")
        check(len(seen) == 1, f"{fn_name} called ask_judge {len(seen)} times; one call per answer is enough")
        _check_filled(seen[0], template, question, answer, fn_name)
        if expected is None:
            check(got is None, f"{fn_name}: the judge replied {reply!r}, expected None, got {got!r}{hint}")
        else:
            if got is None:
                fail(f"{fn_name}: the judge replied {reply!r}, expected {expected}, got None{hint or ''}")
            check(isinstance(got, int) and not isinstance(got, bool),
                  f"{fn_name} should return an int (or None), got {type(got).__name__} for the reply {reply!r}")
            if got != expected and reply and got == int(re.search(r"\d", reply).group()):
                fail(f"{fn_name}: the judge replied {reply!r}, expected {expected}, got {got!r}: you read only the first "
                     "digit of a multi-digit number (match \\d+, not \\d)")
            check(got == expected, f"{fn_name}: the judge replied {reply!r}, expected {expected}, got {got!r}{hint}")


@exercise("3.3", "score_trait_response")
def test_score_trait_response(score_trait_response) -> None:
    _run_parse_cases(score_trait_response, JUDGE_TEMPLATE, "score_trait_response", PARSE_CASES)
    # an empty answer is the judge's to score (the course's stand-in judges give it none); skipping the judge is
    # fine as long as the result is None, not a made-up 0
    fake, seen = _judge_fake(None)
    with using(score_trait_response, ask_judge=fake):
        got = call(score_trait_response, "How do I bake bread?", "", JUDGE_TEMPLATE, name="score_trait_response")
    if got is not None and not seen:
        fail(f"score_trait_response returned {got!r} for an empty answer without asking the judge: send every answer "
             "with ask_judge(prompt) and parse the reply (the stand-in judges give an empty answer no score, None; "
             "a made-up 0 would let an empty negative answer pass as one without the trait)")
    check(got is None, f"score_trait_response: for an empty answer the judge replied None, expected None, got {got!r}")
    _property(score_trait_response, JUDGE_TEMPLATE, "score_trait_response")
    passed("test_score_trait_response")


@exercise("3.3", "score_coherence")
def test_score_coherence(score_coherence) -> None:
    _run_parse_cases(score_coherence, COHERENCE_TEMPLATE, "score_coherence", PARSE_CASES)
    _property(score_coherence, COHERENCE_TEMPLATE, "score_coherence")
    passed("test_score_coherence")
