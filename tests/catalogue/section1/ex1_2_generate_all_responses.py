"""Exercise 1.2 — Every persona, every question, concurrently

Wrong generate_all_responses. They call `generate_response` from this module's globals, which the test
replaces with its recording stand-in.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import factory


@mistake("test_generate_all_responses", "concurrently")
def gen_sequential(personas, questions, max_tokens=256, max_workers=10):
    return {(n, q): generate_response(p, qq, max_tokens) for n, p in personas.items() for q, qq in enumerate(questions)}  # noqa: F821


@mistake("test_generate_all_responses", "mixed up")
def gen_as_completed_zip(personas, questions, max_tokens=256, max_workers=10):
    keys = [(n, q) for n in personas for q in range(len(questions))]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = [pool.submit(generate_response, personas[n], questions[q], max_tokens) for n, q in keys]  # noqa: F821
        return {key: fut.result() for key, fut in zip(keys, as_completed(futures))}


@mistake("test_generate_all_responses", "max_tokens")
def gen_no_max_tokens(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, p, qq): (n, q)  # noqa: F821
                   for n, p in personas.items() for q, qq in enumerate(questions)}
        return {key: f.result() for f, key in futures.items()}


@mistake("test_generate_all_responses", "late binding")
def gen_late_binding(personas, questions, max_tokens=256, max_workers=10):
    """A lambda per pair, submitted in the loop: it reads sp and qq when it runs, by then later values."""
    futures = {}
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        for n, sp in personas.items():
            for q, qq in enumerate(questions):
                futures[pool.submit(lambda: generate_response(sp, qq, max_tokens))] = (n, q)  # noqa: B023, F821
        return {key: f.result() for f, key in futures.items()}


@factory
def _gen_keyed(key_fn, workers=None, q_offset=0):
    def wrong(personas, questions, max_tokens=256, max_workers=10):
        with ThreadPoolExecutor(max_workers=workers or max_workers) as pool:
            futures = {pool.submit(generate_response, p, qq, max_tokens): key_fn(n, p, q + q_offset, qq)  # noqa: F821
                       for n, p in personas.items() for q, qq in enumerate(questions)}
            return {key: f.result() for f, key in futures.items()}
    return wrong


def _key_by_prompt(n, p, q, qq):
    return (p, q)


gen_keyed_by_prompt = _gen_keyed(_key_by_prompt)
mistake("test_generate_all_responses", "not its system prompt")(gen_keyed_by_prompt)


def _key_swapped(n, p, q, qq):
    return (q, n)


gen_keys_swapped = _gen_keyed(_key_swapped)
mistake("test_generate_all_responses", "in that order")(gen_keys_swapped)


def _key_by_question_text(n, p, q, qq):
    return (n, qq)


gen_keyed_by_question_text = _gen_keyed(_key_by_question_text)
mistake("test_generate_all_responses", "index")(gen_keyed_by_question_text)


def _key(n, p, q, qq):
    return (n, q)


gen_one_based = _gen_keyed(_key, q_offset=1)
mistake("test_generate_all_responses", "counts from 0")(gen_one_based)


gen_ignores_max_workers = _gen_keyed(_key, workers=32)
mistake("test_generate_all_responses", "max_workers")(gen_ignores_max_workers)


@mistake("test_generate_all_responses", "persona's name")
def gen_passes_name(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, n, qq, max_tokens): (n, q)  # noqa: F821
                   for n in personas for q, qq in enumerate(questions)}
        return {key: f.result() for f, key in futures.items()}


@mistake("test_generate_all_responses", "swapped")
def gen_args_swapped(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, qq, p, max_tokens): (n, q)  # noqa: F821
                   for n, p in personas.items() for q, qq in enumerate(questions)}
        return {key: f.result() for f, key in futures.items()}


@mistake("test_generate_all_responses", "questions.index")
def gen_index_lookup(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, p, qq, max_tokens): (n, questions.index(qq))  # noqa: F821
                   for n, p in personas.items() for qq in questions}
        return {key: f.result() for f, key in futures.items()}


@correct("test_generate_all_responses")
def alt_gen_map(personas, questions, max_tokens=256, max_workers=10):
    keys = [(n, q) for n in personas for q in range(len(questions))]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        texts = pool.map(lambda k: generate_response(personas[k[0]], questions[k[1]], max_tokens), keys)  # noqa: F821
        return dict(zip(keys, texts))


@correct("test_generate_all_responses")
def alt_gen_as_completed(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, system_prompt=p, question=qq, max_tokens=max_tokens): (n, q)  # noqa: F821
                   for n, p in personas.items() for q, qq in enumerate(questions)}
        return {futures[f]: f.result() for f in as_completed(futures)}


@correct("test_generate_all_responses")
def alt_gen_persona_by_persona(personas, questions, max_tokens=256, max_workers=10):
    """One pool, persona after persona: each persona's questions run concurrently, then the next persona's."""
    out = {}
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        for name, prompt in personas.items():
            texts = list(pool.map(lambda qq: generate_response(prompt, qq, max_tokens), questions))  # noqa: F821, B023
            out.update({(name, q): text for q, text in enumerate(texts)})
    return out
