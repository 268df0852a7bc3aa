"""Chat formatting with exact response spans.

The course's convention: the *response tokens* of a conversation are the exact token span of the final
assistant message's content -- no chat markers, no end-of-turn token. We find it from the chat
template itself (render the conversation with and without its last message), never by a "+1" guess.
Models whose template has no system role (Gemma 2) get the system prompt merged into the first
user message.
"""

from __future__ import annotations

from dataclasses import dataclass

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class ChatTemplateError(ValueError):
    """The tokenizer cannot format this conversation."""


def _template_of(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ChatTemplateError(
            f"{type(tokenizer).__name__} has no chat template: load the *instruct* model's tokenizer "
            "(e.g. 'Qwen/Qwen2.5-7B-Instruct', not the base model), or set tokenizer.chat_template."
        )
    return template if isinstance(template, str) else str(template)


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The chat template applied to `messages`, as text."""
    _template_of(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


_SYSTEM_SUPPORT: dict[str, bool] = {}  # chat template -> accepts a system message


def _probe_system_role(tokenizer) -> bool:
    probe = [{"role": "system", "content": "SYSTEM-PROBE-7731"}, {"role": "user", "content": "hi"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:
        return False
    return "SYSTEM-PROBE-7731" in text


def supports_system_role(tokenizer) -> bool:
    """Whether the chat template accepts a system message (Gemma 2's does not)."""
    template = _template_of(tokenizer)
    if template not in _SYSTEM_SUPPORT:
        _SYSTEM_SUPPORT[template] = _probe_system_role(tokenizer)
    return _SYSTEM_SUPPORT[template]


def _check_messages(messages: list[Message]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} has unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} content must be a string, got {type(m['content']).__name__}")


def normalize_messages(messages: list[Message], tokenizer) -> list[Message]:
    """Drop empty system prompts, and merge the system prompt into the first user message where the
    template has no system role. Returns a new list; the input is not modified."""
    _check_messages(messages)
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        if system.strip():
            if supports_system_role(tokenizer):
                msgs.insert(0, {"role": "system", "content": system})
            elif msgs and msgs[0]["role"] == "user":
                msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
            else:
                raise ChatTemplateError("a system prompt on a template without a system role needs a user message after it")
    if any(m["role"] == "system" for m in msgs[1:]):
        raise ValueError("only the first message may be a system message")
    return msgs


def build_messages(system_prompt: str | None, question: str, response: str | None = None) -> list[Message]:
    """[system?, user, assistant?] for one question (the system prompt is dropped when empty)."""
    msgs = []
    if system_prompt:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": question})
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


@dataclass(frozen=True)
class FormattedChat:
    """A rendered conversation whose last message is the assistant response.

    `text` is the full prompt; `char_span` the response content's characters in it; `token_span`
    the [start, end) token indices of the response in `tokenizer(text, add_special_tokens=False)`.
    """

    text: str
    char_span: tuple[int, int]
    token_span: tuple[int, int]
    input_ids: list[int]


def _content_char_span(text: str, prefix_len: int, content: str) -> tuple[int, int]:
    # Templates may strip the content (Gemma's does); look for the content as rendered.
    for candidate in (content, content.strip()):
        idx = text.find(candidate, prefix_len)
        if idx >= 0 and candidate:
            return idx, idx + len(candidate)
    raise ChatTemplateError("could not find the response text in the rendered chat; does the template rewrite it?")


def char_span_to_token_span(offsets: list[tuple[int, int]], char_span: tuple[int, int]) -> tuple[int, int]:
    """Token indices [start, end) of the tokens lying inside `char_span` (from an offset mapping)."""
    c0, c1 = char_span
    inside = [i for i, (s, e) in enumerate(offsets) if s >= c0 and e <= c1 and e > s]
    if not inside:
        raise ChatTemplateError("the response covers no whole token")
    return inside[0], inside[-1] + 1


def format_chat(messages: list[Message], tokenizer) -> FormattedChat:
    """Render `messages` (the last one the assistant response) and locate the response exactly."""
    msgs = normalize_messages(messages, tokenizer)
    if msgs[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant response whose span you want")
    prefix = render(tokenizer, msgs[:-1], add_generation_prompt=True)
    text = render(tokenizer, msgs)
    if not text.startswith(prefix):
        raise ChatTemplateError(
            "the chat template renders the conversation differently once the response is added "
            "(e.g. it drops reasoning blocks); cannot locate the response by prefix"
        )
    char_span = _content_char_span(text, len(prefix), msgs[-1]["content"])
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    token_span = char_span_to_token_span(enc["offset_mapping"], char_span)
    return FormattedChat(text=text, char_span=char_span, token_span=token_span, input_ids=list(enc["input_ids"]))


def format_prompt(messages: list[Message], tokenizer) -> str:
    """The text to generate from: the conversation so far plus the assistant turn opener."""
    msgs = normalize_messages(messages, tokenizer)
    if msgs[-1]["role"] == "assistant":
        raise ValueError("a generation prompt must not end with an assistant message")
    return render(tokenizer, msgs, add_generation_prompt=True)


def assistant_turn_spans(messages: list[Message], tokenizer) -> tuple[str, list[tuple[int, int]], list[int]]:
    """Token spans of *every* assistant message's content, from one rendering of the conversation.

    Returns (text, spans, input_ids). Each assistant message's content is searched for after the
    rendering of the messages before it plus the assistant opener (the generation prompt), or, where
    the template opens earlier turns differently from the generation prompt (Qwen3's empty think
    block goes only on the final turn), after the rendering of the messages before it.
    """
    msgs = normalize_messages(messages, tokenizer)
    text = render(tokenizer, msgs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, msgs[:i], add_generation_prompt=True)
        if not text.startswith(prefix):
            prefix = render(tokenizer, msgs[:i])
        if not text.startswith(prefix):
            raise ChatTemplateError(f"assistant turn {i}: the template does not render conversations prefix-stably")
        spans.append(char_span_to_token_span(enc["offset_mapping"], _content_char_span(text, len(prefix), m["content"])))
    return text, spans, list(enc["input_ids"])
