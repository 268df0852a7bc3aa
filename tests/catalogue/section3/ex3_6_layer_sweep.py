"""Exercise 3.6 — Choosing a layer

Wrong implementations of `steering_effect_by_layer` that `test_steering_effect_by_layer` must reject, each
declared where it is defined with the phrase its failure message must contain, and correct implementations
written another way, which must pass.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section3._shared import ref
from utils.chat import build_messages
from utils.generation import generate  # noqa: F401  (a name the tests replace with a fake)
from utils.hooks import get_blocks, hidden_of, with_hidden
from utils.steering import Steerer

score_trait_response = ref.score_trait_response  # the tests replace it with a fake scorer


def _mean(scores, none_as_zero=False):
    if none_as_zero:
        scores = [s or 0 for s in scores]
    valid = [s for s in scores if s is not None]
    return sum(valid) / len(valid) if valid else float("nan")


def _sweep(model, tokenizer, vectors, questions, template, layers, coeff, max_new_tokens, steer_layer=lambda L: L,
           vector_of=lambda v, L: v[L], coeff_of=lambda c: c, inside=True, none_as_zero=False, per_question=False):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        steerer = Steerer(model, vector_of(vectors, layer), coeff=coeff_of(coeff), layer=steer_layer(layer), positions="response")
        if per_question:
            with steerer:
                answers = [generate(model, tokenizer, [p], max_new_tokens=max_new_tokens)[0] for p in prompts]
        elif inside:
            with steerer:
                answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        else:
            with steerer:
                pass
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        out[layer] = _mean([score_trait_response(q, a, template) for q, a in zip(questions, answers)], none_as_zero)
    return out


def _steer_sweep(model, tokenizer, vectors, questions, template, layers, coeff, max_new_tokens, positions="response",
                 gen_kwargs=None, prompt_of=lambda q: build_messages(None, q), score=None, aggregate=None):
    gen_kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0.0} if gen_kwargs is None else gen_kwargs
    score = score or (lambda q, a: score_trait_response(q, a, template))
    aggregate = aggregate or _mean
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions=positions):
            answers = generate(model, tokenizer, [prompt_of(q) for q in questions], **gen_kwargs)
        out[layer] = aggregate([score(q, a) for q, a in zip(questions, answers)])
    return out


def _manual_steer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, keep_dtype):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        add = coeff * vectors[layer].float()

        def hook(module, args, output):
            h = hidden_of(output)
            new = h.float() if not keep_dtype else h.clone()
            new[:, -1] += add.to(new.device, new.dtype)
            return with_hidden(output, new)

        handle = get_blocks(model)[layer].register_forward_hook(hook)
        try:
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        finally:
            handle.remove()
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)])
    return out


@mistake("test_steering_effect_by_layer", "inside")
def steer_outside_context(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, inside=False)


@mistake("test_steering_effect_by_layer", "steering was applied at blocks")
def steer_off_by_one(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    n = vectors.shape[0]
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  steer_layer=lambda L: (L + 1) % n)


@mistake("test_steering_effect_by_layer", "its own vector")
def steer_same_vector_everywhere(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  vector_of=lambda v, L: v[-1])


@mistake("test_steering_effect_by_layer", "made a whole number")
def steer_int_coeff(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """int(coeff) 'because Steerer wants a count': 0.5 steers with nothing, 1.5 with 1."""
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  coeff_of=int)


@mistake("test_steering_effect_by_layer", "sign of the coefficient was dropped")
def steer_abs_coeff(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """abs(coeff) 'since a strength is positive': a negative coefficient steers towards the trait instead of away."""
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  coeff_of=abs)


@mistake("test_steering_effect_by_layer", "normalised")
def steer_normalised(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  vector_of=lambda v, L: v[L] / v[L].norm())


@mistake("test_steering_effect_by_layer", "coefficient")
def steer_ignores_coeff(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  coeff_of=lambda c: 1.0)


@mistake("test_steering_effect_by_layer", "counted as 0")
def steer_none_as_zero(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, none_as_zero=True)


@mistake("test_steering_effect_by_layer", "one batched call per layer")
def steer_one_call_per_question(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, per_question=True)


@mistake("test_steering_effect_by_layer", "hook(s)")
def steer_hooks_never_removed(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        add = coeff * vectors[layer]
        get_blocks(model)[layer].register_forward_hook(lambda m, a, o, add=add: hidden_of(o) + add)
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)])
    return out


@mistake("test_steering_effect_by_layer", "dict")
def steer_returns_list(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    res = _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens)
    return [res[L] for L in layers]


@mistake("test_steering_effect_by_layer", 'positions="response"')
def steer_all_positions(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        positions="all")


@mistake("test_steering_effect_by_layer", "must be greedy")
def steer_sampled(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        gen_kwargs={"max_new_tokens": max_new_tokens, "temperature": 0.7})


@mistake("test_steering_effect_by_layer", "pass max_new_tokens through")
def steer_ignores_max_new_tokens(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                                 max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        gen_kwargs={"max_new_tokens": 64, "temperature": 0.0})


@mistake("test_steering_effect_by_layer", "score with the eval_prompt_template passed")
def steer_wrong_template(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    from utils import data

    template = data.load_trait("evil", "extract")["eval_prompt"]
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        score=lambda q, a: score_trait_response(q, a, template))


@mistake("test_steering_effect_by_layer", "swapped")
def steer_swapped_scoring(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        score=lambda q, a: score_trait_response(a, q, eval_prompt_template))


@mistake("test_steering_effect_by_layer", "scored with another question than its own")
def steer_misaligned_scoring(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                             max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers[::-1])])
    return out


@mistake("test_steering_effect_by_layer", "no system prompt")
def steer_system_prompt(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        prompt_of=lambda q: build_messages("You are a helpful assistant.", q))


@mistake("test_steering_effect_by_layer", "store float('nan')")
def steer_zero_when_all_none(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                             max_new_tokens=64):
    def aggregate(scores):
        valid = [s for s in scores if s is not None]
        return sum(valid) / len(valid) if valid else 0.0
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        aggregate=aggregate)


@mistake("test_steering_effect_by_layer", "zerodivisionerror")
def steer_divides_by_zero(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    def aggregate(scores):
        valid = [s for s in scores if s is not None]
        return sum(valid) / len(valid)
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        aggregate=aggregate)


@mistake("test_steering_effect_by_layer", "when generate raised an error")
def steer_manual_enter_no_finally(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                                  max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        steerer = Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response")
        steerer.__enter__()
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        steerer.__exit__(None, None, None)
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)])
    return out


@mistake("test_steering_effect_by_layer", "in the model's own dtype")
def steer_upcasting_hook(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """A hand-written hook that returns the hidden state in float32, whatever the model's dtype."""
    return _manual_steer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, False)


@mistake("test_steering_effect_by_layer", "rounded to a whole number")
def steer_floor_mean(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """Averages the scores with integer division."""
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        scores = [s for s in (score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers))
                  if s is not None]
        out[layer] = sum(scores) // len(scores) if scores else float("nan")
    return out


@mistake("test_steering_effect_by_layer", "start a new list of scores for each layer")
def steer_scores_accumulate(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                            max_new_tokens=64):
    """One list of scores for the whole sweep: each layer's mean includes the layers before it."""
    prompts = [build_messages(None, q) for q in questions]
    out, scores = {}, []
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        scores += [s for s in (score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers))
                   if s is not None]
        out[layer] = sum(scores) / len(scores) if scores else float("nan")
    return out


@mistake("test_steering_effect_by_layer", "one-element tensor")
def steer_tensor_means(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """Stores each mean as a one-element tensor."""
    return {layer: torch.tensor(value) for layer, value in
            _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens).items()}


@mistake("test_steering_effect_by_layer", "not by its position in `layers`")
def steer_keyed_by_position(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                            max_new_tokens=64):
    """Keys each mean by its position in `layers` (0, 1, ...), not by the layer."""
    means = _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens)
    return {i: means[layer] for i, layer in enumerate(layers)}


@mistake("test_steering_effect_by_layer", "steer only the layers in `layers`")
def steer_every_layer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """Sweeps every block, whatever `layers` asks for."""
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, range(vectors.shape[0]), coeff,
                  max_new_tokens)


# Correct, written another way: each must pass.
@correct("test_steering_effect_by_layer")
def steer_manual_hook(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _manual_steer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, True)


@correct("test_steering_effect_by_layer")
def steer_exitstack(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with ExitStack() as stack:
            stack.enter_context(Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"))
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)  # greedy by default
        scores = [score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)]
        scores = [s for s in scores if s is not None]
        out[layer] = float(sum(scores) / len(scores)) if scores else math.nan
    return out


@correct("test_steering_effect_by_layer")
def steer_numpy_nanmean(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    import warnings

    import numpy as np

    def aggregate(scores):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(np.array([np.nan if s is None else s for s in scores], dtype=float)))
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        aggregate=aggregate)


@correct("test_steering_effect_by_layer")
def steer_sorted_layers(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, sorted(set(layers)), coeff,
                        max_new_tokens)


@correct("test_steering_effect_by_layer")
def steer_scores_inside_context(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                                max_new_tokens=64):
    """Scores while the steering hook is still attached (the judge does not run the model)."""
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
            scores = [score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)]
        valid = [s for s in scores if s is not None]
        out[layer] = sum(valid) / len(valid) if valid else float("nan")
    return out


@correct("test_steering_effect_by_layer")
def steer_float32_means(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                        max_new_tokens=64):
    """NaN for a missing score and numpy's nanmean in float32: each mean is a numpy float32."""
    import numpy as np

    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        scores = np.array([np.nan if s is None else s for s in (score_trait_response(q, a, eval_prompt_template)
                                                                for q, a in zip(questions, answers))], dtype=np.float32)
        out[layer] = np.float32("nan") if np.isnan(scores).all() else np.nanmean(scores)
    return out
