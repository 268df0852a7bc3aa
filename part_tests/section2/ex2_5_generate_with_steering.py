"""Exercise 2.5 — Steering along the axis

Tests of `generate_with_steering`: `test_generate_with_steering`.
"""

from __future__ import annotations

import torch

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
)
from part_tests.section2._fakes import (
    _Boom,
    _check_hooked_blocks,
    _d_model,
    _observe_block,
    _raise_in_forward,
    _random_vector,
    _spy_hook_registrations,
    _tuple_outputs,
)
from part_tests.properties import braces_text, coefficients, for_all, st
from utils.chat import build_messages
from utils.generation import generate
from utils.hooks import count_hooks, get_blocks


def _steer_or_explain(generate_with_steering, model, *args, **kwargs):
    """Call the student's function; an exception other than a test failure becomes a named failure."""
    try:
        return call(generate_with_steering, model, *args, name="generate_with_steering", **kwargs)
    except AssertionError:
        raise
    except Exception as err:
        remove_leftover_hooks(model)
        if "dtype" in str(err).lower() and next(model.parameters()).dtype != torch.float32:
            fail(f"on a bfloat16 model generate_with_steering failed ({type(err).__name__}: {str(err)[:120]}): the hook "
                 "returned a float32 hidden state into a bfloat16 model. Cast the vector to the hidden state's dtype "
                 "and device (vec.to(device=h.device, dtype=h.dtype)) before adding it")
        fail(f"generate_with_steering raised {err!r}. Block outputs are a plain tensor in transformers >= 5: "
             "`output[0]` on a tensor is batch row 0, not the hidden state; use hidden_of(output) and "
             "with_hidden(output, new_hidden)")


def _check_steering_deltas(obs, want_delta, vec, alpha, layer, atol=1e-3) -> None:
    """Every forward pass of block `layer` must have added `want_delta` at every position."""
    for ref, clone in zip(obs["refs"], obs["before"]):
        if not torch.equal(ref.detach().float().cpu(), clone):
            fail("generate_with_steering modified block's output in place (e.g. `h += ...` or `h[:] = ...`): "
                 "return a new tensor, h + alpha * vector")
    check(len(obs["after"]) == len(obs["before"]) and obs["after"], "could not observe the forward passes of generation")
    for i, (b, a) in enumerate(zip(obs["before"], obs["after"])):
        delta = a.float() - b.float()  # [B, T, d]
        if close(delta, want_delta.expand_as(delta), rtol=1e-2, atol=atol):
            continue
        if close(delta, (alpha * vec / vec.norm()).float().expand_as(delta), rtol=1e-2, atol=atol):
            fail("the hook added alpha * vector / ||vector||: add alpha * vector as given (normalise outside if you want a unit vector)")
        if alpha != 1 and close(delta, vec.float().expand_as(delta), rtol=1e-2, atol=atol):
            fail(f"the hook added the vector itself, not alpha * vector (alpha = {alpha}): the alpha argument was ignored")
        if float(delta.abs().max()) < 1e-6:
            if i == 0:
                fail(f"block {layer}'s output reached block {layer + 1} unchanged: register the hook on "
                     f"get_blocks(model)[{layer}] and RETURN the new output from the hook")
            fail(f"forward pass {i} (a decode step with one new token) was not steered: add alpha * vector at every "
                 "position of every forward pass, not only during the prefill")
        if delta.shape[1] > 1 and close(delta[:, -1], want_delta.expand_as(delta[:, -1]), rtol=1e-2, atol=atol):
            fail("only the last position was steered during the prefill: add alpha * vector at every position")
        fail(f"in forward pass {i} the change to block {layer}'s output is not alpha * vector at every position "
             f"(max deviation {float((delta - want_delta).abs().max()):.3g})")


@exercise("2.5", "generate_with_steering")
def test_generate_with_steering(generate_with_steering, model=None, tokenizer=None) -> None:
    require_implemented(generate_with_steering, "generate_with_steering")
    model, tokenizer = model_or_tiny(model, tokenizer)
    d = _d_model(model)
    n_blocks = len(get_blocks(model))
    check(n_blocks >= 3, "this test needs a model with at least 3 blocks")
    layer = 1
    prompt, system = "Describe the ocean at night.", "You are a pirate."
    vec = _random_vector(d, 3.0, seed=5)
    alpha = 10.0
    n_new = 8

    # alpha = 0 is plain greedy generation
    plain = generate(model, tokenizer, [build_messages(system, prompt)], max_new_tokens=n_new)[0]
    vec_given = vec.clone()
    with _spy_hook_registrations(model) as seen:
        out0 = _steer_or_explain(generate_with_steering, model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system,
                                 max_new_tokens=n_new)
    no_hooks_left(model, "generate_with_steering")
    if not torch.equal(vec, vec_given):
        fail("generate_with_steering changed the vector it was given (normalised or scaled it in place, e.g. "
             "vector /= vector.norm() or vector.mul_(alpha)): add alpha * vector as given, computed as a new tensor, and "
             "leave the caller's tensor as it was")
    check(isinstance(out0, str), f"generate_with_steering should return the reply text (str), got {type(out0).__name__}")
    if out0 != plain:
        if out0 == generate(model, tokenizer, [build_messages(None, prompt)], max_new_tokens=n_new)[0]:
            fail("the system_prompt was ignored: build the messages with build_messages(system_prompt, prompt)")
        longer = generate(model, tokenizer, [build_messages(system, prompt)], max_new_tokens=64)[0]
        if out0 == longer and longer != plain:
            fail(f"with max_new_tokens={n_new} the reply has as many tokens as with the default 64: the max_new_tokens "
                 "argument was ignored (pass it on to generate)")
        fail(f"with alpha = 0 the reply should equal plain greedy generation ({plain!r}), got {out0!r}: generate with "
             "utils.generation.generate(model, tokenizer, [messages], max_new_tokens=...) and return its text")
    _check_hooked_blocks(seen, {layer}, "generate_with_steering")

    # what the hook does: alpha * vector at every position of every forward, as a new tensor
    with _observe_block(model, layer) as obs, _spy_hook_registrations(model) as seen:
        _steer_or_explain(generate_with_steering, model, tokenizer, prompt, vec, layer, alpha, system_prompt=system,
                          max_new_tokens=n_new)
    no_hooks_left(model, "generate_with_steering")
    _check_hooked_blocks(seen, {layer}, "generate_with_steering")
    _check_steering_deltas(obs, (alpha * vec).float(), vec, alpha, layer)

    # temperature is passed on: sampling at temperature 1 from a random model does not give the greedy reply
    torch.manual_seed(2024)
    sampled = [_steer_or_explain(generate_with_steering, model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system,
                                 max_new_tokens=n_new, temperature=1.0) for _ in range(2)]
    no_hooks_left(model, "generate_with_steering")
    if all(s == plain for s in sampled):
        fail(f"with temperature=1.0 generate_with_steering returned the greedy reply twice ({plain!r}): the temperature "
             "argument was ignored (pass temperature=temperature to generate)")

    # tuple outputs
    with _tuple_outputs(model, layer) as received:
        try:
            out_t = call(generate_with_steering, model, tokenizer, prompt, vec, layer, 0.0, system_prompt=system, max_new_tokens=n_new)
        except NotImplementedError as err:
            raise NotImplementedYet("generate_with_steering: not implemented yet") from err
        except Exception as err:
            remove_leftover_hooks(model)
            fail(f"generate_with_steering fails when a block returns a tuple ({err!r}): take the hidden state with "
                 "hidden_of(output) and return with_hidden(output, new_hidden)")
    no_hooks_left(model, "generate_with_steering")
    if any(t is not tuple for t in received):
        fail("the hook returned a tensor where the block had returned a tuple: return the container you received "
             "(with_hidden(output, new_hidden))")
    check(out_t == plain, "with tuple block outputs and alpha = 0 the reply changed: return the tuple with its hidden state replaced")

    # an exception during generation leaves no hook
    before = count_hooks(model)
    with _raise_in_forward(model, block=layer + 1):
        try:
            generate_with_steering(model, tokenizer, prompt, vec, layer, alpha, max_new_tokens=n_new)
        except _Boom:
            pass
        leftover = count_hooks(model) - before - 1
    if leftover > 0:
        remove_leftover_hooks(model)
        fail(f"generate_with_steering left {leftover} hook(s) after an exception during generation: remove it in `finally:`")

    # half precision: the hook must hand the block's dtype on
    if model is tiny("tiny-qwen2")[0]:
        b_model, _ = tiny("tiny-qwen2", torch.bfloat16)
        remove_leftover_hooks(b_model)
        with _observe_block(b_model, layer) as obs_b:
            _steer_or_explain(generate_with_steering, b_model, tokenizer, prompt, vec, layer, alpha, max_new_tokens=3)
        no_hooks_left(b_model, "generate_with_steering")
        wrong = {str(t) for t in obs_b["after_dtype"] if t != torch.bfloat16}
        if wrong:
            fail(f"on a bfloat16 model the steered hidden state reached the next block as {', '.join(sorted(wrong))}: the hook "
                 "returned a float32 hidden state into a bfloat16 model. Cast the vector to the hidden state's dtype "
                 "(vec.to(device=h.device, dtype=h.dtype))")
        _check_steering_deltas(obs_b, (alpha * vec).float(), vec, alpha, layer, atol=0.15)

    # --- property: fractional and negative alphas, prompts with braces; one forward pass each (the prefill)
    def check_alpha(case) -> None:
        a, text = case
        with _observe_block(model, layer) as obs_a:
            _steer_or_explain(generate_with_steering, model, tokenizer, text, vec, layer, a, max_new_tokens=1)
        no_hooks_left(model, "generate_with_steering")
        check(obs_a["after"], "could not observe the forward passes of generation")
        delta = obs_a["after"][0].float() - obs_a["before"][0].float()
        want = (a * vec).float().expand_as(delta)
        if close(delta, want, rtol=1e-2, atol=1e-3):
            return
        if close(delta, (float(int(a)) * vec).float().expand_as(delta), rtol=1e-2, atol=1e-3):
            fail(f"with alpha = {a} the hook added {int(a)} * vector: alpha was rounded to a whole number (int(alpha)); "
                 "keep it a float, fractional and negative values included")
        if a < 0 and close(delta, (abs(a) * vec).float().expand_as(delta), rtol=1e-2, atol=1e-3):
            fail(f"with alpha = {a} the hook added {abs(a)} * vector: a negative alpha steers AGAINST the vector; do not "
                 "take its absolute value")
        fail(f"with alpha = {a} the change to block {layer}'s output is not alpha * vector at every position (max "
             f"deviation {float((delta - want).abs().max()):.3g})")

    for_all(st.tuples(coefficients(), braces_text()), check_alpha, name="generate_with_steering", examples=5)
    passed("test_generate_with_steering")


friendly_tests(globals())
