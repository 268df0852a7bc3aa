"""Exercise 5.5 — Flagging data before training: the projection difference.

Expected values come from block outputs read with a hook over the exact response spans of
utils.chat.format_chat, computed here.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import call, exercise, expect_value_error, fail, model_or_tiny, no_hooks_left, passed, \
    require_implemented
from part_tests.section5._fakes import OTHER_RESPONSES, PROMPTS, RESPONSES, TINY_LAYER, block_outputs, d_model, example, \
    vector
from part_tests.shapes import expect_tensor

NAME = "projection_difference"


def _means(model, tokenizer, prompts, responses, layer, whole=False):
    rows = []
    for p, r in zip(prompts, responses):
        ids, _, (s, e) = example(tokenizer, p, r)
        h = block_outputs(model, ids.tolist())[layer]
        rows.append(h.mean(0) if whole else h[s:e].mean(0))
    return torch.stack(rows)


@exercise("5.5", "projection_difference")
def test_projection_difference(projection_difference, model=None, tokenizer=None) -> None:
    """proj(training response) - proj(base response), each the mean over the response's tokens at block `layer`,
    on the unit vector; float32, one value per example; at two layers."""
    require_implemented(projection_difference, NAME)
    model, tokenizer = model_or_tiny(model, tokenizer)
    n = len(PROMPTS)
    v = vector(d_model(model), 4, 6.0)
    u = v / v.norm()
    for layer in (TINY_LAYER, TINY_LAYER - 1):
        train = _means(model, tokenizer, PROMPTS, RESPONSES, layer) @ u
        base = _means(model, tokenizer, PROMPTS, OTHER_RESPONSES, layer) @ u
        want = train - base
        got = call(projection_difference, model, tokenizer, PROMPTS, RESPONSES, OTHER_RESPONSES, v, layer, name=NAME)
        no_hooks_left(model, NAME)
        got = expect_tensor(got, Float[Tensor, "n"], NAME, n=n)
        if got.dtype not in (torch.float32, torch.float64):
            fail(f"{NAME} should return float32, got {got.dtype}")
        got = got.float()
        if torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            continue
        if torch.allclose(got, torch.zeros(n), atol=1e-6):
            fail(f"{NAME} returned zeros: the base model's answer was replaced by the training answer (project "
                 "base_responses for the second term)")
        if torch.allclose(got, -want, rtol=1e-4, atol=1e-4):
            fail(f"{NAME}: the sign is flipped: training response minus the base model's response")
        if torch.allclose(got, want * v.norm(), rtol=1e-4, atol=1e-3):
            fail(f"{NAME}: the projection is on the raw vector: divide by its norm (a unit vector)")
        whole = (_means(model, tokenizer, PROMPTS, RESPONSES, layer, True) - _means(model, tokenizer, PROMPTS, OTHER_RESPONSES,
                                                                                   layer, True)) @ u
        if torch.allclose(got, whole, rtol=1e-4, atol=1e-4):
            fail(f"{NAME} averaged over every token of the chat, prompt tokens included: average over the response's "
                 "tokens only")
        if layer != TINY_LAYER:
            first = (_means(model, tokenizer, PROMPTS, RESPONSES, TINY_LAYER)
                     - _means(model, tokenizer, PROMPTS, OTHER_RESPONSES, TINY_LAYER)) @ u
            if torch.allclose(got, first, rtol=1e-4, atol=1e-4):
                fail(f"{NAME}: `layer` is ignored: asked for block {layer}, it read block {TINY_LAYER}")
        for other, why in [(layer + 1, "hidden_states[layer + 2] or block layer + 1"),
                           (layer - 1, "hidden_states[layer], the output of block layer - 1")]:
            cand = (_means(model, tokenizer, PROMPTS, RESPONSES, other) - _means(model, tokenizer, PROMPTS, OTHER_RESPONSES,
                                                                                  other)) @ u
            if torch.allclose(got, cand, rtol=1e-4, atol=1e-4):
                fail(f"{NAME} read the wrong layer ({why}): use block `layer`'s output")
        fail(f"{NAME} at block {layer}: expected {[round(x, 4) for x in want.tolist()]}, got "
             f"{[round(x, 4) for x in got.tolist()]}")
    passed("test_projection_difference")


@exercise("5.5", "projection_difference")
def test_projection_difference_input_checks(projection_difference, model=None, tokenizer=None) -> None:
    """Lists of different lengths and a vector that is zero or not [d_model] are rejected with ValueError."""
    require_implemented(projection_difference, NAME)
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = d_model(model)
    v = vector(d, 4, 6.0)
    p, t, b = PROMPTS[:3], RESPONSES[:3], OTHER_RESPONSES[:3]
    for args, what in [((p[:2], t, b, v), "2 prompts, 3 training responses, 3 base responses"),
                       ((p, t, b[:2], v), "3 prompts, 3 training responses, 2 base responses"),
                       ((p, t, b, torch.ones(d + 1)), f"a vector of shape [{d + 1}] (d_model is {d})"),
                       ((p, t, b, torch.zeros(d)), "a zero vector")]:
        expect_value_error(projection_difference, model, tokenizer, *args, TINY_LAYER, name=NAME, what=what)
    passed("test_projection_difference_input_checks")
