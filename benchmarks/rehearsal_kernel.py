"""What `rehearse_course.py` installs inside the process that runs a section (a Jupyter kernel, or
its own process with `--mode exec`). Nothing here is part of the course.

- **Random weights for stand-in folders.** A model folder (or hub-cache snapshot) holding a
  `rehearsal.json` has a config and a tokenizer but no weights: `from_pretrained` on it builds
  the architecture from its config with random weights, straight on the GPU in the asked dtype
  (seconds, where writing and reading 15-65 GB of weights would take minutes). Every other name
  loads as usual. The output-embedding rows past the tokenizer's vocabulary are zeroed, so the
  random model writes tokens its (small) tokenizer can decode; with tied embeddings the final
  norm's scale gets random signs, so the model does not just repeat its last input token.
- **A smoke-test knob.** `REHEARSAL_MAX_NEW_TOKENS` caps every `utils.generation.generate` call's
  new tokens (for checking the plumbing on a CPU in minutes; never set for recorded runs).
- **A memory cap.** `REHEARSAL_MEMORY_CAP_GIB` caps this process's GPU memory with
  `torch.cuda.set_per_process_memory_fraction`, as a 24 GB card would.
- **Timers.** Wall clocks, with a CUDA synchronisation at both ends, around the course's entry
  points, as the union of the intervals over threads (nested and concurrent calls count once):
  `generation` (utils.generation.generate / generate_conversations, transformers' `generate`),
  `extraction` (utils.activations.span_means, and any other forward pass of the decoder outside
  generation: the exercises' own extraction loops), `training` (Section 5: forward passes with
  gradients, backward passes and AdamW steps), `judging` (every utils.api.ChatClient call),
  `model_load`. After every cell the totals, the peak GPU memory and the cell count are written to
  `REHEARSAL_STATS` (JSON), so a section that fails or is stopped still leaves its figures.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import torch

MARKER = "rehearsal.json"
_lock = threading.Lock()
_active: dict[str, int] = {}
_started: dict[str, float] = {}
TOTALS: dict[str, float] = {}
COUNTS: dict[str, int] = {}
CELLS = {"n": 0}


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


GPU_CATEGORIES = ("generation", "extraction", "training", "model_load")


def enter(category: str) -> bool:
    """Open an interval of `category`; True if this call opened the outermost one. GPU categories
    synchronise first, so that earlier GPU work is not counted."""
    if category in GPU_CATEGORIES:
        _sync()
    with _lock:
        n = _active.get(category, 0)
        _active[category] = n + 1
        COUNTS[category] = COUNTS.get(category, 0) + 1
        if n == 0:
            _started[category] = time.perf_counter()
        return n == 0


def leave(category: str) -> None:
    """Close an interval; the category's total grows when its last open interval closes."""
    if category in GPU_CATEGORIES:
        _sync()  # the GPU work of this call is done before the clock is read
    with _lock:
        _active[category] -= 1
        if _active[category] == 0:
            TOTALS[category] = TOTALS.get(category, 0.0) + time.perf_counter() - _started.pop(category)


def active(category: str) -> bool:
    return _active.get(category, 0) > 0


def timed(category: str, fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enter(category)
        try:
            return fn(*args, **kwargs)
        finally:
            leave(category)

    wrapper.__rehearsal_timed__ = True
    return wrapper


def _patch(owner, name: str, category: str) -> None:
    fn = getattr(owner, name)
    if getattr(fn, "__rehearsal_timed__", False):
        return
    setattr(owner, name, timed(category, fn))


# ------------------------------------------------------------------------------------- stand-in models


def marker_folder(name) -> Path | None:
    """The folder of a stand-in model (`rehearsal.json` inside), from a path or a hub-cache id."""
    path = Path(str(name))
    if path.is_dir():
        return path if (path / MARKER).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(name), MARKER)
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def build_random(name, folder: Path, dtype=None, attn_implementation=None):
    """The architecture of `folder`'s config with random weights, on the GPU when there is one."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    info = json.loads((folder / MARKER).read_text())
    cfg = AutoConfig.from_pretrained(str(folder))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None or dtype == "auto":
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(info.get("seed", 0)))
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kwargs)
    finally:
        torch.random.set_rng_state(state)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(folder)))  # ids past it decode to nothing
    with torch.no_grad():
        out = model.get_output_embeddings().weight
        if out.shape[0] > vocab:
            out[vocab:].zero_()  # logit 0 there; top-k sampling and arg-max pick the tokenizer's tokens
        if out is model.get_input_embeddings().weight:
            # Tied embeddings (Gemma 2): a random model's last hidden state is mostly its input
            # token's embedding, so the head's largest logit is that token, and the model repeats
            # the prompt's last token ("\n") forever. Random signs on the final norm's scale break
            # that self-match and leave the logits' size alone.
            norm = model.get_decoder().norm
            signs = torch.randint(0, 2, norm.weight.shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1
            offset = 1.0 if "gemma" in cfg.model_type else 0.0  # Gemma's RMSNorm scales by (1 + weight)
            norm.weight.copy_((signs - offset).to(norm.weight))
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.config._name_or_path = str(name)
    model.eval()
    return model


def _install_loader() -> None:
    import transformers

    auto = transformers.AutoModelForCausalLM
    if getattr(auto.from_pretrained, "__rehearsal_timed__", False):
        return
    original = auto.from_pretrained

    def from_pretrained(name, *args, **kwargs):
        enter("model_load")
        try:
            folder = marker_folder(name)
            if folder is None:
                model = original(name, *args, **kwargs)
            else:
                dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
                model = build_random(name, folder, dtype, kwargs.get("attn_implementation"))
            _time_decoder_forwards(model)
            return model
        finally:
            leave("model_load")

    from_pretrained.__rehearsal_timed__ = True
    auto.from_pretrained = staticmethod(from_pretrained)


def _time_decoder_forwards(model) -> None:
    """Count forward passes of the decoder outside generation and extraction as extraction (the
    exercises' own loops). The decoder's `forward` is wrapped on the instance, not hooked: hooks
    would show up in the course's checks for hooks left behind."""
    try:
        decoder = model.get_decoder()
    except Exception:
        return
    original = decoder.forward

    def forward(*args, **kwargs):
        if active("generation") or active("extraction") or active("training"):
            return original(*args, **kwargs)
        category = "training" if torch.is_grad_enabled() else "extraction"  # Section 5's finetuning forwards
        enter(category)
        try:
            return original(*args, **kwargs)
        finally:
            leave(category)

    decoder.forward = forward


# ------------------------------------------------------------------------------------- stats


def stats() -> dict:
    out = {"seconds": {k: round(v, 3) for k, v in sorted(TOTALS.items())}, "calls": dict(sorted(COUNTS.items())),
           "cells": CELLS["n"]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        out["device"] = torch.cuda.get_device_name()
    cap = os.environ.get("REHEARSAL_MEMORY_CAP_GIB")
    if cap:
        out["memory_cap_gib"] = float(cap)
    return out


def write_stats() -> None:
    path = os.environ.get("REHEARSAL_STATS")
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(stats(), indent=1))
        tmp.replace(path)


def install(ipython=None) -> None:
    """Install the loader, the memory cap, the timers and (in a kernel) the per-cell stats writer."""
    cap = float(os.environ.get("REHEARSAL_MEMORY_CAP_GIB") or 0)
    if cap and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total), 0)
    _install_loader()
    import transformers
    from transformers.generation.utils import GenerationMixin

    import utils.activations as activations
    import utils.api as api
    import utils.generation as generation

    clamp = int(os.environ.get("REHEARSAL_MAX_NEW_TOKENS") or 0)
    if clamp and not getattr(generation.generate, "__rehearsal_timed__", False):
        plain_generate = generation.generate

        def clamped(model, tokenizer, prompts, max_new_tokens=256, *args, **kwargs):
            return plain_generate(model, tokenizer, prompts, min(max_new_tokens, clamp), *args, **kwargs)

        generation.generate = clamped
    _patch(generation, "generate", "generation")
    _patch(generation, "generate_conversations", "generation")
    _patch(GenerationMixin, "generate", "generation")
    _patch(activations, "span_means", "extraction")
    _patch(torch.Tensor, "backward", "training")  # Section 5: backward passes and optimiser steps
    _patch(torch.optim.AdamW, "step", "training")
    _patch(api.ChatClient, "chat", "judging")
    _patch(api.ChatClient, "chat_many", "judging")
    del transformers
    if ipython is not None:
        def after_cell(result=None):
            CELLS["n"] += 1
            write_stats()

        ipython.events.register("post_run_cell", after_cell)
