"""Two decoding paths for a left-padded batch of token ids, computing the same thing.

- the **plain** path (`generate_ids_plain`) is transformers' `model.generate` (a growing cache; one
  Python-driven forward per new token). It is the fallback for anything the fast path does not
  handle, and the default on the CPU.
- the **fast** path (`generate_ids_fast`, the default on a GPU) keeps keys and values in static
  buffers `[batch, kv_heads, prompt + max_new_tokens, head_dim]` per block (`StaticKV`), written at
  a device-side position, and attends over them with the padding and causal structure held in a
  boolean tensor (`static_kv_attention`, registered with transformers' `AttentionInterface` and
  switched on for the duration of the call; the model's own modules, hooks and weights are
  untouched). Every decoding step then has the same shapes and the same tensor addresses, so on a
  GPU one step is recorded once as a CUDA graph and replayed for every new token, hooks included:
  the step costs one launch instead of hundreds. Hooks are recorded once, so the graph is used only
  when every hook on the model is marked `utils.steering.graph_safe` (`hooks_graph_safe`; the
  course's `Steerer` is); with any other hook the same loop runs without a graph.

Both paths: pad positions are masked out of attention and never steered (a `Steerer` sees the
prompt's 2-D attention mask in the prefill; a decoding step has no pads), tokens are chosen by
`utils.sampling.choose_tokens` (one seed per row), and rows that have ended are filled with the pad
token. `utils.generation.generate` batches prompts and picks the path.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from utils.hooks import get_blocks
from utils.models import input_device
from utils.sampling import SeededSampler, choose_tokens, default_top_k, eos_token_ids, prompt_seeds
from utils.steering import is_graph_safe

ATTENTION_NAME = "persona_course_static_kv"
_FAST_IMPLEMENTATIONS = ("sdpa", "eager")  # the attention functions the static path reproduces
CHECK_DONE_EVERY = 16  # decoding steps between checks (a host sync) that every row has ended
LAST_RUN: dict = {}  # what the last fast-path call did: cuda_graph, kv_bytes, steps (for benchmarks)


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
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention function runs only inside utils.decoding")
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


class Unsupported(Exception):
    """The static-cache path cannot run this model (generate falls back to model.generate)."""


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
    eos = eos_token_ids(model)
    top_k = default_top_k(model)
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
            raise Unsupported(f"the static attention ran in {len(kv.calls)} of {n_blocks} blocks")
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
        sampler = SeededSampler(ids.shape[1], temperature, top_p, default_top_k(model), seeds.to(device))
        extra = dict(logits_processor=LogitsProcessorList([sampler]))
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         pad_token_id=pad_id, do_sample=False, **extra)
    return out[:, ids.shape[1]:]
