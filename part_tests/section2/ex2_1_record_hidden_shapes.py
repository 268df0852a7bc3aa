"""Exercise 2.1 — What a hook sees: prefill and the KV cache

Tests of `record_hidden_shapes`: `test_record_hidden_shapes`.
"""

from __future__ import annotations

import torch

from part_tests._common import (
    call,
    check,
    exercise,
    fail,
    friendly_tests,
    model_or_tiny,
    no_hooks_left,
    passed,
    require_implemented,
)
from part_tests.section2._fakes import (
    BOS_WHERE,
    _bos_adding_tokenizer,
    _check_hooked_blocks,
    _check_hooks_after_exception,
    _d_model,
    _spy_hook_registrations,
)
from part_tests.properties import braces_text, for_all, st
from utils.chat import build_messages, format_prompt
from utils.hooks import get_blocks
from utils.models import input_device


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _greedy_forwards(model, tokenizer, prompt: str, max_new: int) -> tuple[int, int]:
    """(prompt length T, number of forward passes) of greedy generation with the KV cache."""
    enc = tokenizer(format_prompt(build_messages(None, prompt), tokenizer), add_special_tokens=False, return_tensors="pt")
    T = enc["input_ids"].shape[1]
    enc = {k: v.to(input_device(model)) for k, v in enc.items()}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=_pad_id(tokenizer))
    return T, out.shape[1] - T


@exercise("2.1", "record_hidden_shapes")
def test_record_hidden_shapes(record_hidden_shapes, model=None, tokenizer=None) -> None:
    require_implemented(record_hidden_shapes, "record_hidden_shapes")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    default_new = 5
    runs = [(min(1, n_blocks - 1), default_new), (n_blocks - 1, 3)]  # every argument changes the result
    for (layer, max_new), prompt in zip(runs, ["Tell me a short story about the sea.", "  Tell me {one} story.\n"]):
        T, n_forwards = _greedy_forwards(model, tokenizer, prompt, max_new)
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
        if shapes[0][1] != T and shapes[0][1] == _greedy_forwards(model, tokenizer, prompt.strip(), 1)[0]:
            fail(f"for the prompt {prompt!r} the prefill saw {shapes[0][1]} tokens, as for the stripped prompt, but the "
                 f"formatted prompt has {T}: pass the prompt to build_messages exactly as given (no .strip(), no other "
                 "edits); the chat template takes it as it is")
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
        if len(shapes) != n_forwards:
            if len(shapes) == 1:
                fail(f"recorded only the prefill's shape, but greedy generation of up to {max_new} tokens runs {n_forwards} "
                     "forward passes here (one per generated token): record a shape at every forward pass")
            if max_new != default_new and len(shapes) == _greedy_forwards(model, tokenizer, prompt, default_new)[1]:
                fail(f"with max_new_tokens={max_new} record_hidden_shapes recorded {len(shapes)} shapes, as many as with "
                     f"the default {default_new}: the max_new_tokens argument was ignored (pass it to generate)")
            fail(f"recorded {len(shapes)} shapes, but greedy generation of up to {max_new} tokens runs {n_forwards} forward "
                 "passes here (one per generated token): record once per forward, generate greedily with max_new_tokens")
    bos = _bos_adding_tokenizer()
    if bos is not None:  # a chat template that starts with <bos>, and a tokenizer that would add another
        g_model, g_tok = bos
        T_g, _ = _greedy_forwards(g_model, g_tok, prompt, 2)
        g_shapes = call(record_hidden_shapes, g_model, g_tok, prompt, 1, 2, name="record_hidden_shapes")
        no_hooks_left(g_model, "record_hidden_shapes")
        first = tuple(int(x) for x in g_shapes[0]) if g_shapes else ()
        if len(first) == 3 and first[1] == T_g + 1:
            fail(f"with a tokenizer that prepends <bos> itself (as Gemma 2's and Llama 3's do) the prefill saw {first[1]} "
                 f"tokens, one more than the formatted prompt's {T_g}: the chat template already starts with <bos>, and "
                 "tokenizer(text) adds a second one. Tokenise with add_special_tokens=False")
        check(len(first) == 3 and first[1] == T_g, f"on tiny-gemma2{BOS_WHERE} the prefill shape is {first}, expected "
                                                   f"(1, {T_g}, d_model)")
    _check_hooks_after_exception(model, lambda: record_hidden_shapes(model, tokenizer, prompt, runs[0][0], 3),
                                 "record_hidden_shapes")

    # --- property: prompts with braces and with spaces or line breaks around them, 1 to 3 new tokens
    def check_prompt(case) -> None:
        pre, text, post, max_new = case
        p = pre + text + post
        T_p, n_p = _greedy_forwards(model, tokenizer, p, max_new)
        got = call(record_hidden_shapes, model, tokenizer, p, runs[0][0], max_new, name="record_hidden_shapes")
        no_hooks_left(model, "record_hidden_shapes")
        got = [tuple(int(x) for x in s) for s in got]
        want = [(1, T_p, d)] + [(1, 1, d)] * (n_p - 1)
        if got and len(got[0]) == 3 and got[0][1] != T_p:
            fail(f"for the prompt {p!r} the prefill saw {got[0][1]} tokens, but the formatted prompt has {T_p}: pass the "
                 "prompt to build_messages exactly as given (no .strip(), no other edits); the chat template takes it "
                 "as it is")
        check(got == want, f"for the prompt {p!r} and max_new_tokens={max_new} expected the shapes {want}, got {got}")

    space = st.sampled_from(["", " ", "\n", "  \n"])
    for_all(st.tuples(space, braces_text(), space, st.integers(1, 3)), check_prompt, name="record_hidden_shapes", examples=5)
    passed("test_record_hidden_shapes", f"prefill {shapes[0]}, then {len(shapes) - 1} x {(1, 1, d)}")


friendly_tests(globals())
