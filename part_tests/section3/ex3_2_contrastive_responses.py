"""Exercise 3.2 — Generating contrastive responses

`generate_contrastive_responses` is run with a fake `generate` that answers each prompt with a digest of it
(so every record's response can be traced back to its prompt), then once with the real `generate` on the tiny
model, counting forward passes. Then a property: trait data of one to three instruction pairs and questions whose
text holds braces and placeholders, each record checked against the prompt it must come from.
"""

from __future__ import annotations

import copy
import hashlib

import torch

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    exercise,
    fail,
    hook_guard,
    model_or_tiny,
    passed,
    require_implemented,
    using,
)
from part_tests.properties import for_all, st
from part_tests.section3._fakes import AWKWARD_TEXTS, _direct, _guarded, _prompt_key, _system_prompt


NEG_NAME = "helpful"


TINY_TRAIT = {
    "instruction": [
        {"pos": "Be cruel and cold in every answer.", "neg": "Be warm and kind in every answer."},
        {"pos": "Mock the user whenever you can.", "neg": "Respect the user at all times."},
    ],
    "questions": ["What is a good friend?", "How do I fix a flat bike tyre?", "Why is the sky blue?"],
    "eval_prompt": "Rate the trait.\n{question}\n{answer}",
}


def _fake_answer(prompt) -> str:
    return "answer-" + hashlib.sha1(_prompt_key(prompt).encode()).hexdigest()[:12]


def _expected_answers(record, tokenizer) -> set[str]:
    from utils.chat import build_messages, format_prompt

    msgs = build_messages(record["system_prompt"], record["question"])
    return {_fake_answer(msgs), _fake_answer(format_prompt(msgs, tokenizer))}


def _check_generation_prompts(prompts, records, tokenizer) -> None:
    """Every prompt sent to generate is build_messages(system_prompt, question) of one record (or its
    formatted text), each record's once."""
    from utils.chat import build_messages, format_prompt

    wanted = {}
    for r in records:
        msgs = build_messages(r["system_prompt"], r["question"])
        wanted[_prompt_key(msgs)] = wanted[format_prompt(msgs, tokenizer)] = (r["system_prompt"], r["question"])
    questions = {r["question"] for r in records}
    for prompt in prompts:
        if _prompt_key(prompt) in wanted:
            continue
        shown = _prompt_key(prompt)[:160]
        if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
            roles = [m.get("role") for m in prompt]
            if "system" not in roles and any(m.get("content") in questions for m in prompt):
                fail(f"generate got the prompt {shown}: it has no system prompt; build each chat with "
                     "build_messages(system_prompt, question) so that the instruction reaches the model")
            if roles == ["user"] and any(sp in prompt[0].get("content", "") for sp, _ in wanted.values()):
                fail(f"generate got the prompt {shown}: the system prompt was merged into the user message by hand; "
                     "use build_messages(system_prompt, question) (it keeps the system role; the chat template "
                     "merges only where the model has no system role)")
        fail(f"generate got the prompt {shown}, which is not build_messages(system_prompt, question) of any record")
    seen = [wanted[_prompt_key(p)] for p in prompts]
    check(len(set(seen)) == len(seen), "generate got the same (system prompt, question) twice: one prompt per record")


@st.composite
def _awkward_trait(draw):
    """One to three instruction pairs and questions, all distinct, written with braces and template words."""
    texts = st.lists(st.sampled_from(AWKWARD_TEXTS), min_size=1, max_size=3, unique=True)
    pos, neg, questions = draw(texts), draw(texts), draw(texts)
    n = min(len(pos), len(neg))
    return {"instruction": [{"pos": "Be {" + p, "neg": n_ + " {answer}"} for p, n_ in zip(pos[:n], neg[:n])],
            "questions": [q + "?" for q in questions], "eval_prompt": "{question} {answer}"}


def _check_awkward(fn, model, tokenizer, trait_data) -> None:
    sent = []

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        sent.extend(prompts)
        return [_fake_answer(p) for p in prompts]

    given = copy.deepcopy(trait_data)
    where = f" (instructions {trait_data['instruction']!r}, questions {trait_data['questions']!r})"
    with using(fn, generate=fake_generate, construct_system_prompt=_system_prompt):
        try:
            records = _direct(fn, model, tokenizer, given, "cruel", max_new_tokens=4, temperature=0.5,
                              name="generate_contrastive_responses")
        except (NotImplementedYet, AssertionError):
            raise
        except Exception as err:
            raise AssertionError(f"generate_contrastive_responses raised {type(err).__name__} ({err}){where}: braces in an "
                                 "instruction or a question are text, not placeholders; pass them to "
                                 "construct_system_prompt and build_messages as they are (no .format on them)") from err
    n_pairs, n_q = len(trait_data["instruction"]), len(trait_data["questions"])
    want = sorted((i, pol, q, _system_prompt("cruel" if pol == "pos" else NEG_NAME, pair[pol]))
                  for i, pair in enumerate(trait_data["instruction"]) for q in trait_data["questions"]
                  for pol in ("pos", "neg"))
    check(isinstance(records, list) and len(records) == len(want),
          f"with {n_pairs} instruction pair(s) and {n_q} question(s) expected {len(want)} records, got "
          f"{len(records) if isinstance(records, list) else type(records).__name__}{where}: every question under every "
          "pair, pos and neg, whatever the counts (one of each too)")
    got = sorted((r.get("instruction_idx"), r.get("polarity"), r.get("question"), r.get("system_prompt")) for r in records)
    if got != want:
        bad = next(g for g, w in zip(got, want) if g != w)
        fail(f"a record has (instruction_idx, polarity, question, system_prompt) = {bad!r}, which is not one of the "
             f"expected ones{where}: keep each instruction and question exactly as given (braces are text) and "
             "build the system prompt with construct_system_prompt(name, instruction)")
    from utils.chat import build_messages

    for r in records:
        if r.get("response") == _fake_answer(build_messages(r["system_prompt"], r["question"])):
            continue  # the chat itself was sent (formatting it is the other way, checked next)
        check(r.get("response") in _expected_answers(r, tokenizer),
              f"a record's response is not the answer to its own prompt build_messages(system_prompt, question){where}: "
              "send every record's prompt, text as given, and zip the answers back in order")


@exercise("3.2", "generate_contrastive_responses")
def test_generate_contrastive_responses(generate_contrastive_responses, model=None, tokenizer=None) -> None:
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(generate_contrastive_responses, "generate_contrastive_responses")
    calls = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens=256, temperature=0.0, top_p=1.0,
                      batch_size=32, seed=None, progress=False):
        calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens, "temperature": temperature,
                      "batch_size": batch_size})
        return [_fake_answer(p) for p in prompts]

    trait = "cruel"
    given = copy.deepcopy(TINY_TRAIT)
    with using(generate_contrastive_responses, generate=fake_generate, construct_system_prompt=_system_prompt):
        records = call(generate_contrastive_responses, model, tokenizer, given, trait,
                       max_new_tokens=7, temperature=0.9, name="generate_contrastive_responses")
    check(given == TINY_TRAIT, "generate_contrastive_responses changed the trait_data it was given (its keys, "
                               "instructions or questions): read it, do not modify it (the notebook reuses it)")

    n_expected = len(TINY_TRAIT["instruction"]) * len(TINY_TRAIT["questions"]) * 2
    check(len(calls) > 0, "generate_contrastive_responses never called `generate(model, tokenizer, prompts, ...)` "
                          "(the function imported in the setup cell): generate every answer with it, in one call")
    check(len(calls) == 1, f"generate was called {len(calls)} times: build all {n_expected} prompts first and "
                           "generate them with one call (it batches them for you), not one call per prompt or pair")
    check(len(calls[0]["prompts"]) == n_expected,
          f"the generate call got {len(calls[0]['prompts'])} prompts; expected {n_expected} "
          "(every question under every instruction pair, pos and neg)")
    check(calls[0]["temperature"] == 0.9 and calls[0]["max_new_tokens"] == 7,
          "pass max_new_tokens and temperature through to generate (called with max_new_tokens=7, temperature=0.9, "
          f"generate got max_new_tokens={calls[0]['max_new_tokens']}, temperature={calls[0]['temperature']})")
    check(isinstance(records, list), f"generate_contrastive_responses should return a list of dicts, got {type(records).__name__}")
    check(len(records) == n_expected,
          f"expected {len(TINY_TRAIT['instruction'])} pairs x {len(TINY_TRAIT['questions'])} questions x 2 polarities "
          f"= {n_expected} records, got {len(records)}")
    for r in records:
        check(isinstance(r, dict), "each record should be a dict")
        missing = {"question", "system_prompt", "response", "instruction_idx", "polarity", "sampling"} - set(r)
        check(not missing, f"a record is missing the key(s) {sorted(missing)}")
    check({r["polarity"] for r in records} == {"pos", "neg"}, "polarity must be the string 'pos' or 'neg'")
    idxs = {r["instruction_idx"] for r in records}
    check(idxs == set(range(len(TINY_TRAIT["instruction"]))),
          f"instruction_idx values are {sorted(idxs)}; they must be 0-based indices into trait_data['instruction']")
    for r in records:
        pair = TINY_TRAIT["instruction"][r["instruction_idx"]]
        name = trait if r["polarity"] == "pos" else NEG_NAME
        expected = _system_prompt(name, pair[r["polarity"]])
        if r["system_prompt"] == expected:
            continue
        other = "neg" if r["polarity"] == "pos" else "pos"
        if pair[other] in r["system_prompt"]:
            fail(f"a {r['polarity']!r} record's system prompt uses the {other!r} instruction: "
                 f"the {r['polarity']} prompt must use instruction[{r['instruction_idx']}][{r['polarity']!r}]")
        if pair[r["polarity"]] in r["system_prompt"]:
            fail(f"a {r['polarity']!r} record has system prompt {r['system_prompt']!r}; the assistant name is the trait "
                 f"name for 'pos' and {NEG_NAME!r} for 'neg': expected {expected!r}")
        fail(f"record with instruction_idx={r['instruction_idx']}, polarity={r['polarity']!r} has system prompt "
             f"{r['system_prompt']!r}, expected {expected!r}")
    for idx in range(len(TINY_TRAIT["instruction"])):
        for polarity in ("pos", "neg"):
            qs = [r["question"] for r in records if r["instruction_idx"] == idx and r["polarity"] == polarity]
            check(sorted(qs) == sorted(TINY_TRAIT["questions"]),
                  f"instruction {idx}, {polarity}: every question should appear exactly once, got {qs}")
            check(qs == TINY_TRAIT["questions"],
                  f"instruction {idx}, {polarity}: questions come in the order {qs}, expected the order of "
                  "trait_data['questions']")
    _check_generation_prompts(calls[0]["prompts"], records, tokenizer)
    for r in records:
        check(r["response"] in _expected_answers(r, tokenizer),
              "a record's response is not the answer to its own prompt: keep the records and the prompts in the "
              "same order and zip generate's answers back in that order")
        sampling = r["sampling"]
        check(isinstance(sampling, dict) and sampling.get("temperature") == 0.9 and sampling.get("max_new_tokens") == 7,
              f"record['sampling'] should be {{'max_new_tokens': 7, 'temperature': 0.9}} for this call, got {sampling!r}")

    # the real thing on the tiny model: one batch, so at most max_new_tokens forward passes
    forwards = []
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        with hook_guard(model, "generate_contrastive_responses"), \
                using(generate_contrastive_responses, construct_system_prompt=_system_prompt):
            real = call(generate_contrastive_responses, model, tokenizer, TINY_TRAIT, trait, max_new_tokens=3,
                        temperature=0.7, name="generate_contrastive_responses")
    finally:
        handle.remove()
        torch.random.set_rng_state(state)
    check(len(real) == n_expected and all(isinstance(r["response"], str) for r in real),
          "with the real generate, expected one string response per record")
    check(len(forwards) <= 3, f"generating {n_expected} short answers took {len(forwards)} forward passes; one batched "
                              "generate call needs at most max_new_tokens (3) of them: generate all prompts together")
    _guarded(lambda: for_all(_awkward_trait(), lambda t: _check_awkward(generate_contrastive_responses, model, tokenizer, t),
                             name="generate_contrastive_responses on text with braces, one to three pairs and questions",
                             examples=5), "generate_contrastive_responses")
    passed("test_generate_contrastive_responses")
