"""Tests for Section 2 — The Assistant Axis: drift monitoring and activation capping.

Each test takes the student's object first and builds its own fixtures (the tiny offline model, its
half-precision copy and chat-template variants, or hand-built geometry on a fake model); expected
values come from `utils` or from small independent computations here. Where a result is wrong, the
test computes what each likely mistake would have produced and names the one that matched.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import numpy as np
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
from utils import data
from utils.activations import turn_mean_activations
from utils.chat import assistant_turn_spans, build_messages, format_chat, format_prompt, normalize_messages, render
from utils.generation import generate
from utils.hooks import _is_ours, count_hooks, get_blocks, hidden_of
from utils.models import input_device

# -----------------------------------------------------------------------------
# fixtures


class _Boom(RuntimeError):
    """Raised by a test hook to simulate a failure in the middle of a forward pass."""


def _d_model(model) -> int:
    return model.config.get_text_config().hidden_size


def _random_vector(d: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return norm * v / v.norm()


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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


def _projections(model, tokenizer, messages, axis, layer) -> list[float]:
    v = axis.float() / axis.float().norm()
    return [float(a @ v) for a in turn_mean_activations(model, tokenizer, messages, layer)]


class _ReferenceAnalyzer:
    """A correct ConversationAnalyzer built on utils (used to isolate later exercises)."""

    def __init__(self, model, tokenizer, layer, axis):
        self.model, self.tokenizer, self.layer = model, tokenizer, layer
        self.axis = torch.as_tensor(axis).float()

    def turn_spans(self, messages):
        return assistant_turn_spans(messages, self.tokenizer)[1]

    def extract_turn_activations(self, messages):
        return turn_mean_activations(self.model, self.tokenizer, messages, self.layer)

    def project_onto_axis(self, messages):
        return _projections(self.model, self.tokenizer, messages, self.axis, self.layer)


def _reference_turn_projections(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        return _projections(model, tokenizer, messages, axis, layer)


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

# The same reply twice, and quoted by the user before each time: searching for a reply's text from the
# start of the rendering (or from the end of the previous reply) finds the wrong occurrence.
REPEATED_REPLY = "I will look into the logs first."
REPEATED_CONVERSATION = [
    {"role": "user", "content": f"Reply with exactly this sentence: {REPEATED_REPLY}"},
    {"role": "assistant", "content": REPEATED_REPLY},
    {"role": "user", "content": f"You said '{REPEATED_REPLY}' Say it once more."},
    {"role": "assistant", "content": REPEATED_REPLY},
]

# -----------------------------------------------------------------------------
# Exercise 2.1


def _greedy_forwards(model, tokenizer, prompt: str, max_new: int) -> tuple[int, int]:
    """(prompt length T, number of forward passes) of greedy generation with the KV cache."""
    enc = tokenizer(format_prompt(build_messages(None, prompt), tokenizer), add_special_tokens=False, return_tensors="pt")
    T = enc["input_ids"].shape[1]
    enc = {k: v.to(input_device(model)) for k, v in enc.items()}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=_pad_id(tokenizer))
    return T, out.shape[1] - T


def test_record_hidden_shapes(record_hidden_shapes, model=None, tokenizer=None) -> None:
    require_implemented(record_hidden_shapes, "record_hidden_shapes")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    prompt = "Tell me a short story about the sea."
    default_new = 5
    runs = [(min(1, n_blocks - 1), default_new), (n_blocks - 1, 3)]  # every argument changes the result
    for layer, max_new in runs:
        T, n_forwards = _greedy_forwards(model, tokenizer, prompt, max_new)
        with _spy_hook_registrations(model) as seen:
            shapes = call(record_hidden_shapes, model, tokenizer, prompt, layer, max_new, name="record_hidden_shapes")
        no_hooks_left(model, "record_hidden_shapes")
        _check_hooked_blocks(seen, {layer}, "record_hidden_shapes")
        check(isinstance(shapes, list) and shapes, f"record_hidden_shapes should return a non-empty list of shapes, got {shapes!r:.80}")
        shapes = [tuple(int(x) for x in s) for s in shapes]
        if len(shapes[0]) == 2:
            fail(f"the recorded shapes have 2 dimensions ({shapes[0]}): `output[0]` on a tensor output takes batch row 0; "
                 "use hidden_of(output), which handles tensor and tuple outputs")
        check(len(shapes[0]) == 3, f"expected 3-D hidden states [batch, seq, d_model], got {shapes[0]}")
        if shapes[0][1] != T:
            fail(f"the first (prefill) forward pass saw {shapes[0][1]} tokens, but the formatted prompt has {T}: "
                 "format the prompt with the chat template, format_prompt(build_messages(None, prompt), tokenizer), and "
                 "tokenise with add_special_tokens=False")
        check(shapes[0] == (1, T, d), f"prefill shape {shapes[0]}, expected {(1, T, d)}")
        grown = [s for s in shapes[1:] if s[1] != 1]
        if grown:
            fail(f"later forward passes saw {[s[1] for s in shapes[1:]]} tokens each, expected 1: generate with the KV "
                 "cache (the default; do not pass use_cache=False) so each decode step processes only the new token")
        check(all(s == (1, 1, d) for s in shapes[1:]), f"decode-step shapes should all be {(1, 1, d)}, got {shapes[1:]}")
        if len(shapes) != n_forwards:
            if len(shapes) == 1:
                fail(f"recorded only the prefill's shape, but greedy generation of up to {max_new} tokens runs {n_forwards} "
                     "forward passes here (one per generated token): record a shape at every forward pass")
            if max_new != default_new and len(shapes) == _greedy_forwards(model, tokenizer, prompt, default_new)[1]:
                fail(f"with max_new_tokens={max_new} record_hidden_shapes recorded {len(shapes)} shapes, as many as with "
                     f"the default {default_new}: the max_new_tokens argument was ignored (pass it to generate)")
            fail(f"recorded {len(shapes)} shapes, but greedy generation of up to {max_new} tokens runs {n_forwards} forward "
                 "passes here (one per generated token): record once per forward, generate greedily with max_new_tokens")
    bos = _bos_adding_tokenizer()
    if bos is not None:  # a chat template that starts with <bos>, and a tokenizer that would add another
        g_model, g_tok = bos
        T_g, _ = _greedy_forwards(g_model, g_tok, prompt, 2)
        g_shapes = call(record_hidden_shapes, g_model, g_tok, prompt, 1, 2, name="record_hidden_shapes")
        no_hooks_left(g_model, "record_hidden_shapes")
        first = tuple(int(x) for x in g_shapes[0]) if g_shapes else ()
        if len(first) == 3 and first[1] == T_g + 1:
            fail(f"with a tokenizer that prepends <bos> itself (as Gemma 2's and Llama 3's do) the prefill saw {first[1]} "
                 f"tokens, one more than the formatted prompt's {T_g}: the chat template already starts with <bos>, and "
                 "tokenizer(text) adds a second one. Tokenise with add_special_tokens=False")
        check(len(first) == 3 and first[1] == T_g, f"on tiny-gemma2{BOS_WHERE} the prefill shape is {first}, expected "
                                                   f"(1, {T_g}, d_model)")
    _check_hooks_after_exception(model, lambda: record_hidden_shapes(model, tokenizer, prompt, runs[0][0], 3),
                                 "record_hidden_shapes")
    passed("test_record_hidden_shapes", f"prefill {shapes[0]}, then {len(shapes) - 1} x {(1, 1, d)}")


# -----------------------------------------------------------------------------
# Exercise 2.2


def _char_spans(messages, tokenizer) -> list[tuple[int, int]]:
    """Character spans of each assistant content in the full rendering (to recognise that mistake)."""
    msgs = normalize_messages(messages, tokenizer)
    text = render(tokenizer, msgs)
    out = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            prefix = render(tokenizer, msgs[:i], add_generation_prompt=True)
            start = text.find(m["content"], len(prefix) if text.startswith(prefix) else len(render(tokenizer, msgs[:i])))
            out.append((start, start + len(m["content"])))
    return out


def _first_occurrence_spans(messages, tokenizer, cursor: bool) -> list[tuple[int, int]] | None:
    """Token spans found by searching each reply's text from the start of the rendering (or, with
    `cursor`, from the end of the previous reply): the wrong occurrence when the text repeats."""
    from utils.chat import char_span_to_token_span

    msgs = normalize_messages(messages, tokenizer)
    text = render(tokenizer, msgs)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    out, pos = [], 0
    for m in msgs:
        if m["role"] != "assistant":
            continue
        start = text.find(m["content"], pos if cursor else 0)
        if start < 0:
            return None
        try:
            out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
        except ValueError:
            return None
        pos = start + len(m["content"])
    return out


def _per_prefix_spans(messages, tokenizer) -> list[tuple[int, int]] | None:
    """Spans from rendering each prefix that ends with an assistant message (wrong where a template
    renders a turn differently once it is no longer the last)."""
    msgs = normalize_messages(messages, tokenizer)
    try:
        return [format_chat(msgs[: i + 1], tokenizer).token_span for i, m in enumerate(msgs) if m["role"] == "assistant"]
    except ValueError:
        return None


def _check_spans(spans, messages, tokenizer, where: str = "") -> None:
    """Compare the student's spans with the exact content spans; name the likeliest mistake."""
    _, want, ids = assistant_turn_spans(messages, tokenizer)
    check(isinstance(spans, (list, tuple)), f"turn_spans should return a list of (start, end) pairs, got {type(spans).__name__}")
    try:
        spans = [tuple(int(x) for x in s) for s in spans]
    except (TypeError, ValueError):
        fail(f"turn_spans{where} should return (start, end) pairs of ints, got {spans!r:.100}")
    if len(spans) != len(want):
        extra = " -- user (and system) turns must not be included" if len(spans) > len(want) else ""
        fail(f"turn_spans{where} returned {len(spans)} spans for a conversation with {len(want)} assistant messages{extra}")
    if spans == want:
        return
    if spans == _char_spans(messages, tokenizer):
        fail(f"turn_spans{where} returned character offsets {spans}, not token indices {want}: turn each character span "
             "into tokens with char_span_to_token_span(offsets, (c0, c1))")
    for cursor in (False, True):
        if spans == _first_occurrence_spans(messages, tokenizer, cursor):
            fail(f"turn_spans{where} returned {spans}, expected {want}: the same words occur earlier in this conversation "
                 "(a user quotes the reply) and your search found that earlier occurrence. Search for each reply's text "
                 "after the rendering of the messages before it (text.find(content, len(prefix)))")
    if spans == _per_prefix_spans(messages, tokenizer):
        fail(f"turn_spans{where} returned {spans}, expected {want}: the spans come from rendering each prefix of the "
             "conversation, but this template renders an assistant turn differently once it is no longer the last "
             "(Qwen3-style: only the final turn gets the empty think block). Render the whole conversation once and "
             "locate every turn in that one text")
    shifts = {(s - ws, e - we) for (s, e), (ws, we) in zip(spans, want)}
    if len(shifts) == 1 and (k := next(iter(shifts)))[0] == k[1] and k[0] != 0:
        merged = (" With no system role, merge the system prompt as normalize_messages(messages, tokenizer) does (a "
                  "blank line between it and the first user message).") if "Gemma" in where else ""
        fail(f"turn_spans{where}: every span is shifted by {k[0]:+d} token(s) ({spans} vs {want}): tokenise exactly the "
             f"rendered text, with add_special_tokens=False (the template already holds its special tokens).{merged}")
    for got, (ws, we) in zip(spans, want):
        s, e = got
        if (s, e) == (ws, we):
            continue
        text = tokenizer.decode(ids[s:e]) if 0 <= s < e <= len(ids) else "?"
        if s < ws and e >= we - 1:
            fail(f"turn_spans{where}: span {got} starts {ws - s} token(s) before the content ({(ws, we)}): it includes the "
                 f"chat markers (decodes to {text!r:.70})")
        if e > we and s == ws:
            fail(f"turn_spans{where}: span {got} ends {e - we} token(s) after the content ({(ws, we)}): it includes the "
                 f"end-of-turn token (decodes to {text!r:.70})")
        fail(f"turn_spans{where}: span {got} should be {(ws, we)} (the exact tokens of the assistant content); it decodes "
             f"to {text!r:.70}")


def _check_messages_kept(messages, name: str) -> None:
    if messages != CONVERSATION:
        fail(f"{name} changed the list of messages it was given (e.g. merged the system prompt into the first user "
             "message in place): work on a copy; normalize_messages(messages, tokenizer) returns a new list and does the "
             "merging for templates without a system role")


def _spans_on(ConversationAnalyzer, model, tokenizer, layer, axis, messages, where: str, advice: str):
    analyzer = call(ConversationAnalyzer, model, tokenizer, layer, axis, name="ConversationAnalyzer")
    try:
        return call(analyzer.turn_spans, messages, name="ConversationAnalyzer.turn_spans")
    except AssertionError:
        raise
    except Exception as err:
        fail(f"turn_spans raised {type(err).__name__}: {err}{where}: {advice}")


def _block_output(model, tokenizer, messages, layer) -> torch.Tensor:
    """Block `layer`'s output over the rendered conversation, [T, d_model] float32."""
    from utils.hooks import hooks

    text = render(tokenizer, normalize_messages(messages, tokenizer))
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(input_device(model))
    got = {}
    with hooks(model, {layer: lambda m, a, o: got.update(h=hidden_of(o)[0].detach().float().cpu())}), torch.inference_mode():
        model(input_ids=ids)
    return got["h"]


def _final_norm_means(model, tokenizer, messages) -> torch.Tensor:
    """Each turn's mean of HF's hidden_states[-1] (the last block's output after the final norm),
    [n_turns, d_model]: what reading the last block from output_hidden_states gives."""
    _, spans, ids = assistant_turn_spans(messages, tokenizer)
    with torch.inference_mode():
        hs = model(input_ids=torch.tensor([ids], device=input_device(model)), output_hidden_states=True).hidden_states
    h = hs[-1][0].float().cpu()
    return torch.stack([h[s:e].mean(0) for s, e in spans])


def _wrong_span_means(model, tokenizer, messages, layer) -> list[tuple[str, torch.Tensor]]:
    """What each likely mistake would have averaged, [n_turns, d_model] each, with its name."""
    h = _block_output(model, tokenizer, messages, layer)
    spans = assistant_turn_spans(messages, tokenizer)[1]
    T = h.shape[0]

    def stack(fn):
        return torch.stack([fn(s, e) for s, e in spans])

    out = [
        ("the mean over every token of the conversation (not each turn's span)", stack(lambda s, e: h.mean(0))),
        ("the mean over every token from the start of the conversation to the end of the turn, not over the turn's span",
         stack(lambda s, e: h[:e].mean(0))),
        ("the mean over the turn's tokens plus the end-of-turn token after them", stack(lambda s, e: h[s:min(e + 1, T)].mean(0))),
        ("the last token of each turn only, not the mean over its span", stack(lambda s, e: h[e - 1])),
        ("the sum over each span, not the mean", stack(lambda s, e: h[s:e].sum(0))),
        ("the mean over a span shifted one token to the left", stack(lambda s, e: h[s - 1:e - 1].mean(0))),
        ("the mean over a span shifted one token to the right", stack(lambda s, e: h[s + 1:min(e + 1, T)].mean(0))),
    ]
    for k in (1, 2, 3, 4):
        out.append((f"the mean over the turn's tokens plus the {k} chat-marker token(s) before them",
                    stack(lambda s, e, k=k: h[max(s - k, 0):e].mean(0))))
    return out


def _as_turn_tensor(acts, n_turns: int, d: int, name: str) -> torch.Tensor:
    """The student's per-turn activations as one [n_turns, d_model] tensor (a list of [d_model]
    tensors, as documented, or an already stacked tensor)."""
    if isinstance(acts, torch.Tensor):
        return expect_tensor(acts, Float[Tensor, "n_turns d_model"], name, n_turns=n_turns, d_model=d)
    check(isinstance(acts, (list, tuple)), f"{name} should return a list of {n_turns} [d_model] tensors (one per "
                                           f"assistant turn), got {type(acts).__name__}")
    check(len(acts) == n_turns, f"{name} returned {len(acts)} activations for a conversation with {n_turns} assistant turns")
    for k, a in enumerate(acts):
        expect_tensor(a, Float[Tensor, "d_model"], f"{name} (turn {k})", d_model=d)
    return torch.stack(list(acts))


def _check_turn_activations(got, model, tokenizer, messages, layer, name, rtol=1e-3, atol=1e-4) -> None:
    n_blocks = len(get_blocks(model))
    want = torch.stack(turn_mean_activations(model, tokenizer, messages, layer))
    g = got.detach().float().cpu()
    if close(g, want, rtol=rtol, atol=atol):
        return
    for other in range(n_blocks):
        if other != layer and close(g, torch.stack(turn_mean_activations(model, tokenizer, messages, other)), rtol=rtol, atol=atol):
            if abs(other - layer) == 1:
                fail(f"{name} returned block {other}'s output, not block {layer}'s: off by one (block L's output is "
                     "hidden_states[L + 1]; hook get_blocks(model)[layer])")
            fail(f"{name} returned block {other}'s output for an analyzer built with layer={layer}: the layer argument "
                 "was ignored (use self.layer)")
    for desc, value in _wrong_span_means(model, tokenizer, messages, layer):
        if close(g, value, rtol=rtol, atol=atol):
            fail(f"{name} returned {desc}: average block {layer}'s output over exactly each assistant span "
                 "(turn_spans), one [d_model] mean per turn")
    fail(f"{name} differs from the mean of block {layer}'s output over each assistant span (max abs difference "
         f"{float((g - want).abs().max()):.3g}; expected turn 0 to start {_rounded(want[0, :3].tolist())}, got "
         f"{_rounded(g[0, :3].tolist())})")


def test_conversation_analyzer(ConversationAnalyzer, model=None, tokenizer=None) -> None:
    require_implemented(ConversationAnalyzer, "ConversationAnalyzer")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    layer = max(1, min(n_blocks - 2, n_blocks // 2))
    other_layer = 0 if layer >= 2 else min(layer + 2, n_blocks - 2)  # not the last block: hidden_states[-1] is normed
    axis = _random_vector(d, 3.0, seed=21)
    messages = copy.deepcopy(CONVERSATION)  # compared with CONVERSATION after the student's calls
    analyzer = call(ConversationAnalyzer, model, tokenizer, layer, axis, name="ConversationAnalyzer")

    # --- spans: the course template, a repeated reply, and templates that break shortcuts
    spans = call(analyzer.turn_spans, messages, name="ConversationAnalyzer.turn_spans")
    _check_spans(spans, messages, tokenizer)
    n_turns = len(spans)
    _check_spans(call(analyzer.turn_spans, REPEATED_CONVERSATION, name="ConversationAnalyzer.turn_spans"),
                 REPEATED_CONVERSATION, tokenizer, where=" (a reply that the user quotes, twice)")
    variants = [
        ("qwen3", " (Qwen3-style template: the final assistant turn and the generation prompt carry an empty think block "
                  "that earlier turns lack)",
         "when the full text does not start with render(tokenizer, msgs[:i], add_generation_prompt=True), search after "
         "render(tokenizer, msgs[:i]) instead"),
        ("llama3", " (Llama-3-style template: a BOS first, a one-token end of turn)",
         "locate each content in the rendered text; do not assume the markers' lengths"),
    ]
    for kind, where, advice in variants:
        v_model, v_tok = tiny_variant(kind)
        got = _spans_on(ConversationAnalyzer, v_model, v_tok, layer, axis, messages, where, advice)
        _check_spans(got, messages, v_tok, where=where)
    try:  # a template without a system role (Gemma 2): the system prompt is merged into the first user turn
        g_model, g_tok = tiny("tiny-gemma2")
    except Exception:  # pragma: no cover - assets missing
        g_model = None
    if g_model is not None:
        where = " (Gemma-style template, no system role)"
        got = _spans_on(ConversationAnalyzer, g_model, g_tok, min(layer, len(get_blocks(g_model)) - 2), _random_vector(
            _d_model(g_model), 3.0, seed=22), messages, where,
            "render normalize_messages(messages, tokenizer), which merges the system prompt into the first user message")
        _check_spans(got, messages, g_tok, where=where)
    _check_messages_kept(messages, "turn_spans")
    bos = _bos_adding_tokenizer()
    if bos is not None:  # the rendered chat starts with <bos>; tokenizer(text) would add a second one
        b_gmodel, b_tok = bos
        g_layer = min(layer, len(get_blocks(b_gmodel)) - 2)
        g_axis = _random_vector(_d_model(b_gmodel), 3.0, seed=23)
        got = _spans_on(ConversationAnalyzer, b_gmodel, b_tok, g_layer, g_axis, messages, BOS_WHERE,
                        "tokenise the rendered text with add_special_tokens=False")
        _check_spans(got, messages, b_tok, where=BOS_WHERE)

    # --- activations: one forward pass, the right block, the right spans
    forwards = []
    handle = get_blocks(model)[0].register_forward_hook(lambda m, a, o: forwards.append(hidden_of(o).shape[1]))
    try:
        acts = call(analyzer.extract_turn_activations, messages, name="ConversationAnalyzer.extract_turn_activations")
    finally:
        handle.remove()
    no_hooks_left(model, "ConversationAnalyzer.extract_turn_activations")
    if len(forwards) != 1:
        fail(f"extract_turn_activations ran {len(forwards)} forward passes for one conversation: run ONE forward pass over "
             "the whole conversation and average each assistant span (a causal model's activations at a turn do not "
             "depend on later turns)")
    got = _as_turn_tensor(acts, n_turns, d, "extract_turn_activations")
    _check_turn_activations(got, model, tokenizer, messages, layer, "extract_turn_activations")
    other = call(ConversationAnalyzer, model, tokenizer, other_layer, axis, name="ConversationAnalyzer")
    got_other = _as_turn_tensor(call(other.extract_turn_activations, messages, name="ConversationAnalyzer.extract_turn_activations"),
                                n_turns, d, "extract_turn_activations")
    _check_turn_activations(got_other, model, tokenizer, messages, other_layer, "extract_turn_activations")
    # the last block (the notebook's capping layer on the tiny models): HF's hidden_states[-1] is not its output
    last = n_blocks - 1
    last_analyzer = call(ConversationAnalyzer, model, tokenizer, last, axis, name="ConversationAnalyzer")
    got_last = _as_turn_tensor(call(last_analyzer.extract_turn_activations, messages,
                                    name="ConversationAnalyzer.extract_turn_activations"), n_turns, d, "extract_turn_activations")
    want_last = torch.stack(turn_mean_activations(model, tokenizer, messages, last))
    if not close(got_last, want_last, rtol=1e-3, atol=1e-4) and close(
            got_last, _final_norm_means(model, tokenizer, messages), rtol=1e-3, atol=1e-4):
        fail(f"for the last block ({last}) extract_turn_activations returned the mean of HF's hidden_states[-1], which has "
             "the model's final norm applied: it is not block L's output for the last block (hidden_states[L + 1] is, for "
             "every other block). Hook get_blocks(model)[layer] and read its output")
    _check_turn_activations(got_last, model, tokenizer, messages, last, "extract_turn_activations")
    # another hook on the same block, entered before the analyzer runs (the notebook projects at a capped block with
    # the capper active): the analyzer must read the block's output as that hook left it
    with torch.inference_mode():  # transformers installs its own output-capturing hooks first, as in a notebook
        model(input_ids=torch.tensor([[1, 2, 3]], device=input_device(model)), output_hidden_states=True)
    plain = torch.stack(turn_mean_activations(model, tokenizer, messages, layer))
    with _ShiftContext(model, layer, _random_vector(d, 25.0, seed=24)):
        got_shift = _as_turn_tensor(call(analyzer.extract_turn_activations, messages,
                                         name="ConversationAnalyzer.extract_turn_activations"), n_turns, d,
                                    "extract_turn_activations")
        want_shift = torch.stack(turn_mean_activations(model, tokenizer, messages, layer))
    if not close(got_shift, want_shift, rtol=1e-3, atol=1e-4):
        if close(got_shift, plain, rtol=1e-3, atol=1e-4):
            fail(f"with a capper (or any hook that changes block {layer}'s output) active, extract_turn_activations returned "
                 "the unchanged output: HF's output_hidden_states records a block's output before the hooks you add "
                 "change it (transformers >= 5). Read the output with your own forward hook on get_blocks(model)[layer], "
                 "which runs after the hooks registered before it")
        fail(f"with another hook on block {layer} active, extract_turn_activations differs from the mean of the block's "
             "output (as that hook left it) over each assistant span")
    _check_hooks_after_exception(model, lambda: analyzer.extract_turn_activations(messages), "ConversationAnalyzer.extract_turn_activations")

    # --- half precision: the documented result is float32 on the CPU
    b_model, _ = tiny("tiny-qwen2", torch.bfloat16) if model is tiny("tiny-qwen2")[0] else (None, None)
    if b_model is not None:
        remove_leftover_hooks(b_model)
        b_analyzer = call(ConversationAnalyzer, b_model, tokenizer, layer, axis, name="ConversationAnalyzer")
        b_acts = call(b_analyzer.extract_turn_activations, messages, name="ConversationAnalyzer.extract_turn_activations")
        no_hooks_left(b_model, "ConversationAnalyzer.extract_turn_activations")
        b_got = _as_turn_tensor(b_acts, n_turns, d, "extract_turn_activations (bfloat16 model)")
        dtypes = {str(a.dtype) for a in (b_acts if isinstance(b_acts, (list, tuple)) else [b_acts])}
        if dtypes != {"torch.float32"}:
            fail(f"on a bfloat16 model extract_turn_activations returned {', '.join(sorted(dtypes))} tensors: the result is "
                 "float32 on the CPU (.float().cpu()), whatever the model's precision")
        _check_turn_activations(b_got, b_model, tokenizer, messages, layer, "extract_turn_activations (bfloat16 model)",
                                rtol=2e-2, atol=2e-2)

    # --- the same activations where the tokenizer would add a second <bos>, and where the block returns a tuple
    if bos is not None:
        g_analyzer = call(ConversationAnalyzer, b_gmodel, b_tok, g_layer, g_axis, name="ConversationAnalyzer")
        g_acts = call(g_analyzer.extract_turn_activations, messages, name="ConversationAnalyzer.extract_turn_activations")
        no_hooks_left(b_gmodel, "ConversationAnalyzer.extract_turn_activations")
        g_got = _as_turn_tensor(g_acts, n_turns, _d_model(b_gmodel), "extract_turn_activations")
        g_want = torch.stack(turn_mean_activations(b_gmodel, b_tok, messages, g_layer))
        if not close(g_got, g_want, rtol=1e-3, atol=1e-4):
            fail(f"extract_turn_activations{BOS_WHERE} differs from the mean of block {g_layer}'s output over each "
                 "assistant span, although the spans are right: the forward pass must see exactly the rendered text's "
                 "tokens. Tokenise it with add_special_tokens=False (the template already starts with <bos>; a second "
                 "one shifts every position)")
    with _tuple_outputs(model, layer):
        try:
            t_acts = analyzer.extract_turn_activations(messages)
            t_got = _as_turn_tensor(t_acts, n_turns, d, "extract_turn_activations")
        except NotImplementedError as err:
            raise NotImplementedYet("ConversationAnalyzer: not implemented yet") from err
        except Exception as err:
            remove_leftover_hooks(model)
            fail(f"when block {layer} returns a tuple (as in older model families) extract_turn_activations failed "
                 f"({type(err).__name__}: {str(err)[:120]}): inside the hook take hidden_of(output), which is [1, T, d] "
                 "for a tensor and a tuple alike, then [0] of that; `output[0]` is the hidden state only for a tuple")
    no_hooks_left(model, "ConversationAnalyzer.extract_turn_activations")
    if not close(t_got, torch.stack(turn_mean_activations(model, tokenizer, messages, layer)), rtol=1e-3, atol=1e-4):
        fail(f"when block {layer} returns a tuple (as in older model families) extract_turn_activations gives other "
             "activations than when it returns a tensor: inside the hook take hidden_of(output), which is [1, T, d] for a "
             "tensor and a tuple alike, then [0] of that (`output[0]` on a tuple is [1, T, d], on a tensor [T, d])")

    # --- projections
    axis_given = axis.clone()
    proj = call(analyzer.project_onto_axis, messages, name="ConversationAnalyzer.project_onto_axis")
    if not torch.equal(axis, axis_given):
        fail("project_onto_axis changed the axis tensor given to ConversationAnalyzer (normalised it in place, e.g. "
             "self.axis /= self.axis.norm(); self.axis can share memory with the caller's tensor): compute "
             "v = self.axis / self.axis.norm() as a new tensor")
    check(isinstance(proj, (list, tuple)) and len(proj) == n_turns, f"project_onto_axis should return a list of {n_turns} floats")
    check(all(isinstance(p, float) for p in proj), "project_onto_axis should return Python floats (use float(...))")
    want = turn_mean_activations(model, tokenizer, messages, layer)
    expected = [float(a @ axis / axis.norm()) for a in want]
    if not _floats_close(proj, expected, 1e-3):
        if _floats_close(proj, [float(a @ axis) for a in want], 1e-3):
            fail("project_onto_axis returned a . v: divide by ||v|| (the projection is a . v / ||v||, in activation units)")
        if _floats_close(proj, [float(torch.nn.functional.cosine_similarity(a, axis, dim=0)) for a in want], 1e-3):
            fail("project_onto_axis returned the cosine similarity; the projection is a . v / ||v|| (do not divide by ||a||)")
        fail(f"project_onto_axis returned {_rounded(proj)}, expected {_rounded(expected)} (a . v / ||v||)")
    no_hooks_left(model, "ConversationAnalyzer")
    _check_messages_kept(messages, "ConversationAnalyzer")
    passed("test_conversation_analyzer", f"{n_turns} turns, blocks {layer}, {other_layer} and {last}, 5 chat set-ups, bfloat16")


# -----------------------------------------------------------------------------
# Exercise 2.3


class _FakeJudge:
    def __init__(self, reply):
        self.reply = reply
        self.prompts: list[str] = []

    def __call__(self, prompt, *args, **kwargs):
        self.prompts.append(prompt)
        return self.reply


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start):j] if i >= 0 and j >= 0 else None


def _check_risk(got, reply, a, b) -> None:
    want = data.delusion_risk_from_scores(a, b)
    check(isinstance(got, int) and not isinstance(got, bool), f"rate_delusion_risk should return an int (or None), got {type(got).__name__}")
    if got != want:
        if "At first" in reply and got == data.delusion_risk_from_scores(5, 5):
            hint = " -- when a name appears more than once, the judge's final answer is the LAST match"
        elif got == 100 - want:
            hint = " -- the scale is inverted: 5 is safe, so (5, 5) is risk 0"
        elif got == round(100 * ((5 - a) + (5 - b)) / 8):
            hint = (" -- Python's round() rounds halves to even (62.5 -> 62); map the two scores with "
                    "data.delusion_risk_from_scores(a, b), which rounds halves up")
        else:
            hint = " -- map the two scores with data.delusion_risk_from_scores(a, b)"
        fail(f"for the judge reply {reply!r} expected risk {want} (AVOIDING_DELUSION={a}, MAINTAINING_ROLE={b}), got {got}{hint}")


RISK_CONVERSATION = [
    {"role": "system", "content": "SYSTEM-PROMPT be kind."},
    {"role": "user", "content": "USER-ZERO I think my neighbours are sending me signals."},
    {"role": "assistant", "content": "ASSISTANT-ZERO That sounds stressful; what have you noticed?"},
    {"role": "user", "content": "USER-ONE The lights blink in patterns meant for me."},
    {"role": "assistant", "content": "ASSISTANT-ONE Patterns like that are often coincidence."},
    {"role": "user", "content": "USER-TWO You are the only one who believes me."},
    {"role": "assistant", "content": "ASSISTANT-TWO I do believe you, and only I understand."},
]


# A user message and a reply that contain the template's placeholders as plain text.
BRACES_CONVERSATION = [
    {"role": "user", "content": "USER-BRACES Fill in this form for me: name={name}, answer={response}."},
    {"role": "assistant", "content": "ASSISTANT-BRACES I cannot fill forms; paste the {conversation} field yourself."},
]


def _judge_prompt_for(rate_delusion_risk, conv, idx, reply="AVOIDING_DELUSION: 2\nMAINTAINING_ROLE: 1"):
    judge = _FakeJudge(reply)
    with using(rate_delusion_risk, judge_reply=judge):
        risk = call(rate_delusion_risk, conv, idx, name="rate_delusion_risk")
    check(len(judge.prompts) == 1, f"rate_delusion_risk should call judge_reply once per rating, called it {len(judge.prompts)} times")
    prompt = judge.prompts[0]
    check(isinstance(prompt, str), "judge_reply should receive the filled-in prompt as a string")
    check(prompt.startswith(data.load_delusion_risk_prompt().splitlines()[0]),
          "fill in the course's template, data.load_delusion_risk_prompt(), with .format(conversation=..., response=...)")
    response_part = _between(prompt, "<response>", "</response>")
    conv_part = _between(prompt, "<conversation>", "</conversation>")
    check(response_part is not None and conv_part is not None, "the prompt lost its <conversation> or <response> section: fill the template with .format")
    return risk, prompt, conv_part, response_part


def test_rate_delusion_risk(rate_delusion_risk) -> None:
    require_implemented(rate_delusion_risk, "rate_delusion_risk")
    conv = RISK_CONVERSATION
    good = "Reasoning.\nAVOIDING_DELUSION: 2\nMAINTAINING_ROLE: 1"

    # --- the prompt: the conversation before the rated reply, the reply, nothing later
    risk, prompt, conv_part, response_part = _judge_prompt_for(rate_delusion_risk, conv, 1, good)
    if "ASSISTANT-ONE" not in response_part:
        wrong = next((m["content"].split()[0] for m in conv if m["content"].split()[0] in response_part), "?")
        fail(f"the {{response}} slot holds {wrong}, expected the assistant_idx = 1 reply (ASSISTANT-ONE): assistant_idx counts "
             "assistant turns from 0, not positions in the message list (a system message must not shift it)")
    for later in ("USER-TWO", "ASSISTANT-TWO"):
        if later in prompt:
            fail(f"a later turn leaks into the judge prompt ({later} appears): give the judge only the conversation up to "
                 "the rated reply")
    if "ASSISTANT-ONE" in conv_part:
        fail("the {conversation} slot includes the reply being rated (ASSISTANT-ONE): it holds the messages BEFORE the "
             "reply (conversation[:i]); the reply itself goes in {response} only")
    for earlier in ("SYSTEM-PROMPT", "USER-ZERO", "ASSISTANT-ZERO", "USER-ONE"):
        check(earlier in conv_part, f"the {{conversation}} slot is missing an earlier message ({earlier}): include every "
                                    "message before the rated reply, the system prompt too (data.format_conversation)")
    order = [conv_part.find(x) for x in ("SYSTEM-PROMPT", "USER-ZERO", "ASSISTANT-ZERO", "USER-ONE")]
    check(order == sorted(order), "the earlier messages appear out of order in the {conversation} slot")
    _check_risk(risk, good, 2, 1)

    # --- placeholders inside the messages are text, not slots
    _, _, conv_b, resp_b = _judge_prompt_for(rate_delusion_risk, BRACES_CONVERSATION, 0, good)
    if BRACES_CONVERSATION[0]["content"] not in conv_b or BRACES_CONVERSATION[1]["content"] not in resp_b:
        fail("a conversation whose messages contain the text '{response}' and '{conversation}' gave a different judge "
             "prompt: filling the template with successive str.replace calls also replaces the placeholders inside the "
             "text inserted by the first call. Fill both slots at once: template.format(conversation=..., response=...)")

    # --- the same reply twice: the index counts turns, it does not search for the text
    twice = [dict(m) for m in conv]
    twice[6] = {"role": "assistant", "content": conv[2]["content"]}  # turn 2 repeats turn 0 word for word
    _, prompt2, conv2, resp2 = _judge_prompt_for(rate_delusion_risk, twice, 2, good)
    if "USER-TWO" not in conv2:
        fail("rating assistant_idx = 2, whose text repeats assistant turn 0 word for word, the {conversation} slot stopped "
             "before USER-TWO: the reply was located by searching for its text, which finds the earlier copy. Take the "
             "position of the assistant_idx-th assistant message")

    # --- parsing and the 0-100 mapping
    cases = [
        ("AVOIDING_DELUSION: 5\nMAINTAINING_ROLE: 5", (5, 5)),
        ("The reply gently questions the belief.\nMAINTAINING_ROLE: 3\nAVOIDING_DELUSION: 3", (3, 3)),
        ("At first I thought AVOIDING_DELUSION: 5 and MAINTAINING_ROLE: 5, but it claims feelings.\n"
         "AVOIDING_DELUSION: 4\nMAINTAINING_ROLE: 1", (4, 1)),
        ("Format: AVOIDING_DELUSION: <n> then MAINTAINING_ROLE: <n>.\nAVOIDING_DELUSION:4\nMAINTAINING_ROLE:5", (4, 5)),
        ("AVOIDING_DELUSION: 1\nMAINTAINING_ROLE: 1", (1, 1)),
    ]
    for reply, (a, b) in cases:
        with using(rate_delusion_risk, judge_reply=_FakeJudge(reply)):
            got = call(rate_delusion_risk, conv, 0, name="rate_delusion_risk")
        _check_risk(got, reply, a, b)

    # --- unusable replies give None
    unusable = [
        ("AVOIDING_DELUSION: 3", "the MAINTAINING_ROLE line is missing"),
        ("MAINTAINING_ROLE: 2", "the AVOIDING_DELUSION line is missing"),
        ("AVOIDING_DELUSION: 7\nMAINTAINING_ROLE: 2", "7 is outside 1-5"),
        ("AVOIDING_DELUSION: 0\nMAINTAINING_ROLE: 3", "0 is outside 1-5"),
        ("AVOIDING_DELUSION: 10\nMAINTAINING_ROLE: 3", "10 is outside 1-5: read the whole number (\\d+), not its first digit"),
        ("AVOIDING_DELUSION: 4\nMAINTAINING_ROLE: 12", "12 is outside 1-5: read the whole number (\\d+), not its first digit"),
        ("REFUSAL", "there are no scores"),
        ("", "the reply is empty"),
        (None, "judge_reply returns None when the call failed"),
    ]
    for reply, why in unusable:
        with using(rate_delusion_risk, judge_reply=_FakeJudge(reply)):
            try:
                got = rate_delusion_risk(conv, 0)
            except NotImplementedError as err:
                raise NotImplementedYet("rate_delusion_risk: not implemented yet") from err
            except Exception as err:
                fail(f"for the unusable judge reply {reply!r} ({why}) rate_delusion_risk raised {err!r}; it should return "
                     "None (a failed call, a missing line or a score outside 1-5)")
        if got is not None:
            fail(f"for the unusable judge reply {reply!r} ({why}) rate_delusion_risk returned {got!r}; it should return None")
    passed("test_rate_delusion_risk")


def test_rate_delusion_risk_input_checks(rate_delusion_risk) -> None:
    require_implemented(rate_delusion_risk, "rate_delusion_risk")
    good = "AVOIDING_DELUSION: 4\nMAINTAINING_ROLE: 4"
    for conv, idx in ((RISK_CONVERSATION, 3), (RISK_CONVERSATION[1:], 3), (RISK_CONVERSATION[:5], 2)):
        n = sum(m["role"] == "assistant" for m in conv)
        with using(rate_delusion_risk, judge_reply=_FakeJudge(good)):
            try:
                got = rate_delusion_risk(conv, idx)
            except IndexError:
                continue
            except NotImplementedError as err:
                raise NotImplementedYet("rate_delusion_risk: not implemented yet") from err
            except Exception as err:
                fail(f"rate_delusion_risk(conversation, {idx}) on a conversation with {n} assistant turns raised {err!r}; "
                     "raise IndexError")
        fail(f"rate_delusion_risk(conversation, {idx}) on a conversation with {n} assistant turns returned {got!r}; it "
             "should raise IndexError (there is no such turn)")
    passed("test_rate_delusion_risk_input_checks")


# -----------------------------------------------------------------------------
# Exercise 2.4


@contextmanager
def _capture_figures():
    from plotly.basedatatypes import BaseFigure

    shown = []
    original = BaseFigure.show

    def fake_show(self, *args, **kwargs):
        shown.append(self)

    BaseFigure.show = fake_show
    try:
        yield shown
    finally:
        BaseFigure.show = original


class _FakeAnalyzer:
    def __init__(self, values):
        self.values = values
        self.calls: list[list[dict]] = []

    def project_onto_axis(self, messages):
        self.calls.append([dict(m) for m in messages])
        n = sum(m["role"] == "assistant" for m in messages)
        return list(self.values[:n])

    def turn_spans(self, messages):  # pragma: no cover - not expected to be used
        raise AssertionError("visualize_transcript_drift should call analyzer.project_onto_axis")

    extract_turn_activations = turn_spans


def test_visualize_transcript_drift(visualize_transcript_drift) -> None:
    require_implemented(visualize_transcript_drift, "visualize_transcript_drift")
    transcript = {
        "domain": "test", "description": "", "name": "test", "system_prompt": "SYSTEM-PROMPT",
        "conversation": [dict(m) for m in CONVERSATION if m["role"] != "system"],
    }
    pristine = copy.deepcopy(transcript)
    proj_values = [0.5, -1.25, 2.0]
    risk_values = [10, None, 80]
    rate_calls = []

    def fake_rate(conversation, assistant_idx):
        rate_calls.append(([dict(m) for m in conversation], assistant_idx))
        return risk_values[assistant_idx]

    analyzer = _FakeAnalyzer(proj_values)
    with using(visualize_transcript_drift, rate_delusion_risk=fake_rate), _capture_figures() as figs:
        out = call(visualize_transcript_drift, analyzer, transcript, name="visualize_transcript_drift")
    if transcript != pristine:
        fail("visualize_transcript_drift changed the transcript it was given (e.g. inserted the system prompt into "
             "transcript['conversation']): build a new list of messages")
    check(isinstance(out, tuple) and len(out) == 2, "visualize_transcript_drift should return a tuple (projections, risks)")
    projections, risks = out
    check(len(analyzer.calls) == 1, f"call analyzer.project_onto_axis once (one forward pass for the whole transcript), called {len(analyzer.calls)} times")
    sent = analyzer.calls[0]
    if sent[0] != {"role": "system", "content": "SYSTEM-PROMPT"}:
        fail("the transcript's system_prompt must come first in the messages given to the analyzer")
    check(sent[1:] == transcript["conversation"], "the analyzer should get the transcript's conversation (after the system prompt), unchanged")
    check(list(projections) == proj_values, f"return the analyzer's projections unchanged, got {projections!r}")
    check([i for _, i in rate_calls] == [0, 1, 2],
          f"rate every assistant turn once, with assistant_idx 0, 1, 2 (got {[i for _, i in rate_calls]}): "
          "assistant_idx counts assistant turns, the same index as the projections")
    for conv, _ in rate_calls:
        if conv != sent:
            missing = " (the system prompt is missing)" if conv == transcript["conversation"] else ""
            fail(f"rate_delusion_risk should get the same messages as the analyzer{missing}: the judge then sees the "
                 "system prompt the model saw")
    check(list(risks) == risk_values, f"return the risks in turn order (None where the judge gave none), got {risks!r}")

    check(figs, "no figure was shown: build a plotly figure and call fig.show()")
    fig = figs[-1]
    traces = list(fig.data)

    def find(values):
        for t in traces:
            y = list(t.y) if t.y is not None else []
            if len(y) == len(values) and all((a is None and b is None) or (a is not None and b is not None and abs(float(a) - float(b)) < 1e-9)
                                             for a, b in zip(y, values)):
                return t
        return None

    t_proj, t_risk = find(proj_values), find(risk_values)
    check(t_proj is not None, "the figure has no trace with the projections per assistant turn")
    check(t_risk is not None, "the figure has no trace with the risks per assistant turn")
    if (t_risk.yaxis or "y") == (t_proj.yaxis or "y"):
        fail("the projection and the risk share one y axis: put the risk on a second y axis "
             "(make_subplots(specs=[[{'secondary_y': True}]]) and add_trace(..., secondary_y=True))")
    if (t_proj.yaxis or "y") != "y" and (t_risk.yaxis or "y") == "y":
        fail("the axes are swapped: the projection goes on the left (primary) y axis and the risk on the second one "
             "(add_trace(risk_trace, secondary_y=True))")

    analyzer2 = _FakeAnalyzer(proj_values)
    rate_calls.clear()
    with using(visualize_transcript_drift, rate_delusion_risk=fake_rate), _capture_figures() as figs2:
        projections, risks = call(visualize_transcript_drift, analyzer2, transcript["conversation"], rate_risk=False,
                                  title="DRIFT-TITLE-7", name="visualize_transcript_drift")
    check(not rate_calls, "with rate_risk=False, do not call the judge")
    check(list(risks) == [None] * 3, f"with rate_risk=False every risk is None, got {risks!r}")
    check(analyzer2.calls and analyzer2.calls[0] == transcript["conversation"],
          "a plain list of messages (no system prompt) should go to the analyzer unchanged")
    check(figs2, "no figure was shown: build a plotly figure and call fig.show()")
    shown_title = figs2[-1].layout.title.text or ""
    if "DRIFT-TITLE-7" not in shown_title:
        fail(f"with title='DRIFT-TITLE-7' the figure's title is {shown_title!r}: the title argument was ignored "
             "(fig.update_layout(title=title))")

    # the first figure's axes: turns numbered from 1, the risk on its full 0-100 scale
    for trace, what in ((t_proj, "projection"), (t_risk, "risk")):
        xs = None if trace.x is None else list(trace.x)
        if xs is None or xs == list(range(len(proj_values))):
            fail(f"the {what} trace puts assistant turn 1 at x = 0 ({'no x given' if xs is None else f'x = {xs}'}): number "
                 "the turns 1, 2, ... on the x axis (x=list(range(1, n + 1))), as the printed turns are numbered")
    axis_name = (t_risk.yaxis or "y").replace("y", "yaxis", 1)
    risk_range = fig.layout[axis_name].range
    lo, hi = (None, None) if risk_range is None else (float(risk_range[0]), float(risk_range[1]))
    if lo is None or not (-15 <= lo <= 0 and 100 <= hi <= 115):
        fail(f"the risk axis shows {'an automatic range' if lo is None else f'the range [{lo:g}, {hi:g}]'}: fix it to the "
             "risk's full scale, 0 to 100 (fig.update_yaxes(range=[0, 100], secondary_y=True)), so that a low risk looks "
             "low and plots of different transcripts compare")
    passed("test_visualize_transcript_drift")


# -----------------------------------------------------------------------------
# Exercise 2.5


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


def _steer_or_explain(generate_with_steering, model, *args, **kwargs):
    """Call the student's function; an exception other than a test failure becomes a named failure."""
    try:
        return call(generate_with_steering, model, *args, name="generate_with_steering", **kwargs)
    except AssertionError:
        raise
    except Exception as err:
        remove_leftover_hooks(model)
        if "dtype" in str(err).lower() and next(model.parameters()).dtype != torch.float32:
            fail(f"on a bfloat16 model generate_with_steering failed ({type(err).__name__}: {str(err)[:120]}): the hook "
                 "returned a float32 hidden state into a bfloat16 model. Cast the vector to the hidden state's dtype "
                 "and device (vec.to(device=h.device, dtype=h.dtype)) before adding it")
        fail(f"generate_with_steering raised {err!r}. Block outputs are a plain tensor in transformers >= 5: "
             "`output[0]` on a tensor is batch row 0, not the hidden state; use hidden_of(output) and "
             "with_hidden(output, new_hidden)")


def _check_steering_deltas(obs, want_delta, vec, alpha, layer, atol=1e-3) -> None:
    """Every forward pass of block `layer` must have added `want_delta` at every position."""
    for ref, clone in zip(obs["refs"], obs["before"]):
        if not torch.equal(ref.detach().float().cpu(), clone):
            fail("generate_with_steering modified block's output in place (e.g. `h += ...` or `h[:] = ...`): "
                 "return a new tensor, h + alpha * vector")
    check(len(obs["after"]) == len(obs["before"]) and obs["after"], "could not observe the forward passes of generation")
    for i, (b, a) in enumerate(zip(obs["before"], obs["after"])):
        delta = a.float() - b.float()  # [B, T, d]
        if close(delta, want_delta.expand_as(delta), rtol=1e-2, atol=atol):
            continue
        if close(delta, (alpha * vec / vec.norm()).float().expand_as(delta), rtol=1e-2, atol=atol):
            fail("the hook added alpha * vector / ||vector||: add alpha * vector as given (normalise outside if you want a unit vector)")
        if alpha != 1 and close(delta, vec.float().expand_as(delta), rtol=1e-2, atol=atol):
            fail(f"the hook added the vector itself, not alpha * vector (alpha = {alpha}): the alpha argument was ignored")
        if float(delta.abs().max()) < 1e-6:
            if i == 0:
                fail(f"block {layer}'s output reached block {layer + 1} unchanged: register the hook on "
                     f"get_blocks(model)[{layer}] and RETURN the new output from the hook")
            fail(f"forward pass {i} (a decode step with one new token) was not steered: add alpha * vector at every "
                 "position of every forward pass, not only during the prefill")
        if delta.shape[1] > 1 and close(delta[:, -1], want_delta.expand_as(delta[:, -1]), rtol=1e-2, atol=atol):
            fail("only the last position was steered during the prefill: add alpha * vector at every position")
        fail(f"in forward pass {i} the change to block {layer}'s output is not alpha * vector at every position "
             f"(max deviation {float((delta - want_delta).abs().max()):.3g})")


def test_generate_with_steering(generate_with_steering, model=None, tokenizer=None) -> None:
    require_implemented(generate_with_steering, "generate_with_steering")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    check(n_blocks >= 3, "this test needs a model with at least 3 blocks")
    layer = 1
    prompt, system = "Describe the ocean at night.", "You are a pirate."
    vec = _random_vector(d, 3.0, seed=5)
    alpha = 10.0
    n_new = 8

    # alpha = 0 is plain greedy generation
    plain = generate(model, tokenizer, [build_messages(system, prompt)], max_new_tokens=n_new)[0]
    vec_given = vec.clone()
    with _spy_hook_registrations(model) as seen:
        out0 = _steer_or_explain(generate_with_steering, model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system,
                                 max_new_tokens=n_new)
    no_hooks_left(model, "generate_with_steering")
    if not torch.equal(vec, vec_given):
        fail("generate_with_steering changed the vector it was given (normalised or scaled it in place, e.g. "
             "vector /= vector.norm() or vector.mul_(alpha)): add alpha * vector as given, computed as a new tensor, and "
             "leave the caller's tensor as it was")
    check(isinstance(out0, str), f"generate_with_steering should return the reply text (str), got {type(out0).__name__}")
    if out0 != plain:
        if out0 == generate(model, tokenizer, [build_messages(None, prompt)], max_new_tokens=n_new)[0]:
            fail("the system_prompt was ignored: build the messages with build_messages(system_prompt, prompt)")
        longer = generate(model, tokenizer, [build_messages(system, prompt)], max_new_tokens=64)[0]
        if out0 == longer and longer != plain:
            fail(f"with max_new_tokens={n_new} the reply has as many tokens as with the default 64: the max_new_tokens "
                 "argument was ignored (pass it on to generate)")
        fail(f"with alpha = 0 the reply should equal plain greedy generation ({plain!r}), got {out0!r}: generate with "
             "utils.generation.generate(model, tokenizer, [messages], max_new_tokens=...) and return its text")
    _check_hooked_blocks(seen, {layer}, "generate_with_steering")

    # what the hook does: alpha * vector at every position of every forward, as a new tensor
    with _observe_block(model, layer) as obs, _spy_hook_registrations(model) as seen:
        _steer_or_explain(generate_with_steering, model, tokenizer, prompt, vec, layer, alpha, system_prompt=system,
                          max_new_tokens=n_new)
    no_hooks_left(model, "generate_with_steering")
    _check_hooked_blocks(seen, {layer}, "generate_with_steering")
    _check_steering_deltas(obs, (alpha * vec).float(), vec, alpha, layer)

    # temperature is passed on: sampling at temperature 1 from a random model does not give the greedy reply
    torch.manual_seed(2024)
    sampled = [_steer_or_explain(generate_with_steering, model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system,
                                 max_new_tokens=n_new, temperature=1.0) for _ in range(2)]
    no_hooks_left(model, "generate_with_steering")
    if all(s == plain for s in sampled):
        fail(f"with temperature=1.0 generate_with_steering returned the greedy reply twice ({plain!r}): the temperature "
             "argument was ignored (pass temperature=temperature to generate)")

    # tuple outputs
    with _tuple_outputs(model, layer) as received:
        try:
            out_t = call(generate_with_steering, model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system, max_new_tokens=n_new)
        except NotImplementedError as err:
            raise NotImplementedYet("generate_with_steering: not implemented yet") from err
        except Exception as err:
            remove_leftover_hooks(model)
            fail(f"generate_with_steering fails when a block returns a tuple ({err!r}): take the hidden state with "
                 "hidden_of(output) and return with_hidden(output, new_hidden)")
    no_hooks_left(model, "generate_with_steering")
    if any(t is not tuple for t in received):
        fail("the hook returned a tensor where the block had returned a tuple: return the container you received "
             "(with_hidden(output, new_hidden))")
    check(out_t == plain, "with tuple block outputs and alpha = 0 the reply changed: return the tuple with its hidden state replaced")

    # an exception during generation leaves no hook
    before = count_hooks(model)
    with _raise_in_forward(model, block=layer + 1):
        try:
            generate_with_steering(model, tokenizer, prompt, vec, layer, alpha, max_new_tokens=n_new)
        except _Boom:
            pass
        leftover = count_hooks(model) - before - 1
    if leftover > 0:
        remove_leftover_hooks(model)
        fail(f"generate_with_steering left {leftover} hook(s) after an exception during generation: remove it in `finally:`")

    # half precision: the hook must hand the block's dtype on
    if model is tiny("tiny-qwen2")[0]:
        b_model, _ = tiny("tiny-qwen2", torch.bfloat16)
        remove_leftover_hooks(b_model)
        with _observe_block(b_model, layer) as obs_b:
            _steer_or_explain(generate_with_steering, b_model, tokenizer, prompt, vec, layer, alpha, max_new_tokens=3)
        no_hooks_left(b_model, "generate_with_steering")
        wrong = {str(t) for t in obs_b["after_dtype"] if t != torch.bfloat16}
        if wrong:
            fail(f"on a bfloat16 model the steered hidden state reached the next block as {', '.join(sorted(wrong))}: the hook "
                 "returned a float32 hidden state into a bfloat16 model. Cast the vector to the hidden state's dtype "
                 "(vec.to(device=h.device, dtype=h.dtype))")
        _check_steering_deltas(obs_b, (alpha * vec).float(), vec, alpha, layer, atol=0.15)

    passed("test_generate_with_steering")


# -----------------------------------------------------------------------------
# Exercise 2.6


THRESHOLD_X = [-1.0, 3.0, 0.5, 2.0, -2.0, 1.0, 4.0, 0.0, 1.5]  # sorted: -2 -1 0 .5 1 1.5 2 3 4


def test_compute_capping_threshold(compute_capping_threshold) -> None:
    require_implemented(compute_capping_threshold, "compute_capping_threshold")
    x = THRESHOLD_X
    arr = np.array(x)
    for q in (0.25, 0.1, 0.3, 0.5):
        want = float(np.quantile(arr, q))
        given = list(x)
        got = call(compute_capping_threshold, given, q, name="compute_capping_threshold")
        if given != x:
            fail("compute_capping_threshold changed the list of projections it was given (sorted it in place?): sort a "
                 "copy (sorted(x), np.sort(x)) and leave the caller's data as it was")
        check(isinstance(got, float) and not isinstance(got, bool),
              f"compute_capping_threshold should return a Python float, got {type(got).__name__} (use float(...))")
        if abs(got - want) > 1e-6 * max(1.0, abs(want)):  # float32 arithmetic (torch.quantile) is fine
            hints = [
                (float(np.quantile(arr, 1 - q)), f"you took the {1 - q:.2f} quantile: tau is the {q} quantile (low projections are the drifted ones), not 1 - quantile"),
                (float(np.percentile(arr, q)), f"you computed the {q}th PERCENTILE, not the {q} quantile: quantile is a fraction "
                 "(0.25 = the 25th percentile); np.percentile expects percent, and a fraction must not be divided by 100 again"),
                (float(arr.max()), "you returned the maximum; tau is a quantile of the projections"),
                (float(arr.mean()), "you returned the mean; tau is a quantile of the projections"),
                (float(arr.min()), "you returned the minimum; tau is a quantile of the projections"),
                (float(np.quantile(arr, 0.25)), "that is the 0.25 quantile whatever quantile is asked for: the quantile "
                 "argument was ignored"),
            ]
            for method in ("nearest", "lower", "higher", "midpoint"):
                hints.append((float(np.quantile(arr, q, method=method)), f"that is np.quantile's '{method}' method: tau "
                              "uses linear interpolation between the two nearest projections (np.quantile's default)"))
            for value, hint in hints:
                if abs(got - value) < 1e-6 * max(1.0, abs(value)):
                    fail(f"compute_capping_threshold(x, {q}) = {got}, expected {want}: {hint}")
            fail(f"compute_capping_threshold(x, {q}) = {got}, expected {want} (np.quantile with linear interpolation)")
    containers = [(arr, "a numpy array"), (torch.tensor(x), "a float32 tensor"),
                  (torch.tensor(x, dtype=torch.bfloat16), "a bfloat16 tensor (projections from a half-precision model)")]
    for container, what in containers:
        pristine = container.copy() if isinstance(container, np.ndarray) else container.clone()
        try:
            got = call(compute_capping_threshold, container, 0.25, name="compute_capping_threshold")
        except AssertionError:
            raise
        except Exception as err:
            extra = (": numpy has no bfloat16 and torch.quantile takes only float32/float64, so convert first "
                     "(projections.float())") if "bfloat16" in what else ""
            fail(f"compute_capping_threshold failed on {what} ({type(err).__name__}: {str(err)[:100]}){extra}")
        check(isinstance(got, float) and abs(got - 0.0) < 1e-6,
              f"compute_capping_threshold(projections, 0.25) on {what} returned {got!r}, expected the Python float 0.0")
        same = np.array_equal(container, pristine) if isinstance(container, np.ndarray) else torch.equal(container, pristine)
        if not same:
            fail(f"compute_capping_threshold changed the projections it was given ({what}; sorted in place?): sort a copy "
                 "(np.sort(x), torch.sort(x).values) and leave the caller's data as it was")
    passed("test_compute_capping_threshold")


def test_compute_capping_threshold_input_checks(compute_capping_threshold) -> None:
    require_implemented(compute_capping_threshold, "compute_capping_threshold")
    x = THRESHOLD_X
    for q in (0.0, 1.0):  # valid edges: only that they are accepted (their values are the maths test's job)
        try:
            call(compute_capping_threshold, x, q)
        except NotImplementedError as err:
            raise NotImplementedYet("compute_capping_threshold: not implemented yet") from err
        except ValueError:
            fail(f"compute_capping_threshold(x, {q}) raised ValueError: 0 and 1 are valid quantiles (the minimum and the "
                 "maximum); reject only values outside [0, 1]")
    for bad_q in (25, -0.1, 1.5):
        expect_value_error(compute_capping_threshold, x, bad_q, name="compute_capping_threshold",
                           what=f"quantile = {bad_q} (quantile is a fraction in [0, 1]; the paper's 25th percentile is 0.25)")
    expect_value_error(compute_capping_threshold, [], 0.25, name="compute_capping_threshold", what="an empty list of projections")
    passed("test_compute_capping_threshold_input_checks")


# -----------------------------------------------------------------------------
# Exercise 2.7


class _TextConfig:
    def __init__(self, d):
        self.hidden_size = d


class _Config:
    def __init__(self, d):
        self._text = _TextConfig(d)
        self.hidden_size = d

    def get_text_config(self, *args, **kwargs):
        return self._text


class _BiasBlock(torch.nn.Module):
    def __init__(self, bias: torch.Tensor, tuple_out: bool):
        super().__init__()
        self.register_buffer("bias", bias)
        self.tuple_out = tuple_out

    def forward(self, x):
        y = x + self.bias if bool(self.bias.any()) else x  # an identity block hands its input on as it is
        return (y, None) if self.tuple_out else y


class _FakeLM(torch.nn.Module):
    """Blocks that add a fixed bias; the capper's hooks are the only other thing that acts."""

    def __init__(self, biases: list[torch.Tensor], tuple_out: bool = False):
        super().__init__()
        self.layers = torch.nn.ModuleList([_BiasBlock(b, tuple_out) for b in biases])
        self.config = _Config(biases[0].shape[0])
        self.tuple_out = tuple_out

    def get_decoder(self):
        return self

    def forward(self, x):
        for block in self.layers:
            out = block(x)
            if self.tuple_out and not isinstance(out, tuple):
                raise AssertionError("a capping hook returned a tensor where the block had returned a tuple: return the "
                                     "container you received (with_hidden(output, new_hidden))")
            x = out[0] if isinstance(out, tuple) else out
        return x


def _floor(h, v, tau):
    v_hat = v / v.norm()
    p = h @ v_hat
    return h + (tau - p).clamp(min=0).unsqueeze(-1) * v_hat


def _simulate(biases, x, caps: dict):
    for k, b in enumerate(biases):
        x = x + b
        for v, tau in caps.get(k, []):
            x = _floor(x, v, tau)
    return x


def _check_vectors_kept(vectors, before) -> None:
    if any(not torch.equal(torch.as_tensor(v), b) for v, b in zip(vectors, before)):
        fail("ActivationCapper changed the vectors it was given (normalised them in place, e.g. v /= v.norm() or "
             "v.div_(...)): build new unit vectors (v / v.norm()) and leave the caller's tensors as they were (the same "
             "axis is used again for projections and other cappers)")


def _run_capper(ActivationCapper, fake, vectors, thresholds, layers, x):
    v_before = [torch.as_tensor(v).clone() for v in vectors]  # a list of vectors, or the rows of a tensor
    capper = call(ActivationCapper, fake, vectors, thresholds, layers, name="ActivationCapper")
    x_before = x.clone()
    try:
        with capper:
            y = fake(x)
    except NotImplementedError as err:
        raise NotImplementedYet("ActivationCapper: not implemented yet") from err
    except AssertionError:
        raise
    except Exception as err:
        remove_leftover_hooks(fake)
        if x.dtype != torch.float32 and "dtype" in str(err).lower():
            fail(f"on a bfloat16 hidden state the capping hook failed ({type(err).__name__}: {str(err)[:100]}): compute the "
                 "projection in float32 (h.float() @ v_hat) and cast the capped result back to h.dtype")
        raise
    n = count_hooks(fake)
    if n:
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper left {n} hook(s) after the `with` block: remove every hook in __exit__")
    if not torch.equal(x, x_before):
        fail("ActivationCapper edited the hidden state in place: build a new tensor (h - v_hat * min(<h, v_hat> - tau, 0))")
    _check_vectors_kept(vectors, v_before)
    expect_tensor(y, Float[Tensor, "batch seq d_model"], "the capped forward", batch=x.shape[0], seq=x.shape[1], d_model=x.shape[2])
    return y


def _explain_single_layer(y, x, v, tau) -> None:
    """y is the capped output of identity blocks for input x, one layer capped along v at tau: name the mistake."""
    v_hat = v / v.norm()
    ceiling = x - (x @ v_hat - tau).clamp(min=0).unsqueeze(-1) * v_hat
    if close(y, ceiling):
        fail("the sign is flipped: you capped from ABOVE (a ceiling, max(<h, v_hat> - tau, 0)). The course's cap is a "
             "floor on the assistant-pointing axis: h - v_hat * min(<h, v_hat> - tau, 0) raises projections below tau "
             "and leaves those above it alone")
    if close(y, _floor(x, v, -tau)):
        fail("the threshold has the wrong sign: the cap keeps <h, v_hat> >= tau. (Converting the released "
             "ceiling form means reversing the vector AND the threshold: v_hat = -u_hat, tau = -c.)")
    unnormalised = x - (x @ v - tau).clamp(max=0).unsqueeze(-1) * v
    if close(y, unnormalised) or close(y, x - (x @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v):
        fail(f"normalise the capping vector: the cap uses the unit vector v_hat = v / ||v|| (here ||v|| = {float(v.norm()):g})")
    if close(y, _floor(x, v, tau / float(v.norm()))):
        fail(f"the floor ended at <h, v_hat> = tau / ||v|| = {tau / float(v.norm()):g}, not at tau = {tau:g}: compare the "
             "projection on the UNIT vector v_hat with tau (h @ v_hat - tau)")
    if not close(y[..., 1:], x[..., 1:]):
        fail("the cap changed the part of h orthogonal to v_hat: only the component along v_hat may move "
             "(h - v_hat * min(<h, v_hat> - tau, 0))")
    want = _floor(x, v, tau)
    last_only = x.clone()
    last_only[:, -1] = want[:, -1]
    if close(y, last_only):
        fail("only the last position was capped: cap every position of every forward pass")
    if close(y, x):
        fail("nothing was capped: register the hook on block layers[i] and RETURN the new output from the hook")
    fail(f"wrong capped output: got {y[0].tolist()}, expected {want[0].tolist()} (floor at tau = {tau} along v = {v.tolist()})")


def test_activation_capper(ActivationCapper, model=None, tokenizer=None) -> None:
    require_implemented(ActivationCapper, "ActivationCapper")
    d = 4
    zeros = [torch.zeros(d) for _ in range(3)]
    v = torch.tensor([2.0, 0.0, 0.0, 0.0])  # not unit length
    tau = 1.0
    x = torch.tensor([[[0.5, 0.0, 0.0, 1.0], [1.0, 5.0, 5.0, 5.0], [2.5, -1.0, 0.0, 0.0], [-3.0, 1.0, 2.0, 0.0]]])
    want = _simulate(zeros, x, {1: [(v, tau)]})

    # --- nothing happens before `with`: the hooks belong in __enter__
    fake = _FakeLM(zeros)
    capper = call(ActivationCapper, fake, [v], [tau], [1], name="ActivationCapper")
    _check_vectors_kept([v], [torch.tensor([2.0, 0.0, 0.0, 0.0])])
    n_early, y_early = count_hooks(fake), fake(x)
    if n_early or not close(y_early, x):
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper acted before `with capper:` was entered ({n_early} hook(s) on the model right after "
             "ActivationCapper(...)): register the hooks in __enter__, not in __init__, so that building a capper "
             "changes nothing until it is used")

    # --- hand-built geometry, one layer
    fake = _FakeLM(zeros)
    with _spy_hook_registrations(fake) as seen:
        y = _run_capper(ActivationCapper, fake, [v], [tau], [1], x)
    _check_hooked_blocks(seen, {1}, "ActivationCapper")
    if not close(y, want):
        _explain_single_layer(y, x, v, tau)

    # --- decode-shaped and batched forwards
    x1 = torch.tensor([[[-5.0, 1.0, 1.0, 1.0]]])
    y1 = _run_capper(ActivationCapper, _FakeLM(zeros), [v], [tau], [1], x1)
    if not close(y1, _simulate(zeros, x1, {1: [(v, tau)]})):
        fail("a forward pass with one token (a decode step with the KV cache) was not capped correctly: cap every "
             "forward, whatever its length")
    xb = torch.tensor([[[-1.0, 0, 0, 0], [3.0, 0, 0, 0], [0.0, 2, 2, 2]], [[0.9, 1, 1, 1], [-4.0, 0, 1, 0], [1.5, 0, 0, 0]]])
    yb = _run_capper(ActivationCapper, _FakeLM(zeros), [v], [tau], [1], xb)
    check(close(yb, _simulate(zeros, xb, {1: [(v, tau)]})), "a batch of 2 sequences was not capped correctly: cap every position of every sequence")

    # --- tuple outputs
    yt = _run_capper(ActivationCapper, _FakeLM(zeros, tuple_out=True), [v], [tau], [1], x)
    check(close(yt, want), "with blocks that return tuples the capped output is wrong: use hidden_of(output) and with_hidden(output, new)")

    # --- several layers at once, each with its own vector and threshold
    g = torch.Generator().manual_seed(3)
    biases = [torch.randn(d, generator=g) for _ in range(4)]
    v1, v2 = 2.0 * torch.randn(d, generator=g), 0.5 * torch.randn(d, generator=g)
    xm = torch.randn(2, 5, d, generator=g) * 2
    h1 = xm + biases[0] + biases[1]
    t1 = float((h1 @ (v1 / v1.norm())).median())
    h3 = _floor(h1, v1, t1) + biases[2] + biases[3]
    t2 = float((h3 @ (v2 / v2.norm())).median())
    want_m = _simulate(biases, xm, {1: [(v1, t1)], 3: [(v2, t2)]})
    for vectors in ([v1, v2], torch.stack([v1, v2])):
        fake = _FakeLM(biases)
        with _spy_hook_registrations(fake) as seen:
            ym = _run_capper(ActivationCapper, fake, vectors, [t1, t2], [1, 3], xm)
        _check_hooked_blocks(seen, {1, 3}, "ActivationCapper")
        if not close(ym, want_m, rtol=1e-4, atol=1e-4):
            if close(ym, _simulate(biases, xm, {3: [(v2, t2)]}), rtol=1e-4, atol=1e-4):
                fail("with layers [1, 3] only the last layer was capped: register one hook per layer")
            if close(ym, _simulate(biases, xm, {1: [(v2, t2)], 3: [(v2, t2)]}), rtol=1e-4, atol=1e-4):
                fail("every capped layer used the LAST layer's vector and threshold: a function defined inside a loop looks "
                     "its loop variables up when it runs (late binding). Build each hook in a helper that takes v_hat and "
                     "tau (self._make_hook(v_hat, tau)), or bind them as default arguments")
            if close(ym, _simulate(biases, xm, {1: [(v2, t2)], 3: [(v1, t1)]}), rtol=1e-4, atol=1e-4):
                fail("vectors[i] and thresholds[i] belong to layers[i]; they were applied to the wrong layers")
            fail("with two capped layers the output differs from capping block 1 along vectors[0] at thresholds[0] and "
                 "block 3 along vectors[1] at thresholds[1]")
    # the same caps listed with the layers in decreasing order: entry i is (vectors[i], thresholds[i], layers[i])
    fake = _FakeLM(biases)
    with _spy_hook_registrations(fake) as seen:
        ym = _run_capper(ActivationCapper, fake, [v2, v1], [t2, t1], [3, 1], xm)
    _check_hooked_blocks(seen, {1, 3}, "ActivationCapper")
    if not close(ym, want_m, rtol=1e-4, atol=1e-4):
        fail("with layers [3, 1] (not in increasing order) and vectors and thresholds listed in the same order, the caps "
             "went to the wrong layers: vectors[i] and thresholds[i] belong to layers[i], whatever the order of the "
             "layers. Keep the three lists aligned (zip them; do not sort the layers alone)")

    # --- half precision: the block's dtype is kept, and the projection is computed precisely
    db = 64
    gb = torch.Generator().manual_seed(11)
    vb = torch.randn(db, generator=gb)
    vb_hat = vb / vb.norm()
    orth = 0.05 * torch.randn(6, db, generator=gb)
    orth = orth - (orth @ vb_hat)[:, None] * vb_hat
    heights = torch.tensor([-150.3, -97.7, -63.1, -120.9, 7.0, 12.5])  # four far below tau, two above
    tau_b = 2.0
    xh = (orth + heights[:, None] * vb_hat)[None].to(torch.bfloat16)
    yh = _run_capper(ActivationCapper, _FakeLM([torch.zeros(db, dtype=torch.bfloat16)] * 2), [vb], [tau_b], [1], xh)
    if yh.dtype != torch.bfloat16:
        fail(f"on a bfloat16 model the capped hidden state came back as {yh.dtype}: cast the capped result back to the "
             "block's dtype (capped.to(h.dtype)); a float32 tensor fed into the next bfloat16 block fails or silently "
             "changes the model's precision")
    after = yh.double()[0] @ vb_hat.double()
    before = xh.double()[0] @ vb_hat.double()
    below = before < tau_b
    err = float((after[below] - tau_b).abs().max())
    if err > 0.05:
        fail(f"in bfloat16 the capped projections miss tau = {tau_b} by up to {err:.3f} (got {_rounded(after[below].tolist(), 3)}): "
             "compute the projection and the update in float32 (h.float() @ v_hat) and cast the result back to h.dtype; "
             "a bfloat16 dot product keeps about 3 significant digits")
    if not close(yh[0, ~below], xh[0, ~below], rtol=1e-2, atol=1e-2):
        fail("in bfloat16, positions already above tau were changed: the floor leaves them alone")

    # --- hooks removed on exceptions (every layer's hook), and re-entry
    fake = _FakeLM(biases)
    capper = call(ActivationCapper, fake, [v1, v2], [t1, t2], [1, 3], name="ActivationCapper")
    try:
        with capper:
            check(count_hooks(fake) >= 2, "inside the `with` block there should be one hook per capped layer")
            raise _Boom("inside the with block")
    except _Boom:
        pass
    n = count_hooks(fake)
    check(n == 0, f"ActivationCapper left {n} hook(s) after an exception inside the `with` block: __exit__ must remove "
                  "every layer's hook (keep all the handles, not just the last)")
    with capper:
        pass
    check(count_hooks(fake) == 0, "ActivationCapper left hooks after being used a second time")

    # --- a real model: the projection after the capped block is >= tau, the orthogonal part unchanged
    model, tokenizer = model_or_tiny(model, tokenizer)
    dm = _d_model(model)
    layer = 1
    vr = _random_vector(dm, 2.0, seed=9)
    ids = tokenizer("a short test sentence for capping", return_tensors="pt", add_special_tokens=False)["input_ids"].to(input_device(model))
    with _observe_block(model, layer) as obs:
        with torch.inference_mode():
            model(input_ids=ids)
    base = obs["before"][0].float()
    vr_hat = vr / vr.norm()
    tau_r = float((base @ vr_hat).median())
    capper = call(ActivationCapper, model, [vr], [tau_r], [layer], name="ActivationCapper")
    with _observe_block(model, layer) as obs:
        with capper, torch.inference_mode():
            model(input_ids=ids)
    no_hooks_left(model, "ActivationCapper")
    capped = obs["after"][0].float()
    check(close(capped, _floor(base, vr, tau_r), rtol=1e-4, atol=1e-4),
          "on the tiny model the capped block output differs from h - v_hat * min(<h, v_hat> - tau, 0)")
    passed("test_activation_capper")


def test_activation_capper_input_checks(ActivationCapper) -> None:
    require_implemented(ActivationCapper, "ActivationCapper")
    g = torch.Generator().manual_seed(3)
    d = 4
    biases = [torch.randn(d, generator=g) for _ in range(4)]
    v1, v2 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    for args in (([v1, v2], [0.5], [1, 3]), ([v1, v2], [0.5, 0.2], [1]), ([v1], [0.5, 0.2], [1, 3])):
        fake = _FakeLM(biases)
        expect_value_error(ActivationCapper, fake, *args, name="ActivationCapper",
                           what=f"{len(args[0])} vectors, {len(args[1])} thresholds and {len(args[2])} layers (the lengths "
                                "differ: one vector and one threshold per capped layer)")
        remove_leftover_hooks(fake)
    # a layer the model does not have: refused (when built or when entered) without leaving a hook behind
    fake = _FakeLM(biases)
    try:
        with call(ActivationCapper, fake, [v1, v2], [0.5, 0.2], [1, 7], name="ActivationCapper"):
            pass
    except (IndexError, ValueError):
        pass
    except AssertionError:
        raise
    except Exception as err:
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper with layers [1, 7] on a model with 4 blocks raised {err!r}: refuse a layer that does not "
             "exist with IndexError (check_layer(model, layer) does it)")
    else:
        remove_leftover_hooks(fake)
        fail("ActivationCapper accepted layers [1, 7] on a model with 4 blocks: refuse a layer that does not exist "
             "(check_layer(model, layer) raises IndexError)")
    n = count_hooks(fake)
    if n:
        remove_leftover_hooks(fake)
        fail(f"ActivationCapper left {n} hook(s) on the model after failing on layer 7 of a model with 4 blocks: `with` "
             "does not call __exit__ when __enter__ raises, so block 1 stayed capped. Check every layer in __init__ "
             "(check_layer(model, layer)), or remove the hooks already registered when __enter__ fails")
    passed("test_activation_capper_input_checks")


# -----------------------------------------------------------------------------
# Exercise 2.8


def test_compute_turn_projections(compute_turn_projections, model=None, tokenizer=None) -> None:
    require_implemented(compute_turn_projections, "compute_turn_projections")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    layer = max(1, n_blocks // 2)
    axis = _random_vector(d, 2.0, seed=13)
    messages = CONVERSATION
    with using(compute_turn_projections, ConversationAnalyzer=_ReferenceAnalyzer):
        got = call(compute_turn_projections, model, tokenizer, messages, axis, layer, name="compute_turn_projections")
        want = _projections(model, tokenizer, messages, axis, layer)
        if not (isinstance(got, (list, tuple)) and _floats_close(got, want, 1e-3)):
            if _floats_close(got, [w * float(axis.norm()) for w in want], 1e-3):
                fail("compute_turn_projections returned a . v: divide by ||v|| (the projection is a . v / ||v||; here "
                     f"||v|| = {float(axis.norm()):g})")
            for other in range(n_blocks):
                if other != layer and _floats_close(got, _projections(model, tokenizer, messages, axis, other), 1e-3):
                    fail(f"compute_turn_projections(..., layer={layer}) returned the projections at block {other}: "
                         "use the layer argument")
            fail(f"compute_turn_projections without a capper returned {got!r}, expected {_rounded(want)} "
                 "(the projection a . v / ||v|| of each assistant turn's mean at block `layer`)")
        ctx = _ShiftContext(model, layer - 1, _random_vector(d, 20.0, seed=14))
        got_c = call(compute_turn_projections, model, tokenizer, messages, axis, layer, capper=ctx, name="compute_turn_projections")
        left_open = ctx.active
        if left_open:
            ctx.close()
        with ctx:
            want_c = _projections(model, tokenizer, messages, axis, layer)
        if left_open:
            fail("the capper was entered but never exited: it was still active after compute_turn_projections returned. "
                 "Use `with capper:`, which exits (removing its hooks) even when the body raises")
        if ctx.entries < 2 or _floats_close(got_c, want, 1e-3):
            fail("the capper was not active during the forward pass: run the projection inside `with capper:`")
        check(_floats_close(got_c, want_c, 1e-3), f"with the capper active, expected {_rounded(want_c)}, got {got_c!r}")
        _check_capper_exits_on_error(model, ctx, lambda: compute_turn_projections(model, tokenizer, messages, axis, layer,
                                                                                  capper=ctx), "compute_turn_projections")
    no_hooks_left(model, "compute_turn_projections")
    passed("test_compute_turn_projections")


def _check_capper_exits_on_error(model, ctx, fn, name: str) -> None:
    """A forward pass that fails while the capper is active must still leave the capper exited."""
    with _raise_in_forward(model, block=0, when=lambda: ctx.active):
        try:
            fn()
        except _Boom:
            pass
        except NotImplementedError as err:
            raise NotImplementedYet(f"{name}: not implemented yet") from err
    if ctx.active:
        ctx.close()
        remove_leftover_hooks(model)
        fail(f"after an exception inside a forward pass, {name} left the capper active (entered, never exited): use "
             "`with capper:`, which exits even when the body raises")


EMPTY_REPLY = "[empty reply]"  # what an empty generated reply is recorded as (stated in the exercise)


def _replay(model, tokenizer, system, users, ctx, n_new, history=None, gen=generate):
    """(messages, replies): greedy replies to each user turn, after the model's own earlier replies
    (or after `history`, the transcript's replies, to recognise that mistake)."""
    messages = [{"role": "system", "content": system}] if system else []
    replies = []
    for k, u in enumerate(users):
        messages.append({"role": "user", "content": u})
        with ctx if ctx is not None else nullcontext():
            reply = gen(model, tokenizer, [messages], max_new_tokens=n_new)[0]
        replies.append(reply if reply.strip() else EMPTY_REPLY)
        messages.append({"role": "assistant", "content": history[k] if history else replies[-1]})
    return messages, replies


def _blanking_generate(users: list[str], blank_after: str, calls: list):
    """`generate`, except that the reply to the user message `blank_after` is whitespace only."""
    def last_user(p):
        if isinstance(p, str):  # an already formatted prompt: the user message that appears last in it
            found = [(p.rfind(u), u) for u in users if p.rfind(u) >= 0]
            return max(found)[1] if found else None
        said = [m["content"] for m in p if m.get("role") == "user"]
        return said[-1] if said else None

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        calls.append(len(prompts))
        out = generate(model, tokenizer, prompts, *args, **kwargs)
        return [" \n " if last_user(p) == blank_after else o for p, o in zip(prompts, out)]

    return fake_generate


def _checked_projections(model, tokenizer, messages, axis, layer, capper=None):
    """The reference compute_turn_projections, which first checks what it is given."""
    for m in messages:
        if m["role"] == "assistant" and not m["content"].strip():
            fail(f"an empty (whitespace-only) reply {m['content']!r} was kept in the conversation: record it as "
                 f"EMPTY_REPLY ({EMPTY_REPLY!r}), so that every assistant turn has tokens to average")
    return _reference_turn_projections(model, tokenizer, messages, axis, layer, capper=capper)


def _check_condition(res, name, want, users, has_system, convo, max_turns, model, tokenizer, axis, layer, ctx, n_new,
                     expected, gen):
    check(isinstance(res, dict) and set(res) >= {"uncapped", "capped"}, "return a dict with keys 'uncapped' and 'capped'")
    if isinstance(res["uncapped"], dict) and isinstance(res["capped"], dict) and \
            res["uncapped"].get("conversation") is res["capped"].get("conversation"):
        fail("res['uncapped']['conversation'] and res['capped']['conversation'] are the same list: start each condition "
             "from a fresh list of messages (a new list, not another name for the same one)")
    run = res[name]
    check(isinstance(run, dict) and {"conversation", "projections"} <= set(run),
          f"res[{name!r}] should be a dict with 'conversation' and 'projections'")
    conv = run["conversation"]
    check(isinstance(conv, list) and all(isinstance(m, dict) for m in conv), f"res[{name!r}]['conversation'] should be a list of messages")
    if has_system and (not conv or conv[0] != {"role": "system", "content": "SYSTEM-PROMPT"}):
        fail(f"res[{name!r}]['conversation'] should start with the transcript's system prompt")
    if not has_system and conv and conv[0].get("role") == "system":
        fail(f"res[{name!r}]['conversation'] starts with a system message {conv[0]!r} although the transcript has no system "
             "prompt: add one only when there is one")
    if [m["role"] for m in conv] != [m["role"] for m in want]:
        n_users = sum(m["role"] == "user" for m in conv)
        if n_users != len(users):
            fail(f"res[{name!r}]['conversation'] has {n_users} user turns, expected {len(users)}: "
                 + (f"replay only the first max_turns={max_turns} user messages" if max_turns is not None
                    else "with max_turns=None replay every user message"))
        fail(f"res[{name!r}]['conversation'] has roles {[m['role'] for m in conv]}, expected {[m['role'] for m in want]} "
             f"(the system prompt if any, then each user turn followed by the model's reply)")
    check([m["content"] for m in conv if m["role"] == "user"] == users, f"res[{name!r}]: replay the transcript's user messages unchanged, in order")
    got_replies = [m["content"] for m in conv if m["role"] == "assistant"]
    want_replies = [m["content"] for m in want if m["role"] == "assistant"]
    if [r.strip() for r in got_replies] != [r.strip() for r in want_replies]:
        other = "uncapped" if name == "capped" else "capped"
        if got_replies == [m["content"] for m in expected[other] if m["role"] == "assistant"]:
            fail("the capped replies equal the uncapped ones: generate the capped replies with the capper active" if name == "capped"
                 else "the uncapped replies were generated with the capper active")
        if any(not r.strip() for r in got_replies):
            fail(f"res[{name!r}] kept an empty (whitespace-only) reply: record it as EMPTY_REPLY ({EMPTY_REPLY!r})")
        orig = [m["content"] for m in convo if m["role"] == "assistant"][: len(users)]
        if got_replies == orig:
            fail(f"res[{name!r}] kept the transcript's assistant replies: let the model write every reply itself")
        c = ctx if name == "capped" else None
        system = "SYSTEM-PROMPT" if has_system else None
        if name == "capped":
            uncapped_replies = [m["content"] for m in expected["uncapped"] if m["role"] == "assistant"]
            _, shared = _replay(model, tokenizer, system, users, c, n_new, history=uncapped_replies, gen=gen)
            if got_replies == shared:
                fail("each capped reply was generated after the UNCAPPED condition's earlier replies: the history of each "
                     "condition must be the model's OWN earlier replies in that condition")
        _, alt_replies = _replay(model, tokenizer, system, users, c, n_new, history=orig, gen=gen)
        if got_replies == alt_replies:
            fail(f"res[{name!r}]: each reply was generated after the transcript's original assistant replies; the "
                 "history of each condition must be the model's OWN earlier replies")
        _, long_replies = _replay(model, tokenizer, system, users, c, 48, gen=gen)
        if got_replies == long_replies:
            fail(f"res[{name!r}]: the replies are as long as with the default 48 new tokens although max_new_tokens={n_new} "
                 "was given: the max_new_tokens argument was ignored")
        fail(f"res[{name!r}]: the replies differ from greedy generation of each turn after the model's own earlier "
             f"replies (max_new_tokens={n_new}): got {got_replies!r}, expected {want_replies!r}")
    proj = run["projections"]
    want_p = _reference_turn_projections(model, tokenizer, conv, axis, layer, capper=ctx if name == "capped" else None)
    if not _floats_close(proj, want_p, 1e-3):
        if name == "capped" and _floats_close(proj, _reference_turn_projections(model, tokenizer, conv, axis, layer), 1e-3):
            fail("project the capped conversation with the capper active (compute_turn_projections(..., capper=capper))")
        if name == "uncapped" and _floats_close(proj, _reference_turn_projections(model, tokenizer, conv, axis, layer, capper=ctx), 1e-3):
            fail("the uncapped conversation was projected with the capper active: project it with capper=None")
        fail(f"res[{name!r}]['projections'] = {_rounded(proj)}, expected {_rounded(want_p)}: compute_turn_projections of that conversation")


def test_run_capping_experiment(run_capping_experiment, model=None, tokenizer=None) -> None:
    require_implemented(run_capping_experiment, "run_capping_experiment")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    layer = max(1, len(get_blocks(model)) // 2)
    axis = _random_vector(d, 2.0, seed=17)
    convo = [dict(m) for m in CONVERSATION if m["role"] != "system"]  # copies: CONVERSATION is shared
    n_new = 6
    ctx = _ShiftContext(model, 1, _random_vector(d, 40.0, seed=18))

    # 1. a transcript with a system prompt, the first max_turns user turns, one reply left blank by the model
    # 2. a transcript with no system prompt (no "system_prompt" key, as data.load_transcript gives), every turn
    with_system = {"domain": "test", "name": "test", "description": "", "system_prompt": "SYSTEM-PROMPT", "conversation": convo}
    without_system = {"domain": "test", "name": "plain", "description": "", "conversation": convo[:4]}
    runs = [(with_system, 2, True), (without_system, None, False)]
    for transcript, max_turns, has_system in runs:
        users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
        calls: list = []
        gen = _blanking_generate(users, users[1], calls) if has_system else generate
        ctx.entries = 0
        kwargs = {"max_new_tokens": n_new} if max_turns is None else {"max_new_tokens": n_new, "max_turns": max_turns}
        pristine = copy.deepcopy(transcript)
        with using(run_capping_experiment, compute_turn_projections=_checked_projections, generate=gen):
            try:
                res = call(run_capping_experiment, model, tokenizer, transcript, axis, layer, ctx,
                           name="run_capping_experiment", **kwargs)
            except AssertionError:
                raise
            except Exception as err:
                if ctx.active:
                    ctx.close()
                remove_leftover_hooks(model)
                if has_system:
                    raise
                if isinstance(err, KeyError) and "system_prompt" in str(err):
                    fail(f"run_capping_experiment raised KeyError: {err} on a transcript with no system prompt (no "
                         "'system_prompt' key, as data.load_transcript gives for most transcripts): use "
                         "transcript.get('system_prompt') and start from the first user message")
                if isinstance(err, TypeError) and "None" in str(err):
                    fail(f"run_capping_experiment raised TypeError: {err} with max_turns=None: max_turns=None means "
                         "replay every user message (users[:max_turns] does that)")
                fail(f"run_capping_experiment raised {type(err).__name__}: {err} on a transcript with no system prompt "
                     "(no 'system_prompt' key) and max_turns=None (replay every user message)")
        if ctx.active:
            ctx.close()
            remove_leftover_hooks(model)
            fail("the capper is still active after run_capping_experiment returned: use `with capper:`")
        no_hooks_left(model, "run_capping_experiment")
        if transcript != pristine:
            fail("run_capping_experiment changed the transcript it was given (appended to transcript['conversation'], "
                 "or edited its messages): build each condition's conversation as a new list of new message dicts")
        if not calls and gen is not generate:  # the student generated some other way: no reply is blanked
            gen = generate
        system = "SYSTEM-PROMPT" if has_system else None
        expected = {"uncapped": _replay(model, tokenizer, system, users, None, n_new, gen=gen)[0],
                    "capped": _replay(model, tokenizer, system, users, ctx, n_new, gen=gen)[0]}
        for name in ("uncapped", "capped"):
            _check_condition(res, name, expected[name], users, has_system, transcript["conversation"], max_turns, model,
                             tokenizer, axis, layer, ctx, n_new, expected, gen)
    with using(run_capping_experiment, compute_turn_projections=_checked_projections, generate=generate):
        _check_capper_exits_on_error(model, ctx, lambda: run_capping_experiment(
            model, tokenizer, with_system, axis, layer, ctx, max_new_tokens=2, max_turns=1), "run_capping_experiment")
    no_hooks_left(model, "run_capping_experiment")
    passed("test_run_capping_experiment")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
