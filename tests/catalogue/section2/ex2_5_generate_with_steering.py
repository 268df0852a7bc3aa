"""Exercise 2.5 — Steering along the axis

Wrong implementations of generate_with_steering that its tests must reject, and correct ones written another
way.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section2._shared import R
from utils.chat import build_messages
from utils.generation import generate
from utils.hooks import get_blocks, hidden_of, hooks, with_hidden


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


@mistake("test_generate_with_steering", "as given")
def steer_normalised(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    v = vector / vector.norm()
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * v), layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "changed the vector it was given")
def steer_normalises_in_place(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64,
                              temperature=0.0):
    vector /= vector.norm()  # the caller's tensor: the test's expected change is then alpha * unit vector too
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer,
                  system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "off by one")
def steer_next_block(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer,
                  system_prompt, max_new_tokens, hook_layer=layer + 1, temperature=temperature)


@mistake("test_generate_with_steering", "in place")
def steer_in_place(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        hidden_of(o).add_(alpha * vector)
        return o

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "decode step")
def steer_prefill_only(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        h = hidden_of(o)
        return o if h.shape[1] == 1 else with_hidden(o, h + alpha * vector)

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "only the last position")
def steer_last_position(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        h = hidden_of(o)
        delta = torch.zeros_like(h)
        delta[:, -1] = alpha * vector
        return with_hidden(o, h + delta)

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "after an exception")
def steer_no_finally(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer,
                  system_prompt, max_new_tokens, use_finally=False, temperature=temperature)


@mistake("test_generate_with_steering", "batch row 0")
def steer_tuple_assumed(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: (o[0] + alpha * vector, *o[1:]), layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "container")
def steer_returns_tensor(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: hidden_of(o) + alpha * vector, layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "system_prompt")
def steer_ignores_system(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vector), layer, None, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "RETURN the new output")
def steer_hook_returns_nothing(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    def hook(m, a, o):
        h = hidden_of(o) + alpha * vector  # computed, but never returned
        del h

    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "temperature argument was ignored")
def steer_ignores_temperature(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, _add(alpha, vector), layer, system_prompt, max_new_tokens)


@mistake("test_generate_with_steering", "max_new_tokens argument was ignored")
def steer_ignores_max_new_tokens(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    return _steer(model, tokenizer, prompt, _add(alpha, vector), layer, system_prompt, 64, temperature=temperature)


@mistake("test_generate_with_steering", "alpha argument was ignored")
def steer_ignores_alpha(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    hook = _add(1.0, vector) if alpha else (lambda m, a, o: o)  # "alpha = 0 means off", otherwise the vector as it is
    return _steer(model, tokenizer, prompt, hook, layer, system_prompt, max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "float32 hidden state into a bfloat16 model")
def steer_upcasts(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    vec = vector.float()
    return _steer(model, tokenizer, prompt, lambda m, a, o: with_hidden(o, hidden_of(o) + alpha * vec), layer,
                  system_prompt, max_new_tokens, temperature=temperature)


# correct alternatives


@correct("test_generate_with_steering")
def steer_alt_hooks_context(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    """utils.hooks.hooks removes the hook on the way out, exception or not; the tuple case handled by hand."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + (alpha * vector).to(output[0].dtype), *output[1:])
        return output + (alpha * vector).to(device=output.device, dtype=output.dtype)

    with hooks(model, {layer: hook}):
        return generate(model, tokenizer, [build_messages(system_prompt, prompt)], max_new_tokens=max_new_tokens,
                        temperature=temperature)[0]


@correct("test_generate_with_steering")
def steer_alt_exit_stack(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    with ExitStack() as stack:
        handle = get_blocks(model)[layer].register_forward_hook(_add(alpha, vector))
        stack.callback(handle.remove)
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return generate(model, tokenizer, [messages], max_new_tokens=max_new_tokens, temperature=temperature)[0]


# wrong ones found by the property-based inputs


@mistake("test_generate_with_steering", "int(alpha)")
def steer_int_alpha(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    """Rounds alpha to a whole number (as for the layer): every whole alpha in the examples still works."""
    return R.generate_with_steering(model, tokenizer, prompt, vector, layer, int(alpha), system_prompt=system_prompt,
                                    max_new_tokens=max_new_tokens, temperature=temperature)


@mistake("test_generate_with_steering", "absolute value")
def steer_abs_alpha(model, tokenizer, prompt, vector, layer, alpha, system_prompt=None, max_new_tokens=64, temperature=0.0):
    """Takes the size of alpha (abs), thinking of it as a strength."""
    return R.generate_with_steering(model, tokenizer, prompt, vector, layer, abs(alpha), system_prompt=system_prompt,
                                    max_new_tokens=max_new_tokens, temperature=temperature)
