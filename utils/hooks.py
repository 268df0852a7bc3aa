"""Block access and forward hooks, with one layer convention for the whole course.

- `layer` is a 0-based index into the decoder block list; "activation at layer L" is the output of
  block L. HF's hidden_states[L + 1] is block L's output (but hidden_states[-1] has the final norm
  applied, so we never read activations from it).
- A block returns a tensor in transformers >= 5 and a tuple in some older families. Hooks here
  accept both and return the container type they received: `out[0]` on a tensor would silently
  take batch row 0.
- Hooks are always removed in `finally`, so an exception never leaves one behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor


def get_blocks(model) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM (Qwen2/2.5/3, Gemma 2/3 incl. multimodal Gemma 3, Llama)."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        decoder = None
    for candidate in (decoder, getattr(decoder, "language_model", None), getattr(model, "model", None)):
        layers = getattr(candidate, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
        inner = getattr(candidate, "language_model", None)
        if inner is not None and isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
            return inner.layers
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__} (expected model.get_decoder().layers)")


def check_layer(model, layer: int) -> int:
    """`layer` as a block index of `model`: an int in [0, n_layers) (IndexError otherwise); a bool
    or a float is refused with a ValueError (`layer=True` is not block 1)."""
    from utils.validate import check_index

    return check_index(layer, "layer", len(get_blocks(model)))


def hidden_of(output) -> Float[Tensor, "batch seq d_model"]:
    """The hidden-state tensor of a block output (tensor, or tuple whose first item is it)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def with_hidden(output, hidden: Float[Tensor, "batch seq d_model"]):
    """`output` with its hidden states replaced, in the container type it came in."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


@contextmanager
def hooks(model, fns: dict[int, Callable]) -> Iterator[None]:
    """Attach `fn(module, args, output)` forward hooks to blocks {layer: fn}; always removed."""
    blocks = get_blocks(model)
    handles = []
    try:
        for layer, fn in fns.items():
            handles.append(blocks[check_layer(model, layer)].register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the layers we need have run."""


def _is_ours(hook) -> bool:
    # transformers >= 5 installs its own persistent output-capturing hooks (for output_hidden_states);
    # they are part of the model, not something a course function left behind.
    fn = getattr(hook, "func", hook)
    return not (getattr(fn, "__module__", "") or "").startswith("transformers")


def count_hooks(model) -> int:
    """Forward hooks and pre-hooks attached anywhere in the model by user code (tests use this to
    catch hooks left behind)."""
    return sum(
        _is_ours(h)
        for m in model.modules()
        for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    )
