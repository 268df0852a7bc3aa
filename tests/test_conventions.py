"""The course's conventions (layers, response spans, projection, steering, capping), stated once in utils
and tested here."""

from __future__ import annotations

import pytest
import torch

from part_tests._common import tiny
from utils import config
from utils.activations import conversations_from, response_mean_activations, turn_mean_activations
from utils.chat import ChatTemplateError, assistant_turn_spans, format_chat, normalize_messages, supports_system_role
from utils.hooks import count_hooks, get_blocks, hidden_of, hooks, with_hidden

FAMILIES = ["tiny-qwen2", "tiny-gemma2"]
CHAT = [
    {"role": "system", "content": "You are a ghost haunting a lighthouse."},
    {"role": "user", "content": "Who are you, really?"},
    {"role": "assistant", "content": "I am the keeper who never left. The lamp still turns for me, 1873 nights and counting!"},
]


@pytest.mark.parametrize("name", FAMILIES)
def test_response_span_decodes_to_the_response(name):
    _, tok = tiny(name)
    fc = format_chat(CHAT, tok)
    s, e = fc.token_span
    assert tok.decode(fc.input_ids[s:e]) == CHAT[-1]["content"]
    assert fc.input_ids == tok(fc.text, add_special_tokens=False)["input_ids"]


def test_system_role_is_merged_where_the_template_has_none():
    _, gemma = tiny("tiny-gemma2")
    _, qwen = tiny("tiny-qwen2")
    assert supports_system_role(qwen) and not supports_system_role(gemma)
    merged = normalize_messages(CHAT, gemma)
    assert merged[0]["role"] == "user" and merged[0]["content"].startswith(CHAT[0]["content"])
    assert CHAT[0]["content"] in format_chat(CHAT, gemma).text
    assert format_chat(CHAT, gemma).text.count("<bos>") == 1


def test_missing_chat_template_is_a_clear_error():
    _, tok = tiny("tiny-qwen2")
    saved = tok.chat_template
    try:
        tok.chat_template = None
        with pytest.raises(ChatTemplateError, match="no chat template"):
            format_chat(CHAT, tok)
    finally:
        tok.chat_template = saved


def test_bad_messages_are_clear_errors():
    _, tok = tiny("tiny-qwen2")
    with pytest.raises(ValueError, match="role"):
        format_chat([{"role": "robot", "content": "x"}], tok)
    with pytest.raises(ValueError, match="last message"):
        format_chat(CHAT[:2], tok)
    with pytest.raises(ValueError, match="same length"):
        conversations_from(["a"], ["q1", "q2"], ["r1", "r2"])


@pytest.mark.parametrize("name", FAMILIES)
def test_layer_L_is_the_output_of_block_L(name):
    model, tok = tiny(name)
    fc = format_chat(CHAT, tok)
    s, e = fc.token_span
    with torch.no_grad():
        hs = model(torch.tensor([fc.input_ids]), output_hidden_states=True).hidden_states
    acts = response_mean_activations(model, tok, [CHAT])
    n = len(get_blocks(model))
    assert acts.shape == (1, n, model.config.hidden_size)
    for layer in range(n - 1):  # hidden_states[-1] has the final norm applied
        assert torch.allclose(acts[0, layer], hs[layer + 1][0, s:e].mean(0), atol=1e-5)
    assert not torch.allclose(acts[0, n - 1], hs[n][0, s:e].mean(0), atol=1e-3)
    assert count_hooks(model) == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_extraction_equals_one_at_a_time(name):
    model, tok = tiny(name)
    convs = conversations_from(["You are a bard.", "", "You are an analyst."], ["Sing!", "Hi", "Numbers?"],
                               ["La la la, the river sings.", "Hello.", "Revenue rose 12 percent in the third quarter."])
    batched = response_mean_activations(model, tok, convs, layers=[1, 2])
    single = torch.cat([response_mean_activations(model, tok, [c], layers=[1, 2]) for c in convs])
    assert torch.allclose(batched, single, atol=1e-5)


def test_turn_means_use_one_span_per_assistant_turn():
    model, tok = tiny("tiny-qwen2")
    msgs = CHAT[1:] + [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then the fog came."}]
    text, spans, ids = assistant_turn_spans(msgs, tok)
    assert [tok.decode(ids[s:e]) for s, e in spans] == [msgs[1]["content"], msgs[3]["content"]]
    means = turn_mean_activations(model, tok, msgs, layer=2)
    assert len(means) == 2 and means[0].shape == (model.config.hidden_size,)


@pytest.mark.parametrize("kind", ["qwen3", "llama3"])
def test_turn_spans_on_templates_that_open_earlier_turns_differently(kind):
    """Qwen3-style templates give the final assistant turn (and the generation prompt) an empty think
    block that earlier turns lack; every span still decodes back to its content."""
    from part_tests._common import tiny_variant

    _, tok = tiny_variant(kind)
    msgs = CHAT[1:] + [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then the fog came."}]
    _, spans, ids = assistant_turn_spans(msgs, tok)
    assert [tok.decode(ids[s:e]) for s, e in spans] == [msgs[1]["content"], msgs[3]["content"]]


def test_hooks_accept_tensor_and_tuple_outputs_and_are_removed_on_error():
    h = torch.randn(2, 3, 4)
    assert hidden_of(h) is h and hidden_of((h, "cache")) is h
    assert with_hidden(h, h + 1).shape == h.shape
    out = with_hidden((h, "cache"), h + 1)
    assert isinstance(out, tuple) and out[1] == "cache"
    model, tok = tiny("tiny-qwen2")
    with pytest.raises(RuntimeError):
        with hooks(model, {1: lambda m, a, o: o}):
            assert count_hooks(model) == 1
            raise RuntimeError("boom")
    assert count_hooks(model) == 0
    with pytest.raises(IndexError, match="0-based"):
        with hooks(model, {len(get_blocks(model)): lambda m, a, o: o}):
            pass


def test_tiny_mode_is_automatic_under_nbgrader(monkeypatch):
    monkeypatch.delenv("PERSONA_COURSE_MODEL", raising=False)
    monkeypatch.delenv("PERSONA_COURSE_TINY", raising=False)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert config.is_tiny() and config.model_name_for_section(1) == "tiny-gemma2"
    assert config.model_name_for_section(3) == "tiny-qwen2"
    monkeypatch.delenv("NBGRADER_EXECUTION")
    monkeypatch.setenv("PERSONA_COURSE_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    assert not config.is_tiny() and config.model_name_for_section(2) == "Qwen/Qwen2.5-0.5B-Instruct"
    monkeypatch.setenv("PERSONA_COURSE_MODEL", "paper")
    assert config.model_name_for_section(1) == "google/gemma-2-27b-it"
    with pytest.raises(ValueError, match="unknown section"):
        config.model_name_for_section(7)


def test_toy_world_is_opt_in_and_never_graded(monkeypatch):
    from utils.judge import get_judge

    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.delenv("PERSONA_COURSE_TINY", raising=False)
    monkeypatch.setenv("PERSONA_COURSE_MODEL", "toy")
    assert config.is_toy() and config.is_tiny()
    assert {config.model_name_for_section(s) for s in (1, 2, 3, 4)} == {"toy-qwen2"}
    assert "toy-world judge" in get_judge().label and "not an LLM" in get_judge().label
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # grading always runs the random tiny models
    assert not config.is_toy() and config.model_name_for_section(1) == "tiny-gemma2"
    assert "toy" not in get_judge().label
