"""Exercise 1.2 — Every persona, every question, concurrently

Test of generate_all_responses, run against a recording stand-in for generate_response.
"""

from __future__ import annotations

import threading
import time

from part_tests._common import check, exercise, fail, passed, using
from part_tests.properties import braces_text, for_all, st
from part_tests.section1._shared import PERSONAS_SMALL, QUESTIONS_SMALL, _attempt


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


@exercise("1.2", "generate_all_responses")
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

    # property: one or a few personas (an empty prompt among them), one or a few questions (repeats, braces and
    # placeholders in the text), any max_workers and max_tokens
    def one_run(case):
        prompts, qs, workers, tokens = case
        people = {f"p{i}": prompt for i, prompt in enumerate(prompts)}
        rec = _RecordingGenerator(slow=0.004, fast=0.001)
        with using(generate_all_responses, generate_response=rec):
            got = _attempt(generate_all_responses, people, qs, max_tokens=tokens, max_workers=workers,
                           name="generate_all_responses")
        _check_responses(got, people, qs, tokens, rec)
        check(rec.max_in_flight <= workers, f"{rec.max_in_flight} calls ran at once with max_workers={workers}: use "
                                            "max_workers for the pool size")

    prompt = st.one_of(st.just(""), braces_text())
    for_all(st.tuples(st.lists(prompt, min_size=1, max_size=3), st.lists(braces_text(), min_size=1, max_size=4),
                      st.integers(1, 3), st.sampled_from([1, 7, 64])),
            one_run, name="generate_all_responses", examples=6)
    passed("test_generate_all_responses", f"{len(result)} responses, up to {fake.max_in_flight} calls in flight")
