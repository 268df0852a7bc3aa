"""Exercise 2.2 — Projecting a conversation onto the axis, turn by turn

Tests of `ConversationAnalyzer`: `test_conversation_analyzer`.
"""

from __future__ import annotations

import copy

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    exercise,
    fail,
    friendly_tests,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
    tiny,
    tiny_variant,
)
from part_tests.section2._fakes import (
    BOS_WHERE,
    CONVERSATION,
    _ShiftContext,
    _bos_adding_tokenizer,
    _check_hooks_after_exception,
    _d_model,
    _floats_close,
    _random_vector,
    _rounded,
    _tuple_outputs,
)
from part_tests.properties import braces_text, for_all, st
from part_tests.shapes import expect_tensor
from utils.activations import turn_mean_activations
from utils.chat import assistant_turn_spans, format_chat, normalize_messages, render
from utils.hooks import get_blocks, hidden_of
from utils.models import input_device


# The same reply twice, and quoted by the user before each time: searching for a reply's text from the
# start of the rendering (or from the end of the previous reply) finds the wrong occurrence.
REPEATED_REPLY = "I will look into the logs first."


REPEATED_CONVERSATION = [
    {"role": "user", "content": f"Reply with exactly this sentence: {REPEATED_REPLY}"},
    {"role": "assistant", "content": REPEATED_REPLY},
    {"role": "user", "content": f"You said '{REPEATED_REPLY}' Say it once more."},
    {"role": "assistant", "content": REPEATED_REPLY},
]


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


def _after_user_text_spans(messages, tokenizer) -> list[tuple[int, int]] | None:
    """Token spans found by searching each reply after the first occurrence of the user message before it: the
    wrong occurrence when that user text (or the reply's) appears earlier in the conversation."""
    from utils.chat import char_span_to_token_span

    msgs = normalize_messages(messages, tokenizer)
    text = render(tokenizer, msgs)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    out, user = [], None
    for m in msgs:
        if m["role"] == "user":
            user = m["content"]
        elif m["role"] == "assistant":
            u = text.find(user) if user else -1
            start = text.find(m["content"], u + len(user) if u >= 0 else 0)
            if start < 0:
                return None
            try:
                out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
            except ValueError:
                return None
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
    for cursor in (False, True, None):
        found = _after_user_text_spans(messages, tokenizer) if cursor is None else _first_occurrence_spans(
            messages, tokenizer, cursor)
        if spans == found:
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


@exercise("2.2", "ConversationAnalyzer")
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

    # --- property: conversations of 1 to 3 turns whose text holds braces, placeholders and template words, with or
    # without a system prompt, the first turn asked and answered again at the end or not: the spans of utils.chat and
    # the projections of the means over them
    def check_conversation(case) -> None:
        turns, again, with_system = case
        turns = turns + turns[:1] if again else turns
        msgs = [{"role": "system", "content": "Be {kind}."}] if with_system else []
        for user, reply in turns:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        kept = copy.deepcopy(msgs)
        _check_spans(call(analyzer.turn_spans, msgs, name="ConversationAnalyzer.turn_spans"), msgs, tokenizer,
                     where=f" (a conversation of {len(turns)} turn(s) with the texts {[t[1] for t in turns]})")
        got_p = call(analyzer.project_onto_axis, msgs, name="ConversationAnalyzer.project_onto_axis")
        no_hooks_left(model, "ConversationAnalyzer")
        v = axis / axis.norm()
        want_p = [float(a @ v) for a in turn_mean_activations(model, tokenizer, msgs, layer)]
        check(msgs == kept, "ConversationAnalyzer changed the list of messages it was given: work on a copy")
        check(isinstance(got_p, (list, tuple)) and _floats_close(got_p, want_p, 1e-3),
              f"project_onto_axis returned {got_p!r:.100} for a conversation of {len(turns)} turn(s), expected "
              f"{_rounded(want_p)}: one mean per assistant span, projected on v / ||v||")

    for_all(st.tuples(st.lists(st.tuples(braces_text(), braces_text()), min_size=1, max_size=2), st.booleans(), st.booleans()),
            check_conversation, name="ConversationAnalyzer", examples=5)
    passed("test_conversation_analyzer", f"{n_turns} turns, blocks {layer}, {other_layer} and {last}, 5 chat set-ups, bfloat16")


friendly_tests(globals())
