"""Exercise 3.6 — Choosing a layer

`steering_effect_by_layer` is run with a probe in place of `generate` (it reads which block is steered, by
which vector, at which positions) and a fake scorer whose scores depend on the layer and the question. Then a
property over coefficients that are not whole numbers, negative ones and zero, one drawn layer at a time.
"""

from __future__ import annotations

import math
import numbers
import re

import torch

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    exercise,
    fail,
    hook_guard,
    model_or_tiny,
    passed,
    require_implemented,
    tiny,
    using,
)
from part_tests.properties import for_all, st
from part_tests.section3._fakes import _dims, _input_device, _prompt_key


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


@exercise("3.6", "steering_effect_by_layer")
def test_steering_effect_by_layer(steering_effect_by_layer, model=None, tokenizer=None) -> None:
    own = model is not None and tokenizer is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(steering_effect_by_layer, "steering_effect_by_layer")
    from utils.hooks import count_hooks

    name = "steering_effect_by_layer"
    n_layers, d_model = _dims(model)
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

    # a property: fractional, negative and zero coefficients, one layer at a time
    def check_coeff(c, L):
        probe_c, scorer_c = _SteeringProbe(model), _FakeScorer()
        result = _run_steering(steering_effect_by_layer, model, tokenizer, vectors, [L], c, probe_c, scorer_c,
                               f" with coeff={c}")
        check(len(probe_c.calls) == 1, f"{name}(..., layers=[{L}], coeff={c}) called generate {len(probe_c.calls)} times, "
                                       "expected once")
        info = probe_c.calls[0]
        want = c * vectors[L]
        if c == 0:
            check(info["layer"] is None, f"{name}(..., coeff=0.0) changed the model's hidden states at block "
                                         f"{info['layer']}: a coefficient of 0 adds nothing (the notebook's unsteered "
                                         "baseline is coeff=0.0)")
        else:
            rounded = int(c) * vectors[L]
            if info["layer"] is None or (info["delta"] is not None and _same_vector(info["delta"], rounded, probe_c.exact)
                                         and int(c) != c):
                fail(f"with coeff={c} the added vector was {int(c)} * vectors[{L}]" + (" (nothing)" if int(c) == 0 else "")
                     + f": the coefficient was made a whole number (int() or round()); pass coeff to Steerer as given")
            check(info["layer"] == L, f"with coeff={c} and layers=[{L}] the steering was applied at block {info['layer']}")
            if not _same_vector(info["delta"], want, probe_c.exact):
                if _same_vector(info["delta"], abs(c) * vectors[L], probe_c.exact):
                    fail(f"with coeff={c} the added vector was {abs(c)} * vectors[{L}]: the sign of the coefficient was "
                         "dropped; a negative coefficient steers away from the trait")
                fail(f"with coeff={c} the added vector is not coeff * vectors[{L}]: pass coeff to Steerer as given "
                     "(fractional and negative values too)")
        scores = [_fake_score(q, f"[steered layer={info['layer']}] answer to question {i}")
                  for i, q in enumerate(STEER_QUESTIONS)]
        valid = [x for x in scores if x is not None]
        expected = sum(valid) / len(valid) if valid else float("nan")
        check(isinstance(result, dict) and set(result) == {L}, f"{name}(..., layers=[{L}]) should return {{{L}: mean}}")
        value = float(result[L])
        check(math.isnan(value) if math.isnan(expected) else math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-6),
              f"{name}(..., layers=[{L}], coeff={c}): mean score {value}, expected {expected}")

    def check_pair(case):  # a negative and a non-negative coefficient in every example
        negative, other, L = case
        check_coeff(other, L)
        check_coeff(negative, L)

    # a negative and a non-negative value of properties.coefficients(), drawn as one pair so that a failure shrinks fast
    pairs_of = [(neg, other) for neg in (-0.5, -1.25, -3.0) for other in (0.5, 2.75, 0.25, 1.5, 0.0)]
    for_all(st.tuples(st.sampled_from(pairs_of), st.integers(0, n_layers - 1)).map(lambda t: (*t[0], t[1])), check_pair,
            name=f"{name} over coefficients", examples=2)
    passed("test_steering_effect_by_layer")
