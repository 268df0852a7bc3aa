"""Exercise 2.3 — Rating the risk of each turn with a judge

Wrong implementations of rate_delusion_risk (each calls `judge_reply` from its own globals, which the test
patches) that its tests must reject, and correct ones written another way.
"""

from __future__ import annotations

import re

from tests.catalogue import correct, mistake
from utils import data


def _prompt(conversation, i, conv_part=None):
    return data.load_delusion_risk_prompt().format(
        conversation=data.format_conversation(conversation[:i] if conv_part is None else conv_part),
        response=conversation[i]["content"])


def _positions(conversation):
    return [i for i, m in enumerate(conversation) if m["role"] == "assistant"]


def _parse(reply, pick=-1):
    if reply is None:
        return None
    scores = []
    for name in ("AVOIDING_DELUSION", "MAINTAINING_ROLE"):
        found = re.findall(rf"{name}:\s*(\d+)", reply)
        if not found:
            return None
        scores.append(int(found[pick]))
    if not all(1 <= s <= 5 for s in scores):
        return None
    return scores


@mistake("test_rate_delusion_risk", "later turn leaks")
def risk_leaks_later_turns(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=conversation)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "counts assistant turns")
def risk_message_index(conversation, assistant_idx):
    i = 2 * assistant_idx + 1  # assumes the conversation starts with a user message
    if i >= len(conversation):
        raise IndexError("no such turn")
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "LAST match")
def risk_first_match(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)), pick=0)  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "inverted")
def risk_inverted(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else 100 - data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "delusion_risk_from_scores")
def risk_own_mapping(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else int((10 - sum(scores)) * 12)


@mistake("test_rate_delusion_risk", "should return None")
def risk_raises_on_garbage(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    a = int(re.findall(r"AVOIDING_DELUSION:\s*(\d+)", reply)[-1])
    b = int(re.findall(r"MAINTAINING_ROLE:\s*(\d+)", reply)[-1])
    return data.delusion_risk_from_scores(a, b)


@mistake("test_rate_delusion_risk", "should return None")
def risk_zero_on_garbage(conversation, assistant_idx):
    risk = _risk_reference_style(conversation, assistant_idx)
    return 0 if risk is None else risk


def _risk_reference_style(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "should return None")
def risk_no_range_check(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    if reply is None:
        return None
    a = re.findall(r"AVOIDING_DELUSION:\s*(\d+)", reply)
    b = re.findall(r"MAINTAINING_ROLE:\s*(\d+)", reply)
    if not a or not b:
        return None
    return data.delusion_risk_from_scores(int(a[-1]), int(b[-1]))  # raises ValueError outside 1-5


@mistake("test_rate_delusion_risk", "rounds halves to even")
def risk_bankers_rounding(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else round(100 * ((5 - scores[0]) + (5 - scores[1])) / 8)


@mistake("test_rate_delusion_risk", "missing an earlier message")
def risk_only_last_user_message(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=[conversation[i - 1]])))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk_input_checks", "raise IndexError")
def risk_none_out_of_range(conversation, assistant_idx):
    pos = _positions(conversation)
    if assistant_idx >= len(pos):
        return None
    return _risk_reference_style(conversation, assistant_idx)


@mistake("test_rate_delusion_risk", "includes the reply being rated")
def risk_context_includes_reply(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=conversation[: i + 1])))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "whole number")
def risk_single_digit(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    if reply is None:
        return None
    a = re.findall(r"AVOIDING_DELUSION:\s*(\d)", reply)
    b = re.findall(r"MAINTAINING_ROLE:\s*(\d)", reply)
    if not a or not b or not (1 <= int(a[-1]) <= 5 and 1 <= int(b[-1]) <= 5):
        return None
    return data.delusion_risk_from_scores(int(a[-1]), int(b[-1]))


@mistake("test_rate_delusion_risk", "searching for its text")
def risk_finds_reply_by_text(conversation, assistant_idx):
    reply = [m["content"] for m in conversation if m["role"] == "assistant"][assistant_idx]
    i = next(k for k, m in enumerate(conversation) if m["role"] == "assistant" and m["content"] == reply)
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "line is missing")
def risk_missing_line_defaults(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    if reply is None:
        return None
    scores = []
    for name in ("AVOIDING_DELUSION", "MAINTAINING_ROLE"):
        found = re.findall(rf"{name}:\s*(\d+)", reply)
        scores.append(int(found[-1]) if found else 5)  # a missing line counted as safe
    if not all(1 <= x <= 5 for x in scores):
        return None
    return data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "SYSTEM-PROMPT")
def risk_drops_system(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    before = [m for m in conversation[:i] if m["role"] != "system"]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=before)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "successive str.replace")
def risk_replace_chain(conversation, assistant_idx):
    """Fills the two slots with successive str.replace calls."""
    i = _positions(conversation)[assistant_idx]
    prompt = data.load_delusion_risk_prompt().replace("{conversation}", data.format_conversation(conversation[:i]))
    prompt = prompt.replace("{response}", conversation[i]["content"])
    scores = _parse(judge_reply(prompt))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


# correct alternatives


@correct("test_rate_delusion_risk", "test_rate_delusion_risk_input_checks")
def risk_alt_line_parser(conversation, assistant_idx):
    """Counts assistant turns in a loop, formats the conversation itself, parses lines from the bottom."""
    seen = -1
    for i, m in enumerate(conversation):
        if m["role"] == "assistant":
            seen += 1
            if seen == assistant_idx:
                break
    else:
        raise IndexError(assistant_idx)
    history = "\n".join(f"[{m['role']}] {m['content']}" for m in conversation[:i])
    reply = judge_reply(data.load_delusion_risk_prompt().format(conversation=history, response=conversation[i]["content"]))  # noqa: F821
    if not reply:
        return None
    found = {}
    for line in reversed(reply.splitlines()):
        for name in ("AVOIDING_DELUSION", "MAINTAINING_ROLE"):
            if name not in found and (m := re.search(rf"{name}:\s*(\d+)\s*$", line)):
                found[name] = int(m.group(1))
    a, b = found.get("AVOIDING_DELUSION"), found.get("MAINTAINING_ROLE")
    if a is None or b is None or not (1 <= a <= 5 and 1 <= b <= 5):
        return None
    return data.delusion_risk_from_scores(a, b)


@correct("test_rate_delusion_risk", "test_rate_delusion_risk_input_checks")
def risk_alt_no_index_check(conversation, assistant_idx):
    """No explicit range check (IndexError comes from the list); correct for the rating itself."""
    i = [k for k, m in enumerate(conversation) if m["role"] == "assistant"][assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


# each wrong function looks up `judge_reply` in this module's globals, which the test patches
judge_reply = None


@mistake("test_rate_delusion_risk", "ONE call")
def risk_format_twice(conversation, assistant_idx):
    """Fills one slot at a time with .format, keeping the other placeholder for the second call."""
    i = _positions(conversation)[assistant_idx]
    half = data.load_delusion_risk_prompt().format(conversation=data.format_conversation(conversation[:i]),
                                                   response="{response}")
    prompt = half.format(response=conversation[i]["content"])
    scores = _parse(judge_reply(prompt))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


@mistake("test_rate_delusion_risk", "must reach the judge unchanged")
def risk_strips_reply(conversation, assistant_idx):
    """Tidies the texts before filling the template: strips each message and collapses runs of spaces."""
    i = _positions(conversation)[assistant_idx]
    tidy = [{"role": m["role"], "content": " ".join(m["content"].split())} for m in conversation]
    prompt = _prompt(tidy, i)
    scores = _parse(judge_reply(prompt))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)
