"""Exercise 1.3 — The exact tokens of a response

Tests of format_messages on several chat templates (and its input checks).
"""

from __future__ import annotations

import copy
import functools
import numbers

import numpy as np

from part_tests._common import call, check, exercise, expect_value_error, fail, passed, tiny, tiny_variant
from part_tests.properties import braces_text, for_all, st
from part_tests.section1._shared import _gemma_like_tokenizer, _ref_format_messages


# Qwen3's own template with thinking on (its default): the generation prompt is the bare assistant header,
# but the rendered final assistant turn opens with an empty thinking block, so the response does not start
# where the generation prompt ends.
_THINKING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' and loop.last -%}"
    "{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message['content'] + '<|im_end|>\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

_THINKING_LABEL = "a Qwen3-style template with thinking on (the generation prompt lacks the thinking block)"


@functools.lru_cache(maxsize=None)
def _thinking_tokenizer():
    from utils.models import load_tokenizer

    tok = load_tokenizer("tiny-qwen2")  # a fresh copy: the shared tokenizer keeps its template
    tok.chat_template = _THINKING_TEMPLATE
    return tok


def _format_tokenizers():
    """(label, tokenizer) of every chat template format_messages must handle."""
    return [
        ("tiny-qwen2", tiny("tiny-qwen2")[1]),
        ("tiny-gemma2 (no system role; its tokenizer adds <bos>)", _gemma_like_tokenizer()),
        ("a Qwen3-style template (a thinking block opens the final assistant turn)", tiny_variant("qwen3")[1]),
        ("a Llama-3-style template (BOS first, blank line after the header, one-token end of turn)", tiny_variant("llama3")[1]),
        (_THINKING_LABEL, _thinking_tokenizer()),
    ]


_END_MARKERS = ("<end_of_turn>", "<|im_end|>", "<start_of_turn>", "<|im_start|>", "<|endoftext|>", "<eos>")

_HEADER_BITS = ("<think>", "</think>", "assistant", "model")


def _check_span(label, tokenizer, messages, full_prompt, span) -> None:
    response = messages[-1]["content"]
    accepted = {response, response.strip()}  # a template may trim the content (Gemma's, Llama 3's do)
    check(isinstance(full_prompt, str), f"{label}: full_prompt should be a str, got {type(full_prompt).__name__}")
    check(isinstance(span, (tuple, list)) and len(span) == 2
          and all(isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_)) for i in span),
          f"{label}: the second return value should be a (start, end) pair of ints, got {span!r:.80}")
    start, end = (int(i) for i in span)
    ids = tokenizer(full_prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        fail(f"{label}: the prompt starts with two <bos> tokens (double BOS): the chat template already adds one")
    check(0 <= start < end <= len(ids), f"{label}: span {tuple(span)} is empty or outside the prompt's {len(ids)} tokens")
    got = tokenizer.decode(ids[start:end])
    if got in accepted:
        return
    core = response.strip()
    if start == 0 and core not in got:
        fail(f"{label}: the span {tuple(span)} starts at the prompt's first token and decodes to {got!r:.80}: did "
             "full_prompt.find(content) return -1? The template trimmed the reply's surrounding whitespace: look for "
             "the stripped content too")
    if got.startswith(core) and any(m in got for m in _END_MARKERS):
        fail(f"{label}: the span decodes to {got!r}: it includes a chat marker such as <end_of_turn> / <|im_end|>; "
             "the response span is the message content only")
    shifted = [(start, end + 1), (start + 1, end + 1), (start - 1, end), (start - 1, end - 1), (start + 1, end), (start, end - 1)]
    if any(0 <= a < b <= len(ids) and tokenizer.decode(ids[a:b]) in accepted for a, b in shifted):
        fail(f"{label}: the span decodes to {got!r} instead of the response {response!r}: off by one token "
             "(a '+1' guess, or a marker length that holds for one template only?) -- compute the span from the "
             "template, don't guess")
    if any(m in got for m in _END_MARKERS):
        fail(f"{label}: the span decodes to {got!r}: it includes a chat marker such as <end_of_turn> / <|im_end|>; "
             "the response span is the message content only")
    if core in got and "</think>" in got.split(core)[0] and _THINKING_LABEL in label:
        fail(f"{label}: the span decodes to {got!r}: it starts at the end of the generation prompt, but this "
             "template opens the final assistant turn with a thinking block the generation prompt does not have -- "
             "find the content's characters in full_prompt (full_prompt.find(content, len(prefix)))")
    if core in got:
        where = " (part of the assistant header: this template's header is longer than the one you assumed)" \
            if any(b in got.split(core)[0] for b in _HEADER_BITS) or got.split(core)[0].strip() == "" else ""
        fail(f"{label}: the span decodes to {got!r}: it covers tokens around the response{where} -- a guessed "
             "offset; compute the span from the template")
    fail(f"{label}: tokens [{start}, {end}) of tokenizer(full_prompt, add_special_tokens=False) decode to {got!r}, "
         f"expected exactly the response {response!r}")


def _format_cases():
    system = "You are a lighthouse keeper who speaks in riddles."
    question = "What do you see at night?"
    answer = "I see the sea asleep, and ships that dream of harbours."
    return system, question, [
        ("one turn with a system prompt", [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]),
        ("no system prompt", [
            {"role": "user", "content": "Tell me a short story."},
            {"role": "assistant", "content": "Once, a lamp refused to go out."},
        ]),
        ("two turns with the same reply twice (the span is the *last* message)", [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And again?"},
            {"role": "assistant", "content": answer},
        ]),
        ("a reply the user quoted first (the span is the assistant's message)", [
            {"role": "user", "content": "Say exactly this: The light is on."},
            {"role": "assistant", "content": "The light is on."},
        ]),
        ("a reply with a trailing newline (some templates trim it)", [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": "Only the gulls, and they keep their counsel.\n"},
        ]),
    ]


def _check_merge(label, full_prompt, ref_text, messages, system, has_system_role) -> None:
    """The system prompt is where the template puts it: its own turn, or merged into the first user message."""
    first_user = next(m["content"] for m in messages if m["role"] == "user")
    check(system in full_prompt, f"{label}: the system prompt is missing from full_prompt"
          + ("" if has_system_role else ": this template has no system role -- merge the system prompt into the "
             "first user message"))
    if has_system_role:
        if f"{system}\n\n{first_user}" in full_prompt or f"{system} {first_user}" in full_prompt or f"{system}\n{first_user}" in full_prompt:
            fail(f"{label}: this template has a system role, but you merged the system prompt into the user message: "
                 "keep the system message; merge only when the template has no system role")
        return
    merged = f"{system}\n\n{first_user}"
    if merged in full_prompt:
        return
    check(full_prompt.index(system) < full_prompt.index(first_user),
          f"{label}: the system prompt should come before the first question: merge it into the *first* user message")
    between = full_prompt[full_prompt.index(system) + len(system):full_prompt.index(first_user)]
    fail(f"{label}: the merged user message should be system + '\\n\\n' + user, but {between!r} separates them "
         f"in your full_prompt (expected {merged[-60:]!r})")


@exercise("1.3", "format_messages")
def test_format_messages(format_messages) -> None:
    from utils.chat import supports_system_role

    system, question, cases = _format_cases()
    for model_name, tokenizer in _format_tokenizers():
        has_system_role = supports_system_role(tokenizer)
        for what, messages in cases:
            label = f"format_messages on {model_name} ({what})"
            original = copy.deepcopy(messages)
            full_prompt, span = _attempt_format(format_messages, messages, tokenizer, model_name, label, what)
            check(messages == original, f"{label}: format_messages modified the messages passed in; work on a copy")
            _check_span(label, tokenizer, messages, full_prompt, span)
            ids = tokenizer(full_prompt, add_special_tokens=False)["input_ids"]
            after = tokenizer.decode(ids[span[1]:]).strip()
            check(after in ("<end_of_turn>", "<|im_end|>"),
                  f"{label}: the span should cover the *last* assistant message, followed only by the end-of-turn "
                  f"marker, but {after[:60]!r}... comes after it: you found an earlier copy of the response text -- "
                  "search after the prompt prefix")
            ref_text, ref_span = _ref_format_messages(messages, tokenizer)
            if messages[0]["role"] == "system":
                _check_merge(label, full_prompt, ref_text, messages, system, has_system_role)
            if full_prompt != ref_text:
                fail(f"{label}: full_prompt should be the chat template's rendering of the whole conversation "
                     f"(apply_chat_template(messages, tokenize=False), system prompt merged where the template has no "
                     f"system role); expected {ref_text!r:.300}, got {full_prompt!r:.300}")
    # property: a system prompt, question and reply that hold braces, placeholders, '?', '$1', backslashes
    for_all(st.tuples(st.one_of(braces_text(), braces_text().map(lambda t: f"{t} {{question}}")), braces_text(),
                      braces_text()), lambda case: _one_awkward(format_messages, *case), name="format_messages", examples=6)
    passed("test_format_messages", "tiny-qwen2, tiny-gemma2, Qwen3- (thinking off and on) and Llama-3-style templates")


def _one_awkward(format_messages, system, question, answer) -> None:
    from utils.chat import supports_system_role

    messages = [{"role": "system", "content": system}, {"role": "user", "content": question},
                {"role": "assistant", "content": answer}]
    for model_name, tokenizer in _format_tokenizers()[:2]:
        label = f"format_messages on {model_name}"
        try:
            full_prompt, span = _attempt_format(format_messages, messages, tokenizer, model_name, label)
            _check_span(label, tokenizer, messages, full_prompt, span)
            ref_text, _ = _ref_format_messages(messages, tokenizer)
            _check_merge(label, full_prompt, ref_text, messages, system, supports_system_role(tokenizer))
            check(full_prompt == ref_text, f"{label}: full_prompt should be the chat template's rendering of the "
                                           f"conversation; expected {ref_text!r:.300}, got {full_prompt!r:.300}")
        except AssertionError as err:
            raise AssertionError(
                f"{err} -- on messages that hold braces, placeholders such as {{question}}, '?', '$1' or backslashes: "
                "use the contents as plain text, never as a regex pattern (re.escape, or str.find) or a template "
                "(str.format / str.replace on a string that holds another message)") from err


@exercise("1.3", "format_messages")
def test_format_messages_input_checks(format_messages) -> None:
    question = "What do you see at night?"
    for model_name, tokenizer in _format_tokenizers()[:2]:
        for what, messages in (("a conversation that ends with the user's message", [{"role": "user", "content": question}]),
                               ("a two-turn conversation that ends with the user's next question", [
                                   {"role": "user", "content": question}, {"role": "assistant", "content": "Ships."},
                                   {"role": "user", "content": "And?"}])):
            expect_value_error(format_messages, messages, tokenizer, name=f"format_messages on {model_name}",
                               what=f"{what} (the last message must be the assistant response: there is no response span)")
    passed("test_format_messages_input_checks")


def _attempt_format(format_messages, messages, tokenizer, model_name, label, what=""):
    try:
        out = call(format_messages, messages, tokenizer, name="format_messages")
    except AssertionError:
        raise
    except Exception as err:
        text = str(err)
        if "gemma" in model_name and "system" in text.lower():
            fail(f"{label}: {type(err).__name__}: {text} -- Gemma's chat template has no system role: merge the system "
                 "prompt into the first user message")
        if "trailing newline" in what:
            fail(f"{label}: raised {type(err).__name__}: {text} -- the template trimmed the reply's surrounding "
                 "whitespace: look for the stripped content too")
        fail(f"{label}: raised {type(err).__name__}: {text}")
    check(isinstance(out, tuple) and len(out) == 2, f"{label}: should return (full_prompt, (start, end)), got {type(out).__name__}")
    return out
