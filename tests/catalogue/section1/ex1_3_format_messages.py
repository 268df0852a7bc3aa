"""Exercise 1.3 — The exact tokens of a response

Wrong format_messages, and format_messages written another way.
"""

from __future__ import annotations

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import factory, ref


def _merged(messages, tokenizer, merge=True, keep_system=False):
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system" and not keep_system:
        system = msgs.pop(0)["content"]
        try:
            tokenizer.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
            msgs.insert(0, {"role": "system", "content": system})
        except Exception:
            if merge:
                msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
    return msgs


@mistake("test_format_messages", "merge the system prompt")
def fmt_system_not_merged(messages, tokenizer):
    return ref.format_messages([dict(m) for m in messages], tokenizer) if messages[0]["role"] != "system" else \
        _fmt_from(_merged(messages, tokenizer, keep_system=True), tokenizer)


@mistake("test_format_messages", "system prompt is missing")
def fmt_system_dropped(messages, tokenizer):
    return ref.format_messages([m for m in messages if m["role"] != "system"], tokenizer)


@mistake("test_format_messages", "double BOS")
def fmt_double_bos(messages, tokenizer):
    text, (s, e) = ref.format_messages(messages, tokenizer)
    if tokenizer.bos_token and text.startswith(tokenizer.bos_token):
        return tokenizer.bos_token + text, (s + 1, e + 1)
    return text, (s, e)


@mistake("test_format_messages", "off by one")
def fmt_tokenized_with_special_tokens(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    start = len(tokenizer(prefix)["input_ids"])  # add_special_tokens=True: a second <bos> on Gemma
    n_content = len(tokenizer(msgs[-1]["content"].strip(), add_special_tokens=False)["input_ids"])
    return full, (start, start + n_content)


def _fmt_from(msgs, tokenizer):
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    return full, (start, len(tokenizer(full, add_special_tokens=False)["input_ids"]) - 2)


@mistake("test_format_messages", "chat marker")
def fmt_end_includes_marker(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    full, (start, _) = _fmt_from(msgs, tokenizer)
    return full, (start, len(tokenizer(full, add_special_tokens=False)["input_ids"]) - 1)


@mistake("test_format_messages", "guess")
def fmt_plus_one_guess(messages, tokenizer):
    """The prefix *without* the generation prompt, plus one token for the assistant header."""
    msgs = _merged(messages, tokenizer)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False)
    return full, (len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) + 1, len(ids) - 2)


@mistake("test_format_messages", "earlier copy")
def fmt_first_occurrence(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    c0 = full.find(msgs[-1]["content"].strip())
    c1 = c0 + len(msgs[-1]["content"].strip())
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c1 and e > s]
    return full, (inside[0], inside[-1] + 1)


@mistake("test_format_messages", "modified the messages")
def fmt_modifies_input(messages, tokenizer):
    if messages[0]["role"] == "system" and len(messages) > 1:
        system = messages.pop(0)["content"]
        messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
    return ref.format_messages(messages, tokenizer)


@mistake("test_format_messages_input_checks", "should raise ValueError")
@correct("test_format_messages")
def fmt_no_check_last_role(messages, tokenizer):
    if messages[-1]["role"] != "assistant":
        return tokenizer.apply_chat_template(messages, tokenize=False), (0, 1)
    return ref.format_messages(messages, tokenizer)


def _fmt_span(full, prefix_len, content, tokenizer):
    c0 = full.find(content, prefix_len)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c0 + len(content) and e > s]
    return inside[0], inside[-1] + 1


@mistake("test_format_messages", "header")
def fmt_header_search(messages, tokenizer):
    """Finds the last assistant header by its text and starts the span right after it."""
    msgs = _merged(messages, tokenizer)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    header = "<start_of_turn>model\n" if "<start_of_turn>" in full else "<|im_start|>assistant\n"
    c0 = full.rindex(header) + len(header)
    content = msgs[-1]["content"].strip()
    c1 = full.index(content, c0) + len(content)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c1 and e > s]
    return full, (inside[0], inside[-1] + 1)


@mistake("test_format_messages", "off by one")
def fmt_end_minus_two(messages, tokenizer):
    """Start from the prefix's length, end two tokens before the end (end-of-turn marker + newline)."""
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return full, (len(tokenizer(prefix, add_special_tokens=False)["input_ids"]), len(ids) - 2)


@mistake("test_format_messages", "merge only when the template has no system role")
def fmt_always_merge(messages, tokenizer):
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
    return ref.format_messages(msgs, tokenizer)


@factory
def _fmt_merge_with(sep, into="first"):
    def wrong(messages, tokenizer):
        msgs = [dict(m) for m in messages]
        if msgs[0]["role"] == "system":
            try:
                tokenizer.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
            except Exception:
                system = msgs.pop(0)["content"]
                users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
                i = users[0] if into == "first" else users[-1]
                msgs[i]["content"] = f"{system}{sep}{msgs[i]['content']}"
        return ref.format_messages(msgs, tokenizer)
    return wrong


@mistake("test_format_messages", "stripped content")
def fmt_no_strip_fallback(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    c0 = full.find(msgs[-1]["content"], len(prefix))
    if c0 < 0:
        raise ValueError("response not found in the rendered chat")
    return full, _fmt_span(full, len(prefix), msgs[-1]["content"], tokenizer)


@mistake("test_format_messages", "generation prompt does not have")
def fmt_content_after_prefix(messages, tokenizer):
    """The response starts where the generation prompt ends (not so when only the final turn has a thinking block)."""
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    c0 = full.find(content, len(prefix))
    if c0 < 0:
        content = content.strip()
        c0 = full.find(content, len(prefix))
    c0, c1 = len(prefix), c0 + len(content)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c1 and e > s]
    return full, (inside[0], inside[-1] + 1)


@mistake("test_format_messages", "stripped content")
def fmt_find_unchecked(messages, tokenizer):
    """full_prompt.find(content) without checking for -1 (the template trimmed the content)."""
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    c0 = full.find(content, len(prefix))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c0 + len(content) and e > s]
    return full, (inside[0], inside[-1] + 1)


@mistake("test_format_messages_input_checks", "got AssertionError")
def fmt_assert_last_role(messages, tokenizer):
    assert messages[-1]["role"] == "assistant", "the last message must be the assistant's"
    return ref.format_messages(messages, tokenizer)


@correct("test_format_messages", "test_format_messages_input_checks")
def alt_fmt_rfind(messages, tokenizer):
    """The last occurrence of the response text in the full prompt is the last message's."""
    msgs = [dict(m) for m in messages]
    if msgs[-1]["role"] != "assistant":
        raise ValueError("last message must be the assistant's")
    if msgs[0]["role"] == "system":
        try:
            tokenizer.apply_chat_template(msgs, tokenize=False)
        except Exception:
            system = msgs.pop(0)["content"]
            msgs[0]["content"] = system + "\n\n" + msgs[0]["content"]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    c0 = full.rfind(content)
    if c0 < 0:
        content = content.strip()
        c0 = full.rfind(content)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c0 + len(content) and e > s]
    return full, (inside[0], inside[-1] + 1)


@correct("test_format_messages", "test_format_messages_input_checks")
def alt_fmt_searchsorted(messages, tokenizer):
    """Binary search of the content's characters in the token offsets (the span comes back as numpy ints)."""
    import numpy as np

    msgs = _merged(messages, tokenizer)
    if msgs[-1]["role"] != "assistant":
        raise ValueError("last message must be the assistant's")
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    if full.find(content, len(prefix)) < 0:
        content = content.strip()
    c0 = full.find(content, len(prefix))
    offsets = np.array(tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    start = np.searchsorted(offsets[:, 0], c0, side="left")
    end = np.searchsorted(offsets[:, 1], c0 + len(content), side="right")
    return full, (start, end)


@correct("test_format_messages", "test_format_messages_input_checks")
def alt_fmt_token_counts(messages, tokenizer):
    """Token counts instead of character offsets: the prefix's tokens, then the content's."""
    msgs = _merged(messages, tokenizer)
    if msgs[-1]["role"] != "assistant":
        raise ValueError("last message must be the assistant's")
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"] if full.find(msgs[-1]["content"], len(prefix)) >= 0 else msgs[-1]["content"].strip()
    c0 = full.find(content, len(prefix))  # not len(prefix): a template may put a thinking block before the content
    start = len(tokenizer(full[:c0], add_special_tokens=False)["input_ids"])
    return full, (start, start + len(tokenizer(content, add_special_tokens=False)["input_ids"]))


# Made by the factories above: each declared on the line that makes it.
mistake("test_format_messages", "separates them")(_fmt_merge_with("\n"))
mistake("test_format_messages", "separates them")(_fmt_merge_with(" "))
mistake("test_format_messages", "*first* user message")(_fmt_merge_with("\n\n", into="last"))


def _fmt_locate(messages, tokenizer, locate, merge=None):
    """The course's approach, with the content located by `locate(full, content, after)` and the system prompt
    merged by `merge(system, user)` where the template has no system role."""
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        try:
            tokenizer.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
            msgs.insert(0, {"role": "system", "content": system})
        except Exception:
            msgs[0]["content"] = (merge or (lambda s, u: f"{s}\n\n{u}"))(system, msgs[0]["content"])
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    c0 = locate(full, content, len(prefix))
    if c0 < 0:
        content = content.strip()
        c0 = locate(full, content, len(prefix))
    if c0 < 0:
        raise ValueError("response not found")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c0 + len(content) and e > s]
    return full, (inside[0], inside[-1] + 1)


def _regex_locate(full, content, after):
    import re

    m = re.compile(content).search(full, after)  # the reply used as a pattern: '?', '$', '{', '\' mean something
    return m.start() if m else -1


@mistake("test_format_messages", "re.escape")
def fmt_regex_search(messages, tokenizer):
    """Finds the reply with re.search(content, full_prompt): a reply holding '?', '$1' or a backslash breaks it."""
    return _fmt_locate(messages, tokenizer, _regex_locate)


def _merge_by_replace(system, user):
    return "{system}\n\n{question}".replace("{system}", system).replace("{question}", user)


@mistake("test_format_messages", "str.replace")
def fmt_merge_by_replace(messages, tokenizer):
    """Merges with a template filled by chained str.replace: a system prompt holding '{question}' gets the question."""
    return _fmt_locate(messages, tokenizer, lambda full, content, after: full.find(content, after), _merge_by_replace)


@correct("test_format_messages", "test_format_messages_input_checks")
def alt_fmt_escaped_regex(messages, tokenizer):
    """The reply found with a regular expression, escaped."""
    import re

    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's")

    def locate(full, content, after):
        m = re.compile(re.escape(content)).search(full, after)
        return m.start() if m else -1

    return _fmt_locate(messages, tokenizer, locate)
