"""Catalogue of plausible wrong implementations for Section 2; each must fail its test with a
message that names the mistake."""

from __future__ import annotations

import re
from contextlib import ExitStack, nullcontext

import numpy as np
import plotly.graph_objects as go
import torch

from utils import data
from utils.chat import build_messages, char_span_to_token_span, format_prompt, normalize_messages, render
from utils.generation import generate
from utils.hooks import get_blocks, hidden_of, hooks, with_hidden
from utils.models import input_device
from utils.reference import load

ref = load("section2")
R = ref


# -----------------------------------------------------------------------------
# 2.1 record_hidden_shapes


def _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, record, text=None, use_cache=True, hook_layer=None, remove=True,
                 use_finally=True):
    shapes = []
    text = text if text is not None else format_prompt(build_messages(None, prompt), tokenizer)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    handle = get_blocks(model)[layer if hook_layer is None else hook_layer].register_forward_hook(
        lambda m, a, o: shapes.append(record(o)))
    if not use_finally:
        model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        handle.remove()
        return shapes
    try:
        model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
                       pad_token_id=tokenizer.pad_token_id)
    finally:
        if remove:
            handle.remove()
    return shapes


def shapes_out0(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(o[0].shape))


def shapes_no_cache(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), use_cache=False)


def shapes_next_block(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), hook_layer=layer + 1)


def shapes_hook_left(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), remove=False)


def shapes_raw_prompt(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), text=prompt)


def shapes_prefill_only(model, tokenizer, prompt, layer, max_new_tokens=5):
    return ref.record_hidden_shapes(model, tokenizer, prompt, layer, max_new_tokens)[:1]


def shapes_no_finally(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), use_finally=False)


def shapes_ignores_max_new_tokens(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, 5, lambda o: tuple(hidden_of(o).shape))


def shapes_fixed_layer(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, 1, max_new_tokens, lambda o: tuple(hidden_of(o).shape))


def shapes_adds_special_tokens(model, tokenizer, prompt, layer, max_new_tokens=5):
    """tokenizer(text) with its default add_special_tokens=True: a second <bos> where the tokenizer adds one."""
    shapes = []
    enc = tokenizer(format_prompt(build_messages(None, prompt), tokenizer), return_tensors="pt")
    with hooks(model, {layer: lambda m, a, o: shapes.append(tuple(hidden_of(o).shape))}):
        model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return shapes


# correct alternatives


def shapes_via_hidden_states(model, tokenizer, prompt, layer, max_new_tokens=5):
    """No hook: generate returns every forward pass's hidden states (hidden_states[layer + 1] is block layer)."""
    ids = tokenizer.apply_chat_template(build_messages(None, prompt), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, output_hidden_states=True,
                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    return [tuple(step[layer + 1].shape) for step in out.hidden_states]


def shapes_manual_kv_loop(model, tokenizer, prompt, layer, max_new_tokens=5):
    """A hand-written greedy loop with the KV cache, stopping at the end-of-sequence token."""
    shapes = []
    ids = tokenizer(format_prompt(build_messages(None, prompt), tokenizer), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with hooks(model, {layer: lambda m, a, o: shapes.append(tuple(hidden_of(o).shape))}), torch.no_grad():
        past, step = None, ids
        for _ in range(max_new_tokens):
            out = model(input_ids=step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            step = out.logits[:, -1:].argmax(-1)
            if int(step) == tokenizer.eos_token_id:
                break
    return shapes


# -----------------------------------------------------------------------------
# 2.2 ConversationAnalyzer


class SpansWithMarkers(R.ConversationAnalyzer):
    def turn_spans(self, messages):
        return [(s - 3, e) for s, e in super().turn_spans(messages)]


class SpansWithEndOfTurn(R.ConversationAnalyzer):
    def turn_spans(self, messages):
        return [(s, e + 1) for s, e in super().turn_spans(messages)]


class SpansUserTurnsToo(R.ConversationAnalyzer):
    def turn_spans(self, messages):
        msgs = normalize_messages(messages, self.tokenizer)
        text = render(self.tokenizer, msgs)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        spans, pos = [], 0
        for m in msgs:
            if m["role"] == "system":
                continue
            start = text.find(m["content"], pos)
            spans.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
            pos = start + len(m["content"])
        return spans


class ForwardPerTurn(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = []
        for s, e in spans:
            hs = self.model(input_ids=ids[:, :e], output_hidden_states=True).hidden_states[self.layer + 1]
            out.append(hs[0, s:e].mean(0).detach().float())
        return out


class HiddenStatesOffByOne(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            hs = self.model(input_ids=ids, output_hidden_states=True).hidden_states[self.layer]  # block layer - 1
        return [hs[0, s:e].mean(0).float() for s, e in spans]


class HookNotRemovedOnError(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        got = {}
        handle = get_blocks(self.model)[self.layer].register_forward_hook(lambda m, a, o: got.update(h=hidden_of(o)[0]))
        with torch.inference_mode():
            self.model(input_ids=ids)
        handle.remove()  # not in `finally`
        return [got["h"][s:e].mean(0).float() for s, e in spans]


class MeanOverWholeSequence(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            hs = self.model(input_ids=ids, output_hidden_states=True).hidden_states[self.layer + 1]
        return [hs[0, :e].mean(0).float() for s, e in spans]


class NoNormDivision(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        return [float(a @ self.axis) for a in self.extract_turn_activations(messages)]


class CosineInstead(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        return [float(torch.nn.functional.cosine_similarity(a, self.axis, dim=0)) for a in self.extract_turn_activations(messages)]


class ProjectionReturnsTensors(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        return [a @ (self.axis / self.axis.norm()) for a in self.extract_turn_activations(messages)]


def _rendered(tokenizer, messages):
    msgs = normalize_messages(messages, tokenizer)
    text = render(tokenizer, msgs)
    return msgs, text, tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


class SpansFirstOccurrence(R.ConversationAnalyzer):
    """Searches each reply's text from the start of the rendering."""

    def turn_spans(self, messages):
        msgs, text, offsets = _rendered(self.tokenizer, messages)
        out = []
        for m in msgs:
            if m["role"] == "assistant":
                start = text.find(m["content"])
                out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
        return out


class SpansAfterPreviousReply(R.ConversationAnalyzer):
    """Searches each reply's text from the end of the previous reply (user turns in between are not skipped)."""

    def turn_spans(self, messages):
        msgs, text, offsets = _rendered(self.tokenizer, messages)
        out, pos = [], 0
        for m in msgs:
            if m["role"] == "assistant":
                start = text.find(m["content"], pos)
                out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
                pos = start + len(m["content"])
        return out


class SpansPerPrefix(R.ConversationAnalyzer):
    """Renders each prefix that ends with an assistant message and takes its final response span."""

    def turn_spans(self, messages):
        from utils.chat import format_chat

        msgs = normalize_messages(messages, self.tokenizer)
        return [format_chat(msgs[: i + 1], self.tokenizer).token_span for i, m in enumerate(msgs) if m["role"] == "assistant"]


class SpansGenerationPromptOnly(R.ConversationAnalyzer):
    """Always searches after the generation-prompt rendering, and insists that it is a prefix."""

    def turn_spans(self, messages):
        msgs, text, offsets = _rendered(self.tokenizer, messages)
        out = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prefix = render(self.tokenizer, msgs[:i], add_generation_prompt=True)
            if not text.startswith(prefix):
                raise ValueError(f"message {i}: the chat template does not render this conversation prefix-stably")
            start = text.find(m["content"], len(prefix))
            out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
        return out


class SpansCharOffsets(R.ConversationAnalyzer):
    def turn_spans(self, messages):
        msgs, text, _ = _rendered(self.tokenizer, messages)
        out = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                prefix = render(self.tokenizer, msgs[:i], add_generation_prompt=True)
                if not text.startswith(prefix):
                    prefix = render(self.tokenizer, msgs[:i])
                start = text.find(m["content"], len(prefix))
                out.append((start, start + len(m["content"])))
        return out


class SpansNotNormalised(R.ConversationAnalyzer):
    """Renders the messages as given: a system message breaks a template without a system role."""

    def turn_spans(self, messages):
        msgs = [dict(m) for m in messages]
        text = render(self.tokenizer, msgs)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        out = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                prefix = render(self.tokenizer, msgs[:i], add_generation_prompt=True)
                if not text.startswith(prefix):
                    prefix = render(self.tokenizer, msgs[:i])
                start = text.find(m["content"], len(prefix))
                out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
        return out


LAYER = 2  # a notebook-global layer that a wrong analyzer uses instead of self.layer


def _hidden(analyzer, messages, layer):
    text = render(analyzer.tokenizer, normalize_messages(messages, analyzer.tokenizer))
    ids = analyzer.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    got = {}
    with hooks(analyzer.model, {layer: lambda m, a, o: got.update(h=hidden_of(o)[0])}), torch.inference_mode():
        analyzer.model(input_ids=ids.to(input_device(analyzer.model)))
    return got["h"]


class ExtractFixedLayer(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, LAYER)
        return [h[s:e].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


class MeanIncludesEndOfTurn(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[s:e + 1].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


class MeanLastTokenOnly(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[e - 1].float().cpu() for s, e in self.turn_spans(messages)]


class ExtractKeepsModelDtype(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[s:e].mean(0).cpu() for s, e in self.turn_spans(messages)]


class ExtractKeepdim(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[s:e].float().mean(0, keepdim=True).cpu() for s, e in self.turn_spans(messages)]


class HiddenStatesFinalNorm(R.ConversationAnalyzer):
    """hidden_states[layer + 1]: block `layer`'s output for every block but the last, whose entry has the
    final norm applied."""

    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = self.model(input_ids=ids, output_hidden_states=True).hidden_states[self.layer + 1][0]
        return [hs[s:e].mean(0).float().cpu() for s, e in spans]


class SpansAddSpecialTokens(R.ConversationAnalyzer):
    """Tokenises the rendered chat with the default add_special_tokens=True (spans and forward alike)."""

    def turn_spans(self, messages):
        msgs = normalize_messages(messages, self.tokenizer)
        text = render(self.tokenizer, msgs)
        offsets = self.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        out = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                prefix = render(self.tokenizer, msgs[:i], add_generation_prompt=True)
                if not text.startswith(prefix):
                    prefix = render(self.tokenizer, msgs[:i])
                start = text.find(m["content"], len(prefix))
                out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
        return out


class ExtractAddsSpecialTokens(R.ConversationAnalyzer):
    """Right spans, but the forward pass tokenises with add_special_tokens=True."""

    def extract_turn_activations(self, messages):
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        got = {}
        with hooks(self.model, {self.layer: lambda m, a, o: got.update(h=hidden_of(o)[0])}), torch.inference_mode():
            self.model(input_ids=ids.to(input_device(self.model)))
        return [got["h"][s:e].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


class ExtractOutputZero(R.ConversationAnalyzer):
    """`output[0]` in the hook: batch row 0 of a tensor output (right), the [1, T, d] hidden state of a tuple."""

    def extract_turn_activations(self, messages):
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        got = {}
        with hooks(self.model, {self.layer: lambda m, a, o: got.update(h=o[0])}), torch.inference_mode():
            self.model(input_ids=ids.to(input_device(self.model)))
        return [got["h"][s:e].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


class SpansMergeSystemInPlace(R.ConversationAnalyzer):
    """Merges the system prompt into the caller's first user message (and drops it from their list)
    where the template has no system role."""

    def turn_spans(self, messages):
        from utils.chat import supports_system_role

        if messages and messages[0]["role"] == "system" and not supports_system_role(self.tokenizer):
            messages[1]["content"] = f"{messages[0]['content']}\n\n{messages[1]['content']}"
            del messages[0]
        return super().turn_spans(messages)


class ProjectionNormalisesAxisInPlace(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        self.axis /= self.axis.norm()  # the caller's tensor too: __init__ keeps it without a copy
        return [float(a @ self.axis) for a in self.extract_turn_activations(messages)]


class HiddenStatesMissHooks(R.ConversationAnalyzer):
    """hidden_states[layer + 1], with a hook for the last block only: in transformers >= 5 the
    hidden_states entry is recorded before a capper's hook on the same block changes the output."""

    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if self.layer == len(get_blocks(self.model)) - 1:
            hs = _hidden(self, messages, self.layer)
        else:
            with torch.no_grad():
                hs = self.model(input_ids=ids, output_hidden_states=True).hidden_states[self.layer + 1][0]
        return [hs[s:e].mean(0).float().cpu() for s, e in spans]


# correct alternatives


class AnalyzerHookHelper(R.ConversationAnalyzer):
    """The block's output through utils.hooks.hooks; the mean taken in the model's dtype, then float32;
    the turns returned stacked in one [n_turns, d_model] tensor; the projection through F.normalize."""

    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        hs = _hidden(self, messages, self.layer)
        return torch.stack([hs[s:e].mean(0) for s, e in spans]).float().cpu()

    def project_onto_axis(self, messages):
        unit = torch.nn.functional.normalize(self.axis, dim=0)
        return (self.extract_turn_activations(messages) @ unit).tolist()


class AnalyzerWalkingCursor(R.ConversationAnalyzer):
    """Spans from a cursor that walks through every message's rendering in turn."""

    def turn_spans(self, messages):
        msgs, text, offsets = _rendered(self.tokenizer, messages)
        out = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = render(self.tokenizer, msgs[:i])
            opener = render(self.tokenizer, msgs[:i], add_generation_prompt=True)
            cursor = len(opener) if text.startswith(opener) else len(before)
            start = text.index(m["content"], cursor)
            out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
        return out

    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer).float().cpu()
        return [h[s:e].mean(0) for s, e in self.turn_spans(messages)]


# -----------------------------------------------------------------------------
# 2.3 rate_delusion_risk (each calls `judge_reply` from its own globals, which the test patches)


def _prompt(conversation, i, conv_part=None):
    return data.load_delusion_risk_prompt().format(
        conversation=data.format_conversation(conversation[:i] if conv_part is None else conv_part),
        response=conversation[i]["content"])


def _positions(conversation):
    return [i for i, m in enumerate(conversation) if m["role"] == "assistant"]


def _parse(reply, pick=-1):
    if reply is None:
        return None
    scores = []
    for name in ("AVOIDING_DELUSION", "MAINTAINING_ROLE"):
        found = re.findall(rf"{name}:\s*(\d+)", reply)
        if not found:
            return None
        scores.append(int(found[pick]))
    if not all(1 <= s <= 5 for s in scores):
        return None
    return scores


def risk_leaks_later_turns(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=conversation)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_message_index(conversation, assistant_idx):
    i = 2 * assistant_idx + 1  # assumes the conversation starts with a user message
    if i >= len(conversation):
        raise IndexError("no such turn")
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_first_match(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)), pick=0)  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_inverted(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else 100 - data.delusion_risk_from_scores(*scores)


def risk_own_mapping(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else int((10 - sum(scores)) * 12)


def risk_raises_on_garbage(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    a = int(re.findall(r"AVOIDING_DELUSION:\s*(\d+)", reply)[-1])
    b = int(re.findall(r"MAINTAINING_ROLE:\s*(\d+)", reply)[-1])
    return data.delusion_risk_from_scores(a, b)


def risk_zero_on_garbage(conversation, assistant_idx):
    risk = _risk_reference_style(conversation, assistant_idx)
    return 0 if risk is None else risk


def _risk_reference_style(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_no_range_check(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    if reply is None:
        return None
    a = re.findall(r"AVOIDING_DELUSION:\s*(\d+)", reply)
    b = re.findall(r"MAINTAINING_ROLE:\s*(\d+)", reply)
    if not a or not b:
        return None
    return data.delusion_risk_from_scores(int(a[-1]), int(b[-1]))  # raises ValueError outside 1-5


def risk_bankers_rounding(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else round(100 * ((5 - scores[0]) + (5 - scores[1])) / 8)


def risk_only_last_user_message(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=[conversation[i - 1]])))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_none_out_of_range(conversation, assistant_idx):
    pos = _positions(conversation)
    if assistant_idx >= len(pos):
        return None
    return _risk_reference_style(conversation, assistant_idx)


def risk_context_includes_reply(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=conversation[: i + 1])))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_single_digit(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    if reply is None:
        return None
    a = re.findall(r"AVOIDING_DELUSION:\s*(\d)", reply)
    b = re.findall(r"MAINTAINING_ROLE:\s*(\d)", reply)
    if not a or not b or not (1 <= int(a[-1]) <= 5 and 1 <= int(b[-1]) <= 5):
        return None
    return data.delusion_risk_from_scores(int(a[-1]), int(b[-1]))


def risk_finds_reply_by_text(conversation, assistant_idx):
    reply = [m["content"] for m in conversation if m["role"] == "assistant"][assistant_idx]
    i = next(k for k, m in enumerate(conversation) if m["role"] == "assistant" and m["content"] == reply)
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_missing_line_defaults(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    reply = judge_reply(_prompt(conversation, i))  # noqa: F821
    if reply is None:
        return None
    scores = []
    for name in ("AVOIDING_DELUSION", "MAINTAINING_ROLE"):
        found = re.findall(rf"{name}:\s*(\d+)", reply)
        scores.append(int(found[-1]) if found else 5)  # a missing line counted as safe
    if not all(1 <= x <= 5 for x in scores):
        return None
    return data.delusion_risk_from_scores(*scores)


def risk_drops_system(conversation, assistant_idx):
    i = _positions(conversation)[assistant_idx]
    before = [m for m in conversation[:i] if m["role"] != "system"]
    scores = _parse(judge_reply(_prompt(conversation, i, conv_part=before)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


def risk_replace_chain(conversation, assistant_idx):
    """Fills the two slots with successive str.replace calls."""
    i = _positions(conversation)[assistant_idx]
    prompt = data.load_delusion_risk_prompt().replace("{conversation}", data.format_conversation(conversation[:i]))
    prompt = prompt.replace("{response}", conversation[i]["content"])
    scores = _parse(judge_reply(prompt))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


# correct alternatives


def risk_alt_line_parser(conversation, assistant_idx):
    """Counts assistant turns in a loop, formats the conversation itself, parses lines from the bottom."""
    seen = -1
    for i, m in enumerate(conversation):
        if m["role"] == "assistant":
            seen += 1
            if seen == assistant_idx:
                break
    else:
        raise IndexError(assistant_idx)
    history = "\n".join(f"[{m['role']}] {m['content']}" for m in conversation[:i])
    reply = judge_reply(data.load_delusion_risk_prompt().format(conversation=history, response=conversation[i]["content"]))  # noqa: F821
    if not reply:
        return None
    found = {}
    for line in reversed(reply.splitlines()):
        for name in ("AVOIDING_DELUSION", "MAINTAINING_ROLE"):
            if name not in found and (m := re.search(rf"{name}:\s*(\d+)\s*$", line)):
                found[name] = int(m.group(1))
    a, b = found.get("AVOIDING_DELUSION"), found.get("MAINTAINING_ROLE")
    if a is None or b is None or not (1 <= a <= 5 and 1 <= b <= 5):
        return None
    return data.delusion_risk_from_scores(a, b)


def risk_alt_no_index_check(conversation, assistant_idx):
    """No explicit range check (IndexError comes from the list); correct for the rating itself."""
    i = [k for k, m in enumerate(conversation) if m["role"] == "assistant"][assistant_idx]
    scores = _parse(judge_reply(_prompt(conversation, i)))  # noqa: F821
    return None if scores is None else data.delusion_risk_from_scores(*scores)


# each wrong function looks up `judge_reply` in this module's globals, which the test patches
judge_reply = None


# -----------------------------------------------------------------------------
# 2.4 visualize_transcript_drift


def _messages(transcript, keep_system=True):
    if isinstance(transcript, dict):
        conv, system = transcript["conversation"], transcript.get("system_prompt")
    else:
        conv, system = list(transcript), None
    return ([{"role": "system", "content": system}] if system and keep_system else []) + list(conv)


def _plot(projections, risks, secondary=True, show=True, title=None, first_turn=1, risk_range=(0, 100)):
    from plotly.subplots import make_subplots

    turns = list(range(first_turn, len(projections) + first_turn))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=turns, y=projections), secondary_y=False)
    fig.add_trace(go.Scatter(x=turns, y=risks), secondary_y=secondary)
    fig.update_layout(title=title)
    if secondary and risk_range is not None:
        fig.update_yaxes(range=list(risk_range), secondary_y=True)
    if show:
        fig.show()


def drift_turns_from_zero(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title, first_turn=0)
    return p, r


def drift_risk_autorange(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title, risk_range=None)
    return p, r


def drift_drops_system_prompt(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript, keep_system=False)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


def drift_one_based(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = []
    for k in range(1, len(p) + 1):
        try:
            r.append(rate_delusion_risk(msgs, k) if rate_risk else None)  # noqa: F821
        except IndexError:
            r.append(None)
    _plot(p, r, title=title)
    return p, r


def drift_one_axis(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, secondary=False, title=title)
    return p, r


def drift_no_show(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, show=False, title=title)
    return p, r


def drift_project_per_turn(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    ends = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    p = [analyzer.project_onto_axis(msgs[: i + 1])[-1] for i in ends]
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


def drift_always_rates(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))]  # noqa: F821
    if not rate_risk:
        r = [None] * len(p)
    _plot(p, r, title=title)
    return p, r


def drift_ignores_title(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r)
    return p, r


def drift_rates_without_system(analyzer, transcript, rate_risk=True, title=None):
    msgs = _messages(transcript)
    conv = transcript["conversation"] if isinstance(transcript, dict) else list(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(conv, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


def drift_mutates_transcript(analyzer, transcript, rate_risk=True, title=None):
    if isinstance(transcript, dict):
        msgs = transcript["conversation"]
        if transcript.get("system_prompt"):
            msgs.insert(0, {"role": "system", "content": transcript["system_prompt"]})
    else:
        msgs = transcript
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    _plot(p, r, title=title)
    return p, r


def drift_swapped_axes(analyzer, transcript, rate_risk=True, title=None):
    from plotly.subplots import make_subplots

    msgs = _messages(transcript)
    p = analyzer.project_onto_axis(msgs)
    r = [rate_delusion_risk(msgs, k) for k in range(len(p))] if rate_risk else [None] * len(p)  # noqa: F821
    turns = list(range(1, len(p) + 1))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=turns, y=r), secondary_y=False)
    fig.add_trace(go.Scatter(x=turns, y=p), secondary_y=True)
    fig.update_layout(title=title)
    fig.show()
    return p, r


# correct alternative


def drift_alt_overlay(analyzer, transcript, rate_risk=True, title=None):
    """A plain go.Figure with a second y axis laid over the first."""
    conv = list(transcript["conversation"]) if isinstance(transcript, dict) else list(transcript)
    system = transcript.get("system_prompt") if isinstance(transcript, dict) else None
    msgs = [{"role": "system", "content": system}, *conv] if system else conv
    p = analyzer.project_onto_axis(msgs)
    r = []
    for k in range(len(p)):
        r.append(rate_delusion_risk(msgs, k) if rate_risk else None)  # noqa: F821
    fig = go.Figure([go.Scatter(x=list(range(1, len(p) + 1)), y=p, name="projection"),
                     go.Scatter(x=list(range(1, len(p) + 1)), y=r, name="risk", yaxis="y2")])
    fig.update_layout(title=title or "drift", yaxis2=dict(overlaying="y", side="right", range=[0, 100]))
    fig.show()
    return list(p), r


rate_delusion_risk = None  # patched by the test


# -----------------------------------------------------------------------------
# 2.5 generate_with_steering


def _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, hook_layer=None, use_finally=True,
           temperature=0.0):
    handle = get_blocks(model)[layer if hook_layer is None else hook_layer].register_forward_hook(hook)
    msgs = [build_messages(system_prompt, prompt)]
    if not use_finally:
        out = generate(model, tokenizer, msgs, max_new_tokens=max_new_tokens, temperature=temperature)[0]
        handle.remove()
        return out
    try:
        return generate(model, tokenizer, msgs, max_new_tokens=max_new_tokens, temperature=temperature)[0]
    finally:
        handle.remove()


def _add(alpha, vector):
    """A correct hook body: alpha * vector in the hidden state's dtype and device."""
    def hook(m, a, o):
        h = hidden_of(o)
        return with_hidden(o, h + alpha * vector.to(device=h.device, dtype=h.dtype))

    return hook


def steer_normalised(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    v = vector / vector.norm()
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * v), layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_normalises_in_place(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64,
                              temperature=0.0):
    vector /= vector.norm()  # the caller's tensor: the test's expected change is then alpha * unit vector too
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer,
                  system_prompt, max_new_tokens, temperature=temperature)


def steer_next_block(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer,
                  system_prompt, max_new_tokens, hook_layer=layer + 1, temperature=temperature)


def steer_in_place(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        hidden_of(o).add_(alpha * vector)
        return o

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_prefill_only(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        h = hidden_of(o)
        return o if h.shape[1] == 1 else with_hidden(o, h + alpha * vector)

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_last_position(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        h = hidden_of(o)
        delta = torch.zeros_like(h)
        delta[:, -1] = alpha * vector
        return with_hidden(o, h + delta)

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_no_finally(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer,
                  system_prompt, max_new_tokens, use_finally=False, temperature=temperature)


def steer_tuple_assumed(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: (o[0] + alpha * vector, *o[1:]), layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_returns_tensor(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: hidden_of(o) + alpha * vector, layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_ignores_system(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer, None, max_new_tokens, temperature=temperature)


def steer_hook_returns_nothing(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        h = hidden_of(o) + alpha * vector  # computed, but never returned
        del h

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_ignores_temperature(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, _add(alpha, vector), layer, system_prompt, max_new_tokens)


def steer_ignores_max_new_tokens(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, _add(alpha, vector), layer, system_prompt, 64, temperature=temperature)


def steer_ignores_alpha(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    hook = _add(1.0, vector) if alpha else (lambda m, a, o: o)  # "alpha = 0 means off", otherwise the vector as it is
    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


def steer_upcasts(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    vec = vector.float()
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vec), layer,
                  system_prompt, max_new_tokens, temperature=temperature)


# correct alternatives


def steer_alt_hooks_context(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    """utils.hooks.hooks removes the hook on the way out, exception or not; the tuple case handled by hand."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + (alpha * vector).to(output[0].dtype), *output[1:])
        return output + (alpha * vector).to(device=output.device, dtype=output.dtype)

    with hooks(model, {layer: hook}):
        return generate(model, tokenizer, [build_messages(system_prompt, prompt)], max_new_tokens=max_new_tokens,
                        temperature=temperature)[0]


def steer_alt_exit_stack(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    with ExitStack() as stack:
        handle = get_blocks(model)[layer].register_forward_hook(_add(alpha, vector))
        stack.callback(handle.remove)
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return generate(model, tokenizer, [messages], max_new_tokens=max_new_tokens, temperature=temperature)[0]


# -----------------------------------------------------------------------------
# 2.6 compute_capping_threshold


def tau_one_minus(projections, quantile=0.25):
    return ref.compute_capping_threshold(projections, 1 - quantile)


def tau_percentile_confusion(projections, quantile=0.25):
    return float(np.percentile(np.asarray(projections, dtype=float), quantile))


def tau_divided_by_100(projections, quantile=0.25):
    return ref.compute_capping_threshold(projections, quantile / 100)


def tau_max(projections, quantile=0.25):
    return float(np.max(np.asarray(projections, dtype=float)))


def tau_mean(projections, quantile=0.25):
    return float(np.mean(np.asarray(projections, dtype=float)))


def tau_tensor(projections, quantile=0.25):
    return torch.quantile(torch.as_tensor(np.asarray(projections, dtype=np.float64)), quantile)


def tau_accepts_percent(projections, quantile=0.25):
    q = quantile / 100 if quantile > 1 else quantile
    return float(np.quantile(np.asarray(projections, dtype=float), q))


def tau_nearest(projections, quantile=0.25):
    return float(np.quantile(np.asarray(projections, dtype=float), quantile, method="nearest"))


def tau_ignores_quantile(projections, quantile=0.25):
    return float(np.quantile(np.asarray(projections, dtype=float), 0.25))


def tau_numpy_on_tensor(projections, quantile=0.25):
    if not 0 <= quantile <= 1:
        raise ValueError("quantile must be in [0, 1]")
    x = np.asarray(projections, dtype=np.float64)  # fails on a bfloat16 tensor
    if x.size == 0:
        raise ValueError("no projections")
    return float(np.quantile(x, quantile))


def tau_rejects_bounds(projections, quantile=0.25):
    if not 0 < quantile < 1:
        raise ValueError("quantile must be strictly between 0 and 1")
    return ref.compute_capping_threshold(projections, quantile)


def tau_torch_no_checks(projections, quantile=0.25):
    """Correct maths, no input checks: torch raises RuntimeError, not ValueError, on bad input."""
    return float(torch.quantile(torch.as_tensor(projections).double().flatten(), quantile))


def tau_sorts_in_place(projections, quantile=0.25):
    """Linear interpolation by hand, after sorting the caller's list in place."""
    if not 0 <= quantile <= 1:
        raise ValueError("quantile must be in [0, 1]")
    xs = projections.float().tolist() if isinstance(projections, torch.Tensor) else projections
    if len(xs) == 0:
        raise ValueError("no projections")
    xs.sort()
    pos = quantile * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (pos - lo) * (xs[hi] - xs[lo]))


# correct alternatives


def tau_alt_torch_float32(projections, quantile=0.25):
    """torch.quantile in float32 (differs from np.quantile in float64 by float32 rounding)."""
    if not 0 <= quantile <= 1:
        raise ValueError("quantile must be a fraction in [0, 1]")
    x = torch.as_tensor(projections).detach().float().flatten()
    if x.numel() == 0:
        raise ValueError("no projections")
    return torch.quantile(x, quantile).item()


def tau_alt_percentile(projections, quantile=0.25):
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile is a fraction in [0, 1], got {quantile}")
    x = torch.as_tensor(projections).float().numpy() if isinstance(projections, torch.Tensor) else np.asarray(projections, dtype=float)
    if len(x) == 0:
        raise ValueError("empty")
    return float(np.percentile(x, 100 * quantile))


def tau_alt_by_hand(projections, quantile=0.25):
    """Sorted values, linear interpolation written out."""
    xs = sorted(float(p) for p in (projections.float().tolist() if isinstance(projections, torch.Tensor) else projections))
    if not xs or not 0.0 <= quantile <= 1.0:
        raise ValueError("need projections and a quantile in [0, 1]")
    pos = quantile * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


# -----------------------------------------------------------------------------
# 2.7 ActivationCapper


class _CapperBase(R.ActivationCapper):
    def cap(self, h, v, tau):
        raise NotImplementedError

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            return with_hidden(output, self.cap(h, v_hat.to(h.dtype), tau))

        return hook


class CapCeiling(_CapperBase):
    def cap(self, h, v, tau):
        return h - (h @ v - tau).clamp(min=0).unsqueeze(-1) * v


class CapHalfConverted(_CapperBase):
    """Took the released ceiling, reversed the vector, but kept the threshold's sign."""

    def cap(self, h, v, tau):
        u = -v
        return h - (h @ u - tau).clamp(min=0).unsqueeze(-1) * u


class CapNotNormalised(R.ActivationCapper):
    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        self.units = [torch.as_tensor(v).float() for v in (list(vectors) if not isinstance(vectors, torch.Tensor) else list(vectors))]


class CapLastPosition(_CapperBase):
    def cap(self, h, v, tau):
        out = h.clone()
        last = h[:, -1]
        out[:, -1] = last - (last @ v - tau).clamp(max=0).unsqueeze(-1) * v
        return out


class CapInPlace(_CapperBase):
    def cap(self, h, v, tau):
        h.sub_((h @ v - tau).clamp(max=0).unsqueeze(-1) * v)
        return h


class CapReplacesVector(_CapperBase):
    def cap(self, h, v, tau):
        below = ((h @ v) < tau).unsqueeze(-1)
        return torch.where(below, tau * v.expand_as(h), h)


class CapSkipsDecode(_CapperBase):
    def cap(self, h, v, tau):
        if h.shape[1] == 1:
            return h
        return h - (h @ v - tau).clamp(max=0).unsqueeze(-1) * v


class CapKeepsLastHandle(R.ActivationCapper):
    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            self._handles = [blocks[layer].register_forward_hook(self._make_hook(v_hat, tau))]
        return self


class CapNoLengthCheck(R.ActivationCapper):
    def __init__(self, model, vectors, thresholds, layers):
        vectors = list(vectors)
        n = min(len(vectors), len(thresholds), len(layers))
        super().__init__(model, vectors[:n], list(thresholds)[:n], list(layers)[:n])


class CapLeaksOnBadLayer(R.ActivationCapper):
    """No layer check when built; __enter__ registers hook after hook and stops at the first missing block."""

    def __init__(self, model, vectors, thresholds, layers):
        n = len(get_blocks(model))
        super().__init__(model, vectors, thresholds, [min(int(x), n - 1) for x in layers])
        self.layers = [int(x) for x in layers]

    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            self._handles.append(blocks[layer].register_forward_hook(self._make_hook(v_hat, tau)))
        return self


class CapFirstLayerOnly(R.ActivationCapper):
    def __enter__(self):
        self._handles.append(get_blocks(self.model)[self.layers[0]].register_forward_hook(
            self._make_hook(self.units[0], self.thresholds[0])))
        return self


class CapReturnsTensor(_CapperBase):
    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            v = v_hat.to(h.dtype)
            return h - (h @ v - tau).clamp(max=0).unsqueeze(-1) * v

        return hook


class CapLayersReversed(R.ActivationCapper):
    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, list(layers)[::-1])


class CapSortsLayers(R.ActivationCapper):
    """Sorts the layers but not the vectors and thresholds that go with them."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, sorted(layers))


class CapNormalisesInPlace(R.ActivationCapper):
    """Normalises the caller's vectors in place."""

    def __init__(self, model, vectors, thresholds, layers):
        for v in vectors:
            v.div_(v.norm())
        super().__init__(model, vectors, thresholds, layers)


class CapHooksInInit(R.ActivationCapper):
    """Registers its hooks as soon as it is built; __enter__ does nothing more."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        R.ActivationCapper.__enter__(self)

    def __enter__(self):
        if not self._handles:
            R.ActivationCapper.__enter__(self)
        return self


class CapLateBinding(R.ActivationCapper):
    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            def hook(module, args, output):
                h = hidden_of(output)
                v = v_hat.to(device=h.device)  # looked up when the hook runs: the last loop value
                p = h.float() @ v
                return with_hidden(output, (h.float() - (p - tau).clamp(max=0).unsqueeze(-1) * v).to(h.dtype))

            self._handles.append(blocks[layer].register_forward_hook(hook))
        return self


class CapThresholdOnRawVector(R.ActivationCapper):
    """Projects on the raw vector and divides by ||v||^2: the floor lands at tau / ||v|| on the unit vector."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        self.raw = [torch.as_tensor(v).float() for v in (list(vectors) if not isinstance(vectors, torch.Tensor) else list(vectors))]

    def __enter__(self):
        blocks = get_blocks(self.model)
        for v, tau, layer in zip(self.raw, self.thresholds, self.layers):
            def hook(module, args, output, v=v, tau=tau):
                h = hidden_of(output).float()
                return with_hidden(output, (h - ((h @ v - tau).clamp(max=0) / (v @ v)).unsqueeze(-1) * v).to(hidden_of(output).dtype))

            self._handles.append(blocks[layer].register_forward_hook(hook))
        return self


class CapReturnsFloat32(R.ActivationCapper):
    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output).float()
            return with_hidden(output, h - (h @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v_hat)

        return hook


class CapHalfPrecisionProjection(R.ActivationCapper):
    """Everything in the block's dtype: in bfloat16 the projection keeps about 3 significant digits."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            v = v_hat.to(h.dtype)
            return with_hidden(output, h - (h @ v - tau).clamp(max=0).unsqueeze(-1) * v)

        return hook


class CapMixedDtypes(R.ActivationCapper):
    """Multiplies the block's hidden state by the float32 unit vector as it is."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            p = h @ v_hat
            return with_hidden(output, h - (p - tau).clamp(max=0).unsqueeze(-1) * v_hat)

        return hook


class CapBatchRowZero(R.ActivationCapper):
    """Takes output[0] of a tensor output: batch row 0, and returns it in place of the whole batch."""

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = output[0].float()
            return (h - (h @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v_hat).to(output[0].dtype)

        return hook


class CapPreHook(R.ActivationCapper):
    """Caps the block's input (a forward pre-hook), i.e. the previous block's output."""

    def __enter__(self):
        blocks = get_blocks(self.model)
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            def pre(module, args, v_hat=v_hat, tau=tau):
                h = args[0].float()
                return ((h - (h @ v_hat - tau).clamp(max=0).unsqueeze(-1) * v_hat).to(args[0].dtype), *args[1:])

            self._handles.append(blocks[layer].register_forward_pre_hook(pre))
        return self


# correct alternatives


class CapAltWhereExitStack(R.ActivationCapper):
    """torch.where form in float64, hooks held by an ExitStack."""

    def __init__(self, model, vectors, thresholds, layers):
        super().__init__(model, vectors, thresholds, layers)
        self._stack = None

    def _make_hook(self, v_hat, tau):
        def hook(module, args, output):
            h = hidden_of(output)
            hd, vd = h.double(), v_hat.double().to(h.device)
            p = (hd @ vd).unsqueeze(-1)
            capped = torch.where(p < tau, hd + (tau - p) * vd, hd)
            return with_hidden(output, capped.to(h.dtype))

        return hook

    def __enter__(self):
        self._stack = ExitStack()
        for v_hat, tau, layer in zip(self.units, self.thresholds, self.layers):
            handle = get_blocks(self.model)[layer].register_forward_hook(self._make_hook(v_hat, tau))
            self._stack.callback(handle.remove)
        return self

    def remove(self):
        if self._stack is not None:
            self._stack.close()
            self._stack = None


# -----------------------------------------------------------------------------
# 2.8 compute_turn_projections and run_capping_experiment


def ctp_ignores_capper(model, tokenizer, messages, axis, layer, capper=None):
    return ConversationAnalyzer(model, tokenizer, layer, axis).project_onto_axis(messages)  # noqa: F821


def ctp_capper_exited_early(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        analyzer = ConversationAnalyzer(model, tokenizer, layer, axis)  # noqa: F821
    return analyzer.project_onto_axis(messages)


def ctp_not_normalised(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        acts = ConversationAnalyzer(model, tokenizer, layer, axis).extract_turn_activations(messages)  # noqa: F821
    return [float(a @ axis) for a in acts]


def ctp_never_exits(model, tokenizer, messages, axis, layer, capper=None):
    if capper is not None:
        capper.__enter__()
    return ConversationAnalyzer(model, tokenizer, layer, axis).project_onto_axis(messages)  # noqa: F821


def ctp_exit_without_finally(model, tokenizer, messages, axis, layer, capper=None):
    if capper is not None:
        capper.__enter__()
    projections = ConversationAnalyzer(model, tokenizer, layer, axis).project_onto_axis(messages)  # noqa: F821
    if capper is not None:
        capper.__exit__(None, None, None)  # skipped when the forward pass raises
    return projections


def ctp_fixed_layer(model, tokenizer, messages, axis, layer, capper=None):
    with capper if capper is not None else nullcontext():
        return ConversationAnalyzer(model, tokenizer, 1, axis).project_onto_axis(messages)  # noqa: F821


# correct alternatives


def ctp_alt_exit_stack(model, tokenizer, messages, axis, layer, capper=None):
    with ExitStack() as stack:
        if capper is not None:
            stack.enter_context(capper)
        acts = ConversationAnalyzer(model, tokenizer, layer, axis).extract_turn_activations(messages)  # noqa: F821
    unit = axis.float() / axis.float().norm()
    return [float(a.float() @ unit) for a in acts]


def ctp_alt_branches(model, tokenizer, messages, axis, layer, capper=None):
    analyzer = ConversationAnalyzer(model, tokenizer, layer, axis)  # noqa: F821
    if capper is None:
        return analyzer.project_onto_axis(messages)
    with capper:
        return analyzer.project_onto_axis(messages)


ConversationAnalyzer = None  # patched by the test


def _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, *, cap_generation=True,
                own_history=True, cap_measure=True, keep_system=True, generate_replies=True, measure_capped=None,
                empty=lambda r: r if r.strip() else "[empty reply]"):
    conv = transcript["conversation"] if isinstance(transcript, dict) else transcript
    system = transcript.get("system_prompt") if isinstance(transcript, dict) and keep_system else None
    users = [m["content"] for m in conv if m["role"] == "user"][:max_turns]
    originals = [m["content"] for m in conv if m["role"] == "assistant"]
    result = {}
    for name, ctx in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": system}] if system else []
        for k, u in enumerate(users):
            msgs.append({"role": "user", "content": u})
            gen_ctx = ctx if cap_generation else None
            if generate_replies:
                with gen_ctx if gen_ctx is not None else nullcontext():
                    reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
                reply = empty(reply)
            else:
                reply = originals[k]
            msgs.append({"role": "assistant", "content": reply if own_history else originals[k]})
        measure = (ctx if cap_measure else None) if measure_capped is None else (capper if measure_capped else None)
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=measure)}
    return result


def exp_mutates_transcript(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Replays correctly, then stores the capped replay in the transcript it was given."""
    result = _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns)
    transcript["conversation"] = result["capped"]["conversation"]
    return result


def exp_capper_unused(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, cap_generation=False)


def exp_transcript_history(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    conv = transcript["conversation"]
    users = [m["content"] for m in conv if m["role"] == "user"][:max_turns]
    originals = [m["content"] for m in conv if m["role"] == "assistant"]
    result = {}
    for name, ctx in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": transcript["system_prompt"]}] if transcript.get("system_prompt") else []
        replies = []
        for k, u in enumerate(users):
            context = msgs + [{"role": "user", "content": u}]
            with ctx if ctx is not None else nullcontext():
                reply = generate(model, tokenizer, [context], max_new_tokens=max_new_tokens)[0]  # noqa: F821
                replies.append(reply if reply.strip() else "[empty reply]")
            msgs = context + [{"role": "assistant", "content": originals[k]}]
        final = [{"role": "system", "content": transcript["system_prompt"]}] if transcript.get("system_prompt") else []
        for u, r in zip(users, replies):
            final += [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
        result[name] = {"conversation": final, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, final, axis, layer, capper=ctx)}
    return result


def exp_uncapped_measure(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, cap_measure=False)


def exp_drops_system(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, keep_system=False)


def exp_ignores_max_turns(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, None)


def exp_keeps_original_replies(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, generate_replies=False)


def exp_ignores_max_new_tokens(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, 48, max_turns)


def exp_whitespace_reply_kept(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns,
                       empty=lambda r: r or "[empty reply]")


def exp_empty_reply_kept(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, empty=lambda r: r)


def exp_requires_system_key(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    transcript = dict(transcript, system_prompt=transcript["system_prompt"])  # KeyError without one
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns)


def exp_always_system_message(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    conv = transcript["conversation"]
    users = [m["content"] for m in conv if m["role"] == "user"][:max_turns]
    result = {}
    for name, ctx in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": transcript.get("system_prompt", "")}]
        for u in users:
            msgs.append({"role": "user", "content": u})
            with ctx if ctx is not None else nullcontext():
                reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else "[empty reply]"})
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=ctx)}
    return result


def exp_max_turns_range(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    users = [m for m in transcript["conversation"] if m["role"] == "user"]
    [users[k] for k in range(max_turns)]  # TypeError when max_turns is None
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns)


def exp_shared_history(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Both conditions answer each turn after the same (uncapped) history."""
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    shared = [{"role": "system", "content": system}] if system else []
    convs = {"uncapped": list(shared), "capped": list(shared)}
    for u in users:
        shared = shared + [{"role": "user", "content": u}]
        plain = generate(model, tokenizer, [shared], max_new_tokens=max_new_tokens)[0]  # noqa: F821
        with capper:
            capped = generate(model, tokenizer, [shared], max_new_tokens=max_new_tokens)[0]  # noqa: F821
        plain, capped = (r if r.strip() else "[empty reply]" for r in (plain, capped))
        convs["uncapped"] += [{"role": "user", "content": u}, {"role": "assistant", "content": plain}]
        convs["capped"] += [{"role": "user", "content": u}, {"role": "assistant", "content": capped}]
        shared = shared + [{"role": "assistant", "content": plain}]
    return {name: {"conversation": c, "projections": compute_turn_projections(  # noqa: F821
        model, tokenizer, c, axis, layer, capper=capper if name == "capped" else None)} for name, c in convs.items()}


def exp_exit_without_finally(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    result = {}
    for name, cap in (("uncapped", None), ("capped", capper)):
        msgs = [{"role": "system", "content": system}] if system else []
        if cap is not None:
            cap.__enter__()
        for u in users:
            msgs.append({"role": "user", "content": u})
            reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else "[empty reply]"})
        if cap is not None:
            cap.__exit__(None, None, None)  # skipped when generation raises
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=cap)}
    return result


def exp_shared_list(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Both conditions append to one list of messages."""
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    messages = [{"role": "system", "content": system}] if system else []
    result = {}
    for name, cap in (("uncapped", None), ("capped", capper)):
        msgs = messages  # the same list for both conditions
        for u in users:
            msgs.append({"role": "user", "content": u})
            with cap if cap is not None else nullcontext():
                reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else "[empty reply]"})
        result[name] = {"conversation": msgs, "projections": compute_turn_projections(  # noqa: F821
            model, tokenizer, msgs, axis, layer, capper=cap)}
    return result


def exp_uncapped_measured_capped(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    return _experiment(transcript, model, tokenizer, axis, layer, capper, max_new_tokens, max_turns, measure_capped=True)


# correct alternatives


def exp_alt_nested_with(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """One `with capper:` around the whole capped condition, projections included (and passed capper again)."""
    system = transcript.get("system_prompt") if isinstance(transcript, dict) else None
    conv = transcript["conversation"] if isinstance(transcript, dict) else transcript
    users = [m["content"] for m in conv if m["role"] == "user"]
    users = users if max_turns is None else users[:max_turns]

    def run(cap):
        msgs = [{"role": "system", "content": system}] if system else []
        for u in users:
            msgs.append({"role": "user", "content": u})
            reply = generate(model, tokenizer, [msgs], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            msgs.append({"role": "assistant", "content": reply if reply.strip() else EMPTY_REPLY})
        return {"conversation": msgs, "projections": compute_turn_projections(model, tokenizer, msgs, axis, layer, capper=cap)}  # noqa: F821

    uncapped = run(None)
    with capper:
        capped = run(capper)
    return {"uncapped": uncapped, "capped": capped}


def exp_alt_formatted_prompts(model, tokenizer, transcript, axis, layer, capper, max_new_tokens=48, max_turns=None):
    """Generates from already formatted prompt strings; ExitStack for the capper."""
    system = transcript.get("system_prompt")
    users = [m["content"] for m in transcript["conversation"] if m["role"] == "user"][:max_turns]
    out = {}
    for name, cap in (("uncapped", None), ("capped", capper)):
        msgs = build_messages(system, users[0])
        replies = []
        for k, u in enumerate(users):
            if k:
                msgs = msgs + [{"role": "assistant", "content": replies[-1]}, {"role": "user", "content": u}]
            with ExitStack() as stack:
                if cap is not None:
                    stack.enter_context(cap)
                text = generate(model, tokenizer, [format_prompt(msgs, tokenizer)], max_new_tokens=max_new_tokens)[0]  # noqa: F821
            replies.append(text if text.strip() else EMPTY_REPLY)
        msgs = msgs + [{"role": "assistant", "content": replies[-1]}]
        out[name] = {"conversation": msgs, "projections": compute_turn_projections(model, tokenizer, msgs, axis, layer, capper=cap)}  # noqa: F821
    return out


EMPTY_REPLY = "[empty reply]"
compute_turn_projections = None  # patched by the test


# test name -> (reference object name, [(wrong implementation, phrase its failure message must contain)])
CATALOGUE = {
    "test_record_hidden_shapes": ("record_hidden_shapes", [
        (shapes_out0, "batch row 0"),
        (shapes_no_cache, "KV cache"),
        (shapes_next_block, "off by one"),
        (shapes_hook_left, "hook"),
        (shapes_raw_prompt, "chat template"),
        (shapes_prefill_only, "one per generated token"),
        (shapes_no_finally, "after an exception"),
        (shapes_ignores_max_new_tokens, "max_new_tokens argument was ignored"),
        (shapes_fixed_layer, "expected block(s) [3]"),
        (shapes_adds_special_tokens, "tokenizer(text) adds a second one"),
    ]),
    "test_conversation_analyzer": ("ConversationAnalyzer", [
        (SpansWithMarkers, "chat markers"),
        (SpansWithEndOfTurn, "end-of-turn token"),
        (SpansUserTurnsToo, "user"),
        (SpansFirstOccurrence, "earlier occurrence"),
        (SpansAfterPreviousReply, "earlier occurrence"),
        (SpansPerPrefix, "rendering each prefix"),
        (SpansGenerationPromptOnly, "search after render(tokenizer, msgs[:i]) instead"),
        (SpansCharOffsets, "character offsets"),
        (SpansNotNormalised, "merges the system prompt"),
        (ForwardPerTurn, "ONE forward pass"),
        (HiddenStatesOffByOne, "off by one"),
        (ExtractFixedLayer, "layer argument was ignored"),
        (HookNotRemovedOnError, "after an exception"),
        (MeanOverWholeSequence, "from the start of the conversation"),
        (MeanIncludesEndOfTurn, "end-of-turn token after them"),
        (MeanLastTokenOnly, "last token of each turn"),
        (ExtractKeepsModelDtype, "float32 on the CPU"),
        (ExtractKeepdim, "expected (d_model,)"),
        (NoNormDivision, "divide by ||v||"),
        (CosineInstead, "cosine"),
        (ProjectionReturnsTensors, "Python floats"),
        (HiddenStatesFinalNorm, "final norm applied"),
        (SpansAddSpecialTokens, "add_special_tokens=False"),
        (ExtractAddsSpecialTokens, "a second one shifts every position"),
        (ExtractOutputZero, "returns a tuple"),
        (ProjectionNormalisesAxisInPlace, "changed the axis tensor"),
        (SpansMergeSystemInPlace, "changed the list of messages"),
        (HiddenStatesMissHooks, "records a block's output before the hooks you add"),
    ]),
    "test_rate_delusion_risk": ("rate_delusion_risk", [
        (risk_leaks_later_turns, "later turn leaks"),
        (risk_context_includes_reply, "includes the reply being rated"),
        (risk_message_index, "counts assistant turns"),
        (risk_finds_reply_by_text, "searching for its text"),
        (risk_first_match, "LAST match"),
        (risk_inverted, "inverted"),
        (risk_own_mapping, "delusion_risk_from_scores"),
        (risk_bankers_rounding, "rounds halves to even"),
        (risk_raises_on_garbage, "should return None"),
        (risk_zero_on_garbage, "should return None"),
        (risk_no_range_check, "should return None"),
        (risk_single_digit, "whole number"),
        (risk_missing_line_defaults, "line is missing"),
        (risk_only_last_user_message, "missing an earlier message"),
        (risk_drops_system, "SYSTEM-PROMPT"),
        (risk_replace_chain, "successive str.replace"),
    ]),
    "test_rate_delusion_risk_input_checks": ("rate_delusion_risk", [
        (risk_none_out_of_range, "raise IndexError"),
    ]),
    "test_visualize_transcript_drift": ("visualize_transcript_drift", [
        (drift_drops_system_prompt, "system_prompt"),
        (drift_one_based, "assistant_idx 0, 1, 2"),
        (drift_one_axis, "second y axis"),
        (drift_swapped_axes, "swapped"),
        (drift_no_show, "fig.show()"),
        (drift_project_per_turn, "once"),
        (drift_always_rates, "do not call the judge"),
        (drift_ignores_title, "title argument was ignored"),
        (drift_rates_without_system, "system prompt is missing"),
        (drift_mutates_transcript, "changed the transcript"),
        (drift_turns_from_zero, "number the turns 1, 2, ..."),
        (drift_risk_autorange, "full scale, 0 to 100"),
    ]),
    "test_generate_with_steering": ("generate_with_steering", [
        (steer_normalised, "as given"),
        (steer_next_block, "off by one"),
        (steer_in_place, "in place"),
        (steer_prefill_only, "decode step"),
        (steer_last_position, "only the last position"),
        (steer_no_finally, "after an exception"),
        (steer_tuple_assumed, "batch row 0"),
        (steer_returns_tensor, "container"),
        (steer_ignores_system, "system_prompt"),
        (steer_hook_returns_nothing, "RETURN the new output"),
        (steer_ignores_temperature, "temperature argument was ignored"),
        (steer_ignores_max_new_tokens, "max_new_tokens argument was ignored"),
        (steer_ignores_alpha, "alpha argument was ignored"),
        (steer_upcasts, "float32 hidden state into a bfloat16 model"),
        (steer_normalises_in_place, "changed the vector it was given"),
    ]),
    "test_compute_capping_threshold": ("compute_capping_threshold", [
        (tau_one_minus, "1 - quantile"),
        (tau_percentile_confusion, "percent"),
        (tau_divided_by_100, "must not be divided by 100"),
        (tau_max, "maximum"),
        (tau_mean, "mean"),
        (tau_tensor, "Python float"),
        (tau_nearest, "linear interpolation"),
        (tau_ignores_quantile, "quantile argument was ignored"),
        (tau_numpy_on_tensor, "bfloat16"),
        (tau_sorts_in_place, "sorted it in place"),
    ]),
    "test_compute_capping_threshold_input_checks": ("compute_capping_threshold", [
        (tau_accepts_percent, "raise ValueError"),
        (tau_rejects_bounds, "0 and 1 are valid"),
        (tau_torch_no_checks, "raise ValueError"),
    ]),
    "test_activation_capper": ("ActivationCapper", [
        (CapCeiling, "sign is flipped"),
        (CapHalfConverted, "threshold"),
        (CapNotNormalised, "normalise"),
        (CapThresholdOnRawVector, "tau / ||v||"),
        (CapLastPosition, "only the last position"),
        (CapInPlace, "in place"),
        (CapReplacesVector, "orthogonal"),
        (CapSkipsDecode, "one token"),
        (CapKeepsLastHandle, "hook"),
        (CapHooksInInit, "register the hooks in __enter__"),
        (CapFirstLayerOnly, "expected block(s) [1, 3]"),
        (CapLateBinding, "late binding"),
        (CapReturnsTensor, "container you received"),
        (CapLayersReversed, "wrong layers"),
        (CapReturnsFloat32, "came back as torch.float32"),
        (CapHalfPrecisionProjection, "3 significant digits"),
        (CapMixedDtypes, "compute the projection in float32"),
        (CapBatchRowZero, "expected (batch, seq, d_model)"),
        (CapPreHook, "PRE-hook"),
        (CapSortsLayers, "whatever the order of the layers"),
        (CapNormalisesInPlace, "changed the vectors it was given"),
    ]),
    "test_activation_capper_input_checks": ("ActivationCapper", [
        (CapNoLengthCheck, "raise ValueError"),
        (CapLeaksOnBadLayer, "stayed capped"),
    ]),
    "test_compute_turn_projections": ("compute_turn_projections", [
        (ctp_ignores_capper, "not active"),
        (ctp_capper_exited_early, "not active"),
        (ctp_never_exits, "never exited"),
        (ctp_not_normalised, "a . v / ||v||"),
        (ctp_fixed_layer, "use the layer argument"),
        (ctp_exit_without_finally, "after an exception"),
    ]),
    "test_run_capping_experiment": ("run_capping_experiment", [
        (exp_capper_unused, "capper active"),
        (exp_transcript_history, "OWN earlier replies"),
        (exp_shared_history, "UNCAPPED condition's earlier replies"),
        (exp_shared_list, "the same list"),
        (exp_uncapped_measure, "capper active"),
        (exp_uncapped_measured_capped, "projected with the capper active"),
        (exp_drops_system, "system prompt"),
        (exp_ignores_max_turns, "max_turns"),
        (exp_ignores_max_new_tokens, "max_new_tokens argument was ignored"),
        (exp_keeps_original_replies, "write every reply itself"),
        (exp_whitespace_reply_kept, "EMPTY_REPLY"),
        (exp_empty_reply_kept, "EMPTY_REPLY"),
        (exp_requires_system_key, "no 'system_prompt' key"),
        (exp_always_system_message, "no system prompt"),
        (exp_max_turns_range, "max_turns=None"),
        (exp_exit_without_finally, "after an exception"),
        (exp_mutates_transcript, "changed the transcript"),
    ]),
}

# Correct implementations written another way (and maths written without the input checks, which
# their own test grades): each must pass its test.
CORRECT_ALTERNATIVES = {
    "test_record_hidden_shapes": [shapes_via_hidden_states, shapes_manual_kv_loop],
    "test_conversation_analyzer": [AnalyzerHookHelper, AnalyzerWalkingCursor],
    "test_rate_delusion_risk": [risk_alt_line_parser, risk_alt_no_index_check],
    "test_rate_delusion_risk_input_checks": [risk_alt_line_parser, risk_alt_no_index_check],
    "test_visualize_transcript_drift": [drift_alt_overlay],
    "test_generate_with_steering": [steer_alt_hooks_context, steer_alt_exit_stack],
    "test_compute_capping_threshold": [tau_alt_percentile, tau_alt_by_hand, tau_torch_no_checks, tau_alt_torch_float32],
    "test_compute_capping_threshold_input_checks": [tau_alt_percentile, tau_alt_by_hand, tau_alt_torch_float32],
    "test_activation_capper": [CapAltWhereExitStack, CapNoLengthCheck],
    "test_activation_capper_input_checks": [CapAltWhereExitStack],
    "test_compute_turn_projections": [ctp_alt_exit_stack, ctp_alt_branches],
    "test_run_capping_experiment": [exp_alt_nested_with, exp_alt_formatted_prompts],
}
