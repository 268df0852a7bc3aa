"""Exercise 3.3 — Scoring answers with a judge

Wrong implementations of `score_trait_response` and `score_coherence` that `test_score_trait_response` or
`test_score_coherence` must reject, each declared where it is defined with the phrase its failure message must
contain, and correct implementations written another way, which must pass.
"""

from __future__ import annotations

import re

from tests.catalogue import correct, mistake
from tests.catalogue.section3._shared import ref

ask_judge = ref.ask_judge  # the tests replace it with a fake judge


def _parse(reply):
    return ref.parse_judge_reply(reply)


def _reply(question, answer, template):
    return ask_judge(template.format(question=question, answer=answer))


@mistake("test_score_trait_response", "placeholder")
def score_fills_question_only(question, answer, eval_prompt_template):
    return _parse(ask_judge(eval_prompt_template.replace("{question}", question)))


@mistake("test_score_trait_response", "swapped")
def score_swapped(question, answer, eval_prompt_template):
    return _parse(ask_judge(eval_prompt_template.format(question=answer, answer=question)))


@mistake("test_score_trait_response", "refusal is not a score of 0")
def score_refusal_is_zero(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is not None and "refusal" in reply.lower():
        return 0
    return _parse(reply)


@mistake("test_score_trait_response", "outside 0-100")
def score_no_range_check(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"-?\d+", reply)
    return int(m.group()) if m else None


@mistake("test_score_trait_response", "keep the sign")
def score_unsigned_number(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


@mistake("test_score_trait_response", "first number")
def score_last_number(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    nums = re.findall(r"-?\d+", reply)
    value = int(nums[-1]) if nums else None
    return value if value is not None and 0 <= value <= 100 else None


@mistake("test_score_trait_response", "should return an int")
def score_returns_str(question, answer, eval_prompt_template):
    value = ref.score_trait_response.__globals__["parse_judge_reply"](
        ask_judge(eval_prompt_template.format(question=question, answer=answer)))
    return None if value is None else str(value)


@mistake("test_score_trait_response", "should return an int")
def score_returns_float(question, answer, eval_prompt_template):
    value = _parse(ask_judge(eval_prompt_template.format(question=question, answer=answer)))
    return None if value is None else float(value)


@mistake("test_score_trait_response", "failed call")
def score_crashes_on_failed_call(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer)).strip()
    return _parse(reply)


@mistake("test_score_trait_response", "did not call ask_judge")
def score_bypasses_ask_judge(question, answer, eval_prompt_template):
    verdict = ref.JUDGE.score(eval_prompt_template.format(question=question, answer=answer))
    return None if verdict.value is None else int(verdict.value)


@mistake("test_score_trait_response", "contains refusal: return none even when it also holds a number")
def score_number_before_refusal(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None:
        return None
    m = re.search(r"-?\d+", reply)
    if m:
        value = int(m.group())
        return value if 0 <= value <= 100 else None
    return None  # REFUSAL, or no number


@mistake("test_score_trait_response", "contains refusal")
def score_refusal_exact_match(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or reply.strip().upper() == "REFUSAL":
        return None
    m = re.search(r"-?\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


@mistake("test_score_trait_response", "the first number, 150, is outside 0-100")
def score_first_in_range(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    for m in re.finditer(r"-?\d+", reply):
        if 0 <= int(m.group()) <= 100:
            return int(m.group())
    return None


@mistake("test_score_trait_response", "first digit of a multi-digit number")
def score_single_digit(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"-?\d", reply)
    return int(m.group()) if m and 0 <= int(m.group()) <= 100 else None


@mistake("test_score_trait_response", "'72.6' reads as 72")
def score_rounds_decimal(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"-?\d+(\.\d+)?", reply)
    value = round(float(m.group())) if m else None
    return value if value is not None and 0 <= value <= 100 else None


@mistake("test_score_trait_response", "0 is a valid score")
def score_zero_is_missing(question, answer, eval_prompt_template):
    value = _parse(_reply(question, answer, eval_prompt_template))
    return value or None


@mistake("test_score_trait_response", "in any case (here 'refusal')")
def score_refusal_case_sensitive(question, answer, eval_prompt_template):
    """Looks for REFUSAL in capitals only: 'Refusal, so 0' reads as a score of 0."""
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or "REFUSAL" in reply:
        return None
    m = re.search(r"-?\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


@mistake("test_score_trait_response", "for an empty answer without asking the judge")
def score_empty_answer_is_zero(question, answer, eval_prompt_template):
    """Skips the judge for an empty answer and calls it 0 (no trait)."""
    if not answer.strip():
        return 0
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"\brefusal\b", reply, re.IGNORECASE):
        return None
    m = re.search(r"-?\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


@mistake("test_score_coherence", "template you were given")
def coherence_ignores_template(question, answer, template):
    from utils import data

    return _parse(ask_judge(data.load_coherence_prompt().format(question=question, answer=answer)))


@mistake("test_score_coherence", "refusal is not a score of 0")
def coherence_refusal_is_zero(question, answer, template):
    return score_refusal_is_zero(question, answer, template)


@mistake("test_score_coherence", "placeholder")
def coherence_fills_question_only(question, answer, template):
    return score_fills_question_only(question, answer, template)


@mistake("test_score_coherence", "contains refusal")
def coherence_number_before_refusal(question, answer, template):
    return score_number_before_refusal(question, answer, template)


@mistake("test_score_coherence", "in any case (here 'refusal')")
def coherence_refusal_case_sensitive(question, answer, template):
    return score_refusal_case_sensitive(question, answer, template)


@mistake("test_score_trait_response", "not str.replace one placeholder after the other")
@mistake("test_score_coherence", "not str.replace one placeholder after the other")
def score_with_replace(question, answer, eval_prompt_template):
    """Fills the template with str.replace, question first: a question holding '{answer}' gets the answer inside it."""
    prompt = eval_prompt_template.replace("{question}", question).replace("{answer}", answer)
    reply = ask_judge(prompt)
    if reply is None or re.search(r"\brefusal\b", reply, re.I):
        return None
    nums = re.findall(r"-?\d+", reply)
    if not nums:
        return None
    value = int(nums[0])
    return value if 0 <= value <= 100 else None


@mistake("test_score_trait_response", "whole word")
@mistake("test_score_coherence", "whole word")
def score_refusal_substring(question, answer, eval_prompt_template):
    """Looks for 'refusal' anywhere in the reply: 'no refusals' and 'nonrefusal' read as a refusal."""
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or "refusal" in reply.lower():
        return None
    nums = re.findall(r"-?\d+", reply)
    value = int(nums[0]) if nums else None
    return value if value is not None and 0 <= value <= 100 else None


@mistake("test_score_trait_response", "one template.format(question=..., answer=...) call")
def score_format_twice(question, answer, eval_prompt_template):
    """Fills one placeholder at a time with format, escaping the other: the inserted question meets format again."""
    half = eval_prompt_template.replace("{answer}", "{{answer}}").format(question=question)
    return _parse(ask_judge(half.format(answer=answer)))


@mistake("test_score_trait_response", "take the first number")
def score_word_number(question, answer, eval_prompt_template):
    """Reads the number only when it stands alone as a word: '72/100', '72%' or '72.6' give None."""
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"\brefusal\b", reply, re.I):
        return None
    for word in reply.replace(":", " ").split():
        if word.lstrip("-").isdigit():
            value = int(word)
            return value if 0 <= value <= 100 else None
    return None


# Correct, written another way: each must pass.
@correct("test_score_trait_response", "test_score_coherence")
def score_format_map(question, answer, eval_prompt_template):
    prompt = eval_prompt_template.format_map({"question": question, "answer": answer})
    reply = ask_judge(prompt)
    if reply is None or re.search(r"\brefusal\b", reply, flags=re.IGNORECASE):
        return None
    nums = re.findall(r"-?\d+", reply)
    if not nums:
        return None
    value = int(nums[0])
    return value if 0 <= value <= 100 else None


@correct("test_score_trait_response")
def score_try_int(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if not reply or re.search(r"\brefusal\b", reply, re.IGNORECASE):
        return None
    m = re.search(r"(-?)(\d+)", reply)
    try:
        value = int(m.group(1) + m.group(2))
    except (AttributeError, ValueError):
        return None
    return value if value in range(0, 101) else None


@correct("test_score_trait_response")
def score_scanned_by_hand(question, answer, eval_prompt_template):
    """No regular expression: the refusal check on the reply's words, the number scanned character by character."""
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or "refusal" in "".join(c if c.isalpha() else " " for c in reply.lower()).split():
        return None
    for i, c in enumerate(reply):
        if c.isdigit():
            j = i
            while j < len(reply) and reply[j].isdigit():
                j += 1
            value = -int(reply[i:j]) if i > 0 and reply[i - 1] == "-" else int(reply[i:j])
            return value if 0 <= value <= 100 else None
    return None


@correct("test_score_coherence")
def coherence_via_score_trait(question, answer, template):
    """score_coherence written as a call of the student's own score_trait_response (here score_try_int)."""
    return score_try_int(question, answer, template)
