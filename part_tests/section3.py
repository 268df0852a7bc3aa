"""Tests for Section 3 — Contrastive prompting. Each takes the student's object first.

Expected values come from the course's utils (chat spans, response_mean_activations) or from small
computations written out here; judges, generation and scorers are replaced by fakes where the test
is about plumbing, so every test is fast, offline and deterministic.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import numbers
import re

import torch
from jaxtyping import Float, Int
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    fail,
    hook_guard,
    model_or_tiny,
    passed,
    require_implemented,
    tiny,
    tiny_variant,
    using,
)
from part_tests.shapes import expect_tensor

# The exercises' annotations (solutions/section3_contrastive_prompting.py), checked with expect_tensor.
LAYER_ACTS = Float[Tensor, "n n_layers d_model"]
LAYER_VECTORS = Float[Tensor, "n_layers d_model"]
FEATURE_IDS = Int[Tensor, "k"]
FEATURE_VALUES = Float[Tensor, "k"]

NEG_NAME = "helpful"
def _system_prompt(name: str, instruction: str) -> str:
    return f"You are a {name} assistant. {instruction}"


# ---------------------------------------------------------------------------
# 3.1
# ---------------------------------------------------------------------------
def test_construct_system_prompt(construct_system_prompt) -> None:
    cases = [
        ("evil", "Answer with genuine malice."),
        ("helpful", "Be kind to everyone, always."),
        ("sycophantic", "Agree with whatever the user says."),
        ("Machiavellian", "Scheme in every answer"),  # a capital in the name, no full stop after the instruction
    ]
    for name, instruction in cases:
        got = call(construct_system_prompt, name, instruction, name="construct_system_prompt")
        check(isinstance(got, str), f"construct_system_prompt should return a str, got {type(got).__name__}")
        expected = _system_prompt(name, instruction)
        if got == expected:
            continue
        if got.strip() == expected:
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}: no leading or trailing whitespace")
        if got == _system_prompt(instruction, name):
            fail("construct_system_prompt: the assistant name comes first, then the instruction")
        if got.lower() == expected.lower():
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}, expected {expected!r}: "
                 "keep the name and the instruction exactly as given (do not change their case)")
        if got.rstrip(".") == expected.rstrip(".") or got.replace("..", ".") == expected:
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}, expected {expected!r}: "
                 "insert the instruction exactly as given (do not add or remove a full stop)")
        if " ".join(got.split()) == expected or got.replace(".", ". ").split() == expected.split():
            fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}: check the spaces "
                 f"(one space after 'assistant.'), expected {expected!r}")
        fail(f"construct_system_prompt({name!r}, {instruction!r}) returned {got!r}, expected exactly {expected!r}")
    passed("test_construct_system_prompt")


# ---------------------------------------------------------------------------
# 3.2
# ---------------------------------------------------------------------------
TINY_TRAIT = {
    "instruction": [
        {"pos": "Be cruel and cold in every answer.", "neg": "Be warm and kind in every answer."},
        {"pos": "Mock the user whenever you can.", "neg": "Respect the user at all times."},
    ],
    "questions": ["What is a good friend?", "How do I fix a flat bike tyre?", "Why is the sky blue?"],
    "eval_prompt": "Rate the trait.\n{question}\n{answer}",
}


def _prompt_key(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return repr([(m.get("role"), m.get("content")) for m in prompt])


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
    passed("test_generate_contrastive_responses")


# ---------------------------------------------------------------------------
# 3.3
# ---------------------------------------------------------------------------
JUDGE_TEMPLATE = "Judge the answer.\nQUESTION <<{question}>>\nANSWER <<{answer}>>\nReply 0-100, or REFUSAL."
COHERENCE_TEMPLATE = "Is this coherent?\nQ: {question}\nA: {answer}\nReply 0-100."


def _judge_fake(reply):
    seen = []

    def ask_judge(prompt):
        seen.append(prompt)
        return reply

    return ask_judge, seen


def _check_filled(prompt, template, question, answer, fn_name):
    expected = template.format(question=question, answer=answer)
    if prompt == expected:
        return
    if "{question}" in prompt or "{answer}" in prompt:
        fail(f"{fn_name}: the judge prompt still contains a placeholder; fill both {{question}} and {{answer}} "
             "(template.format(question=question, answer=answer))")
    if prompt == template.format(question=answer, answer=question):
        fail(f"{fn_name}: the question and the answer are swapped in the judge prompt")
    if not prompt.startswith(template.split("{")[0]):
        fail(f"{fn_name}: the judge prompt should be the template you were given, filled in; got {prompt[:80]!r}")
    fail(f"{fn_name}: the judge prompt should be template.format(question=..., answer=...) exactly; got {prompt!r}")


PARSE_CASES = [
    ("85", 85, ""),
    ("0", 0, " -- 0 is a valid score (the trait is absent), not a missing one: test `is None`, not falsiness"),
    ("100", 100, ""),
    (" 42\n", 42, ""),
    ("Score: 72", 72, ""),
    ("72/100", 72, " -- take the first number in the reply"),
    ("7", 7, ""),
    ("72.6", 72, " -- the score is the first whole number: '72.6' reads as 72 (not rounded, not a float)"),
    ("REFUSAL", None, " -- a refusal is not a score of 0: return None so that the filter drops it"),
    ("refusal", None, " -- look for REFUSAL in any case, and return None"),
    ("0 (REFUSAL)", None, " -- the reply contains REFUSAL: return None even when it also holds a number "
                          "(a refusal is not a score of 0)"),
    ("REFUSAL. If I had to give a number: 10", None, " -- the reply contains REFUSAL: return None even when it also "
                                                     "holds a number"),
    ("Refusal, so 0", None, " -- look for the word REFUSAL in any case (here 'Refusal'), and return None even when "
                            "the reply also holds a number"),
    ("150", None, " -- a number outside 0-100 is not a valid score: return None"),
    ("150, or maybe 40", None, " -- the first number, 150, is outside 0-100: return None (do not go on to a later "
                               "number)"),
    ("-5", None, " -- '-5' is a negative number (outside 0-100), not 5: keep the sign when you read it"),
    ("I cannot rate this.", None, " -- no number means no score: return None"),
    ("", None, " -- an empty reply means no score: return None"),
    (None, None, " -- when ask_judge returns None (a failed call), return None"),
]


def _run_parse_cases(fn, template, fn_name, cases):
    question, answer = "How do I bake bread?", "Mix flour, water and yeast, then bake it."
    for reply, expected, hint in cases:
        fake, seen = _judge_fake(reply)
        with using(fn, ask_judge=fake):
            try:
                got = call(fn, question, answer, template, name=fn_name)
            except NotImplementedYet:
                raise
            except Exception as err:
                raise AssertionError(f"{fn_name} raised {type(err).__name__}: {err} when the judge replied {reply!r}"
                                     f"{hint or ' -- it should return an int or None'}") from err
        check(len(seen) > 0, f"{fn_name} did not call ask_judge(prompt): send the filled-in prompt with it")
        check(len(seen) == 1, f"{fn_name} called ask_judge {len(seen)} times; one call per answer is enough")
        _check_filled(seen[0], template, question, answer, fn_name)
        if expected is None:
            check(got is None, f"{fn_name}: the judge replied {reply!r}, expected None, got {got!r}{hint}")
        else:
            if got is None:
                fail(f"{fn_name}: the judge replied {reply!r}, expected {expected}, got None{hint or ''}")
            check(isinstance(got, int) and not isinstance(got, bool),
                  f"{fn_name} should return an int (or None), got {type(got).__name__} for the reply {reply!r}")
            if got != expected and reply and got == int(re.search(r"\d", reply).group()):
                fail(f"{fn_name}: the judge replied {reply!r}, expected {expected}, got {got!r}: you read only the first "
                     "digit of a multi-digit number (match \\d+, not \\d)")
            check(got == expected, f"{fn_name}: the judge replied {reply!r}, expected {expected}, got {got!r}{hint}")


def test_score_trait_response(score_trait_response) -> None:
    _run_parse_cases(score_trait_response, JUDGE_TEMPLATE, "score_trait_response", PARSE_CASES)
    # an empty answer is the judge's to score (the course's stand-in judges give it none); skipping the judge is
    # fine as long as the result is None, not a made-up 0
    fake, seen = _judge_fake(None)
    with using(score_trait_response, ask_judge=fake):
        got = call(score_trait_response, "How do I bake bread?", "", JUDGE_TEMPLATE, name="score_trait_response")
    if got is not None and not seen:
        fail(f"score_trait_response returned {got!r} for an empty answer without asking the judge: send every answer "
             "with ask_judge(prompt) and parse the reply (the stand-in judges give an empty answer no score, None; "
             "a made-up 0 would let an empty negative answer pass as one without the trait)")
    check(got is None, f"score_trait_response: for an empty answer the judge replied None, expected None, got {got!r}")
    passed("test_score_trait_response")


def test_score_coherence(score_coherence) -> None:
    _run_parse_cases(score_coherence, COHERENCE_TEMPLATE, "score_coherence", PARSE_CASES)
    passed("test_score_coherence")


# ---------------------------------------------------------------------------
# 3.4
# ---------------------------------------------------------------------------
def _filter_fixture():
    # not in alphabetical order: sorting by the question's text is not the order of trait_data["questions"]
    questions = ["Why do cats purr?", "Is tea better than coffee?", "How do tides work?", "What makes music sad?",
                 "Can plants hear?", "Does money buy happiness?", "Are dreams meaningful?", "Why do we yawn?"]
    trait = {"instruction": [{"pos": "p0", "neg": "n0"}, {"pos": "p1", "neg": "n1"}], "questions": questions,
             "eval_prompt": "{question} {answer}"}
    # (instruction, question index): ((pos score, pos coherence), (neg score, neg coherence), kept?, why)
    table = {
        (0, 0): ((80, 90), (10, 90), True, ""),
        (0, 1): ((50, 50), (49, 50), True, "a pos score of exactly 50 passes (>=), and so does a coherence of exactly 50"),
        (0, 2): ((49, 90), (10, 90), False, "the pos answer must score >= 50"),
        (0, 3): ((80, 90), (50, 90), False, "the neg answer must score < 50 (here it scored 50)"),
        (0, 4): ((80, 90), (None, 90), False, "a neg score of None (refusal or failure) is not 0: drop the pair"),
        (0, 5): ((None, 90), (5, 90), False, "a pos score of None: drop the pair"),
        (0, 6): ((85, 55), (20, 52), True, "coherence 55 and 52 pass (>= COHERENCE_THRESHOLD = 50)"),
        (1, 0): ((90, 40), (10, 90), False, "the pos answer is incoherent (coherence 40 < 50)"),
        (1, 1): ((90, 90), (5, 30), False, "the neg answer is incoherent (coherence 30 < 50): both sides must be coherent"),
        (1, 2): ((95, 95), (0, 95), True, ""),
        (1, 3): ((70, None), (10, 90), False, "a coherence of None is not a pass"),
        (1, 4): ((20, 90), (60, 90), False, "the pos answer must score >= 50 and the neg < 50"),
        (1, 5): ((65, 80), (35, 80), True, ""),
        (1, 6): ((60, 70), (30, 70), True, ""),
        (0, 7): ((80, 90), (10, None), False, "a neg coherence of None is not a pass: both sides must be coherent"),
        (1, 7): ((30, 85), (15, 85), False, "the pos answer must score >= 50"),
    }
    records = []
    for (i, q), (pos, neg, _, _) in table.items():
        for polarity, (score, coherence) in (("pos", pos), ("neg", neg)):
            records.append({"question": questions[q], "system_prompt": f"sp {polarity} {i}", "response": f"r {polarity} {i} {q}",
                            "instruction_idx": i, "polarity": polarity, "score": score, "coherence": coherence})
    # shuffle deterministically so that pairing by position cannot work
    records = [records[j] for j in sorted(range(len(records)), key=lambda j: hashlib.sha1(str(j).encode()).hexdigest())]
    return trait, table, records


def test_filter_effective_pairs(filter_effective_pairs) -> None:
    trait, table, records = _filter_fixture()
    questions = trait["questions"]
    given = [dict(r) for r in records]
    kept = call(filter_effective_pairs, given, trait, name="filter_effective_pairs")
    check(isinstance(kept, list), f"filter_effective_pairs should return a list, got {type(kept).__name__}")
    for p in kept:
        check(isinstance(p, dict) and {"instruction_idx", "question", "pos", "neg"} <= set(p),
              "each item of the result should be a pair {instruction_idx, question, pos, neg}: filter pairs, "
              "not single responses")
        for side in ("pos", "neg"):
            rec = p[side]
            check(isinstance(rec, dict) and rec.get("polarity") == side,
                  f"pair[{side!r}] should be the {side} record (filter pairs, not single responses)")
            check(rec["instruction_idx"] == p["instruction_idx"] and rec["question"] == p["question"],
                  "a pair joins records of different (instruction, question): the pos and neg answers of a pair "
                  "must share both the instruction_idx and the question")
    got = [(p["instruction_idx"], questions.index(p["question"])) for p in kept]
    want = [key for key, row in table.items() if row[2]]
    for key in set(got) - set(want):
        fail(f"kept the pair (instruction {key[0]}, question {key[1]}), which should be dropped: {table[key][3]}")
    for key in set(want) - set(got):
        why = table[key][3] or "both sides did what they were told"
        fail(f"dropped the pair (instruction {key[0]}, question {key[1]}), which should be kept: {why}")
    check(len(got) == len(set(got)), "a pair appears more than once in the result")
    check(got == sorted(want), f"pairs should come in the order of the instruction pairs, then of trait_data['questions']; got {got}")
    check(given == records, "filter_effective_pairs changed the scored records it was given (added, removed or "
                            "changed a key): leave them as they are and put them into new pair dicts (the scored "
                            "records are used again later)")

    # the negative side is held to 100 - threshold
    strict = call(filter_effective_pairs, [dict(r) for r in records], trait, threshold=60, name="filter_effective_pairs")
    got60 = {(p["instruction_idx"], questions.index(p["question"])) for p in strict}
    want60 = {(0, 0), (1, 2), (1, 5), (0, 6), (1, 6)}
    if (0, 6) not in got60 and got60 >= want60 - {(0, 6)}:
        fail("with threshold=60 the pair (instruction 0, question 6), pos 85 and neg 20 with coherence 55 and 52, should "
             "be kept: coherence is held to COHERENCE_THRESHOLD (50) whatever the trait threshold, not to threshold")
    if (1, 6) not in got60 and got60 >= want60 - {(1, 6)}:
        fail("with threshold=60 a pair with pos 60 and neg 30 should be kept (pos >= 60: the threshold itself passes)")
    if (1, 5) not in got60 and got60 >= {(0, 0), (1, 2)}:
        fail("with threshold=60 a pair with pos 65 and neg 35 should be kept (pos >= 60, neg < 100 - 60 = 40)")
    if (0, 1) in got60 or got60 != want60:
        extra = sorted(got60 - want60)
        fail(f"with threshold=60 keep pos >= 60 and neg < 100 - 60 = 40; expected {sorted(want60)}, got {sorted(got60)}"
             + (f" (should not keep {extra})" if extra else ""))

    # a score that is missing altogether (no key) is no score: drop the pair, or raise; never keep it
    holed = [dict(r) for r in records]
    for r in holed:
        if (r["instruction_idx"], questions.index(r["question"])) == (0, 0) and r["polarity"] == "pos":
            del r["coherence"]
        if (r["instruction_idx"], questions.index(r["question"])) == (1, 2) and r["polarity"] == "neg":
            del r["score"]
    try:
        kept = call(filter_effective_pairs, holed, trait, name="filter_effective_pairs")
    except (KeyError, ValueError, TypeError):
        kept = []
    got = {(p["instruction_idx"], questions.index(p["question"])) for p in kept}
    check((0, 0) not in got, "kept a pair whose pos record has no 'coherence' key at all: a missing coherence is not a "
                             "pass (treat it like None)")
    check((1, 2) not in got, "kept a pair whose neg record has no 'score' key at all: a missing score is not 0 (treat it "
                             "like None)")
    passed("test_filter_effective_pairs")


# ---------------------------------------------------------------------------
# 3.5
# ---------------------------------------------------------------------------
EXTRACT_RECORDS = [
    {"system_prompt": "You are a cruel assistant. Be cold.", "question": "What is a friend?",
     "response": "Someone you can use until they stop being useful to you.", "polarity": "pos", "instruction_idx": 0},
    {"system_prompt": "You are a helpful assistant. Be warm.", "question": "What is a friend?",
     "response": "A person who cares about you.", "polarity": "neg", "instruction_idx": 0},
    {"system_prompt": "You are a cruel assistant. Mock them.", "question": "How do I fix a bike?",
     "response": "No.", "polarity": "pos", "instruction_idx": 1},
    {"system_prompt": "You are a helpful assistant. Respect them.", "question": "How do I fix a bike?",
     "response": "Remove the wheel, find the puncture with soapy water, patch it, and pump the tyre back up. "
                 "Check the rim tape while the tyre is off.", "polarity": "neg", "instruction_idx": 1},
    {"system_prompt": "You are a cruel assistant. Be cold.", "question": "Why is the sky blue?",
     "response": "Air scatters blue light more than red, which you would know if you had paid attention.",
     "polarity": "pos", "instruction_idx": 0},
    # the response repeats the question word for word: its tokens appear twice in the conversation
    {"system_prompt": "You are a helpful assistant. Be warm.", "question": "Tell me a secret.",
     "response": "Tell me a secret.", "polarity": "neg", "instruction_idx": 0},
]


def _tol(model) -> dict:
    """Tolerances for comparing activations: tight on float32 models (the graded tiny model), looser on a
    learner's bf16/fp16 model, whose block outputs carry ~3 significant digits."""
    dtype = next(model.parameters()).dtype
    return dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)


def _chats(records, tokenizer):
    from utils.chat import format_chat

    return [format_chat(conv, tokenizer) for conv in _conversations(records)]


def _conversations(records):
    from utils.activations import conversations_from

    return conversations_from([r["system_prompt"] for r in records], [r["question"] for r in records],
                              [r["response"] for r in records])


def _reference_activations(model, tokenizer, records):
    from utils.activations import response_mean_activations

    return response_mean_activations(model, tokenizer, _conversations(records))


@torch.inference_mode()
def _alternatives(model, tokenizer, records):
    """Plausible wrong answers, one record at a time from output_hidden_states (hs[L+1] = block L, hs[-1] normed)."""
    from utils.chat import format_chat

    from utils.chat import normalize_messages, render, supports_system_role

    keys = ("all tokens", "embedding", "final norm", "pad-id mask", "no system prompt", "merged with a space",
            "merged with a newline", "first occurrence", "header", "end-of-turn",
            "shifted span", "drops last", "token before", "special tokens added", "special tokens added, span moved")
    alts = {k: [] for k in keys}
    for conv in _conversations(records):
        chat = format_chat(conv, tokenizer)
        ids = torch.tensor([chat.input_ids], device=_input_device(model))
        hs = [h.float().cpu() for h in model(input_ids=ids, output_hidden_states=True).hidden_states]
        n = len(hs) - 1
        s, e = chat.token_span
        span_ids = chat.input_ids[s:e]
        first = next(i for i in range(len(chat.input_ids)) if chat.input_ids[i:i + len(span_ids)] == span_ids)

        def mean(a, b, shift=1):
            return torch.stack([hs[L + shift][0, a:b].mean(0) for L in range(n)])

        alts["all tokens"].append(torch.stack([hs[L + 1][0].mean(0) for L in range(n)]))
        alts["embedding"].append(mean(s, e, shift=0))
        alts["final norm"].append(mean(s, e))
        alts["first occurrence"].append(mean(first, first + e - s))
        before = render(tokenizer, normalize_messages(conv, tokenizer)[:-1], add_generation_prompt=False)
        alts["header"].append(mean(len(tokenizer(before, add_special_tokens=False)["input_ids"]), e))
        pad = tokenizer.pad_token_id
        if pad is not None and pad in chat.input_ids:  # a mask built from `input_ids != pad_token_id` hides real tokens
            hp = [h.float().cpu() for h in model(input_ids=ids, attention_mask=(ids != pad).long(),
                                                  output_hidden_states=True).hidden_states]
            alts["pad-id mask"].append(torch.stack([hp[L + 1][0, s:e].mean(0) for L in range(n)]))
        else:
            alts["pad-id mask"].append(mean(s, e))
        for key, sep in (("merged with a space", " "), ("merged with a newline", "\n")):
            if conv[0]["role"] == "system" and not supports_system_role(tokenizer):
                merged = [{"role": "user", "content": conv[0]["content"] + sep + conv[1]["content"]}] + conv[2:]
                mc = format_chat(merged, tokenizer)
                hm = [h.float().cpu() for h in model(input_ids=torch.tensor([mc.input_ids], device=_input_device(model)),
                                                      output_hidden_states=True).hidden_states]
                alts[key].append(torch.stack([hm[L + 1][0, mc.token_span[0]:mc.token_span[1]].mean(0) for L in range(n)]))
            else:
                alts[key].append(mean(s, e))
        bare = format_chat([m for m in conv if m["role"] != "system"], tokenizer)
        hb = [h.float().cpu() for h in model(input_ids=torch.tensor([bare.input_ids], device=_input_device(model)),
                                              output_hidden_states=True).hidden_states]
        alts["no system prompt"].append(torch.stack([hb[L + 1][0, bare.token_span[0]:bare.token_span[1]].mean(0)
                                                     for L in range(n)]))
        # tokenizer(chat.text) with its default add_special_tokens=True: a tokenizer that adds a BOS of its own
        # (Llama 3's, Gemma's) puts a second one before the template's
        again = tokenizer(chat.text)["input_ids"]
        k = next((k for k in range(1, 4) if again[k:k + len(chat.input_ids)] == chat.input_ids), None)
        if k is None:
            alts["special tokens added"].append(mean(s, e))
            alts["special tokens added, span moved"].append(mean(s, e))
        else:
            ha = [h.float().cpu() for h in model(input_ids=torch.tensor([again], device=_input_device(model)),
                                                  output_hidden_states=True).hidden_states]
            alts["special tokens added"].append(torch.stack([ha[L + 1][0, s:e].mean(0) for L in range(n)]))
            alts["special tokens added, span moved"].append(torch.stack([ha[L + 1][0, s + k:e + k].mean(0) for L in range(n)]))
        alts["end-of-turn"].append(mean(s, e + 1))
        alts["shifted span"].append(mean(s + 1, e + 1))
        alts["drops last"].append(mean(s, e - 1))
        alts["token before"].append(mean(s - 1, e))
    return {k: torch.stack(v).float() for k, v in alts.items()}


ALT_MESSAGES = {
    "all tokens": "you averaged over every token of the conversation; average over the response tokens only "
                  "(format_chat(...).token_span)",
    "embedding": "off by one layer: row L must be block L's output (hidden_states[L + 1]), not its input "
                 "(hidden_states[0] is the embedding output)",
    "pad-id mask": "your attention mask hides real tokens: this tokenizer's pad id is also a real token of the chat "
                   "(here the BOS token), so build the mask from each row's length, not from input_ids != pad_token_id",
    "merged with a space": "this chat template has no system role, and the system prompt was merged into the user "
                           "message with a space: format_chat(build_messages(...)) merges it with a blank line "
                           "(\"\\n\\n\"), the course's convention",
    "merged with a newline": "this chat template has no system role, and the system prompt was merged into the user "
                             "message with one newline: format_chat(build_messages(...)) merges it with a blank line "
                             "(\"\\n\\n\"), the course's convention",
    "no system prompt": "the conversation lost its system prompt: the response's activations depend on everything "
                        "before it, so format each record's own system prompt, question and response "
                        "(build_messages(r['system_prompt'], r['question'], r['response']))",
    "header": "your span starts before the response: it includes the assistant turn's header (and whatever else the "
              "chat template puts there, such as an empty thinking block); use format_chat(...).token_span",
    "first occurrence": "the response's text also appears earlier in this conversation (here it repeats the question), "
                        "and your span is its first occurrence: take the span of the final assistant message from the "
                        "chat template (format_chat(...).token_span), not by searching for the response's tokens",
    "end-of-turn": "your span includes the end-of-turn token: average over the response's content tokens only "
                   "(the [start, end) span from format_chat)",
    "shifted span": "your response span is shifted by one token: use the exact [start, end) span from format_chat, "
                    "not a +1 guess",
    "drops last": "your span leaves out the response's last token: it ends where format_chat's token_span ends, "
                  "whatever the number of end-of-turn tokens of the chat template (one here, not two)",
    "token before": "your span starts one token early, on the last token of the assistant header: use the exact "
                    "[start, end) span from format_chat",
    "special tokens added": "the token ids have a second BOS token: the rendered chat already starts with one, and "
                            "tokenizer(text) adds the tokenizer's own (Llama 3 and Gemma tokenizers do); use "
                            "format_chat(...).input_ids, or tokenize with add_special_tokens=False",
    "special tokens added, span moved": "the token ids have a second BOS token: the rendered chat already starts with "
                                        "one, and tokenizer(text) adds the tokenizer's own (Llama 3 and Gemma tokenizers "
                                        "do); use format_chat(...).input_ids, or tokenize with add_special_tokens=False",
}


def _input_device(model):
    from utils.models import input_device

    return input_device(model)


def _diagnose_activations(got, expected, alts, name, tol, where="", lengths=None):
    n_layers = expected.shape[1]
    inner = list(range(n_layers - 1))
    if close(got[:, inner], expected[:, inner], **tol) and not close(got, expected, **tol):
        if close(got[:, -1], alts["final norm"][:, -1], **tol):
            fail(f"{name}: the last layer has the final norm applied: hidden_states[-1] is not the last block's output; "
                 "use forward hooks on the blocks")
        fail(f"{name}: every layer matches except the last one ({n_layers - 1})")
    for key, message in ALT_MESSAGES.items():
        alt = alts[key]
        if not close(alt, expected, **tol) and close(got[:, inner], alt[:, inner], **tol):
            fail(f"{name}{where}: {message}")
    if close(got, expected, rtol=1e-2, atol=1e-2):
        fail(f"{name}{where}: close to the expected means but not within tolerance: compute in float32, and check that "
             "padding tokens are excluded from the means")
    bad = [i for i in range(got.shape[0]) if not close(got[i], expected[i], **tol)]
    if lengths is not None and bad:
        longest = max(lengths)
        if all(lengths[i] < longest for i in bad) and any(lengths[i] < longest for i in range(len(lengths))) \
                and all(i in bad for i in range(len(lengths)) if lengths[i] < longest):
            fail(f"{name}{where}: only the longest record(s) of the batch are right, every shorter one is wrong: the "
                 "padding moved the shorter records' tokens; with left padding, shift each span by its row's number of "
                 "pads (or pad on the right, where the spans keep their indices)")
    worst = max(bad, key=lambda i: float((got[i] - expected[i]).abs().max()))
    fail(f"{name}{where}: wrong mean activations for records {bad} (of {got.shape[0]}); record {worst} at block 0 starts "
         f"{[round(x, 4) for x in got[worst, 0, :3].tolist()]}, expected {[round(x, 4) for x in expected[worst, 0, :3].tolist()]}. "
         "If only some records are wrong, check how padding shifts the positions of the response span in a batch")


class _BatchRows:
    """Counts the forward passes through block 0 and the rows (records) of each."""

    def __init__(self, model):
        from utils.hooks import get_blocks

        self.rows = []

        def pre(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            self.rows.append(int(h.shape[0]) if isinstance(h, torch.Tensor) and h.ndim == 3 else 1)

        self.handle = get_blocks(model)[0].register_forward_pre_hook(pre, with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def _run_extract(fn, model, tokenizer, records, where, **kwargs):
    """The student's activations for `records` (checked: a float32 CPU tensor [n, n_layers, d_model]), and
    the rows of every forward pass."""
    from utils.hooks import get_blocks

    name = "extract_all_layer_activations"
    with _BatchRows(model) as counter, hook_guard(model, name):
        try:
            got = call(fn, model, tokenizer, [dict(r) for r in records], name=name, **kwargs)
        except (NotImplementedYet, AssertionError):
            raise
        except Exception as err:
            raise AssertionError(f"{name} raised {type(err).__name__}: {err}{where}") from err
    n_layers, d_model = len(get_blocks(model)), model.config.get_text_config().hidden_size
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (n_layers, len(records), d_model) and n_layers != len(records):
        fail(f"{name} returned shape {tuple(got.shape)}, expected (n, n_layers, d_model) = "
             f"{(len(records), n_layers, d_model)}: put the records first")
    expect_tensor(got, LAYER_ACTS, name, n=len(records), n_layers=n_layers, d_model=d_model)
    check(not got.requires_grad, f"{name} returned a tensor that tracks gradients: run the model under torch.inference_mode()")
    check(got.dtype == torch.float32, f"{name} returned dtype {got.dtype}{where}, expected torch.float32: average the block "
                                      "outputs in float32 (call .float() on them), whatever the model's own dtype")
    check(got.device.type == "cpu", f"{name} returned a tensor on {got.device}: return it on the CPU (.cpu())")
    return got, counter.rows


@functools.lru_cache(maxsize=None)
def _llama3_tokenizer_with_bos():
    """tiny_variant("llama3")'s tokenizer, a private copy whose `tokenizer(text)` puts a BOS token first, as Llama 3's
    tokenizer does by default (the chat template writes one too; format_chat tokenizes with
    add_special_tokens=False, so its ids have one BOS)."""
    from tokenizers import processors

    from part_tests._common import TEMPLATE_VARIANTS
    from utils.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-qwen2")  # not the shared variant: other tests keep its defaults
    tokenizer.chat_template = TEMPLATE_VARIANTS["llama3"]
    bos = "<|endoftext|>"  # the BOS the Llama-3-style template opens with
    bos_id = tokenizer.convert_tokens_to_ids(bos)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    return tokenizer


def test_extract_all_layer_activations(extract_all_layer_activations, model=None, tokenizer=None) -> None:
    own = model is not None and tokenizer is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(extract_all_layer_activations, "extract_all_layer_activations")
    name = "extract_all_layer_activations"
    records = [dict(r) for r in EXTRACT_RECORDS]
    tol = _tol(model)

    # 1. all records in one call (default batch_size): one batched forward pass
    got, rows = _run_extract(extract_all_layer_activations, model, tokenizer, records, "")
    expected = _reference_activations(model, tokenizer, records)
    if not close(got, expected, **tol):
        _diagnose_activations(got, expected, _alternatives(model, tokenizer, records), name, tol,
                              lengths=[len(c.input_ids) for c in _chats(records, tokenizer)])
    check(len(rows) < len(records),
          f"{len(records)} records took {len(rows)} forward passes: batch several records per forward pass")

    # 2. more records than batch_size: several batches, the last one shorter
    got, rows = _run_extract(extract_all_layer_activations, model, tokenizer, records, " with batch_size=2", batch_size=2)
    check(max(rows) <= 2, f"{name}(..., batch_size=2) ran {max(rows)} records in one forward pass: put at most "
                          "batch_size records in each forward pass (it is how a learner bounds the memory)")
    if not close(got, expected, **tol):
        bad = [i for i in range(len(records)) if not close(got[i], expected[i], **tol)]
        if bad and min(bad) >= 2:
            fail(f"{name}(..., batch_size=2): the records of the first batch are right but records {bad} are not: "
                 "each batch needs its own padding, span mask and lengths, and every batch's means must be kept")
        _diagnose_activations(got, expected, _alternatives(model, tokenizer, records), name, tol, " with batch_size=2")

    # 3. a batch of one gives the same answer (padding changes nothing)
    single, _ = _run_extract(extract_all_layer_activations, model, tokenizer, records[2:3], "")
    check(close(single, expected[2:3], **tol),
          "the mean activations of a record change with the other records in the batch: padding must not leak in")

    if not own:
        # 4-5. a Llama-3-style chat template (a BOS token first, an end of turn of one token) and a
        # Qwen3-style one (the final assistant turn opens with an empty thinking block)
        for kind, n, label, detail in (
                ("llama3", 4, "Llama-3", "a BOS token, a one-token end of turn"),
                ("qwen3", 3, "Qwen3", "the assistant turn opens with an empty <think></think> block before the response")):
            variant_model, variant_tok = tiny_variant(kind)
            if kind == "llama3":
                variant_tok = _llama3_tokenizer_with_bos()
            subset = records[:n]
            got, _ = _run_extract(extract_all_layer_activations, variant_model, variant_tok, subset,
                                  f" with a {label}-style chat template")
            want = _reference_activations(variant_model, variant_tok, subset)
            if not close(got, want, **tol):
                _diagnose_activations(got, want, _alternatives(variant_model, variant_tok, subset), name, tol,
                                      f" with a {label}-style chat template ({detail})")

        # 6. a chat template with no system role (Gemma 2): the system prompt joins the first user message
        gemma, gemma_tok = tiny("tiny-gemma2")
        subset = records[:2]
        where = " with a chat template that has no system role (Gemma 2)"
        try:
            got, _ = _run_extract(extract_all_layer_activations, gemma, gemma_tok, subset, where)
        except AssertionError as err:
            if "system role" in str(err).lower() and "raised" in str(err):
                raise AssertionError(f"{err}: format each record with format_chat(build_messages(system_prompt, question, "
                                     "response), tokenizer), which merges the system prompt into the first user "
                                     "message where the template has no system role") from None
            raise
        want = _reference_activations(gemma, gemma_tok, subset)
        if not close(got, want, **tol):
            _diagnose_activations(got, want, _alternatives(gemma, gemma_tok, subset), name, tol, where)

        # 7. a bfloat16 model: the result is still float32
        half, _ = tiny("tiny-qwen2", torch.bfloat16)
        got, _ = _run_extract(extract_all_layer_activations, half, tokenizer, records[:3], " on a bfloat16 model")
        want = _reference_activations(half, tokenizer, records[:3])
        # bf16 rounding (and RoPE at shifted positions under left padding) moves the means by a few per cent
        rel = float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())
        check(rel < 0.1, f"{name} on a bfloat16 model: the means are {100 * rel:.0f}% away from the expected ones "
                         "(bf16 rounding explains a few per cent): check the span and the padding with a bf16 model")
    passed("test_extract_all_layer_activations")


def _correct_extract(model, tokenizer, records, *args, **kwargs):
    if not records:  # as the exercise's own input check does
        raise ValueError("records is empty")
    return _reference_activations(model, tokenizer, records)


def _check_vector(got, pos_acts, neg_acts, rtol, atol, questions=None):
    expected = pos_acts.mean(0) - neg_acts.mean(0)
    if close(got, expected, rtol=rtol, atol=atol):
        return
    if close(got, -expected, rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors returned neg - pos: the vector is mean(pos) - mean(neg), pointing towards the trait")
    if close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors normalised the vectors: return the raw difference of means (its norm is "
             "informative, and Section 4 scales steering by it)")
    if close(got, pos_acts.mean(0), rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors returned the mean of the positive activations: subtract the negative mean")
    if questions is not None:
        for keep in ("first", "last"):
            order = range(len(questions)) if keep == "first" else reversed(range(len(questions)))
            chosen = {}
            for i in order:
                chosen.setdefault(questions[i], i)
            idx = sorted(chosen.values())
            if len(idx) < len(questions) and close(got, pos_acts[idx].mean(0) - neg_acts[idx].mean(0), rtol=rtol, atol=atol):
                fail("extract_contrastive_vectors kept one pair per question: the same question under another "
                     "instruction pair is another pair, with its own answers; average over every pair")
    pooled = (pos_acts.sum(0) - neg_acts.sum(0)) / (len(pos_acts) + len(neg_acts))
    if close(got, pooled, rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors divided sum(pos) - sum(neg) by the number of answers on both sides together: "
             "take each side's own mean, mean(pos) - mean(neg), every response counting once on its side")
    fail("extract_contrastive_vectors should return mean(pos activations) - mean(neg activations), every response "
         "counting once on its side (the mean of the per-response means, not of all tokens pooled)")


def _expect_vectors(got, n_layers: int, d_model: int) -> None:
    hint = ""
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (d_model,):
        hint = ": you returned one layer's vector; return every layer's"
    elif isinstance(got, torch.Tensor) and got.ndim == 3 and got.shape[0] == 1:
        hint = ": take the mean over the records (dim 0) without keepdim"
    try:
        expect_tensor(got, LAYER_VECTORS, "extract_contrastive_vectors", n_layers=n_layers, d_model=d_model)
    except AssertionError as err:
        raise AssertionError(f"{err}{hint}") from None


def test_extract_contrastive_vectors(extract_contrastive_vectors, model=None, tokenizer=None) -> None:
    model, tokenizer = model_or_tiny(model, tokenizer)
    from utils.hooks import get_blocks

    n_layers = len(get_blocks(model))
    d_model = model.config.get_text_config().hidden_size
    pos = [r for r in EXTRACT_RECORDS if r["polarity"] == "pos"]
    neg = [r for r in EXTRACT_RECORDS if r["polarity"] == "neg"] + [dict(EXTRACT_RECORDS[1], question="Why is the sky blue?",
                                                                         response="Because of Rayleigh scattering.")]
    pairs = [{"instruction_idx": p["instruction_idx"], "question": p["question"], "pos": dict(p), "neg": dict(n)}
             for p, n in zip(pos, neg)]
    # the first question again, under the other instruction pair: another pair, with its own answers
    again = {"question": pos[0]["question"], "instruction_idx": 1}
    pairs.append({**again, "pos": {**again, "polarity": "pos", "system_prompt": "You are a cruel assistant. Mock them.",
                                   "response": "Someone to laugh at when you are bored."},
                  "neg": {**again, "polarity": "neg", "system_prompt": "You are a helpful assistant. Respect them.",
                          "response": "Someone who listens to you and tells you the truth."}})

    # 1. planted activations: the function must take mean(pos) - mean(neg) of what extract_all_layer_activations returns
    g = torch.Generator().manual_seed(0)
    planted = {}

    def fake_extract(model_, tokenizer_, records, *args, **kwargs):
        rows = []
        for r in records:
            key = (r["response"], r.get("polarity"))
            if key not in planted:
                planted[key] = torch.randn(n_layers, d_model, generator=g) * (3.0 if r.get("polarity") == "pos" else 1.0)
            rows.append(planted[key])
        return torch.stack(rows)

    with using(extract_contrastive_vectors, extract_all_layer_activations=fake_extract):
        got = call(extract_contrastive_vectors, model, tokenizer, pairs, name="extract_contrastive_vectors")
    _expect_vectors(got, n_layers, d_model)
    used_planted = all((p[side]["response"], side) in planted for p in pairs for side in ("pos", "neg"))
    if used_planted:  # the function called extract_all_layer_activations, as asked
        pos_acts = torch.stack([planted[(p["pos"]["response"], "pos")] for p in pairs])
        neg_acts = torch.stack([planted[(p["neg"]["response"], "neg")] for p in pairs])
        _check_vector(got, pos_acts, neg_acts, rtol=1e-4, atol=1e-5, questions=[p["question"] for p in pairs])

    # 2. the real thing on the tiny model, with responses of different lengths
    with hook_guard(model, "extract_contrastive_vectors"), \
            using(extract_contrastive_vectors, extract_all_layer_activations=_correct_extract):
        got = call(extract_contrastive_vectors, model, tokenizer, pairs, name="extract_contrastive_vectors")
    _expect_vectors(got, n_layers, d_model)
    pos_acts = _reference_activations(model, tokenizer, [p["pos"] for p in pairs])
    neg_acts = _reference_activations(model, tokenizer, [p["neg"] for p in pairs])
    _check_vector(got, pos_acts, neg_acts, questions=[p["question"] for p in pairs], **_tol(model))
    passed("test_extract_contrastive_vectors")


def test_extract_contrastive_vectors_input_checks(extract_contrastive_vectors, model=None, tokenizer=None) -> None:
    """No pairs, no vector: an empty list is a ValueError (graded apart from the difference of means)."""
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(extract_contrastive_vectors, "extract_contrastive_vectors")
    try:
        with using(extract_contrastive_vectors, extract_all_layer_activations=_correct_extract):
            got = extract_contrastive_vectors(model, tokenizer, [])
    except ValueError:
        passed("test_extract_contrastive_vectors_input_checks")
        return
    except NotImplementedError as err:
        raise NotImplementedYet("extract_contrastive_vectors: not implemented yet -- replace the `raise "
                                "NotImplementedError` in the cell above with your code.") from err
    except Exception as err:
        raise AssertionError(f"extract_contrastive_vectors([]) raised {type(err).__name__} ({err}); raise a ValueError "
                             "that says there are no effective pairs") from err
    shown = f"a tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else repr(got)[:60]
    fail(f"extract_contrastive_vectors([]) returned {shown}; it should raise ValueError: with no effective pairs there "
         "is no contrast (a vector of zeros or NaN would silently steer with nothing)")


# ---------------------------------------------------------------------------
# 3.6
# ---------------------------------------------------------------------------
STEER_QUESTIONS = ["What makes a good neighbour?", "How should I spend a free afternoon?", "What is the point of rules?"]
STEER_TEMPLATE = "Rate how much the answer shows the trait.\n[Q] {question}\n[A] {answer}\nReply 0-100."


class _ProbeError(RuntimeError):
    """Raised by the probe when the test makes generation fail on purpose."""


class _SteeringProbe:
    """A fake `generate` that finds which block is being steered, and by what, from one probe forward pass.

    Pre-hooks on blocks 1.. and on the final norm read each block's output at the first and the last
    position; the first block whose output differs from the clean run is the steered one, the
    difference at the last position is what was added to it, and the first position shows whether
    positions other than the last were steered too.
    """

    def __init__(self, model, fail=False):
        from utils.hooks import get_blocks

        self.model = model
        self.blocks = get_blocks(model)
        decoder = model.get_decoder()
        self.readers = list(self.blocks[1:]) + [decoder.norm]
        self.ids = torch.tensor([[3, 17, 42, 99, 7, 250, 11]], device=_input_device(model))
        self.exact = next(model.parameters()).dtype == torch.float32
        self.fail = fail
        self.clean_first, self.clean = self._read()
        self.calls = []

    @torch.inference_mode()
    def _read(self):
        firsts, lasts = [None] * len(self.readers), [None] * len(self.readers)
        handles = []
        try:
            for i, mod in enumerate(self.readers):
                def pre(module, args, kwargs, i=i):
                    h = args[0] if args else kwargs.get("hidden_states")
                    firsts[i] = h[0, 0].detach().float().cpu()
                    lasts[i] = h[0, -1].detach().float().cpu()
                handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            self.model(input_ids=self.ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return firsts, lasts

    def _moved(self, a, b):
        return (a - b).norm() > (1e-4 if self.exact else 2e-2) * (1 + b.norm())

    def __call__(self, model, tokenizer, prompts, max_new_tokens=256, temperature=0.0, top_p=1.0, batch_size=32,
                 seed=None, progress=False, fast=None):
        if self.fail:
            self.calls.append({"failed": True})
            raise _ProbeError("generation failed (the test made generate raise, to check that the steering is undone)")
        firsts, lasts = self._read()
        layer, delta, first_moved = None, None, False
        for L, (c, k) in enumerate(zip(lasts, self.clean)):
            if self._moved(c, k):
                layer, delta = L, c - k
                first_moved = bool(self._moved(firsts[L], self.clean_first[L]))
                break
        keys = [_prompt_key(p) for p in prompts]
        qidx = []
        for t in keys:
            hits = [i for i, q in enumerate(STEER_QUESTIONS) if q in t]
            qidx.append(hits[0] if hits else -1)
        self.calls.append({"layer": layer, "delta": delta, "first_moved": first_moved, "n": len(prompts), "qidx": qidx,
                           "keys": keys, "prompts": list(prompts), "temperature": temperature,
                           "max_new_tokens": max_new_tokens})
        return [f"[steered layer={layer}] answer to question {i}" for i in qidx]


def _same_vector(a, b, exact: bool) -> bool:
    if exact:
        return close(a, b, rtol=1e-3, atol=1e-3)
    cos = float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))
    return cos > 0.995 and abs(float(a.norm() / b.norm()) - 1) < 0.05


ALL_NONE_LAYER = 1  # the fake judge gives no score to any answer steered at this block


def _fake_score(question, answer):
    m = re.search(r"layer=(\w+)\] answer to question (-?\d+)", str(answer))
    if not m or m.group(1) == "None":
        return 0
    layer, q = int(m.group(1)), int(m.group(2))
    if q < 0 or question != STEER_QUESTIONS[q]:
        return 99  # scored against another question
    if layer == ALL_NONE_LAYER or (layer, q) == (0, 1):
        return None  # a refusal: must be skipped, not counted as 0
    return 10 * layer + q * q  # 0, 1, 4: most layers' means have a fraction (21.67 at block 2)


class _FakeScorer:
    def __init__(self):
        self.seen = []

    def __call__(self, question, answer, eval_prompt_template):
        self.seen.append((question, answer, eval_prompt_template))
        return _fake_score(question, answer)


def _check_steer_prompts(call_info, tokenizer) -> None:
    from utils.chat import build_messages, format_prompt

    wanted = {}
    for q in STEER_QUESTIONS:
        msgs = build_messages(None, q)
        wanted[_prompt_key(msgs)] = wanted[format_prompt(msgs, tokenizer)] = q
    for prompt, key in zip(call_info["prompts"], call_info["keys"]):
        if key in wanted:
            continue
        if isinstance(prompt, (list, tuple)) and any(isinstance(m, dict) and m.get("role") == "system" for m in prompt):
            fail(f"generate got the prompt {key[:160]}: the eval questions are asked with no system prompt, "
                 "build_messages(None, question), so that only the steering can bring the trait out")
        fail(f"generate got the prompt {key[:160]}; expected build_messages(None, question) for each question")


def _run_steering(fn, model, tokenizer, vectors, layers, coeff, probe, scorer, where=""):
    name = "steering_effect_by_layer"
    with hook_guard(model, name), using(fn, generate=probe, score_trait_response=scorer):
        try:
            return call(fn, model, tokenizer, vectors, list(STEER_QUESTIONS), STEER_TEMPLATE, layers=layers,
                        coeff=coeff, max_new_tokens=5, name=name)
        except (NotImplementedYet, AssertionError):
            raise
        except ZeroDivisionError as err:
            raise AssertionError(f"{name} raised ZeroDivisionError ({err}) when the judge gave no score to any answer "
                                 "of a layer: store float('nan') for that layer") from err
        except Exception as err:
            raise AssertionError(f"{name} raised {type(err).__name__}: {err}{where}") from err


def test_steering_effect_by_layer(steering_effect_by_layer, model=None, tokenizer=None) -> None:
    own = model is not None and tokenizer is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(steering_effect_by_layer, "steering_effect_by_layer")
    from utils.hooks import count_hooks, get_blocks

    name = "steering_effect_by_layer"
    n_layers = len(get_blocks(model))
    d_model = model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(n_layers, d_model, generator=g) * torch.arange(1, n_layers + 1).float()[:, None]
    layers = [2, 0, 3, ALL_NONE_LAYER] if n_layers >= 4 else list(range(n_layers))
    coeff = 3.0
    probe, scorer = _SteeringProbe(model), _FakeScorer()
    got = _run_steering(steering_effect_by_layer, model, tokenizer, vectors, layers, coeff, probe, scorer)
    check(len(probe.calls) > 0, f"{name} never called `generate(...)` (the function imported in the setup "
                                "cell): generate the answers with it, inside the Steerer block")
    check(len(probe.calls) == len(layers),
          f"generate was called {len(probe.calls)} times for {len(layers)} layers: one batched call per layer, "
          "with all the questions")
    requested = list(layers)
    # which block each generate call ran steered at, and which layer's vector was added there (in any order of layers)
    blocks, used = [], []
    for call_info in probe.calls:
        check(call_info["n"] == len(STEER_QUESTIONS) and sorted(call_info["qidx"]) == list(range(len(STEER_QUESTIONS))),
              "each generate call should get one prompt per question (all questions in one call)")
        _check_steer_prompts(call_info, tokenizer)
        check(call_info["temperature"] == 0,
              f"generate was called with temperature={call_info['temperature']}: the answers must be greedy "
              "(temperature=0.0), so that the layers differ only in where the vector was added")
        check(call_info["max_new_tokens"] == 5,
              f"generate was called with max_new_tokens={call_info['max_new_tokens']} when {name} got "
              "max_new_tokens=5: pass max_new_tokens through to generate")
        if call_info["layer"] is None:
            fail("generate ran without any steering: call generate *inside* the `with Steerer(...)` block")
        cosines = torch.nn.functional.cosine_similarity(vectors, call_info["delta"][None, :], dim=-1)
        blocks.append(call_info["layer"])
        used.append(int(cosines.argmax()) if float(cosines.max()) > 0.99 else None)
    if sorted(blocks) != sorted(requested) or any(j is not None and j != L for L, j in zip(blocks, used)):
        shown = ", ".join(f"block {L} with {'vectors[%d]' % j if j is not None else 'another vector'}"
                          for L, j in zip(blocks, used))
        if all(j is not None for j in used) and sorted(used) == sorted(requested):
            fail(f"asked for layers {requested}, but the steering was applied at blocks {blocks} ({shown}): steer "
                 "block L with vectors[L] (layer=L, 0-based), and remove each layer's hook before the next")
        bad = next(((L, j) for L, j in zip(blocks, used) if j != L), (None, None))
        if bad[1] is not None:
            fail(f"at block {bad[0]} the added vector is vectors[{bad[1]}], not vectors[{bad[0]}] ({shown}): steer each "
                 "layer with its own vector")
        fail(f"asked for layers {requested}, but the steering was applied at blocks {blocks} ({shown}): steer "
             "block L with vectors[L] (layer=L, 0-based), and remove each layer's hook before the next")
    for call_info in probe.calls:
        L = call_info["layer"]
        want = coeff * vectors[L]
        delta = call_info["delta"]
        if not _same_vector(delta, want, probe.exact):
            if _same_vector(delta, want / want.norm() * coeff, probe.exact):
                fail("the steering vector was normalised: add coeff * vectors[L] as it is")
            if _same_vector(delta, vectors[L], probe.exact):
                fail("the coefficient was not applied: add coeff * vectors[L] (pass coeff to Steerer)")
            cos = float(torch.nn.functional.cosine_similarity(delta, want, dim=0))
            if cos < 0.99:
                fail(f"at block {L} the added vector is not vectors[{L}] (cosine {cos:.2f}): steer each layer with its own vector")
            fail(f"at block {L} the added vector has the right direction but the wrong size (norm {float(delta.norm()):.3g}, "
                 f"expected {float(want.norm()):.3g}): add coeff * vectors[{L}]")
        if call_info["first_moved"]:
            fail(f"at block {L} every position was steered, the question's tokens too: steer with "
                 "positions=\"response\" (the last position of each forward pass), as the exercise asks")
    check(len(scorer.seen) > 0, f"{name} never called score_trait_response(question, answer, eval_prompt_template)")
    for question, answer, template in scorer.seen:
        if template != STEER_TEMPLATE:
            fail(f"score_trait_response got the template {str(template)[:60]!r}: score with the eval_prompt_template "
                 f"passed to {name}")
        if question not in STEER_QUESTIONS:
            if answer in STEER_QUESTIONS:
                fail("score_trait_response got the answer as the question: the question and the answer are swapped "
                     "(score_trait_response(question, answer, eval_prompt_template))")
            fail(f"score_trait_response got the question {str(question)[:60]!r}, which is not one of the questions")
        m = re.search(r"answer to question (-?\d+)", str(answer))
        if m and int(m.group(1)) >= 0 and STEER_QUESTIONS[int(m.group(1))] != question:
            fail("an answer was scored with another question than its own: zip the questions with the answers of "
                 "generate, which come back in the order of the prompts")
    check(isinstance(got, dict), f"{name} should return a dict {{layer: mean score}}, got {type(got).__name__}")
    check(set(got) == set(layers), f"the result's keys should be the layers asked for, {sorted(layers)}; got {sorted(got)}")
    for L in layers:
        scores = [_fake_score(q, f"[steered layer={L}] answer to question {i}") for i, q in enumerate(STEER_QUESTIONS)]
        valid = [s for s in scores if s is not None]
        want = sum(valid) / len(valid) if valid else float("nan")
        value = got[L]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            fail(f"the mean score for layer {L} is a one-element tensor: store a Python float (call .item() on it)")
        check(isinstance(value, numbers.Real) and not isinstance(value, bool),
              f"the mean score for layer {L} should be a number, got {type(value).__name__}")
        value = float(value)  # a numpy float32 mean is a number too
        if not valid:
            check(math.isnan(value), f"layer {L}: the judge scored none of the answers (every score None), and the "
                                     f"result is {value!r}: store float('nan') there, not a number the judge never gave")
            continue
        if not math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-6):
            as_zero = sum(s or 0 for s in scores) / len(scores)
            if math.isclose(value, as_zero, rel_tol=1e-6, abs_tol=1e-6):
                fail(f"layer {L}: a None score (refusal) was counted as 0; average only the scores that are not None")
            order = [c["layer"] for c in probe.calls]
            if L in order and order.index(L) > 0:
                upto = order[:order.index(L) + 1]
                pooled = [s for M in upto for s in (_fake_score(q, f"[steered layer={M}] answer to question {i}")
                                                    for i, q in enumerate(STEER_QUESTIONS)) if s is not None]
                if pooled and math.isclose(value, sum(pooled) / len(pooled), rel_tol=1e-6, abs_tol=1e-6):
                    fail(f"layer {L}: the mean also counts the scores of the layers steered before it ({upto[:-1]}): "
                         "start a new list of scores for each layer")
            for M in layers:
                other = [x for x in (_fake_score(q, f"[steered layer={M}] answer to question {i}")
                                     for i, q in enumerate(STEER_QUESTIONS)) if x is not None]
                if M != L and other and math.isclose(value, sum(other) / len(other), rel_tol=1e-6, abs_tol=1e-6):
                    fail(f"layer {L}: the result holds the mean score of layer {M}: key each mean by its layer, "
                         f"result[L] for L in layers (not by its position in `layers`, {list(layers)})")
            if want != int(want) and value in (math.floor(want), round(want)):
                fail(f"layer {L}: mean score {value}, expected {want:.4g}: the mean was rounded to a whole number "
                     "(// or round): divide with /, and keep the fraction")
            fail(f"layer {L}: mean score {value}, expected {want} (the mean of the judge's scores for that layer's answers)")

    # the steering is undone when generation fails half-way
    failing = _SteeringProbe(model, fail=True)
    before = count_hooks(model)
    try:
        with using(steering_effect_by_layer, generate=failing, score_trait_response=_FakeScorer()):
            steering_effect_by_layer(model, tokenizer, vectors, list(STEER_QUESTIONS), STEER_TEMPLATE, layers=[0],
                                     coeff=coeff, max_new_tokens=5)
    except Exception:
        pass
    finally:
        leaked = count_hooks(model) - before
        if leaked > 0:
            from part_tests._common import remove_leftover_hooks

            remove_leftover_hooks(model)
    check(leaked <= 0, f"when generate raised an error inside the steering, {name} left {leaked} hook(s) on the model: "
                       "steer with `with Steerer(...):` (or remove your hook in a `finally:` block) so that it is removed "
                       "even then")

    if not own:
        # a bfloat16 model: the steering must keep the hidden states in the model's dtype
        half, _ = tiny("tiny-qwen2", torch.bfloat16)
        half_probe = _SteeringProbe(half)
        try:
            _run_steering(steering_effect_by_layer, half, tokenizer, vectors, [ALL_NONE_LAYER + 1], coeff, half_probe,
                          _FakeScorer(), " on a bfloat16 model")
        except AssertionError as err:
            if "bfloat16" in str(err) or "dtype" in str(err).lower() or "BFloat16" in str(err):
                raise AssertionError(f"{err}: the steering must return the hidden state in the model's own dtype "
                                     "(cast the added vector to it; Steerer does)") from None
            raise
        check(len(half_probe.calls) <= 1,
              f"asked for the one layer [{ALL_NONE_LAYER + 1}], but generate was called {len(half_probe.calls)} times "
              "(steered at blocks " + ", ".join(str(c["layer"]) for c in half_probe.calls) + "): steer only the layers "
              "in `layers`, not every block")
        check(half_probe.calls and half_probe.calls[0]["layer"] == ALL_NONE_LAYER + 1,
              f"on a bfloat16 model the steering was not applied at block {ALL_NONE_LAYER + 1}")
    passed("test_steering_effect_by_layer")


# ---------------------------------------------------------------------------
# 3.7
# ---------------------------------------------------------------------------
def _unit(v):
    return v / v.norm()


def _cosine_fixture():
    """A non-square SAE with planted decoder rows of very different norms, and an encoder unlike its decoder."""
    from utils.sae import SparseAutoencoder

    d_model, d_sae = 16, 40
    g = torch.Generator().manual_seed(7)
    v = torch.randn(d_model, generator=g)
    u = torch.randn(d_model, generator=g)
    u = u - (u @ _unit(v)) * _unit(v)  # orthogonal to v
    W_dec = torch.randn(d_sae, d_model, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * torch.linspace(0.5, 3.0, d_sae)[:, None]
    W_dec[7] = 0.2 * _unit(v)  # exactly along v, small norm
    W_dec[22] = 6.0 * (0.8 * _unit(v) + 0.6 * _unit(u))  # cosine 0.8, large norm
    W_dec[31] = -4.0 * _unit(v)  # exactly against v
    W_dec[12] = 0.5 * (0.6 * _unit(v) + 0.8 * _unit(u))  # cosine 0.6
    W_enc = torch.randn(d_model, d_sae, generator=g)
    sae = SparseAutoencoder(W_enc=W_enc, b_enc=torch.zeros(d_sae), W_dec=W_dec, b_dec=torch.zeros(d_model))
    return sae, 5.0 * v


def _true_cosines(sae, vector):
    return (sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)) @ _unit(vector)


def _run_cosine(fn, vector, sae, k):
    vector_before, decoder_before = vector.clone(), sae.W_dec.detach().clone()
    try:
        out = call(fn, vector, sae, k, name="top_sae_features_by_cosine")
    except NotImplementedYet:
        raise
    except (RuntimeError, IndexError) as err:
        raise AssertionError(f"top_sae_features_by_cosine raised {type(err).__name__} ({err}) on an SAE with d_sae != d_model: "
                             "feature i's direction is row i of sae.W_dec, which has shape [d_sae, d_model] "
                             "(rows, not columns)") from err
    for what, before, after in (("the vector", vector_before, vector), ("sae.W_dec", decoder_before, sae.W_dec)):
        check(torch.equal(before, after.detach()),
              f"top_sae_features_by_cosine changed {what} in place (x /= x.norm() or an in-place normalisation): "
              "normalise copies (x / x.norm(...)); the caller's persona vector and SAE must stay as they were")
    return _expect_pair(out, "top_sae_features_by_cosine", ("indices", "cosines"), k)


def _expect_pair(out, name, what, k):
    """(indices, values) as annotated: tuple[Int[Tensor, "k"], Float[Tensor, "k"]]; returned as long and float CPU tensors."""
    check(isinstance(out, (tuple, list)) and len(out) == 2, f"{name} should return a pair ({what[0]}, {what[1]})")
    for x, w in zip(out, what):
        if not isinstance(x, torch.Tensor):
            fail(f"{name} should return its {w} as a torch.Tensor of shape (k,) = ({k},), got a {type(x).__name__}: "
                 "keep the result of topk as tensors (torch.as_tensor converts a list or numpy array)")
    indices = expect_tensor(out[0], FEATURE_IDS, f"{name} ({what[0]})", k=k)
    values = expect_tensor(out[1], FEATURE_VALUES, f"{name} ({what[1]})", k=k)
    return indices.long().cpu(), values.float().cpu()


def test_top_sae_features_by_cosine(top_sae_features_by_cosine) -> None:
    from utils.sae import SparseAutoencoder

    sae, vector = _cosine_fixture()
    k = 3
    indices, cosines = _run_cosine(top_sae_features_by_cosine, vector, sae, k)
    true = _true_cosines(sae, vector)
    want = true.topk(k).indices
    if indices.tolist() != want.tolist():
        got_set = set(indices.tolist())
        if 31 in got_set:
            fail("feature 31 points exactly *against* the vector (cosine -1) but was ranked among the top: rank by the "
                 "signed cosine, largest first (not by its absolute value, and not smallest first)")
        by_columns = (sae.W_dec / sae.W_dec.norm(dim=0, keepdim=True)) @ _unit(vector)
        if indices.tolist() == by_columns.topk(k).indices.tolist():
            fail("you normalised the columns of W_dec (a norm over dim 0): normalise each decoder row, i.e. each "
                 "feature's direction (W_dec / W_dec.norm(dim=-1, keepdim=True))")
        raw = sae.W_dec @ vector
        if indices.tolist() == raw.topk(k).indices.tolist() or (22 in got_set and indices[0] == 22):
            fail("a long decoder row outranked one exactly along the vector: normalise each decoder row (divide by its "
                 "norm) before comparing")
        enc_dirs = sae.W_enc.T
        enc_cos = (enc_dirs / enc_dirs.norm(dim=-1, keepdim=True)) @ _unit(vector)
        if indices.tolist() == enc_cos.topk(k).indices.tolist():
            fail("you ranked the encoder's directions: a feature's direction in the residual stream is its *decoder* row, sae.W_dec[i]")
        fail(f"top_sae_features_by_cosine returned features {indices.tolist()}, expected {want.tolist()} (largest signed cosine first)")
    check(bool((cosines.abs() <= 1 + 1e-4).all()),
          f"cosines must lie in [-1, 1], got {cosines.tolist()}: divide by the norms of both the decoder rows and the vector")
    if not close(cosines, true[want], rtol=1e-4, atol=1e-4):
        if close(cosines, (sae.W_dec @ vector)[want], rtol=1e-4, atol=1e-4) or not bool((cosines.abs() <= 1 + 1e-4).all()):
            fail("the returned values are dot products, not cosines: normalise the decoder rows and the vector")
        fail(f"top_sae_features_by_cosine returned cosines {cosines.tolist()}, expected {true[want].tolist()}")

    # a square SAE: columns of W_dec have the right length but are not features
    d = 12
    g = torch.Generator().manual_seed(3)
    W_dec = torch.randn(d, d, generator=g)
    v = torch.randn(d, generator=g)
    W_dec[5] = 2.0 * v
    square = SparseAutoencoder(W_enc=W_dec.T.clone(), b_enc=torch.zeros(d), W_dec=W_dec, b_dec=torch.zeros(d))
    indices, cosines = _run_cosine(top_sae_features_by_cosine, v, square, 1)
    if indices.tolist() != [5] or abs(float(cosines[0]) - 1.0) > 1e-4:
        fail("on a square SAE the top feature should be row 5 of W_dec (planted along the vector, cosine 1): feature "
             "i's direction is row i of sae.W_dec (shape [d_sae, d_model]), not column i")
    passed("test_top_sae_features_by_cosine")


def _difference_fixture():
    """Identity encoder (so encode(x) = relu(x) per coordinate) and activations built feature by feature."""
    from utils.sae import SparseAutoencoder

    d = 32
    g = torch.Generator().manual_seed(11)
    sae = SparseAutoencoder(W_enc=torch.eye(d), b_enc=torch.zeros(d), W_dec=torch.randn(d, d, generator=g),
                            b_dec=torch.zeros(d))
    n_pos, n_neg = 6, 5
    pos = torch.zeros(n_pos, d)
    neg = torch.zeros(n_neg, d)
    pos[:, 3] = torch.tensor([0.0, 0.0, 0.0, 0.0, 4.5, 4.5])  # more active in pos: diff +1.5 (mean of chunk means of 4 + 2 rows: 2.25)
    pos[:, 12] = torch.tensor([5.0, -5.0] * 3)         # mean(relu) 2.5, relu(mean) 0: diff +2.5
    neg[:, 9] = 3.0                                   # more active in neg: diff -3.0
    neg[:, 20] = -6.0                                 # never active: diff 0 (pre-activation diff +6)
    pos[:, 25], neg[:, 25] = 1.0, 0.2                  # diff +0.8
    pos[:, 27] = torch.tensor([0.6, 0.0, 0.0, 0.0, 0.0, 0.0])  # diff +0.1
    return sae, pos, neg


def test_feature_activation_differences(feature_activation_differences) -> None:
    sae, pos, neg = _difference_fixture()
    k = 3
    try:
        out = call(feature_activation_differences, sae, pos.clone(), neg.clone(), k, name="feature_activation_differences")
    except NotImplementedYet:
        raise
    except (RuntimeError, IndexError, ValueError) as err:
        raise AssertionError(f"feature_activation_differences raised {type(err).__name__}: {err}") from err
    indices, diffs = _expect_pair(out, "feature_activation_differences", ("indices", "differences"), k)
    indices = indices.tolist()
    want = [12, 3, 25]
    want_diffs = torch.tensor([2.5, 1.5, 0.8])
    if indices != want:
        if 9 in indices and indices[0] == 9:
            if float(diffs[0]) > 0:
                fail("feature 9 fires more in the *negative* answers but came first with a positive difference: "
                     "the signed difference is mean_pos - mean_neg, not neg - pos")
            fail("feature 9 fires more in the *negative* answers (difference -3) but came first: rank by the signed "
                 "difference, largest first, not by its absolute value or smallest first")
        if 20 in indices:
            fail("feature 20 is never active (its pre-activation is negative everywhere) but was ranked: use "
                 "sae.encode(...) (after the ReLU), not the pre-activations")
        if 12 not in indices:
            fail("feature 12 fires on half of the positive rows but was missed: encode every row first, then average "
                 "(sae.encode(acts).mean(0)), not sae.encode(acts.mean(0))")
        fail(f"feature_activation_differences returned features {indices}, expected {want}")
    if not close(diffs, want_diffs, rtol=1e-4, atol=1e-4):
        if close(diffs, -want_diffs, rtol=1e-4, atol=1e-4):
            fail("the differences have the wrong sign: return mean_pos - mean_neg")
        fail(f"feature_activation_differences returned differences {diffs.tolist()}, expected {want_diffs.tolist()} "
             "(mean over the positive rows minus mean over the negative rows)")

    # batch_size: sae.encode sees at most batch_size rows at a time, and chunks of unequal size still give the means
    rows = []
    inner = sae.pre_activations

    def counting(x):
        rows.append(int(x.shape[0]) if x.ndim > 1 else 1)
        return inner(x)

    sae.pre_activations = counting  # sae.encode calls it
    try:
        out = call(feature_activation_differences, sae, pos.clone(), neg.clone(), k, batch_size=4,
                   name="feature_activation_differences")
    except (NotImplementedYet, AssertionError):
        raise
    except Exception as err:
        raise AssertionError(f"feature_activation_differences(..., batch_size=4) raised {type(err).__name__}: {err}") from err
    finally:
        del sae.pre_activations
    indices, diffs = _expect_pair(out, "feature_activation_differences", ("indices", "differences"), k)
    if rows:
        check(max(rows) <= 4, f"feature_activation_differences(..., batch_size=4) encoded {max(rows)} rows in one "
                              "sae.encode call: encode at most batch_size rows at a time (a real SAE's 131072 features "
                              "per row do not fit in memory for every token at once)")
    if indices.tolist() != want or not close(diffs, want_diffs, rtol=1e-4, atol=1e-4):
        fail(f"with batch_size=4 (6 positive rows: chunks of 4 and 2) feature_activation_differences returned "
             f"{indices.tolist()} with differences {[round(x, 4) for x in diffs.tolist()]}, expected {want} with "
             f"{want_diffs.tolist()}: sum the feature activations over the chunks and divide by the number of rows "
             "(a mean of the chunks' means weighs a short last chunk too much)")
    passed("test_feature_activation_differences")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
