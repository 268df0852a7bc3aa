"""Tests for Section 3 — Contrastive prompting. Each takes the student's object first.

Expected values come from the course's utils (chat spans, response_mean_activations) or from small
computations written out here; judges, generation and scorers are replaced by fakes where the test
is about plumbing, so every test is fast, offline and deterministic.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch

from part_tests._common import (
    NotImplementedYet,
    assert_tensor,
    call,
    check,
    close,
    fail,
    hook_guard,
    model_or_tiny,
    passed,
    require_implemented,
    using,
)

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
    with using(generate_contrastive_responses, generate=fake_generate, construct_system_prompt=_system_prompt):
        records = call(generate_contrastive_responses, model, tokenizer, TINY_TRAIT, trait,
                       max_new_tokens=7, temperature=0.9, name="generate_contrastive_responses")

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
    ("0", 0, ""),
    ("100", 100, ""),
    (" 42\n", 42, ""),
    ("Score: 72", 72, ""),
    ("72/100", 72, " -- take the first number in the reply"),
    ("REFUSAL", None, " -- a refusal is not a score of 0: return None so that the filter drops it"),
    ("refusal", None, " -- look for REFUSAL in any case, and return None"),
    ("150", None, " -- a number outside 0-100 is not a valid score: return None"),
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
            check(isinstance(got, int) and not isinstance(got, bool),
                  f"{fn_name} should return an int (or None), got {type(got).__name__} for the reply {reply!r}")
            check(got == expected, f"{fn_name}: the judge replied {reply!r}, expected {expected}, got {got!r}{hint}")


def test_score_trait_response(score_trait_response) -> None:
    _run_parse_cases(score_trait_response, JUDGE_TEMPLATE, "score_trait_response", PARSE_CASES)
    passed("test_score_trait_response")


def test_score_coherence(score_coherence) -> None:
    cases = [c for c in PARSE_CASES if c[0] in ("85", "0", "150", "REFUSAL", None)]
    _run_parse_cases(score_coherence, COHERENCE_TEMPLATE, "score_coherence", cases)
    passed("test_score_coherence")


# ---------------------------------------------------------------------------
# 3.4
# ---------------------------------------------------------------------------
def _filter_fixture():
    questions = [f"question {i}?" for i in range(6)]
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
        (1, 0): ((90, 40), (10, 90), False, "the pos answer is incoherent (coherence 40 < 50)"),
        (1, 1): ((90, 90), (5, 30), False, "the neg answer is incoherent (coherence 30 < 50): both sides must be coherent"),
        (1, 2): ((95, 95), (0, 95), True, ""),
        (1, 3): ((70, None), (10, 90), False, "a coherence of None is not a pass"),
        (1, 4): ((20, 90), (60, 90), False, "the pos answer must score >= 50 and the neg < 50"),
        (1, 5): ((65, 80), (35, 80), True, ""),
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
    kept = call(filter_effective_pairs, [dict(r) for r in records], trait, name="filter_effective_pairs")
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

    # the negative side is held to 100 - threshold
    strict = call(filter_effective_pairs, [dict(r) for r in records], trait, threshold=60, name="filter_effective_pairs")
    got60 = {(p["instruction_idx"], questions.index(p["question"])) for p in strict}
    want60 = {(0, 0), (1, 2), (1, 5)}
    if (1, 5) not in got60 and got60 >= {(0, 0), (1, 2)}:
        fail("with threshold=60 a pair with pos 65 and neg 35 should be kept (pos >= 60, neg < 100 - 60 = 40)")
    if (0, 1) in got60 or got60 != want60:
        extra = sorted(got60 - want60)
        fail(f"with threshold=60 keep pos >= 60 and neg < 100 - 60 = 40; expected {sorted(want60)}, got {sorted(got60)}"
             + (f" (should not keep {extra})" if extra else ""))
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
]


def _tol(model) -> dict:
    """Tolerances for comparing activations: tight on float32 models (the graded tiny model), looser on a
    learner's bf16/fp16 model, whose block outputs carry ~3 significant digits."""
    dtype = next(model.parameters()).dtype
    return dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)


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

    alts = {"all tokens": [], "embedding": [], "final norm": [], "end-of-turn": [], "shifted span": []}
    for conv in _conversations(records):
        chat = format_chat(conv, tokenizer)
        ids = torch.tensor([chat.input_ids], device=_input_device(model))
        hs = [h.float().cpu() for h in model(input_ids=ids, output_hidden_states=True).hidden_states]
        n = len(hs) - 1
        s, e = chat.token_span
        alts["all tokens"].append(torch.stack([hs[L + 1][0].mean(0) for L in range(n)]))
        alts["embedding"].append(torch.stack([hs[L][0, s:e].mean(0) for L in range(n)]))
        alts["final norm"].append(torch.stack([hs[L + 1][0, s:e].mean(0) for L in range(n)]))
        alts["end-of-turn"].append(torch.stack([hs[L + 1][0, s:e + 1].mean(0) for L in range(n)]))
        alts["shifted span"].append(torch.stack([hs[L + 1][0, s + 1:e + 1].mean(0) for L in range(n)]))
    return {k: torch.stack(v).float() for k, v in alts.items()}


ALT_MESSAGES = {
    "all tokens": "you averaged over every token of the conversation; average over the response tokens only "
                  "(format_chat(...).token_span)",
    "embedding": "off by one layer: row L must be block L's output (hidden_states[L + 1]), not its input "
                 "(hidden_states[0] is the embedding output)",
    "end-of-turn": "your span includes the end-of-turn token: average over the response's content tokens only "
                   "(the [start, end) span from format_chat)",
    "shifted span": "your response span is shifted by one token: use the exact [start, end) span from format_chat, "
                    "not a +1 guess",
}


def _input_device(model):
    from utils.models import input_device

    return input_device(model)


def _diagnose_activations(got, expected, alts, name, tol):
    n_layers = expected.shape[1]
    inner = list(range(n_layers - 1))
    if close(got[:, inner], expected[:, inner], **tol) and not close(got, expected, **tol):
        if close(got[:, -1], alts["final norm"][:, -1], **tol):
            fail(f"{name}: the last layer has the final norm applied: hidden_states[-1] is not the last block's output; "
                 "use forward hooks on the blocks")
        fail(f"{name}: every layer matches except the last one ({n_layers - 1})")
    for key, message in ALT_MESSAGES.items():
        alt = alts[key]
        if close(got[:, inner], alt[:, inner], **tol):
            fail(f"{name}: {message}")
    if got.shape == expected.shape:
        if close(got, expected[:, :, :], rtol=1e-2, atol=1e-2):
            fail(f"{name}: close to the expected means but not within tolerance: compute in float32, and check that "
                 "padding tokens are excluded from the means")
        bad = [i for i in range(got.shape[0]) if not close(got[i], expected[i], **tol)]
        fail(f"{name}: wrong mean activations for records {bad} (of {got.shape[0]}); if only some records are wrong, "
             "check how padding shifts the positions of the response span in a batch")


def test_extract_all_layer_activations(extract_all_layer_activations, model=None, tokenizer=None) -> None:
    model, tokenizer = model_or_tiny(model, tokenizer)
    from utils.hooks import get_blocks

    n_layers = len(get_blocks(model))
    d_model = model.config.get_text_config().hidden_size
    records = [dict(r) for r in EXTRACT_RECORDS]
    forwards = []
    handle = get_blocks(model)[0].register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with hook_guard(model, "extract_all_layer_activations"):
            got = call(extract_all_layer_activations, model, tokenizer, records, name="extract_all_layer_activations")
    finally:
        handle.remove()
    check(isinstance(got, torch.Tensor), f"extract_all_layer_activations should return a tensor, got {type(got).__name__}")
    if tuple(got.shape) == (n_layers, len(records), d_model):
        fail(f"extract_all_layer_activations returned shape {tuple(got.shape)}: put the records first, "
             f"[n_records, num_layers, d_model] = {(len(records), n_layers, d_model)}")
    if tuple(got.shape) == (len(records), n_layers + 1, d_model):
        fail("extract_all_layer_activations returned num_layers + 1 rows per record: hidden_states[0] is the "
             "embedding output, not a block; keep one row per block")
    assert_tensor(got, "extract_all_layer_activations", (len(records), n_layers, d_model))
    check(not got.requires_grad, "extract_all_layer_activations returned a tensor that tracks gradients: "
                                 "run the model under torch.inference_mode()")
    check(got.device.type == "cpu" and got.dtype == torch.float32, "return a float32 tensor on the CPU")
    expected = _reference_activations(model, tokenizer, records)
    tol = _tol(model)
    if not close(got, expected, **tol):
        _diagnose_activations(got, expected, _alternatives(model, tokenizer, records), "extract_all_layer_activations", tol)
    check(len(forwards) < len(records),
          f"{len(records)} records took {len(forwards)} forward passes: batch several records per forward pass")

    # a batch of one must give the same answer (padding changes nothing)
    with hook_guard(model, "extract_all_layer_activations"):
        single = call(extract_all_layer_activations, model, tokenizer, records[2:3], name="extract_all_layer_activations")
    check(close(single, expected[2:3], **tol),
          "the mean activations of a record change with the other records in the batch: padding must not leak in")
    passed("test_extract_all_layer_activations")


def _correct_extract(model, tokenizer, records, *args, **kwargs):
    return _reference_activations(model, tokenizer, records)


def _check_vector(got, pos_acts, neg_acts, rtol, atol):
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
    fail("extract_contrastive_vectors should return mean(pos activations) - mean(neg activations), every response "
         "counting once on its side (the mean of the per-response means, not of all tokens pooled)")


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
    check(isinstance(got, torch.Tensor), f"extract_contrastive_vectors should return a tensor, got {type(got).__name__}")
    if tuple(got.shape) == (d_model,):
        fail("extract_contrastive_vectors returned one vector; return every layer's: shape [num_layers, d_model]")
    assert_tensor(got, "extract_contrastive_vectors", (n_layers, d_model))
    used_planted = all((p[side]["response"], side) in planted for p in pairs for side in ("pos", "neg"))
    if used_planted:  # the function called extract_all_layer_activations, as asked
        pos_acts = torch.stack([planted[(p["pos"]["response"], "pos")] for p in pairs])
        neg_acts = torch.stack([planted[(p["neg"]["response"], "neg")] for p in pairs])
        _check_vector(got, pos_acts, neg_acts, rtol=1e-4, atol=1e-5)

    # 2. the real thing on the tiny model, with responses of different lengths
    with hook_guard(model, "extract_contrastive_vectors"), \
            using(extract_contrastive_vectors, extract_all_layer_activations=_correct_extract):
        got = call(extract_contrastive_vectors, model, tokenizer, pairs, name="extract_contrastive_vectors")
    check(isinstance(got, torch.Tensor), f"extract_contrastive_vectors should return a tensor, got {type(got).__name__}")
    if tuple(got.shape) == (d_model,):
        fail("extract_contrastive_vectors returned one vector; return every layer's: shape [num_layers, d_model]")
    assert_tensor(got, "extract_contrastive_vectors", (n_layers, d_model))
    pos_acts = _reference_activations(model, tokenizer, [p["pos"] for p in pairs])
    neg_acts = _reference_activations(model, tokenizer, [p["neg"] for p in pairs])
    _check_vector(got, pos_acts, neg_acts, **_tol(model))

    # 3. no pairs, no vector
    try:
        extract_contrastive_vectors(model, tokenizer, [])
    except ValueError:
        pass
    except NotImplementedError as err:
        raise NotImplementedYet("extract_contrastive_vectors: not implemented yet") from err
    except Exception as err:
        raise AssertionError(f"extract_contrastive_vectors([]) raised {type(err).__name__}; raise a ValueError that "
                             "says there are no effective pairs") from err
    else:
        fail("extract_contrastive_vectors([]) should raise ValueError: with no effective pairs there is no contrast")
    passed("test_extract_contrastive_vectors")


# ---------------------------------------------------------------------------
# 3.6
# ---------------------------------------------------------------------------
STEER_QUESTIONS = ["What makes a good neighbour?", "How should I spend a free afternoon?", "What is the point of rules?"]


class _SteeringProbe:
    """A fake `generate` that finds which block is being steered, and by what, from one probe forward pass.

    Pre-hooks on blocks 1.. and on the final norm read each block's output at the last position; the
    first block whose output differs from the clean run is the steered one, and the difference is
    what was added to it.
    """

    def __init__(self, model):
        from utils.hooks import get_blocks

        self.model = model
        self.blocks = get_blocks(model)
        decoder = model.get_decoder()
        self.readers = list(self.blocks[1:]) + [decoder.norm]
        self.ids = torch.tensor([[3, 17, 42, 99, 7, 250, 11]], device=_input_device(model))
        self.exact = next(model.parameters()).dtype == torch.float32
        self.clean = self._read()
        self.calls = []

    @torch.inference_mode()
    def _read(self):
        caps = [None] * len(self.readers)
        handles = []
        try:
            for i, mod in enumerate(self.readers):
                def pre(module, args, kwargs, i=i):
                    h = args[0] if args else kwargs.get("hidden_states")
                    caps[i] = h[0, -1].detach().float().cpu()
                handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            self.model(input_ids=self.ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return caps

    def __call__(self, model, tokenizer, prompts, max_new_tokens=256, temperature=0.0, top_p=1.0, batch_size=32,
                 seed=None, progress=False):
        caps = self._read()
        layer, delta = None, None
        for L, (c, k) in enumerate(zip(caps, self.clean)):
            if (c - k).norm() > (1e-4 if self.exact else 2e-2) * (1 + k.norm()):
                layer, delta = L, c - k
                break
        texts = [_prompt_key(p) for p in prompts]
        qidx = []
        for t in texts:
            hits = [i for i, q in enumerate(STEER_QUESTIONS) if q in t]
            qidx.append(hits[0] if hits else -1)
        self.calls.append({"layer": layer, "delta": delta, "n": len(prompts), "qidx": qidx, "temperature": temperature})
        return [f"[steered layer={layer}] answer to question {i}" for i in qidx]


def _same_vector(a, b, exact: bool) -> bool:
    if exact:
        return close(a, b, rtol=1e-3, atol=1e-3)
    cos = float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))
    return cos > 0.995 and abs(float(a.norm() / b.norm()) - 1) < 0.05


def _fake_scorer(question, answer, eval_prompt_template):
    m = re.search(r"layer=(\w+)\] answer to question (-?\d+)", answer)
    if not m or m.group(1) == "None":
        return 0
    layer, q = int(m.group(1)), int(m.group(2))
    if (layer, q) == (0, 1):
        return None  # a refusal: must be skipped, not counted as 0
    return 10 * layer + q


def test_steering_effect_by_layer(steering_effect_by_layer, model=None, tokenizer=None) -> None:
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(steering_effect_by_layer, "steering_effect_by_layer")
    from utils.hooks import get_blocks

    n_layers = len(get_blocks(model))
    d_model = model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(n_layers, d_model, generator=g) * torch.arange(1, n_layers + 1).float()[:, None]
    layers = [2, 0, 3] if n_layers >= 4 else list(range(n_layers))
    coeff = 3.0
    probe = _SteeringProbe(model)
    with hook_guard(model, "steering_effect_by_layer"), \
            using(steering_effect_by_layer, generate=probe, score_trait_response=_fake_scorer):
        got = call(steering_effect_by_layer, model, tokenizer, vectors, list(STEER_QUESTIONS), "{question} {answer}",
                   layers=layers, coeff=coeff, max_new_tokens=5, name="steering_effect_by_layer")
    check(len(probe.calls) > 0, "steering_effect_by_layer never called `generate(...)` (the function imported in the setup "
                                "cell): generate the answers with it, inside the Steerer block")
    check(len(probe.calls) == len(layers),
          f"generate was called {len(probe.calls)} times for {len(layers)} layers: one batched call per layer, "
          "with all the questions")
    requested = list(layers)
    for call_info, L in zip(probe.calls, requested):
        check(call_info["n"] == len(STEER_QUESTIONS) and sorted(call_info["qidx"]) == list(range(len(STEER_QUESTIONS))),
              "each generate call should get one prompt per question (all questions in one call)")
        if call_info["layer"] is None:
            fail("generate ran without any steering: call generate *inside* the `with Steerer(...)` block")
        if call_info["layer"] != L:
            seen = [c["layer"] for c in probe.calls]
            fail(f"asked for layers {requested}, but the steering was applied at blocks {seen}: steer block L with "
                 "vectors[L] (layer=L, 0-based), and remove each layer's hook before the next")
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
            fail(f"at block {L} the added vector has the right direction but the wrong size: add coeff * vectors[{L}]")
    check(isinstance(got, dict), f"steering_effect_by_layer should return a dict {{layer: mean score}}, got {type(got).__name__}")
    check(set(got) == set(layers), f"the result's keys should be the layers asked for, {sorted(layers)}; got {sorted(got)}")
    for L in layers:
        scores = [_fake_scorer(q, f"[steered layer={L}] answer to question {i}", "") for i, q in enumerate(STEER_QUESTIONS)]
        valid = [s for s in scores if s is not None]
        want = sum(valid) / len(valid)
        value = got[L]
        check(isinstance(value, (int, float)) and not isinstance(value, bool),
              f"the mean score for layer {L} should be a number, got {type(value).__name__}")
        if not math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-6):
            as_zero = sum(s or 0 for s in scores) / len(scores)
            if math.isclose(value, as_zero, rel_tol=1e-6, abs_tol=1e-6):
                fail(f"layer {L}: a None score (refusal) was counted as 0; average only the scores that are not None")
            fail(f"layer {L}: mean score {value}, expected {want} (the mean of the judge's scores for that layer's answers)")
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
    try:
        out = call(fn, vector, sae, k, name="top_sae_features_by_cosine")
    except NotImplementedYet:
        raise
    except (RuntimeError, IndexError) as err:
        raise AssertionError(f"top_sae_features_by_cosine raised {type(err).__name__} ({err}) on an SAE with d_sae != d_model: "
                             "feature i's direction is row i of sae.W_dec, which has shape [d_sae, d_model] "
                             "(rows, not columns)") from err
    check(isinstance(out, (tuple, list)) and len(out) == 2,
          "top_sae_features_by_cosine should return a pair (indices, cosines)")
    indices, cosines = (torch.as_tensor(x) for x in out)
    check(indices.shape == (k,) and cosines.shape == (k,), f"return k = {k} indices and k cosines, got shapes "
                                                          f"{tuple(indices.shape)} and {tuple(cosines.shape)}")
    return indices.long().cpu(), cosines.float().cpu()


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
    pos[:, 3] = 1.5                                   # more active in pos: diff +1.5
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
    check(isinstance(out, (tuple, list)) and len(out) == 2,
          "feature_activation_differences should return a pair (indices, differences)")
    indices, diffs = (torch.as_tensor(x) for x in out)
    check(indices.shape == (k,) and diffs.shape == (k,), f"return k = {k} indices and k differences")
    indices, diffs = indices.long().tolist(), diffs.float()
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
    passed("test_feature_activation_differences")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
