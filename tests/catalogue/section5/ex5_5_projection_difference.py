"""Exercise 5.5 — Flagging data before training: the projection difference: wrong and correct implementations."""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from utils.activations import conversations_from, response_mean_activations
from utils.chat import build_messages, format_chat


def _checked(model, prompts, train, base, vector):
    if not (len(prompts) == len(train) == len(base)):
        raise ValueError("lengths")
    v = torch.as_tensor(vector).float()
    if v.shape != (model.config.get_text_config().hidden_size,) or not bool(v.any()):
        raise ValueError("vector")
    return v


def _proj(model, tokenizer, prompts, responses, v, layer):
    acts = response_mean_activations(model, tokenizer, conversations_from([None] * len(prompts), prompts, responses),
                                     layers=[layer])[:, 0]
    return acts @ (v / v.norm())


@mistake("test_projection_difference", "base model's answer")
def train_twice(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    v = _checked(model, prompts, train_responses, base_responses, vector)
    return _proj(model, tokenizer, prompts, train_responses, v, layer) - _proj(model, tokenizer, prompts, train_responses, v, layer)


@mistake("test_projection_difference", "sign")
def base_minus_train(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    v = _checked(model, prompts, train_responses, base_responses, vector)
    return _proj(model, tokenizer, prompts, base_responses, v, layer) - _proj(model, tokenizer, prompts, train_responses, v, layer)


@mistake("test_projection_difference", "raw vector")
def unnormalised(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    v = _checked(model, prompts, train_responses, base_responses, vector)
    return (_proj(model, tokenizer, prompts, train_responses, v, layer)
            - _proj(model, tokenizer, prompts, base_responses, v, layer)) * v.norm()


@mistake("test_projection_difference", "wrong layer")
def hidden_states_layer(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    v = _checked(model, prompts, train_responses, base_responses, vector)
    return _proj(model, tokenizer, prompts, train_responses, v, layer - 1) - _proj(model, tokenizer, prompts, base_responses, v, layer - 1)


@mistake("test_projection_difference", "layer` is ignored")
def notebook_layer(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    v = _checked(model, prompts, train_responses, base_responses, vector)
    return _proj(model, tokenizer, prompts, train_responses, v, 2) - _proj(model, tokenizer, prompts, base_responses, v, 2)


@mistake("test_projection_difference", "prompt tokens included")
def whole_chat(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    v = _checked(model, prompts, train_responses, base_responses, vector)
    u = v / v.norm()

    def proj(responses):
        rows = []
        for p, r in zip(prompts, responses):
            ids = format_chat(build_messages(None, p, r), tokenizer).input_ids
            with torch.no_grad():
                h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]
            rows.append(h.float().mean(0) @ u)
        return torch.stack(rows)

    return proj(train_responses) - proj(base_responses)


@mistake("test_projection_difference_input_checks", "ValueError")
def no_checks(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    n = min(len(prompts), len(train_responses), len(base_responses))
    v = torch.as_tensor(vector).float()[:model.config.get_text_config().hidden_size]
    v = v if bool(v.any()) else torch.ones_like(v)
    return (_proj(model, tokenizer, prompts[:n], train_responses[:n], v, layer)
            - _proj(model, tokenizer, prompts[:n], base_responses[:n], v, layer))


@correct("test_projection_difference", "test_projection_difference_input_checks")
def two_calls(model, tokenizer, prompts, train_responses, base_responses, vector, layer):
    v = _checked(model, prompts, train_responses, base_responses, vector)
    return _proj(model, tokenizer, prompts, train_responses, v, layer) - _proj(model, tokenizer, prompts, base_responses, v, layer)
