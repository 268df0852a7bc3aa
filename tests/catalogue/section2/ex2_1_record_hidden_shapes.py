"""Exercise 2.1 — What a hook sees: prefill and the KV cache

Wrong implementations of record_hidden_shapes that its tests must reject, and correct ones written another
way.
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section2._shared import ref
from utils.chat import build_messages, format_prompt
from utils.hooks import get_blocks, hidden_of, hooks


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


@mistake("test_record_hidden_shapes", "batch row 0")
def shapes_out0(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(o[0].shape))


@mistake("test_record_hidden_shapes", "KV cache")
def shapes_no_cache(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), use_cache=False)


@mistake("test_record_hidden_shapes", "off by one")
def shapes_next_block(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), hook_layer=layer + 1)


@mistake("test_record_hidden_shapes", "hook")
def shapes_hook_left(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), remove=False)


@mistake("test_record_hidden_shapes", "chat template")
def shapes_raw_prompt(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), text=prompt)


@mistake("test_record_hidden_shapes", "one per generated token")
def shapes_prefill_only(model, tokenizer, prompt, layer, max_new_tokens=5):
    return ref.record_hidden_shapes(model, tokenizer, prompt, layer, max_new_tokens)[:1]


@mistake("test_record_hidden_shapes", "after an exception")
def shapes_no_finally(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, max_new_tokens, lambda o: tuple(hidden_of(o).shape), use_finally=False)


@mistake("test_record_hidden_shapes", "max_new_tokens argument was ignored")
def shapes_ignores_max_new_tokens(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, layer, 5, lambda o: tuple(hidden_of(o).shape))


@mistake("test_record_hidden_shapes", "expected block(s) [3]")
def shapes_fixed_layer(model, tokenizer, prompt, layer, max_new_tokens=5):
    return _shapes_with(model, tokenizer, prompt, 1, max_new_tokens, lambda o: tuple(hidden_of(o).shape))


@mistake("test_record_hidden_shapes", "tokenizer(text) adds a second one")
def shapes_adds_special_tokens(model, tokenizer, prompt, layer, max_new_tokens=5):
    """tokenizer(text) with its default add_special_tokens=True: a second <bos> where the tokenizer adds one."""
    shapes = []
    enc = tokenizer(format_prompt(build_messages(None, prompt), tokenizer), return_tensors="pt")
    with hooks(model, {layer: lambda m, a, o: shapes.append(tuple(hidden_of(o).shape))}):
        model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return shapes


# correct alternatives


@correct("test_record_hidden_shapes")
def shapes_via_hidden_states(model, tokenizer, prompt, layer, max_new_tokens=5):
    """No hook: generate returns every forward pass's hidden states (hidden_states[layer + 1] is block layer)."""
    ids = tokenizer.apply_chat_template(build_messages(None, prompt), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, output_hidden_states=True,
                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    return [tuple(step[layer + 1].shape) for step in out.hidden_states]


@correct("test_record_hidden_shapes")
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


# wrong ones found by the property-based inputs


@mistake("test_record_hidden_shapes", "no .strip()")
def shapes_strips_prompt(model, tokenizer, prompt, layer, max_new_tokens=5):
    """Tidies the prompt first (prompt.strip()): the same for every prompt without spaces around it."""
    return ref.record_hidden_shapes(model, tokenizer, prompt.strip(), layer, max_new_tokens)
