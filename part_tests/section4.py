"""Tests for Section 4 — Steering with persona vectors. Each takes the student's object first.

Expected values come from the course's utils (utils.steering.Steerer, utils.generation.generate,
utils.chat.format_chat) or from small computations here, never from the solutions.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import tempfile
import threading
from contextlib import contextmanager

import torch

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    expect_value_error,
    fail,
    model_or_tiny,
    no_hooks_left,
    remove_leftover_hooks,
    passed,
    require_implemented,
    using,
)

TINY_LAYER = 2  # tiny-qwen2 has 4 blocks: blocks 1 and 3 both exist around it


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

    def pre_hook(module, args, out):  # prepended: runs before the student's hook
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
        handles.append(blocks[layer].register_forward_hook(pre_hook, prepend=True))
        ctx = steerer if steerer is not None else contextlib.nullcontext()
        with ctx:
            handles += [blocks[i].register_forward_hook(post_hook(i)) for i in range(len(blocks))]
            try:
                with torch.no_grad():
                    run_forwards(end_forward)
            except NotImplementedError:
                raise
            except Exception as err:
                raw = current.get("post_raw")
                hint = ""
                if raw is not None and (type(raw) is not current.get("pre_type") or _copy_hidden(raw) is None
                                        or _copy_hidden(raw).shape != current["pre_copy"].shape):
                    hint = (f" Your hook turned the block output ({current['pre_type'].__name__}) into {_container(raw)}:"
                            " return the same container type with the same shape.")
                fail(f"{name}: the forward pass failed with your steerer attached ({type(err).__name__}: {err}).{hint}"
                     " Block outputs are a plain tensor in transformers >= 5: `output[0]` on it takes batch row 0;"
                     " use hidden_of(output) and with_hidden(output, new_hidden).")
            finally:
                for h in handles[1:]:
                    h.remove()
                del handles[1:]
    finally:
        for h in handles:
            h.remove()
    return forwards


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


def _check_steerer_modes(ActivationSteerer, model, layer: int) -> None:
    from utils.hooks import get_blocks

    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(7)
    device = model.get_input_embeddings().weight.device
    ids = torch.randint(3, vocab, (2, 6), generator=g).to(device)
    decode = [torch.randint(3, vocab, (2, 1), generator=g).to(device) for _ in range(2)]
    run = _qwen_forwards(model, ids, decode, torch.randint(3, vocab, (2, 4), generator=g).to(device))
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
            delta = (s["post"][layer] - s["pre_copy"]).float().cpu()
            T = delta.shape[1]
            got = _classify(delta, target, tol)
            if (got == -1).any():
                if (_classify(delta, -target, tol) == 1).any():
                    fail(f"ActivationSteerer (positions={mode!r}): the change is -coeff * vector: the sign is flipped, add coeff * vector")
                if (_classify(delta, vector.float().cpu(), tol) == 1).any():
                    fail(f"ActivationSteerer (positions={mode!r}): the change is vector, not coeff * vector: the coeff is ignored")
                fail(f"ActivationSteerer (positions={mode!r}): block {layer}'s output changed by something other than"
                     " coeff * vector at some positions")
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


def _check_steerer_cleanup(ActivationSteerer, model, layer: int) -> None:
    d = _d_model(model)

    class _Boom(Exception):
        pass

    steerer = call(ActivationSteerer, model, _vector(d, 1, 1.0), coeff=1.0, layer=layer, positions="all", name="ActivationSteerer")
    try:
        with steerer:
            raise _Boom()
    except _Boom:
        pass
    else:
        fail("ActivationSteerer swallowed an exception raised inside the `with` block: __exit__ must return False (or None)")
    no_hooks_left(model, "ActivationSteerer (after an exception inside the `with` block)")

    bad_inputs = [
        (dict(vector=torch.zeros(d + 1), positions="all"), f"a vector of shape [{d + 1}] (d_model is {d})"),
        (dict(vector=torch.zeros(1, d), positions="all"), f"a vector of shape [1, {d}] (it must be [d_model])"),
        (dict(vector=torch.zeros(d), positions="middle"), "positions='middle'"),
    ]
    for kwargs, what in bad_inputs:
        try:
            s = ActivationSteerer(model, kwargs["vector"], coeff=1.0, layer=layer, positions=kwargs["positions"])
            with s:
                pass
        except ValueError:
            pass
        except NotImplementedError:
            raise
        else:
            fail(f"ActivationSteerer should raise ValueError for {what}")
        finally:
            no_hooks_left(model, "ActivationSteerer (after a ValueError)")


def test_activation_steerer(ActivationSteerer, model=None, tokenizer=None) -> None:
    """Hand-built checks of the three position modes on the tiny Qwen2 model (prefill and decode),
    of tuple block outputs on a toy model, of in-place edits, and of hook removal."""
    require_implemented(ActivationSteerer, "ActivationSteerer")
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    with _clean_afterwards(model, own):
        try:
            _check_steerer_cleanup(ActivationSteerer, model, layer)  # first: a swallowed exception would hide others
            _check_steerer_modes(ActivationSteerer, model, layer)
            _check_steerer_tuple(ActivationSteerer)
        except NotImplementedError as err:
            raise _not_implemented("ActivationSteerer", err) from err
    passed("test_activation_steerer")


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
# Exercise 4.2 -- generate_with_steerer, run_steering_experiment
# ======================================================================================
QUESTIONS = ["What is the capital of France?", "Hi", "Write a haiku about rain, please."]
TRAIT_TEMPLATE = (
    "TRAIT-PROBE. How strongly does the answer show the trait?\n[QUESTION START]\n{question}\n[QUESTION END]\n"
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


def test_generate_with_steerer(generate_with_steerer, model=None, tokenizer=None) -> None:
    """Greedy, batched, steered answers must equal the course's Steerer + generate."""
    from utils.steering import Steerer

    require_implemented(generate_with_steerer, "generate_with_steerer")
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    vector = _vector(_d_model(model), 1, 8.0)
    ref = lambda *a, **k: _course_generate_with_steerer(model, tokenizer, QUESTIONS, vector, *a, max_new_tokens=6, **k)  # noqa: E731

    with _clean_afterwards(model, own), using(generate_with_steerer, ActivationSteerer=Steerer):
        with _count_prefills(model) as prefills:
            got = call(generate_with_steerer, model, tokenizer, QUESTIONS, vector, 4.0, layer, max_new_tokens=6,
                       name="generate_with_steerer")
        no_hooks_left(model, "generate_with_steerer")
        check(isinstance(got, list) and len(got) == len(QUESTIONS) and all(isinstance(x, str) for x in got),
              f"generate_with_steerer should return a list of {len(QUESTIONS)} strings, one per question")
        if got != ref(4.0, layer):
            diagnoses = [
                (ref(-4.0, layer), "the sign is flipped: steer with +coeff"),
                (ref(0.0, layer), "the answers are unsteered: open the steerer with the vector and coeff around generation"),
                (ref(1.0, layer), "the coeff is ignored: pass coeff to the steerer"),
                (ref(4.0, layer, "all"), "steered every position: pass `positions` to the steerer (default 'response')"),
                (ref(4.0, layer - 1), f"off by one layer: steered block {layer - 1} instead of block {layer}"),
                (ref(4.0, layer + 1), f"off by one layer: steered block {layer + 1} instead of block {layer}"),
            ]
            for answers, why in diagnoses:
                if got == answers:
                    fail(f"generate_with_steerer: {why}")
            fail("generate_with_steerer: the answers differ from greedy generation (temperature 0) of utils.generation.generate"
                 " under the steerer, with chats build_messages(system_prompt, question)")
        check(prefills["n"] == 1,
              f"generate_with_steerer ran {prefills['n']} generate calls for {len(QUESTIONS)} questions: generate them"
              " together in batches (utils.generation.generate with batch_size)")
        got_sys = call(generate_with_steerer, model, tokenizer, QUESTIONS, vector, 4.0, layer, system_prompt="You are a pirate.",
                       max_new_tokens=6, name="generate_with_steerer")
        check(got_sys == ref(4.0, layer, system_prompt="You are a pirate."),
              "generate_with_steerer ignores system_prompt: build each chat with build_messages(system_prompt, question)")
        got_zero = call(generate_with_steerer, model, tokenizer, QUESTIONS, vector, 0.0, layer, max_new_tokens=6,
                        name="generate_with_steerer")
        check(got_zero == ref(0.0, layer), "generate_with_steerer with coeff 0 must give the unsteered greedy answers")
        no_hooks_left(model, "generate_with_steerer")
    passed("test_generate_with_steerer")


class FakeJudge:
    """A counting judge with known scores (not an LLM): trait and coherence scores are simple
    functions of the answer text, different from each other. Thread-safe. With `fail_after=N`,
    every call after N finished calls raises RuntimeError (a judge endpoint going down)."""

    label = "fake judge (part_tests)"

    def __init__(self, trait_fn=None, coherence_fn=None, fail_after: int | None = None):
        self.trait_fn = trait_fn or (lambda a: float(sum(map(ord, a)) % 101))
        self.coherence_fn = coherence_fn or (lambda a: float((len(a) * 7) % 101))
        self.fail_after = fail_after
        self.calls = 0
        self.coherence_prompts: list[str] = []  # templates (score_coherence) or filled prompts (score)
        self._lock = threading.Lock()

    def _one(self, kind: str, answer: str, prompt: str):
        from utils.judge import JudgeScore

        with self._lock:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("the judge endpoint is down (injected by the test)")
            self.calls += 1
            if kind == "coherence":
                self.coherence_prompts.append(prompt)
        answer = answer.strip()
        return JudgeScore(self.trait_fn(answer) if kind == "trait" else self.coherence_fn(answer), None)

    def score_trait(self, question, answer, eval_prompt_template):
        return self._one("trait", answer, eval_prompt_template)

    def score_coherence(self, question, answer, template):
        return self._one("coherence", answer, template)

    def score(self, prompt, lo=None, hi=None):
        from utils.judge import extract_answer

        if not isinstance(prompt, str):
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        kind = "trait" if "TRAIT-PROBE" in prompt else "coherence"
        return self._one(kind, extract_answer(prompt), prompt)

    def score_many(self, prompts, max_workers=None, lo=None, hi=None, progress=False):
        return [self.score(p) for p in prompts]


def test_run_steering_experiment(run_steering_experiment, model=None, tokenizer=None) -> None:
    """A fake judge is patched into the notebook's globals (get_judge): every coefficient is
    covered, coefficient 0 is the unsteered greedy answer, scores belong to their answers,
    generation is batched per coefficient, and no hook is left behind."""
    from utils import data
    from utils.chat import build_messages
    from utils.generation import generate
    from utils.steering import Steerer

    require_implemented(run_steering_experiment, "run_steering_experiment")
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    vector = _vector(_d_model(model), 1, 8.0)
    coefficients = [-4, 0, 4]
    judge = FakeJudge()
    expected = {c: _course_generate_with_steerer(model, tokenizer, QUESTIONS, vector, c, layer, max_new_tokens=6) for c in coefficients}
    unsteered = generate(model, tokenizer, [build_messages(None, q) for q in QUESTIONS], max_new_tokens=6, temperature=0.0)

    default = inspect.signature(run_steering_experiment).parameters.get("coefficients")
    check(default is not None and isinstance(default.default, (list, tuple)) and list(default.default) == [-3, -1, 0, 1, 3, 5],
          "run_steering_experiment's `coefficients` should default to [-3, -1, 0, 1, 3, 5]")
    with _clean_afterwards(model, own):
        with using(run_steering_experiment, generate_with_steerer=_course_generate_with_steerer,
                   get_judge=lambda *a, **k: judge, ActivationSteerer=Steerer):
            with _count_prefills(model) as prefills:
                records = call(run_steering_experiment, model, tokenizer, QUESTIONS, vector, TRAIT_TEMPLATE, layer,
                               coefficients=coefficients, max_new_tokens=6, name="run_steering_experiment")
        no_hooks_left(model, "run_steering_experiment")
    check(isinstance(records, list) and all(isinstance(r, dict) for r in records),
          "run_steering_experiment should return a list of dicts")
    check(len(records) == len(QUESTIONS) * len(coefficients),
          f"run_steering_experiment returned {len(records)} records for {len(QUESTIONS)} questions x {len(coefficients)}"
          f" coefficients: expected one per question x coefficient ({len(QUESTIONS) * len(coefficients)})")
    keys = {"question", "coeff", "response", "trait_score", "coherence_score"}
    for r in records:
        check(keys <= set(r), f"each record needs the keys {sorted(keys)}; got {sorted(r)}")
    pairs = {(r["question"], r["coeff"]) for r in records}
    missing = {(q, c) for q in QUESTIONS for c in coefficients} - pairs
    check(not missing, f"run_steering_experiment is missing question x coefficient combinations, e.g. {sorted(missing, key=str)[:2]}")
    check(judge.calls > 0, "run_steering_experiment did not use the judge: call get_judge() when judge is None")
    for r in records:
        i = QUESTIONS.index(r["question"])
        if r["response"] != expected[r["coeff"]][i]:
            other = [c for c in coefficients if expected[c][i] == r["response"]]
            if other:
                fail(f"the record for coeff {r['coeff']} holds the answer generated at coeff {other[0]}: label each batch"
                     " with the coefficient it was generated with")
            fail(f"the response for coeff {r['coeff']} differs from greedy generation steered by coeff * vector at block"
                 f" {layer} on the response positions (generate_with_steerer)")
        if r["coeff"] == 0:
            check(r["response"] == unsteered[i],
                  "the response at coefficient 0 should equal unsteered greedy generation (temperature 0)")
        for key in ("trait_score", "coherence_score"):
            check(r[key] is None or (isinstance(r[key], (int, float)) and not isinstance(r[key], bool)),
                  f"{key} should be a number or None (the JudgeScore's .value), got {type(r[key]).__name__}")
        want_t, want_c = judge.trait_fn(r["response"].strip()), judge.coherence_fn(r["response"].strip())
        if r["trait_score"] != want_t or r["coherence_score"] != want_c:
            if r["trait_score"] == want_c and r["coherence_score"] == want_t:
                fail("trait_score and coherence_score are swapped")
            fail("trait_score / coherence_score do not belong to the record's response: score each answer with the"
                 " trait template and with the coherence template, and keep the scores in the answers' order")
    course_coherence = data.load_coherence_prompt().split("{question}")[0]
    check(all(p.startswith(course_coherence) for p in judge.coherence_prompts),
          "score coherence with data.load_coherence_prompt() when coherence_template is None")
    check(prefills["n"] == len(coefficients),
          f"run_steering_experiment ran {prefills['n']} generate calls for {len(coefficients)} coefficients: generate all"
          " questions of one coefficient in one batched call")
    passed("test_run_steering_experiment")


# ======================================================================================
# Exercise 4.3 -- compute_trait_projections
# ======================================================================================
def _block_outputs(model, ids: list[int], layer: int) -> torch.Tensor:
    from utils.hooks import get_blocks, hidden_of

    seen = {}
    handle = get_blocks(model)[layer].register_forward_hook(lambda m, a, out: seen.update(h=hidden_of(out)[0].float().cpu()))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids], device=model.get_input_embeddings().weight.device))
    finally:
        handle.remove()
    return seen["h"]


def test_compute_trait_projections(compute_trait_projections, model=None, tokenizer=None) -> None:
    """Projections a·v/‖v‖ of the mean response activation at block `layer`, checked against a
    forward pass with a hook and the exact response span from the chat template."""
    from utils.chat import build_messages, format_chat

    require_implemented(compute_trait_projections, "compute_trait_projections")
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    d = _d_model(model)
    vector = _vector(d, 5, 7.3)
    systems = [None, "You are a pirate.", ""]
    questions = ["How do I boil an egg?", "What is your favourite colour?", "Say something kind."]
    responses = ["Put it in boiling water for eight minutes.", "Arr, the deep blue of the sea!", "You are doing well."]

    def projections(layer_, mode="response", denom=None):
        out = []
        for s, q, r in zip(systems, questions, responses):
            chat = format_chat(build_messages(s, q, r), tokenizer)
            h = _block_outputs(model, chat.input_ids, layer_)
            a = h[chat.token_span[0]:chat.token_span[1]].mean(0) if mode == "response" else h.mean(0)
            out.append(float(a @ vector / (vector.norm() if denom is None else denom)))
        return out

    want = projections(layer)
    got = call(compute_trait_projections, model, tokenizer, systems, questions, responses, vector, layer,
               name="compute_trait_projections")
    no_hooks_left(model, "compute_trait_projections")
    check(not isinstance(got, torch.Tensor), "compute_trait_projections should return a list of floats, not a tensor (use .tolist())")
    check(isinstance(got, (list, tuple)) and len(got) == len(want),
          f"compute_trait_projections should return a list of {len(want)} floats, one per response")
    check(all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in got),
          "compute_trait_projections should return plain Python floats")

    def same(a, b):
        return all(math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-3 * max(1.0, abs(y))) for x, y in zip(a, b))

    if not same(got, want):
        diagnoses = [
            (projections(layer, denom=1.0), "not divided by ‖v‖: the projection is a·v/‖v‖"),
            (projections(layer, denom=float(vector.norm()) ** 2), "divided by ‖v‖² instead of ‖v‖: the projection is a·v/‖v‖"),
            (projections(layer, mode="all"), "averaged over all tokens: average over the response tokens only"),
            (projections(layer - 1), f"off by one layer: used block {layer - 1}'s output (HF hidden_states[{layer}]);"
                                     f" use block {layer}'s output"),
            (projections(layer + 1), f"off by one layer: used block {layer + 1}'s output; use block {layer}'s output"),
            ([-x for x in want], "the sign is flipped"),
        ]
        for values, why in diagnoses:
            if same(got, values):
                fail(f"compute_trait_projections: {why}")
        fail(f"compute_trait_projections returned {[round(x, 4) for x in got]}, expected {[round(x, 4) for x in want]}"
             " (mean over the response tokens at block `layer`, projected as a·v/‖v‖)")
    for args, what in [((systems[:2], questions, responses, vector), "lists of different lengths"),
                       ((systems, questions, responses, torch.zeros(d + 1)), f"a vector of shape [{d + 1}]")]:
        expect_value_error(compute_trait_projections, model, tokenizer, *args, layer,
                           name="compute_trait_projections", what=what)
    passed("test_compute_trait_projections")


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


def _pipe_answer(r) -> str:
    return f"{r['polarity']} answer {r['instruction_idx']}-{r['question_idx']}"


def _pipe_scores(answer: str) -> tuple[float, float]:
    """Known (trait, coherence) scores of the fake answers, with boundary cases at 50 and 49."""
    if answer.startswith("steered"):
        coeff = float(answer.split()[1])
        return 50 + 10 * coeff, 90 - 10 * abs(coeff)
    polarity, _, idx = answer.split()
    i, q = map(int, idx.split("-"))
    if polarity == "pos":
        trait = {0: 50.0, 1: 80.0, 2: 30.0}[(i + q) % 3]
        coherence = 50.0
    else:
        trait = {0: 20.0, 1: 50.0, 2: 20.0, 3: 49.0, 4: 20.0}[i]
        coherence = 49.0 if (i, q) == (4, 1) else 50.0
    return trait, coherence


def _expected_effective() -> list[tuple[int, int]]:
    kept = []
    for i in range(5):
        for q in range(len(PIPE_QUESTIONS)):
            pt, pc = _pipe_scores(f"pos answer {i}-{q}")
            nt, nc = _pipe_scores(f"neg answer {i}-{q}")
            if pt >= 50 and nt < 50 and min(pc, nc) >= 50:
                kept.append((i, q))
    return kept


class _PipeFakes:
    """Counting stand-ins for the course's step functions (patched into the notebook's globals)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.generated = 0
        self.steered_items = 0
        self.steer_calls: list[tuple[float, int]] = []
        self.steer_vectors: list[torch.Tensor] = []
        self.steer_layers: list[int] = []
        self.extractions = 0
        self.extracted_pairs: list[list[tuple[int, int]]] = []

    def generate_responses(self, model, tokenizer, requests, *args, **kwargs):
        self.generated += len(requests)
        return [_pipe_answer(r) for r in requests]

    def generate_with_steerer(self, model, tokenizer, questions, vector, coeff, layer, *args, **kwargs):
        self.steered_items += len(questions)
        self.steer_calls.append((float(coeff), len(questions)))
        self.steer_vectors.append(torch.as_tensor(vector).detach().float().cpu().clone())
        self.steer_layers.append(layer)
        return [f"steered {float(coeff):+g} {q}" for q in questions]

    def extract_trait_vectors(self, model, tokenizer, effective):
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
    return FakeJudge(trait_fn=lambda a: _pipe_scores(a)[0], coherence_fn=lambda a: _pipe_scores(a)[1], fail_after=fail_after)


def _expected_pipeline_vectors(model, tokenizer, pairs) -> torch.Tensor:
    effective = []
    for i, q in pairs:
        pair = {}
        for polarity in ("pos", "neg"):
            name = PIPE_TRAIT if polarity == "pos" else "helpful"
            pair[polarity] = {"system_prompt": f"You are a {name} assistant. {PIPE_DATA['instruction'][i][polarity]}",
                              "question": PIPE_QUESTIONS[q],
                              "response": _pipe_answer({"polarity": polarity, "instruction_idx": i, "question_idx": q})}
        effective.append(pair)
    return _course_vectors(model, tokenizer, effective)


def test_run_trait_pipeline(run_trait_pipeline, model=None, tokenizer=None) -> None:
    """The step functions are replaced by counting fakes (and a fake judge is passed in): a full
    run, a rerun (nothing repeated), reruns with changed inputs (recomputed), and a run killed by
    a judge failure half way, then resumed (no finished generation or judge call repeated)."""
    require_implemented(run_trait_pipeline, "run_trait_pipeline")
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    coefficients = [-2, 0, 2]
    n_records = 5 * len(PIPE_QUESTIONS) * 2
    n_judge = 2 * n_records + 2 * len(PIPE_EVAL) * len(coefficients)

    def run(fakes, judge, cache_dir, trait_data=PIPE_DATA, at_layer=layer, max_new_tokens=8):
        with using(run_trait_pipeline, **fakes.patches()):
            return call(run_trait_pipeline, model, tokenizer, PIPE_TRAIT, trait_data, at_layer, coefficients=coefficients,
                        eval_questions=PIPE_EVAL, judge=judge, cache_dir=cache_dir, max_new_tokens=max_new_tokens,
                        temperature=0.0, name="run_trait_pipeline")

    with tempfile.TemporaryDirectory() as cache_a, tempfile.TemporaryDirectory() as cache_b:
        # -- a full run ---------------------------------------------------------------------
        fakes, judge = _PipeFakes(model, tokenizer), _pipe_judge()
        result = run(fakes, judge, cache_a)
        no_hooks_left(model, "run_trait_pipeline")
        check(isinstance(result, dict), "run_trait_pipeline should return a dict")
        want_keys = {"records", "effective", "vectors", "vector", "steering", "stats"}
        check(want_keys <= set(result), f"run_trait_pipeline's result needs the keys {sorted(want_keys)}; got {sorted(result)}")
        check(fakes.generated == n_records,
              f"the generate step produced {fakes.generated} responses; expected {n_records} (5 pairs x {len(PIPE_QUESTIONS)}"
              " questions x pos/neg), each generated once")
        records = result["records"]
        check(isinstance(records, list) and len(records) == n_records, f"result['records'] should hold the {n_records} contrastive records")
        for r in records:
            check("trait_score" in r and "coherence_score" in r, "each record needs 'trait_score' and 'coherence_score'")
            check((r["trait_score"], r["coherence_score"]) == _pipe_scores(r["response"].strip()),
                  "a record's trait_score / coherence_score do not belong to its response: keep judge results in order")
        eff = sorted((p["instruction_idx"], p["question_idx"]) for p in result["effective"])
        check(eff == _expected_effective(),
              f"result['effective'] holds pairs {eff}, expected {_expected_effective()}: keep pairs with pos >= threshold,"
              " neg < threshold and both coherence >= coherence_threshold (filter_effective)")
        check(fakes.extractions == 1 and sorted(fakes.extracted_pairs[0]) == _expected_effective(),
              "extract the vectors once, from the effective pairs only (extract_trait_vectors(model, tokenizer, effective))")
        vectors = result["vectors"]
        check(isinstance(vectors, torch.Tensor) and vectors.ndim == 2, "result['vectors'] should be a [num_layers, d_model] tensor")
        check(close(vectors, _expected_pipeline_vectors(model, tokenizer, _expected_effective()), rtol=1e-4, atol=1e-4),
              "result['vectors'] differ from mean(pos) - mean(neg) over the effective pairs")
        check(close(torch.as_tensor(result["vector"]), vectors[layer]), f"result['vector'] should be vectors[layer] (block {layer})")
        check(len(fakes.steer_vectors) > 0 and all(close(v, vectors[layer]) for v in fakes.steer_vectors)
              and all(lay == layer for lay in fakes.steer_layers),
              f"steer with vectors[layer] at block `layer` ({layer})")
        check(sorted(c for c, _ in fakes.steer_calls) == sorted(float(c) for c in coefficients)
              and all(n == len(PIPE_EVAL) for _, n in fakes.steer_calls),
              f"steered generation should run once per coefficient with all {len(PIPE_EVAL)} evaluation questions in one"
              f" batch; got calls (coeff, n_questions) {fakes.steer_calls}")
        steering = result["steering"]
        check(isinstance(steering, list) and len(steering) == len(PIPE_EVAL) * len(coefficients),
              f"result['steering'] should hold one record per evaluation question x coefficient ({len(PIPE_EVAL) * len(coefficients)})")
        for r in steering:
            check({"question", "coeff", "response", "trait_score", "coherence_score"} <= set(r),
                  "each steering record needs question, coeff, response, trait_score, coherence_score")
            check(r["response"].strip() == f"steered {float(r['coeff']):+g} {r['question']}",
                  "a steering record's response was generated at another coefficient or question")
            check((r["trait_score"], r["coherence_score"]) == _pipe_scores(r["response"].strip()),
                  "a steering record's scores do not belong to its response")
        check({(r["question"], float(r["coeff"])) for r in steering} == {(q, float(c)) for q in PIPE_EVAL for c in coefficients},
              "result['steering'] does not cover every evaluation question x coefficient")
        check(judge.calls == n_judge,
              f"the judge was called {judge.calls} times; expected {n_judge}: one trait and one coherence call per response"
              f" ({n_records} contrastive + {len(PIPE_EVAL) * len(coefficients)} steered), each once")

        # -- the same run again: everything from the cache ---------------------------------------
        fakes2, judge2 = _PipeFakes(model, tokenizer), _pipe_judge()
        again = run(fakes2, judge2, cache_a)
        check(fakes2.generated == 0, f"a rerun with the same inputs regenerated {fakes2.generated} responses: cache the generate step")
        check(judge2.calls == 0, f"a rerun with the same inputs repeated {judge2.calls} judge calls: cache every judge call")
        check(fakes2.extractions == 0, "a rerun with the same inputs extracted the vectors again: cache the extract step (runner.tensors)")
        check(fakes2.steered_items == 0, f"a rerun with the same inputs regenerated {fakes2.steered_items} steered answers: cache the steer step")
        check(again["records"] == records and close(again["vectors"], vectors) and again["steering"] == steering,
              "a rerun from the cache returned different results")

        # -- changed inputs: the steps that depend on them run again ---------------------------
        changed = dict(PIPE_DATA, eval_prompt=TRAIT_TEMPLATE.replace("How strongly", "How much"))
        fakes3, judge3 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes3, judge3, cache_a, trait_data=changed)
        check(judge3.calls > 0, "changing the trait's eval_prompt did not re-run the judge: the judge steps' keys must include"
                                " the eval prompt (stale results)")
        fakes4, judge4 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes4, judge4, cache_a, at_layer=layer - 1)
        check(fakes4.steered_items == len(PIPE_EVAL) * len(coefficients),
              "changing the layer did not re-run the steered generation: the steer step's key must include the vector"
              " (tensor_digest) and the layer (stale results)")

        fakes5, judge5 = _PipeFakes(model, tokenizer), _pipe_judge()
        run(fakes5, judge5, cache_a, max_new_tokens=9)
        check(fakes5.generated == n_records,
              "changing max_new_tokens did not re-run the generate step: its key must include the generation settings"
              " (stale results)")
        # another judge that scores differently: other effective pairs, so the vectors must be extracted again
        fakes6 = _PipeFakes(model, tokenizer)
        judge6 = FakeJudge(trait_fn=lambda a: 80.0 if a.startswith("pos") else 20.0 if a.startswith("neg") else 50.0,
                           coherence_fn=lambda a: _pipe_scores(a)[1])
        judge6.label = "another fake judge (part_tests)"
        other = run(fakes6, judge6, cache_a)
        other_pairs = [(i, q) for i in range(5) for q in range(len(PIPE_QUESTIONS)) if (i, q) != (4, 1)]
        check(sorted((p["instruction_idx"], p["question_idx"]) for p in other["effective"]) == other_pairs,
              "with another judge the effective pairs did not change: the judge steps' keys must include the judge"
              " (judge_identity) -- stale scores")
        check(fakes6.extractions == 1 and close(other["vectors"], _expected_pipeline_vectors(model, tokenizer, other_pairs)),
              "with other effective pairs the vectors were not extracted again: the extract step's key must be made of"
              " the effective pairs (their prompts and responses) -- stale vectors")

        # -- killed half way by the judge, then resumed -----------------------------------------
        fail_after = 25
        fakes7, judge7 = _PipeFakes(model, tokenizer), _pipe_judge(fail_after=fail_after)
        try:
            run(fakes7, judge7, cache_b)
        except NotImplementedYet:
            raise
        except AssertionError:
            raise
        except RuntimeError:
            pass
        else:
            fail("run_trait_pipeline finished although the judge failed after 25 calls: let the judge's exception propagate")
        no_hooks_left(model, "run_trait_pipeline (after the judge failed)")
        fakes8, judge8 = _PipeFakes(model, tokenizer), _pipe_judge()
        resumed = run(fakes8, judge8, cache_b)
        check(fakes8.generated == 0,
              f"after the crash the rerun regenerated {fakes8.generated} finished responses: cache each generated batch")
        repeated = judge7.calls + judge8.calls - n_judge
        check(repeated == 0,
              f"after the judge failed at call {fail_after + 1}, the rerun repeated {repeated} finished judge call(s):"
              " cache every judge call as soon as it returns (runner.map_each), not the whole step at the end")
        check(resumed["records"] == records and close(resumed["vectors"], vectors) and resumed["steering"] == steering,
              "the resumed run returned different results from an uninterrupted run")
    passed("test_run_trait_pipeline")


# ======================================================================================
# Exercise 4.5 -- trait_cosine_matrix
# ======================================================================================
def test_trait_cosine_matrix(trait_cosine_matrix) -> None:
    """Hand-built vectors with known cosines (1, 0, -1, 1/sqrt 2)."""
    require_implemented(trait_cosine_matrix, "trait_cosine_matrix")
    vectors = {
        "evil": torch.tensor([2.0, 0.0, 0.0, 0.0]),
        "impolite": torch.tensor([3.0, 3.0, 0.0, 0.0]),
        "optimistic": torch.tensor([0.0, 0.0, 5.0, 0.0]),
        "apathetic": torch.tensor([-1.0, 0.0, 0.0, 0.0]),
    }
    out = call(trait_cosine_matrix, vectors, name="trait_cosine_matrix")
    check(isinstance(out, tuple) and len(out) == 2, "trait_cosine_matrix should return a tuple (sim, names)")
    sim, names = out
    sim = torch.as_tensor(sim, dtype=torch.float64)
    names = list(names)
    check(sorted(names) == sorted(vectors), f"names should be the dict's keys, got {names}")
    check(tuple(sim.shape) == (4, 4), f"sim should have shape (4, 4), got {tuple(sim.shape)}")
    v = {k: x.double() for k, x in vectors.items()}
    want = torch.tensor([[float(v[a] @ v[b] / (v[a].norm() * v[b].norm())) for b in names] for a in names], dtype=torch.float64)
    if not torch.allclose(sim, want, atol=1e-5):
        dots = torch.tensor([[float(v[a] @ v[b]) for b in names] for a in names], dtype=torch.float64)
        if torch.allclose(sim, dots, atol=1e-5):
            fail("trait_cosine_matrix returned dot products: divide each vector by its norm first")
        mean = torch.stack(list(v.values())).mean(0)
        c = {k: x - mean for k, x in v.items()}
        centred = torch.tensor([[float(c[a] @ c[b] / (c[a].norm() * c[b].norm())) for b in names] for a in names], dtype=torch.float64)
        if torch.allclose(sim, centred, atol=1e-5):
            fail("trait_cosine_matrix centred the vectors: trait vectors are differences of means already; do not subtract their mean")
        if torch.allclose(sim, want.abs(), atol=1e-5):
            fail("trait_cosine_matrix returned |cosine|: keep the sign (opposite traits point in opposite directions)")
        order = list(vectors)
        alt = torch.tensor([[float(v[a] @ v[b] / (v[a].norm() * v[b].norm())) for b in order] for a in order], dtype=torch.float64)
        if names != order and torch.allclose(sim, alt, atol=1e-5):
            fail("the rows of sim are not in the order of `names`: return the names in the order you stacked the vectors")
        fail(f"trait_cosine_matrix: sim[i, j] should be the cosine of vectors[names[i]] and vectors[names[j]]; got\n{sim}\nexpected\n{want}")
    for bad, what in [({"a": torch.ones(3, 4), "b": torch.ones(3, 4)}, "2-D vectors ([num_layers, d_model]): pick one layer first"),
                      ({"a": torch.ones(4), "b": torch.ones(5)}, "vectors of different sizes")]:
        expect_value_error(trait_cosine_matrix, bad, name="trait_cosine_matrix", what=what)
    passed("test_trait_cosine_matrix")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
