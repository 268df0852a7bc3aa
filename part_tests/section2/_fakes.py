"""Fixtures and fakes shared by several of Section 2's exercise tests: an error raised inside a forward
pass, random vectors of a given norm, spies on hook registration and on a block's output, blocks made to
return tuples, the tokenizer that prepends <bos> itself, a stand-in capper that shifts a block's output, and the
example conversation."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from part_tests._common import NotImplementedYet, fail, remove_leftover_hooks, tiny
from utils.hooks import _is_ours, count_hooks, get_blocks, hidden_of


class _Boom(RuntimeError):
    """Raised by a test hook to simulate a failure in the middle of a forward pass."""


def _d_model(model) -> int:
    return model.config.get_text_config().hidden_size


def _random_vector(d: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return norm * v / v.norm()


def _bos_adding_tokenizer():
    """tiny-gemma2 with a tokenizer that prepends <bos> itself unless add_special_tokens=False, as the
    real Gemma 2 and Llama 3 tokenizers do (the tiny ones do not): tokenising a rendered chat, which
    already starts with <bos>, with the default add_special_tokens=True then gives two. (model,
    tokenizer), or None where this transformers version cannot switch the tokenizer to that."""
    from utils.models import load_tokenizer

    try:
        model, _ = tiny("tiny-gemma2")
        tok = load_tokenizer("tiny-gemma2")
        tok.add_bos_token = True
        adds = tok("hi")["input_ids"]
        plain = tok("hi", add_special_tokens=False)["input_ids"]
    except Exception:  # pragma: no cover - assets missing or an older tokenizer API
        return None
    if tok.bos_token_id is None or adds != [tok.bos_token_id, *plain]:  # pragma: no cover
        return None
    return model, tok


BOS_WHERE = " (a tokenizer that prepends <bos> itself unless add_special_tokens=False)"


@contextmanager
def _spy_hook_registrations(model):
    """Record the block index of every hook that user code registers on a decoder block while active
    (transformers' own output-capturing hooks, installed on first use of output_hidden_states, are
    not counted)."""
    blocks = get_blocks(model)
    seen = _Registrations()
    for i, block in enumerate(blocks):
        for kind in ("register_forward_hook", "register_forward_pre_hook"):
            original = getattr(block, kind)

            def spy(*args, _i=i, _original=original, _kind=kind, **kwargs):
                hook = args[0] if args else kwargs.get("hook")
                if hook is None or _is_ours(hook):
                    seen.append(_i)
                    if _kind == "register_forward_pre_hook":
                        seen.pre.append(_i)
                return _original(*args, **kwargs)

            object.__setattr__(block, kind, spy)
    try:
        yield seen
    finally:
        for block in blocks:
            for kind in ("register_forward_hook", "register_forward_pre_hook"):
                block.__dict__.pop(kind, None)


class _Registrations(list):
    """Block indices of the hooks registered (a list), and those of forward PRE-hooks (`.pre`)."""

    def __init__(self):
        super().__init__()
        self.pre: list[int] = []


def _check_hooked_blocks(seen: list[int], expected: set[int], name: str) -> None:
    pre = sorted(set(getattr(seen, "pre", [])))
    if pre:
        fail(f"{name} registered a forward PRE-hook on block(s) {pre}: a pre-hook changes a block's INPUT (the previous "
             "block's output); act on block L's output with get_blocks(model)[L].register_forward_hook")
    if seen and set(seen) != expected:
        wrong = sorted(set(seen) - expected)
        off = " (off by one: block L's output is hidden_states[L + 1], and `layer` is the 0-based block index)" if any(
            abs(w - e) == 1 for w in wrong for e in expected) else ""
        fail(f"{name} put hooks on block(s) {sorted(set(seen))}, expected block(s) {sorted(expected)}{off}")


@contextmanager
def _raise_in_forward(model, block: int = 0, pre: bool = True, when=None):
    """Every forward pass fails (a pre-hook on `block` raises _Boom), or only those run while `when()`
    is true; the hook is removed after."""
    def boom(*args, **kwargs):
        if when is None or when():
            raise _Boom("simulated failure inside the forward pass")

    b = get_blocks(model)[block]
    handle = b.register_forward_pre_hook(boom) if pre else b.register_forward_hook(boom)
    try:
        yield
    finally:
        handle.remove()


def _check_hooks_after_exception(model, fn, name: str, block: int = 0) -> None:
    """Run `fn` while every forward pass raises; no hook of the student's may be left after."""
    before = count_hooks(model)
    with _raise_in_forward(model, block):
        try:
            fn()
        except _Boom:
            pass
        except NotImplementedError as err:
            raise NotImplementedYet(f"{name}: not implemented yet") from err
        leftover = count_hooks(model) - before - 1
    if leftover > 0:
        remove_leftover_hooks(model)
        fail(f"{name} left {leftover} hook(s) on the model after an exception inside the forward pass: "
             "remove every hook in a `finally:` block")


class _ShiftContext:
    """A stand-in capper: adds a fixed vector to one block's output while active. Counts its entries;
    entering it again while active (a nested `with`) changes nothing, as for a floor."""

    def __init__(self, model, block: int, vector: torch.Tensor):
        self.model, self.block, self.vector = model, block, vector
        self.entries = 0
        self.depth = 0
        self._handle = None

    @property
    def active(self) -> bool:
        return self.depth > 0

    def _hook(self, module, args, output):
        h = hidden_of(output)
        new = h + self.vector.to(device=h.device, dtype=h.dtype)
        return new if isinstance(output, torch.Tensor) else (new, *output[1:])

    def __enter__(self):
        self.entries += 1
        self.depth += 1
        if self.depth == 1:
            self._handle = get_blocks(self.model)[self.block].register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.depth = max(0, self.depth - 1)
        if self.depth == 0 and self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False

    def close(self) -> None:
        """Force the context closed (after a student's code left it open)."""
        self.depth = 1
        self.__exit__(None, None, None)


def _floats_close(a, b, tol: float = 1e-4) -> bool:
    try:
        return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol * max(1.0, abs(float(y))) for x, y in zip(a, b))
    except (TypeError, ValueError):
        return False


def _rounded(xs, digits: int = 4):
    return [None if x is None else round(float(x), digits) for x in xs]


CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "My code prints nothing. What could be wrong?"},
    {"role": "assistant", "content": "Check that the function is actually called, and that output is not buffered."},
    {"role": "user", "content": "It is called. Do you ever get frustrated with questions like this?"},
    {"role": "assistant", "content": "No, I am an AI assistant. Let us look at where the print happens."},
    {"role": "user", "content": "Thanks, that fixed it!"},
    {"role": "assistant", "content": "Glad to hear it works now."},
]


@contextmanager
def _observe_block(model, layer):
    """Record block `layer`'s output before any later hook (a clone and the object itself), and what
    block `layer + 1` receives (after every hook of block `layer`, with its dtype)."""
    blocks = get_blocks(model)
    seen = {"before": [], "refs": [], "after": [], "after_dtype": []}

    def before(module, args, output):
        h = hidden_of(output)
        seen["refs"].append(h)
        seen["before"].append(h.detach().float().cpu().clone())

    def after(module, args):
        x = hidden_of(args[0])
        seen["after_dtype"].append(x.dtype)
        seen["after"].append(x.detach().float().cpu().clone())

    handles = [blocks[layer].register_forward_hook(before), blocks[layer + 1].register_forward_pre_hook(after)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _tuple_outputs(model, layer):
    """Make block `layer` return a tuple (as older model families do), converted back for the next block."""
    blocks = get_blocks(model)
    received = []

    def to_tuple(module, args, output):
        return (output,) if isinstance(output, torch.Tensor) else output

    def from_tuple(module, args):
        received.append(type(args[0]))
        x = args[0]
        return (x[0] if isinstance(x, tuple) else x, *args[1:])

    handles = [blocks[layer].register_forward_hook(to_tuple), blocks[layer + 1].register_forward_pre_hook(from_tuple)]
    try:
        yield received
    finally:
        for h in handles:
            h.remove()
