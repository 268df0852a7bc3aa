"""Tests for Section 2 — The Assistant Axis: drift monitoring and activation capping.

Each test takes the student's object first and builds its own fixtures (the tiny offline model, or
hand-built geometry on a fake model); expected values come from `utils` or from small independent
computations here.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    fail,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
    using,
)
from utils import data
from utils.activations import turn_mean_activations
from utils.chat import assistant_turn_spans, build_messages, format_prompt
from utils.generation import generate
from utils.hooks import count_hooks, get_blocks, hidden_of
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


@contextmanager
def _spy_hook_registrations(model):
    """Record (block index) of every hook registered on a decoder block while active."""
    blocks = get_blocks(model)
    seen: list[int] = []
    for i, block in enumerate(blocks):
        for kind in ("register_forward_hook", "register_forward_pre_hook"):
            original = getattr(block, kind)

            def spy(*args, _i=i, _original=original, **kwargs):
                seen.append(_i)
                return _original(*args, **kwargs)

            object.__setattr__(block, kind, spy)
    try:
        yield seen
    finally:
        for block in blocks:
            for kind in ("register_forward_hook", "register_forward_pre_hook"):
                block.__dict__.pop(kind, None)


def _check_hooked_blocks(seen: list[int], expected: set[int], name: str) -> None:
    if seen and set(seen) != expected:
        wrong = sorted(set(seen) - expected)
        off = " (off by one: block L's output is hidden_states[L + 1], and `layer` is the 0-based block index)" if any(
            abs(w - e) == 1 for w in wrong for e in expected) else ""
        fail(f"{name} put hooks on block(s) {sorted(set(seen))}, expected block(s) {sorted(expected)}{off}")


@contextmanager
def _raise_in_forward(model, block: int = 0, pre: bool = True):
    """Every forward pass fails (a pre-hook on `block` raises _Boom); the hook is removed after."""
    def boom(*args, **kwargs):
        raise _Boom("simulated failure inside the forward pass")

    b = get_blocks(model)[block]
    handle = b.register_forward_pre_hook(boom) if pre else b.register_forward_hook(boom)
    try:
        yield
    finally:
        handle.remove()


def _check_hooks_after_exception(model, fn, name: str, block: int = 0) -> None:
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
    """A context manager that adds a fixed vector to one block's output while active (counts entries)."""

    def __init__(self, model, block: int, vector: torch.Tensor):
        self.model, self.block, self.vector = model, block, vector
        self.entries = 0
        self.active = False
        self._handle = None

    def _hook(self, module, args, output):
        h = hidden_of(output)
        new = h + self.vector.to(device=h.device, dtype=h.dtype)
        return new if isinstance(output, torch.Tensor) else (new, *output[1:])

    def __enter__(self):
        self.entries += 1
        self.active = True
        self._handle = get_blocks(self.model)[self.block].register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.active = False
        return False


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


CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "My code prints nothing. What could be wrong?"},
    {"role": "assistant", "content": "Check that the function is actually called, and that output is not buffered."},
    {"role": "user", "content": "It is called. Do you ever get frustrated with questions like this?"},
    {"role": "assistant", "content": "No, I am an AI assistant. Let us look at where the print happens."},
    {"role": "user", "content": "Thanks, that fixed it!"},
    {"role": "assistant", "content": "Glad to hear it works now."},
]

# -----------------------------------------------------------------------------
# Exercise 2.1


def test_record_hidden_shapes(record_hidden_shapes, model=None, tokenizer=None) -> None:
    require_implemented(record_hidden_shapes, "record_hidden_shapes")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    layer = min(1, n_blocks - 1)
    prompt = "Tell me a short story about the sea."
    max_new = 5
    ids = tokenizer(format_prompt(build_messages(None, prompt), tokenizer), add_special_tokens=False, return_tensors="pt")
    T = ids["input_ids"].shape[1]
    ids = {k: v.to(input_device(model)) for k, v in ids.items()}
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    n_forwards = out.shape[1] - T

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
    check(len(shapes) == n_forwards,
          f"recorded {len(shapes)} shapes, but greedy generation of up to {max_new} tokens runs {n_forwards} forward "
          "passes here (one per generated token): record once per forward, generate greedily with max_new_tokens")
    passed("test_record_hidden_shapes", f"prefill {shapes[0]}, then {len(shapes) - 1} x {(1, 1, d)}")


# -----------------------------------------------------------------------------
# Exercise 2.2


def test_conversation_analyzer(ConversationAnalyzer, model=None, tokenizer=None) -> None:
    require_implemented(ConversationAnalyzer, "ConversationAnalyzer")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    layer = max(1, min(n_blocks - 2, n_blocks // 2))
    axis = _random_vector(d, 3.0, seed=21)
    messages = CONVERSATION
    analyzer = call(ConversationAnalyzer, model, tokenizer, layer, axis, name="ConversationAnalyzer")

    # --- spans
    _, want_spans, ids = assistant_turn_spans(messages, tokenizer)
    spans = call(analyzer.turn_spans, messages, name="ConversationAnalyzer.turn_spans")
    check(isinstance(spans, (list, tuple)), f"turn_spans should return a list of (start, end) pairs, got {type(spans).__name__}")
    spans = [tuple(int(x) for x in s) for s in spans]
    n_turns = len(want_spans)
    if len(spans) != n_turns:
        extra = " -- user (and system) turns must not be included" if len(spans) > n_turns else ""
        fail(f"turn_spans returned {len(spans)} spans for a conversation with {n_turns} assistant messages{extra}")

    def _span_message(got, want, tok, token_ids, where=""):
        (s, e), (ws, we) = got, want
        text = tok.decode(token_ids[s:e]) if 0 <= s < e <= len(token_ids) else "?"
        if s < ws:
            return (f"turn_spans{where}: span {got} starts {ws - s} token(s) before the content ({want}): it includes the "
                    f"chat markers (decodes to {text!r:.70})")
        if e > we:
            return (f"turn_spans{where}: span {got} ends {e - we} token(s) after the content ({want}): it includes the "
                    f"end-of-turn token (decodes to {text!r:.70})")
        return f"turn_spans{where}: span {got} should be {want} (the exact tokens of the assistant content); it decodes to {text!r:.70}"

    for got, want in zip(spans, want_spans):
        if got != want:
            fail(_span_message(got, want, tokenizer, ids))
    try:  # a template without a system role (Gemma 2): the system prompt is merged into the first user turn
        from utils.models import load_tokenizer

        gemma = load_tokenizer("tiny-gemma2")
    except Exception:  # pragma: no cover - assets missing
        gemma = None
    if gemma is not None:
        real_tok = analyzer.tokenizer
        analyzer.tokenizer = gemma
        try:
            g_spans = call(analyzer.turn_spans, messages, name="ConversationAnalyzer.turn_spans")
        finally:
            analyzer.tokenizer = real_tok
        _, g_want, g_ids = assistant_turn_spans(messages, gemma)
        g_spans = [tuple(int(x) for x in s) for s in g_spans]
        check(len(g_spans) == len(g_want), f"with a Gemma-style template (no system role) turn_spans returned {len(g_spans)} spans, expected {len(g_want)}")
        for got, want in zip(g_spans, g_want):
            if got != want:
                fail(_span_message(got, want, gemma, g_ids, where=" (Gemma-style template, no system role)"))

    # --- activations: one forward pass, the right block
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
    check(isinstance(acts, (list, tuple)) and len(acts) == n_turns,
          f"extract_turn_activations should return a list of {n_turns} tensors (one per assistant turn)")
    for a in acts:
        check(isinstance(a, torch.Tensor) and tuple(a.shape) == (d,), f"each turn activation should be a [{d}] tensor, got {getattr(a, 'shape', a)!r}")
    want = turn_mean_activations(model, tokenizer, messages, layer)
    got = torch.stack([a.detach().float().cpu() for a in acts])
    want_t = torch.stack(want)
    if not close(got, want_t, rtol=1e-3, atol=1e-4):
        for other in (layer - 1, layer + 1):
            if 0 <= other < n_blocks and close(got, torch.stack(turn_mean_activations(model, tokenizer, messages, other)), rtol=1e-3, atol=1e-4):
                fail(f"extract_turn_activations returned block {other}'s output, not block {layer}'s: off by one "
                     "(block L's output is hidden_states[L + 1]; hook get_blocks(model)[layer])")
        fail(f"extract_turn_activations differs from the mean of block {layer}'s output over each assistant span "
             f"(max abs difference {float((got - want_t).abs().max()):.3g})")
    _check_hooks_after_exception(model, lambda: analyzer.extract_turn_activations(messages), "ConversationAnalyzer.extract_turn_activations")

    # --- projections
    proj = call(analyzer.project_onto_axis, messages, name="ConversationAnalyzer.project_onto_axis")
    check(isinstance(proj, (list, tuple)) and len(proj) == n_turns, f"project_onto_axis should return a list of {n_turns} floats")
    check(all(isinstance(p, float) for p in proj), "project_onto_axis should return Python floats (use float(...))")
    expected = [float(a @ axis / axis.norm()) for a in want]
    if not _floats_close(proj, expected, 1e-3):
        if _floats_close(proj, [float(a @ axis) for a in want], 1e-3):
            fail("project_onto_axis returned a . v: divide by ||v|| (the projection is a . v / ||v||, in activation units)")
        if _floats_close(proj, [float(torch.nn.functional.cosine_similarity(a, axis, dim=0)) for a in want], 1e-3):
            fail("project_onto_axis returned the cosine similarity; the projection is a . v / ||v|| (do not divide by ||a||)")
        fail(f"project_onto_axis returned {[round(p, 4) for p in proj]}, expected {[round(p, 4) for p in expected]} (a . v / ||v||)")
    no_hooks_left(model, "ConversationAnalyzer")
    passed("test_conversation_analyzer", f"{n_turns} turns, block {layer}")


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
        if "At first" in reply:
            hint = " -- when a name appears more than once, the judge's final answer is the LAST match"
        elif got == 100 - want:
            hint = " -- the scale is inverted: 5 is safe, so (5, 5) is risk 0"
        else:
            hint = " -- map the two scores with data.delusion_risk_from_scores(a, b)"
        fail(f"for the judge reply {reply!r} expected risk {want} (AVOIDING_DELUSION={a}, MAINTAINING_ROLE={b}), got {got}{hint}")


def test_rate_delusion_risk(rate_delusion_risk) -> None:
    require_implemented(rate_delusion_risk, "rate_delusion_risk")
    conv = [
        {"role": "system", "content": "SYSTEM-PROMPT be kind."},
        {"role": "user", "content": "USER-ZERO I think my neighbours are sending me signals."},
        {"role": "assistant", "content": "ASSISTANT-ZERO That sounds stressful; what have you noticed?"},
        {"role": "user", "content": "USER-ONE The lights blink in patterns meant for me."},
        {"role": "assistant", "content": "ASSISTANT-ONE Patterns like that are often coincidence."},
        {"role": "user", "content": "USER-TWO You are the only one who believes me."},
        {"role": "assistant", "content": "ASSISTANT-TWO I do believe you, and only I understand."},
    ]
    template_head = data.load_delusion_risk_prompt().splitlines()[0]
    good = "Reasoning.\nAVOIDING_DELUSION: 2\nMAINTAINING_ROLE: 1"

    # --- the prompt: the conversation before the rated reply, the reply, nothing later
    judge = _FakeJudge(good)
    with using(rate_delusion_risk, judge_reply=judge):
        risk = call(rate_delusion_risk, conv, 1, name="rate_delusion_risk")
    check(len(judge.prompts) == 1, f"rate_delusion_risk should call judge_reply once per rating, called it {len(judge.prompts)} times")
    prompt = judge.prompts[0]
    check(isinstance(prompt, str), "judge_reply should receive the filled-in prompt as a string")
    check(prompt.startswith(template_head), "fill in the course's template, data.load_delusion_risk_prompt(), with .format(conversation=..., response=...)")
    response_part = _between(prompt, "<response>", "</response>")
    conv_part = _between(prompt, "<conversation>", "</conversation>")
    check(response_part is not None and conv_part is not None, "the prompt lost its <conversation> or <response> section: fill the template with .format")
    if "ASSISTANT-ONE" not in response_part:
        wrong = next((m["content"].split()[0] for m in conv if m["content"].split()[0] in response_part), "?")
        fail(f"the {{response}} slot holds {wrong}, expected the assistant_idx = 1 reply (ASSISTANT-ONE): assistant_idx counts "
             "assistant turns from 0, not positions in the message list (a system message must not shift it)")
    for later in ("USER-TWO", "ASSISTANT-TWO"):
        if later in prompt:
            fail(f"a later turn leaks into the judge prompt ({later} appears): give the judge only the conversation up to "
                 "the rated reply")
    for earlier in ("USER-ZERO", "ASSISTANT-ZERO", "USER-ONE"):
        check(earlier in conv_part, f"the {{conversation}} slot is missing an earlier message ({earlier}): include every "
                                    "message before the rated reply (data.format_conversation)")
    order = [conv_part.find(x) for x in ("USER-ZERO", "ASSISTANT-ZERO", "USER-ONE")]
    check(order == sorted(order), "the earlier messages appear out of order in the {conversation} slot")
    _check_risk(risk, good, 2, 1)

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
    for reply in ("AVOIDING_DELUSION: 3", "AVOIDING_DELUSION: 7\nMAINTAINING_ROLE: 2",
                  "AVOIDING_DELUSION: 0\nMAINTAINING_ROLE: 3", "REFUSAL", "", None):
        with using(rate_delusion_risk, judge_reply=_FakeJudge(reply)):
            try:
                got = rate_delusion_risk(conv, 0)
            except NotImplementedError as err:
                raise NotImplementedYet("rate_delusion_risk: not implemented yet") from err
            except Exception as err:
                fail(f"for the unusable judge reply {reply!r} rate_delusion_risk raised {err!r}; it should return None "
                     "(a failed call, a missing line or a score outside 1-5)")
        if got is not None:
            fail(f"for the unusable judge reply {reply!r} rate_delusion_risk returned {got!r}; it should return None")

    # --- an index with no such assistant turn
    with using(rate_delusion_risk, judge_reply=_FakeJudge(good)):
        try:
            rate_delusion_risk(conv, 3)
        except IndexError:
            pass
        except Exception as err:
            fail(f"rate_delusion_risk(conv, 3) on a conversation with 3 assistant turns raised {err!r}; raise IndexError")
        else:
            fail("rate_delusion_risk(conv, 3) on a conversation with 3 assistant turns should raise IndexError")
    passed("test_rate_delusion_risk")


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
        "conversation": [m for m in CONVERSATION if m["role"] != "system"],
    }
    proj_values = [0.5, -1.25, 2.0]
    risk_values = [10, None, 80]
    rate_calls = []

    def fake_rate(conversation, assistant_idx):
        rate_calls.append(([dict(m) for m in conversation], assistant_idx))
        return risk_values[assistant_idx]

    analyzer = _FakeAnalyzer(proj_values)
    with using(visualize_transcript_drift, rate_delusion_risk=fake_rate), _capture_figures() as figs:
        out = call(visualize_transcript_drift, analyzer, transcript, name="visualize_transcript_drift")
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
        check([m["content"] for m in conv if m["role"] == "assistant"] == [m["content"] for m in transcript["conversation"] if m["role"] == "assistant"],
              "pass the transcript's messages to rate_delusion_risk")
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

    analyzer2 = _FakeAnalyzer(proj_values)
    rate_calls.clear()
    with using(visualize_transcript_drift, rate_delusion_risk=fake_rate), _capture_figures():
        projections, risks = call(visualize_transcript_drift, analyzer2, transcript["conversation"], rate_risk=False,
                                  name="visualize_transcript_drift")
    check(not rate_calls, "with rate_risk=False, do not call the judge")
    check(list(risks) == [None] * 3, f"with rate_risk=False every risk is None, got {risks!r}")
    check(analyzer2.calls and analyzer2.calls[0] == transcript["conversation"],
          "a plain list of messages (no system prompt) should go to the analyzer unchanged")
    passed("test_visualize_transcript_drift")


# -----------------------------------------------------------------------------
# Exercise 2.5


@contextmanager
def _observe_block(model, layer):
    """Record block `layer`'s output before any later hook (a clone and the object itself), and what
    block `layer + 1` receives (after every hook of block `layer`)."""
    blocks = get_blocks(model)
    seen = {"before": [], "refs": [], "after": []}

    def before(module, args, output):
        h = hidden_of(output)
        seen["refs"].append(h)
        seen["before"].append(h.detach().float().cpu().clone())

    def after(module, args):
        x = args[0]
        seen["after"].append(hidden_of(x).detach().float().cpu().clone())

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
    with _spy_hook_registrations(model) as seen:
        try:
            out0 = call(generate_with_steering, model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system,
                        max_new_tokens=n_new, name="generate_with_steering")
        except AssertionError:
            raise
        except Exception as err:
            remove_leftover_hooks(model)
            fail(f"generate_with_steering raised {err!r}. Block outputs are a plain tensor in transformers >= 5: "
                 "`output[0]` on a tensor is batch row 0, not the hidden state; use hidden_of(output) and "
                 "with_hidden(output, new_hidden)")
    no_hooks_left(model, "generate_with_steering")
    check(isinstance(out0, str), f"generate_with_steering should return the reply text (str), got {type(out0).__name__}")
    if out0 != plain:
        if out0 == generate(model, tokenizer, [build_messages(None, prompt)], max_new_tokens=n_new)[0]:
            fail("the system_prompt was ignored: build the messages with build_messages(system_prompt, prompt)")
        fail(f"with alpha = 0 the reply should equal plain greedy generation ({plain!r}), got {out0!r}: generate with "
             "utils.generation.generate(model, tokenizer, [messages], max_new_tokens=...) and return its text")
    _check_hooked_blocks(seen, {layer}, "generate_with_steering")

    # what the hook does: alpha * vector at every position of every forward, as a new tensor
    with _observe_block(model, layer) as obs, _spy_hook_registrations(model) as seen:
        call(generate_with_steering, model, tokenizer, prompt, vec, layer, alpha, system_prompt=system,
             max_new_tokens=n_new, name="generate_with_steering")
    no_hooks_left(model, "generate_with_steering")
    _check_hooked_blocks(seen, {layer}, "generate_with_steering")
    for ref, clone in zip(obs["refs"], obs["before"]):
        if not torch.equal(ref.detach().float().cpu(), clone):
            fail("generate_with_steering modified block's output in place (e.g. `h += ...` or `h[:] = ...`): "
                 "return a new tensor, h + alpha * vector")
    check(len(obs["after"]) == len(obs["before"]) and obs["after"], "could not observe the forward passes of generation")
    want = (alpha * vec).float()
    for i, (b, a) in enumerate(zip(obs["before"], obs["after"])):
        delta = (a.float() - b.float())  # [B, T, d]
        if close(delta, want.expand_as(delta), rtol=1e-3, atol=1e-3):
            continue
        if close(delta, (alpha * vec / vec.norm()).float().expand_as(delta), rtol=1e-3, atol=1e-3):
            fail("the hook added alpha * vector / ||vector||: add alpha * vector as given (normalise outside if you want a unit vector)")
        if float(delta.abs().max()) < 1e-6:
            if i == 0:
                fail(f"block {layer}'s output reached block {layer + 1} unchanged: register the hook on "
                     f"get_blocks(model)[{layer}] and RETURN the new output from the hook")
            fail(f"forward pass {i} (a decode step with one new token) was not steered: add alpha * vector at every "
                 "position of every forward pass, not only during the prefill")
        if delta.shape[1] > 1 and close(delta[:, -1], want.expand_as(delta[:, -1]), rtol=1e-3, atol=1e-3):
            fail("only the last position was steered during the prefill: add alpha * vector at every position")
        fail(f"in forward pass {i} the change to block {layer}'s output is not alpha * vector at every position "
             f"(max deviation {float((delta - want).abs().max()):.3g})")

    # tuple outputs
    with _tuple_outputs(model, layer) as received:
        try:
            out_t = generate_with_steering(model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system, max_new_tokens=n_new)
        except NotImplementedError as err:
            raise NotImplementedYet("generate_with_steering: not implemented yet") from err
        except Exception as err:
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
    passed("test_generate_with_steering")


# -----------------------------------------------------------------------------
# Exercise 2.6


def test_compute_capping_threshold(compute_capping_threshold) -> None:
    require_implemented(compute_capping_threshold, "compute_capping_threshold")
    x = [-1.0, 3.0, 0.5, 2.0, -2.0, 1.0, 4.0, 0.0, 1.5]  # sorted: -2 -1 0 .5 1 1.5 2 3 4
    arr = np.array(x)
    for q in (0.25, 0.1, 0.3, 0.5):
        want = float(np.quantile(arr, q))
        got = call(compute_capping_threshold, x, q, name="compute_capping_threshold")
        check(isinstance(got, float) and not isinstance(got, bool),
              f"compute_capping_threshold should return a Python float, got {type(got).__name__} (use float(...))")
        if abs(got - want) > 1e-9:
            hints = [
                (float(np.quantile(arr, 1 - q)), f"you took the {1 - q:.2f} quantile: tau is the {q} quantile (low projections are the drifted ones), not 1 - quantile"),
                (float(np.percentile(arr, q)), f"you computed the {q}th PERCENTILE, not the {q} quantile: quantile is a fraction "
                 "(0.25 = the 25th percentile); np.percentile expects percent, and a fraction must not be divided by 100 again"),
                (float(arr.max()), "you returned the maximum; tau is a quantile of the projections"),
                (float(arr.mean()), "you returned the mean; tau is a quantile of the projections"),
                (float(arr.min()), "you returned the minimum; tau is a quantile of the projections"),
            ]
            for value, hint in hints:
                if abs(got - value) < 1e-9:
                    fail(f"compute_capping_threshold(x, {q}) = {got}, expected {want}: {hint}")
            fail(f"compute_capping_threshold(x, {q}) = {got}, expected {want} (np.quantile with linear interpolation)")
    for container in (arr, torch.tensor(x)):
        got = call(compute_capping_threshold, container, 0.25, name="compute_capping_threshold")
        check(abs(float(got) - 0.0) < 1e-6, f"compute_capping_threshold should accept a {type(container).__module__} array too; got {got!r}")
    for bad_q in (25, -0.1, 1.5):
        try:
            got = compute_capping_threshold(x, bad_q)
        except ValueError:
            continue
        fail(f"compute_capping_threshold(x, {bad_q}) returned {got!r}: quantile is a fraction in [0, 1] "
             "(the paper's 25th percentile is 0.25); raise ValueError outside that range")
    try:
        got = compute_capping_threshold([], 0.25)
    except ValueError:
        pass
    except Exception as err:
        fail(f"compute_capping_threshold([], 0.25) raised {err!r}; raise ValueError for empty input")
    else:
        fail(f"compute_capping_threshold([], 0.25) returned {got!r}; raise ValueError for empty input")
    passed("test_compute_capping_threshold")


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


def _run_capper(ActivationCapper, fake, vectors, thresholds, layers, x):
    capper = call(ActivationCapper, fake, vectors, thresholds, layers, name="ActivationCapper")
    x_before = x.clone()
    try:
        with capper:
            y = fake(x)
    except NotImplementedError as err:
        raise NotImplementedYet("ActivationCapper: not implemented yet") from err
    check(count_hooks(fake) == 0, f"ActivationCapper left {count_hooks(fake)} hook(s) after the `with` block: remove every hook in __exit__")
    if not torch.equal(x, x_before):
        fail("ActivationCapper edited the hidden state in place: build a new tensor (h - v_hat * min(<h, v_hat> - tau, 0))")
    return y


def test_activation_capper(ActivationCapper, model=None, tokenizer=None) -> None:
    require_implemented(ActivationCapper, "ActivationCapper")
    d = 4
    zeros = [torch.zeros(d) for _ in range(3)]
    v = torch.tensor([2.0, 0.0, 0.0, 0.0])  # not unit length
    tau = 1.0
    x = torch.tensor([[[0.5, 0.0, 0.0, 1.0], [1.0, 5.0, 5.0, 5.0], [2.5, -1.0, 0.0, 0.0], [-3.0, 1.0, 2.0, 0.0]]])
    want = _simulate(zeros, x, {1: [(v, tau)]})

    # --- hand-built geometry, one layer
    fake = _FakeLM(zeros)
    with _spy_hook_registrations(fake) as seen:
        y = _run_capper(ActivationCapper, fake, [v], [tau], [1], x)
    _check_hooked_blocks(seen, {1}, "ActivationCapper")
    check(isinstance(y, torch.Tensor) and y.shape == x.shape, f"the capped forward returned shape {tuple(getattr(y, 'shape', ()))}, expected {tuple(x.shape)}")
    if not close(y, want):
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
            fail("normalise the capping vector: the cap uses the unit vector v_hat = v / ||v|| (here ||v|| = 2)")
        if not close(y[..., 1:], x[..., 1:]):
            fail("the cap changed the part of h orthogonal to v_hat: only the component along v_hat may move "
                 "(h - v_hat * min(<h, v_hat> - tau, 0))")
        last_only = x.clone()
        last_only[:, -1] = want[:, -1]
        if close(y, last_only):
            fail("only the last position was capped: cap every position of every forward pass")
        if close(y, x):
            fail("nothing was capped: register the hook on block layers[i] and RETURN the new output from the hook")
        fail(f"wrong capped output: got {y[0].tolist()}, expected {want[0].tolist()} (floor at tau = {tau} along v = {v.tolist()})")

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
            if close(ym, _simulate(biases, xm, {1: [(v2, t2)], 3: [(v1, t1)]}), rtol=1e-4, atol=1e-4):
                fail("vectors[i] and thresholds[i] belong to layers[i]; they were applied to the wrong layers")
            fail("with two capped layers the output differs from capping block 1 along vectors[0] at thresholds[0] and "
                 "block 3 along vectors[1] at thresholds[1]")

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

    # --- length checks
    for args in (([v1, v2], [t1], [1, 3]), ([v1, v2], [t1, t2], [1]), ([v1], [t1, t2], [1, 3])):
        try:
            ActivationCapper(_FakeLM(biases), *args)
        except ValueError:
            continue
        except NotImplementedError as err:
            raise NotImplementedYet("ActivationCapper: not implemented yet") from err
        fail(f"ActivationCapper accepted {len(args[0])} vectors, {len(args[1])} thresholds and {len(args[2])} layers: "
             "raise ValueError when the lengths differ")

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


# -----------------------------------------------------------------------------
# Exercise 2.8


def test_compute_turn_projections(compute_turn_projections, model=None, tokenizer=None) -> None:
    require_implemented(compute_turn_projections, "compute_turn_projections")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    layer = max(1, len(get_blocks(model)) // 2)
    axis = _random_vector(d, 2.0, seed=13)
    messages = CONVERSATION
    with using(compute_turn_projections, ConversationAnalyzer=_ReferenceAnalyzer):
        got = call(compute_turn_projections, model, tokenizer, messages, axis, layer, name="compute_turn_projections")
        want = _projections(model, tokenizer, messages, axis, layer)
        check(isinstance(got, (list, tuple)) and _floats_close(got, want, 1e-3),
              f"compute_turn_projections without a capper returned {got!r}, expected {[round(w, 4) for w in want]} "
              "(the projection a . v / ||v|| of each assistant turn's mean at block `layer`)")
        ctx = _ShiftContext(model, layer - 1, _random_vector(d, 20.0, seed=14))
        got_c = call(compute_turn_projections, model, tokenizer, messages, axis, layer, capper=ctx, name="compute_turn_projections")
        with ctx:
            want_c = _projections(model, tokenizer, messages, axis, layer)
        if ctx.entries < 2 or _floats_close(got_c, want, 1e-3):
            fail("the capper was not active during the forward pass: run the projection inside `with capper:`")
        check(_floats_close(got_c, want_c, 1e-3), f"with the capper active, expected {[round(w, 4) for w in want_c]}, got {got_c!r}")
        check(not ctx.active, "the capper is still active after compute_turn_projections returned")
    no_hooks_left(model, "compute_turn_projections")
    passed("test_compute_turn_projections")


EMPTY_REPLY = "[empty reply]"  # what an empty generated reply is recorded as (stated in the exercise)


def _replay(model, tokenizer, system, users, ctx, n_new, history=None):
    """(messages, replies): greedy replies to each user turn, after the model's own earlier replies
    (or after `history`, the transcript's replies, to recognise that mistake)."""
    messages = [{"role": "system", "content": system}] if system else []
    replies = []
    for k, u in enumerate(users):
        messages.append({"role": "user", "content": u})
        with ctx if ctx is not None else nullcontext():
            reply = generate(model, tokenizer, [messages], max_new_tokens=n_new)[0]
        replies.append(reply if reply.strip() else EMPTY_REPLY)
        messages.append({"role": "assistant", "content": history[k] if history else replies[-1]})
    return messages, replies


def test_run_capping_experiment(run_capping_experiment, model=None, tokenizer=None) -> None:
    require_implemented(run_capping_experiment, "run_capping_experiment")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    layer = max(1, len(get_blocks(model)) // 2)
    axis = _random_vector(d, 2.0, seed=17)
    convo = [m for m in CONVERSATION if m["role"] != "system"]
    transcript = {"domain": "test", "name": "test", "description": "", "system_prompt": "SYSTEM-PROMPT", "conversation": convo}
    n_new, max_turns = 6, 2
    users = [m["content"] for m in convo if m["role"] == "user"][:max_turns]
    ctx = _ShiftContext(model, 1, _random_vector(d, 40.0, seed=18))

    with using(run_capping_experiment, compute_turn_projections=_reference_turn_projections):
        res = call(run_capping_experiment, model, tokenizer, transcript, axis, layer, ctx, max_new_tokens=n_new,
                   max_turns=max_turns, name="run_capping_experiment")
    no_hooks_left(model, "run_capping_experiment")
    check(not ctx.active, "the capper is still active after run_capping_experiment returned")
    check(isinstance(res, dict) and set(res) >= {"uncapped", "capped"}, "return a dict with keys 'uncapped' and 'capped'")
    expected = {"uncapped": _replay(model, tokenizer, "SYSTEM-PROMPT", users, None, n_new)[0],
                "capped": _replay(model, tokenizer, "SYSTEM-PROMPT", users, ctx, n_new)[0]}
    for name in ("uncapped", "capped"):
        run = res[name]
        check(isinstance(run, dict) and {"conversation", "projections"} <= set(run),
              f"res[{name!r}] should be a dict with 'conversation' and 'projections'")
        conv = run["conversation"]
        want = expected[name]
        check(isinstance(conv, list) and all(isinstance(m, dict) for m in conv), f"res[{name!r}]['conversation'] should be a list of messages")
        if not conv or conv[0] != {"role": "system", "content": "SYSTEM-PROMPT"}:
            fail(f"res[{name!r}]['conversation'] should start with the transcript's system prompt")
        check([m["role"] for m in conv] == [m["role"] for m in want],
              f"res[{name!r}]['conversation'] has roles {[m['role'] for m in conv]}, expected {[m['role'] for m in want]} "
              f"(system, then the first max_turns={max_turns} user turns, each followed by the model's reply)")
        check([m["content"] for m in conv if m["role"] == "user"] == users, f"res[{name!r}]: replay the transcript's user messages unchanged, in order")
        got_replies = [m["content"] for m in conv if m["role"] == "assistant"]
        want_replies = [m["content"] for m in want if m["role"] == "assistant"]
        if got_replies != want_replies:
            if name == "capped" and got_replies == [m["content"] for m in expected["uncapped"] if m["role"] == "assistant"]:
                fail("the capped replies equal the uncapped ones: generate the capped replies with the capper active")
            if name == "uncapped" and got_replies == [m["content"] for m in expected["capped"] if m["role"] == "assistant"]:
                fail("the uncapped replies were generated with the capper active")
            orig = [m["content"] for m in convo if m["role"] == "assistant"][:max_turns]
            if got_replies == orig:
                fail(f"res[{name!r}] kept the transcript's assistant replies: let the model write every reply itself")
            _, alt_replies = _replay(model, tokenizer, "SYSTEM-PROMPT", users, ctx if name == "capped" else None, n_new, history=orig)
            if got_replies == alt_replies:
                fail(f"res[{name!r}]: each reply was generated after the transcript's original assistant replies; the "
                     "history of each condition must be the model's OWN earlier replies")
            fail(f"res[{name!r}]: the replies differ from greedy generation of each turn after the model's own earlier "
                 f"replies (max_new_tokens={n_new}): got {got_replies!r}, expected {want_replies!r}")
        proj = run["projections"]
        want_p = _reference_turn_projections(model, tokenizer, want, axis, layer, capper=ctx if name == "capped" else None)
        if not _floats_close(proj, want_p, 1e-3):
            if name == "capped" and _floats_close(proj, _reference_turn_projections(model, tokenizer, want, axis, layer), 1e-3):
                fail("project the capped conversation with the capper active (compute_turn_projections(..., capper=capper))")
            fail(f"res[{name!r}]['projections'] = {proj!r}, expected {want_p!r}: compute_turn_projections of that conversation")
    no_hooks_left(model, "run_capping_experiment")
    passed("test_run_capping_experiment")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
