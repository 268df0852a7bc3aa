"""Sampling that does not depend on the batch: one seed per prompt, and Gumbel noise that is a hash.

Each prompt gets its own seed (`prompt_seeds`: from (seed, i) for one int, one per prompt for a
list, drawn from torch's global generator for None). A token is sampled as the arg-max of its
filtered logits (temperature, then top-k, then top-p) plus Gumbel noise that is a hash of (the
prompt's seed, the step, the token id) (`gumbel_noise`, `choose_tokens`): the Gumbel-max trick, so
it is exactly a draw from the filtered softmax, and a prompt's sample does not depend on which
batch it lands in, on the batch size, or on the decoding path (`utils.decoding`) that ran it.
Greedy decoding (temperature 0) takes the arg-max of float32 logits.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


def eos_token_ids(model) -> list[int]:
    """The ids that end a generation (the model's generation_config.eos_token_id, as a list)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def default_top_k(model) -> int | None:
    """The top-k a sample is drawn from: the model's generation_config.top_k (transformers' default 50)."""
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


class SeededSampler:
    """A logits processor for `model.generate` that samples as `choose_tokens` does (per-row seeds,
    the step counted from the prompt) and leaves only the chosen token open, so that greedy
    decoding emits exactly that sample."""

    def __init__(self, prompt_len: int, temperature: float, top_p: float, top_k: int | None, seeds: Int[Tensor, "batch"]):
        self.prompt_len, self.temperature, self.top_p, self.top_k, self.seeds = prompt_len, temperature, top_p, top_k, seeds

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        tok = choose_tokens(scores, self.temperature, self.top_p, self.top_k, seeds=self.seeds, step=step)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tok[:, None], 0.0)
