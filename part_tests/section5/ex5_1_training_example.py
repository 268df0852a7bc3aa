"""Exercise 5.1 — A training example with the loss on the response.

Expected values come from utils.chat.format_chat (the exact response span of the chat template),
on tiny-qwen2's template, a Llama-3-style one (a BOS token and a one-token end of turn) and
tiny-gemma2's.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from part_tests._common import call, exercise, expect_value_error, fail, passed, require_implemented, tiny, tiny_variant
from part_tests.section5._fakes import PROMPTS, RESPONSES, example
from part_tests.shapes import expect_tensor

NAME = "training_example"


def _diagnose(ids: torch.Tensor, labels: torch.Tensor, want_ids: torch.Tensor, span: tuple[int, int], where: str) -> None:
    s, e = span
    if torch.equal(labels, ids):
        fail(f"{NAME}: the labels equal input_ids everywhere{where}, so the loss covers the prompt tokens too (the "
             "template's headers and the user's question): set the labels to -100 outside the response's span")
    for k in (1, -1):
        shifted = torch.full_like(ids, -100)
        lo, hi = max(0, s - k), min(len(ids), e - k)
        shifted[lo:hi] = ids[lo + k:hi + k]
        if torch.equal(labels, shifted):
            fail(f"{NAME}: the labels are the response's tokens shifted by {k} position{where}: do not shift them by "
                 "hand, the model shifts the labels itself (it compares the logits at t with the label at t + 1)")
    marked = (labels != -100).nonzero().flatten()
    if len(marked) and int(marked.min()) == s and int(marked.max()) >= e:
        fail(f"{NAME}: the labels run past the response's last token{where} into the template's end-of-turn tokens: "
             "label only the response's span (format_chat's token_span is end-exclusive)")
    if len(marked) and int(marked.min()) < s:
        fail(f"{NAME}: the labels start before the response{where} (at the assistant header or earlier): label only the "
             "exact token span of the response's content")
    kept = labels != -100
    if kept.any() and not torch.equal(labels[kept], ids[kept]):
        fail(f"{NAME}: where the labels are not -100 they must equal input_ids{where}")
    fail(f"{NAME}: the labels{where} should be -100 outside the response's tokens {s}..{e - 1} and equal input_ids "
         f"on them; yours label positions {kept.nonzero().flatten().tolist()}")


@exercise("5.1", "training_example")
def test_training_example(training_example) -> None:
    """input_ids are the chat template's tokens; labels equal them on the response's exact span and are -100
    elsewhere, unshifted; on three chat templates."""
    require_implemented(training_example, NAME)
    cases = [("", tiny("tiny-qwen2")[1]),
             (" on a Llama-3-style template (a BOS token, a one-token end of turn)", tiny_variant("llama3")[1]),
             (" on tiny-gemma2's template", tiny("tiny-gemma2")[1])]
    for where, tokenizer in cases:
        for prompt, response in zip(PROMPTS[:3], RESPONSES[:3]):
            want_ids, want_labels, span = example(tokenizer, prompt, response)
            out = call(training_example, tokenizer, prompt, response, name=NAME)
            if not isinstance(out, tuple) or len(out) != 2:
                fail(f"{NAME} should return a tuple (input_ids, labels), got {type(out).__name__}")
            n = len(want_ids)
            ids = expect_tensor(out[0], Int[Tensor, "seq"], f"{NAME}'s input_ids")
            if len(ids) != n or not torch.equal(ids, want_ids):
                fail(f"{NAME}: input_ids differ from the chat template's rendering{where} of [user: prompt, assistant: "
                     f"response] ({n} tokens, yours {len(ids)}), tokenized with add_special_tokens=False (the template "
                     "writes its own special tokens)")
            labels = expect_tensor(out[1], Int[Tensor, "seq"], f"{NAME}'s labels", seq=n)
            if ids.dtype != torch.long or labels.dtype != torch.long:
                fail(f"{NAME}: input_ids and labels must be torch.long (the embedding and the loss need it), got "
                     f"{ids.dtype} and {labels.dtype}")
            if not torch.equal(labels, want_labels):
                _diagnose(ids, labels, want_ids, span, where)
    passed("test_training_example")


@exercise("5.1", "training_example")
def test_training_example_input_checks(training_example) -> None:
    """A prompt or response that is not a string, and an empty response, are rejected with ValueError."""
    require_implemented(training_example, NAME)
    tokenizer = tiny("tiny-qwen2")[1]
    for args, what in [(("Hi", ""), "an empty response"), (("Hi", "   "), "a response of spaces only"),
                       ((None, "Hello."), "a prompt that is None"), (("Hi", ["Hello."]), "a response that is a list")]:
        expect_value_error(training_example, tokenizer, *args, name=NAME, what=what)
    passed("test_training_example_input_checks")
