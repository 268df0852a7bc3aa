"""Exercise 2.2 — Projecting a conversation onto the axis, turn by turn

Wrong implementations of ConversationAnalyzer that its tests must reject, and correct ones written another
way.
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section2._shared import R
from utils.chat import char_span_to_token_span, normalize_messages, render
from utils.hooks import get_blocks, hidden_of, hooks
from utils.models import input_device


@mistake("test_conversation_analyzer", "chat markers")
class SpansWithMarkers(R.ConversationAnalyzer):
    def turn_spans(self, messages):
        return [(s - 3, e) for s, e in super().turn_spans(messages)]


@mistake("test_conversation_analyzer", "end-of-turn token")
class SpansWithEndOfTurn(R.ConversationAnalyzer):
    def turn_spans(self, messages):
        return [(s, e + 1) for s, e in super().turn_spans(messages)]


@mistake("test_conversation_analyzer", "user")
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


@mistake("test_conversation_analyzer", "ONE forward pass")
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


@mistake("test_conversation_analyzer", "off by one")
class HiddenStatesOffByOne(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            hs = self.model(input_ids=ids, output_hidden_states=True).hidden_states[self.layer]  # block layer - 1
        return [hs[0, s:e].mean(0).float() for s, e in spans]


@mistake("test_conversation_analyzer", "after an exception")
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


@mistake("test_conversation_analyzer", "from the start of the conversation")
class MeanOverWholeSequence(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        spans = self.turn_spans(messages)
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            hs = self.model(input_ids=ids, output_hidden_states=True).hidden_states[self.layer + 1]
        return [hs[0, :e].mean(0).float() for s, e in spans]


@mistake("test_conversation_analyzer", "divide by ||v||")
class NoNormDivision(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        return [float(a @ self.axis) for a in self.extract_turn_activations(messages)]


@mistake("test_conversation_analyzer", "cosine")
class CosineInstead(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        return [float(torch.nn.functional.cosine_similarity(a, self.axis, dim=0)) for a in self.extract_turn_activations(messages)]


@mistake("test_conversation_analyzer", "Python floats")
class ProjectionReturnsTensors(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        return [a @ (self.axis / self.axis.norm()) for a in self.extract_turn_activations(messages)]


def _rendered(tokenizer, messages):
    msgs = normalize_messages(messages, tokenizer)
    text = render(tokenizer, msgs)
    return msgs, text, tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


@mistake("test_conversation_analyzer", "earlier occurrence")
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


@mistake("test_conversation_analyzer", "earlier occurrence")
class SpansAfterUserText(R.ConversationAnalyzer):
    """Finds the user message before each reply (its first occurrence in the text), then the reply after it: right
    unless that user text, or the reply's, also appears earlier in the conversation."""

    def turn_spans(self, messages):
        msgs, text, offsets = _rendered(self.tokenizer, messages)
        out, user = [], ""
        for m in msgs:
            if m["role"] == "user":
                user = m["content"]
            elif m["role"] == "assistant":
                u = text.find(user)
                start = text.find(m["content"], u + len(user))
                out.append(char_span_to_token_span(offsets, (start, start + len(m["content"]))))
        return out


@mistake("test_conversation_analyzer", "earlier occurrence")
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


@mistake("test_conversation_analyzer", "rendering each prefix")
class SpansPerPrefix(R.ConversationAnalyzer):
    """Renders each prefix that ends with an assistant message and takes its final response span."""

    def turn_spans(self, messages):
        from utils.chat import format_chat

        msgs = normalize_messages(messages, self.tokenizer)
        return [format_chat(msgs[: i + 1], self.tokenizer).token_span for i, m in enumerate(msgs) if m["role"] == "assistant"]


@mistake("test_conversation_analyzer", "search after render(tokenizer, msgs[:i]) instead")
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


@mistake("test_conversation_analyzer", "character offsets")
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


@mistake("test_conversation_analyzer", "merges the system prompt")
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


@mistake("test_conversation_analyzer", "layer argument was ignored")
class ExtractFixedLayer(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, LAYER)
        return [h[s:e].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


@mistake("test_conversation_analyzer", "end-of-turn token after them")
class MeanIncludesEndOfTurn(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[s:e + 1].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


@mistake("test_conversation_analyzer", "last token of each turn")
class MeanLastTokenOnly(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[e - 1].float().cpu() for s, e in self.turn_spans(messages)]


@mistake("test_conversation_analyzer", "float32 on the CPU")
class ExtractKeepsModelDtype(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[s:e].mean(0).cpu() for s, e in self.turn_spans(messages)]


@mistake("test_conversation_analyzer", "expected (d_model,)")
class ExtractKeepdim(R.ConversationAnalyzer):
    def extract_turn_activations(self, messages):
        h = _hidden(self, messages, self.layer)
        return [h[s:e].float().mean(0, keepdim=True).cpu() for s, e in self.turn_spans(messages)]


@mistake("test_conversation_analyzer", "final norm applied")
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


@mistake("test_conversation_analyzer", "add_special_tokens=False")
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


@mistake("test_conversation_analyzer", "a second one shifts every position")
class ExtractAddsSpecialTokens(R.ConversationAnalyzer):
    """Right spans, but the forward pass tokenises with add_special_tokens=True."""

    def extract_turn_activations(self, messages):
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        got = {}
        with hooks(self.model, {self.layer: lambda m, a, o: got.update(h=hidden_of(o)[0])}), torch.inference_mode():
            self.model(input_ids=ids.to(input_device(self.model)))
        return [got["h"][s:e].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


@mistake("test_conversation_analyzer", "returns a tuple")
class ExtractOutputZero(R.ConversationAnalyzer):
    """`output[0]` in the hook: batch row 0 of a tensor output (right), the [1, T, d] hidden state of a tuple."""

    def extract_turn_activations(self, messages):
        text = render(self.tokenizer, normalize_messages(messages, self.tokenizer))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        got = {}
        with hooks(self.model, {self.layer: lambda m, a, o: got.update(h=o[0])}), torch.inference_mode():
            self.model(input_ids=ids.to(input_device(self.model)))
        return [got["h"][s:e].float().mean(0).cpu() for s, e in self.turn_spans(messages)]


@mistake("test_conversation_analyzer", "changed the list of messages")
class SpansMergeSystemInPlace(R.ConversationAnalyzer):
    """Merges the system prompt into the caller's first user message (and drops it from their list)
    where the template has no system role."""

    def turn_spans(self, messages):
        from utils.chat import supports_system_role

        if messages and messages[0]["role"] == "system" and not supports_system_role(self.tokenizer):
            messages[1]["content"] = f"{messages[0]['content']}\n\n{messages[1]['content']}"
            del messages[0]
        return super().turn_spans(messages)


@mistake("test_conversation_analyzer", "changed the axis tensor")
class ProjectionNormalisesAxisInPlace(R.ConversationAnalyzer):
    def project_onto_axis(self, messages):
        self.axis /= self.axis.norm()  # the caller's tensor too: __init__ keeps it without a copy
        return [float(a @ self.axis) for a in self.extract_turn_activations(messages)]


@mistake("test_conversation_analyzer", "records a block's output before the hooks you add")
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


@correct("test_conversation_analyzer")
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


@correct("test_conversation_analyzer")
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
