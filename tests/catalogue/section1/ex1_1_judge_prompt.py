"""Exercise 1.1 — A role-play judge

Wrong JUDGE_PROMPT_TEMPLATEs and parse_scores, and parse_scores written another way.
"""

from __future__ import annotations

import re

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import ref


@mistake("test_parse_score_hidden", "expected 0")
@mistake("test_parse_score", "last one")
def parse_score_first_match(text):
    m = re.search(r"SCORE:\s*(\d+)", text)
    if not m:
        raise ValueError("no score")
    return int(m.group(1))


@mistake("test_parse_score", "raise ValueError")
def parse_score_no_range_check(text):
    return int(re.findall(r"SCORE:\s*(-?\d+)", text)[-1]) if "SCORE" in text else ref.parse_score(text)


@mistake("test_parse_score_hidden", "expected 2")
@mistake("test_parse_score", "should return an int")
def parse_score_returns_str(text):
    return str(ref.parse_score(text))


@mistake("test_parse_score", "raise ValueError")
def parse_score_returns_none(text):
    try:
        return ref.parse_score(text)
    except ValueError:
        return None


@mistake("test_parse_score", "first digit")
def parse_score_first_digit(text):
    """Reads one digit after the last SCORE: ('SCORE: 12' becomes 1)."""
    found = re.findall(r"SCORE:\s*(\d)", text)
    if not found or not 0 <= int(found[-1]) <= 3:
        raise ValueError("no score")
    return int(found[-1])


@mistake("test_parse_score", "last number in the text")
def parse_score_last_number(text):
    """The last number anywhere in the reply, once it has a SCORE: line."""
    numbers = re.findall(r"-?\d+", text)
    if "SCORE:" not in text or not numbers or not 0 <= int(numbers[-1]) <= 3:
        raise ValueError("no score")
    return int(numbers[-1])


@mistake("test_parse_score", "right after the last 'SCORE:'")
def parse_score_split_rest(text):
    """int() of everything after the last SCORE: (crashes on text after the number)."""
    if "SCORE:" not in text:
        raise ValueError("no score")
    score = int(text.rsplit("SCORE:", 1)[1].strip())
    if not 0 <= score <= 3:
        raise ValueError("out of range")
    return score


@mistake("test_parse_score", "not only its final line")
def parse_score_last_line(text):
    """Reads only the reply's final line (misses a SCORE: line followed by a remark)."""
    lines = text.strip().splitlines()
    found = re.findall(r"SCORE:\s*(\d+)", lines[-1]) if lines else []
    if not found or not 0 <= int(found[-1]) <= 3:
        raise ValueError("no score")
    return int(found[-1])


@mistake("test_parse_score", "draft score")
def parse_score_last_valid(text):
    """The last SCORE: whose number is in 0-3, skipping an invalid final answer."""
    for found in reversed(re.findall(r"SCORE:\s*(\d+)", text)):
        if 0 <= int(found) <= 3:
            return int(found)
    raise ValueError("no score")


@correct("test_parse_score", "test_parse_score_hidden")
def parse_score_ignore_case(text):
    matches = re.findall(r"score:\s*(-?[\d.]*\d)", text, flags=re.I)
    if not matches or not matches[-1].lstrip("-").isdigit() or not 0 <= int(matches[-1]) <= 3:
        raise ValueError(f"no valid score in {text!r}")
    return int(matches[-1])


@correct("test_parse_score", "test_parse_score_hidden")
def parse_score_rfind(text):
    i = text.rfind("SCORE:")
    m = re.match(r"\s*(-?\d+)(?!\.\d)", text[i + 6:]) if i >= 0 else None
    if m is None:
        raise ValueError("no score")
    score = int(m.group(1))
    if score not in (0, 1, 2, 3):
        raise ValueError("out of range")
    return score


# Wrong templates: strings, so declared with the call form.
mistake("test_judge_prompt_template", "SCORE:")(
    "Rate how well the model played {role}. Question: {question}. Answer: {answer}.")
mistake("test_judge_prompt_template", "escape literal braces")(
    "Judge {role} answering {question}: {answer}. End with SCORE: <n> on a 0-3 scale (0 refusal, 1 helps out of role, "
    "2 AI with traits, 3 in role). Example: {\"score\": 3}")
mistake("test_judge_prompt_template", "{answer}")("Judge {role} answering {question}. End with SCORE: <n>, 0 to 3.")
mistake("test_judge_prompt_template", "score 1 is missing")(
    "Rate how fully the model played {role} when asked {question}; its answer: {answer}. From 0 (refuses) to 3 "
    "(fully in role). Finish with SCORE: <n>.")


@correct("test_parse_score", "test_parse_score_hidden")
def parse_score_float_then_check(text):
    """Reads the number as a float and accepts only a whole one in 0-3."""
    found = re.findall(r"SCORE:\s*(-?\d+(?:\.\d+)?)", text)
    if not found:
        raise ValueError("no score")
    value = float(found[-1])
    if not value.is_integer() or value not in (0, 1, 2, 3):
        raise ValueError("not a score on the 0-3 scale")
    return int(value)


@mistake("test_parse_score", "decimal part")
def parse_score_digits_before_point(text):
    """The hint's regex as it stands: 'SCORE: 2.5' reads as 2."""
    found = re.findall(r"SCORE:\s*(\d+)", text)
    if not found or not 0 <= int(found[-1]) <= 3:
        raise ValueError("no score")
    return int(found[-1])


@mistake("test_parse_score", "whole numbers only")
def parse_score_rounds(text):
    """Reads a float and rounds it: 'SCORE: 2.5' becomes 2, 'SCORE: 3.5' becomes 4 (then raises)."""
    found = re.findall(r"SCORE:\s*(-?\d+(?:\.\d+)?)", text)
    if not found:
        raise ValueError("no score")
    score = round(float(found[-1]))
    if not 0 <= score <= 3:
        raise ValueError("out of range")
    return score


@mistake("test_parse_score", "should return an int")
def parse_score_float(text):
    """Returns the number as a float (2.0), and 2.5 as 2.5."""
    found = re.findall(r"SCORE:\s*(-?\d+(?:\.\d+)?)", text)
    if not found or not 0 <= float(found[-1]) <= 3:
        raise ValueError("no score")
    return float(found[-1])


@mistake("test_parse_score", "need not start a line")
def parse_score_line_start(text):
    """Only a 'SCORE:' that opens a line counts ('Final verdict: SCORE: 2' is missed)."""
    found = re.findall(r"^SCORE:\s*(-?\d+(?:\.\d+)?)", text, flags=re.M)
    if not found or "." in found[-1] or not 0 <= int(found[-1]) <= 3:
        raise ValueError("no score")
    return int(found[-1])


@mistake("test_parse_score", "any whitespace")
def parse_score_one_optional_space(text):
    """At most one space after 'SCORE:' ('SCORE:  2', two spaces, is missed)."""
    found = re.findall(r"SCORE: ?(-?\d+(?:\.\d+)?)", text)
    if not found or "." in found[-1] or not 0 <= int(found[-1]) <= 3:
        raise ValueError("no score")
    return int(found[-1])
