"""Exercise 5.3 — The finetuning shift: wrong and correct implementations."""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from utils.chat import build_messages, format_prompt, render
from utils.generation import left_pad
from utils.hooks import get_blocks, hidden_of


def _acts(model, tokenizer, prompts, layer, batch_size=16, *, index=None, gen=True, pad_side="left", pick="last",
          drop_last=False, ignore_batch=False, fixed_layer=None, keep_dtype=False):
    layer = fixed_layer if fixed_layer is not None else layer
    bs = len(prompts) if ignore_batch else batch_size
    pad = tokenizer.pad_token_id or 0
    out = []
    for i in range(0, len(prompts), bs):
        chunk = prompts[i:i + bs]
        if drop_last and len(chunk) < bs:
            break
        texts = [render(tokenizer, build_messages(None, p), add_generation_prompt=gen) for p in chunk]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if pad_side == "left":
            x, m = left_pad(ids, pad)
        else:
            w = max(map(len, ids))
            x = torch.tensor([r + [pad] * (w - len(r)) for r in ids])
            m = torch.tensor([[1] * len(r) + [0] * (w - len(r)) for r in ids])
        with torch.inference_mode():
            hs = model(input_ids=x, attention_mask=m, output_hidden_states=True).hidden_states
        h = hs[layer + 1 if index is None else index(layer)]
        if pick == "last":
            r = h[:, -1]
        elif pick == "first":
            r = torch.stack([h[j, int((m[j] == 0).sum())] for j in range(len(ids))])
        else:
            w = m.unsqueeze(-1).to(h.dtype)
            r = (h * w).sum(1) / w.sum(1)
        out.append(r if keep_dtype else r.float())
    return torch.cat(out)


@mistake("test_last_prompt_activations", "hidden_states[layer + 1]")
def hidden_states_layer(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, index=lambda L: L)


@mistake("test_last_prompt_activations", "generation prompt")
def no_generation_prompt(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, gen=False)


@mistake("test_last_prompt_activations", "pad")
def right_padded(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, pad_side="right")


@mistake("test_last_prompt_activations", "first token")
def first_token(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, pick="first")


@mistake("test_last_prompt_activations", "averaged over all prompt tokens")
def mean_over_prompt(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, pick="mean")


@mistake("test_last_prompt_activations", "dropped")
def drops_last_batch(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, drop_last=True)


@mistake("test_last_prompt_activations", "batch_size")
def ignores_batch_size(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, ignore_batch=True)


@mistake("test_last_prompt_activations", "`layer` is ignored")
def notebook_layer(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, fixed_layer=2)


@mistake("test_last_prompt_activations", "float32")
def keeps_bf16(model, tokenizer, prompts, layer, batch_size=16):
    return _acts(model, tokenizer, prompts, layer, batch_size, keep_dtype=True)


@mistake("test_last_prompt_activations", "requires grad")
def with_grad(model, tokenizer, prompts, layer, batch_size=16):
    seen = []
    handle = get_blocks(model)[layer].register_forward_hook(lambda m, a, o: seen.append(hidden_of(o)[:, -1].float()))
    try:
        for i in range(0, len(prompts), batch_size):
            ids = [tokenizer(format_prompt(build_messages(None, p), tokenizer), add_special_tokens=False)["input_ids"]
                   for p in prompts[i:i + batch_size]]
            x, m = left_pad(ids, tokenizer.pad_token_id or 0)
            model(input_ids=x, attention_mask=m)
    finally:
        handle.remove()
    return torch.cat(seen)


@correct("test_last_prompt_activations")
def with_block_hook(model, tokenizer, prompts, layer, batch_size=16):
    """Reads the block's output with a hook and stops there (no hidden_states list)."""
    from utils.hooks import StopForward

    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [tokenizer(format_prompt(build_messages(None, p), tokenizer), add_special_tokens=False)["input_ids"]
               for p in prompts[i:i + batch_size]]
        x, m = left_pad(ids, tokenizer.pad_token_id or 0)
        seen = {}

        def grab(mod, a, o):
            seen["h"] = hidden_of(o)[:, -1].float().cpu()
            raise StopForward

        handle = get_blocks(model)[layer].register_forward_hook(grab)
        try:
            with torch.no_grad():
                model(input_ids=x, attention_mask=m)
        except StopForward:
            pass
        finally:
            handle.remove()
        out.append(seen["h"])
    return torch.cat(out)


def _shift_checked(base, tuned, vector):
    base, tuned, vector = torch.as_tensor(base), torch.as_tensor(tuned), torch.as_tensor(vector)
    if base.shape != tuned.shape or vector.shape != (base.shape[-1],) or not bool(vector.any()) or \
            not bool(torch.isfinite(vector).all()):
        raise ValueError("bad input")
    return base.float(), tuned.float(), vector.float()


@mistake("test_finetuning_shift", "sign")
def base_minus_tuned(base_acts, tuned_acts, vector):
    b, t, v = _shift_checked(base_acts, tuned_acts, vector)
    return float((b - t).mean(0) @ (v / v.norm()))


@mistake("test_finetuning_shift", "unit vector")
def raw_vector(base_acts, tuned_acts, vector):
    b, t, v = _shift_checked(base_acts, tuned_acts, vector)
    return float((t - b).mean(0) @ v)


@mistake("test_finetuning_shift", "norm of the mean difference")
def difference_norm(base_acts, tuned_acts, vector):
    b, t, v = _shift_checked(base_acts, tuned_acts, vector)
    return float((t - b).mean(0).norm())


@mistake("test_finetuning_shift", "float32")
def bf16_average(base_acts, tuned_acts, vector):
    base_acts, tuned_acts = torch.as_tensor(base_acts), torch.as_tensor(tuned_acts)
    v = torch.as_tensor(vector).to(base_acts.dtype)
    return float((tuned_acts - base_acts).mean(0) @ (v / v.norm()))


@mistake("test_finetuning_shift", "float")
def returns_tensor(base_acts, tuned_acts, vector):
    b, t, v = _shift_checked(base_acts, tuned_acts, vector)
    return (t - b).mean(0) @ (v / v.norm())


@mistake("test_finetuning_shift_input_checks", "ValueError")
def no_checks(base_acts, tuned_acts, vector):
    b, t, v = torch.as_tensor(base_acts).float(), torch.as_tensor(tuned_acts).float(), torch.as_tensor(vector).float()
    n = min(len(b), len(t))
    d = min(b.shape[-1], v.shape[0])
    return float((t[:n, :d] - b[:n, :d]).mean(0) @ (v[:d] / v[:d].norm().clamp_min(1e-12)))


@correct("test_finetuning_shift", "test_finetuning_shift_input_checks")
def per_row_then_mean(base_acts, tuned_acts, vector):
    b, t, v = _shift_checked(base_acts, tuned_acts, vector)
    u = v.double() / v.double().norm()
    return float(((t.double() - b.double()) @ u).mean())
