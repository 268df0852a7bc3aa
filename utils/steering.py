"""Editing the residual stream during a forward pass: steering along a vector.

    with Steerer(model, vector, coeff=4.0, layer=19, positions="response"):
        texts = generate(model, tokenizer, prompts)

Position modes (the course's steering convention) -- `coeff * vector` is added to block `layer`'s output at:
- "all": every position of every forward pass;
- "prompt": every position of the prefill only (forward passes with one new token are skipped);
- "response": the last position of every forward pass (the final prompt token during prefill,
  then each new token).
With left-padded batches, pad positions are never steered: a pre-hook on the model reads the
attention mask of each forward call. The hidden state is never modified in place.

The hook is written so that a CUDA graph can record it (`utils.decoding` replays one decoding
step as a graph): the delta `coeff * vector` is put on the device once, in the hidden states'
dtype, and reused; the pad mask is a tensor, and a forward with no mask (a decoding step, where
every row's new token is real) adds the delta to every row with no branch on tensor values.
Hooks that can be recorded this way say so with `graph_safe` (see `is_graph_safe`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from utils.hooks import check_layer, get_blocks, hidden_of, with_hidden
from utils.validate import check_number, check_vector, model_d_model

POSITIONS = ("all", "prompt", "response")


def graph_safe(fn):
    """Mark a hook function as safe to record in a CUDA graph: it only runs tensor operations of
    fixed shapes on tensors already on the device (no host copies, no `.item()`, no Python branch
    on tensor values), and does the same thing on every decoding step."""
    fn.graph_safe = True
    return fn


def is_graph_safe(hook) -> bool:
    """Whether `hook` (a function or bound method) is marked with `graph_safe`."""
    return bool(getattr(hook, "graph_safe", False) or getattr(getattr(hook, "__func__", None), "graph_safe", False))


class Steerer:
    """Context manager that adds `coeff * vector` to one block's output (see module docstring)."""

    def __init__(self, model, vector: Float[Tensor, "d_model"], coeff: float = 1.0, layer: int = 0,
                 positions: str = "all"):
        if not isinstance(positions, str) or positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        vector = check_vector(vector, "vector", model_d_model(model))  # [d_model], float, finite
        self.model, self.layer, self.positions = model, check_layer(model, layer), positions
        self.coeff = check_number(coeff, "coeff")
        self.vector = vector.detach()
        self._mask: torch.Tensor | None = None
        self._delta_key: tuple | None = None
        self._delta: torch.Tensor | None = None
        self._handles: list = []

    def delta(self, like: Float[Tensor, "batch seq d_model"]) -> Float[Tensor, "d_model"]:
        """`coeff * vector` on `like`'s device and dtype, computed once and reused."""
        key = (like.device, like.dtype, self.coeff, id(self.vector))
        if self._delta_key != key:
            self._delta = (self.coeff * self.vector.to(device=like.device, dtype=torch.float32)).to(like.dtype)
            self._delta_key = key
        return self._delta  # type: ignore[return-value]

    @graph_safe
    def _capture_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    @graph_safe
    def _hook(self, module, args, output):
        h = hidden_of(output)
        B, T = h.shape[0], h.shape[1]
        if self.positions == "prompt" and T == 1:
            return output
        add = self.delta(h)
        real = None  # [B, T', 1] 1 for real tokens, 0 for pads; None: all real
        if self._mask is not None and self._mask.shape[0] == B:
            real = self._mask[:, -T:].to(device=h.device, dtype=h.dtype).unsqueeze(-1)
        if self.positions == "response":
            new = h.clone()
            last = add if real is None else add * real[:, -1]
            new[:, -1, :] += last
        elif real is None:
            new = h + add
        else:
            new = torch.addcmul(h, real, add)  # h + real * add
        return with_hidden(output, new)

    def __enter__(self):
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._capture_mask, with_kwargs=True))
            self._handles.append(get_blocks(self.model)[self.layer].register_forward_hook(self._hook))
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._mask = None

    def __exit__(self, *exc):
        self.remove()
        return False
