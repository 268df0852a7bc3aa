"""Exercise 5.3 — The finetuning shift.

`last_prompt_activations` is checked against unpadded single-prompt forward passes of the tiny
model (block outputs read with a hook); `finetuning_shift` against a float64 computation here.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import call, check, exercise, expect_value_error, fail, model_or_tiny, no_hooks_left, passed, \
    require_implemented, tiny
from part_tests.section5._fakes import PROMPTS, TINY_LAYER, block_outputs, d_model, hidden_states, prompt_ids, vector
from part_tests.shapes import expect_tensor

NAME = "last_prompt_activations"
SHIFT = "finetuning_shift"


def _close(a, b, tol=1e-4):
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


def _candidates(model, tokenizer, prompts, layer, right_pad_reads):
    """What each likely mistake returns: name -> ([n, d] tensor, message)."""
    rows = {"hs_layer": [], "no_gen": [], "first": [], "mean": []}
    for p in prompts:
        ids = prompt_ids(tokenizer, p)
        blocks = block_outputs(model, ids)
        hs = hidden_states(model, ids)
        rows["hs_layer"].append(hs[layer][-1])
        rows["no_gen"].append(block_outputs(model, prompt_ids(tokenizer, p, generation_prompt=False))[layer][-1])
        rows["first"].append(blocks[layer][0])
        rows["mean"].append(blocks[layer].mean(0))
    msgs = {
        "hs_layer": "it read hidden_states[layer], the output of block layer - 1 (entry 0 is the embeddings): use "
                    "hidden_states[layer + 1]",
        "no_gen": "the prompts were rendered without the generation prompt: use format_prompt (add_generation_prompt=True), "
                  "so that the last token is the one just before the answer",
        "first": "it read the first token of each prompt, not the last",
        "mean": "it averaged over all prompt tokens: read the last token only",
    }
    out = {k: (torch.stack(v), msgs[k]) for k, v in rows.items()}
    out["right_pad"] = (right_pad_reads, "a right-padded batch puts pad tokens at the end of the shorter prompts, so "
                                         "their last position is a pad: pad on the left (left_pad) with an attention mask")
    return out


def _right_padded(model, tokenizer, prompts, layer, batch_size):
    from utils.hooks import get_blocks, hidden_of

    out = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in range(0, len(prompts), batch_size):
        ids = [prompt_ids(tokenizer, p) for p in prompts[i:i + batch_size]]
        width = max(map(len, ids))
        x = torch.tensor([r + [pad] * (width - len(r)) for r in ids])
        m = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        seen = {}
        h = get_blocks(model)[layer].register_forward_hook(lambda mod, a, o: seen.update(h=hidden_of(o)))
        try:
            with torch.no_grad():
                model(input_ids=x, attention_mask=m)
        finally:
            h.remove()
        out.append(seen["h"][:, -1].float())
    return torch.cat(out)


@exercise("5.3", "last_prompt_activations")
def test_last_prompt_activations(last_prompt_activations, model=None, tokenizer=None) -> None:
    """Block `layer`'s output at the last token of each prompt rendered with the generation prompt, in left-padded
    batches of at most `batch_size` (the last partial batch kept), float32 on the CPU, with no gradient; at two layers
    and on a bf16 copy of the model."""
    require_implemented(last_prompt_activations, NAME)
    model, tokenizer = model_or_tiny(model, tokenizer)
    prompts, batch_size = PROMPTS, 2  # batches of 2, 2 and 1
    for layer in (TINY_LAYER, TINY_LAYER - 1):
        want = torch.stack([block_outputs(model, prompt_ids(tokenizer, p))[layer][-1] for p in prompts])
        sizes = []
        handle = model.register_forward_pre_hook(lambda m, a, k: sizes.append(
            (k.get("input_ids") if k.get("input_ids") is not None else a[0]).shape[0]), with_kwargs=True)
        try:
            got = call(last_prompt_activations, model, tokenizer, prompts, layer, batch_size, name=NAME)
        finally:
            handle.remove()
        no_hooks_left(model, NAME)
        if hasattr(got, "shape") and isinstance(got, torch.Tensor) and got.ndim == 2 and got.shape[0] == 4:
            fail(f"{NAME} returned 4 rows for 5 prompts with batch_size=2: the last, partial batch was dropped")
        got = expect_tensor(got, Float[Tensor, "n d_model"], NAME, n=len(prompts), d_model=d_model(model))
        check(got.dtype in (torch.float32, torch.float64), f"{NAME} should return float32, got {got.dtype}")
        check(got.device.type == "cpu", f"{NAME} should return a tensor on the CPU, got one on {got.device}")
        check(not got.requires_grad, f"{NAME} returned a tensor that requires grad: run under torch.inference_mode()")
        if sizes and max(sizes) > batch_size:
            fail(f"{NAME} ran a batch of {max(sizes)} prompts with batch_size={batch_size}: `batch_size` is ignored")
        if not _close(got, want):
            if layer != TINY_LAYER:
                first = torch.stack([block_outputs(model, prompt_ids(tokenizer, p))[TINY_LAYER][-1] for p in prompts])
                if _close(got, first):
                    fail(f"{NAME}: `layer` is ignored: asked for block {layer}, it read block {TINY_LAYER}")
            for key, (cand, message) in _candidates(model, tokenizer, prompts, layer,
                                                    _right_padded(model, tokenizer, prompts, layer, batch_size)).items():
                if _close(got, cand):
                    fail(f"{NAME}: {message}")
            bad = [i for i in range(len(prompts)) if not _close(got[i], want[i])]
            fail(f"{NAME}: rows {bad} differ from block {layer}'s output at the last token of the prompt (rendered with "
                 f"the generation prompt); max difference {(got - want).abs().max():.3g}")
    # bf16: the result still comes back in float32
    m16, tok16 = tiny("tiny-qwen2", torch.bfloat16)
    got = call(last_prompt_activations, m16, tok16, prompts[:3], TINY_LAYER, 2, name=NAME)
    got = expect_tensor(got, Float[Tensor, "n d_model"], NAME, n=3, d_model=d_model(m16))
    check(got.dtype in (torch.float32, torch.float64),
          f"{NAME} on a bf16 model should still return float32 (.float()), got {got.dtype}")
    passed("test_last_prompt_activations")


def _shift_expected(base, tuned, v):
    return float(((tuned.double() - base.double()).mean(0) @ (v.double() / v.double().norm())))


@exercise("5.3", "finetuning_shift")
def test_finetuning_shift(finetuning_shift) -> None:
    """The mean over rows of (tuned - base) projected on the unit vector: a float, in float32 or better also for
    bf16 inputs."""
    require_implemented(finetuning_shift, SHIFT)
    g = torch.Generator().manual_seed(0)
    n, d = 7, 16
    base = torch.randn(n, d, generator=g) * 3
    v = vector(d, 2, 5.0)
    tuned = base + 0.8 * v / v.norm() + 0.3 * torch.randn(n, d, generator=g)
    want = _shift_expected(base, tuned, v)
    got = call(finetuning_shift, base, tuned, v, name=SHIFT)
    if isinstance(got, torch.Tensor):
        fail(f"{SHIFT} should return a Python float (float(...)), got a tensor of shape {tuple(got.shape)}")
    check(isinstance(got, (float, int, np.floating)), f"{SHIFT} should return a float, got {type(got).__name__}")
    got = float(got)
    if abs(got - want) > 1e-4:
        if abs(got + want) < 1e-4:
            fail(f"{SHIFT}: the sign is flipped: the shift is finetuned minus base, not base minus finetuned")
        if abs(got - want * float(v.norm())) < 1e-3:
            fail(f"{SHIFT}: the projection is on the raw vector: divide by its norm (a unit vector), so the shift is in "
                 "activation units")
        if abs(got - float((tuned - base).mean(0).norm())) < 1e-4:
            fail(f"{SHIFT} returned the norm of the mean difference: project it on the unit vector instead")
        fail(f"{SHIFT} returned {got:.5f}, expected {want:.5f}")
    # bf16 activations (as a bf16 model gives them): average in float32
    base16 = (torch.randn(64, d, generator=g) * 0.5 + 37.0).to(torch.bfloat16)
    tuned16 = (base16.float() + 13.7 * v / v.norm() + 0.05 * torch.randn(64, d, generator=g)).to(torch.bfloat16)
    want = _shift_expected(base16, tuned16, v)
    got = call(finetuning_shift, base16, tuned16, v, name=SHIFT)
    check(isinstance(got, (float, int, np.floating)), f"{SHIFT} should return a float, got {type(got).__name__}")
    got = float(got)
    if abs(got - want) > 2e-4 * max(1.0, abs(want)):
        fail(f"{SHIFT} on bf16 activations returned {got:.5f}, expected {want:.5f}: convert to float32 before "
             "subtracting and averaging (bf16 keeps about 3 significant digits)")
    passed("test_finetuning_shift")


@exercise("5.3", "finetuning_shift")
def test_finetuning_shift_input_checks(finetuning_shift) -> None:
    """Activations of different shapes, a vector of the wrong width, and a zero or NaN vector are rejected with
    ValueError."""
    require_implemented(finetuning_shift, SHIFT)
    a, v = torch.ones(4, 8), torch.ones(8)
    for args, what in [((a, torch.ones(3, 8), v), "base_acts [4, 8] and tuned_acts [3, 8]"),
                       ((a, a, torch.ones(9)), "a vector of width 9 for activations of width 8"),
                       ((a, a, torch.zeros(8)), "a zero vector"),
                       ((a, a, torch.full((8,), float("nan"))), "a vector holding NaN")]:
        expect_value_error(finetuning_shift, *args, name=SHIFT, what=what)
    passed("test_finetuning_shift_input_checks")
