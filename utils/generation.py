"""Local generation: batched, left-padded, length-sorted.

Steering composes with it: wrap a call in `utils.steering.Steerer(...)`. A CUDA out-of-memory error
halves the batch and continues.

Two paths compute the same thing:

- the **plain** path is transformers' `model.generate` (a growing cache; one Python-driven forward
  per new token). It is the fallback for anything the fast path does not handle, and the default
  on the CPU.
- the **fast** path (default on a GPU) keeps keys and values in static buffers
  `[batch, kv_heads, prompt + max_new_tokens, head_dim]` per block, written at a device-side
  position, and attends over them with the padding and causal structure held in a boolean tensor
  (an attention function registered with transformers' `AttentionInterface`, switched on for the
  duration of the call; the model's own modules, hooks and weights are untouched). Every decoding
  step then has the same shapes and the same tensor addresses, so on a GPU one step is recorded
  once as a CUDA graph and replayed for every new token, hooks included: the step costs one launch
  instead of hundreds. Hooks are recorded once, so the graph is used only when every hook on the
  model is marked `utils.steering.graph_safe` (the course's `Steerer` is); with any other hook the
  same loop runs without a graph.

Both paths: pad positions are masked out of attention and never steered (a `Steerer` sees the
prompt's 2-D attention mask in the prefill; a decoding step has no pads), greedy decoding takes
the arg-max of float32 logits, sampling applies temperature, then top-k (the model's
`generation_config.top_k`, transformers' default 50), then top-p, and rows that have ended are
filled with the pad token.

**Seeded sampling is per prompt.** Each prompt gets its own seed (`generate(..., seed=s)` gives
prompt i the seed derived from (s, i); a list gives one seed per prompt; None draws them from
torch's global generator). A token is sampled as the arg-max of its filtered logits plus Gumbel
noise that is a hash of (the prompt's seed, the step, the token id), so a prompt's sample does
not depend on which batch it lands in, on the batch size, or on the path that ran it.

**Memory.** On a GPU the batch size is capped at what fits in the memory this process may still
use (`utils.models.available_memory`, which respects `torch.cuda.set_per_process_memory_fraction`),
and a CUDA out-of-memory error halves the batch and continues.

**Many threads, one model.** `GenerationQueue` serves requests that several threads submit at
once (say, from a `ThreadPoolExecutor`) by gathering them and generating them in batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
import torch.nn.functional as F

from utils.activations import activation_bytes_per_token, is_oom
from utils.chat import Message, format_prompt
from utils.hooks import get_blocks
from utils.models import available_memory, input_device
from utils.steering import is_graph_safe

ATTENTION_NAME = "persona_course_static_kv"
_FAST_IMPLEMENTATIONS = ("sdpa", "eager")  # the attention functions the static path reproduces
CHECK_DONE_EVERY = 16  # decoding steps between checks (a host sync) that every row has ended
LAST_RUN: dict = {}  # what the last fast-path call did: cuda_graph, kv_bytes, steps (for benchmarks)
AUTO_MAX_BATCH = 128  # generate(batch_size=None) on a GPU: at most this many prompts per batch
GENERATION_MARGIN = 2**30  # bytes of GPU memory batch_size_for leaves free


def _encode(tokenizer, prompts: Sequence[list[Message] | str]) -> list[list[int]]:
    texts = [p if isinstance(p, str) else format_prompt(p, tokenizer) for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    T = max(len(x) for x in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, T - len(x):] = torch.tensor(x)
        mask[i, T - len(x):] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------
# Sampling


def _eos_ids(model) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _top_k(model) -> int | None:
    k = getattr(model.generation_config, "top_k", None)
    return 50 if k is None else k


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 0 <= x < 2**32, exact in int64 (and for Python ints)."""
    return (((x & 0xFFFF) * c) + ((((x >> 16) * c) & 0xFFFF) << 16)) & 0xFFFFFFFF


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser: every input bit changes about half the output bits."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def prompt_seeds(seed: int | Sequence[int] | None, n: int) -> Int[Tensor, "n"]:
    """One 63-bit sampling seed per prompt (int64 [n]): from (seed, i) for an int, from seed[i] for
    a list of n ints, and drawn from torch's global generator for None."""
    if seed is None:
        return torch.randint(0, 2**62, (n,), dtype=torch.long)
    if isinstance(seed, (int,)) or (isinstance(seed, torch.Tensor) and seed.ndim == 0):
        pairs = [(int(seed), i) for i in range(n)]
    else:
        seed = list(seed)
        if len(seed) != n:
            raise ValueError(f"seed: got {len(seed)} seeds for {n} prompts (give one per prompt, one int, or None)")
        pairs = [(int(s), 0) for s in seed]
    out = [int.from_bytes(hashlib.blake2b(f"{s}:{i}".encode(), digest_size=8).digest(), "little") >> 1 for s, i in pairs]
    return torch.tensor(out, dtype=torch.long)


def gumbel_noise(seeds: Int[Tensor, "batch"], step: int, token_ids: Int[Tensor, "batch k"] | Int[Tensor, "k"]) -> Float[Tensor, "batch k"]:
    """Gumbel(0, 1) noise [B, K], float32: a hash of (seeds[b], step, token_ids[b, k]) (token_ids
    [B, K], or [K] for every row), the same on every device and in every batch."""
    seeds = seeds.to(token_ids.device)
    row = _fmix32(_fmix32(_fmix32((seeds & 0xFFFFFFFF) ^ 0x9E3779B9) ^ (seeds >> 32)) ^ (int(step) & 0xFFFFFFFF))
    h = _fmix32(_fmix32(row[:, None] ^ token_ids.long()) ^ 0x7F4A7C15)
    u = ((h >> 8).float() + 0.5) * 2.0**-24  # in (0, 1)
    return -torch.log(-torch.log(u))


def choose_tokens(logits: Float[Tensor, "batch vocab"], temperature: float = 0.0, top_p: float = 1.0, top_k: int | None = None,
                  seeds: Int[Tensor, "batch"] | None = None, step: int = 0) -> Int[Tensor, "batch"]:
    """Next token of each row of `logits` [B, V]: arg-max when temperature == 0, else a sample
    after temperature, top-k (None or 0: off) and top-p (nucleus) filtering.

    A sample is the arg-max of the filtered scores plus `gumbel_noise(seeds, step, token)` (the
    Gumbel-max trick: exactly a draw from the filtered softmax), so row b's token depends only on
    its own logits, `seeds[b]` and `step`. `seeds` None draws one per row from torch's global
    generator (`torch.manual_seed` makes the call reproducible)."""
    scores = logits.float()
    if temperature <= 0:
        return scores.argmax(dim=-1)
    if seeds is None:
        seeds = prompt_seeds(None, scores.shape[0])
    scores = scores / temperature
    V = scores.shape[-1]
    if top_k and top_k < V:
        scores, ids = torch.topk(scores, top_k, dim=-1)  # descending
    elif top_p < 1.0:
        scores, ids = scores.sort(dim=-1, descending=True)
    else:
        ids = torch.arange(V, device=scores.device)
    if top_p < 1.0:
        probs = scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # of the more likely tokens
        scores = scores.masked_fill(mass_before >= top_p, float("-inf"))  # the most likely is always kept
    pick = (scores + gumbel_noise(seeds, step, ids)).argmax(dim=-1)
    return pick if ids.ndim == 1 else ids.gather(1, pick[:, None]).squeeze(1)


def generation_bytes_per_row(model, prompt_len: int, max_new_tokens: int) -> int:
    """Estimated GPU memory of one prompt in a generation batch: the static key/value buffers of
    prompt + new tokens (every block), the prefill's activations
    (`utils.activations.activation_bytes_per_token`), and float32 logits with the sampling
    temporaries of one row."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    elem = next(model.parameters()).element_size()
    slots = -(-(prompt_len + max_new_tokens) // 64) * 64
    kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * elem * slots
    prefill = activation_bytes_per_token(model, prompt_len) * prompt_len
    logits = 4 * 4 * cfg.vocab_size
    return int(kv + prefill + logits)


def batch_size_for(model, prompt_len: int, max_new_tokens: int, requested: int | None = None, n: int | None = None) -> int:
    """Prompts per generation batch (`n`: how many there are). On a GPU: as many rows of
    `generation_bytes_per_row` as fit in `utils.models.available_memory` less `GENERATION_MARGIN`,
    at most `requested` (None: `AUTO_MAX_BATCH`). On the CPU: `requested` (None: 32)."""
    device = input_device(model)
    limit = requested if requested is not None else (AUTO_MAX_BATCH if device.type == "cuda" else 32)
    if n is not None:
        limit = min(limit, n)
    limit = max(1, limit)
    if device.type != "cuda":
        return limit
    room = available_memory(device) - GENERATION_MARGIN
    return int(max(1, min(limit, room // generation_bytes_per_row(model, prompt_len, max_new_tokens))))


# ---------------------------------------------------------------------------------------------
# The static key/value store and the attention function that uses it


class StaticKV:
    """Keys and values of every block for one batch, in buffers of a fixed length `L`.

    `valid[b, j]` says whether cache slot j of row b holds a real token; `wpos` (a 1-element
    device tensor) is the slot the next decoding step writes. Slots are the padded sequence's
    positions, as in transformers' masks (a sliding window counts them too).
    """

    def __init__(self, pad_mask: Int[Tensor, "batch seq"], length: int):
        B, T = pad_mask.shape
        self.length = length
        self.valid = torch.zeros((B, length), dtype=torch.bool, device=pad_mask.device)
        self.valid[:, :T] = pad_mask.bool()
        self.wpos = torch.zeros(1, dtype=torch.long, device=pad_mask.device)
        self.slots = torch.arange(length, device=pad_mask.device)
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.calls: set[int] = set()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))


_ACTIVE: StaticKV | None = None


def _attend(query, key, value, mask, scaling, softcap):
    """Attention of query [B, Hkv, q, D] over key/value [B, Hkv, k, D] under a boolean mask
    (True = may attend) broadcastable to [B, Hkv, q, k]. With a softcap, the eager form (the only
    one that applies it); otherwise SDPA."""
    if softcap is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    w = torch.matmul(query, key.transpose(-1, -2)) * scaling
    w = torch.tanh(w / softcap) * softcap
    w = w.masked_fill(~mask, torch.finfo(w.dtype).min)
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(w, value)


def static_kv_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        softcap=None, sliding_window=None, **kwargs):
    """Attention function (transformers' `AttentionInterface` signature) over the active StaticKV.

    A prefill (several query positions) writes slots [0, T) and attends causally among them; a
    decoding step (one query position) writes slot `wpos` and attends over every valid slot. Query
    heads are grouped by key/value head, so keys and values are read once, never repeated.
    """
    kv = _ACTIVE
    if kv is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention function runs only inside utils.generation")
    idx = module.layer_idx
    B, H, Q, D = query.shape
    Hkv = key.shape[1]
    if scaling is None:
        scaling = D**-0.5
    if Q > 1:  # prefill
        if idx not in kv.keys:
            kv.keys[idx] = key.new_zeros((B, Hkv, kv.length, key.shape[-1]))
            kv.values[idx] = value.new_zeros((B, Hkv, kv.length, value.shape[-1]))
        kv.keys[idx][:, :, :Q].copy_(key)
        kv.values[idx][:, :, :Q].copy_(value)
        kv.calls.add(idx)
        slots = kv.slots[:Q]
        mask = (slots[None, :] <= slots[:, None]) & kv.valid[:, None, None, :Q]  # causal, no pads
        if sliding_window:
            mask = mask & (slots[None, :] > slots[:, None] - sliding_window)
        mask = mask | torch.eye(Q, dtype=torch.bool, device=mask.device)  # pad rows see themselves: no NaN
        rep = H // Hkv
        k = key.repeat_interleave(rep, dim=1) if rep > 1 else key
        v = value.repeat_interleave(rep, dim=1) if rep > 1 else value
        out = _attend(query, k, v, mask, scaling, softcap)  # [B, H, Q, Dv]
        return out.transpose(1, 2).contiguous(), None
    keys, values = kv.keys[idx], kv.values[idx]
    keys.index_copy_(2, kv.wpos, key)
    values.index_copy_(2, kv.wpos, value)
    mask = kv.valid[:, None, None, :]
    if sliding_window:
        mask = mask & (kv.slots > kv.wpos - sliding_window)
    q = query.reshape(B, Hkv, H // Hkv, D)  # the query heads of each key/value head, side by side
    out = _attend(q, keys, values, mask, scaling, softcap)  # [B, Hkv, G, Dv]
    return out.reshape(B, 1, H, out.shape[-1]), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, static_kv_attention)


@contextlib.contextmanager
def _static_attention(model, kv: StaticKV):
    global _ACTIVE
    _register_attention()
    config = model.config
    previous = config._attn_implementation
    outer = _ACTIVE
    _ACTIVE = kv
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
        _ACTIVE = outer


def fast_path_supported(model) -> bool:
    """Whether `model` can use the static-cache path: a decoder-only model on one device whose
    attention is transformers' sdpa or eager function."""
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False) or cfg._attn_implementation not in _FAST_IMPLEMENTATIONS:
        return False
    devices = {p.device for p in model.parameters()}
    return len(devices) == 1


def hooks_graph_safe(model) -> bool:
    """Whether every forward hook and pre-hook on the model may be recorded in a CUDA graph: marked
    `graph_safe`, or transformers' own output-capturing hooks (inactive while generating)."""
    for m in model.modules():
        for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()):
            if not (is_graph_safe(fn) or getattr(fn, "__module__", "").startswith("transformers.")):
                return False
    return True


class _Unsupported(Exception):
    pass


def _trim(out: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """Drop columns after the step where every row had ended (what `model.generate` returns)."""
    if not eos or out.shape[1] == 0:
        return out
    is_eos = torch.isin(out, torch.tensor(eos, device=out.device))
    if not bool(is_eos.any(dim=1).all()):
        return out
    last = int(is_eos.float().argmax(dim=1).max())
    return out[:, : last + 1]


@torch.inference_mode()
def generate_ids_fast(model, ids: Int[Tensor, "batch seq"], mask: Int[Tensor, "batch seq"], max_new_tokens: int, pad_id: int,
                      temperature: float = 0.0, top_p: float = 1.0, cuda_graphs: bool | None = None,
                      return_logits: bool = False, seeds: Int[Tensor, "batch"] | None = None):
    """New token ids [B, n] for a left-padded batch through the static-cache path (see module
    docstring). With `return_logits`, also the float32 logits of every step [B, n, V].
    `cuda_graphs` None: on a GPU, when `hooks_graph_safe(model)`. `seeds`: one sampling seed per
    row (`prompt_seeds`; None: drawn from torch's global generator)."""
    device = input_device(model)
    if temperature > 0:
        seeds = (prompt_seeds(None, ids.shape[0]) if seeds is None else seeds).to(device)
    ids, mask = ids.to(device), mask.to(device)
    B, T = ids.shape
    eos = _eos_ids(model)
    top_k = _top_k(model)
    length = -(-(T + max_new_tokens) // 64) * 64  # slots, rounded up for aligned kernels
    kv = StaticKV(mask, length)
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda" and hooks_graph_safe(model)
    n_blocks = len(get_blocks(model))
    eos_t = torch.tensor(eos or [-1], device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    kept = [] if return_logits else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    with _static_attention(model, kv):
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1).logits[:, -1]
        if len(kv.calls) != n_blocks:
            raise _Unsupported(f"the static attention ran in {len(kv.calls)} of {n_blocks} blocks")
        kv.wpos.fill_(T)
        tok = torch.zeros((B, 1), dtype=torch.long, device=device)
        pos = (mask.long().sum(-1, keepdim=True)).clone()

        def step():
            kv.valid.index_fill_(1, kv.wpos, True)
            result = model(input_ids=tok, position_ids=pos, use_cache=False, logits_to_keep=1).logits[:, -1]
            kv.wpos.add_(1)
            pos.add_(1)
            return result

        graph, static_logits, side = None, None, None
        warmup = 2
        for i in range(max_new_tokens):
            if kept is not None:
                kept.append(logits.to(torch.float32, copy=True))
            nxt = choose_tokens(logits, temperature, top_p, top_k, seeds=seeds, step=i)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out[:, i] = nxt
            done |= torch.isin(nxt, eos_t)
            if i == max_new_tokens - 1 or ((i + 1) % CHECK_DONE_EVERY == 0 and bool(done.all())):
                out = out[:, : i + 1]
                break
            tok.copy_(nxt[:, None])
            if graph is not None:
                graph.replay()
                logits = static_logits
            elif cuda_graphs and i >= warmup:
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_logits = step()
                except Exception as err:  # a hook or kernel that cannot be recorded: run on without
                    warnings.warn(f"CUDA graph capture failed ({type(err).__name__}: {err}); decoding without a graph",
                                  stacklevel=2)
                    graph, cuda_graphs = None, False
                    torch.cuda.synchronize()
                    logits = step()
                else:
                    graph.replay()
                    logits = static_logits
            elif cuda_graphs:  # warm-up steps on a side stream, as graph capture wants
                side = side or torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    logits = step()
                torch.cuda.current_stream(device).wait_stream(side)
            else:
                logits = step()
        LAST_RUN.clear()
        LAST_RUN.update(cuda_graph=graph is not None, kv_bytes=kv.nbytes(), steps=out.shape[1])
        del graph
    out = _trim(out, eos)
    if return_logits:
        return out, torch.stack(kept[: out.shape[1]], dim=1)
    return out


class _SeededSampler:
    """A logits processor for `model.generate` that samples as `choose_tokens` does (per-row seeds,
    the step counted from the prompt) and leaves only the chosen token open, so that greedy
    decoding emits exactly that sample."""

    def __init__(self, prompt_len: int, temperature: float, top_p: float, top_k: int | None, seeds: torch.Tensor):
        self.prompt_len, self.temperature, self.top_p, self.top_k, self.seeds = prompt_len, temperature, top_p, top_k, seeds

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        tok = choose_tokens(scores, self.temperature, self.top_p, self.top_k, seeds=self.seeds, step=step)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tok[:, None], 0.0)


@torch.inference_mode()
def generate_ids_plain(model, ids: Int[Tensor, "batch seq"], mask: Int[Tensor, "batch seq"], max_new_tokens: int, pad_id: int,
                       temperature: float = 0.0, top_p: float = 1.0, seeds: Int[Tensor, "batch"] | None = None) -> Int[Tensor, "batch new"]:
    """New token ids [B, n] for a left-padded batch through transformers' `model.generate` (sampling
    as `choose_tokens` does, with one seed per row; None: drawn from torch's global generator)."""
    from transformers import LogitsProcessorList

    device = input_device(model)
    extra: dict = {}
    if temperature > 0:
        seeds = prompt_seeds(None, ids.shape[0]) if seeds is None else seeds
        sampler = _SeededSampler(ids.shape[1], temperature, top_p, _top_k(model), seeds.to(device))
        extra = dict(logits_processor=LogitsProcessorList([sampler]))
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         pad_token_id=pad_id, do_sample=False, **extra)
    return out[:, ids.shape[1]:]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[list[Message] | str],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int | None = None,
    seed: int | Sequence[int] | None = None,
    progress: bool = False,
    fast: bool | None = None,
) -> list[str]:
    """Completions for chat prompts (message lists, or already-formatted prompt strings).

    Greedy when temperature == 0. Returns the new text of each prompt, special tokens removed,
    in input order. `fast` chooses the static-cache path (None: on a GPU, where supported; see
    the module docstring); False is transformers' `model.generate`. `batch_size`: the most prompts
    per batch (None: as many as fit, see `batch_size_for`); on a GPU it is lowered to what fits.
    `seed`: sampling seeds (one int for the call, one per prompt, or None; see the module
    docstring): a prompt's sample does not depend on the batch it runs in.
    """
    if not prompts:
        return []
    seeds = prompt_seeds(seed, len(prompts)) if temperature > 0 else None
    encoded = _encode(tokenizer, prompts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if fast is None:
        fast = input_device(model).type == "cuda" and fast_path_supported(model)
    elif fast and not fast_path_supported(model):
        warnings.warn("the static-cache path does not support this model; using model.generate", stacklevel=2)
        fast = False
    results: list[str | None] = [None] * len(prompts)
    left = list(order)
    batch_size = batch_size_for(model, len(encoded[order[0]]), max_new_tokens, batch_size, len(prompts))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="generate")
    while left:
        batch = left[:batch_size]
        ids, mask = left_pad([encoded[i] for i in batch], pad_id)
        rows = None if seeds is None else seeds[batch]
        try:
            if fast:
                try:
                    new = generate_ids_fast(model, ids, mask, max_new_tokens, pad_id, temperature, top_p, seeds=rows)
                except _Unsupported as err:
                    warnings.warn(f"static-cache path unavailable ({err}); using model.generate", stacklevel=2)
                    fast = False
                    continue
            else:
                new = generate_ids_plain(model, ids, mask, max_new_tokens, pad_id, temperature, top_p, seeds=rows)
        except Exception as err:
            if not is_oom(err) or len(batch) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(1, len(batch) // 2)
            warnings.warn(f"out of memory on a batch of {len(batch)}; batch size lowered to {batch_size}", stacklevel=2)
            continue
        new = new.cpu()
        for i, row in zip(batch, new):
            results[i] = tokenizer.decode(row, skip_special_tokens=True)
        left = left[len(batch):]
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def generate_conversations(model, tokenizer, user_turns: Sequence[Sequence[str]], max_new_tokens: int = 256,
                           empty_reply: str = "...", **kwargs) -> list[list[Message]]:
    """Conversations the model writes turn by turn from each conversation's user turns (all of the
    same length), every conversation in one batch per turn (`generate`'s keyword arguments pass on).
    An empty reply is recorded as `empty_reply`, so that every assistant turn has text. Hooks active
    around the call (a steerer, a capper) act on every turn."""
    if len({len(turns) for turns in user_turns}) > 1:
        raise ValueError("every conversation needs the same number of user turns, got "
                         f"{sorted({len(turns) for turns in user_turns})}")
    conversations: list[list[Message]] = [[] for _ in user_turns]
    for turn in range(len(user_turns[0]) if user_turns else 0):
        for messages, turns in zip(conversations, user_turns):
            messages.append({"role": "user", "content": turns[turn]})
        replies = generate(model, tokenizer, conversations, max_new_tokens=max_new_tokens, **kwargs)
        for messages, reply in zip(conversations, replies):
            messages.append({"role": "assistant", "content": reply if reply.strip() else empty_reply})
    return conversations


# ---------------------------------------------------------------------------------------------
# Many threads, one model


@dataclass
class _Request:
    prompt: Any
    key: tuple  # (max_new_tokens, temperature, top_p): requests that can share a batch
    seed: int | None
    done: bool = False
    text: str | None = None
    error: BaseException | None = None


@dataclass
class GenerationQueue:
    """Serves `generate` requests that many threads submit at once, in batches.

        queue = GenerationQueue(model, tokenizer)
        with ThreadPoolExecutor(10) as pool:     # ten threads, each asking for one reply at a time
            replies = list(pool.map(lambda q: queue(build_messages(None, q), max_new_tokens=64), questions))

    A model is not safe to call from several threads at once, and one prompt at a time wastes a
    GPU. So each call joins a queue; one of the waiting threads (the *leader*) waits until no new
    request has arrived for `gather_seconds` (or `max_batch` are waiting), takes every waiting
    request, and runs them through `generate` together (one call per distinct (max_new_tokens,
    temperature, top_p)), while the others wait for their text. Then the leadership passes on.
    A request's text is what `generate(model, tokenizer, [prompt], ..., seed=seed)` returns alone
    (sampling seeds are per prompt; see the module docstring). An exception in `generate` is
    raised in every thread whose request was in that call. `calls` counts the `generate` calls
    and `sizes` their sizes.
    """

    model: Any
    tokenizer: Any
    max_batch: int | None = None  # per generate call (None: as many as fit in memory)
    gather_seconds: float = 0.02
    generate_kwargs: dict = field(default_factory=dict)  # passed on to generate (fast=..., progress=...)
    calls: int = 0
    sizes: list = field(default_factory=list)

    def __post_init__(self):
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._serving = False

    def __call__(self, prompt: list[Message] | str, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> str:
        """The completion of one prompt (blocks until its batch has run)."""
        req = _Request(prompt, (int(max_new_tokens), float(temperature), float(top_p)), seed)
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()
            while not req.done and self._serving:
                self._cond.wait()
            if not req.done:
                self._serving = True  # this thread leads until its own request is done
        if not req.done:
            try:
                while not req.done:
                    self._serve(self._collect())
            finally:
                with self._cond:
                    self._serving = False
                    self._cond.notify_all()
        if req.error is not None:
            raise req.error
        return req.text  # type: ignore[return-value]

    def _collect(self) -> list[_Request]:
        """Wait until the queue stops growing (or is full), then take what is waiting."""
        with self._cond:
            while True:
                n = len(self._pending)
                if self.max_batch is not None and n >= self.max_batch:
                    break
                self._cond.wait(self.gather_seconds)
                if len(self._pending) == n:
                    break
            taken, self._pending = self._pending, []
            return taken

    def _serve(self, requests: list[_Request]) -> None:
        groups: dict[tuple, list[_Request]] = {}
        for r in requests:
            groups.setdefault(r.key, []).append(r)
        for (max_new_tokens, temperature, top_p), group in groups.items():
            try:
                seeds = None
                if temperature > 0:  # one seed per request: its own, or one drawn for it
                    drawn = prompt_seeds(None, len(group)).tolist()
                    seeds = [r.seed if r.seed is not None else d for r, d in zip(group, drawn)]
                texts = generate(self.model, self.tokenizer, [r.prompt for r in group], max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, batch_size=self.max_batch, seed=seeds,
                                 **self.generate_kwargs)
                for r, t in zip(group, texts):
                    r.text = t
            except BaseException as err:  # every waiting thread hears about it
                for r in group:
                    r.error = err
            finally:
                with self._cond:
                    self.calls += 1
                    self.sizes.append(len(group))
                    for r in group:
                        r.done = True
                    self._cond.notify_all()
