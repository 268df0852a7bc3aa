"""Tests for Section 1 — Mapping persona space. Each takes the student's object first."""

from __future__ import annotations

import copy
import functools
import numbers
import threading
import time
import warnings

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    expect_value_error,
    fail,
    no_hooks_left,
    passed,
    require_implemented,
    tiny,
    tiny_variant,
    using,
)
from part_tests.shapes import expect_tensor

# The shapes of the exercises' signatures (solutions/section1_persona_space.py), checked with expect_tensor.
ACTIVATIONS = Float[Tensor, "n d_model"]
VECTOR = Float[Tensor, "d_model"]
SIMILARITY = Float[Tensor, "n_personas n_personas"]
PCA_COORDS = Float[Tensor, "n_personas 2"]


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
    passed("test_parse_score")


# ---------------------------------------------------------------------------------------------
# shared helpers of the Section 1 tests

PERSONAS_SMALL = {
    "default": "",
    "ghost": "You are a ghost who has haunted an old lighthouse for two hundred years.",
    "analyst": "You are a data analyst who trusts numbers more than anecdotes.",
}
QUESTIONS_SMALL = [
    "What do you value most?",
    "How do you spend a day?",
    "What are you afraid of?",
    "Describe the place where you feel at home.",
]


def _attempt(fn, *args, name: str, **kwargs):
    """`call`, but an exception from the student's code becomes a failure that names it."""
    try:
        return call(fn, *args, name=name, **kwargs)
    except AssertionError:
        raise
    except Exception as err:  # the student's code crashed: say where, not a traceback from the test
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}") from err


def _as_float_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check(isinstance(x, torch.Tensor), f"{name} should be a torch.Tensor (or numpy array), got {type(x).__name__}")
    return x.detach().double().cpu()


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return v / v.norm()


def _show(v: torch.Tensor, k: int = 3) -> str:
    """The first k entries of a vector, for messages that show expected vs got."""
    return "[" + ", ".join(f"{float(x):.4g}" for x in v.flatten()[:k]) + ", ...]"


def _ref_format_messages(messages, tokenizer):
    """The course's exact-span formatting (utils.chat), in the shape of exercise 1.3's answer."""
    from utils.chat import format_chat

    fc = format_chat(messages, tokenizer)
    return fc.text, fc.token_span


def _ref_extract(model, tokenizer, system_prompts, questions, responses, layer):
    """The course's response-mean activations (utils.activations), in the shape of exercise 1.4's answer."""
    from utils.activations import conversations_from, response_mean_activations

    convs = conversations_from(system_prompts, questions, responses)
    return response_mean_activations(model, tokenizer, convs, layers=[layer])[:, 0]


# ---------------------------------------------------------------------------------------------
# Exercise 1.2 -- generate_all_responses


class _RecordingGenerator:
    """Stands in for the notebook's `generate_response`: records calls and how many overlap.

    The first call it receives is slow and the rest fast, so results complete out of submission
    order (a student who pairs keys with `as_completed` futures gets them mixed up)."""

    def __init__(self, slow: float = 0.12, fast: float = 0.02):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[str, str, int]] = []
        self.slow, self.fast = slow, fast

    @staticmethod
    def reply(system_prompt, question, max_tokens) -> str:
        return f"<reply to [{question}] as [{system_prompt}] within {max_tokens} tokens>"

    def __call__(self, system_prompt, question, max_tokens=256):
        with self.lock:
            first = not self.calls
            self.calls.append((system_prompt, question, max_tokens))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.slow if first else self.fast)
        finally:
            with self.lock:
                self.in_flight -= 1
        return self.reply(system_prompt, question, max_tokens)


def _check_calls(personas, questions, max_tokens, fake) -> None:
    """The arguments generate_response was called with: the mistakes that show there, named."""
    prompts, names = set(personas.values()), set(personas) - set(personas.values())
    for system_prompt, question, tokens in fake.calls:
        if system_prompt in names:
            fail(f"generate_response was called with the persona's name {system_prompt!r} as its system prompt: "
                 f"pass personas[name], the system prompt")
        if system_prompt in questions and question in prompts:
            fail("generate_response was called with its arguments swapped: generate_response(system_prompt, question, "
                 "max_tokens)")
        if tokens != max_tokens:
            fail(f"generate_all_responses(..., max_tokens={max_tokens}) called generate_response with "
                 f"max_tokens={tokens!r}: pass max_tokens through")


def _check_responses(result, personas, questions, max_tokens, fake) -> None:
    check(isinstance(result, dict), f"generate_all_responses should return a dict, got {type(result).__name__}")
    _check_calls(personas, questions, max_tokens, fake)
    expected_keys = {(name, q) for name in personas for q in range(len(questions))}
    keys = set(result)
    if keys != expected_keys:
        some = sorted(keys, key=repr)[:3]
        if any(isinstance(k, tuple) and len(k) == 2 and k[0] in personas.values() and k[0] not in personas for k in keys):
            fail(f"keys should be (persona_name, q_idx) with the persona's *name*, not its system prompt; got keys like {some}")
        if any(isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], int) and k[1] in personas for k in keys):
            fail(f"keys should be (persona_name, q_idx) in that order, got keys like {some}")
        if any(isinstance(k, tuple) and len(k) == 2 and isinstance(k[1], str) for k in keys):
            fail(f"keys should be (persona_name, q_idx) with the question's *index*, got keys like {some}")
        missing = sorted(expected_keys - keys, key=repr)
        dupes = {q for q in range(len(questions)) if questions.index(questions[q]) != q}
        if missing and {q for _, q in missing} <= dupes and keys <= expected_keys:
            fail(f"questions {sorted(dupes)} repeat an earlier question's text and got no entry of their own "
                 f"(missing {missing[:3]}): take q_idx from enumerate(questions), not questions.index(question)")
        fail(f"expected one entry per (persona_name, q_idx) -- {len(expected_keys)} keys; "
             f"missing e.g. {missing[:3]}, unexpected e.g. {sorted(keys - expected_keys, key=repr)[:3]} "
             "(q_idx counts from 0)")
    asked = {(sp, q) for sp, q, _ in fake.calls}
    never = [(name, q) for name, sp in personas.items() for q, qq in enumerate(questions) if (sp, qq) not in asked]
    if never and len(fake.calls) == len(expected_keys):
        fail(f"generate_response was called once per pair, but never for {never[:3]} while other pairs were asked "
             "twice or more: a lambda (or inner function) submitted in a loop reads the loop variables when it runs, "
             "not when it is submitted (late binding) -- pass them as arguments: pool.submit(generate_response, "
             "system_prompt, question, max_tokens)")
    check(len(fake.calls) == len(expected_keys),
          f"generate_response was called {len(fake.calls)} times for {len(expected_keys)} (persona, question) pairs: call it once per pair")
    for (name, q), text in result.items():
        want = fake.reply(personas[name], questions[q], max_tokens)
        if text == want:
            continue
        if any(text == fake.reply(personas[n2], questions[q2], max_tokens) for n2 in personas for q2 in range(len(questions))):
            fail(f"result[{(name, q)!r}] holds the response to a different (persona, question): responses and keys are "
                 "mixed up -- `as_completed` yields futures in the order they *finish*; keep a dict future -> key")
        fail(f"result[{(name, q)!r}] should be the string generate_response returned for that persona's system prompt "
             f"and questions[{q}]; got {text!r:.120}")


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
    passed("test_parse_score_hidden")


def test_generate_all_responses(generate_all_responses) -> None:
    personas, questions = PERSONAS_SMALL, QUESTIONS_SMALL
    fake = _RecordingGenerator()
    with using(generate_all_responses, generate_response=fake):
        result = _attempt(generate_all_responses, personas, questions, max_tokens=17, max_workers=4,
                          name="generate_all_responses")
    _check_responses(result, personas, questions, 17, fake)
    check(fake.max_in_flight > 1,
          "generate_response was never called concurrently with max_workers=4: submit the calls to a "
          "ThreadPoolExecutor(max_workers=max_workers) instead of looping one by one")
    check(fake.max_in_flight <= 4, f"{fake.max_in_flight} calls ran at once with max_workers=4: use max_workers for the pool size")
    # fewer workers, another max_tokens, and two questions with the same text (their indices differ)
    questions2 = [questions[0], questions[1], questions[0]]
    fake2 = _RecordingGenerator(slow=0.06, fast=0.03)
    with using(generate_all_responses, generate_response=fake2):
        result2 = _attempt(generate_all_responses, personas, questions2, max_tokens=5, max_workers=2,
                           name="generate_all_responses")
    _check_responses(result2, personas, questions2, 5, fake2)
    check(fake2.max_in_flight <= 2, f"{fake2.max_in_flight} calls ran at once with max_workers=2: use max_workers for the pool size")
    passed("test_generate_all_responses", f"{len(result)} responses, up to {fake.max_in_flight} calls in flight")


# ---------------------------------------------------------------------------------------------
# Exercise 1.3 -- format_messages


@functools.lru_cache(maxsize=None)
def _gemma_like_tokenizer():
    """tiny-gemma2's tokenizer, made to add <bos> when add_special_tokens=True, as the real Gemma
    tokenizer does (so that a template's <bos> plus the tokenizer's <bos> shows up as a double BOS)."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tiny("tiny-gemma2")[1])
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)])
    return tok


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
    passed("test_format_messages", "tiny-qwen2, tiny-gemma2, Qwen3- (thinking off and on) and Llama-3-style templates")


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


# ---------------------------------------------------------------------------------------------
# Exercise 1.4 -- extract_response_activations

# Eleven examples of uneven lengths: more than one batch of the default batch_size (8), and neither
# example 0 nor example 8 (the first row of each batch) is the longest of its batch.
_EXTRACT_SYSTEMS = ["You are a ghost who haunts an old lighthouse.", "", "You are a data analyst who trusts numbers.",
                    "", "You are a bard.", "You are an editor who cuts every spare word.", "",
                    "You are an oracle.", "", "You are a tired sailor.", "You are a careful clerk."]
_EXTRACT_QUESTIONS = ["Who are you?", "Tell me a long story about the sea, please, with ships in it.", "How do you decide?",
                      "What is two plus two?", "Sing of the tide.", "Shorten this sentence for me.", "Where is home?",
                      "What will tomorrow bring?", "Name a colour.", "Where have you sailed?", "What do you file?"]
_EXTRACT_RESPONSES = ["I am the keeper of a light that no one needs any more.",
                      "Once upon a time there was a very long tale about the ocean, the sky and three small boats.",
                      "I measure first.", "Four.", "O tide, O silver tide, that comes and goes and comes again.",
                      "Cut it.", "Home is where the questions are.", "Fog, and then the sun, and then more fog.",
                      "Blue.", "Every harbour from the cape to the northern ice, and a few I would rather forget.",
                      "Forms."]
EXTRACT_CASES = (_EXTRACT_SYSTEMS[:3], _EXTRACT_QUESTIONS[:3], _EXTRACT_RESPONSES[:3])


@torch.inference_mode()
def _candidate_means(model, tokenizer, system_prompt, question, response, layer) -> dict[str, torch.Tensor]:
    """Per-example means that plausible mistakes compute, from one forward pass with hooks."""
    from utils.chat import build_messages, format_chat
    from utils.hooks import get_blocks, hidden_of, hooks
    from utils.models import input_device

    fc = format_chat(build_messages(system_prompt, question, response), tokenizer)
    s, e = fc.token_span
    n = len(get_blocks(model))
    device = input_device(model)

    def run(ids, attention_mask=None):
        outs: dict[int, torch.Tensor] = {}

        def grab(i):
            def hook(module, args, output):
                outs[i] = hidden_of(output)[0].float().cpu()
            return hook

        kwargs = {} if attention_mask is None else {"attention_mask": torch.tensor([attention_mask], device=device)}
        with hooks(model, {i: grab(i) for i in range(n)}):
            res = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True, **kwargs)
        return outs, res.hidden_states[-1][0].float().cpu()

    outs, final = run(fc.input_ids)
    h = outs[layer]
    cands = {
        "correct": h[s:e].mean(0),
        "every token of the conversation (prompt and markers included): average over the response tokens only": h.mean(0),
        "prompt tokens as well as the response: average over the response span only": h[:e].mean(0),
        "the response and the end-of-turn marker after it: the span ends at the last content token": h[s:e + 1].mean(0),
        "a span shifted by one token (a '+1' guess?): compute the span from the chat template": h[s + 1:e + 1].mean(0),
        "a span that starts one token early (the assistant header's last token)": h[s - 1:e].mean(0),
        "hidden_states[-1], which has the model's final norm applied: hook the output of block `layer` instead": final[s:e].mean(0),
    }
    if layer > 0:
        cands["the output of block layer - 1 (off by one: hidden_states[layer] is block layer-1's output, "
              "hidden_states[0] the embeddings); hook get_blocks(model)[layer]"] = outs[layer - 1][s:e].mean(0)
    if layer + 1 < n:
        cands["the output of block layer + 1 (off by one)"] = outs[layer + 1][s:e].mean(0)
    with_special = tokenizer(fc.text)["input_ids"]
    if len(with_special) == len(fc.input_ids) + 1 and with_special[1:] == fc.input_ids:
        h2 = run(with_special)[0][layer]
        cands["a prompt that starts with two <bos> tokens (double BOS): tokenize the rendered chat with "
              "add_special_tokens=False"] = h2[s + 1:e + 1].mean(0)
        cands["a prompt that starts with two <bos> tokens (double BOS), so the span is one token off: tokenize the "
              "rendered chat with add_special_tokens=False"] = h2[s:e].mean(0)
    pad = tokenizer.pad_token_id
    if pad is not None and pad in fc.input_ids:
        mask = [0 if t == pad else 1 for t in fc.input_ids]
        cands[f"an attention mask built as input_ids != pad_token_id: this template writes the pad token "
              f"({tokenizer.decode([pad])!r}) into the prompt itself (as its BOS), so real tokens were masked; build "
              "the mask from each example's length"] = run(fc.input_ids, mask)[0][layer][s:e].mean(0)
    return cands


def _tol(model) -> dict:
    dtype = next(model.parameters()).dtype
    return dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)


def _close(a: torch.Tensor, b: torch.Tensor, tol: dict) -> bool:
    """Equal up to the model's precision: elementwise in float32; in bf16, where another batch layout
    rounds differently, within 3 % of the vector's norm."""
    a, b = a.double(), b.double()
    if tol["rtol"] < 1e-2:
        return torch.allclose(a, b, **tol)
    return a.shape == b.shape and bool((a - b).norm() <= tol["rtol"] * b.norm() + tol["atol"])


class _Boom(Exception):
    pass


class _ForwardCounter:
    """Counts forward passes through block 0 while the student's function runs."""

    def __init__(self, model):
        from utils.hooks import get_blocks

        self.count = 0
        self.rows = 0  # the most conversations one forward pass held
        self.handle = get_blocks(model)[0].register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.count += 1
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 3:
            self.rows = max(self.rows, int(hidden.shape[0]))

    def remove(self):
        self.handle.remove()


def _extract_configs(model, tokenizer):
    """(label, model, tokenizer, layers, examples) the test runs; the student's own model when given."""
    from utils.hooks import get_blocks

    if model is not None:
        n = len(get_blocks(model))
        return [(model.config._name_or_path, model, tokenizer, sorted({1 % n, n - 1}), 3)]
    qwen = tiny("tiny-qwen2")
    n = len(get_blocks(qwen[0]))
    return [
        ("tiny-gemma2", tiny("tiny-gemma2")[0], _gemma_like_tokenizer(), [1, n - 1], 3),
        ("tiny-qwen2", *qwen, [1, n - 1], len(_EXTRACT_RESPONSES)),
        ("tiny-qwen2 with a Llama-3-style chat template", *tiny_variant("llama3"), [n - 1], 3),
        ("tiny-qwen2 in bfloat16", *tiny("tiny-qwen2", torch.bfloat16), [1], 3),
        (_RIGHT_PADDING, qwen[0], _right_padding_tokenizer(), [1], 3),
    ]


_RIGHT_PADDING = "tiny-qwen2 with a tokenizer that pads on the right"


@functools.lru_cache(maxsize=None)
def _right_padding_tokenizer():
    """tiny-qwen2's tokenizer with padding_side='right' (the course's tokenizers pad on the left; many others don't)."""
    from utils.models import load_tokenizer

    tok = load_tokenizer("tiny-qwen2")  # a fresh copy: the shared tokenizer keeps its padding side
    tok.padding_side = "right"
    return tok


def _check_returned(got, label, n, d):
    """Shape, dtype and device of what extract_response_activations returned."""
    if isinstance(got, torch.Tensor) and got.ndim == 2 and 0 < got.shape[0] < n and got.shape[0] % 8 == 0:
        fail(f"{label} returned shape {tuple(got.shape)}, expected (n, d_model) = ({n}, {d}): the last, partial batch "
             f"is missing (loop over range(0, n, batch_size))")
    expect_tensor(got, ACTIVATIONS, label, n=n, d_model=d)
    check(got.dtype == torch.float32, f"{label} returned dtype {got.dtype}, expected float32: convert the mean with "
                                      ".float() (a bf16 model's activations are bf16)")
    check(got.device.type == "cpu", f"{label} returned a tensor on {got.device}, expected the CPU (.cpu())")
    check(not got.requires_grad, f"{label} returned a tensor that requires grad: the forward pass built an autograd "
                                 "graph -- run it under torch.inference_mode() (keep the decorator of the stub)")
    return got.detach().double()


def _diagnose_batch(label, got, expected, alone_ok, tol, lengths) -> None:
    n = len(expected)
    bad = [i for i in range(n) if not _close(got[i], expected[i], tol)]
    if not bad:
        return
    ok = sorted(set(range(n)) - set(bad))
    i = bad[0]
    numbers = (f"row {i}: expected {_show(expected[i])}, got {_show(got[i])} "
               f"(max abs difference {(got[i] - expected[i]).abs().max().item():.3g})")
    for j in range(n):
        if j != i and _close(got[i], expected[j], tol):
            fail(f"{label}: row {i} holds example {j}'s mean: return the rows in the order of the inputs ({numbers})")
    if 0 in ok and set(ok) <= {0, 8} and n > 1:
        fail(f"{label}: only the first row of each batch is right ({ok}): `output[0]` of a block output that is a "
             f"tensor is batch row 0, not the hidden states -- use hidden_of(output) ({numbers})")
    if n > 8 and set(bad) == set(range(8, n)):
        fail(f"{label}: the first batch of 8 is right but rows 8-{n - 1} (the second batch) are wrong: reset what you "
             f"collect per batch (spans, captured hidden states) and index each batch's own spans ({numbers})")
    def unpadded(j):  # the longest example of its batch of 8, or of all examples (one batch)
        batch = range(j // 8 * 8, min(n, j // 8 * 8 + 8))
        return lengths[j] == max(lengths) or lengths[j] == max(lengths[b] for b in batch)

    if ok and all(unpadded(j) for j in ok):
        fail(f"{label}: the unpadded (longest) examples are right but the padded ones are wrong (rows {bad}): padding "
             "must change nothing -- pass the attention_mask, keep pads out of the averaged span, and shift each span "
             f"by its padding if you pad on the left ({numbers})")
    if alone_ok:
        fail(f"{label}: rows {bad} are right when the examples go one at a time but wrong when they are batched "
             f"together: mask the padding, shift spans by any left padding, don't take `out[0]` ({numbers})")
    fail(f"{label}: rows {bad} differ from the mean of block output over each response's tokens ({numbers})")


def test_extract_response_activations(extract_response_activations, model=None, tokenizer=None) -> None:
    from utils.chat import build_messages, format_chat
    from utils.hooks import get_blocks

    fn = extract_response_activations
    owned = model is None
    configs = _extract_configs(model, tokenizer)
    counted = False
    for mname, m, tok, layers, n_examples in configs:
        d = m.config.hidden_size
        tol = _tol(m)
        systems, questions, responses = (x[:n_examples] for x in (_EXTRACT_SYSTEMS, _EXTRACT_QUESTIONS, _EXTRACT_RESPONSES))
        for layer in layers:
            label = f"extract_response_activations on {mname}, layer {layer}"
            expected = _ref_extract(m, tok, systems, questions, responses, layer).double()
            # one at a time: the meaning of the number
            for i in range(3):
                with using(fn, format_messages=_ref_format_messages):
                    got = _attempt(fn, m, tok, systems[i:i + 1], questions[i:i + 1], responses[i:i + 1], layer, name=label)
                no_hooks_left(m, label, clean=owned)
                got = _check_returned(got, f"{label}, one example,", 1, d)
                if _close(got[0], expected[i], tol):
                    continue
                numbers = (f"expected {_show(expected[i])}, got {_show(got[0])} "
                           f"(max abs difference {(got[0] - expected[i]).abs().max().item():.3g})")
                for what, cand in _candidate_means(m, tok, systems[i], questions[i], responses[i], layer).items():
                    if what != "correct" and _close(got[0], cand.double(), tol):
                        fail(f"{label}: example {i}: your mean is over {what} ({numbers})")
                fail(f"{label}: example {i} differs from the mean of block {layer}'s output over the response tokens "
                     f"({numbers})")
            # batched: padding (and the batch boundaries) must change nothing
            counter = _ForwardCounter(m) if not counted and n_examples > 8 else None
            try:
                with using(fn, format_messages=_ref_format_messages):
                    got = _attempt(fn, m, tok, systems, questions, responses, layer, name=label)
            except AssertionError as err:
                if "must match the size of tensor" not in str(err):
                    raise
                raise AssertionError(f"{err} -- it ran one example at a time but not batched: the hidden states and "
                                     "the mask come from different batches (do you keep an earlier batch's captured "
                                     "hidden states, e.g. a list the hook appends to, read at [0]?)") from err
            finally:
                if counter is not None:
                    counter.remove()
            no_hooks_left(m, label, clean=owned)
            got = _check_returned(got, f"{label}, {n_examples} examples,", n_examples, d)
            half = next(m.parameters()).dtype
            if half in (torch.bfloat16, torch.float16) and bool((got == got.to(half).double()).all()):
                # a float32 mean over several tokens is almost never exactly representable in half precision
                fail(f"{label}: every entry of your means is a {half} number: the mean was computed (or rounded) in "
                     f"the model's half precision and only then converted -- convert the hidden states with .float() "
                     "before the masked sum, so the mean keeps float32's precision")
            if counter is not None:
                counted = True
                check(counter.count < n_examples,
                      f"{label}: the model ran {counter.count} forward passes for {n_examples} examples: run several "
                      "conversations per forward pass (batches of batch_size, padded to one length)")
                check(counter.rows <= 8,
                      f"{label}: one forward pass held {counter.rows} conversations with the default batch_size=8: "
                      "run at most batch_size at a time (all at once runs out of memory on a real model)")
            lengths = [len(format_chat(build_messages(s, q, r), tok).input_ids) for s, q, r in zip(systems, questions, responses)]
            if mname == _RIGHT_PADDING and not all(_close(got[i], expected[i], tol) for i in range(n_examples)):
                fail(f"{label}: rows are wrong when batched, though right one at a time: this tokenizer pads on the "
                     "right (tokenizer.padding_side == 'right'), so a span needs no shift -- if you let the tokenizer "
                     "pad, shift each span by the padding it put *before* the sequence (read tokenizer.padding_side), "
                     "or pad yourself")
            _diagnose_batch(label, got, expected, True, tol, lengths)
            if counter is not None:  # the caller's batch_size is honoured, and other batch boundaries change nothing
                small_label = f"{label}, batch_size=3"
                counter = _ForwardCounter(m)
                try:
                    with using(fn, format_messages=_ref_format_messages):
                        small = _attempt(fn, m, tok, systems, questions, responses, layer, batch_size=3, name=small_label)
                finally:
                    counter.remove()
                no_hooks_left(m, small_label, clean=owned)
                check(counter.rows <= 3,
                      f"{small_label}: one forward pass held {counter.rows} conversations: use the batch_size argument "
                      "for the size of each batch (a hard-coded size ignores the caller's memory budget)")
                small = _check_returned(small, f"{small_label}, {n_examples} examples,", n_examples, d)
                bad = [i for i in range(n_examples) if not _close(small[i], expected[i], tol)]
                check(not bad, f"{small_label}: rows {bad} are wrong with batches of 3, though right with batches of 8: "
                               "take each batch's examples, spans and padding from range(0, n, batch_size)")
        # an exception during the forward pass must not leave a hook behind
        n_blocks = len(get_blocks(m))
        blocks = get_blocks(m)

        def boom(module, args, output):
            raise _Boom("raised by the test during the forward pass")

        handle = blocks[n_blocks - 1].register_forward_hook(boom)
        try:
            with using(fn, format_messages=_ref_format_messages):
                fn(m, tok, systems[:3], questions[:3], responses[:3], n_blocks - 1)
        except _Boom:
            pass
        except NotImplementedError as err:
            raise NotImplementedYet("extract_response_activations: not implemented yet") from err
        except Exception:
            pass
        finally:
            handle.remove()
        no_hooks_left(m, f"extract_response_activations on {mname}, after an exception in the forward pass,", clean=owned)
    passed("test_extract_response_activations", ", ".join(x[0] for x in configs))


def test_extract_response_activations_input_checks(extract_response_activations, model=None, tokenizer=None) -> None:
    fn = extract_response_activations
    m, tok = (model, tokenizer) if model is not None else tiny("tiny-qwen2")
    s, q, r = (list(x) for x in EXTRACT_CASES)
    for lists, lens in (((s, q, r[:2]), "3, 3 and 2"), ((s, q[:2], r), "3, 2 and 3"), ((s[:2], q, r), "2, 3 and 3")):
        with using(fn, format_messages=_ref_format_messages):
            expect_value_error(fn, m, tok, *lists, 1, name="extract_response_activations",
                               what=f"lists of lengths {lens} (zip would silently drop an example): compare all three lengths")
    passed("test_extract_response_activations_input_checks")


# ---------------------------------------------------------------------------------------------
# Exercise 1.5 -- extract_persona_vectors


class _TableExtractor:
    """Stands in for extract_response_activations: each response text has a known activation."""

    def __init__(self, personas, questions, responses, d=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.d = d
        self.table = {text: torch.randn(d, generator=g, dtype=torch.float64) * 3 + 1 for text in responses.values()}
        self.owner = {text: key for key, text in responses.items()}
        self.personas, self.questions = personas, questions
        self.calls = []
        self.errors: list[str] = []

    def __call__(self, model, tokenizer, system_prompts, questions, responses, layer, *args, **kwargs):
        system_prompts, questions, responses = list(system_prompts), list(questions), list(responses)
        self.calls.append((model, tokenizer, layer, len(responses)))
        if not (len(system_prompts) == len(questions) == len(responses)):
            raise ValueError("system_prompts, questions and responses must have the same length")
        rows = []
        for s, q, r in zip(system_prompts, questions, responses):
            if r not in self.table:
                self.errors.append(f"got a response that is not in `responses`: {r!r:.60}")
                rows.append(torch.zeros(self.d, dtype=torch.float64))
                continue
            name, q_idx = self.owner[r]
            if (s or "") != self.personas[name]:
                self.errors.append(f"the response of ({name!r}, {q_idx}) came with system prompt {s!r:.50}, expected personas[{name!r}]")
            if q != self.questions[q_idx]:
                self.errors.append(f"the response of ({name!r}, {q_idx}) came with question {q!r:.50}, expected questions[{q_idx}]")
            rows.append(self.table[r])
        return torch.stack(rows).float() if rows else torch.zeros(0, self.d)

    def mean(self, keys, responses):
        return torch.stack([self.table[responses[k]] for k in keys]).mean(0)


def _persona_case():
    personas, questions = PERSONAS_SMALL, QUESTIONS_SMALL
    responses = {(n, q): f"response of {n} to question {q}" for n in personas for q in range(len(questions))}
    del responses[("default", 3)]  # a failed generation: not every pair has a response
    scores = {("default", q): 3 for q in range(4)}
    scores.update({("ghost", 0): 3, ("ghost", 2): 3, ("ghost", 3): None})  # ("ghost", 1): no score at all
    scores.update({("analyst", 0): 1, ("analyst", 1): 2, ("analyst", 2): 0, ("analyst", 3): 2})
    return personas, questions, responses, scores


def _run_persona_vectors(fn, fake, *args, label, **kwargs):
    with using(fn, extract_response_activations=fake), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = call(fn, *args, name=label, **kwargs)
        except AssertionError:
            raise
        except KeyError as err:
            raise AssertionError(f"{label} raised KeyError: {err} -- a response may have no score at all (its key is "
                                 "absent from `scores`): treat it like None, it does not pass (scores.get(key))") from err
        except Exception as err:
            raise AssertionError(f"{label} raised {type(err).__name__}: {err}") from err
    check(isinstance(out, dict), f"{label} should return a dict name -> vector, got {type(out).__name__}")
    for name, v in out.items():
        if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v.float()).all()):
            fail(f"{label}[{name!r}] contains NaN: a persona with no response passing the filter must be skipped "
                 "(with a warning), not averaged over zero rows")
        expect_tensor(v, VECTOR, f"{label}[{name!r}]", d_model=fake.d)
    check(not fake.errors, f"{label}: {fake.errors[0] if fake.errors else ''}")
    return out, [str(w.message) for w in caught]


def _check_vectors(out, expected: dict, label: str, fake, responses, candidates: dict | None = None) -> None:
    for name, keys in expected.items():
        check(name in out, f"{label}: persona {name!r} is missing from the result")
        want = fake.mean(keys, responses)
        got = out[name].detach().double().cpu()
        if torch.allclose(got, want, atol=1e-4):
            continue
        for what, cand_keys in (candidates or {}).get(name, {}).items():
            if cand_keys and torch.allclose(got, fake.mean(cand_keys, responses), atol=1e-4):
                fail(f"{label}[{name!r}] averages the responses {sorted(q for _, q in cand_keys)}, expected "
                     f"{sorted(q for _, q in keys)}: {what}")
        fail(f"{label}[{name!r}] should be the mean activation over its responses {sorted(q for _, q in keys)} "
             f"(the ones kept by the filter): expected {_show(want)}, got {_show(got)}")


def test_extract_persona_vectors(extract_persona_vectors, model=None, tokenizer=None) -> None:
    fn = extract_persona_vectors
    personas, questions, responses, scores = _persona_case()
    sentinel_model, sentinel_tok = object(), object()

    # no scores: every response counts
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=None)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7, label=label)
    check(fake.calls, f"{label} never called extract_response_activations")
    check(all(c[0] is sentinel_model and c[1] is sentinel_tok for c in fake.calls),
          f"{label}: pass the model and tokenizer on to extract_response_activations")
    check(all(c[2] == 7 for c in fake.calls), f"{label}: pass `layer` on to extract_response_activations (called with {fake.calls[0][2]!r}, expected 7)")
    check(set(out) == set(personas), f"{label}: expected a vector for every persona {sorted(personas)}, got {sorted(out)}"
          + (" (the default persona has an empty system prompt: it must still get a vector)" if "default" not in out else ""))
    _check_vectors(out, {n: [k for k in responses if k[0] == n] for n in personas}, label, fake, responses)

    # scores with the default threshold 3: >= 3 is kept; None (the judge failed) and a missing score are not
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=3)"
    out, warned = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                       scores=scores, label=label)
    if "ghost" not in out:
        fail(f"{label}: 'ghost' has two responses scored exactly 3 but got no vector: a response whose score equals "
             "score_threshold must be kept (score >= threshold, not >)")
    g = lambda *qs: [("ghost", q) for q in qs]  # noqa: E731
    _check_vectors(out, {"ghost": g(0, 2)}, label, fake, responses, candidates={"ghost": {
        "you kept all of them -- keep only those with score >= score_threshold (a missing score or None does not "
        "pass)": g(0, 1, 2, 3),
        "a score of None (the judge failed) should not pass the filter": g(0, 2, 3),
        "a response with no score at all (its key is absent from `scores`) should not pass the filter": g(0, 1, 2),
    }})
    if "analyst" in out:
        fail(f"{label}: no response of 'analyst' has a score >= 3, so it should be skipped (with a warning) "
             "rather than given a vector")
    check(any("analyst" in w for w in warned),
          f"{label}: skipping 'analyst' (no response passed the filter) should raise a warning naming it "
          "(warnings.warn), so the loss is not silent")
    _check_vectors(out, {"default": [("default", q) for q in range(3)]}, label, fake, responses)
    check(set(out) == {"default", "ghost"}, f"{label}: expected vectors for ['default', 'ghost'], got {sorted(out)}")

    # a different threshold is honoured
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=2)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                  scores=scores, score_threshold=2, label=label)
    check(set(out) == set(personas), f"{label}: with threshold 2 every persona has a response that passes; got {sorted(out)} "
          "(use the score_threshold argument, not a hard-coded 3)")
    _check_vectors(out, {"ghost": g(0, 2), "analyst": [("analyst", 1), ("analyst", 3)]}, label, fake, responses)

    # threshold 0: a score of 0 passes (it is a score, not a missing one)
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=0)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                  scores=scores, score_threshold=0, label=label)
    a = lambda *qs: [("analyst", q) for q in qs]  # noqa: E731
    _check_vectors(out, {"analyst": a(0, 1, 2, 3)}, label, fake, responses, candidates={"analyst": {
        "a score of 0 is a score (0 >= 0): test `score is None`, not the score's truth value": a(0, 1, 3)}})
    _check_vectors(out, {"ghost": g(0, 2)}, label, fake, responses, candidates={"ghost": {
        "a None or missing score became 0 (`scores.get(key) or 0`, `scores.get(key, 0)`), which passes threshold 0: "
        "a response the judge did not score never passes": g(0, 1, 2, 3),
        "a None score (the judge failed) became 0, which passes threshold 0: it never passes": g(0, 2, 3),
        "a missing score became 0, which passes threshold 0: a response with no score never passes": g(0, 1, 2),
    }})

    # scores={} (the judge scored nothing): nothing passes -- an empty dict is not None
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores={})"
    out, warned = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                       scores={}, label=label)
    check(set(out) != {"default"}, f"{label}: you kept the default persona's responses, which have no score: the "
                                   "filter applies to every persona alike (judge_roleplay gives the defaults their 3)")
    check(not out, f"{label}: no response has a score, so every persona should be skipped (with a warning), but you "
                   f"returned vectors for {sorted(out)} -- test `scores is None`, not `not scores`: an empty dict of "
                   "scores filters everything out")

    # a persona with no response at all (every generation failed) is skipped with a warning too
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=None) with a persona that has no response"
    more = {**personas, "bard": "You are a wandering bard who sings of old battles."}
    out, warned = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, more, questions, responses, 7, label=label)
    check("bard" not in out, f"{label}: 'bard' has no response, so it should be skipped (with a warning)")
    check(any("bard" in w for w in warned),
          f"{label}: 'bard' is in `personas` but has no response in `responses` (its generations all failed): skipping it "
          "should raise a warning naming it -- loop over `personas`, not only over the names found in `responses`")

    # end to end on a tiny model, with the default persona's empty system prompt
    m, tok = (model, tokenizer) if model is not None else tiny("tiny-gemma2")
    small = {"default": "", "ghost": PERSONAS_SMALL["ghost"]}
    qs = QUESTIONS_SMALL[:2]
    resp = {("default", 0): "I value being useful.", ("default", 1): "I answer questions all day.",
            ("ghost", 0): "I value the silence of the tide.", ("ghost", 1): "I drift between the rooms."}
    label = "extract_persona_vectors on a tiny model"
    with using(fn, extract_response_activations=_ref_extract):
        out = _attempt(fn, m, tok, small, qs, resp, 1, name=label)
    for name in small:
        check(name in out, f"{label}: persona {name!r} is missing" + (" (its system prompt is empty)" if not small[name] else ""))
        keys = [k for k in resp if k[0] == name]
        want = _ref_extract(m, tok, [small[name]] * len(keys), [qs[q] for _, q in keys], [resp[k] for k in keys], 1).mean(0)
        got = expect_tensor(out[name], VECTOR, f"{label}[{name!r}]", d_model=m.config.hidden_size)
        check(torch.allclose(got.float(), want, **_tol(m)),
              f"{label}: the vector of {name!r} is not the mean of its response activations: expected {_show(want)}, "
              f"got {_show(got)}")
    passed("test_extract_persona_vectors")


# ---------------------------------------------------------------------------------------------
# Exercise 1.6 -- cosine similarity matrices


_NAMES = ["oracle", "assistant", "ghost", "analyst", "bard", "editor", "mystic"]
_SIDES = {"oracle": -1.0, "assistant": 1.0, "ghost": -1.1, "analyst": 0.9, "bard": -0.8, "editor": 1.1, "mystic": -0.2}


def _geometry(d: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    """Persona-like vectors: a big shared component plus small structure (two camps and a middle).

    Names are in a non-alphabetical order so that sorting them gives a different order."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g, dtype=torch.float64) * 40 + 25  # not constant across dims
    u = torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    return {n: common + 3 * _SIDES[n] * u + 0.8 * ((i % 3) - 1) * w + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
            for i, n in enumerate(_NAMES)}


def _geometry_bf16(d: int = 64, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Persona-like vectors in bfloat16, as a GPU model gives them: entries of a few hundred that differ
    between personas by a few per cent (below bf16's resolution once subtracted), and an axis (not unit)
    with a component along the shared direction, so projections are large and close together."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g, dtype=torch.float64) * 300 + 100
    u = torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    vectors = {n: (common + 12 * _SIDES[n] * u + 4 * ((i % 3) - 1) * w + 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
                   ).to(torch.bfloat16) for i, n in enumerate(_NAMES)}
    axis = (2.5 * (_unit(common) + 0.3 * _unit(u))).to(torch.bfloat16)
    return vectors, axis


def _cos_matrix(X: torch.Tensor) -> torch.Tensor:
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T


def _check_sim(out, vectors, expected_fn, label: str, centred: bool, atol: float = 1e-4) -> None:
    check(isinstance(out, tuple) and len(out) == 2, f"{label} should return (sim, names), got {type(out).__name__}")
    sim, names = out
    n = len(vectors)
    expect_tensor(sim, SIMILARITY, f"{label}: sim", n_personas=n)
    sim = sim.detach().double().cpu()
    names = list(names)
    check(sorted(names) == sorted(vectors), f"{label}: names should be the persona names {sorted(vectors)}, got {names}")
    X = torch.stack([vectors[k].double() for k in names])
    want = expected_fn(X)
    if names != list(vectors):
        in_dict_order = expected_fn(torch.stack([vectors[k].double() for k in vectors]))
        if torch.allclose(sim, in_dict_order, atol=atol) and not torch.allclose(sim, want, atol=atol):
            fail(f"{label}: the rows of sim are in the order of `vectors` but names is in another order: "
                 "row i and column i must belong to names[i]")
        fail(f"{label}: names should be list(vectors), in the dict's order {list(vectors)}, got {names} -- don't sort "
             "the names: the caller orders the dict (group by group, so the heatmap shows blocks)")
    if torch.allclose(sim, want, atol=atol):
        return
    numbers = f"max abs difference {(sim - want).abs().max().item():.3g}; sim[0, 1] expected {want[0, 1].item():.5f}, got {sim[0, 1].item():.5f}"
    in_dict_order = expected_fn(torch.stack([vectors[k].double() for k in vectors]))
    if names != list(vectors) and torch.allclose(sim, in_dict_order, atol=atol):
        fail(f"{label}: the rows of sim are in the order of `vectors` but names is in another order: "
             "row i and column i must belong to names[i]")
    if next(iter(vectors.values())).dtype in (torch.bfloat16, torch.float16):  # right on float32 vectors, wrong here
        fail(f"{label}: on bf16 vectors your result is off by up to {(sim - want).abs().max().item():.2g}: you computed in "
            f"bf16; convert the vectors to float32 first (.float()) ({numbers})")
    if not torch.allclose(torch.diagonal(sim), torch.ones(n, dtype=torch.float64), atol=max(atol, 1e-3)):
        fail(f"{label}: the diagonal should be 1 (a vector's cosine with itself), got {_show(torch.diagonal(sim))}: "
             "normalise each vector (dot products are not cosine similarities)")
    if centred:
        if torch.allclose(sim, _cos_matrix(X), atol=atol):
            fail(f"{label}: this is the raw cosine matrix: subtract the mean persona vector (over personas) first")
        if torch.allclose(sim, _cos_matrix(X - X.mean(dim=1, keepdim=True)), atol=atol):
            fail(f"{label}: you centred each vector by its own mean over dimensions; subtract the mean *vector* "
                 "over personas (mean over dim 0)")
        if torch.allclose(sim, _cos_matrix(X - X.mean()), atol=atol):
            fail(f"{label}: you subtracted one number (the mean of all entries); subtract the mean *vector* over "
                 "personas, X.mean(dim=0)")
    elif torch.allclose(sim, _cos_matrix(X - X.mean(dim=0, keepdim=True)), atol=atol):
        fail(f"{label}: the raw matrix should not be centred (that is compute_cosine_similarity_matrix_centered's job)")
    fail(f"{label}: sim[i, j] should be the cosine similarity of the vectors of names[i] and names[j] ({numbers})")


def _ref_cosine_matrix(vectors):
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    return _cos_matrix(X), names


def test_compute_cosine_similarity_matrix(compute_cosine_similarity_matrix) -> None:
    vectors = _geometry()
    label = "compute_cosine_similarity_matrix"
    out = _attempt(compute_cosine_similarity_matrix, vectors, name=label)
    _check_sim(out, vectors, _cos_matrix, label, centred=False)
    out = _attempt(compute_cosine_similarity_matrix, {k: v.float() for k, v in vectors.items()}, name=label)
    _check_sim(out, {k: v.float() for k, v in vectors.items()}, _cos_matrix, label + " (float32 vectors)", centred=False)
    sim = out[0].detach().double()
    low, _ = _geometry_bf16()
    out = _attempt(compute_cosine_similarity_matrix, low, name=label)
    _check_sim(out, low, _cos_matrix, label + " (bf16 vectors)", centred=False, atol=2e-5)
    passed("test_compute_cosine_similarity_matrix", f"on the test's vectors, which share a big component like real persona means, raw cosines are all >= {float(sim.min()):.3f}")


def test_compute_cosine_similarity_matrix_centered(compute_cosine_similarity_matrix_centered) -> None:
    label = "compute_cosine_similarity_matrix_centered"
    centre = lambda X: _cos_matrix(X - X.mean(dim=0, keepdim=True))  # noqa: E731
    low, _ = _geometry_bf16()
    with using(compute_cosine_similarity_matrix_centered, compute_cosine_similarity_matrix=_ref_cosine_matrix):
        vectors = _geometry()
        out = _attempt(compute_cosine_similarity_matrix_centered, vectors, name=label)
        check(all(torch.equal(vectors[k], v) for k, v in _geometry().items()),
              f"{label} modified the vectors passed in: centre a copy")
        _check_sim(out, vectors, centre, label, centred=True)
        out16 = _attempt(compute_cosine_similarity_matrix_centered, dict(low), name=label)
        _check_sim(out16, low, centre, label + " (bf16 vectors)", centred=True, atol=1e-3)
    sim, names = out
    sim = sim.detach().double()
    i, j = names.index("assistant"), names.index("oracle")
    passed("test_compute_cosine_similarity_matrix_centered",
           f"on the test's vectors, after centring, cos(assistant, oracle) = {float(sim[i, j]):+.2f}")


def _undirected(d: int = 16) -> list[tuple[str, torch.Tensor]]:
    """Vectors with no direction: what a broken extraction or an empty layer gives."""
    nan = torch.randn(d)
    nan[3] = float("nan")
    inf = torch.randn(d)
    inf[0] = float("inf")
    return [("a zero vector", torch.zeros(d)), ("a vector holding NaN", nan), ("a vector holding inf", inf)]


def test_compute_cosine_similarity_matrix_input_checks(compute_cosine_similarity_matrix) -> None:
    label = "compute_cosine_similarity_matrix"
    expect_value_error(compute_cosine_similarity_matrix, {}, name=label, what="an empty dict (no vectors)")
    for what, bad in _undirected():
        expect_value_error(compute_cosine_similarity_matrix, {"calm": torch.randn(16), "broken": bad}, name=label,
                           what=f"{what} (it has no direction, so no cosine: returning 0 or NaN hides the problem)")
    passed("test_compute_cosine_similarity_matrix_input_checks")


def test_compute_cosine_similarity_matrix_centered_input_checks(compute_cosine_similarity_matrix_centered) -> None:
    label = "compute_cosine_similarity_matrix_centered"
    with using(compute_cosine_similarity_matrix_centered, compute_cosine_similarity_matrix=_ref_cosine_matrix_checked):
        expect_value_error(compute_cosine_similarity_matrix_centered, {}, name=label, what="an empty dict (no vectors)")
        expect_value_error(compute_cosine_similarity_matrix_centered, {"only": torch.randn(16)}, name=label,
                           what="a single vector (centred, it is the zero vector)")
        for what, bad in _undirected()[1:]:
            expect_value_error(compute_cosine_similarity_matrix_centered, {"calm": torch.randn(16), "broken": bad},
                               name=label, what=what)
        twin = torch.randn(16)
        expect_value_error(compute_cosine_similarity_matrix_centered, {"calm": twin, "twin": twin.clone()}, name=label,
                           what="two identical vectors (centred, both are zero: check the centred vectors for a zero "
                           "one, not only the vectors passed in)")
    passed("test_compute_cosine_similarity_matrix_centered_input_checks")


def _ref_cosine_matrix_checked(vectors):
    """The course's raw cosine matrix with its input checks, for the centred version to call."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[k].double() for k in names])
    if not bool(torch.isfinite(X).all()) or not bool(X.any(dim=1).all()):
        raise ValueError("a vector is zero or holds NaN/inf")
    return _cos_matrix(X), names


# ---------------------------------------------------------------------------------------------
# Exercise 1.7 -- PCA and the Assistant Axis


def _pca_reference(X: torch.Tensor, centre: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    Xc = X - X.mean(0, keepdim=True) if centre else X
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    coords = Xc @ Vh[:2].T
    var = S**2 / (S**2).sum()
    return coords, var[:2], Vh[:2]


def _same_up_to_sign(a: torch.Tensor, b: torch.Tensor, atol=1e-6) -> bool:
    if a.shape != b.shape:
        return False
    for k in range(a.shape[1]):
        s = 1.0 if float(a[:, k] @ b[:, k]) >= 0 else -1.0
        if not torch.allclose(a[:, k] * s, b[:, k], atol=atol, rtol=1e-5):
            return False
    return True


def test_pca_decompose_persona_vectors(pca_decompose_persona_vectors) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    defaults = ["assistant", "editor"]
    label = "pca_decompose_persona_vectors"
    out = _attempt(pca_decompose_persona_vectors, vectors, defaults, name=label)
    check(isinstance(out, tuple) and len(out) == 3, f"{label} should return (assistant_axis, pca_coords, pca), got {type(out).__name__}")
    axis, coords, pca = out
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    d = X.shape[1]
    axis = expect_tensor(axis, VECTOR, f"{label}: assistant_axis", d_model=d).detach().double().cpu()
    d_mean = torch.stack([vectors[k].double() for k in defaults]).mean(0)
    roles = [k for k in names if k not in defaults]
    r_mean = torch.stack([vectors[k].double() for k in roles]).mean(0)
    want = _unit(d_mean - r_mean)
    ref_coords, ref_var, ref_pcs = _pca_reference(X)
    if not torch.allclose(axis, want, atol=1e-4):
        numbers = f"expected {_show(want)}, got {_show(axis)}"
        if torch.allclose(axis, -want, atol=1e-4):
            fail(f"{label}: the axis points the wrong way: it is mean(default) - mean(roles), pointing *toward* the Assistant")
        if torch.allclose(_unit(axis), want, atol=1e-4):
            fail(f"{label}: the axis has the right direction but norm {axis.norm().item():.3g}: normalise it to unit length")
        if torch.allclose(_unit(axis).abs(), ref_pcs[0].abs(), atol=1e-4):
            fail(f"{label}: assistant_axis is PC1; the axis is the difference of means, mean(defaults) - mean(roles), "
                 f"normalised ({numbers})")
        fail(f"{label}: assistant_axis should be (mean(default vectors) - mean(role vectors)) / its norm ({numbers})")
    check(hasattr(pca, "explained_variance_ratio_") and hasattr(pca, "components_"),
          f"{label}: the third value should be the fitted sklearn PCA, got {type(pca).__name__}")
    if isinstance(coords, np.ndarray):
        coords = torch.from_numpy(np.ascontiguousarray(coords))
    coords = expect_tensor(coords, PCA_COORDS, f"{label}: pca_coords", n_personas=len(names)).detach().double().cpu()
    if not _same_up_to_sign(coords, ref_coords, atol=1e-3):
        for perm_name, order in (("sorted by name", sorted(names)),
                                 ("defaults first", defaults + [n for n in names if n not in defaults])):
            idx = [names.index(n) for n in order]
            if _same_up_to_sign(coords, ref_coords[idx], atol=1e-3) and order != names:
                fail(f"{label}: pca_coords rows are {perm_name}; row i must be the persona list(vectors)[i]")
        if _same_up_to_sign(coords, _pca_reference(X, centre=False)[0], atol=1e-3):
            fail(f"{label}: the PCA was run on uncentred data: subtract the mean persona vector first (sklearn's PCA does)")
        fail(f"{label}: pca_coords should be the projections of every persona (defaults and roles, {len(names)} rows) "
             "onto the first two principal components of all persona vectors -- fit the PCA on all personas, not only "
             f"the roles (pca_coords[:, 0] expected {_show(ref_coords[:, 0], 4)} up to sign, got {_show(coords[:, 0], 4)})")
    ratio = np.asarray(pca.explained_variance_ratio_, dtype=float)
    check(ratio.shape[0] >= 2 and np.allclose(ratio[:2], ref_var.numpy(), atol=1e-4),
          f"{label}: the PCA's explained_variance_ratio_ {ratio[:2]} does not match a PCA of all persona vectors {ref_var.numpy()}")
    check(np.asarray(pca.components_).shape[0] == 2,
          f"{label}: the PCA has {np.asarray(pca.components_).shape[0]} components; fit PCA(n_components=2) (the notebook "
          "uses pca.components_ as the two PCs of the plot)")
    pcs = torch.as_tensor(np.asarray(pca.components_, dtype=float))[:2]
    check(pcs.shape == ref_pcs.shape and torch.allclose((pcs * ref_pcs).sum(1).abs(), torch.ones(2, dtype=torch.float64), atol=1e-3),
          f"{label}: the PCA's components_ are not the principal components of all persona vectors")
    own = (X - X.mean(0, keepdim=True)) @ pcs.T  # pca.transform(X): the coordinates along the returned PCs, signs included
    if not torch.allclose(coords, own, atol=1e-3):
        fail(f"{label}: pca_coords are not the coordinates of the returned PCA (pca.transform(X)): a column's sign "
             "is flipped or the coordinates come from another fit -- the notebook orients each PC with "
             "pca.components_, so return the coordinates of that same fitted PCA (fit_transform)")
    passed("test_pca_decompose_persona_vectors",
           f"on the test's vectors: PC1 explains {ratio[0]:.0%}, |cos(axis, PC1)| = {abs(float(_unit(pcs[0]) @ axis)):.2f}")


def test_pca_decompose_persona_vectors_input_checks(pca_decompose_persona_vectors) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    expect_value_error(pca_decompose_persona_vectors, vectors, ["assistant", "not_a_persona"],
                       name="pca_decompose_persona_vectors",
                       what="an unknown default persona name (it has no vector: a typo would silently shift the axis)")
    passed("test_pca_decompose_persona_vectors_input_checks")


# ---------------------------------------------------------------------------------------------
# Exercise 1.8 -- projections onto the axis


def _check_projections(out, vectors, axis, label, tol) -> None:
    names = list(vectors)
    check(isinstance(out, dict), f"{label} should return a dict name -> projection, got {type(out).__name__}")
    check(set(out) == set(names), f"{label}: expected a projection for every persona {sorted(names)}, got {sorted(out)}")
    for k, v in out.items():
        check(isinstance(v, float), f"{label}: projections should be Python floats (use float(...)), got {type(v).__name__} for {k!r}")
    A = {k: vectors[k].double() for k in names}
    v = axis.double()
    want = {k: float(A[k] @ v / v.norm()) for k in names}
    mean = torch.stack(list(A.values())).mean(0)
    low = axis.dtype in (torch.bfloat16, torch.float16)
    for k in names:
        scale = tol * (1 + A[k].norm().item())
        if abs(out[k] - want[k]) <= scale:
            continue
        numbers = f"expected {want[k]:.6g}, got {out[k]:.6g}"
        if low and abs(out[k] - want[k]) <= 1e-2 * (1 + abs(want[k])):
            fail(f"{label}[{k!r}] is off by {abs(out[k] - want[k]):.3g} on bf16 vectors: you computed in bf16; convert "
                 f"the vectors and the axis to float32 first (.float()) ({numbers})")
        if abs(out[k] + want[k]) <= scale:
            fail(f"{label}: the sign is flipped for {k!r}: the projection is a·v/‖v‖ with v the axis ({numbers})")
        if abs(out[k] - want[k] * v.norm().item()) <= scale * v.norm().item():
            fail(f"{label}: the projection of {k!r} is a·v, not divided by ‖v‖ (the axis given here has norm "
                 f"{v.norm().item():.3g}) ({numbers})")
        if abs(out[k] - want[k] / v.norm().item()) <= scale:
            fail(f"{label}: the projection of {k!r} is divided by ‖v‖²: that is the coefficient of the projected vector; "
                 f"the projection a·v/‖v‖ divides by ‖v‖ once ({numbers})")
        if abs(out[k] - want[k] / A[k].norm().item()) <= 1e-3:
            fail(f"{label}: you computed the cosine (dividing by ‖a‖ too); the projection a·v/‖v‖ keeps activation units ({numbers})")
        if abs(out[k] - float((A[k] - mean) @ v / v.norm())) <= scale:
            fail(f"{label}: you subtracted the mean persona vector before projecting; project the vectors as given ({numbers})")
        fail(f"{label}[{k!r}] should be a·v/‖v‖ ({numbers})")
    order = list(out)
    check(order == sorted(names, key=lambda k: want[k], reverse=True),
          f"{label}: the dict should be sorted from the highest projection (most Assistant-like) to the lowest; got {order}")


def test_project_personas_onto_axis(project_personas_onto_axis) -> None:
    vectors = {k: v.float() for k, v in _geometry().items()}
    names = list(vectors)
    X = torch.stack([vectors[k].double() for k in names])
    u = _unit(torch.stack([vectors[k].double() for k in ("assistant", "editor")]).mean(0) - X.mean(0))
    axis = (3.0 * u).float()  # deliberately not unit length
    label = "project_personas_onto_axis"
    out = _attempt(project_personas_onto_axis, vectors, axis, name=label)
    _check_projections(out, vectors, axis, label, 1e-5)
    low, low_axis = _geometry_bf16()
    out = _attempt(project_personas_onto_axis, dict(low), low_axis, name=label)
    _check_projections(out, low, low_axis, label + " (bf16 vectors and axis)", 1e-5)
    passed("test_project_personas_onto_axis")


def test_project_personas_onto_axis_input_checks(project_personas_onto_axis) -> None:
    label = "project_personas_onto_axis"
    vectors = {"calm": torch.randn(16), "bold": torch.randn(16)}
    for what, bad in _undirected():
        expect_value_error(project_personas_onto_axis, vectors, bad, name=label,
                           what=f"an axis that is {what.split(' ', 1)[1]} (there is no direction to project onto)")
    expect_value_error(project_personas_onto_axis, {"per_layer": torch.randn(4, 16)}, torch.randn(16), name=label,
                       what="a vector whose shape differs from the axis (a [num_layers, d_model] tensor: select a layer first)")
    expect_value_error(project_personas_onto_axis, {"calm": torch.randn(16), "row": torch.randn(1, 16)}, torch.randn(16),
                       name=label, what="a vector of shape [1, d_model] against an axis of shape [d_model] (a row kept "
                       "2-D, X[i:i+1]: `a @ v` still gives one number, so compare a.shape with the axis's shape)")
    passed("test_project_personas_onto_axis_input_checks")


# ---------------------------------------------------------------------------------------------
# Exercise 1.9 -- ranking vectors by cosine with the axis


def _traits(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    d = 32
    axis = torch.randn(d, generator=g) * 4
    u = axis / axis.norm()
    # traits at known cosines with very different norms, so a dot product ranks them differently
    traits = {}
    for name, cos, norm in (("calm", 0.8, 1.0), ("theatrical", -0.7, 50.0), ("precise", 0.5, 30.0),
                            ("mystical", -0.2, 2.0), ("playful", 0.1, 80.0)):
        r = torch.randn(d, generator=g)
        r = r - (r @ u) * u
        r = r / r.norm()
        traits[name] = ((cos * u + (1 - cos**2) ** 0.5 * r) * norm).to(dtype)
    return traits, axis.to(dtype)


def _check_ranking(out, traits, axis, label, tol) -> None:
    check(isinstance(out, list), f"{label} should return a list of (name, cosine) pairs, got {type(out).__name__}")
    check(all(isinstance(p, tuple) and len(p) == 2 for p in out), f"{label}: each item should be a (name, cosine) tuple")
    check(sorted(n for n, _ in out) == sorted(traits), f"{label}: expected one entry per vector {sorted(traits)}, got {[n for n, _ in out]}")
    for n, c in out:
        check(isinstance(c, float), f"{label}: cosines should be Python floats, got {type(c).__name__} for {n!r}")
    a = axis.double()
    want = {n: float(torch.nn.functional.cosine_similarity(v.double(), a, dim=0)) for n, v in traits.items()}
    low = axis.dtype in (torch.bfloat16, torch.float16)
    for n, c in out:
        if abs(c - want[n]) <= tol:
            continue
        numbers = f"expected {want[n]:+.6f}, got {c:+.6f}"
        if low and abs(c - want[n]) <= 2e-2:
            fail(f"{label}: the cosine of {n!r} is off by {abs(c - want[n]):.2g} on bf16 vectors: you computed in bf16; "
                 f"convert to float32 first (.float()) ({numbers})")
        if abs(c - abs(want[n])) <= tol:
            fail(f"{label}: the value for {n!r} is the absolute value of its cosine; keep the sign (a negative cosine "
                 f"points away from the Assistant) ({numbers})")
        if abs(c - float(traits[n].double() @ a / a.norm())) <= 1e-3 * (1 + abs(c)):
            fail(f"{label}: the value for {n!r} is a projection (divided by the axis norm only); a cosine divides by both norms ({numbers})")
        if abs(c - float(traits[n].double() @ a)) <= 1e-3 * (1 + abs(c)):
            fail(f"{label}: the value for {n!r} is a dot product; a cosine divides by both norms ({numbers})")
        fail(f"{label}: cosine of {n!r} with the axis: {numbers}")
    check([n for n, _ in out] == sorted(traits, key=lambda n: want[n], reverse=True),
          f"{label}: the list should be sorted by cosine, highest first; got {[n for n, _ in out]}")


def test_rank_by_cosine(rank_by_cosine) -> None:
    label = "rank_by_cosine"
    traits, axis = _traits()
    out = _attempt(rank_by_cosine, traits, axis, name=label)
    _check_ranking(out, traits, axis, label, 1e-4)
    traits16, axis16 = _traits(torch.bfloat16)
    out = _attempt(rank_by_cosine, traits16, axis16, name=label)
    _check_ranking(out, traits16, axis16, label + " (bf16 vectors)", 1e-4)
    passed("test_rank_by_cosine")


def test_rank_by_cosine_input_checks(rank_by_cosine) -> None:
    traits, axis = _traits()
    d = axis.shape[0]
    for what, v in (("a [num_layers, d_model] tensor where one layer's row was meant: select a layer first", torch.randn(4, d)),
                    (f"a vector of length {d // 2} against an axis of length {d}", torch.randn(d // 2)),
                    ("a [1, d_model] row kept 2-D, X[i:i+1]: compare the shapes, not the number of entries", torch.randn(1, d))):
        expect_value_error(rank_by_cosine, {"calm": traits["calm"], "bad": v}, axis, name="rank_by_cosine",
                           what=f"a vector whose shape differs from the axis ({what})")
    for what, bad in _undirected(d):
        expect_value_error(rank_by_cosine, {"calm": traits["calm"]}, bad, name="rank_by_cosine",
                           what=f"an axis that is {what.split(' ', 1)[1]} (a cosine with it is undefined)")
        expect_value_error(rank_by_cosine, {"calm": traits["calm"], "broken": bad}, axis, name="rank_by_cosine",
                           what=f"{what} among the vectors (a cosine with it is undefined)")
    passed("test_rank_by_cosine_input_checks")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
