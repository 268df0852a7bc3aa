"""Exercise 4.3 — Projections: the vector as a monitor

Tests of compute_trait_projections: projections a·v/‖v‖ of the mean response activation, checked
against a forward pass with a hook on several chat templates; `_Projector` computes what each
candidate mistake would return, so that a failure names the one that matches; a property over
record counts and vector dtypes. Its input checks, with a property over lists of different lengths.
"""

from __future__ import annotations

import math

import torch

from part_tests._common import (
    call,
    check,
    exercise,
    expect_value_error,
    fail,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
    tiny,
    tiny_variant,
)
from part_tests.properties import for_all, st
from part_tests.section4._fakes import (
    PIRATE,
    _d_model,
    _layer_for,
    _vector,
)

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
        if sorted(got) != got and _same_values(sorted(got), sorted(want)):
            fail(f"{name}{context}: the right projections in the wrong order (sorted by length for batching?): return them"
                 " in the order of the records")
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


def _same_values(a, b, tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=tol, abs_tol=tol * max(1.0, abs(y))) for x, y in zip(a, b))


def _projection_list(got, n: int, name: str) -> list[float]:
    check(not isinstance(got, torch.Tensor), f"{name} should return a list of floats, not a tensor (use .tolist())")
    if isinstance(got, (list, tuple)) and len(got) < n:
        fail(f"{name} returned {len(got)} projections for {n} records: records were lost (a last, partial batch"
             " dropped?); return one projection per record")
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


def _check_projection_counts(compute_trait_projections, model, tokenizer, layer: int, name: str) -> None:
    """Property: 1 to 9 records drawn from the hand-built ones (one record; counts that do and do not divide any batch
    size; repeats), with the vector in float32 or bfloat16: one projection per record, in order, each the one computed
    here for that record alone (a forward pass with a hook, the exact response span, float64 maths)."""
    vector = _vector(_d_model(model), 11, 6.0).to(torch.bfloat16).float()  # the same numbers in either dtype
    alone = _Projector(model, tokenizer, PROJ_SYSTEMS, PROJ_QUESTIONS, PROJ_RESPONSES, vector).values(layer)

    def check_one(example):
        idx, dtype = example
        n, what = len(idx), f"{len(idx)} record(s) and a {str(dtype).replace('torch.', '')} vector"
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        try:
            got = call(compute_trait_projections, model, tokenizer, pick(PROJ_SYSTEMS), pick(PROJ_QUESTIONS),
                       pick(PROJ_RESPONSES), vector.to(dtype), layer, name=name)
        except (AssertionError, NotImplementedError):
            raise
        except Exception as err:
            fail(f"{name} raised {type(err).__name__} ({err}) with {what}: a vector saved from a bfloat16 run is"
                 " bfloat16; do the maths in float32 (torch.as_tensor(vector, dtype=torch.float32))")
        no_hooks_left(model, name)
        got = _projection_list(got, n, name)
        want = pick(alone)
        if _same_values(got, want):
            return
        if _same_values(sorted(got), sorted(want)):
            fail(f"{name} with {what}: the right projections in the wrong order (sorted by length for batching?): return"
                 " them in the order of the records")
        if dtype == torch.bfloat16 and _same_values(got, want, 3e-2):
            fail(f"{name} with {what} computed the projections in bfloat16 (off by up to"
                 f" {max(abs(x - y) for x, y in zip(got, want)):.3g}): convert the vector to float32 first")
        fail(f"{name} with {what} returned {[round(x, 4) for x in got]}, expected {[round(x, 4) for x in want]} (each"
             " record's projection does not depend on the other records: a batch that mixes them up?)")

    for_all(st.tuples(st.lists(st.integers(0, len(PROJ_RESPONSES) - 1), min_size=1, max_size=9),
                      st.sampled_from([torch.float32, torch.bfloat16])), check_one,
            name=f"{name} over record counts and vector dtypes", examples=5)


@exercise("4.3", "compute_trait_projections")
def test_compute_trait_projections(compute_trait_projections, model=None, tokenizer=None) -> None:
    """Projections a·v/‖v‖ of the mean response activation at block `layer`, checked against a
    forward pass with a hook and the exact response span from the chat template: at two layers and
    at the last block (where HF's hidden_states[-1] is the final norm's output, not the block's), on
    templates with a BOS and a one-token end of turn (Llama 3 style), with a thinking block (Qwen 3
    style) and without a system role (Gemma 2); a property over record counts (one record, counts
    that do and do not divide a batch size) and float32 / bfloat16 vectors. Input checks: the next test."""
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

    _check_projection_counts(compute_trait_projections, model, tokenizer, layer, name)

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


@exercise("4.3", "compute_trait_projections")
def test_compute_trait_projections_input_checks(compute_trait_projections, model=None, tokenizer=None) -> None:
    """Lists of different lengths and a vector that is not [d_model], is zero or holds NaN or inf are rejected with
    ValueError; then a property over length triples (any list the odd one out) and malformed vectors."""
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

    def check_one(example):
        """Property: three lists whose lengths are not all equal (any one of them the odd one out), and malformed
        vectors (other sizes, zero, NaN / inf / -inf anywhere) are refused."""
        (ls, lq, lr), k, at = example
        take = lambda xs, n: [xs[i % len(xs)] for i in range(n)]  # noqa: E731
        expect_value_error(compute_trait_projections, model, tokenizer, take(PROJ_SYSTEMS, ls), take(PROJ_QUESTIONS, lq),
                           take(PROJ_RESPONSES, lr), vector, layer, name="compute_trait_projections",
                           what=f"lists of different lengths ({ls} system prompts, {lq} questions, {lr} responses)")
        bad = [(torch.ones(d + k), f"a vector of shape [{d + k}] (d_model is {d})"),
               (torch.ones(k, d), f"a vector of shape [{k}, {d}] (it must be [d_model])"),
               (torch.zeros(d), "a zero vector (there is no direction to project onto)")]
        bad += [(torch.ones(d).index_fill(0, torch.tensor([at]), float(x)), f"a vector holding {x} (at index {at})")
                for x in ("nan", "inf", "-inf")]
        for v, what in bad:
            expect_value_error(compute_trait_projections, model, tokenizer, s[:1], q[:1], r[:1], v, layer,
                               name="compute_trait_projections", what=what)
        no_hooks_left(model, "compute_trait_projections")

    lengths = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)).filter(lambda t: len(set(t)) > 1)
    for_all(st.tuples(lengths, st.integers(1, 3), st.integers(0, d - 1)), check_one,
            name="compute_trait_projections's input checks", examples=4)
    passed("test_compute_trait_projections_input_checks")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
