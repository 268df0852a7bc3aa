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
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from utils.activations import is_oom
from utils.chat import Message, format_prompt
from utils.hooks import get_blocks
from utils.models import input_device
from utils.steering import is_graph_safe

ATTENTION_NAME = "persona_course_static_kv"
_FAST_IMPLEMENTATIONS = ("sdpa", "eager")  # the attention functions the static path reproduces
CHECK_DONE_EVERY = 16  # decoding steps between checks (a host sync) that every row has ended
LAST_RUN: dict = {}  # what the last fast-path call did: cuda_graph, kv_bytes, steps (for benchmarks)


def _encode(tokenizer, prompts: Sequence[list[Message] | str]) -> list[list[int]]:
    texts = [p if isinstance(p, str) else format_prompt(p, tokenizer) for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def choose_tokens(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Next token of each row of `logits` [B, V]: arg-max when temperature == 0, else a sample
    after temperature, top-k (None or 0: off) and top-p (nucleus) filtering."""
    scores = logits.float()
    if temperature <= 0:
        return scores.argmax(dim=-1)
    scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = scores.sort(dim=-1)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = mass_below <= 1.0 - top_p  # the least likely tokens whose mass stays under 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), 1).squeeze(1)


# ---------------------------------------------------------------------------------------------
# The static key/value store and the attention function that uses it


class StaticKV:
    """Keys and values of every block for one batch, in buffers of a fixed length `L`.

    `valid[b, j]` says whether cache slot j of row b holds a real token; `wpos` (a 1-element
    device tensor) is the slot the next decoding step writes. Slots are the padded sequence's
    positions, as in transformers' masks (a sliding window counts them too).
    """

    def __init__(self, pad_mask: torch.Tensor, length: int):
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
def generate_ids_fast(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, pad_id: int,
                      temperature: float = 0.0, top_p: float = 1.0, cuda_graphs: bool | None = None,
                      return_logits: bool = False):
    """New token ids [B, n] for a left-padded batch through the static-cache path (see module
    docstring). With `return_logits`, also the float32 logits of every step [B, n, V].
    `cuda_graphs` None: on a GPU, when `hooks_graph_safe(model)`."""
    device = input_device(model)
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
            nxt = choose_tokens(logits, temperature, top_p, top_k)
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
def generate_ids_plain(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, pad_id: int,
                       temperature: float = 0.0, top_p: float = 1.0) -> torch.Tensor:
    """New token ids [B, n] for a left-padded batch through transformers' `model.generate`."""
    device = input_device(model)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         pad_token_id=pad_id, **sampling)
    return out[:, ids.shape[1]:]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[list[Message] | str],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
    progress: bool = False,
    fast: bool | None = None,
) -> list[str]:
    """Completions for chat prompts (message lists, or already-formatted prompt strings).

    Greedy when temperature == 0. Returns the new text of each prompt, special tokens removed,
    in input order. `fast` chooses the static-cache path (None: on a GPU, where supported; see
    the module docstring); False is transformers' `model.generate`.
    """
    if not prompts:
        return []
    if seed is not None:
        torch.manual_seed(seed)
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
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="generate")
    while left:
        batch = left[:batch_size]
        ids, mask = left_pad([encoded[i] for i in batch], pad_id)
        try:
            if fast:
                try:
                    new = generate_ids_fast(model, ids, mask, max_new_tokens, pad_id, temperature, top_p)
                except _Unsupported as err:
                    warnings.warn(f"static-cache path unavailable ({err}); using model.generate", stacklevel=2)
                    fast = False
                    continue
            else:
                new = generate_ids_plain(model, ids, mask, max_new_tokens, pad_id, temperature, top_p)
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
