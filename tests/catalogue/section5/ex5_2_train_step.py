"""Exercise 5.2 — A LoRA training step with preventative steering: wrong and correct implementations."""

from __future__ import annotations

import math
from contextlib import ExitStack

import torch

from tests.catalogue import correct, mistake
from utils.hooks import get_blocks, hidden_of, with_hidden


def _step(model, batch, optimizer, vector=None, layer=None, coeff=0.0, *, sign=1.0, layer_shift=0, fixed_layer=None,
          keep_hook=False, hook_after=False, zero_grad=True, step=True, manual_unshifted=False, loss_after=False,
          check=True, unfreeze=False):
    if check:
        if not math.isfinite(float(coeff)):
            raise ValueError("coeff")
        if vector is not None:
            if layer is None:
                raise ValueError("layer")
            if tuple(torch.as_tensor(vector).shape) != (model.config.get_text_config().hidden_size,):
                raise ValueError("shape")
    if unfreeze:
        for p in model.parameters():
            p.requires_grad_(True)
        optimizer.add_param_group({"params": [p for n, p in model.named_parameters() if "lora" not in n]})
    handle = None

    def hook(m, a, out):
        h = hidden_of(out)
        return with_hidden(out, h + (sign * coeff * vector).to(h.dtype))

    def attach():
        at = fixed_layer if fixed_layer is not None else layer + layer_shift
        return get_blocks(model)[at].register_forward_hook(hook)

    if vector is not None and coeff and not hook_after:
        handle = attach()
    model.train()
    try:
        if manual_unshifted:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        else:
            loss = model(**batch).loss
        loss.backward()
        if step:
            optimizer.step()
        if zero_grad:
            optimizer.zero_grad()
        if loss_after:
            with torch.no_grad():
                loss = model(**batch).loss
    finally:
        if handle is not None and not keep_hook:
            handle.remove()
    if vector is not None and coeff and hook_after:
        attach()  # "for the evaluation": the hook is on afterwards, not during training
    return float(loss.detach())


@mistake("test_train_step", "sign")
def flipped_sign(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, sign=-1.0)


@mistake("test_train_step", "left")
def hook_left_on(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, keep_hook=True)


@mistake("test_train_step", "left")
def hook_only_after(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    """The hook is off during training and put on after the step (as if for evaluation)."""
    return _step(model, batch, optimizer, vector, layer, coeff, hook_after=True)


@mistake("test_train_step", "not active during the training forward")
def never_steers(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer)


@mistake("test_train_step", "layer` is ignored")
def notebook_layer(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, fixed_layer=2)


@mistake("test_train_step", "layer + 1")
def hidden_states_index(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, layer_shift=1)


@mistake("test_train_step", "zero_grad")
def no_zero_grad(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, zero_grad=False)


@mistake("test_train_step", "optimizer.step")
def no_step(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, step=False)


@mistake("test_train_step", "logits at t with the label at t")
def unshifted_manual_loss(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, manual_unshifted=True)


@mistake("test_train_step", "after the update")
def loss_after_step(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, loss_after=True)


@mistake("test_train_step", "frozen base")
def trains_the_base(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    return _step(model, batch, optimizer, vector, layer, coeff, unfreeze=True)


@mistake("test_train_step", "float")
def returns_tensor(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    _step(model, batch, optimizer, vector, layer, coeff)
    return torch.tensor(0.0)


@mistake("test_train_step", "left")
def hook_not_removed_on_error(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    """Removes its hook after the step, but not in a `finally`: a failing forward leaves it on."""
    handle = None
    if vector is not None and coeff:
        add = coeff * vector
        handle = get_blocks(model)[layer].register_forward_hook(lambda m, a, o: with_hidden(o, hidden_of(o) + add))
    model.train()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if handle is not None:
        handle.remove()
    return float(loss.detach())


@mistake("test_train_step_input_checks", "ValueError")
def no_input_checks(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    if vector is not None and (layer is None or tuple(vector.shape) != (model.config.get_text_config().hidden_size,)):
        vector, coeff = None, 0.0
    return _step(model, batch, optimizer, vector, layer, coeff if math.isfinite(coeff) else 0.0, check=False)


@correct("test_train_step", "test_train_step_input_checks")
def with_exit_stack(model, batch, optimizer, vector=None, layer=None, coeff=0.0):
    if not math.isfinite(float(coeff)):
        raise ValueError("coeff")
    if vector is not None and (layer is None or tuple(vector.shape) != (model.config.get_text_config().hidden_size,)):
        raise ValueError("vector or layer")
    with ExitStack() as stack:
        if vector is not None and coeff:
            handle = get_blocks(model)[layer].register_forward_pre_hook(lambda m, a: None)  # a no-op pre-hook, removed too
            stack.callback(handle.remove)
            add = coeff * vector
            h2 = get_blocks(model)[layer].register_forward_hook(lambda m, a, o: with_hidden(o, hidden_of(o) + add.to(hidden_of(o).dtype)))
            stack.callback(h2.remove)
        model.train()
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()
