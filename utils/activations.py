"""Activation extraction: means of block outputs over token spans, batched and padding-aware.

The course's fast path (the layer and response-span conventions of utils/hooks.py and utils/chat.py):
- hooks on the blocks (never `output_hidden_states`, whose last entry has the final norm applied);
- the decoder alone is run (no LM head: its logits would cost memory and FLOPs for nothing), and the
  forward pass stops after the deepest block we need (`StopForward`);
- examples are sorted by length and grouped into batches under a token budget. On a GPU in half
  precision, for models with plain causal attention (`utils.packing.can_pack`: Qwen2, Llama, ...),
  a batch is **packed**: its examples end to end in one row, positions restarting for each, and
  FlashAttention's variable-length kernel keeping each example's attention to itself; no FLOPs
  go to pads. Otherwise (CPU, float32, Gemma 2's soft-capped and sliding-window attention) a batch
  is **right-padded**: pads sit after every real token, and under causal attention no real token
  can see them, so the batch runs with no attention mask at all, which lets SDPA use its fused
  causal kernel. Either way each example gets exactly what it gets alone;
- span means are taken on the device by one batched matrix product per hooked block, kept there,
  and copied to the CPU once per batch (no per-block synchronisation);
- the token budget is chosen from free GPU memory and the model's sizes (`auto_token_budget`), so
  that activations stay under `activation_memory` bytes (4 GiB by default) on top of the weights;
- a CUDA out-of-memory error halves the token budget, re-plans what is left, and carries on;
- on a GPU, for large extractions (`compiled=None`: from `COMPILE_MIN_TOKENS` tokens; or
  `compiled=True`), each block's `forward` runs through `torch.compile` (one graph for all blocks,
  dynamic shapes), which fuses the norms, rotary embedding, activation and residual adds that
  otherwise each read and write the whole activation tensor. The hooks stay outside the compiled
  code. Compiling costs seconds to tens of seconds once per process; if it fails, the extraction
  carries on uncompiled with a warning.
"""

from __future__ import annotations

import contextlib
import math
import types
import warnings
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from utils.chat import Message, assistant_turn_spans, format_chat
from utils.hooks import StopForward, check_layer, get_blocks, hidden_of, hooks
from utils.models import available_memory, input_device
from utils.packing import HALF, can_pack, varlen_attention_on

DEFAULT_TOKEN_BUDGET = 16384  # tokens per batch (padded) where no GPU memory figure applies (CPU)
DEFAULT_ACTIVATION_MEMORY = 4 * 2**30  # bytes of activations allowed on top of the weights (GPU)
COMPILE_MIN_TOKENS = 1_000_000  # compiled=None compiles the blocks (GPU) from this many tokens on
COMPILE_OPTIONS: dict = {"dynamic": True}  # torch.compile keyword arguments for the blocks' forward


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def length_batches(lengths: Sequence[int], token_budget: int, max_batch: int | None = None, packed: bool = False) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size (`packed`: total length)
    fits `token_budget`; an example longer than the budget makes a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches, current, total = [], [], 0
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        size = total + lengths[i] if packed else (len(current) + 1) * longest
        if current and (size > token_budget or (max_batch and len(current) >= max_batch)):
            batches.append(current)
            current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        batches.append(current)
    return batches


def _decoder(model):
    try:
        return model.get_decoder()
    except (AttributeError, NotImplementedError):
        return model


def activation_bytes_per_token(model, max_len: int = 0) -> int:
    """Estimated peak activation memory of one token in a forward pass through the blocks.

    The largest live set is inside the MLP: act(gate), up and their product ([tokens, intermediate]
    each) beside the residual stream and the normed input; RMSNorm's float32 temporaries and the
    attention projections are smaller for every model the course uses. Eager attention also
    materialises [heads, T, T] scores (model dtype, float32 softmax, model dtype again), so that
    term is added per token for a sequence of `max_len`. A factor 1.5 covers allocator rounding
    and the temporaries not counted.
    """
    cfg = model.config.get_text_config()
    d = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", None) or 4 * d
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    kv = (getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    s = next(model.parameters()).element_size()
    mlp = s * (3 * inter + 4 * d)
    norm = s * 2 * d + 4 * 3 * d
    attn_proj = s * (3 * d + heads * head_dim * 3 + 4 * kv)
    per_token = 1.5 * max(mlp, norm, attn_proj)
    if getattr(cfg, "_attn_implementation", "sdpa") == "eager":
        per_token += heads * max_len * (2 * s + 4)
    return int(math.ceil(per_token))


def auto_token_budget(model, max_len: int = 0, activation_memory: int = DEFAULT_ACTIVATION_MEMORY) -> int:
    """Padded tokens per batch: activations of at most `activation_memory` bytes, and no more than
    this process may still allocate (`utils.models.available_memory`, which respects a
    per-process memory fraction; less a 1 GiB margin). On the CPU, `DEFAULT_TOKEN_BUDGET`."""
    device = input_device(model)
    if device.type != "cuda":
        return DEFAULT_TOKEN_BUDGET
    allowed = min(activation_memory, available_memory(device) - 2**30)
    budget = int(allowed // activation_bytes_per_token(model, max_len))
    return max(budget, max_len, 1)


_MM_OUT_DTYPE = True  # torch.mm(..., out_dtype=float32) on CUDA half types, until it fails once


def _span_sums(weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """[K, B*T] 0/1 span weights @ block output [B, T, d] (flattened) -> [K, d] float32 sums.

    One GEMM with a long inner dimension reads the block output once at full bandwidth (a
    batched product of K one-row matrices does not), and needs no gather for several spans per row."""
    global _MM_OUT_DTYPE
    flat = h.reshape(-1, h.shape[-1])
    if _MM_OUT_DTYPE and flat.is_cuda and flat.dtype in (torch.bfloat16, torch.float16):
        try:  # float32 accumulation *and* output: the sum is not rounded to bf16
            return torch.mm(weights, flat, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE = False
    return torch.mm(weights, flat).float()


_COMPILED_FORWARDS: dict[type, object] = {}


@contextlib.contextmanager
def compiled_blocks(model):
    """Within the context, every block's forward is its class's forward through `torch.compile`
    (dynamic shapes; compiled once per class, shared by all blocks). Hooks are untouched."""
    blocks = get_blocks(model)
    saved = []
    try:
        for block in blocks:
            cls = type(block)
            if cls not in _COMPILED_FORWARDS:
                _COMPILED_FORWARDS[cls] = torch.compile(cls.forward, **COMPILE_OPTIONS)
            saved.append((block, block.__dict__.get("forward")))
            block.forward = types.MethodType(_COMPILED_FORWARDS[cls], block)
        yield
    finally:
        for block, previous in saved:
            if previous is None:
                del block.forward
            else:
                block.forward = previous


@torch.inference_mode()
def _span_means_batch(model, ids: list[list[int]], spans: list[list[tuple[int, int]]], layers: list[int], packed: bool = False) -> list[torch.Tensor]:
    """One forward over a batch; returns per example a [num_spans, len(layers), d] float32 CPU tensor.

    Padded: a right-padded [B, T] batch with no attention mask (pads come after every real token,
    so causal attention keeps them out of every real token's view). Packed: the examples laid end
    to end in one [1, N] row, positions restarting at 0 for each, attention kept inside each
    example by `varlen_attention` (no pads at all)."""
    device = input_device(model)
    lengths = [len(x) for x in ids]
    if packed:
        input_ids = torch.tensor([t for x in ids for t in x], dtype=torch.long)[None]
        offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)  # where each example starts in the row
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        cu = torch.tensor([0] + lengths).cumsum(0).to(device=device, dtype=torch.int32)
    else:
        B, T = len(ids), max(lengths)
        input_ids = torch.zeros((B, T), dtype=torch.long)
        for b, x in enumerate(ids):
            input_ids[b, : len(x)] = torch.tensor(x)
        offsets = torch.arange(B) * T
    rows = torch.tensor([b for b, sp in enumerate(spans) for _ in sp], dtype=torch.long)
    flat = [s for sp in spans for s in sp]
    K = len(flat)
    bounds = torch.tensor(flat, dtype=torch.long)  # [K, 2]
    lens = (bounds[:, 1] - bounds[:, 0]).to(torch.float32)
    t = torch.arange(input_ids.numel())
    start = (offsets[rows] + bounds[:, 0])[:, None]
    weights_cpu = (t >= start) & (t < start + (bounds[:, 1] - bounds[:, 0])[:, None])  # [K, B*T], exact 0/1
    weights_cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
    d_model = model.config.get_text_config().hidden_size
    sums = torch.empty((K, len(layers), d_model), dtype=torch.float32, device=device)
    last = max(layers)

    slots: dict[int, list[int]] = {}
    for j, layer in enumerate(layers):
        slots.setdefault(layer, []).append(j)

    def make_hook(layer: int):
        def hook(module, args, output):
            h = hidden_of(output)
            key = (h.dtype, h.device)  # blocks of a device_map="auto" model sit on several devices
            w = weights_cache.get(key)
            if w is None:
                w = weights_cache[key] = weights_cpu.to(device=h.device, dtype=h.dtype)
            sums[:, slots[layer]] = _span_sums(w, h).to(device=sums.device).unsqueeze(1)
            if layer == last:
                raise StopForward

        return hook

    kwargs: dict = {}
    if packed:
        # an attention mask per layer type, given as None: the model builds no [N, N] mask
        types_ = set(getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"])
        max_len = _round_up(max(lengths))  # one value per size class: no recompilation per batch
        kwargs = dict(attention_mask={k: None for k in types_}, position_ids=position_ids.to(device),
                      cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_len, max_length_k=max_len)
    try:
        with hooks(model, {layer: make_hook(layer) for layer in slots}), (varlen_attention_on(model) if packed else contextlib.nullcontext()):
            _decoder(model)(input_ids=input_ids.to(device), use_cache=False, **kwargs)
    except StopForward:
        pass
    out = sums.cpu() / lens[:, None, None]
    result, k = [], 0
    for sp in spans:
        result.append(out[k : k + len(sp)])
        k += len(sp)
    return result


def _round_up(n: int) -> int:
    """n rounded up to a power of two (at least 128)."""
    return max(128, 1 << (n - 1).bit_length())


def span_means(
    model,
    input_ids: list[list[int]],
    spans: list[list[tuple[int, int]]],
    layers: Sequence[int],
    token_budget: int | None = None,
    max_batch: int | None = None,
    progress: bool = False,
    activation_memory: int = DEFAULT_ACTIVATION_MEMORY,
    compiled: bool | None = None,
    packed: bool | None = None,
) -> list[Float[Tensor, "n_spans n_layers d_model"]]:
    """Mean block output over each token span, for each example.

    input_ids[i] is one tokenised example and spans[i] its list of [start, end) spans; returns, per
    example, a float32 tensor [len(spans[i]), len(layers), d_model] on the CPU.
    `token_budget` (padded tokens per batch) defaults to `auto_token_budget(model, ...)`: on a GPU,
    what keeps activations under `activation_memory` bytes. An out-of-memory error halves it.
    `compiled` runs the blocks through `torch.compile` (None: on a GPU from `COMPILE_MIN_TOKENS`
    tokens; see the module docstring). `packed` lays each batch's examples end to end in one row
    with variable-length attention, so no FLOPs go to pads (None: on a GPU, for models where
    `utils.packing.can_pack` holds, in half precision; True on the CPU or in float32 runs the same
    layout with per-example SDPA).
    """
    if len(input_ids) != len(spans):
        raise ValueError(f"got {len(input_ids)} examples but {len(spans)} span lists")
    if isinstance(layers, (int, str, bytes)) or layers is None:
        raise ValueError(f"layers must be a list of block indices, got {layers!r}")
    layers = [check_layer(model, layer) for layer in layers]
    for i, (x, sp) in enumerate(zip(input_ids, spans)):
        for s, e in sp:
            if not 0 <= s < e <= len(x):
                raise ValueError(f"example {i}: span ({s}, {e}) is empty or outside its {len(x)} tokens")
    lengths = [len(x) for x in input_ids]
    if token_budget is None:
        token_budget = auto_token_budget(model, max(lengths, default=0), activation_memory)
    results: list[torch.Tensor | None] = [None] * len(input_ids)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(input_ids), desc="activations")
    if compiled is None:
        compiled = input_device(model).type == "cuda" and sum(lengths) >= COMPILE_MIN_TOKENS
    if packed is None:
        packed = input_device(model).type == "cuda" and next(model.parameters()).dtype in HALF and can_pack(model)
    elif packed and not can_pack(model):
        raise ValueError(f"packed=True: {type(model).__name__}'s attention is not plain causal on every layer (sliding windows, "
                         "soft-capped attention logits), which variable-length attention does not do; use packed=False")
    if compiled:
        try:
            with compiled_blocks(model):
                token_budget = _run_batches(model, input_ids, spans, layers, lengths, token_budget, max_batch, results, bar, packed)
        except Exception as err:
            if is_oom(err):
                raise
            warnings.warn(f"compiled blocks failed ({type(err).__name__}: {err}); continuing without torch.compile", stacklevel=2)
    _run_batches(model, input_ids, spans, layers, lengths, token_budget, max_batch, results, bar, packed)
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def _run_batches(model, input_ids, spans, layers, lengths, token_budget, max_batch, results, bar, packed=False) -> int:
    """Fill the missing entries of `results`; returns the token budget it ended with."""
    left = [i for i, r in enumerate(results) if r is None]
    while left:
        plan = length_batches([lengths[i] for i in left], token_budget, max_batch, packed)
        batch = [left[j] for j in plan[0]]
        try:
            outs = _span_means_batch(model, [input_ids[i] for i in batch], [spans[i] for i in batch], layers, packed=packed)
        except Exception as err:  # back off on out-of-memory, re-raise anything else
            if not is_oom(err) or len(batch) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            # halve the batch: a budget that fits half of it, for this batch and the rest
            size = sum(lengths[i] for i in batch) if packed else len(batch) * max(lengths[i] for i in batch)
            token_budget = max(1, size // 2)
            warnings.warn(f"out of memory on {len(batch)} examples; token budget lowered to {token_budget}", stacklevel=2)
            continue
        for i, o in zip(batch, outs):
            results[i] = o
        done = set(batch)
        left = [i for i in left if i not in done]
        if bar is not None:
            bar.update(len(batch))
    return token_budget


def response_mean_activations(
    model,
    tokenizer,
    conversations: Sequence[list[Message]],
    layers: Sequence[int] | None = None,
    **kwargs,
) -> Float[Tensor, "n n_layers d_model"]:
    """Mean activation over the final assistant response of each conversation.

    Returns float32 [n, len(layers), d_model] (all blocks when `layers` is None; row j = layers[j]).
    """
    if layers is None:
        layers = range(len(get_blocks(model)))
    if isinstance(layers, (int, str, bytes)):
        raise ValueError(f"layers must be a list of block indices (or None for all), got {layers!r}")
    layers = list(layers)
    chats = [format_chat(c, tokenizer) for c in conversations]
    means = span_means(model, [c.input_ids for c in chats], [[c.token_span] for c in chats], layers, **kwargs)
    return torch.cat(means, dim=0)


def turn_mean_activations(model, tokenizer, messages: list[Message], layer: int) -> list[Float[Tensor, "d_model"]]:
    """Mean activation over every assistant turn of one conversation, from one forward pass."""
    _, turn_spans, ids = assistant_turn_spans(messages, tokenizer)
    if not turn_spans:
        return []
    (means,) = span_means(model, [ids], [turn_spans], [layer])
    return [m[0] for m in means]


def conversations_from(system_prompts: Sequence[str | None], questions: Sequence[str], responses: Sequence[str]) -> list[list[Message]]:
    """[system?, user, assistant] conversations from three parallel lists (lengths checked)."""
    from utils.chat import build_messages

    if not (len(system_prompts) == len(questions) == len(responses)):
        raise ValueError(
            f"system_prompts, questions and responses must have the same length, got "
            f"{len(system_prompts)}, {len(questions)} and {len(responses)}"
        )
    return [build_messages(s, q, r) for s, q, r in zip(system_prompts, questions, responses)]
