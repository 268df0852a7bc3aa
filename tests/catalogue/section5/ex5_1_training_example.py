"""Exercise 5.1 — A training example with the loss on the response: wrong and correct implementations."""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from utils.chat import build_messages, format_chat, render


def _checked(prompt, response):
    if not isinstance(prompt, str) or not isinstance(response, str) or not response.strip():
        raise ValueError("bad input")


def _base(tokenizer, prompt, response):
    _checked(prompt, response)
    chat = format_chat(build_messages(None, prompt, response), tokenizer)
    ids = torch.tensor(chat.input_ids)
    return ids, chat.token_span


@mistake("test_training_example", "prompt tokens")
def loss_on_prompt(tokenizer, prompt, response):
    ids, _ = _base(tokenizer, prompt, response)
    return ids, ids.clone()


@mistake("test_training_example", "shift")
def shifted_by_hand(tokenizer, prompt, response):
    ids, (s, e) = _base(tokenizer, prompt, response)
    labels = torch.full_like(ids, -100)
    labels[s - 1:e - 1] = ids[s:e]  # "the logits at t predict t + 1": but the model shifts itself
    return ids, labels


@mistake("test_training_example", "past the response")
def through_end_of_turn(tokenizer, prompt, response):
    ids, (s, e) = _base(tokenizer, prompt, response)
    labels = torch.full_like(ids, -100)
    labels[s:] = ids[s:]
    return ids, labels


@mistake("test_training_example", "before the response")
def from_prefix_length(tokenizer, prompt, response):
    """Labels from the end of the user turn (without the generation prompt's assistant header)."""
    ids, (s, e) = _base(tokenizer, prompt, response)
    n_user = len(tokenizer(render(tokenizer, build_messages(None, prompt)), add_special_tokens=False)["input_ids"])
    labels = torch.full_like(ids, -100)
    labels[n_user:e] = ids[n_user:e]
    return ids, labels


@mistake("test_training_example", "integer")
def float_labels(tokenizer, prompt, response):
    ids, (s, e) = _base(tokenizer, prompt, response)
    labels = torch.full_like(ids, -100)
    labels[s:e] = ids[s:e]
    return ids, labels.float()


@mistake("test_training_example", "input_ids differ")
def without_template(tokenizer, prompt, response):
    _checked(prompt, response)
    ids = torch.tensor(tokenizer(prompt + response, add_special_tokens=False)["input_ids"])
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    labels = torch.full_like(ids, -100)
    labels[n:] = ids[n:]
    return ids, labels


@mistake("test_training_example_input_checks", "ValueError")
def no_checks(tokenizer, prompt, response):
    chat = format_chat(build_messages(None, str(prompt), str(response)), tokenizer)
    ids = torch.tensor(chat.input_ids)
    labels = torch.full_like(ids, -100)
    s, e = chat.token_span
    labels[s:e] = ids[s:e]
    return ids, labels


@correct("test_training_example", "test_training_example_input_checks")
def masked_with_where(tokenizer, prompt, response):
    ids, (s, e) = _base(tokenizer, prompt, response)
    positions = torch.arange(len(ids))
    inside = (positions >= s) & (positions < e)
    return ids, torch.where(inside, ids, torch.full_like(ids, -100))
