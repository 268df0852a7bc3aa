"""Local generation: batched, left-padded, length-sorted.

`generate` turns chat prompts into completions: it encodes and left-pads them, sorts them by
length, runs them in batches through one of the two decoding paths of `utils.decoding` (the plain
`model.generate`, or the static-cache path with a CUDA graph, the default on a GPU), and decodes
the new tokens. Steering composes with it: wrap a call in `utils.steering.Steerer(...)`.

**Seeded sampling is per prompt** (`utils.sampling`). Each prompt gets its own seed
(`generate(..., seed=s)` gives prompt i the seed derived from (s, i); a list gives one seed per
prompt; None draws them from torch's global generator), so a prompt's sample does not depend on
which batch it lands in, on the batch size, or on the path that ran it.

**Memory.** On a GPU the batch size is capped at what fits in the memory this process may still
use (`utils.models.available_memory`, which respects `torch.cuda.set_per_process_memory_fraction`),
and a CUDA out-of-memory error halves the batch and continues.

**Conversations.** `generate_conversations` lets the model write several conversations turn by
turn, one batch per turn.

**Many threads, one model.** `GenerationQueue` serves requests that several threads submit at
once (say, from a `ThreadPoolExecutor`) by gathering them and generating them in batches.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from utils.activations import activation_bytes_per_token, is_oom
from utils.chat import Message, format_prompt
from utils.decoding import Unsupported, fast_path_supported, generate_ids_fast, generate_ids_plain
from utils.models import available_memory, input_device
from utils.sampling import prompt_seeds

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
                except Unsupported as err:
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
