"""Exercise 4.1 — An activation steerer

Tests of ActivationSteerer: the three position modes on the tiny Qwen2 model (prefill, decoding, a
second prompt), tuple block outputs on a toy model, a bfloat16 model, hooks registered in __enter__
and removed (only the steerer's own) when the `with` block ends; then a property over fractional,
negative and zero coefficients, every mode, float32 and bfloat16 models and vectors. Its input
checks, with a property over valid coefficients (accepted) and malformed vectors (rejected).
"""

from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager

import torch

from part_tests._common import (
    _HOOK_DICTS,
    call,
    check,
    close,
    exercise,
    expect_value_error,
    fail,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
    tiny,
)
from part_tests.properties import coefficients, for_all, st
from part_tests.section4._fakes import (
    TINY_LAYER,
    _clean_afterwards,
    _coefficient_cause,
    _d_model,
    _layer_for,
    _not_implemented,
    _vector,
)


_EXTRA = type("_Extra", (), {"__doc__": "A marker standing in for the extra items of a tuple block output."})()


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


def _used_coefficient(delta: torch.Tensor, vector: torch.Tensor, tol: float) -> float | None:
    """The k for which delta [N, d] is k * vector at every row (None where no single k fits)."""
    v = vector.double().cpu()
    d = delta.double().cpu().reshape(-1, v.shape[0])
    if d.shape[0] == 0:
        return None
    ks = d @ v / (v @ v)
    k = float(ks.mean())
    return k if float((d - k * v).abs().max()) <= tol + 2 ** -7 * abs(k) * float(v.abs().max()) else None


def _other_change(delta, target, vector, pre, tol, coeff: float | None = None) -> str | None:
    """Name the change a steerer made instead of coeff * vector, where it matches a likely mistake."""
    if (_classify(delta, target - pre, tol) == 1).any():
        return "the hidden state was replaced by coeff * vector (h[...] = add): add it, h[...] + coeff * vector"
    if coeff is not None and coeff != int(coeff):
        for k in sorted({math.trunc(coeff), math.floor(coeff), math.ceil(coeff), round(coeff)} - {0}):
            if (_classify(delta, k * vector.float().cpu(), tol) == 1).any():
                return _coefficient_cause(coeff, float(k))
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
                why = _other_change(delta, target, vector, s["pre_copy"].float().cpu(), tol, coeff)
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
        if not close(delta, want, atol=1e-5):
            used = _used_coefficient(delta[:, want_positions], vector, 1e-4)
            why = _coefficient_cause(coeff, used) if used is not None else None
            fail(f"ActivationSteerer (positions={mode!r}) on a tuple block output: the hidden state (output[0]) did not change"
                 " by coeff * vector at the right positions" + (f": {why}" if why else ""))


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


def _steer_once(ActivationSteerer, model, vector, coeff, layer: int, mode: str, ids: torch.Tensor, what: str) -> dict:
    """One forward over `ids` with the student's steerer open: the record of block `layer` (an error becomes a failure)."""
    def run(end_forward):
        model(input_ids=ids)
        end_forward()

    try:
        steerer = call(ActivationSteerer, model, vector, coeff=coeff, layer=layer, positions=mode, name="ActivationSteerer")
        (rec,) = _record_forwards(model, run, layer, steerer, name=f"ActivationSteerer ({what})")
    except (AssertionError, NotImplementedError):
        raise
    except Exception as err:
        fail(f"ActivationSteerer raised {type(err).__name__} ({err}) with {what}: a coefficient may be fractional, negative"
             " or zero (only NaN and inf are refused), and the vector may be float32 or bfloat16")
    finally:
        remove_leftover_hooks(model)
    return rec


def _check_steerer_coefficients(ActivationSteerer, layer: int) -> None:
    """Property: for fractional, negative and zero coefficients, every position mode, a float32 or bfloat16 model and a
    float32 or bfloat16 vector, one prefill changes block `layer`'s output by exactly coeff * vector (computed here in
    float64) at the mode's positions and nowhere else, and the hidden state keeps the model's dtype."""
    dtypes = st.sampled_from([torch.float32, torch.bfloat16])
    name = lambda t: str(t).replace("torch.", "")  # noqa: E731

    def check_one(example):
        coeff, mode, model_dtype, vector_dtype = example
        model, _ = tiny("tiny-qwen2", model_dtype)
        remove_leftover_hooks(model)
        ids = _tiny_ids(model, (2, 4), 13)
        vector = _vector(_d_model(model), 7, 3.0).to(vector_dtype)
        what = f"coeff={coeff:g}, positions={mode!r}, a {name(model_dtype)} model and a {name(vector_dtype)} vector"
        rec = _steer_once(ActivationSteerer, model, vector, coeff, layer, mode, ids, what)
        new = _copy_hidden(rec.get("post_raw"))
        check(new is not None and new.dtype == model_dtype,
              f"ActivationSteerer ({what}) returned a {getattr(new, 'dtype', None)} hidden state: keep the model's dtype,"
              " (coeff * vector).to(h.dtype)")
        pre = rec["pre_copy"].double().cpu()
        delta = new.double().cpu() - pre
        want = torch.zeros_like(delta)
        steered = slice(None) if mode != "response" else slice(-1, None)
        want[:, steered] = coeff * vector.double().cpu()
        allowed = torch.full_like(delta, 1e-4 * max(1.0, float(pre.abs().max())) + 1e-4)
        if model_dtype == torch.bfloat16 or vector_dtype == torch.bfloat16:  # one bfloat16 rounding of the change or the sum
            allowed += 2 ** -7 * (want.abs() + (pre.abs() if model_dtype == torch.bfloat16 else 0)) + 1e-3
        err = (delta - want).abs()
        if bool((err <= allowed).all()):
            return
        off = torch.ones(delta.shape[1], dtype=torch.bool)
        off[steered] = False
        if bool((delta[:, off].abs() > allowed[:, off]).any()):
            fail(f"ActivationSteerer ({what}) changed positions that mode {mode!r} leaves alone")
        used = _used_coefficient(delta[:, steered], vector, float(allowed.max()))
        why = _coefficient_cause(coeff, used) if used is not None else None
        fail(f"ActivationSteerer ({what}): block {layer}'s output did not change by coeff * vector at the steered positions"
             + (f": {why}" if why else f" (largest difference {float(err.max()):.3g})"))

    try:
        for_all(st.tuples(coefficients(), st.sampled_from(["all", "prompt", "response"]), dtypes, dtypes), check_one,
                name="ActivationSteerer over fractional, negative and zero coefficients", examples=6)
    finally:
        for dtype in (torch.float32, torch.bfloat16):
            remove_leftover_hooks(tiny("tiny-qwen2", dtype)[0])


@exercise("4.1", "ActivationSteerer")
def test_activation_steerer(ActivationSteerer, model=None, tokenizer=None) -> None:
    """The steerer's behaviour (its input checks are test_activation_steerer_input_checks): nothing
    registered before `with`; the three position modes on the tiny Qwen2 model (prefill, decoding,
    a second prompt); tuple block outputs on a toy model; in-place edits; a bfloat16 model; hooks
    removed when the block raises, and only the steerer's own (other hooks and an outer steerer
    survive); then a property over fractional, negative and zero coefficients, every mode, and
    float32 / bfloat16 models and vectors."""
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
            _check_steerer_coefficients(ActivationSteerer, TINY_LAYER)
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


@exercise("4.1", "ActivationSteerer")
def test_activation_steerer_input_checks(ActivationSteerer, model=None, tokenizer=None) -> None:
    """A vector that is not [d_model] or not finite, an unknown `positions` and a coeff that is not
    finite are rejected with ValueError, and no hook is left behind; properties: every finite coeff
    (fractional, negative, zero, an int) is accepted, and malformed vectors drawn at random are refused."""
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
        _check_valid_coefficients_accepted(ActivationSteerer, model, layer)
        _check_bad_vectors_rejected(ActivationSteerer, model, layer)
    passed("test_activation_steerer_input_checks")


def _check_valid_coefficients_accepted(ActivationSteerer, model, layer: int) -> None:
    """Property: every finite coefficient is accepted -- fractional, negative, zero, a Python int (the notebook's
    coefficients are ints) -- and leaves no hook behind."""
    d = _d_model(model)

    def check_one(coeff):
        try:
            _enter_with_coeff(ActivationSteerer, model, _vector(d, 8, 2.0), coeff, layer)
        except NotImplementedError:
            raise
        except Exception as err:
            fail(f"ActivationSteerer raised {type(err).__name__} ({err}) for coeff={coeff!r} (a Python {type(coeff).__name__}):"
                 " every finite coefficient is valid -- negative (steer away from the trait), 0 (unsteered), fractional,"
                 " int or float; refuse only NaN and inf")
        no_hooks_left(model, f"ActivationSteerer (coeff={coeff!r})")

    for_all(st.one_of(coefficients(), st.integers(-5, 5)), check_one, name="ActivationSteerer's input checks", examples=6)


def _bad_vectors(d: int, k: int, at: int) -> list[tuple[torch.Tensor, str]]:
    shapes = [(torch.ones(n), f"a vector of shape [{n}] (d_model is {d})") for n in (d + k, d - k)]
    return shapes + [(torch.ones(k, d), f"a vector of shape [{k}, {d}] (it must be [d_model])")] + [
        (torch.ones(d).index_fill(0, torch.tensor([at]), float(bad)), f"a vector holding {bad} (at index {at})")
        for bad in ("nan", "inf", "-inf")]


def _check_bad_vectors_rejected(ActivationSteerer, model, layer: int) -> None:
    """Property: vectors of other sizes and shapes, and vectors with NaN, inf or -inf anywhere, are refused with
    ValueError and leave no hook."""
    d = _d_model(model)

    def check_one(example):
        for vector, what in _bad_vectors(d, *example):
            expect_value_error(_construct_and_enter, ActivationSteerer, model, vector, "all", layer, name="ActivationSteerer",
                               what=what)
            no_hooks_left(model, "ActivationSteerer (after a ValueError)")

    for_all(st.tuples(st.integers(1, 3), st.integers(0, d - 1)), check_one, name="ActivationSteerer's input checks",
            examples=3)


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
