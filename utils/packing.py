"""Packed sequences: several examples laid end to end in one row, with attention kept inside each.

Right-padding a length-sorted batch wastes the FLOPs of every pad (5-15 % on a chat corpus, more
with larger batches). Packing wastes none: the examples of a batch are concatenated into one row
of N tokens, positions restart at 0 for each example, and attention runs through FlashAttention's
variable-length kernel, which takes the examples' boundaries (`cu_seq_lens`, the cumulative
lengths [0, n0, n0 + n1, ...]) and never lets a token see another example.

`varlen_attention` is registered with transformers as the attention function "course_varlen";
`varlen_attention_on(model)` switches a model to it for the duration of a `with` block. The
model's forward receives the boundaries as keyword arguments (`cu_seq_lens_q`, `max_length_q`,
...), which transformers passes down to every attention call. On the CPU (tests, no flash
kernel) and in float32 the same function runs causal SDPA example by example: slower, same numbers.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F

NAME = "course_varlen"
HALF = (torch.float16, torch.bfloat16)


def can_pack(model) -> bool:
    """Whether `varlen_attention` computes exactly what this model's own attention does: every layer
    full causal attention (no sliding window) with no logit soft-capping, in a family whose forward
    accepts per-layer-type masks (transformers >= 5 decoder models)."""
    cfg = model.config.get_text_config()
    if getattr(cfg, "attn_logit_softcapping", None) is not None:  # Gemma 2: tanh cap inside the softmax
        return False
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "sliding_window_pattern", None):
        return False
    types = getattr(cfg, "layer_types", None)
    return bool(types) and set(types) == {"full_attention"}


def _flash_varlen():
    """A function (q, k, v, cu, max_len, scale) -> out on [N, heads, head_dim] tensors, from the
    public `torch.nn.attention.varlen.varlen_attn` where it takes a causal window and GQA, else the
    flash kernel it wraps."""
    try:
        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        if "window_size" in params and "enable_gqa" in params:
            return lambda q, k, v, cu, m, scale: varlen_attn(q, k, v, cu, cu, m, m, scale=scale, window_size=(-1, 0), enable_gqa=True)
    except ImportError:
        pass
    # FlashAttention 2's variable-length forward takes fewer key/value heads than query heads as is
    return lambda q, k, v, cu, m, scale: torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, m, m, 0.0, True, False, scale=scale)[0]


_FLASH = None


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function for one packed row: query [1, H, N, Dh], key/value
    [1, Hkv, N, Dh]; returns ([1, N, H, Dh], None). Needs `cu_seq_lens_q` (int32 [n + 1]) and
    `max_length_q` among the keyword arguments of the model's forward."""
    global _FLASH
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None or max_len is None:
        raise ValueError("course_varlen attention needs cu_seq_lens_q and max_length_q (packed examples' boundaries)")
    if query.shape[0] != 1:
        raise ValueError(f"course_varlen attention takes one packed row, got a batch of {query.shape[0]}")
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise ValueError("course_varlen attention does not do sliding windows or soft-capping (see can_pack)")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [N, heads, Dh]
    if q.is_cuda and q.dtype in HALF:  # the flash kernel takes half types only
        if _FLASH is None:
            _FLASH = _flash_varlen()
        out = _FLASH(q.contiguous(), k.contiguous(), v.contiguous(), cu, max_len, scaling)
    else:
        bounds = cu.tolist()
        out = torch.cat([
            F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
                                           is_causal=True, scale=scaling, enable_gqa=True).transpose(0, 1)
            for s, e in zip(bounds[:-1], bounds[1:])
        ])
    return out[None], None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention)


@contextlib.contextmanager
def varlen_attention_on(model):
    """Within the block, `model`'s attention layers call `varlen_attention`."""
    global _FLASH
    _register()
    if _FLASH is None:  # chosen here, outside any compiled region
        _FLASH = _flash_varlen()
    configs, todo = [], [model.config]
    while todo:  # the config and its sub-configs, each restored to its own setting afterwards
        cfg = todo.pop()
        configs.append((cfg, cfg._attn_implementation_internal))
        todo += [sub for key in getattr(cfg, "sub_configs", {}) if (sub := getattr(cfg, key, None)) is not None]
    try:
        model.config._attn_implementation = NAME
        yield
    finally:
        for cfg, previous in configs:
            cfg._attn_implementation_internal = previous
