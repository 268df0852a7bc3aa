"""Exercise 4.4 — A pipeline that survives crashes

Wrong and correct run_trait_pipeline: one switch of `_pipeline` per mistake (caching, cache keys,
settings passed on, thresholds ...). The course steps are looked up in this module's globals, so
that the tests' `using(...)` patches reach them as they reach a student's notebook.
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section4._shared import (
    JUDGE_KINDS,
    StepRunner,
    contrastive_requests,
    data,
    extract_trait_vectors,
    filter_effective,
    generate_responses,
    generate_with_steerer,
    get_judge,
    is_final,
    judge_call,
    judge_identity,
    model_id,
    tensor_digest,
)


def _pipeline(model, tokenizer, trait_name, trait_data, layer, coefficients=(-3, -1, 0, 1, 3, 5), eval_questions=None,
              judge=None, cache_dir=None, n_questions=None, max_new_tokens=64, temperature=0.7, threshold=50,
              coherence_threshold=50, batch_size=32, verbose=False, *, mistake=None):
    judge = judge if judge is not None else get_judge()
    if eval_questions is None or mistake == "eval_questions_ignored":
        eval_questions = trait_data["questions"][:n_questions]
    if mistake == "steers_without_coefficients":
        coefficients = coefficients or (-3, -1, 0, 1, 3, 5)
    coherence_prompt = data.load_coherence_prompt()
    eval_prompt = trait_data["eval_prompt"]
    runner = StepRunner(cache_dir, context={"model": model_id(model), "trait": trait_name}, verbose=verbose)
    judge_shared = {} if mistake == "judge_key_without_coherence_prompt" else {"coherence_prompt": coherence_prompt}
    if mistake != "judge_key_without_judge":
        judge_shared["judge"] = judge_identity(judge)
    if mistake != "judge_key_without_eval_prompt":
        judge_shared["eval_prompt"] = eval_prompt
    cache_if = {"caches_errors": None, "cache_if_value_only": lambda r: r["value"] is not None}.get(mistake, is_final)

    def score(step, records):
        one = lambda item: judge_call(judge, item, eval_prompt, coherence_prompt)  # noqa: E731
        if mistake == "judge_per_kind":  # a correct alternative: one map_each per kind
            by_kind = {kind: runner.map_each(f"{step}_{kind}", [{"kind": kind, "question": r["question"], "answer": r["response"]}
                                                               for r in records], one, shared=judge_shared, cache_if=is_final)
                       for kind in JUDGE_KINDS}
            return [{**r, "trait_score": by_kind["trait"][i]["value"], "coherence_score": by_kind["coherence"][i]["value"]}
                    for i, r in enumerate(records)]
        if mistake == "judge_kinds_share_keys":  # two map_each calls, one step name, items without their kind
            by_kind = {kind: runner.map_each(step, [{"question": r["question"], "answer": r["response"]} for r in records],
                                             lambda item, kind=kind: judge_call(judge, {**item, "kind": kind}, eval_prompt,
                                                                                coherence_prompt),
                                             shared=judge_shared, cache_if=is_final)
                       for kind in JUDGE_KINDS}
            return [{**r, "trait_score": by_kind["trait"][i]["value"], "coherence_score": by_kind["coherence"][i]["value"]}
                    for i, r in enumerate(records)]
        items = [{"kind": kind, "question": r["question"], "answer": r["response"]} for r in records for kind in JUDGE_KINDS]
        if mistake == "judge_map_batched":  # runner.map over the whole step: cached only when every call has returned
            results = runner.map(step, items, lambda batch: [one(item) for item in batch], shared=judge_shared, cache_if=is_final)
        elif mistake == "judge_uncached":
            results = [one(item) for item in items]
        elif mistake == "judge_whole_step":
            results = runner.json(step, {"items": items, **judge_shared}, lambda: [one(item) for item in items])
        elif mistake == "steer_judge_caches_errors" and step == "steer_judge":  # cache_if forgotten on the second call
            results = runner.map_each(step, items, one, shared=judge_shared)
        elif mistake == "steer_judge_key_judge_only" and step == "steer_judge":  # a second call keyed by the judge only
            results = runner.map_each(step, items, one, shared={"judge": judge_identity(judge)}, cache_if=is_final)
        else:
            results = runner.map_each(step, items, one, shared=judge_shared, cache_if=cache_if)
        return [{**r, "trait_score": results[2 * i]["value"], "coherence_score": results[2 * i + 1]["value"]}
                for i, r in enumerate(records)]

    requests = contrastive_requests(trait_name, trait_data, None if mistake == "n_questions_ignored" else n_questions)
    if mistake == "generate_settings_not_passed":
        gen = lambda batch: generate_responses(model, tokenizer, batch)  # noqa: E731
    elif mistake in ("batch_size_ignored", "generate_one_runner_batch"):
        gen = lambda batch: generate_responses(model, tokenizer, batch, max_new_tokens, temperature,  # noqa: E731
                                               **({} if mistake == "batch_size_ignored" else {"batch_size": batch_size}))
    else:
        gen = lambda batch: generate_responses(model, tokenizer, batch, max_new_tokens, temperature, batch_size)  # noqa: E731
    gen_shared = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    if mistake == "generate_key_without_settings":
        gen_shared = None
    elif mistake == "generate_key_without_temperature":
        gen_shared = {"max_new_tokens": max_new_tokens}
    if mistake == "generate_uncached":
        texts = gen(requests)
    elif mistake == "generate_full_batches_only":  # its own chunks, full ones only
        texts = []
        for start in range(0, len(requests) - batch_size + 1, batch_size):
            texts += runner.map("generate", requests[start:start + batch_size], gen, shared=gen_shared)
        requests = requests[:len(texts)]
    else:
        texts = runner.map("gen" if mistake == "judge_per_kind" else "generate", requests, gen,
                           batch_size=None if mistake in ("batch_size_ignored", "generate_one_runner_batch") else batch_size,
                           shared=gen_shared)
    records = score("judge", [{**r, "response": t} for r, t in zip(requests, texts)])
    if mistake == "thresholds_ignored":
        effective = filter_effective(records)
    elif mistake == "coherence_threshold_ignored":
        effective = filter_effective(records, threshold)
    elif mistake == "thresholds_swapped":
        effective = filter_effective(records, coherence_threshold, threshold)
    else:
        effective = filter_effective(records, threshold, coherence_threshold)
    if mistake == "strict_threshold":
        effective = [p for p in effective if p["pos"]["trait_score"] > threshold]
    use = effective
    if mistake == "all_pairs":  # every pair, effective or not
        use = filter_effective([{**r, "trait_score": 100 if r["polarity"] == "pos" else 0, "coherence_score": 100} for r in records])
    pairs = [[p[s][k] for s in ("pos", "neg") for k in ("system_prompt", "question", "response")] for p in use]
    if mistake == "extract_uncached":
        vectors = extract_trait_vectors(model, tokenizer, use)
    else:
        key = {"pairs": pairs}
        if mistake == "extract_key_constant":
            key = {"trait": trait_name}
        elif mistake == "extract_key_indices":
            key = {"pairs": [(p["instruction_idx"], p["question_idx"]) for p in use]}
        out = runner.tensors("extract", key, lambda: {"vectors": extract_trait_vectors(model, tokenizer, use)})
        vectors = out if mistake == "vectors_dict" else out["vectors"]
    if mistake == "vectors_dict":
        vector = vectors["vectors"][layer]
    elif mistake == "vector_keepdim":
        vector = vectors[layer:layer + 1]
    else:
        vector = vectors[layer + (1 if mistake == "vector_layer_plus_one" else 0)]
    steer_vector = vector.reshape(-1)
    steering = []
    if coefficients:
        items = [{"question": q, "coeff": int(c) if mistake == "steer_items_int_coeff" else c}
                 for c in coefficients for q in eval_questions]
        steer_shared = {"max_new_tokens": max_new_tokens}
        if mistake == "steer_key_without_max_new_tokens":
            steer_shared = {}
        if mistake == "steer_key_layer_only":
            steer_shared["layer"] = layer
        elif mistake != "steer_key_without_vector":
            steer_shared.update(vector=tensor_digest(steer_vector), layer=layer)
        steer_tokens = 64 if mistake == "steer_max_new_tokens_not_passed" else max_new_tokens
        answers = runner.map(
            "steer", items,
            lambda batch: generate_with_steerer(model, tokenizer, [b["question"] for b in batch], steer_vector, batch[0]["coeff"],
                                                layer, max_new_tokens=steer_tokens),
            batch_size=1 if mistake == "steer_per_question" else batch_size,
            group_by={"steer_mixed_batches": None, "steer_group_by_int": lambda item: int(item["coeff"])}.get(
                mistake, lambda item: item["coeff"]),
            shared=steer_shared)
        steered = score("steer_judge", [{**it, "response": a} for it, a in zip(items, answers)])
        steering = [{k: r[k] for k in ("question", "coeff", "response", "trait_score", "coherence_score")} for r in steered]
    result = {"records": records, "effective": effective, "vectors": vectors, "vector": vector, "steering": steering,
              "stats": {} if mistake == "stats_empty" else dict(runner.stats)}
    return result


def _pipeline_variant(mistake):
    def wrong(model, tokenizer, trait_name, trait_data, layer, coefficients=(-3, -1, 0, 1, 3, 5), **kw):
        return _pipeline(model, tokenizer, trait_name, trait_data, layer, coefficients, mistake=mistake, **kw)

    wrong.__name__ = wrong.__qualname__ = f"run_trait_pipeline_{mistake}"
    return wrong


# run_trait_pipeline variants: one switch of _pipeline each (None: the reference's behaviour)
mistake("test_run_trait_pipeline", "repeated")(_pipeline_variant("judge_uncached"))
mistake("test_run_trait_pipeline", "as soon as it returns")(_pipeline_variant("judge_whole_step"))
mistake("test_run_trait_pipeline", "regenerated")(_pipeline_variant("generate_uncached"))
mistake("test_run_trait_pipeline", "extracted the vectors again")(_pipeline_variant("extract_uncached"))
mistake("test_run_trait_pipeline", "eval prompt")(_pipeline_variant("judge_key_without_eval_prompt"))
mistake("test_run_trait_pipeline", "judge_identity")(_pipeline_variant("judge_key_without_judge"))
mistake("test_run_trait_pipeline", "must include the coherence prompt")(_pipeline_variant("judge_key_without_coherence_prompt"))
mistake("test_run_trait_pipeline", "as soon as it returns")(_pipeline_variant("judge_map_batched"))
mistake("test_run_trait_pipeline", "own trait and coherence score")(_pipeline_variant("judge_kinds_share_keys"))
mistake("test_run_trait_pipeline", "generation settings")(_pipeline_variant("generate_key_without_settings"))
mistake("test_run_trait_pipeline", "changing temperature")(_pipeline_variant("generate_key_without_temperature"))
mistake("test_run_trait_pipeline", "generate_responses was called with")(_pipeline_variant("generate_settings_not_passed"))
mistake("test_run_trait_pipeline", "stale vectors")(_pipeline_variant("extract_key_constant"))
mistake("test_run_trait_pipeline", "not only their indices")(_pipeline_variant("extract_key_indices"))
mistake("test_run_trait_pipeline", "tensor_digest")(_pipeline_variant("steer_key_without_vector"))
mistake("test_run_trait_pipeline", "the vector itself")(_pipeline_variant("steer_key_layer_only"))
mistake("test_run_trait_pipeline", "steer step's key must include max_new_tokens")(_pipeline_variant("steer_key_without_max_new_tokens"))
mistake("test_run_trait_pipeline", "generate_with_steerer was called with max_new_tokens")(_pipeline_variant("steer_max_new_tokens_not_passed"))
mistake("test_run_trait_pipeline", "steer on eval_questions")(_pipeline_variant("eval_questions_ignored"))
mistake("test_run_trait_pipeline", "effective")(_pipeline_variant("all_pairs"))
mistake("test_run_trait_pipeline", "pos >= threshold")(_pipeline_variant("strict_threshold"))
mistake("test_run_trait_pipeline", "threshold and coherence_threshold are ignored")(_pipeline_variant("thresholds_ignored"))
mistake("test_run_trait_pipeline", "coherence_threshold is ignored")(_pipeline_variant("coherence_threshold_ignored"))
mistake("test_run_trait_pipeline", "are swapped")(_pipeline_variant("thresholds_swapped"))
mistake("test_run_trait_pipeline", "n_questions is ignored")(_pipeline_variant("n_questions_ignored"))
mistake("test_run_trait_pipeline", "vectors[layer]")(_pipeline_variant("vector_layer_plus_one"))
mistake("test_run_trait_pipeline", "returned shape (1, 64)")(_pipeline_variant("vector_keepdim"))
mistake("test_run_trait_pipeline", "should return a torch.Tensor")(_pipeline_variant("vectors_dict"))
mistake("test_run_trait_pipeline", "once per coefficient")(_pipeline_variant("steer_per_question"))
mistake("test_run_trait_pipeline", "held several coefficients")(_pipeline_variant("steer_mixed_batches"))
mistake("test_run_trait_pipeline", "batch_size is ignored")(_pipeline_variant("batch_size_ignored"))
mistake("test_run_trait_pipeline", "pass batch_size to runner.map")(_pipeline_variant("generate_one_runner_batch"))
mistake("test_run_trait_pipeline", "never retries")(_pipeline_variant("caches_errors"))
mistake("test_run_trait_pipeline", "on a steered answer")(_pipeline_variant("steer_judge_caches_errors"))
mistake("test_run_trait_pipeline", "steered answers' scores came from the cache")(_pipeline_variant("steer_judge_key_judge_only"))
mistake("test_run_trait_pipeline", "refusal")(_pipeline_variant("cache_if_value_only"))
mistake("test_run_trait_pipeline", "nothing to steer")(_pipeline_variant("steers_without_coefficients"))
mistake("test_run_trait_pipeline", "return dict(runner.stats)")(_pipeline_variant("stats_empty"))
mistake("test_run_trait_pipeline", "partial batch was dropped")(_pipeline_variant("generate_full_batches_only"))
mistake("test_run_trait_pipeline", "not a rounded one")(_pipeline_variant("steer_group_by_int"))
mistake("test_run_trait_pipeline", "rounded to a whole number")(_pipeline_variant("steer_items_int_coeff"))
correct("test_run_trait_pipeline")(_pipeline_variant(None))
correct("test_run_trait_pipeline")(_pipeline_variant("judge_per_kind"))


@mistake("test_run_trait_pipeline", "propagate")
def pipeline_swallows_judge_errors(model, tokenizer, trait_name, trait_data, layer, coefficients=(-3, -1, 0, 1, 3, 5), **kw):
    """Catches the judge's failure and carries on with what it has."""
    try:
        return _pipeline(model, tokenizer, trait_name, trait_data, layer, coefficients, **kw)
    except RuntimeError:
        return {"records": [], "effective": [], "vectors": torch.zeros(1, 1), "vector": torch.zeros(1), "steering": [], "stats": {}}
