"""Exercise 4.2 — Steered generation and a coefficient sweep

Wrong and correct generate_with_steerer and run_steering_experiment. The functions look the
notebook's names (ActivationSteerer, generate_with_steerer, get_judge, data ...) up in this module's
globals, so that the tests' `using(...)` patches reach them as they reach a student's notebook.
"""

from __future__ import annotations

import contextlib

from tests.catalogue import correct, mistake
from tests.catalogue.section4._shared import (
    LAYER,
    ActivationSteerer,
    build_messages,
    data,
    generate,
    generate_with_steerer,
    get_judge,
    ref,
)
from utils.chat import format_prompt


def _gws(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
         max_new_tokens=64, batch_size=32, *, steer=None, one_at_a_time=False, temperature=0.0, close=True,
         raw=False, tokens=None, batch=None):
    prompts = list(questions) if raw else [build_messages(system_prompt, q) for q in questions]
    kwargs = steer if steer is not None else dict(coeff=coeff, layer=layer, positions=positions)
    s = ActivationSteerer(model, vector, **kwargs)
    s.__enter__()
    try:
        n = max_new_tokens if tokens is None else tokens
        if one_at_a_time:
            return [generate(model, tokenizer, [p], max_new_tokens=n, temperature=temperature)[0] for p in prompts]
        return generate(model, tokenizer, prompts, max_new_tokens=n, temperature=temperature,
                        batch_size=batch_size if batch is None else batch, seed=0)
    finally:
        if close:
            s.__exit__(None, None, None)


@mistake("test_generate_with_steerer", "sign is flipped")
def gws_sign_flipped(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=-coeff, layer=layer, positions="response"), **kw)


@mistake("test_generate_with_steerer", "coeff is ignored")
def gws_coeff_ignored(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=1.0, layer=layer, positions="response"), **kw)


@mistake("test_generate_with_steerer", "positions")
def gws_positions_not_passed(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=coeff, layer=layer), **kw)


@mistake("test_generate_with_steerer", "`positions` is ignored")
def gws_positions_hardcoded(model, tokenizer, questions, vector, coeff, layer, positions="response", **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, "response", **kw)


@mistake("test_generate_with_steerer", "off by one layer")
def gws_layer_off_by_one(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=coeff, layer=layer - 1, positions="response"), **kw)


@mistake("test_generate_with_steerer", "`layer` is ignored")
def gws_layer_global(model, tokenizer, questions, vector, coeff, layer, positions="response", **kw):
    """Steers the notebook's LAYER whatever `layer` says."""
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=coeff, layer=LAYER, positions=positions), **kw)


@mistake("test_generate_with_steerer", "normalised vector")
def gws_normalised(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector / vector.norm(), coeff, layer, **kw)


@mistake("test_generate_with_steerer", "unsteered")
def gws_not_steered(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                    max_new_tokens=64, batch_size=32):
    return generate(model, tokenizer, [build_messages(system_prompt, q) for q in questions], max_new_tokens=max_new_tokens)


@mistake("test_generate_with_steerer", "system_prompt is ignored")
def gws_ignores_system_prompt(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, positions, None, **kw)


@mistake("test_generate_with_steerer", "max_new_tokens is ignored")
def gws_max_new_tokens_ignored(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                               max_new_tokens=64, batch_size=32):
    return _gws(model, tokenizer, questions, vector, coeff, layer, positions, system_prompt, 64, batch_size)


@mistake("test_generate_with_steerer", "batch_size is ignored")
def gws_batch_size_ignored(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                           max_new_tokens=64, batch_size=32):
    return _gws(model, tokenizer, questions, vector, coeff, layer, positions, system_prompt, max_new_tokens, batch=32)


@mistake("test_generate_with_steerer", "without the chat template")
def gws_raw_questions(model, tokenizer, questions, vector, coeff, layer, **kw):
    """Passes the questions as prompt strings: no chat template."""
    return _gws(model, tokenizer, questions, vector, coeff, layer, raw=True, **kw)


@mistake("test_generate_with_steerer", "no system role")
def gws_hand_template(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                      max_new_tokens=64, batch_size=32):
    """Applies the chat template by hand: a template with no system role (Gemma 2) raises on the system message."""
    prompts = [tokenizer.apply_chat_template(build_messages(system_prompt, q), tokenize=False, add_generation_prompt=True)
               for q in questions]
    with ActivationSteerer(model, vector, coeff, layer, positions):
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)


@mistake("test_generate_with_steerer", "batches")
def gws_one_at_a_time(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, one_at_a_time=True, **kw)


@mistake("test_generate_with_steerer", "greedy")
def gws_sampled(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, temperature=1.0, **kw)


@mistake("test_generate_with_steerer", "hook")
def gws_hook_left(model, tokenizer, questions, vector, coeff, layer, **kw):
    return _gws(model, tokenizer, questions, vector, coeff, layer, close=False, **kw)


@mistake("test_generate_with_steerer", "after the model raised mid-generation")
def gws_no_finally(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                   max_new_tokens=64, batch_size=32):
    """Enters and exits the steerer by hand, without `with` or `finally`."""
    steerer = ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions=positions)
    steerer.__enter__()
    out = generate(model, tokenizer, [build_messages(system_prompt, q) for q in questions], max_new_tokens=max_new_tokens,
                   temperature=0.0, batch_size=batch_size)
    steerer.__exit__(None, None, None)
    return out


@mistake("test_generate_with_steerer", "let the exception propagate")
def gws_swallows_errors(model, tokenizer, questions, vector, coeff, layer, **kw):
    """Catches a failed generation and returns empty answers."""
    try:
        return ref.generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, **kw)
    except Exception:
        return [""] * len(questions)


@correct("test_generate_with_steerer")
def gws_chunked(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                max_new_tokens=64, batch_size=32):
    """Correct: its own chunks of batch_size, one generate call each."""
    out = []
    with ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions=positions):
        for start in range(0, len(questions), batch_size):
            chunk = [build_messages(system_prompt, q) for q in questions[start:start + batch_size]]
            out += generate(model, tokenizer, chunk, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    return out


@correct("test_generate_with_steerer")
def gws_formatted_strings(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                          max_new_tokens=64, batch_size=32):
    """Correct: renders each prompt itself (format_prompt), an ExitStack, stripped answers."""
    prompts = [format_prompt(build_messages(system_prompt, q), tokenizer) for q in questions]
    with contextlib.ExitStack() as stack:
        stack.enter_context(ActivationSteerer(model, vector, coeff, layer, positions))
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0, batch_size=batch_size)
    return [a.strip() for a in answers]


def _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5),
                judge=None, coherence_template=None, max_new_tokens=64, positions="response", *, mistake=None):
    if mistake == "ignores_judge":
        judge = get_judge()
    judge = judge if judge is not None else get_judge()
    if mistake == "ignores_coherence_template":
        coherence_template = None
    coherence_template = coherence_template if coherence_template is not None else data.load_coherence_prompt()
    if mistake == "coherence_with_trait_template":
        coherence_template = eval_prompt_template
    if mistake == "trait_with_coherence_template":
        eval_prompt_template = coherence_template
    records = []
    for k, coeff in enumerate(coefficients):
        if mistake == "per_question":
            answers = [generate_with_steerer(model, tokenizer, [q], vector, coeff, layer, max_new_tokens=max_new_tokens)[0]
                       for q in questions]
        else:
            answers = generate_with_steerer(
                model, tokenizer, questions, vector, int(coeff) if mistake == "int_coeff_generate" else coeff,
                LAYER if mistake == "layer_global" else layer,
                positions="response" if mistake == "positions_not_passed" else positions,
                max_new_tokens=64 if mistake == "max_new_tokens_not_passed" else max_new_tokens)
        label = coefficients[(k + 1) % len(coefficients)] if mistake == "mislabelled" else coeff
        if mistake == "int_coeff_records":
            label = int(coeff)
        records += [{"question": q, "coeff": label, "response": a} for q, a in zip(questions, answers)]
    if mistake == "zero_skipped":
        records = [r for r in records if r["coeff"] != 0]
    for r in records:
        if mistake == "judge_args_swapped":
            t = judge.score_trait(r["response"], r["question"], eval_prompt_template)
            c = judge.score_coherence(r["response"], r["question"], coherence_template)
        else:
            t = judge.score_trait(r["question"], r["response"], eval_prompt_template)
            c = judge.score_coherence(r["question"], r["response"], coherence_template)
        if mistake == "judge_score_objects":
            r["trait_score"], r["coherence_score"] = t, c
        elif mistake == "swapped":
            r["trait_score"], r["coherence_score"] = c.value, t.value
        elif mistake == "none_as_zero":
            r["trait_score"], r["coherence_score"] = t.value or 0, c.value or 0
        elif mistake == "key_only_when_scored":
            r.update({k: s.value for k, s in (("trait_score", t), ("coherence_score", c)) if s.value is not None})
        else:
            r["trait_score"], r["coherence_score"] = t.value, c.value
    if mistake == "drops_unscored":
        records = [r for r in records if r["trait_score"] is not None and r["coherence_score"] is not None]
    if mistake == "scores_shifted":
        values = [(r["trait_score"], r["coherence_score"]) for r in records]
        for r, (t, c) in zip(records, values[1:] + values[:1]):
            r["trait_score"], r["coherence_score"] = t, c
    if mistake == "by_question":  # a correct alternative: records ordered by question
        records.sort(key=lambda r: (questions.index(r["question"]), coefficients.index(r["coeff"])))
    return records


def _experiment_variant(mistake):
    def wrong(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5), **kw):
        return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, mistake=mistake, **kw)

    wrong.__name__ = wrong.__qualname__ = f"run_steering_experiment_{mistake}"
    return wrong


# run_steering_experiment variants: one switch of _experiment each (None: the reference's behaviour)
mistake("test_run_steering_experiment", "one batched call")(_experiment_variant("per_question"))
mistake("test_run_steering_experiment", "generated at coeff")(_experiment_variant("mislabelled"))
mistake("test_run_steering_experiment", "records for")(_experiment_variant("zero_skipped"))
mistake("test_run_steering_experiment", ".value")(_experiment_variant("judge_score_objects"))
mistake("test_run_steering_experiment", "swapped")(_experiment_variant("swapped"))
mistake("test_run_steering_experiment", "do not belong")(_experiment_variant("scores_shifted"))
mistake("test_run_steering_experiment", "load_coherence_prompt")(_experiment_variant("coherence_with_trait_template"))
mistake("test_run_steering_experiment", "score the trait with eval_prompt_template")(_experiment_variant("trait_with_coherence_template"))
mistake("test_run_steering_experiment", "ignored the judge passed in")(_experiment_variant("ignores_judge"))
mistake("test_run_steering_experiment", "ignored coherence_template")(_experiment_variant("ignores_coherence_template"))
mistake("test_run_steering_experiment", "pass positions on")(_experiment_variant("positions_not_passed"))
mistake("test_run_steering_experiment", "pass layer on")(_experiment_variant("layer_global"))
mistake("test_run_steering_experiment", "pass max_new_tokens on")(_experiment_variant("max_new_tokens_not_passed"))
mistake("test_run_steering_experiment", "holds 0")(_experiment_variant("none_as_zero"))
mistake("test_run_steering_experiment", "records for")(_experiment_variant("drops_unscored"))
mistake("test_run_steering_experiment", "even when its score is None")(_experiment_variant("key_only_when_scored"))
mistake("test_run_steering_experiment", "question as the answer")(_experiment_variant("judge_args_swapped"))
mistake("test_run_steering_experiment", "rounded to a whole number")(_experiment_variant("int_coeff_records"))
mistake("test_run_steering_experiment", "rounded to a whole number")(_experiment_variant("int_coeff_generate"))
correct("test_run_steering_experiment")(_experiment_variant(None))
correct("test_run_steering_experiment")(_experiment_variant("by_question"))


@mistake("test_run_steering_experiment", "default to [-3, -1, 0, 1, 3, 5]")
def experiment_other_default(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-1, 0, 1), **kw):
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, **kw)


@mistake("test_run_steering_experiment", "get_judge()")
def experiment_offline_judge(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5), judge=None, **kw):
    """Builds its own judge instead of calling get_judge()."""
    from utils.judge import OfflineJudge

    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, judge=judge or OfflineJudge(), **kw)


@correct("test_run_steering_experiment")
def experiment_none_default(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=None, **kw):
    """Correct: `coefficients=None` (no tuple in the signature), the paper's sweep filled in inside."""
    if coefficients is None:
        coefficients = [-3, -1, 0, 1, 3, 5]
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, **kw)


@mistake("test_run_steering_experiment", "default to [-3, -1, 0, 1, 3, 5]")
def experiment_none_other_default(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=None, **kw):
    """`coefficients=None`, filled in with a sweep of its own instead of the paper's."""
    if coefficients is None:
        coefficients = [-3, 0, 3]
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, **kw)


@correct("test_run_steering_experiment")
def experiment_module_get_judge(model, tokenizer, questions, vector, eval_prompt_template, layer,
                                coefficients=(-3, -1, 0, 1, 3, 5), judge=None, **kw):
    """Correct: the course's judge through the module (`utils.judge.get_judge()`), not the notebook's global name."""
    import utils.judge

    judge = judge if judge is not None else utils.judge.get_judge()
    return _experiment(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients, judge=judge, **kw)


@correct("test_run_steering_experiment")
def experiment_score_many(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5),
                          judge=None, coherence_template=None, max_new_tokens=64, positions="response"):
    """Correct: every prompt filled by hand and scored in one score_many call; coefficients stored as floats."""
    from utils.judge import fill_template

    judge = judge or get_judge()
    template = coherence_template or data.load_coherence_prompt()
    records = []
    for coeff in coefficients:
        answers = generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, positions, None, max_new_tokens)
        records += [{"question": q, "coeff": float(coeff), "response": a} for q, a in zip(questions, answers)]
    prompts = [fill_template(t, r["question"], r["response"]) for r in records for t in (eval_prompt_template, template)]
    scores = judge.score_many(prompts)
    for i, r in enumerate(records):
        r["trait_score"], r["coherence_score"] = scores[2 * i].value, scores[2 * i + 1].value
    return records


# -- user text that meets templating, coefficients that are not whole numbers, batches that do not divide --
@mistake("test_generate_with_steerer", "rounded to a whole number")
def gws_int_coeff(model, tokenizer, questions, vector, coeff, layer, **kw):
    """Passes int(coeff) to the steerer: 0.5 steers by 0, 2.75 by 2."""
    return _gws(model, tokenizer, questions, vector, coeff, layer, steer=dict(coeff=int(coeff), layer=layer,
                                                                              positions=kw.get("positions", "response")), **kw)


@mistake("test_generate_with_steerer", "partial")
def gws_drops_partial_batch(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                            max_new_tokens=64, batch_size=32):
    """Its own chunks of batch_size, looping over full chunks only: the last, partial batch is lost."""
    out = []
    with ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions=positions):
        for start in range(0, len(questions) - batch_size + 1, batch_size):
            chunk = [build_messages(system_prompt, q) for q in questions[start:start + batch_size]]
            out += generate(model, tokenizer, chunk, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    return out


@mistake("test_generate_with_steerer", "wrong order")
def gws_sorted_by_length(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                         max_new_tokens=64, batch_size=32):
    """Sorts the questions by length (less padding per batch) and returns the answers in that order."""
    ordered = sorted(questions, key=len)
    with ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions=positions):
        return generate(model, tokenizer, [build_messages(system_prompt, q) for q in ordered], max_new_tokens=max_new_tokens,
                        temperature=0.0, batch_size=batch_size)


@correct("test_generate_with_steerer")
def gws_float_coeff(model, tokenizer, questions, vector, coeff, layer, positions="response", system_prompt=None,
                    max_new_tokens=64, batch_size=32):
    """Correct: float(coeff) and keyword arguments throughout."""
    prompts = [build_messages(system_prompt=system_prompt, question=q) for q in questions]
    with ActivationSteerer(model=model, vector=vector, coeff=float(coeff), layer=layer, positions=positions):
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)


def _experiment_filled(fill):
    """A sweep that fills every judge prompt with `fill(template, question, answer)` and scores them with score_many."""
    def run(model, tokenizer, questions, vector, eval_prompt_template, layer, coefficients=(-3, -1, 0, 1, 3, 5), judge=None,
            coherence_template=None, max_new_tokens=64, positions="response"):
        judge = judge if judge is not None else get_judge()
        template = coherence_template if coherence_template is not None else data.load_coherence_prompt()
        records = []
        for coeff in coefficients:
            answers = generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, positions=positions,
                                            max_new_tokens=max_new_tokens)
            records += [{"question": q, "coeff": coeff, "response": a} for q, a in zip(questions, answers)]
        scores = judge.score_many([fill(t, r["question"], r["response"]) for r in records
                                   for t in (eval_prompt_template, template)])
        for i, r in enumerate(records):
            r["trait_score"], r["coherence_score"] = scores[2 * i].value, scores[2 * i + 1].value
        return records

    run.__name__ = run.__qualname__ = f"run_steering_experiment_{fill.__name__}"
    return run


def fill_replace_question_first(template, question, answer):
    return template.replace("{question}", question).replace("{answer}", answer)


def fill_replace_answer_first(template, question, answer):
    return template.replace("{answer}", answer).replace("{question}", question)


def fill_re_sub(template, question, answer):
    import re

    return re.sub(r"\{answer\}", answer, re.sub(r"\{question\}", question, template))


def fill_replace_then_format(template, question, answer):
    return template.replace("{question}", question).format(answer=answer)


def fill_format(template, question, answer):
    return template.format(question=question, answer=answer)


mistake("test_run_steering_experiment", "question first")(_experiment_filled(fill_replace_question_first))
mistake("test_run_steering_experiment", "answer first")(_experiment_filled(fill_replace_answer_first))
mistake("test_run_steering_experiment", "re.sub")(_experiment_filled(fill_re_sub))
mistake("test_run_steering_experiment", "str.format")(_experiment_filled(fill_replace_then_format))
correct("test_run_steering_experiment")(_experiment_filled(fill_format))  # one format call: braces in the values are safe
