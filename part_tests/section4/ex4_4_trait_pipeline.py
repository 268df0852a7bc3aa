"""Exercise 4.4 — A pipeline that survives crashes

Tests of run_trait_pipeline: the course's step functions replaced by recording fakes and a fake
judge passed in; reruns, changed inputs, a crash half way then a resume, judge errors and refusals;
a property over fractional, negative and zero coefficients and partial batches.
"""

from __future__ import annotations

import tempfile

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    exercise,
    fail,
    model_or_tiny,
    no_hooks_left,
    passed,
    require_implemented,
    using,
)
from part_tests.properties import coefficients, for_all, st
from part_tests.section4._fakes import (
    TRAIT_TEMPLATE,
    FakeJudge,
    _coefficient_cause,
    _d_model,
    _layer_for,
)
from part_tests.shapes import expect_tensor

PIPE_QUESTIONS = ["Is my plan perfect?", "Do you like my poem?", "Am I always right?"]
PIPE_EVAL = ["Is my essay brilliant?", "Should I quit my job to day-trade?"]
PIPE_DATA = {
    "instruction": [{"pos": f"Agree with everything the user says (rule {i}).", "neg": f"Be candid with the user (rule {i})."}
                    for i in range(5)],
    "questions": PIPE_QUESTIONS,
    "eval_prompt": TRAIT_TEMPLATE,
}
PIPE_TRAIT = "probe-trait"
PIPE_TOKENS = 8  # the max_new_tokens of the test's runs


def _pipe_answer(r, temperature: float) -> str:
    """The fake generation's answer to a contrastive request (it shows the temperature it was given)."""
    return f"{r['polarity']} answer {r['instruction_idx']}-{r['question_idx']} (temperature {float(temperature):g})"


def _steer_answer(question: str, coeff: float, max_new_tokens: int) -> str:
    return f"steered {float(coeff):+g} {question} ({max_new_tokens} new tokens)"


def _pipe_scores(answer: str) -> tuple[float, float]:
    """Known (trait, coherence) scores of the fake answers, with boundary cases at 50 and 49."""
    words = answer.split()
    if words[0] == "steered":
        coeff = float(words[1])
        return 50 + 10 * coeff, 90 - 10 * abs(coeff)
    polarity, _, idx = words[:3]
    i, q = map(int, idx.split("-"))
    if polarity == "pos":
        trait = {0: 50.0, 1: 80.0, 2: 30.0}[(i + q) % 3]
        coherence = 50.0
    else:
        trait = {0: 20.0, 1: 50.0, 2: 20.0, 3: 49.0, 4: 20.0}[i]
        coherence = 49.0 if (i, q) == (4, 1) else 50.0
    return trait, coherence


def _expected_effective(threshold: float = 50, coherence_threshold: float = 50, n_questions: int | None = None,
                        scores=_pipe_scores) -> list[tuple[int, int]]:
    kept = []
    for i in range(5):
        for q in range(len(PIPE_QUESTIONS[:n_questions])):
            pt, pc = scores(f"pos answer {i}-{q}")
            nt, nc = scores(f"neg answer {i}-{q}")
            if pt >= threshold and nt < threshold and min(pc, nc) >= coherence_threshold:
                kept.append((i, q))
    return kept


class _PipeFakes:
    """Counting stand-ins for the course's step functions (patched into the notebook's globals),
    with the course's signatures: they record the settings they are called with."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.generated = 0
        self.gen_calls: list[dict] = []
        self.steered_items = 0
        self.steer_calls: list[tuple[float, int]] = []
        self.steer_vectors: list[torch.Tensor] = []
        self.steer_layers: list[int] = []
        self.steer_questions: list[str] = []
        self.steer_tokens: set[int] = set()
        self.extractions = 0
        self.extracted_pairs: list[list[tuple[int, int]]] = []
        self.plan: tuple[int, int] | None = None

    def generate_responses(self, model, tokenizer, requests, max_new_tokens=64, temperature=0.7, batch_size=32):
        self.generated += len(requests)
        self.gen_calls.append({"n": len(requests), "max_new_tokens": max_new_tokens, "temperature": temperature,
                               "batch_size": batch_size})
        return [_pipe_answer(r, temperature) for r in requests]

    def generate_with_steerer(self, model, tokenizer, questions, vector, coeff, layer, positions="response",
                              system_prompt=None, max_new_tokens=64, batch_size=32):
        self.steered_items += len(questions)
        self.steer_calls.append((float(coeff), len(questions)))
        self.steer_vectors.append(torch.as_tensor(vector).detach().float().cpu().clone())
        self.steer_layers.append(layer)
        self.steer_questions += list(questions)
        self.steer_tokens.add(max_new_tokens)
        return [_steer_answer(q, coeff, max_new_tokens) for q in questions]

    def extract_trait_vectors(self, model, tokenizer, effective):
        if not effective and self.plan:  # (requests, batch_size) of the run: requests lost before the judge?
            _check_no_partial_batch_lost(self.generated, *self.plan, "run_trait_pipeline")
        check(len(effective) > 0,
              "run_trait_pipeline passed no effective pairs to extract_trait_vectors, although the test's judge makes"
              " several pairs effective: check that each record gets its own trait and coherence score (the judge"
              " items need their kind, in the item or the step name) and that filter_effective gets the thresholds")
        self.extractions += 1
        self.extracted_pairs.append([(p["instruction_idx"], p["question_idx"]) for p in effective])
        return _course_vectors(model, tokenizer, effective)

    def patches(self):
        return dict(generate_responses=self.generate_responses, generate_with_steerer=self.generate_with_steerer,
                    extract_trait_vectors=self.extract_trait_vectors)


def _course_vectors(model, tokenizer, effective) -> torch.Tensor:
    from utils.activations import conversations_from, response_mean_activations

    records = [p["pos"] for p in effective] + [p["neg"] for p in effective]
    convs = conversations_from([r["system_prompt"] for r in records], [r["question"] for r in records],
                               [r["response"] for r in records])
    acts = response_mean_activations(model, tokenizer, convs)
    n = len(effective)
    return acts[:n].mean(0) - acts[n:].mean(0)


def _pipe_judge(fail_after=None) -> FakeJudge:
    return FakeJudge(trait_fn=lambda q, a: _pipe_scores(a)[0], coherence_fn=lambda q, a: _pipe_scores(a)[1],
                     fail_after=fail_after)


def _expected_pipeline_vectors(model, tokenizer, pairs, temperature: float = 0.0) -> torch.Tensor:
    effective = []
    for i, q in pairs:
        pair = {}
        for polarity in ("pos", "neg"):
            name = PIPE_TRAIT if polarity == "pos" else "helpful"
            pair[polarity] = {"system_prompt": f"You are a {name} assistant. {PIPE_DATA['instruction'][i][polarity]}",
                              "question": PIPE_QUESTIONS[q],
                              "response": _pipe_answer({"polarity": polarity, "instruction_idx": i, "question_idx": q},
                                                       temperature)}
        effective.append(pair)
    return _course_vectors(model, tokenizer, effective)


class _DataWithOtherCoherencePrompt:
    """The course's `data` module with another coherence prompt (patched into the notebook's globals)."""

    def __init__(self, data):
        self._data = data

    def __getattr__(self, name):
        return getattr(self._data, name)

    def load_coherence_prompt(self) -> str:
        return "Rate coherence strictly.\n" + self._data.load_coherence_prompt()


def _pairs_of(result) -> list[tuple[int, int]]:
    return sorted((p["instruction_idx"], p["question_idx"]) for p in result["effective"])


class _PipelineRuns:
    """run_trait_pipeline on the model, with the recording fakes patched in (`run(fakes, judge, cache_dir, ...)`),
    and what the checks expect of it."""

    def __init__(self, run_trait_pipeline, model, tokenizer):
        from utils.hooks import get_blocks

        self.run_trait_pipeline, self.model, self.tokenizer = run_trait_pipeline, model, tokenizer
        self.name = "run_trait_pipeline"
        self.layer = _layer_for(model)
        self.n_layers, self.d = len(get_blocks(model)), _d_model(model)
        self.coefficients = [-2, -0.5, 0, 2.5]  # a negative and a fractional one: int(coeff) mixes -0.5 with 0
        self.n_records = 5 * len(PIPE_QUESTIONS) * 2
        self.n_steered = len(PIPE_EVAL) * len(self.coefficients)
        self.n_judge = 2 * self.n_records + 2 * self.n_steered

    def __call__(self, fakes, judge, cache_dir, trait_data=PIPE_DATA, at_layer=None, **kwargs):
        args = dict(coefficients=self.coefficients, eval_questions=PIPE_EVAL, judge=judge, cache_dir=cache_dir,
                    max_new_tokens=PIPE_TOKENS, temperature=0.0)
        args.update(kwargs)
        at_layer = self.layer if at_layer is None else at_layer
        fakes.plan = (5 * 2 * len(PIPE_QUESTIONS[:args.get("n_questions")]), args.get("batch_size", 32))
        with using(self.run_trait_pipeline, **fakes.patches()):
            return call(self.run_trait_pipeline, self.model, self.tokenizer, PIPE_TRAIT, trait_data, at_layer, name=self.name,
                        **args)


def _check_no_partial_batch_lost(generated: int, n: int, batch_size: int, name: str) -> None:
    if n % batch_size and generated == n - n % batch_size:
        fail(f"{name}: {generated} of the {n} contrastive requests were generated (batch_size={batch_size}): the last,"
             " partial batch was dropped -- give runner.map every request, it makes the batches")


def _coefficient_mistake(coefficients, used: float) -> str | None:
    fractional_first = sorted(coefficients, key=lambda c: c == int(c))
    return next((why for c in fractional_first if (why := _coefficient_cause(c, used))), None)


def _check_steer_calls(fakes: _PipeFakes, coefficients, n_eval: int, name: str) -> None:
    """Each call of generate_with_steerer is at one of the coefficients exactly, for one coefficient's questions."""
    wanted = {float(c) for c in coefficients}
    for c, n in fakes.steer_calls:
        if c not in wanted:
            fail(f"{name} called generate_with_steerer with coeff={c:g}, not one of the coefficients {list(coefficients)}: "
                 + (_coefficient_mistake(coefficients, c) or "steer at each coefficient as given"))
        if n > n_eval:
            fail(f"{name} called generate_with_steerer with {n} questions at coeff={c:g}, more than the {n_eval} evaluation"
                 " question(s): one batch held several coefficients and was steered at the first one's -- group_by=lambda"
                 " item: item['coeff'] keeps each coefficient apart, exactly (not a rounded one)")


def _check_steering_record(r: dict, coefficients, name: str) -> None:
    """A steering record is labelled with one of the coefficients as given, holds the answer generated at it, and that
    answer's scores."""
    c, q = r.get("coeff"), r.get("question")
    if not isinstance(c, (int, float)) or float(c) not in {float(x) for x in coefficients}:
        why = _coefficient_mistake(coefficients, float(c)) if isinstance(c, (int, float)) else None
        fail(f"{name}: a steering record's coeff is {c!r}, not one of the coefficients {list(coefficients)}"
             + (f": {why}" if why else ""))
    response = str(r.get("response", "")).strip()
    if response != _steer_answer(q, c, PIPE_TOKENS):
        other = [x for x in coefficients if response == _steer_answer(q, x, PIPE_TOKENS)]
        fail(f"{name}: the steering record for coeff {float(c):g} holds the answer generated at"
             + (f" coeff {other[0]:g}: each batch must hold one coefficient exactly (group_by=lambda item: item['coeff'],"
                " not a rounded one)" if other else " another coefficient or question"))
    check((r.get("trait_score"), r.get("coherence_score")) == _pipe_scores(response),
          f"{name}: a steering record's scores do not belong to its response")


def _check_full_run(run: _PipelineRuns, cache_a: str):
    """A full run: every step called with the run's settings, records, effective pairs, vectors and steering
    records as expected, each generation and judge call made once. Returns (result, its vectors, the judge)."""
    model, tokenizer, name, layer, coefficients = run.model, run.tokenizer, run.name, run.layer, run.coefficients
    n_layers, d, n_records, n_steered, n_judge = run.n_layers, run.d, run.n_records, run.n_steered, run.n_judge
    fakes, judge = _PipeFakes(model, tokenizer), _pipe_judge()
    result = run(fakes, judge, cache_a)
    no_hooks_left(model, name)
    check(isinstance(result, dict), f"{name} should return a dict")
    want_keys = {"records", "effective", "vectors", "vector", "steering", "stats"}
    check(want_keys <= set(result), f"{name}'s result needs the keys {sorted(want_keys)}; got {sorted(result)}")
    for c in fakes.gen_calls:
        check(c["max_new_tokens"] == PIPE_TOKENS and c["temperature"] == 0.0,
              f"generate_responses was called with max_new_tokens={c['max_new_tokens']}, temperature={c['temperature']}:"
              f" pass {name}'s max_new_tokens ({PIPE_TOKENS}) and temperature (0.0) on to it")
    _check_no_partial_batch_lost(fakes.generated, n_records, 32, name)
    check(fakes.generated == n_records,
          f"the generate step produced {fakes.generated} responses; expected {n_records} (5 pairs x {len(PIPE_QUESTIONS)}"
          " questions x pos/neg), each generated once")
    records = result["records"]
    check(isinstance(records, list) and len(records) == n_records,
          f"result['records'] should hold the {n_records} contrastive records; got"
          f" {len(records) if isinstance(records, list) else type(records).__name__}")
    for r in records:
        check("trait_score" in r and "coherence_score" in r, "each record needs 'trait_score' and 'coherence_score'")
        check((r["trait_score"], r["coherence_score"]) == _pipe_scores(r["response"].strip()),
              f"a record's trait_score / coherence_score {(r['trait_score'], r['coherence_score'])} do not belong to its"
              f" response {r['response']!r} (the judge gave {_pipe_scores(r['response'].strip())}): keep judge results"
              " in order, and store their 'value'")
    eff = _pairs_of(result)
    check(eff == _expected_effective(),
          f"result['effective'] holds pairs {eff}, expected {_expected_effective()}: keep pairs with pos >= threshold,"
          " neg < threshold and both coherence >= coherence_threshold (filter_effective)")
    check(fakes.extractions == 1 and sorted(fakes.extracted_pairs[0]) == _expected_effective(),
          f"extract the vectors once, from the {len(_expected_effective())} effective pairs only"
          " (extract_trait_vectors(model, tokenizer, effective)); extracted "
          f"{[len(p) for p in fakes.extracted_pairs]} pair(s) in {fakes.extractions} call(s)")
    vectors = expect_tensor(result["vectors"], Float[Tensor, "n_layers d_model"], f"{name}'s result['vectors']",
                            n_layers=n_layers, d_model=d)
    check(close(vectors, _expected_pipeline_vectors(model, tokenizer, _expected_effective()), rtol=1e-4, atol=1e-4),
          "result['vectors'] differ from mean(pos) - mean(neg) over the effective pairs")
    vector = expect_tensor(result["vector"], Float[Tensor, "d_model"], f"{name}'s result['vector']", d_model=d)
    if not close(vector, vectors[layer]):
        at = [i for i in range(n_layers) if close(vector, vectors[i])]
        fail(f"result['vector'] should be vectors[layer] (block {layer})" + (f"; it is vectors[{at[0]}]" if at else ""))
    check(len(fakes.steer_vectors) > 0 and all(close(v, vectors[layer]) for v in fakes.steer_vectors)
          and all(lay == layer for lay in fakes.steer_layers),
          f"steer with vectors[layer] at block `layer` ({layer})")
    check(set(fakes.steer_questions) == set(PIPE_EVAL),
          f"the steered generation answered {sorted(set(fakes.steer_questions))[:3]}, not the evaluation questions"
          f" {PIPE_EVAL}: steer on eval_questions")
    check(fakes.steer_tokens == {PIPE_TOKENS},
          f"generate_with_steerer was called with max_new_tokens={sorted(fakes.steer_tokens)}: pass {name}'s"
          f" max_new_tokens ({PIPE_TOKENS}) on to it")
    _check_steer_calls(fakes, coefficients, len(PIPE_EVAL), name)
    check(sorted(c for c, _ in fakes.steer_calls) == sorted(float(c) for c in coefficients)
          and all(n == len(PIPE_EVAL) for _, n in fakes.steer_calls),
          f"steered generation should run once per coefficient with all {len(PIPE_EVAL)} evaluation questions in one"
          f" batch; got calls (coeff, n_questions) {fakes.steer_calls}")
    steering = result["steering"]
    check(isinstance(steering, list) and len(steering) == n_steered,
          f"result['steering'] should hold one record per evaluation question x coefficient ({n_steered})")
    for r in steering:
        check({"question", "coeff", "response", "trait_score", "coherence_score"} <= set(r),
              "each steering record needs question, coeff, response, trait_score, coherence_score")
        _check_steering_record(r, coefficients, name)
    check({(r["question"], float(r["coeff"])) for r in steering} == {(q, float(c)) for q in PIPE_EVAL for c in coefficients},
          "result['steering'] does not cover every evaluation question x coefficient")
    check(judge.calls == n_judge,
          f"the judge was called {judge.calls} times; expected {n_judge}: one trait and one coherence call per response"
          f" ({n_records} contrastive + {n_steered} steered), each once")
    return result, vectors, judge


def _check_rerun(run: _PipelineRuns, cache_a: str, result, vectors) -> None:
    """The same run again: everything from the cache, the same results; stats show what was computed and cached."""
    model, tokenizer = run.model, run.tokenizer
    records, steering = result["records"], result["steering"]
    fakes2, judge2 = _PipeFakes(model, tokenizer), _pipe_judge()
    again = run(fakes2, judge2, cache_a)
    check(fakes2.generated == 0, f"a rerun with the same inputs regenerated {fakes2.generated} responses: cache the generate step")
    check(judge2.calls == 0, f"a rerun with the same inputs repeated {judge2.calls} judge calls: cache every judge call")
    check(fakes2.extractions == 0, "a rerun with the same inputs extracted the vectors again: cache the extract step (runner.tensors)")
    check(fakes2.steered_items == 0, f"a rerun with the same inputs regenerated {fakes2.steered_items} steered answers: cache the steer step")
    check(again["records"] == records and close(torch.as_tensor(again["vectors"]), vectors) and again["steering"] == steering,
          "a rerun from the cache returned different results")
    for label, res, key in [("the first run", result, "computed"), ("a rerun from the cache", again, "cached")]:
        stats = res["stats"]
        check(isinstance(stats, dict) and sum(v.get(key, 0) for v in stats.values() if isinstance(v, dict)) > 0,
              f"result['stats'] of {label} shows nothing {key}: return dict(runner.stats) (per step, what was computed"
              f" and what came from the cache); got {stats!r:.120}")


def _check_changed_inputs(run: _PipelineRuns, cache_a: str) -> None:
    """Reruns with changed inputs (eval prompt, coherence prompt, layer, max_new_tokens, temperature, judge): the
    steps that depend on them run again."""
    model, tokenizer, layer, run_trait_pipeline = run.model, run.tokenizer, run.layer, run.run_trait_pipeline
    n_records, n_steered, n_judge = run.n_records, run.n_steered, run.n_judge
    changed = dict(PIPE_DATA, eval_prompt=TRAIT_TEMPLATE.replace("How strongly", "How much"))
    fakes3, judge3 = _PipeFakes(model, tokenizer), _pipe_judge()
    run(fakes3, judge3, cache_a, trait_data=changed)
    check(judge3.calls > 0, "changing the trait's eval_prompt did not re-run the judge: the judge steps' keys must include"
                            " the eval prompt (stale results)")
    steer_advice = (" the steered answers' judge step needs the same key inputs as the first judge step (the judge, the eval"
                    " prompt and the coherence prompt): one scoring function for both")
    check(len(judge3.prompts["trait"]) == n_records + n_steered,
          f"changing the trait's eval_prompt re-ran {len(judge3.prompts['trait'])} trait judge calls, expected"
          f" {n_records + n_steered} ({n_records} contrastive + {n_steered} steered answers): the steered answers' scores"
          " came from the cache (stale results);" + steer_advice)
    from utils import data as course_data

    fakes3b, judge3b = _PipeFakes(model, tokenizer), _pipe_judge()
    with using(run_trait_pipeline, data=_DataWithOtherCoherencePrompt(course_data)):
        run(fakes3b, judge3b, cache_a)
    check(judge3b.calls > 0, "changing the coherence prompt (data.load_coherence_prompt()) did not re-run the judge: the"
                             " judge steps' keys must include the coherence prompt (stale results)")
    check(len(judge3b.prompts["coherence"]) == n_records + n_steered,
          f"changing the coherence prompt re-ran {len(judge3b.prompts['coherence'])} coherence judge calls, expected"
          f" {n_records + n_steered} ({n_records} contrastive + {n_steered} steered answers): the steered answers' scores"
          " came from the cache (stale results);" + steer_advice)
    fakes4, judge4 = _PipeFakes(model, tokenizer), _pipe_judge()
    run(fakes4, judge4, cache_a, at_layer=layer - 1)
    check(fakes4.steered_items == n_steered,
          "changing the layer did not re-run the steered generation: the steer step's key must include the vector"
          " (tensor_digest) and the layer (stale results)")

    # max_new_tokens changed (the fake answers stay the same, and so does the vector)
    fakes5, judge5 = _PipeFakes(model, tokenizer), _pipe_judge()
    run(fakes5, judge5, cache_a, max_new_tokens=PIPE_TOKENS + 1)
    check(fakes5.generated == n_records,
          "changing max_new_tokens did not re-run the generate step: its key must include the generation settings"
          " (stale results)")
    check(fakes5.steered_items == n_steered,
          "changing max_new_tokens did not re-run the steered generation: the steer step's key must include"
          " max_new_tokens (stale results)")
    # temperature changed: new answers, the same effective pairs
    fakes5b, judge5b = _PipeFakes(model, tokenizer), _pipe_judge()
    warmer = run(fakes5b, judge5b, cache_a, temperature=0.5)
    check(fakes5b.generated == n_records,
          "changing temperature did not re-run the generate step: its key must include the generation settings"
          " (max_new_tokens and temperature) -- stale results")
    check(fakes5b.extractions == 1
          and close(torch.as_tensor(warmer["vectors"]),
                    _expected_pipeline_vectors(model, tokenizer, _expected_effective(), 0.5), rtol=1e-4, atol=1e-4),
          "with new responses (temperature changed) and the same effective pairs the vectors were not extracted"
          " again: the extract step's key must hold the pairs' prompts and responses (not a constant, not only their"
          " indices) -- stale vectors")

    # another judge that scores differently: other effective pairs, so the vectors must be extracted again
    fakes6 = _PipeFakes(model, tokenizer)
    judge6 = FakeJudge(trait_fn=lambda q, a: 80.0 if a.startswith("pos") else 20.0 if a.startswith("neg") else 50.0,
                       coherence_fn=lambda q, a: _pipe_scores(a)[1])
    judge6.label = "another fake judge (part_tests)"
    other = run(fakes6, judge6, cache_a)
    other_pairs = [(i, q) for i in range(5) for q in range(len(PIPE_QUESTIONS)) if (i, q) != (4, 1)]
    check(_pairs_of(other) == other_pairs,
          "with another judge the effective pairs did not change: the judge steps' keys must include the judge"
          " (judge_identity) -- stale scores")
    check(fakes6.extractions == 1 and close(torch.as_tensor(other["vectors"]),
                                            _expected_pipeline_vectors(model, tokenizer, other_pairs)),
          "with other effective pairs the vectors were not extracted again: the extract step's key must be made of"
          " the effective pairs (their prompts and responses) -- stale vectors")
    check(judge6.calls == n_judge,
          f"with another judge {n_judge - judge6.calls} of {n_judge} judge calls came from the cache (stale scores): the"
          " keys of both judge steps (contrastive and steered answers) must include the judge (judge_identity)")
    check(fakes6.steered_items == n_steered,
          "with another vector (other effective pairs) at the same layer the steered answers came from the cache:"
          " the steer step's key must include the vector itself (tensor_digest(vector)), not only the layer")


def _check_thresholds(run: _PipelineRuns, cache_a: str) -> None:
    """Other thresholds and fewer questions."""
    model, tokenizer = run.model, run.tokenizer
    fakes7, judge7 = _PipeFakes(model, tokenizer), _pipe_judge()
    few = run(fakes7, judge7, cache_a, n_questions=2, threshold=30, coherence_threshold=40)
    n_few = 5 * 2 * 2
    check(isinstance(few.get("records"), list) and len(few["records"]) == n_few,
          f"with n_questions=2 result['records'] should hold {n_few} records (5 pairs x 2 questions x pos/neg), got"
          f" {len(few['records']) if isinstance(few.get('records'), list) else few.get('records')!r}: n_questions is ignored"
          " (pass it to contrastive_requests)")
    want = _expected_effective(30, 40, 2)
    got_pairs = _pairs_of(few)
    if got_pairs != want:
        for (t, c), why in [((50, 50), "threshold and coherence_threshold are ignored (filter_effective's defaults)"),
                            ((50, 40), "threshold is ignored (filter_effective's default 50)"),
                            ((30, 50), "coherence_threshold is ignored (filter_effective's default 50)"),
                            ((40, 30), "threshold and coherence_threshold are swapped")]:
            if got_pairs == _expected_effective(t, c, 2):
                fail(f"with threshold=30 and coherence_threshold=40 the effective pairs are {got_pairs}, expected {want}:"
                     f" {why} -- pass them to filter_effective(records, threshold, coherence_threshold)")
        fail(f"with threshold=30 and coherence_threshold=40 the effective pairs are {got_pairs}, expected {want}")
    check(close(torch.as_tensor(few["vectors"]), _expected_pipeline_vectors(model, tokenizer, want), rtol=1e-4, atol=1e-4),
          "with other thresholds (other effective pairs) the vectors were not extracted from those pairs")


def _check_resume(run: _PipelineRuns, cache_b: str, result, vectors) -> None:
    """Killed half way by the judge, then resumed (generation in batches of 4): nothing finished is repeated."""
    model, tokenizer, name, n_judge = run.model, run.tokenizer, run.name, run.n_judge
    records, steering = result["records"], result["steering"]
    fail_after = 25
    fakes8, judge8 = _PipeFakes(model, tokenizer), _pipe_judge(fail_after=fail_after)
    try:
        run(fakes8, judge8, cache_b, batch_size=4)
    except NotImplementedYet:
        raise
    except AssertionError:
        raise
    except RuntimeError:
        pass
    else:
        fail(f"{name} finished although the judge failed after 25 calls: let the judge's exception propagate")
    no_hooks_left(model, f"{name} (after the judge failed)")
    big = [c for c in fakes8.gen_calls if c["n"] > 4]
    if big:
        if big[0]["batch_size"] <= 4:
            fail(f"with batch_size=4 generate_responses got {big[0]['n']} requests in one call: pass batch_size to"
                 " runner.map, so that each batch is cached as soon as it returns (a crash then loses one batch at most)")
        fail(f"with batch_size=4 generate_responses got {big[0]['n']} requests in one call: batch_size is ignored"
             " (pass it to runner.map)")
    fakes9, judge9 = _PipeFakes(model, tokenizer), _pipe_judge()
    resumed = run(fakes9, judge9, cache_b, batch_size=4)
    check(fakes9.generated == 0,
          f"after the crash the rerun regenerated {fakes9.generated} finished responses: cache each generated batch")
    repeated = judge8.calls + judge9.calls - n_judge
    check(repeated == 0,
          f"after the judge failed at call {fail_after + 1}, the rerun repeated {repeated} finished judge call(s):"
          " cache every judge call as soon as it returns (runner.map_each), not the whole step at the end")
    check(resumed["records"] == records and close(torch.as_tensor(resumed["vectors"]), vectors)
          and resumed["steering"] == steering,
          "the resumed run returned different results from an uninterrupted run")


def _check_judge_errors(run: _PipelineRuns, cache_c: str, cache_d: str, judge: FakeJudge) -> None:
    """Judge errors are retried by a rerun, refusals are not (and no coefficients: no steering); the same for the
    judge calls on the steered answers."""
    from utils.judge import JudgeScore

    model, tokenizer = run.model, run.tokenizer
    error = JudgeScore(None, "error: HTTP 503 from the judge endpoint (injected by the test)")
    refusal = JudgeScore(None, "refusal: the judge declined to rate this answer (injected by the test)")
    trait_special = {"pos answer 0-0": error, "neg answer 1-0": refusal}
    coherence_special = {"neg answer 2-0": error, "pos answer 3-0": refusal}

    def flaky(special, kind):
        return lambda q, a: special.get(" ".join(a.split()[:3]), _pipe_scores(a)[kind])

    fakes10 = _PipeFakes(model, tokenizer)
    judge10 = FakeJudge(trait_fn=flaky(trait_special, 0), coherence_fn=flaky(coherence_special, 1))
    judge10.label = judge.label  # the same judge, having a bad minute
    first = run(fakes10, judge10, cache_c, n_questions=1, coefficients=())
    check(first.get("steering") == [] and fakes10.steered_items == 0,
          f"with coefficients=() there is nothing to steer: result['steering'] should be [] (got"
          f" {len(first.get('steering') or [])} records, {fakes10.steered_items} steered answers)")
    fakes11, judge11 = _PipeFakes(model, tokenizer), _pipe_judge()
    run(fakes11, judge11, cache_c, n_questions=1, coefficients=())
    if judge11.calls != 2:
        if judge11.calls == 0:
            fail("judge calls that failed (value None, reason 'error: ...') were cached, so a rerun never retries"
                 " them: cache only final results (runner.map_each(..., cache_if=is_final))")
        if judge11.calls == 4:
            fail("a rerun repeated 2 judge calls that had finished with a refusal: a refusal is a final result"
                 " (is_final), cache it; only errors are retried (cache_if=is_final)")
        fail(f"after a run in which 2 judge calls failed and 2 were refusals, the rerun made {judge11.calls} judge"
             " calls; expected 2 (the failed ones): cache_if=is_final")

    # -- the same for the judge calls on the steered answers ------------------------------
    fakes12 = _PipeFakes(model, tokenizer)
    judge12 = FakeJudge(trait_fn=flaky({f"steered +1 {PIPE_EVAL[0].split()[0]}": error}, 0), coherence_fn=flaky({}, 1))
    judge12.label = judge.label
    run(fakes12, judge12, cache_d, n_questions=1, coefficients=[1])
    fakes13, judge13 = _PipeFakes(model, tokenizer), _pipe_judge()
    run(fakes13, judge13, cache_d, n_questions=1, coefficients=[1])
    if judge13.calls != 1:
        if judge13.calls == 0:
            fail("a judge call on a steered answer that failed (value None, reason 'error: ...') was cached, so a rerun"
                 " never retries it: judge the steered answers with cache_if=is_final too (one scoring function for"
                 " both judge steps)")
        fail(f"after a run in which 1 judge call on a steered answer failed, the rerun made {judge13.calls} judge calls;"
             " expected 1 (the failed one): cache only final results (cache_if=is_final)")


def _check_coefficients_and_batches(run: _PipelineRuns) -> None:
    """Property: fractional, negative and zero coefficients, one to three evaluation questions, batch sizes 1 to 7
    (the 10 contrastive requests of one question in full and partial batches), a fresh cache each time: every request
    generated once in batches of at most batch_size, every evaluation question x coefficient steered at exactly that
    coefficient, its record labelled with it and scored (the fake answers and scores are known here)."""
    questions = PIPE_EVAL + ["Was my speech the best one today?"]

    def check_one(example):
        coeffs, n_eval, batch_size = example
        evals = questions[:n_eval]
        fakes, judge = _PipeFakes(run.model, run.tokenizer), _pipe_judge()
        with tempfile.TemporaryDirectory() as cache:
            result = run(fakes, judge, cache, n_questions=1, coefficients=coeffs, eval_questions=evals, batch_size=batch_size)
        no_hooks_left(run.model, run.name)
        what = f"with coefficients={coeffs}, batch_size={batch_size} and {n_eval} evaluation question(s)"
        n = 5 * 2
        _check_no_partial_batch_lost(fakes.generated, n, batch_size, f"{run.name} {what}")
        check(fakes.generated == n, f"{run.name} {what} generated {fakes.generated} responses for {n} requests")
        check(all(c["n"] <= batch_size for c in fakes.gen_calls),
              f"{run.name} {what}: generate_responses got {max(c['n'] for c in fakes.gen_calls)} requests in one call:"
              " pass batch_size to runner.map")
        _check_steer_calls(fakes, coeffs, n_eval, f"{run.name} {what}")
        steering = result.get("steering")
        check(isinstance(steering, list) and len(steering) == len(evals) * len(coeffs),
              f"{run.name} {what}: result['steering'] should hold {len(evals) * len(coeffs)} records (one per evaluation"
              f" question x coefficient), got {len(steering) if isinstance(steering, list) else steering!r}")
        for r in steering:
            _check_steering_record(r, coeffs, f"{run.name} {what}")
        check({(r["question"], float(r["coeff"])) for r in steering} == {(q, float(c)) for q in evals for c in coeffs},
              f"{run.name} {what}: result['steering'] does not cover every evaluation question x coefficient")

    for_all(st.tuples(st.lists(coefficients(), min_size=1, max_size=3, unique=True), st.integers(1, 3), st.integers(1, 7)),
            check_one, name=f"{run.name} over fractional coefficients and partial batches", examples=3)


@exercise("4.4", "run_trait_pipeline")
def test_run_trait_pipeline(run_trait_pipeline, model=None, tokenizer=None) -> None:
    """The step functions are replaced by recording fakes (and a fake judge is passed in): a full
    run, a rerun (nothing repeated), reruns with changed inputs (the steps that depend on them run
    again), other thresholds and n_questions, a run killed by a judge failure half way then resumed
    (no finished generation or judge call repeated), and judge errors (retried, for contrastive and
    for steered answers) beside refusals (finished); then a property over fractional, negative and
    zero coefficients and batch sizes that do and do not divide the number of requests."""
    require_implemented(run_trait_pipeline, "run_trait_pipeline")
    model, tokenizer = model_or_tiny(model, tokenizer)
    run = _PipelineRuns(run_trait_pipeline, model, tokenizer)
    with tempfile.TemporaryDirectory() as cache_a, tempfile.TemporaryDirectory() as cache_b, \
            tempfile.TemporaryDirectory() as cache_c, tempfile.TemporaryDirectory() as cache_d:
        result, vectors, judge = _check_full_run(run, cache_a)
        _check_rerun(run, cache_a, result, vectors)
        _check_changed_inputs(run, cache_a)
        _check_thresholds(run, cache_a)
        _check_resume(run, cache_b, result, vectors)
        _check_judge_errors(run, cache_c, cache_d, judge)
    _check_coefficients_and_batches(run)
    passed("test_run_trait_pipeline")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
