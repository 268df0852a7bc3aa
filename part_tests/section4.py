"""Tests for Section 4 — Steering with persona vectors. Each takes the student's object first.

Expected values come from the course's utils (utils.steering.Steerer, utils.generation.generate,
utils.chat.format_chat) or from small computations here, never from the solutions. Where a test
can tell candidate mistakes apart, it computes what each would have produced and names the one
that matches.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import tempfile
import threading
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    expect_value_error,
    fail,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
    tiny,
    tiny_variant,
    using,
)
from part_tests.shapes import expect_tensor

TINY_LAYER = 2  # tiny-qwen2 has 4 blocks: blocks 1 and 3 both exist around it (and the notebook's LAYER is 2 there)


def _layer_for(model) -> int:
    from utils.hooks import get_blocks

    n = len(get_blocks(model))
    if n < 3:
        raise ValueError("these tests need a model with at least 3 blocks")
    if getattr(model.config, "_name_or_path", "") == "tiny-qwen2":
        return TINY_LAYER
    from utils.models import layer_settings

    return min(max(1, layer_settings(model).steer_layer), n - 2)


def _d_model(model) -> int:
    return model.config.get_text_config().hidden_size


def _vector(d: int, seed: int, norm: float) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def _not_implemented(name: str, err: BaseException) -> NotImplementedYet:
    return NotImplementedYet(f"{name}: not implemented yet -- replace every `raise NotImplementedError` in the cell above with your code.")


@contextmanager
def _clean_afterwards(model, own: bool):
    """Leave the shared tiny model without hooks for the next test, whatever the student's code did
    (a model the student passed in is left alone)."""
    try:
        yield
    finally:
        if not own:
            remove_leftover_hooks(model)


# ======================================================================================
# Exercise 4.1 -- ActivationSteerer
# ======================================================================================
class _Extra:
    """A marker object standing in for the extra items of a tuple block output."""


_EXTRA = _Extra()


class _ToyConfig:
    def __init__(self, d: int, n: int):
        self.hidden_size, self.num_hidden_layers, self._name_or_path = d, n, "toy-tuple-model"

    def get_text_config(self, *args, **kwargs):
        return self


class _TupleBlock(torch.nn.Module):
    """A block that returns a tuple (hidden, extra), as some older model families do."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)

    def forward(self, h):
        return (h + torch.tanh(self.lin(h)), _EXTRA)


class _ToyDecoder(torch.nn.Module):
    def __init__(self, d: int, n: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(_TupleBlock(d) for _ in range(n))


class _ToyTupleModel(torch.nn.Module):
    def __init__(self, d: int = 16, n: int = 4):
        super().__init__()
        g = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            self.model = _ToyDecoder(d, n)
        finally:
            torch.random.set_rng_state(g)
        self.config = _ToyConfig(d, n)

    def get_decoder(self):
        return self.model

    def forward(self, h):
        for block in self.model.layers:
            h = block(h)[0]
        return h


def _copy_hidden(out):
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0].detach().clone()
    return None


def _container(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, tuple):
        return f"a tuple of {len(out)} item(s)"
    return f"a {type(out).__name__}"


def _record_forwards(model, run_forwards, layer: int, steerer=None, name: str = "ActivationSteerer"):
    """Run `run_forwards()` (several forward passes), recording per forward pass: the output of
    every block as later hooks see it, and at block `layer` the raw output before any other hook
    (a reference and a copy) and after all hooks."""
    from utils.hooks import get_blocks

    blocks = get_blocks(model)
    forwards: list[dict] = []
    current: dict = {}

    def pre_hook(module, args, out):  # prepended after the student's hook: runs before it
        current["pre_ref"] = out if isinstance(out, torch.Tensor) else out[0]
        current["pre_copy"] = _copy_hidden(out)
        current["pre_type"] = type(out)

    def post_hook(i):
        def hook(module, args, out):
            current.setdefault("post", {})[i] = _copy_hidden(out)
            if i == layer:
                current["post_raw"] = out
            return None

        return hook

    def end_forward():
        forwards.append(dict(current))
        current.clear()

    handles = []
    try:
        ctx = steerer if steerer is not None else contextlib.nullcontext()
        with ctx:
            # prepended once the steerer is open: runs before its hook, even one registered with prepend=True
            handles.append(blocks[layer].register_forward_hook(pre_hook, prepend=True))
            handles += [blocks[i].register_forward_hook(post_hook(i)) for i in range(len(blocks))]
            try:
                with torch.no_grad():
                    run_forwards(end_forward)
            except NotImplementedError:
                raise
            except Exception as err:
                fail(f"{name}: the forward pass failed with your steerer attached ({type(err).__name__}: {err})."
                     f"{_output_hint(current)} Block outputs are a plain tensor in transformers >= 5: `output[0]` on it"
                     " takes batch row 0; use hidden_of(output) and with_hidden(output, new_hidden).")
            finally:
                for h in handles:
                    h.remove()
                handles.clear()
    finally:
        for h in handles:
            h.remove()
    return forwards


def _output_hint(current: dict) -> str:
    """What the student's hook returned, where that explains a failed forward pass."""
    raw = current.get("post_raw")
    pre = current.get("pre_copy")
    if raw is None or pre is None:
        return ""
    new = _copy_hidden(raw)
    if type(raw) is not current.get("pre_type") or new is None or new.shape != pre.shape:
        return (f" Your hook turned the block output ({current['pre_type'].__name__}) into {_container(raw)}:"
                " return the same container type with the same shape.")
    if new.dtype != pre.dtype:
        return (f" Your hook returned a {new.dtype} hidden state into a {pre.dtype} model: the steering vector is"
                " float32, so `h + coeff * vector` is promoted to float32. Cast the change to the hidden state's dtype:"
                " (coeff * vector).to(h.dtype).")
    return ""


def _classify(delta: torch.Tensor, target: torch.Tensor, tol: float) -> torch.Tensor:
    """Per position of delta [B, T, d]: 1 = changed by exactly target, 0 = unchanged, -1 = other."""
    steered = (delta - target).abs().amax(-1) <= tol
    untouched = delta.abs().amax(-1) <= tol
    out = torch.full(delta.shape[:-1], -1)
    out[untouched] = 0
    out[steered] = 1
    return out


def _qwen_forwards(model, ids: torch.Tensor, decode_tokens: list[torch.Tensor], second_ids: torch.Tensor):
    """A prefill, decoding steps, then a second prefill (a new prompt in the same `with` block)."""
    def run(end_forward):
        out = model(input_ids=ids, use_cache=True)
        end_forward()
        for tok in decode_tokens:
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            end_forward()
        model(input_ids=second_ids, use_cache=True)
        end_forward()

    return run


def _check_first_steered_block(mode, base, steered, layer, n_blocks, tol) -> None:
    """The first block whose output differs from the unsteered run (in any forward pass) must be `layer`."""
    changed = [i for i in range(n_blocks)
               if any(s.get("post", {}).get(i) is None or not close(s["post"][i], b["post"][i], rtol=0, atol=tol)
                      for b, s in zip(base, steered))]
    if not changed:
        fail(f"ActivationSteerer (positions={mode!r}) changed nothing: register the hook in __enter__ on"
             " get_blocks(model)[layer] and return the modified output from it")
    first = changed[0]
    if first != layer:
        where = "before" if first < layer else "after"
        extra = (" -- off by one: `layer` is a 0-based block index and block L's output is HF's hidden_states[L + 1]"
                 if abs(first - layer) == 1 else "")
        fail(f"ActivationSteerer(layer={layer}) changed the output of block {first}, {where} the block it should"
             f" steer (get_blocks(model)[{layer}]){extra}")


def _tiny_ids(model, shape, seed: int) -> torch.Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    device = model.get_input_embeddings().weight.device
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed)).to(device)


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs")


@contextmanager
def _restore_hooks(model):
    """Put back the hooks the model's modules had on entry that are gone on exit (a steerer that clears a block's hook
    dicts would also remove transformers' output-capturing hooks from the shared tiny model, breaking later tests)."""
    saved = [(m, name, dict(getattr(m, name))) for m in model.modules() for name in _HOOK_DICTS if getattr(m, name, None)]
    try:
        yield
    finally:
        for m, name, hooks in saved:
            current = getattr(m, name)
            for key, hook in hooks.items():
                if key not in current:
                    current[key] = hook


def _check_steerer_lifecycle(ActivationSteerer, model, layer: int) -> None:
    """Constructing registers nothing; leaving the `with` block removes the steerer's hook and no
    other; `with ... as s` gives the steerer; an exception inside the block propagates and leaves no
    hook behind."""
    from utils.hooks import count_hooks, get_blocks

    ids = _tiny_ids(model, (2, 5), 11)

    def run(end_forward):
        model(input_ids=ids)
        end_forward()

    n_blocks = len(get_blocks(model))
    base = _record_forwards(model, run, layer)
    before = count_hooks(model)
    steerer = call(ActivationSteerer, model, _vector(_d_model(model), 1, 3.0), coeff=2.0, layer=layer, positions="all",
                   name="ActivationSteerer")
    registered = count_hooks(model) - before
    idle = _record_forwards(model, run, layer)
    moved = [i for i in range(n_blocks) if not close(idle[0]["post"][i], base[0]["post"][i], rtol=0, atol=1e-6)]
    if registered > 0 or moved:
        remove_leftover_hooks(model)
        what = f"registered {registered} hook(s)" if registered > 0 else f"changed block {moved[0]}'s output"
        fail(f"ActivationSteerer {what} as soon as it was constructed, before the `with` block: register the hook in"
             " __enter__, not in __init__ (a steerer that is built but not entered must leave the model alone)")

    # another hook on the same block (a recording hook, an outer steerer) must survive the `with` block
    seen: list = []
    block = get_blocks(model)[layer]
    with _restore_hooks(model):  # hooks that were there (transformers' own) are put back if the steerer removed them
        theirs = block.register_forward_hook(lambda m, a, out: seen.append(1))
        try:
            with call(ActivationSteerer, model, _vector(_d_model(model), 2, 3.0), coeff=1.0, layer=layer, positions="all",
                      name="ActivationSteerer"):
                pass
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            theirs.remove()
    check(bool(seen),
          f"ActivationSteerer.__exit__ removed a hook it did not register (another hook on block {layer} was gone"
          " after the `with` block): remove only your own hook, with the handle register_forward_hook returned"
          " (handle.remove()), never with block._forward_hooks.clear()")

    class _Boom(Exception):
        pass

    entered: dict = {}
    try:
        with steerer as got:
            entered["as"] = got
            raise _Boom()
    except _Boom:
        pass
    else:
        fail("ActivationSteerer swallowed an exception raised inside the `with` block: __exit__ must return False (or None)")
    no_hooks_left(model, "ActivationSteerer (after an exception inside the `with` block)")
    check(entered.get("as") is steerer,
          "ActivationSteerer.__enter__ should return self, so that `with ActivationSteerer(...) as s:` gives the steerer;"
          f" it returned {type(entered.get('as')).__name__}")


def _other_change(delta, target, vector, pre, tol) -> str | None:
    """Name the change a steerer made instead of coeff * vector, where it matches a likely mistake."""
    if (_classify(delta, target - pre, tol) == 1).any():
        return "the hidden state was replaced by coeff * vector (h[...] = add): add it, h[...] + coeff * vector"
    for wrong, why in [(-target, "the change is -coeff * vector: the sign is flipped, add coeff * vector"),
                       (vector.float().cpu(), "the change is vector, not coeff * vector: the coeff is ignored"),
                       (2 * target, "the change is 2 * coeff * vector: the hook runs twice (registered twice?)"),
                       (target / vector.norm(), "the change is coeff * vector / ‖vector‖: the vector was normalised;"
                                                " the coefficient multiplies the raw vector")]:
        if (_classify(delta, wrong, tol) == 1).any():
            return why
    return None


def _check_steerer_modes(ActivationSteerer, model, layer: int) -> None:
    from utils.hooks import get_blocks

    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    ids = _tiny_ids(model, (2, 6), 7)
    decode = [_tiny_ids(model, (2, 1), 8 + i) for i in range(2)]
    run = _qwen_forwards(model, ids, decode, _tiny_ids(model, (2, 4), 10))
    device = ids.device
    vector = _vector(d, 0, 3.0).to(device)
    vector_before = vector.clone()
    coeff = 2.5
    base = _record_forwards(model, run, layer)
    target = (coeff * vector).float().cpu()
    scale = max(1.0, float(max(f["post"][layer].abs().max() for f in base)))
    tol = 1e-4 * scale + 1e-4

    expected = {
        "all": (lambda T: torch.ones(2, T, dtype=torch.long), True),
        "prompt": (lambda T: torch.ones(2, T, dtype=torch.long), False),
        "response": (lambda T: torch.cat([torch.zeros(2, T - 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long)], 1), True),
    }
    for mode in ("all", "response", "prompt"):
        steerer = call(ActivationSteerer, model, vector, coeff=coeff, layer=layer, positions=mode, name="ActivationSteerer")
        steered = _record_forwards(model, run, layer, steerer)
        no_hooks_left(model, "ActivationSteerer")
        check(torch.equal(vector, vector_before),
              "ActivationSteerer modified the vector it was given (e.g. vector.mul_(coeff)): leave the caller's tensor unchanged")
        _check_first_steered_block(mode, base, steered, layer, n_blocks, tol)
        for k, (b, s) in enumerate(zip(base, steered)):
            raw = s.get("post_raw")
            check(raw is not None, f"ActivationSteerer (positions={mode!r}): block {layer} produced no output in the steered run")
            check(isinstance(raw, torch.Tensor),
                  f"ActivationSteerer (positions={mode!r}): the block output is a tensor but your hook returned {_container(raw)}:"
                  " return the same container type you received (with_hidden does this)")
            check(tuple(raw.shape) == tuple(s["pre_copy"].shape),
                  f"ActivationSteerer (positions={mode!r}): your hook changed the block output's shape from "
                  f"{tuple(s['pre_copy'].shape)} to {tuple(raw.shape)}: `output[0]` on a tensor output takes batch row 0"
                  " -- use hidden_of(output)")
            check(torch.equal(s["pre_ref"], s["pre_copy"]),
                  f"ActivationSteerer (positions={mode!r}) modified the block's output in place (e.g. `h += ...` or"
                  " `h[:, -1] += ...`): other hooks and the rest of the model hold that tensor. Clone first, or return h + delta")
            if k == 0 and not close(s["pre_copy"], b["post"][layer], rtol=0, atol=tol):
                # the first forward: block `layer` itself computed something else, so its input was changed
                fail(f"ActivationSteerer (positions={mode!r}): block {layer}'s own output changed before any forward hook"
                     f" ran, so the steerer changed the block's *input* (a forward pre-hook?): add coeff * vector to"
                     f" block {layer}'s output, with register_forward_hook")
            delta = (s["post"][layer] - s["pre_copy"]).float().cpu()
            T = delta.shape[1]
            got = _classify(delta, target, tol)
            if (got == -1).any():
                why = _other_change(delta, target, vector, s["pre_copy"].float().cpu(), tol)
                if why:
                    fail(f"ActivationSteerer (positions={mode!r}): {why}")
                err = float((delta - target).abs().amax(-1)[got == -1].max())
                fail(f"ActivationSteerer (positions={mode!r}): block {layer}'s output changed by something other than"
                     f" coeff * vector (or 0) at {int((got == -1).sum())} position(s) of a forward over {T} token(s)"
                     f" (largest difference from coeff * vector: {err:.3g}; ‖coeff * vector‖ = {float(target.norm()):.3g})")
            want_prefill, steer_decode = expected[mode]
            if T > 1:  # a prefill
                want = want_prefill(T)
                if not torch.equal(got, want):
                    if k > 0:  # the first prefill was right, the second (same `with` block) is not
                        fail(f"ActivationSteerer(positions={mode!r}) steered a second prompt inside the same `with` block"
                             " differently from the first: tell prefill from decoding by the forward's seq_len, not by"
                             " a flag set on the first forward")
                    if mode == "response" and (got[:, :-1] == 1).any():
                        fail("ActivationSteerer(positions='response') steered prompt positions other than the last one:"
                             " during prefill only the last position (h[:, -1]) is steered")
                    if mode == "response":
                        fail("ActivationSteerer(positions='response') must steer the last prompt position during prefill"
                             " (the position that produces the first response token)")
                    fail(f"ActivationSteerer(positions={mode!r}) must steer every prompt position during prefill;"
                         f" it steered {int((got == 1).sum())} of {got.numel()}")
            else:
                if steer_decode and not bool((got == 1).all()):
                    fail(f"ActivationSteerer(positions={mode!r}) did not steer a decoding step (a forward with seq_len 1):"
                         f" {mode!r} mode steers each new token")
                if not steer_decode and bool((got != 0).any()):
                    fail("ActivationSteerer(positions='prompt') steered a decoding step (a forward with seq_len 1):"
                         " 'prompt' mode steers the prefill only and leaves forwards with one new token alone")


def _check_steerer_tuple(ActivationSteerer) -> None:
    model = _ToyTupleModel()
    layer, coeff = 2, -1.5
    vector = _vector(model.config.hidden_size, 3, 2.0)
    h0 = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(1))

    def run(end_forward):
        model(h0)
        end_forward()

    for mode, want_positions in (("all", slice(None)), ("response", slice(-1, None))):
        steerer = call(ActivationSteerer, model, vector, coeff=coeff, layer=layer, positions=mode, name="ActivationSteerer")
        (rec,) = _record_forwards(model, run, layer, steerer)
        no_hooks_left(model, "ActivationSteerer")
        raw = rec.get("post_raw")
        check(isinstance(raw, tuple),
              f"ActivationSteerer: for a block that returns a tuple (hidden, ...) your hook returned {_container(raw)}:"
              " return the same container type, (new_hidden, *output[1:]) (with_hidden does this)")
        check(len(raw) == 2 and isinstance(raw[0], torch.Tensor) and raw[1] is _EXTRA,
              "ActivationSteerer: for a tuple block output, keep the other items as they were: return"
              f" (new_hidden, *output[1:]); got {_container(raw)} with items "
              f"{[type(x).__name__ for x in raw]}")
        check(torch.equal(rec["pre_ref"], rec["pre_copy"]),
              "ActivationSteerer modified the block's output in place (tuple output): clone first, or return h + delta")
        delta = raw[0].detach() - rec["pre_copy"]
        want = torch.zeros_like(delta)
        want[:, want_positions] = coeff * vector
        check(close(delta, want, atol=1e-5),
              f"ActivationSteerer (positions={mode!r}) on a tuple block output: the hidden state (output[0]) did not change"
              " by coeff * vector at the right positions")


def _check_steerer_half(ActivationSteerer, layer: int) -> None:
    """On a bfloat16 model with a float32 vector (as on a GPU): the hidden state stays bfloat16 and
    changes by coeff * vector (to bfloat16 rounding)."""
    model, _ = tiny("tiny-qwen2", torch.bfloat16)
    remove_leftover_hooks(model)
    ids = _tiny_ids(model, (2, 5), 12)
    vector = _vector(_d_model(model), 4, 3.0)  # float32
    coeff = 2.0

    def run(end_forward):
        model(input_ids=ids)
        end_forward()

    try:
        for mode in ("all", "response"):
            steerer = call(ActivationSteerer, model, vector, coeff=coeff, layer=layer, positions=mode, name="ActivationSteerer")
            (rec,) = _record_forwards(model, run, layer, steerer, name="ActivationSteerer (on a bfloat16 model)")
            no_hooks_left(model, "ActivationSteerer")
            new = _copy_hidden(rec.get("post_raw"))
            check(new is not None and new.dtype == torch.bfloat16,
                  f"ActivationSteerer (positions={mode!r}) on a bfloat16 model returned a"
                  f" {getattr(new, 'dtype', None)} hidden state: cast the change to the hidden state's dtype,"
                  " (coeff * vector).to(h.dtype), so the model stays in bfloat16")
            pre = rec["pre_copy"].float()
            delta = new.float() - pre
            want = torch.zeros_like(delta)
            want[:, slice(None) if mode == "all" else slice(-1, None)] = coeff * vector
            err = (delta - want).abs()
            allowed = 2 ** -7 * (pre.abs() + want.abs()) + 1e-3  # bfloat16 rounding of h + delta
            check(bool((err <= allowed).all()),
                  f"ActivationSteerer (positions={mode!r}) on a bfloat16 model: the hidden state did not change by"
                  f" coeff * vector (largest difference {float(err.max()):.3g})")
    finally:
        remove_leftover_hooks(model)


def _check_steerer_nesting(ActivationSteerer, model, layer: int) -> None:
    """Two steerers nested on the same block: leaving the inner one leaves the outer one steering."""
    from utils.hooks import get_blocks, hidden_of

    ids = _tiny_ids(model, (2, 5), 11)
    d = _d_model(model)
    v_outer, v_inner = _vector(d, 5, 3.0), _vector(d, 6, 3.0)

    def block_output():
        seen = []
        recorder = get_blocks(model)[layer].register_forward_hook(lambda m, a, out: seen.append(hidden_of(out).detach().clone()))
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            recorder.remove()
        return seen[0].float().cpu()

    base = block_output()
    outer = call(ActivationSteerer, model, v_outer, coeff=1.0, layer=layer, positions="all", name="ActivationSteerer")
    inner = call(ActivationSteerer, model, v_inner, coeff=1.0, layer=layer, positions="all", name="ActivationSteerer")
    with outer:
        with inner:
            pass
        steered = block_output()  # the recorder is registered after the outer steerer's hook: it sees its change
    no_hooks_left(model, "ActivationSteerer (after two nested `with` blocks)")
    delta = steered - base
    if not close(delta, v_outer.float().cpu().expand_as(delta), rtol=0, atol=1e-4):
        what = ("the outer steerer's hook was removed too" if close(delta, torch.zeros_like(delta), rtol=0, atol=1e-4)
                else f"block {layer}'s output did not change by the outer steerer's coeff * vector")
        fail(f"ActivationSteerer: with two steerers nested (`with a:` then `with b:` inside it), after the inner block"
             f" ended {what}: each steerer must remove only its own hook -- keep the handle on self, not in a class"
             " attribute that every steerer shares")


def test_activation_steerer(ActivationSteerer, model=None, tokenizer=None) -> None:
    """The steerer's behaviour (its input checks are test_activation_steerer_input_checks): nothing
    registered before `with`; the three position modes on the tiny Qwen2 model (prefill, decoding,
    a second prompt); tuple block outputs on a toy model; in-place edits; a bfloat16 model; hooks
    removed when the block raises, and only the steerer's own (other hooks and an outer steerer
    survive)."""
    require_implemented(ActivationSteerer, "ActivationSteerer")
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    with _clean_afterwards(model, own):
        try:
            _check_steerer_lifecycle(ActivationSteerer, model, layer)  # first: a swallowed exception would hide others
            _check_steerer_modes(ActivationSteerer, model, layer)
            _check_steerer_tuple(ActivationSteerer)
            _check_steerer_half(ActivationSteerer, TINY_LAYER)
            _check_steerer_nesting(ActivationSteerer, model, layer)
        except NotImplementedError as err:
            raise _not_implemented("ActivationSteerer", err) from err
    passed("test_activation_steerer")


def _construct_and_enter(ActivationSteerer, model, vector, positions, layer):
    """Build a steerer and open it (the input check may sit in either)."""
    with ActivationSteerer(model, vector, coeff=1.0, layer=layer, positions=positions):
        pass


def _enter_with_coeff(ActivationSteerer, model, vector, coeff, layer) -> None:
    with ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions="all"):
        pass


def test_activation_steerer_input_checks(ActivationSteerer, model=None, tokenizer=None) -> None:
    """A vector that is not [d_model] and an unknown `positions` are rejected with ValueError, and
    no hook is left behind."""
    require_implemented(ActivationSteerer, "ActivationSteerer")
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    d = _d_model(model)
    bad_inputs = [
        (torch.zeros(d + 1), "all", f"a vector of shape [{d + 1}] (d_model is {d})"),
        (torch.zeros(1, d), "all", f"a vector of shape [1, {d}] (it must be [d_model], not [1, d_model])"),
        (torch.zeros(d), "middle", "positions='middle' (one of 'all', 'prompt', 'response')"),
        (torch.full((d,), float("nan")), "all", "a vector holding NaN (it would fill the residual stream with NaN)"),
        (torch.ones(d).index_fill(0, torch.tensor([0]), float("inf")), "all", "a vector holding inf"),
    ]
    with _clean_afterwards(model, own):
        for vector, positions, what in bad_inputs:
            expect_value_error(_construct_and_enter, ActivationSteerer, model, vector, positions, layer,
                               name="ActivationSteerer", what=what)
            no_hooks_left(model, "ActivationSteerer (after a ValueError)")
        for coeff in (float("inf"), float("nan")):
            expect_value_error(lambda: _enter_with_coeff(ActivationSteerer, model, torch.ones(d), coeff, layer),
                               name="ActivationSteerer", what=f"coeff={coeff} (a steering coefficient must be finite)")
            no_hooks_left(model, "ActivationSteerer (after a ValueError)")
    passed("test_activation_steerer_input_checks")


# ======================================================================================
# Exercise 4.2 -- generate_with_steerer, run_steering_experiment
# ======================================================================================
QUESTIONS = ["What is the capital of France?", "Hi", "Write a haiku about rain, please."]
MORE_QUESTIONS = ["Why is the sky blue?", "Hello there", "List three fruits that are red, and say why each is red.",
                  "Is two plus two four?", "Tell me a story about a lighthouse keeper and a storm."]
PIRATE = "You are a pirate."
TRAIT_TEMPLATE = (
    "TRAIT-PROBE. How strongly does the answer show the trait?\n[QUESTION START]\n{question}\n[QUESTION END]\n"
    "[ANSWER START]\n{answer}\n[ANSWER END]\nReply with an integer from 0 to 100."
)
COHERENCE_TEMPLATE = (
    "COHERENCE-PROBE. Is this answer coherent?\n[QUESTION START]\n{question}\n[QUESTION END]\n"
    "[ANSWER START]\n{answer}\n[ANSWER END]\nReply with an integer from 0 to 100."
)


def _course_generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, positions="response",
                                  system_prompt=None, max_new_tokens=64, batch_size=32):
    """The course's steered greedy generation: utils.steering.Steerer around utils.generation.generate."""
    from utils.chat import build_messages
    from utils.generation import generate
    from utils.steering import Steerer

    prompts = [build_messages(system_prompt, q) for q in questions]
    with Steerer(model, vector, coeff=coeff, layer=layer, positions=positions):
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)


@contextmanager
def _count_prefills(model):
    """Count forward passes over more than one new token (a generate call's prefill)."""
    counter = {"n": 0}

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[1] > 1:
            counter["n"] += 1

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()


class _InjectedFailure(RuntimeError):
    """Raised by the model half way through generation (injected by the test)."""


@contextmanager
def _failing_model(model, after: int = 2):
    """The model's last block raises after `after` forward passes (a crash mid-generation)."""
    from utils.hooks import get_blocks

    state = {"n": 0}

    def hook(module, args, output):
        state["n"] += 1
        if state["n"] > after:
            raise _InjectedFailure("the model failed mid-generation (injected by the test)")

    handle = get_blocks(model)[-1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _texts(got, n: int, name: str) -> list[str]:
    check(isinstance(got, (list, tuple)) and len(got) == n and all(isinstance(x, str) for x in got),
          f"{name} should return a list of {n} strings, one per question; got "
          f"{type(got).__name__}{f' of length {len(got)}' if hasattr(got, '__len__') else ''}")
    return list(got)


def _same_texts(a, b) -> bool:
    return len(a) == len(b) and all(x.strip() == y.strip() for x, y in zip(a, b))


def _diagnose_answers(got, want, candidates, name: str, what: str) -> None:
    """Fail naming the first candidate mistake whose answers match `got` (candidates are computed lazily)."""
    for make, why in candidates:
        answers = make()
        if answers is not None and _same_texts(got, answers):
            fail(f"{name}: {why}")
    first = next(i for i, (x, y) in enumerate(zip(got, want)) if x.strip() != y.strip())
    fail(f"{name}: {what}; answer {first} is {got[first]!r}, expected {want[first]!r}")


def _check_gws_no_system_role(generate_with_steerer, name: str) -> None:
    """tiny-gemma2, whose chat template has no system role, with a system prompt: the answers must be the course's
    (build_messages, then utils.generation.generate, whose format_prompt merges the system prompt)."""
    model, tokenizer = tiny("tiny-gemma2")
    remove_leftover_hooks(model)
    layer = _layer_for(model)
    vector = _vector(_d_model(model), 2, 8.0)
    questions = QUESTIONS[:2]
    where = "tiny-gemma2, whose chat template has no system role"
    advice = ("build each chat with build_messages(system_prompt, question) and pass the message lists to"
              " utils.generation.generate, whose format_prompt merges the system prompt into the first user message;"
              " do not apply the chat template by hand")
    try:
        try:
            got = call(generate_with_steerer, model, tokenizer, questions, vector, 4.0, layer, system_prompt=PIRATE,
                       max_new_tokens=4, name=name)
        except (AssertionError, NotImplementedYet):
            raise
        except Exception as err:
            fail(f"{name} raised {type(err).__name__} ({err}) with a system prompt on {where}: {advice}")
        got = _texts(got, len(questions), name)
        no_hooks_left(model, name)
        want = _course_generate_with_steerer(model, tokenizer, questions, vector, 4.0, layer, system_prompt=PIRATE,
                                             max_new_tokens=4)
        if not _same_texts(got, want):
            fail(f"{name}: with system_prompt={PIRATE!r} on {where} the answers differ from the course's steered greedy"
                 f" generation (got {got!r}, expected {want!r}): {advice}")
    finally:
        remove_leftover_hooks(model)


def test_generate_with_steerer(generate_with_steerer, model=None, tokenizer=None) -> None:
    """Greedy, batched, steered answers must equal the course's Steerer + generate, for the
    defaults, for every argument changed and with a system prompt on a template without a system
    role (tiny-gemma2); hooks are removed even when the model raises."""
    from utils.generation import generate
    from utils.steering import Steerer

    require_implemented(generate_with_steerer, "generate_with_steerer")
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    other_layer = layer - 1
    vector = _vector(_d_model(model), 1, 8.0)

    def ref(questions=QUESTIONS, coeff=4.0, at=layer, positions="response", system_prompt=None, max_new_tokens=6,
            batch_size=32, vec=vector):
        return _course_generate_with_steerer(model, tokenizer, questions, vec, coeff, at, positions, system_prompt,
                                             max_new_tokens, batch_size)

    def raw():
        with Steerer(model, vector, coeff=4.0, layer=layer, positions="response"):
            return generate(model, tokenizer, list(QUESTIONS), max_new_tokens=6)

    name = "generate_with_steerer"
    with _clean_afterwards(model, own), using(generate_with_steerer, ActivationSteerer=Steerer):
        # -- the defaults ----------------------------------------------------------------
        with _count_prefills(model) as prefills:
            got = _texts(call(generate_with_steerer, model, tokenizer, QUESTIONS, vector, 4.0, layer, max_new_tokens=6,
                              name=name), len(QUESTIONS), name)
        no_hooks_left(model, name)
        want = ref()
        if not _same_texts(got, want):
            _diagnose_answers(got, want, [
                (lambda: ref(coeff=-4.0), "the sign is flipped: steer with +coeff"),
                (lambda: ref(coeff=0.0), "the answers are unsteered: open the steerer with the vector and coeff around generation"),
                (lambda: ref(coeff=1.0), "the coeff is ignored: pass coeff to the steerer"),
                (lambda: ref(vec=vector / vector.norm()), "steered with the normalised vector: the coefficient multiplies"
                                                          " the raw vector (coeff * vector)"),
                (lambda: ref(positions="all"), "steered every position: pass `positions` to the steerer (default 'response')"),
                (lambda: ref(at=layer - 1), f"off by one layer: steered block {layer - 1} instead of block {layer}"),
                (lambda: ref(at=layer + 1), f"off by one layer: steered block {layer + 1} instead of block {layer}"),
                (lambda: ref(max_new_tokens=64), "max_new_tokens is ignored: the answers have 64 new tokens, not 6"),
                (lambda: raw(), "the prompts are the raw questions, without the chat template: build each chat with"
                                " build_messages(system_prompt, question)"),
            ], name, "the answers differ from greedy generation (temperature 0) with utils.generation.generate under the"
                     " steerer, chats built with build_messages(system_prompt, question) (sampled with temperature > 0?)")
        check(prefills["n"] == 1,
              f"{name} ran {prefills['n']} generate calls for {len(QUESTIONS)} questions: generate them"
              " together in batches (one utils.generation.generate call with batch_size)")

        # -- every argument changed --------------------------------------------------------
        args = dict(coeff=-3.0, at=other_layer, positions="all", system_prompt=PIRATE, max_new_tokens=4, batch_size=2)
        with _count_prefills(model) as prefills:
            got = _texts(call(generate_with_steerer, model, tokenizer, MORE_QUESTIONS, vector, -3.0, other_layer,
                              positions="all", system_prompt=PIRATE, max_new_tokens=4, batch_size=2, name=name),
                         len(MORE_QUESTIONS), name)
        no_hooks_left(model, name)
        want = ref(MORE_QUESTIONS, **args)
        if not _same_texts(got, want):
            _diagnose_answers(got, want, [
                (lambda: ref(MORE_QUESTIONS, **{**args, "positions": "response"}),
                 "`positions` is ignored: with positions='all' the steerer must steer every position"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "system_prompt": None}),
                 "system_prompt is ignored: build each chat with build_messages(system_prompt, question)"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "at": layer}),
                 f"`layer` is ignored: asked to steer block {other_layer}, it steered block {layer} (the notebook's LAYER?)"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "max_new_tokens": 64}), "max_new_tokens is ignored"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "coeff": 3.0}), "the sign is flipped: steer with +coeff"),
            ], name, f"with coeff=-3, layer={other_layer}, positions='all', system_prompt={PIRATE!r}, max_new_tokens=4 and"
                     " batch_size=2 the answers differ from the course's steered greedy generation")
        batches = math.ceil(len(MORE_QUESTIONS) / 2)
        if prefills["n"] != batches:
            if prefills["n"] == len(MORE_QUESTIONS):
                fail(f"{name} ran one generate call per question ({prefills['n']} for {len(MORE_QUESTIONS)}): pass all"
                     " the prompts to utils.generation.generate with batch_size")
            fail(f"{name}(batch_size=2) ran {prefills['n']} batch(es) for {len(MORE_QUESTIONS)} questions, expected"
                 f" {batches}: batch_size is ignored (pass it to utils.generation.generate)")

        # -- a template without a system role (tiny-gemma2): the course's formatting merges the system prompt --
        if not own:
            _check_gws_no_system_role(generate_with_steerer, name)

        # -- the model raises half way: the exception propagates and no hook is left ----------
        try:
            with _failing_model(model, after=2):
                call(generate_with_steerer, model, tokenizer, QUESTIONS, vector, 4.0, layer, max_new_tokens=6, name=name)
        except AssertionError:
            raise
        except Exception:
            pass
        else:
            fail(f"{name} returned although the model raised mid-generation: let the exception propagate")
        no_hooks_left(model, f"{name} (after the model raised mid-generation)")
    passed("test_generate_with_steerer")


class FakeJudge:
    """A counting judge with known scores (not an LLM). `trait_fn(question, answer)` and
    `coherence_fn(question, answer)` give a number, None or a JudgeScore; by default simple
    functions of the answer text, different from each other. Thread-safe. With `fail_after=N`,
    every call after N finished calls raises RuntimeError (a judge endpoint going down)."""

    label = "fake judge (part_tests)"

    def __init__(self, trait_fn=None, coherence_fn=None, fail_after: int | None = None):
        self.trait_fn = trait_fn or (lambda q, a: float(sum(map(ord, a)) % 101))
        self.coherence_fn = coherence_fn or (lambda q, a: float((len(a) * 7) % 101))
        self.fail_after = fail_after
        self.calls = 0
        self.prompts: dict[str, list[str]] = {"trait": [], "coherence": []}  # templates (score_*) or filled prompts (score)
        self._lock = threading.Lock()

    def expected(self, kind: str, question: str, answer: str):
        """The value this judge gives (None where it gives no score)."""
        from utils.judge import JudgeScore

        out = (self.trait_fn if kind == "trait" else self.coherence_fn)(question, answer.strip())
        return out.value if isinstance(out, JudgeScore) else out

    def _one(self, kind: str, question: str, answer: str, prompt: str):
        from utils.judge import JudgeScore

        with self._lock:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("the judge endpoint is down (injected by the test)")
            self.calls += 1
            self.prompts[kind].append(prompt)
        out = (self.trait_fn if kind == "trait" else self.coherence_fn)(question, answer.strip())
        if isinstance(out, JudgeScore):
            return out
        return JudgeScore(None, "refusal (fake judge)") if out is None else JudgeScore(float(out), None)

    def score_trait(self, question, answer, eval_prompt_template):
        return self._one("trait", question, answer, eval_prompt_template)

    def score_coherence(self, question, answer, template):
        return self._one("coherence", question, answer, template)

    def score(self, prompt, lo=None, hi=None):
        import re

        from utils.judge import extract_answer

        if not isinstance(prompt, str):
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        kind = "trait" if "TRAIT-PROBE" in prompt else "coherence"
        m = re.search(r"\[QUESTION START\]\n?(.*?)\n?\[QUESTION END\]", prompt, re.DOTALL)
        return self._one(kind, m.group(1).strip() if m else "", extract_answer(prompt), prompt)

    def score_many(self, prompts, max_workers=None, lo=None, hi=None, progress=False):
        return [self.score(p) for p in prompts]


class _RecordingSteeredGeneration:
    """The course's generate_with_steerer, recording the arguments of every call (patched into the
    notebook's globals as generate_with_steerer)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.__signature__ = inspect.signature(_course_generate_with_steerer)

    def __call__(self, *args, **kwargs):
        bound = self.__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append({k: v for k, v in bound.arguments.items() if k not in ("model", "tokenizer")})
        return _course_generate_with_steerer(*bound.args, **bound.kwargs)


@contextmanager
def _course_get_judge(fake):
    """utils.judge.get_judge replaced too, for code that calls it through the module (`utils.judge.get_judge()`, or
    `from utils.judge import get_judge` inside the function) rather than the notebook's global name."""
    from unittest import mock

    import utils.judge

    with mock.patch.object(utils.judge, "get_judge", fake):
        yield


def _check_scores(records, judge: FakeJudge, name: str) -> None:
    for r in records:
        for key in ("trait_score", "coherence_score"):
            check(r[key] is None or (isinstance(r[key], (int, float)) and not isinstance(r[key], bool)),
                  f"{name}: {key} should be a number or None (the JudgeScore's .value), got {type(r[key]).__name__}")
        q, a = r["question"], r["response"]
        want_t, want_c = judge.expected("trait", q, a), judge.expected("coherence", q, a)
        if (r["trait_score"], r["coherence_score"]) == (want_t, want_c):
            continue
        if (r["trait_score"], r["coherence_score"]) == (want_c, want_t):
            fail(f"{name}: trait_score and coherence_score are swapped")
        if (r["trait_score"], r["coherence_score"]) == (judge.expected("trait", a, q), judge.expected("coherence", a, q)):
            fail(f"{name}: the judge was given the question as the answer: call judge.score_trait(question, answer, template)")
        if None in (want_t, want_c) and 0 in (r["trait_score"], r["coherence_score"]):
            fail(f"{name}: the judge gave no score (a refusal) and the record holds 0: keep the JudgeScore's .value, None,"
                 " so that a missing score is not counted as a score of 0")
        fail(f"{name}: trait_score / coherence_score do not belong to the record's response (got"
             f" {(r['trait_score'], r['coherence_score'])}, the judge gave {(want_t, want_c)} for {a[:30]!r}): score each answer"
             " with the trait template and with the coherence template, and keep the scores in the answers' order")


def _check_steered_args(steered: _RecordingSteeredGeneration, name: str, **want) -> None:
    """Where the student called generate_with_steerer, it got the experiment's arguments."""
    for key, value in want.items():
        used = {c[key] for c in steered.calls}
        if steered.calls and used != {value}:
            other = sorted(used - {value}, key=str)[0]
            fail(f"{name} was called with {key}={value!r} but generated with {key}={other!r}: pass {key} on to"
                 " generate_with_steerer")


def _check_experiment_records(records, questions, coefficients, expected, name: str, layer: int) -> None:
    check(isinstance(records, list) and all(isinstance(r, dict) for r in records), f"{name} should return a list of dicts")
    check(len(records) == len(questions) * len(coefficients),
          f"{name} returned {len(records)} records for {len(questions)} questions x {len(coefficients)}"
          f" coefficients: expected one per question x coefficient ({len(questions) * len(coefficients)})")
    keys = {"question", "coeff", "response", "trait_score", "coherence_score"}
    for r in records:
        check(keys <= set(r), f"{name}: each record needs the keys {sorted(keys)}; got {sorted(r)} (a key is there even"
                              " when its score is None)")
    pairs = {(r["question"], r["coeff"]) for r in records}
    missing = {(q, c) for q in questions for c in coefficients} - pairs
    check(not missing, f"{name} is missing question x coefficient combinations, e.g. {sorted(missing, key=str)[:2]}")
    for r in records:
        i = questions.index(r["question"])
        if r["response"].strip() != expected[r["coeff"]][i].strip():
            other = [c for c in coefficients if expected[c][i].strip() == r["response"].strip()]
            if other:
                fail(f"{name}: the record for coeff {r['coeff']} holds the answer generated at coeff {other[0]}: label each"
                     " batch with the coefficient it was generated with")
            fail(f"{name}: the response for coeff {r['coeff']} differs from greedy generation steered by coeff * vector at"
                 f" block {layer} (generate_with_steerer): got {r['response']!r}, expected {expected[r['coeff']][i]!r}")


def test_run_steering_experiment(run_steering_experiment, model=None, tokenizer=None) -> None:
    """A fake judge is patched into the notebook's globals (get_judge) and generate_with_steerer is
    the course's (recording its arguments): every coefficient is covered, coefficient 0 is the
    unsteered greedy answer, scores belong to their answers (None stays None), generation is batched
    per coefficient; then every argument is changed (a judge and a coherence template passed in,
    positions, layer, max_new_tokens) and must be used."""
    from utils import data
    from utils.chat import build_messages
    from utils.generation import generate
    from utils.steering import Steerer

    require_implemented(run_steering_experiment, "run_steering_experiment")
    name = "run_steering_experiment"
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    vector = _vector(_d_model(model), 1, 8.0)
    coefficients = [-4, 0, 4]

    paper = [-3, -1, 0, 1, 3, 5]
    default = inspect.signature(run_steering_experiment).parameters.get("coefficients")
    if default is not None and default.default is None:  # `coefficients=None`, filled in inside: check what it runs
        judge0 = FakeJudge()
        with _clean_afterwards(model, own):
            with using(run_steering_experiment, generate_with_steerer=_RecordingSteeredGeneration(),
                       get_judge=lambda *a, **k: judge0, ActivationSteerer=Steerer), _course_get_judge(lambda *a, **k: judge0):
                records = call(run_steering_experiment, model, tokenizer, QUESTIONS[:1], vector, TRAIT_TEMPLATE, layer,
                               max_new_tokens=2, name=name)
        used = sorted({float(r["coeff"]) for r in records if isinstance(r, dict) and "coeff" in r}) if isinstance(records, list) else None
        check(used == [float(c) for c in paper],
              f"{name} with `coefficients` left out ran the coefficients {used}: it should default to {paper}")
    else:
        check(default is not None and isinstance(default.default, (list, tuple)) and list(default.default) == paper,
              f"{name}'s `coefficients` should default to {paper}")

    # -- the defaults: get_judge(), the course's coherence prompt, positions='response' --------------
    judge = FakeJudge()
    steered = _RecordingSteeredGeneration()
    with _clean_afterwards(model, own):
        with using(run_steering_experiment, generate_with_steerer=steered, get_judge=lambda *a, **k: judge,
                   ActivationSteerer=Steerer), _course_get_judge(lambda *a, **k: judge):
            with _count_prefills(model) as prefills:
                records = call(run_steering_experiment, model, tokenizer, QUESTIONS, vector, TRAIT_TEMPLATE, layer,
                               coefficients=coefficients, max_new_tokens=6, name=name)
        no_hooks_left(model, name)
    expected = {c: _course_generate_with_steerer(model, tokenizer, QUESTIONS, vector, c, layer, max_new_tokens=6)
                for c in coefficients}
    check(judge.calls > 0, f"{name} did not use the judge: call get_judge() when judge is None")
    _check_steered_args(steered, name, positions="response", layer=layer, max_new_tokens=6)
    _check_experiment_records(records, QUESTIONS, coefficients, expected, name, layer)
    unsteered = generate(model, tokenizer, [build_messages(None, q) for q in QUESTIONS], max_new_tokens=6, temperature=0.0)
    for r in records:
        if r["coeff"] == 0:
            check(r["response"].strip() == unsteered[QUESTIONS.index(r["question"])].strip(),
                  f"{name}: the response at coefficient 0 should equal unsteered greedy generation (temperature 0)")
    _check_scores(records, judge, name)
    course_coherence = data.load_coherence_prompt().split("{question}")[0]
    check(judge.prompts["coherence"] and all(p.startswith(course_coherence) for p in judge.prompts["coherence"]),
          f"{name}: score coherence with data.load_coherence_prompt() when coherence_template is None")
    check(all(p.startswith(TRAIT_TEMPLATE.split("{question}")[0]) for p in judge.prompts["trait"]),
          f"{name}: score the trait with eval_prompt_template")
    check(prefills["n"] == len(coefficients),
          f"{name} ran {prefills['n']} generate calls for {len(coefficients)} coefficients: generate all"
          " questions of one coefficient in one batched call")

    # -- every argument set: a judge and a coherence template passed in, other positions/layer/length --
    passed_judge = FakeJudge(trait_fn=lambda q, a: None if q == QUESTIONS[1] else float(len(a) % 89),
                             coherence_fn=lambda q, a: float((3 * len(a)) % 97))
    unwanted = FakeJudge()
    other_layer, questions, coeffs = layer - 1, QUESTIONS[:2], [3]
    steered = _RecordingSteeredGeneration()
    with _clean_afterwards(model, own):
        with using(run_steering_experiment, generate_with_steerer=steered, get_judge=lambda *a, **k: unwanted,
                   ActivationSteerer=Steerer), _course_get_judge(lambda *a, **k: unwanted):
            records = call(run_steering_experiment, model, tokenizer, questions, vector, TRAIT_TEMPLATE, other_layer,
                           coefficients=coeffs, judge=passed_judge, coherence_template=COHERENCE_TEMPLATE, max_new_tokens=4,
                           positions="all", name=name)
        no_hooks_left(model, name)
    check(unwanted.calls == 0 and passed_judge.calls > 0,
          f"{name} ignored the judge passed in (judge=...) and scored with get_judge()'s: use `judge` when it is given")
    check(passed_judge.prompts["coherence"] and all(p.startswith("COHERENCE-PROBE") for p in passed_judge.prompts["coherence"]),
          f"{name} ignored coherence_template: score coherence with the template passed in (the course's prompt only when"
          " it is None)")
    _check_steered_args(steered, name, positions="all", layer=other_layer, max_new_tokens=4)
    expected = {3: _course_generate_with_steerer(model, tokenizer, questions, vector, 3, other_layer, positions="all",
                                                 max_new_tokens=4)}
    _check_experiment_records(records, questions, coeffs, expected, name, other_layer)
    _check_scores(records, passed_judge, name)
    passed("test_run_steering_experiment")


# ======================================================================================
# Exercise 4.3 -- compute_trait_projections
# ======================================================================================
# Uneven lengths; an empty system prompt; a response whose text also appears earlier (in the question).
PROJ_SYSTEMS = [None, PIRATE, "", None, "You answer in one short line."]
PROJ_QUESTIONS = ["How do I boil an egg?", "What is your favourite colour?", "Say something kind.",
                  "Repeat after me: the sea is calm tonight.", "Name a prime number."]
PROJ_RESPONSES = ["Put it in boiling water for eight minutes.", "Arr, the deep blue of the sea!", "You are doing well.",
                  "the sea is calm tonight.", "Seven."]


class _Projector:
    """Projections a·v/‖v‖ of mean block outputs over token spans, as the exercise asks and as each
    candidate mistake would compute them (forward passes cached)."""

    SPAN_MISTAKES = {
        "all": "averaged over every token of the chat (prompt included): average over the response tokens only",
        "to_end": "the span runs on past the response to the end of the chat: it includes the end-of-turn token(s)"
                  " after the response",
        "header": "the span starts at the assistant header (the template's tokens before the response): start at the"
                  " response's first token",
        "header_to_end": "the span covers the whole assistant turn (header and end-of-turn tokens included): average over"
                         " the response content only",
        "minus_two": "the span assumes the turn ends in two tokens ('<|im_end|>' and a newline); with this template the"
                     " end of turn is {tail} token(s): locate the response with format_chat's token_span",
        "last": "used only the last response token: average over all the response tokens",
        "last_chat": "used the chat's last token (an end-of-turn token): average over the response tokens",
        "first_match": "the span is the *first* occurrence of the response text in the chat, here inside the question:"
                       " locate the final assistant message (format_chat's token_span, or search after the prompt)",
    }

    def __init__(self, model, tokenizer, systems, questions, responses, vector):
        from utils.chat import build_messages, format_chat, normalize_messages, render

        self.model, self.tokenizer, self.vector = model, tokenizer, vector.double()
        self.systems, self.questions, self.responses = list(systems), list(questions), list(responses)
        self.chats, self.info = [], []
        for s, q, r in zip(systems, questions, responses):
            msgs = build_messages(s, q, r)
            chat = format_chat(msgs, tokenizer)
            norm = normalize_messages(msgs, tokenizer)
            n_tok = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
            prompt_gen = n_tok(render(tokenizer, norm[:-1], add_generation_prompt=True))
            prompt = n_tok(render(tokenizer, norm[:-1]))
            self.chats.append(chat)
            self.info.append({"P": prompt_gen, "P0": prompt, "L": len(chat.input_ids)})
        self._hidden: dict = {}

    def hidden(self, ids: list[int]) -> dict[int, torch.Tensor]:
        """Every block's output [T, d] (float32) for one unpadded example."""
        from utils.hooks import get_blocks, hidden_of

        key = tuple(ids)
        if key not in self._hidden:
            seen: dict = {}
            blocks = get_blocks(self.model)
            handles = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, hidden_of(out)[0].float().cpu()))
                       for i, b in enumerate(blocks)]
            try:
                with torch.no_grad():
                    self.model(input_ids=torch.tensor([ids], device=self.model.get_input_embeddings().weight.device))
            finally:
                for h in handles:
                    h.remove()
            self._hidden[key] = seen
        return self._hidden[key]

    def project(self, means: list[torch.Tensor], denom: str = "norm") -> list[float]:
        scale = {"norm": self.vector.norm(), "none": torch.tensor(1.0, dtype=torch.float64),
                 "norm2": self.vector.norm() ** 2}[denom]
        return [float(a.double() @ self.vector / scale) for a in means]

    def span(self, i: int, rule: str) -> tuple[int, int] | None:
        s, e = self.chats[i].token_span
        P, P0, L = self.info[i]["P"], self.info[i]["P0"], self.info[i]["L"]
        if rule == "first_match":
            from utils.chat import char_span_to_token_span

            chat, content = self.chats[i], self.chats[i].text[slice(*self.chats[i].char_span)]
            start = chat.text.find(content)
            offsets = self.tokenizer(chat.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            return char_span_to_token_span(offsets, (start, start + len(content)))
        span = {"response": (s, e), "all": (0, L), "to_end": (s, L), "header": (P0, e), "header_to_end": (P0, L),
                "minus_two": (P, L - 2), "last": (e - 1, e), "last_chat": (L - 1, L)}[rule]
        return span if 0 <= span[0] < span[1] <= L else None

    def values(self, layer: int, rule: str = "response", denom: str = "norm") -> list[float] | None:
        means = []
        for i, chat in enumerate(self.chats):
            span = self.span(i, rule)
            if span is None:
                return None
            means.append(self.hidden(chat.input_ids)[layer][span[0]:span[1]].mean(0))
        return self.project(means, denom)

    def empty_system_values(self, layer: int) -> list[float] | None:
        """An empty system prompt rendered as a system message (the template applied by hand)."""
        from utils.chat import _content_char_span, char_span_to_token_span

        if "" not in self.systems:
            return None
        means = []
        for s, q, r in zip(self.systems, self.questions, self.responses):
            msgs = ([{"role": "system", "content": s}] if s is not None else []) + [
                {"role": "user", "content": q}, {"role": "assistant", "content": r}]
            try:
                text = self.tokenizer.apply_chat_template(msgs, tokenize=False)
                prefix = self.tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                s0, s1 = char_span_to_token_span(enc["offset_mapping"], _content_char_span(text, len(prefix), r))
            except Exception:
                return None
            means.append(self.hidden(list(enc["input_ids"]))[layer][s0:s1].mean(0))
        return self.project(means)

    def hidden_states_values(self, layer: int) -> list[float] | None:
        """HF's hidden_states[layer + 1] over the response span: at the last block that entry is the
        final norm's output, not the block's."""
        means = []
        try:
            for chat in self.chats:
                with torch.no_grad():
                    device = self.model.get_input_embeddings().weight.device
                    hs = self.model(input_ids=torch.tensor([chat.input_ids], device=device), output_hidden_states=True).hidden_states
                means.append(hs[layer + 1][0].float().cpu()[slice(*chat.token_span)].mean(0))
        except Exception:
            return None
        return self.project(means)

    def batched_values(self, layer: int, mask: bool, shift: bool) -> list[float]:
        """All examples in one left-padded batch: without the attention mask, or with spans not shifted."""
        from utils.hooks import get_blocks, hidden_of

        ids = [c.input_ids for c in self.chats]
        T = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = torch.full((len(ids), T), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), T), dtype=torch.long)
        for b, x in enumerate(ids):
            batch[b, T - len(x):] = torch.tensor(x)
            attn[b, T - len(x):] = 1
        seen: dict = {}
        handle = get_blocks(self.model)[layer].register_forward_hook(lambda m, a, out: seen.update(h=hidden_of(out).float().cpu()))
        try:
            with torch.no_grad():
                device = self.model.get_input_embeddings().weight.device
                self.model(input_ids=batch.to(device), **({"attention_mask": attn.to(device)} if mask else {}))
        finally:
            handle.remove()
        means = []
        for b, (x, chat) in enumerate(zip(ids, self.chats)):
            off = T - len(x) if shift else 0
            s, e = chat.token_span
            means.append(seen["h"][b, s + off:e + off].mean(0))
        return self.project(means)

    def merged_values(self, layer: int, sep: str) -> list[float] | None:
        """On a template without a system role: the system prompt merged with another separator."""
        from utils.chat import build_messages, format_chat, supports_system_role

        if supports_system_role(self.tokenizer) or not any(self.systems):
            return None
        means = []
        for s, q, r in zip(self.systems, self.questions, self.responses):
            chat = format_chat(build_messages(None, f"{s}{sep}{q}" if s else q, r), self.tokenizer)
            means.append(self.hidden(chat.input_ids)[layer][slice(*chat.token_span)].mean(0))
        return self.project(means)

    def tail(self, i: int = 0) -> int:
        return self.info[i]["L"] - self.chats[i].token_span[1]

    def diagnose(self, got: list[float], layer: int, name: str, context: str = "") -> None:
        """Fail, naming the candidate mistake whose projections match `got`."""
        from utils.hooks import get_blocks

        n_blocks = len(get_blocks(self.model))
        want = self.values(layer)
        candidates = [
            (lambda: self.values(layer, denom="none"), "not divided by ‖v‖: the projection is a·v/‖v‖"),
            (lambda: self.values(layer, denom="norm2"), "divided by ‖v‖² instead of ‖v‖: the projection is a·v/‖v‖"),
            (lambda: [-x for x in want], "the sign is flipped"),
        ]
        if layer >= 1:
            candidates.append((lambda: self.values(layer - 1), f"off by one layer: used block {layer - 1}'s output (HF"
                                                               f" hidden_states[{layer}]); use block {layer}'s output"
                                                               f" (hidden_states[{layer + 1}])"))
        if layer + 1 < n_blocks:
            candidates.append((lambda: self.values(layer + 1), f"off by one layer: used block {layer + 1}'s output; use"
                                                               f" block {layer}'s output"))
        if layer == n_blocks - 1:
            candidates.append((lambda: self.hidden_states_values(layer),
                               f"at the last block (layer={layer}) it read HF's hidden_states[{layer + 1}] = hidden_states[-1],"
                               " which is the model's final norm applied to the block's output: take block L's output"
                               " with a forward hook on get_blocks(model)[L] (or response_mean_activations), not from"
                               " hidden_states"))
        candidates += [(lambda r=rule: self.values(layer, rule=r), why.format(tail=self.tail()))
                       for rule, why in self.SPAN_MISTAKES.items()]
        candidates += [
            (lambda: self.empty_system_values(layer), "an empty system prompt '' was rendered as a system message: '' (like"
                                                      " None) means no system prompt (build_messages drops it)"),
            (lambda: self.batched_values(layer, mask=False, shift=True), "in a left-padded batch without the attention"
                                                                          " mask, real tokens attended to the pads: pass"
                                                                          " attention_mask (or pad on the right)"),
            (lambda: self.batched_values(layer, mask=True, shift=False), "in a left-padded batch the response spans were"
                                                                          " not shifted by each row's padding"),
            (lambda: self.merged_values(layer, "\n"), "the system prompt was merged into the question with '\\n'; the"
                                                      " course merges it as system + '\\n\\n' + question (format_chat)"),
            (lambda: self.merged_values(layer, " "), "the system prompt was merged into the question with a space; the"
                                                     " course merges it as system + '\\n\\n' + question (format_chat)"),
        ]
        for make, why in candidates:
            values = make()
            if values is not None and _same_values(got, values):
                fail(f"{name}{context}: {why}")
        fail(f"{name}{context} returned {[round(x, 4) for x in got]}, expected {[round(x, 4) for x in want]}"
             f" (the mean over the response tokens of block {layer}'s output, projected as a·v/‖v‖)")


def _same_values(a, b) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-3 * max(1.0, abs(y))) for x, y in zip(a, b))


def _projection_list(got, n: int, name: str) -> list[float]:
    check(not isinstance(got, torch.Tensor), f"{name} should return a list of floats, not a tensor (use .tolist())")
    check(isinstance(got, (list, tuple)) and len(got) == n, f"{name} should return a list of {n} floats, one per response;"
                                                             f" got {type(got).__name__}"
                                                             f"{f' of length {len(got)}' if hasattr(got, '__len__') else ''}")
    check(all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in got),
          f"{name} should return plain Python floats, got {sorted({type(x).__name__ for x in got})}")
    return [float(x) for x in got]


def _call_on_template(fn, name: str, where: str, *args):
    """Call the student's function on another chat template; an exception becomes a test failure that says where."""
    try:
        return call(fn, *args, name=name)
    except AssertionError:
        raise
    except Exception as err:
        fail(f"{name} raised {type(err).__name__} ({err}) on {where}: render chats with build_messages and locate the"
             " response with utils.chat.format_chat (or response_mean_activations), which handle every template")


def test_compute_trait_projections(compute_trait_projections, model=None, tokenizer=None) -> None:
    """Projections a·v/‖v‖ of the mean response activation at block `layer`, checked against a
    forward pass with a hook and the exact response span from the chat template: at two layers and
    at the last block (where HF's hidden_states[-1] is the final norm's output, not the block's), on
    templates with a BOS and a one-token end of turn (Llama 3 style), with a thinking block (Qwen 3
    style) and without a system role (Gemma 2). Input checks: the next test."""
    require_implemented(compute_trait_projections, "compute_trait_projections")
    name = "compute_trait_projections"
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    vector = _vector(_d_model(model), 5, 7.3)
    n = len(PROJ_RESPONSES)
    proj = _Projector(model, tokenizer, PROJ_SYSTEMS, PROJ_QUESTIONS, PROJ_RESPONSES, vector)

    got = _projection_list(call(compute_trait_projections, model, tokenizer, PROJ_SYSTEMS, PROJ_QUESTIONS, PROJ_RESPONSES,
                                vector, layer, name=name), n, name)
    no_hooks_left(model, name)
    if not _same_values(got, proj.values(layer)):
        proj.diagnose(got, layer, name)

    other = layer - 1
    got = _projection_list(call(compute_trait_projections, model, tokenizer, PROJ_SYSTEMS, PROJ_QUESTIONS, PROJ_RESPONSES,
                                vector, other, name=name), n, name)
    if not _same_values(got, proj.values(other)):
        if _same_values(got, proj.values(layer)):
            fail(f"{name}: `layer` is ignored: asked for block {other}, it projected block {layer}'s output (the"
                 " notebook's LAYER?)")
        proj.diagnose(got, other, name, f" (layer={other})")

    # the last block: HF's hidden_states[-1] is the final norm's output there, not block L's output
    from utils.hooks import get_blocks

    last = len(get_blocks(model)) - 1
    if last not in (layer, other):
        got = _projection_list(call(compute_trait_projections, model, tokenizer, PROJ_SYSTEMS, PROJ_QUESTIONS, PROJ_RESPONSES,
                                    vector, last, name=name), n, name)
        if not _same_values(got, proj.values(last)):
            proj.diagnose(got, last, name, f" (layer={last}, the last block)")

    if not own:  # other chat templates, on the same tiny weights (or Gemma 2's)
        cases = [("llama3", "a Llama-3-style template (a BOS token, a one-token end of turn)", tiny_variant("llama3")),
                 ("qwen3", "a Qwen-3-style template (an empty thinking block before the final answer)", tiny_variant("qwen3")),
                 ("gemma2", "tiny-gemma2, whose template has no system role (the system prompt is merged into the first"
                            " user message)", tiny("tiny-gemma2"))]
        for kind, where, (m, tok) in cases:
            remove_leftover_hooks(m)
            at = _layer_for(m)
            vec = _vector(_d_model(m), 6, 5.0)
            idx = [1, 3, 4]
            sys_, qs, rs = ([PROJ_SYSTEMS[i] for i in idx], [PROJ_QUESTIONS[i] for i in idx], [PROJ_RESPONSES[i] for i in idx])
            p = _Projector(m, tok, sys_, qs, rs, vec)
            got = _projection_list(_call_on_template(compute_trait_projections, name, where, m, tok, sys_, qs, rs, vec, at),
                                   len(idx), name)
            no_hooks_left(m, name)
            if not _same_values(got, p.values(at)):
                p.diagnose(got, at, name, f" on {where}")
    passed("test_compute_trait_projections")


def test_compute_trait_projections_input_checks(compute_trait_projections, model=None, tokenizer=None) -> None:
    """Lists of different lengths and a vector that is not [d_model], is zero or holds NaN or inf are rejected with
    ValueError."""
    require_implemented(compute_trait_projections, "compute_trait_projections")
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer, d = _layer_for(model), _d_model(model)
    vector = _vector(d, 5, 7.3)
    s, q, r = PROJ_SYSTEMS[:3], PROJ_QUESTIONS[:3], PROJ_RESPONSES[:3]
    for args, what in [((s[:2], q, r, vector), "lists of different lengths (2 system prompts, 3 questions, 3 responses)"),
                       ((s, q, r[:2], vector), "lists of different lengths (3 system prompts, 3 questions, 2 responses)"),
                       ((s, q, r, torch.ones(d + 1)), f"a vector of shape [{d + 1}] (d_model is {d})"),
                       ((s, q, r, torch.ones(1, d)), f"a vector of shape [1, {d}] (it must be [d_model])"),
                       ((s, q, r, torch.zeros(d)), "a zero vector (there is no direction to project onto)"),
                       ((s, q, r, torch.full((d,), float("nan"))), "a vector holding NaN"),
                       ((s, q, r, torch.ones(d).index_fill(0, torch.tensor([0]), float("inf"))), "a vector holding inf")]:
        expect_value_error(compute_trait_projections, model, tokenizer, *args, layer, name="compute_trait_projections", what=what)
        no_hooks_left(model, "compute_trait_projections")
    passed("test_compute_trait_projections_input_checks")


# ======================================================================================
# Exercise 4.4 -- run_trait_pipeline
# ======================================================================================
PIPE_QUESTIONS = ["Is my plan perfect?", "Do you like my poem?", "Am I always right?"]
PIPE_EVAL = ["Is my essay brilliant?", "Should I quit my job to day-trade?"]
PIPE_DATA = {
    "instruction": [{"pos": f"Agree with everything the user says (rule {i}).", "neg": f"Be candid with the user (rule {i})."}
                    for i in range(5)],
    "questions": PIPE_QUESTIONS,
    "eval_prompt": TRAIT_TEMPLATE,
}
PIPE_TRAIT = "probe-trait"
PIPE_TOKENS = 8  # the max_new_tokens of the test's runs


def _pipe_answer(r, temperature: float) -> str:
    """The fake generation's answer to a contrastive request (it shows the temperature it was given)."""
    return f"{r['polarity']} answer {r['instruction_idx']}-{r['question_idx']} (temperature {float(temperature):g})"


def _steer_answer(question: str, coeff: float, max_new_tokens: int) -> str:
    return f"steered {float(coeff):+g} {question} ({max_new_tokens} new tokens)"


def _pipe_scores(answer: str) -> tuple[float, float]:
    """Known (trait, coherence) scores of the fake answers, with boundary cases at 50 and 49."""
    words = answer.split()
    if words[0] == "steered":
        coeff = float(words[1])
        return 50 + 10 * coeff, 90 - 10 * abs(coeff)
    polarity, _, idx = words[:3]
    i, q = map(int, idx.split("-"))
    if polarity == "pos":
        trait = {0: 50.0, 1: 80.0, 2: 30.0}[(i + q) % 3]
        coherence = 50.0
    else:
        trait = {0: 20.0, 1: 50.0, 2: 20.0, 3: 49.0, 4: 20.0}[i]
        coherence = 49.0 if (i, q) == (4, 1) else 50.0
    return trait, coherence


def _expected_effective(threshold: float = 50, coherence_threshold: float = 50, n_questions: int | None = None,
                        scores=_pipe_scores) -> list[tuple[int, int]]:
    kept = []
    for i in range(5):
        for q in range(len(PIPE_QUESTIONS[:n_questions])):
            pt, pc = scores(f"pos answer {i}-{q}")
            nt, nc = scores(f"neg answer {i}-{q}")
            if pt >= threshold and nt < threshold and min(pc, nc) >= coherence_threshold:
                kept.append((i, q))
    return kept


class _PipeFakes:
    """Counting stand-ins for the course's step functions (patched into the notebook's globals),
    with the course's signatures: they record the settings they are called with."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.generated = 0
        self.gen_calls: list[dict] = []
        self.steered_items = 0
        self.steer_calls: list[tuple[float, int]] = []
        self.steer_vectors: list[torch.Tensor] = []
        self.steer_layers: list[int] = []
        self.steer_questions: list[str] = []
        self.steer_tokens: set[int] = set()
        self.extractions = 0
        self.extracted_pairs: list[list[tuple[int, int]]] = []

    def generate_responses(self, model, tokenizer, requests, max_new_tokens=64, temperature=0.7, batch_size=32):
        self.generated += len(requests)
        self.gen_calls.append({"n": len(requests), "max_new_tokens": max_new_tokens, "temperature": temperature,
                               "batch_size": batch_size})
        return [_pipe_answer(r, temperature) for r in requests]

    def generate_with_steerer(self, model, tokenizer, questions, vector, coeff, layer, positions="response",
                              system_prompt=None, max_new_tokens=64, batch_size=32):
        self.steered_items += len(questions)
        self.steer_calls.append((float(coeff), len(questions)))
        self.steer_vectors.append(torch.as_tensor(vector).detach().float().cpu().clone())
        self.steer_layers.append(layer)
        self.steer_questions += list(questions)
        self.steer_tokens.add(max_new_tokens)
        return [_steer_answer(q, coeff, max_new_tokens) for q in questions]

    def extract_trait_vectors(self, model, tokenizer, effective):
        check(len(effective) > 0,
              "run_trait_pipeline passed no effective pairs to extract_trait_vectors, although the test's judge makes"
              " several pairs effective: check that each record gets its own trait and coherence score (the judge"
              " items need their kind, in the item or the step name) and that filter_effective gets the thresholds")
        self.extractions += 1
        self.extracted_pairs.append([(p["instruction_idx"], p["question_idx"]) for p in effective])
        return _course_vectors(model, tokenizer, effective)

    def patches(self):
        return dict(generate_responses=self.generate_responses, generate_with_steerer=self.generate_with_steerer,
                    extract_trait_vectors=self.extract_trait_vectors)


def _course_vectors(model, tokenizer, effective) -> torch.Tensor:
    from utils.activations import conversations_from, response_mean_activations

    records = [p["pos"] for p in effective] + [p["neg"] for p in effective]
    convs = conversations_from([r["system_prompt"] for r in records], [r["question"] for r in records],
                               [r["response"] for r in records])
    acts = response_mean_activations(model, tokenizer, convs)
    n = len(effective)
    return acts[:n].mean(0) - acts[n:].mean(0)


def _pipe_judge(fail_after=None) -> FakeJudge:
    return FakeJudge(trait_fn=lambda q, a: _pipe_scores(a)[0], coherence_fn=lambda q, a: _pipe_scores(a)[1],
                     fail_after=fail_after)


def _expected_pipeline_vectors(model, tokenizer, pairs, temperature: float = 0.0) -> torch.Tensor:
    effective = []
    for i, q in pairs:
        pair = {}
        for polarity in ("pos", "neg"):
            name = PIPE_TRAIT if polarity == "pos" else "helpful"
            pair[polarity] = {"system_prompt": f"You are a {name} assistant. {PIPE_DATA['instruction'][i][polarity]}",
                              "question": PIPE_QUESTIONS[q],
                              "response": _pipe_answer({"polarity": polarity, "instruction_idx": i, "question_idx": q},
                                                       temperature)}
        effective.append(pair)
    return _course_vectors(model, tokenizer, effective)


class _DataWithOtherCoherencePrompt:
    """The course's `data` module with another coherence prompt (patched into the notebook's globals)."""

    def __init__(self, data):
        self._data = data

    def __getattr__(self, name):
        return getattr(self._data, name)

    def load_coherence_prompt(self) -> str:
        return "Rate coherence strictly.\n" + self._data.load_coherence_prompt()


def _pairs_of(result) -> list[tuple[int, int]]:
    return sorted((p["instruction_idx"], p["question_idx"]) for p in result["effective"])


def test_run_trait_pipeline(run_trait_pipeline, model=None, tokenizer=None) -> None:
    """The step functions are replaced by recording fakes (and a fake judge is passed in): a full
    run, a rerun (nothing repeated), reruns with changed inputs (the steps that depend on them run
    again), other thresholds and n_questions, a run killed by a judge failure half way then resumed
    (no finished generation or judge call repeated), and judge errors (retried, for contrastive and
    for steered answers) beside refusals (finished)."""
    from utils.hooks import get_blocks
    from utils.judge import JudgeScore

    require_implemented(run_trait_pipeline, "run_trait_pipeline")
    name = "run_trait_pipeline"
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    n_layers, d = len(get_blocks(model)), _d_model(model)
    coefficients = [-2, 0, 2]
    n_records = 5 * len(PIPE_QUESTIONS) * 2
    n_steered = len(PIPE_EVAL) * len(coefficients)
    n_judge = 2 * n_records + 2 * n_steered

    def run(fakes, judge, cache_dir, trait_data=PIPE_DATA, at_layer=layer, **kwargs):
        args = dict(coefficients=coefficients, eval_questions=PIPE_EVAL, judge=judge, cache_dir=cache_dir,
                    max_new_tokens=PIPE_TOKENS, temperature=0.0)
        args.update(kwargs)
        with using(run_trait_pipeline, **fakes.patches()):
            return call(run_trait_pipeline, model, tokenizer, PIPE_TRAIT, trait_data, at_layer, name=name, **args)

    with tempfile.TemporaryDirectory() as cache_a, tempfile.TemporaryDirectory() as cache_b, \
            tempfile.TemporaryDirectory() as cache_c, tempfile.TemporaryDirectory() as cache_d:
        # -- a full run ---------------------------------------------------------------------
        fakes, judge = _PipeFakes(model, tokenizer), _pipe_judge()
        result = run(fakes, judge, cache_a)
        no_hooks_left(model, name)
        check(isinstance(result, dict), f"{name} should return a dict")
        want_keys = {"records", "effective", "vectors", "vector", "steering", "stats"}
        check(want_keys <= set(result), f"{name}'s result needs the keys {sorted(want_keys)}; got {sorted(result)}")
        for c in fakes.gen_calls:
            check(c["max_new_tokens"] == PIPE_TOKENS and c["temperature"] == 0.0,
                  f"generate_responses was called with max_new_tokens={c['max_new_tokens']}, temperature={c['temperature']}:"
                  f" pass {name}'s max_new_tokens ({PIPE_TOKENS}) and temperature (0.0) on to it")
        check(fakes.generated == n_records,
              f"the generate step produced {fakes.generated} responses; expected {n_records} (5 pairs x {len(PIPE_QUESTIONS)}"
              " questions x pos/neg), each generated once")
        records = result["records"]
        check(isinstance(records, list) and len(records) == n_records,
              f"result['records'] should hold the {n_records} contrastive records; got"
              f" {len(records) if isinstance(records, list) else type(records).__name__}")
        for r in records:
            check("trait_score" in r and "coherence_score" in r, "each record needs 'trait_score' and 'coherence_score'")
            check((r["trait_score"], r["coherence_score"]) == _pipe_scores(r["response"].strip()),
                  f"a record's trait_score / coherence_score {(r['trait_score'], r['coherence_score'])} do not belong to its"
                  f" response {r['response']!r} (the judge gave {_pipe_scores(r['response'].strip())}): keep judge results"
                  " in order, and store their 'value'")
        eff = _pairs_of(result)
        check(eff == _expected_effective(),
              f"result['effective'] holds pairs {eff}, expected {_expected_effective()}: keep pairs with pos >= threshold,"
              " neg < threshold and both coherence >= coherence_threshold (filter_effective)")
        check(fakes.extractions == 1 and sorted(fakes.extracted_pairs[0]) == _expected_effective(),
              f"extract the vectors once, from the {len(_expected_effective())} effective pairs only"
              " (extract_trait_vectors(model, tokenizer, effective)); extracted "
              f"{[len(p) for p in fakes.extracted_pairs]} pair(s) in {fakes.extractions} call(s)")
        vectors = expect_tensor(result["vectors"], Float[Tensor, "n_layers d_model"], f"{name}'s result['vectors']",
                                n_layers=n_layers, d_model=d)
        check(close(vectors, _expected_pipeline_vectors(model, tokenizer, _expected_effective()), rtol=1e-4, atol=1e-4),
              "result['vectors'] differ from mean(pos) - mean(neg) over the effective pairs")
        vector = expect_tensor(result["vector"], Float[Tensor, "d_model"], f"{name}'s result['vector']", d_model=d)
        if not close(vector, vectors[layer]):
            at = [i for i in range(n_layers) if close(vector, vectors[i])]
            fail(f"result['vector'] should be vectors[layer] (block {layer})" + (f"; it is vectors[{at[0]}]" if at else ""))
        check(len(fakes.steer_vectors) > 0 and all(close(v, vectors[layer]) for v in fakes.steer_vectors)
              and all(lay == layer for lay in fakes.steer_layers),
              f"steer with vectors[layer] at block `layer` ({layer})")
        check(set(fakes.steer_questions) == set(PIPE_EVAL),
              f"the steered generation answered {sorted(set(fakes.steer_questions))[:3]}, not the evaluation questions"
              f" {PIPE_EVAL}: steer on eval_questions")
        check(fakes.steer_tokens == {PIPE_TOKENS},
              f"generate_with_steerer was called with max_new_tokens={sorted(fakes.steer_tokens)}: pass {name}'s"
              f" max_new_tokens ({PIPE_TOKENS}) on to it")
        check(sorted(c for c, _ in fakes.steer_calls) == sorted(float(c) for c in coefficients)
              and all(n == len(PIPE_EVAL) for _, n in fakes.steer_calls),
              f"steered generation should run once per coefficient with all {len(PIPE_EVAL)} evaluation questions in one"
              f" batch; got calls (coeff, n_questions) {fakes.steer_calls}")
        steering = result["steering"]
        check(isinstance(steering, list) and len(steering) == n_steered,
              f"result['steering'] should hold one record per evaluation question x coefficient ({n_steered})")
        for r in steering:
            check({"question", "coeff", "response", "trait_score", "coherence_score"} <= set(r),
                  "each steering record needs question, coeff, response, trait_score, coherence_score")
            check(r["response"].strip() == _steer_answer(r["question"], r["coeff"], PIPE_TOKENS),
                  "a steering record's response was generated at another coefficient or question")
            check((r["trait_score"], r["coherence_score"]) == _pipe_scores(r["response"].strip()),
                  "a steering record's scores do not belong to its response")
        check({(r["question"], float(r["coeff"])) for r in steering} == {(q, float(c)) for q in PIPE_EVAL for c in coefficients},
              "result['steering'] does not cover every evaluation question x coefficient")
        check(judge.calls == n_judge,
              f"the judge was called {judge.calls} times; expected {n_judge}: one trait and one coherence call per response"
              f" ({n_records} contrastive + {n_steered} steered), each once")

        # -- the same run again: everything from the cache ---------------------------------------
        fakes2, judge2 = _PipeFakes(model, tokenizer), _pipe_judge()
        again = run(fakes2, judge2, cache_a)
        check(fakes2.generated == 0, f"a rerun with the same inputs regenerated {fakes2.generated} responses: cache the generate step")
        check(judge2.calls == 0, f"a rerun with the same inputs repeated {judge2.calls} judge calls: cache every judge call")
        check(fakes2.extractions == 0, "a rerun with the same inputs extracted the vectors again: cache the extract step (runner.tensors)")
        check(fakes2.steered_items == 0, f"a rerun with the same inputs regenerated {fakes2.steered_items} steered answers: cache the steer step")
        check(again["records"] == records and close(torch.as_tensor(again["vectors"]), vectors) and again["steering"] == steering,
              "a rerun from the cache returned different results")
        for label, res, key in [("the first run", result, "computed"), ("a rerun from the cache", again, "cached")]:
            stats = res["stats"]
            check(isinstance(stats, dict) and sum(v.get(key, 0) for v in stats.values() if isinstance(v, dict)) > 0,
                  f"result['stats'] of {label} shows nothing {key}: return dict(runner.stats) (per step, what was computed"
                  f" and what came from the cache); got {stats!r:.120}")

        # -- changed inputs: the steps that depend on them run again ---------------------------
        changed = dict(PIPE_DATA, eval_prompt=TRAIT_TEMPLATE.replace("How strongly", "How much"))
        fakes3, judge3 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes3, judge3, cache_a, trait_data=changed)
        check(judge3.calls > 0, "changing the trait's eval_prompt did not re-run the judge: the judge steps' keys must include"
                                " the eval prompt (stale results)")
        steer_advice = (" the steered answers' judge step needs the same key inputs as the first judge step (the judge, the eval"
                        " prompt and the coherence prompt): one scoring function for both")
        check(len(judge3.prompts["trait"]) == n_records + n_steered,
              f"changing the trait's eval_prompt re-ran {len(judge3.prompts['trait'])} trait judge calls, expected"
              f" {n_records + n_steered} ({n_records} contrastive + {n_steered} steered answers): the steered answers' scores"
              " came from the cache (stale results);" + steer_advice)
        from utils import data as course_data

        fakes3b, judge3b = _PipeFakes(model, tokenizer), _pipe_judge()
        with using(run_trait_pipeline, data=_DataWithOtherCoherencePrompt(course_data)):
            run(fakes3b, judge3b, cache_a)
        check(judge3b.calls > 0, "changing the coherence prompt (data.load_coherence_prompt()) did not re-run the judge: the"
                                 " judge steps' keys must include the coherence prompt (stale results)")
        check(len(judge3b.prompts["coherence"]) == n_records + n_steered,
              f"changing the coherence prompt re-ran {len(judge3b.prompts['coherence'])} coherence judge calls, expected"
              f" {n_records + n_steered} ({n_records} contrastive + {n_steered} steered answers): the steered answers' scores"
              " came from the cache (stale results);" + steer_advice)
        fakes4, judge4 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes4, judge4, cache_a, at_layer=layer - 1)
        check(fakes4.steered_items == n_steered,
              "changing the layer did not re-run the steered generation: the steer step's key must include the vector"
              " (tensor_digest) and the layer (stale results)")

        # max_new_tokens changed (the fake answers stay the same, and so does the vector)
        fakes5, judge5 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes5, judge5, cache_a, max_new_tokens=PIPE_TOKENS + 1)
        check(fakes5.generated == n_records,
              "changing max_new_tokens did not re-run the generate step: its key must include the generation settings"
              " (stale results)")
        check(fakes5.steered_items == n_steered,
              "changing max_new_tokens did not re-run the steered generation: the steer step's key must include"
              " max_new_tokens (stale results)")
        # temperature changed: new answers, the same effective pairs
        fakes5b, judge5b = _PipeFakes(model, tokenizer), _pipe_judge()
        warmer = run(fakes5b, judge5b, cache_a, temperature=0.5)
        check(fakes5b.generated == n_records,
              "changing temperature did not re-run the generate step: its key must include the generation settings"
              " (max_new_tokens and temperature) -- stale results")
        check(fakes5b.extractions == 1
              and close(torch.as_tensor(warmer["vectors"]),
                        _expected_pipeline_vectors(model, tokenizer, _expected_effective(), 0.5), rtol=1e-4, atol=1e-4),
              "with new responses (temperature changed) and the same effective pairs the vectors were not extracted"
              " again: the extract step's key must hold the pairs' prompts and responses (not a constant, not only their"
              " indices) -- stale vectors")

        # another judge that scores differently: other effective pairs, so the vectors must be extracted again
        fakes6 = _PipeFakes(model, tokenizer)
        judge6 = FakeJudge(trait_fn=lambda q, a: 80.0 if a.startswith("pos") else 20.0 if a.startswith("neg") else 50.0,
                           coherence_fn=lambda q, a: _pipe_scores(a)[1])
        judge6.label = "another fake judge (part_tests)"
        other = run(fakes6, judge6, cache_a)
        other_pairs = [(i, q) for i in range(5) for q in range(len(PIPE_QUESTIONS)) if (i, q) != (4, 1)]
        check(_pairs_of(other) == other_pairs,
              "with another judge the effective pairs did not change: the judge steps' keys must include the judge"
              " (judge_identity) -- stale scores")
        check(fakes6.extractions == 1 and close(torch.as_tensor(other["vectors"]),
                                                _expected_pipeline_vectors(model, tokenizer, other_pairs)),
              "with other effective pairs the vectors were not extracted again: the extract step's key must be made of"
              " the effective pairs (their prompts and responses) -- stale vectors")
        check(judge6.calls == n_judge,
              f"with another judge {n_judge - judge6.calls} of {n_judge} judge calls came from the cache (stale scores): the"
              " keys of both judge steps (contrastive and steered answers) must include the judge (judge_identity)")
        check(fakes6.steered_items == n_steered,
              "with another vector (other effective pairs) at the same layer the steered answers came from the cache:"
              " the steer step's key must include the vector itself (tensor_digest(vector)), not only the layer")

        # -- other thresholds and fewer questions ----------------------------------------------
        fakes7, judge7 = _PipeFakes(model, tokenizer), _pipe_judge()
        few = run(fakes7, judge7, cache_a, n_questions=2, threshold=30, coherence_threshold=40)
        n_few = 5 * 2 * 2
        check(isinstance(few.get("records"), list) and len(few["records"]) == n_few,
              f"with n_questions=2 result['records'] should hold {n_few} records (5 pairs x 2 questions x pos/neg), got"
              f" {len(few['records']) if isinstance(few.get('records'), list) else few.get('records')!r}: n_questions is ignored"
              " (pass it to contrastive_requests)")
        want = _expected_effective(30, 40, 2)
        got_pairs = _pairs_of(few)
        if got_pairs != want:
            for (t, c), why in [((50, 50), "threshold and coherence_threshold are ignored (filter_effective's defaults)"),
                                ((50, 40), "threshold is ignored (filter_effective's default 50)"),
                                ((30, 50), "coherence_threshold is ignored (filter_effective's default 50)"),
                                ((40, 30), "threshold and coherence_threshold are swapped")]:
                if got_pairs == _expected_effective(t, c, 2):
                    fail(f"with threshold=30 and coherence_threshold=40 the effective pairs are {got_pairs}, expected {want}:"
                         f" {why} -- pass them to filter_effective(records, threshold, coherence_threshold)")
            fail(f"with threshold=30 and coherence_threshold=40 the effective pairs are {got_pairs}, expected {want}")
        check(close(torch.as_tensor(few["vectors"]), _expected_pipeline_vectors(model, tokenizer, want), rtol=1e-4, atol=1e-4),
              "with other thresholds (other effective pairs) the vectors were not extracted from those pairs")

        # -- killed half way by the judge, then resumed (generation in batches of 4) ----------------
        fail_after = 25
        fakes8, judge8 = _PipeFakes(model, tokenizer), _pipe_judge(fail_after=fail_after)
        try:
            run(fakes8, judge8, cache_b, batch_size=4)
        except NotImplementedYet:
            raise
        except AssertionError:
            raise
        except RuntimeError:
            pass
        else:
            fail(f"{name} finished although the judge failed after 25 calls: let the judge's exception propagate")
        no_hooks_left(model, f"{name} (after the judge failed)")
        big = [c for c in fakes8.gen_calls if c["n"] > 4]
        if big:
            if big[0]["batch_size"] <= 4:
                fail(f"with batch_size=4 generate_responses got {big[0]['n']} requests in one call: pass batch_size to"
                     " runner.map, so that each batch is cached as soon as it returns (a crash then loses one batch at most)")
            fail(f"with batch_size=4 generate_responses got {big[0]['n']} requests in one call: batch_size is ignored"
                 " (pass it to runner.map)")
        fakes9, judge9 = _PipeFakes(model, tokenizer), _pipe_judge()
        resumed = run(fakes9, judge9, cache_b, batch_size=4)
        check(fakes9.generated == 0,
              f"after the crash the rerun regenerated {fakes9.generated} finished responses: cache each generated batch")
        repeated = judge8.calls + judge9.calls - n_judge
        check(repeated == 0,
              f"after the judge failed at call {fail_after + 1}, the rerun repeated {repeated} finished judge call(s):"
              " cache every judge call as soon as it returns (runner.map_each), not the whole step at the end")
        check(resumed["records"] == records and close(torch.as_tensor(resumed["vectors"]), vectors)
              and resumed["steering"] == steering,
              "the resumed run returned different results from an uninterrupted run")

        # -- judge errors are retried by a rerun, refusals are not (and no coefficients: no steering) --
        error = JudgeScore(None, "error: HTTP 503 from the judge endpoint (injected by the test)")
        refusal = JudgeScore(None, "refusal: the judge declined to rate this answer (injected by the test)")
        trait_special = {"pos answer 0-0": error, "neg answer 1-0": refusal}
        coherence_special = {"neg answer 2-0": error, "pos answer 3-0": refusal}

        def flaky(special, kind):
            return lambda q, a: special.get(" ".join(a.split()[:3]), _pipe_scores(a)[kind])

        fakes10 = _PipeFakes(model, tokenizer)
        judge10 = FakeJudge(trait_fn=flaky(trait_special, 0), coherence_fn=flaky(coherence_special, 1))
        judge10.label = judge.label  # the same judge, having a bad minute
        first = run(fakes10, judge10, cache_c, n_questions=1, coefficients=())
        check(first.get("steering") == [] and fakes10.steered_items == 0,
              f"with coefficients=() there is nothing to steer: result['steering'] should be [] (got"
              f" {len(first.get('steering') or [])} records, {fakes10.steered_items} steered answers)")
        fakes11, judge11 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes11, judge11, cache_c, n_questions=1, coefficients=())
        if judge11.calls != 2:
            if judge11.calls == 0:
                fail("judge calls that failed (value None, reason 'error: ...') were cached, so a rerun never retries"
                     " them: cache only final results (runner.map_each(..., cache_if=is_final))")
            if judge11.calls == 4:
                fail("a rerun repeated 2 judge calls that had finished with a refusal: a refusal is a final result"
                     " (is_final), cache it; only errors are retried (cache_if=is_final)")
            fail(f"after a run in which 2 judge calls failed and 2 were refusals, the rerun made {judge11.calls} judge"
                 " calls; expected 2 (the failed ones): cache_if=is_final")

        # -- the same for the judge calls on the steered answers ------------------------------
        fakes12 = _PipeFakes(model, tokenizer)
        judge12 = FakeJudge(trait_fn=flaky({f"steered +1 {PIPE_EVAL[0].split()[0]}": error}, 0), coherence_fn=flaky({}, 1))
        judge12.label = judge.label
        run(fakes12, judge12, cache_d, n_questions=1, coefficients=[1])
        fakes13, judge13 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes13, judge13, cache_d, n_questions=1, coefficients=[1])
        if judge13.calls != 1:
            if judge13.calls == 0:
                fail("a judge call on a steered answer that failed (value None, reason 'error: ...') was cached, so a rerun"
                     " never retries it: judge the steered answers with cache_if=is_final too (one scoring function for"
                     " both judge steps)")
            fail(f"after a run in which 1 judge call on a steered answer failed, the rerun made {judge13.calls} judge calls;"
                 " expected 1 (the failed one): cache only final results (cache_if=is_final)")
    passed("test_run_trait_pipeline")


# ======================================================================================
# Exercise 4.5 -- trait_cosine_matrix
# ======================================================================================
def _cosines(v: dict[str, torch.Tensor], names: list[str], centre: bool = False) -> torch.Tensor:
    x = {k: t.double() for k, t in v.items()}
    if centre:
        mean = torch.stack(list(x.values())).mean(0)
        x = {k: t - mean for k, t in x.items()}
    return torch.tensor([[float(x[a] @ x[b] / (x[a].norm() * x[b].norm())) for b in names] for a in names], dtype=torch.float64)


def _sim_and_names(out, vectors, name: str):
    check(isinstance(out, tuple) and len(out) == 2, f"{name} should return a tuple (sim, names)")
    sim, names = out
    names = list(names)
    check(sorted(names) == sorted(vectors), f"{name}: names should be the dict's keys, got {names}")
    sim = expect_tensor(sim, Float[Tensor, "n_traits n_traits"], name, n_traits=len(vectors))
    return sim, names


def test_trait_cosine_matrix(trait_cosine_matrix) -> None:
    """Hand-built vectors with known cosines (1, 0, -1, 1/sqrt 2), then bfloat16 vectors (cosines
    to float32 precision). Input checks: the next test."""
    require_implemented(trait_cosine_matrix, "trait_cosine_matrix")
    name = "trait_cosine_matrix"
    vectors = {
        "evil": torch.tensor([2.0, 0.0, 0.0, 0.0]),
        "impolite": torch.tensor([3.0, 3.0, 0.0, 0.0]),
        "optimistic": torch.tensor([0.0, 0.0, 5.0, 0.0]),
        "apathetic": torch.tensor([-1.0, 0.0, 0.0, 0.0]),
    }
    sim, names = _sim_and_names(call(trait_cosine_matrix, vectors, name=name), vectors, name)
    sim = sim.double()
    want = _cosines(vectors, names)
    if not torch.allclose(sim, want, atol=1e-5):
        dots = torch.tensor([[float(vectors[a].double() @ vectors[b].double()) for b in names] for a in names], dtype=torch.float64)
        if torch.allclose(sim, dots, atol=1e-5):
            fail(f"{name} returned dot products: divide each vector by its norm first")
        if torch.allclose(sim, _cosines(vectors, names, centre=True), atol=1e-5):
            fail(f"{name} centred the vectors: trait vectors are differences of means already; do not subtract their mean")
        if torch.allclose(sim, want.abs(), atol=1e-5):
            fail(f"{name} returned |cosine|: keep the sign (opposite traits point in opposite directions)")
        order = list(vectors)
        if names != order and torch.allclose(sim, _cosines(vectors, order), atol=1e-5):
            fail(f"the rows of sim are not in the order of `names`: return the names in the order you stacked the vectors")
        fail(f"{name}: sim[i, j] should be the cosine of vectors[names[i]] and vectors[names[j]]; got\n{sim}\nexpected\n{want}")

    # bfloat16 vectors (as saved from a half-precision run): cosines computed in float32
    g = torch.Generator().manual_seed(4)
    half = {k: torch.randn(64, generator=g).to(torch.bfloat16) for k in ("evil", "sycophantic", "humorous", "optimistic", "impolite")}
    sim, names = _sim_and_names(call(trait_cosine_matrix, half, name=name), half, name)
    want = _cosines(half, names)
    err = float((sim.double() - want).abs().max())
    if err > 1e-4:
        if sim.dtype in (torch.bfloat16, torch.float16) or err > 1e-3:
            fail(f"{name} computed the cosines of bfloat16 vectors in bfloat16 (largest error {err:.1e}, returned"
                 f" {sim.dtype}): convert the vectors to float32 first (torch.stack(...).float())")
        fail(f"{name}: the cosines of bfloat16 vectors are off by up to {err:.1e}: compute them in float32")
    passed("test_trait_cosine_matrix")


def test_trait_cosine_matrix_input_checks(trait_cosine_matrix) -> None:
    """2-D vectors (all layers: pick one first), vectors of different sizes and vectors with no direction (zero, NaN,
    inf) are rejected with ValueError."""
    require_implemented(trait_cosine_matrix, "trait_cosine_matrix")
    for bad, what in [({"a": torch.ones(3, 4), "b": torch.ones(3, 4)}, "2-D vectors ([n_layers, d_model]): pick one layer first"),
                      ({"a": torch.ones(4), "b": torch.ones(5)}, "vectors of different sizes ([4] and [5])"),
                      ({"a": torch.zeros(4), "b": torch.ones(4)}, "a zero vector (it has no direction, hence no cosine)"),
                      ({"a": torch.tensor([1.0, float("nan"), 0.0, 2.0]), "b": torch.ones(4)}, "a vector holding NaN"),
                      ({"a": torch.tensor([1.0, float("inf"), 0.0, 2.0]), "b": torch.ones(4)}, "a vector holding inf")]:
        expect_value_error(trait_cosine_matrix, bad, name="trait_cosine_matrix", what=what)
    passed("test_trait_cosine_matrix_input_checks")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
