"""Exercise 5.2 — A LoRA training step with preventative steering.

The expected step is computed here on an identical copy of a tiny LoRA model: the same batch, the
same SGD optimizer, a steering hook written here. Where the student's step differs, the test
computes what each likely mistake would have produced and names the one that matches.
"""

from __future__ import annotations

import copy

import numpy as np

import torch

from part_tests._common import call, check, exercise, expect_value_error, fail, hook_guard, passed, require_implemented
from part_tests.section5._fakes import TINY_LAYER, batch, d_model, frozen, lora_copy, trainable, vector

NAME = "train_step"
LR = 0.5


def _reference_step(model, b, vec, layer, coeff, *, manual_unshifted=False, steps=1, zero_grad=True, layer_offset=0):
    """What one (or `steps`) correct step(s) do, or a named mistake's version; returns the first loss and params."""
    from utils.hooks import get_blocks, hidden_of, with_hidden

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for _ in range(steps):
        handle = None
        if vec is not None and coeff:
            add = coeff * vec

            def hook(m, a, out):
                h = hidden_of(out)
                return with_hidden(out, h + add.to(h.dtype))

            handle = get_blocks(model)[layer + layer_offset].register_forward_hook(hook)
        try:
            model.train()
            if manual_unshifted:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=-100)
            else:
                loss = model(**b).loss
            loss.backward()
            opt.step()
            if zero_grad:
                opt.zero_grad()
        finally:
            if handle is not None:
                handle.remove()
        losses.append(float(loss.detach()))
    return losses, trainable(model)


def _same(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def _fresh(seed=0):
    model, tokenizer = lora_copy(seed)
    return model, tokenizer


@exercise("5.2", "train_step")
def test_train_step(train_step) -> None:
    """One SGD step on a tiny LoRA model equals the step computed here: the loss returned (before the step), the
    adapters updated, the steering hook on during the forward at block `layer` with the coefficient's sign, removed
    afterwards (also when the forward fails), and gradients zeroed between steps."""
    require_implemented(train_step, NAME)
    template, tokenizer = _fresh()
    b = batch(tokenizer)
    d = d_model(template)
    vec = vector(d, 3, 4.0)
    layer, coeff = 1, 2.0  # not the notebook's LAYER (2 on the tiny model): an ignored `layer` shows

    def expected(**kw):
        return _reference_step(copy.deepcopy(template), b, vec, layer, kw.pop("coeff", coeff), **kw)

    model = copy.deepcopy(template)
    base_before = frozen(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    with hook_guard(model, NAME):
        loss = call(train_step, model, b, opt, vec, layer, coeff, name=NAME)
    if not isinstance(loss, (float, np.floating)):
        fail(f"{NAME} should return the loss as a Python float (float(loss)), got {type(loss).__name__}")
    loss = float(loss)
    got = trainable(model)
    want_losses, want = expected()
    want_loss = want_losses[0]
    start = trainable(template)
    now = dict(model.named_parameters())
    if not all(torch.equal(now[k].detach(), v) for k, v in base_before.items()):
        fail(f"{NAME} changed the frozen base weights: only the LoRA adapters may train (do not unfreeze or merge)")
    if _same(got, start):
        fail(f"{NAME} did not update the LoRA parameters: call loss.backward() and then optimizer.step()")
    if not _same(got, want):
        for kw, cause in [(dict(coeff=-coeff), "the steering coefficient's sign is flipped: add +coeff * vector (toward the "
                                               "trait) during training"),
                          (dict(coeff=0.0), "the steering hook was not active during the training forward: register it "
                                            "on block `layer` before calling the model, remove it after the step"),
                          (dict(layer_offset=TINY_LAYER - layer), f"asked for block {layer}, the hook steered block "
                                                                  f"{TINY_LAYER} = layer + 1: `layer` is ignored (the "
                                                                  "notebook's LAYER?) or off by one; steer "
                                                                  "get_blocks(model)[layer]"),
                          (dict(layer_offset=-1), "the hook steered block layer - 1: steer get_blocks(model)[layer]"),
                          (dict(manual_unshifted=True), "the loss compares the logits at t with the label at t: the "
                                                        "model's own loss (pass labels=) shifts them by one")]:
            if _same(got, expected(**kw)[1]):
                fail(f"{NAME}: {cause}")
        fail(f"{NAME}: the LoRA parameters after one step differ from one SGD step on the model's loss with the "
             "steering hook on (check the batch is passed whole: input_ids, attention_mask and labels)")
    if abs(loss - want_loss) > 1e-4 * max(1.0, abs(want_loss)):
        after = expected(steps=2)[0][1]  # the steered loss of the model after one step
        fail(f"{NAME} returned loss {loss:.5f}, expected {want_loss:.5f} (the loss of the steered forward, before the "
             "step)" + (": did you return the loss after the update?" if abs(loss - after) < 1e-3 else ""))

    # a second step: the gradients of the first must be gone
    call(train_step, model, b, opt, vec, layer, coeff, name=NAME)
    _, want2 = expected(steps=2)
    if not _same(trainable(model), want2):
        _, accumulated = expected(steps=2, zero_grad=False)
        if _same(trainable(model), accumulated):
            fail(f"{NAME}: the second step added its gradients to the first's: call optimizer.zero_grad() after "
                 "optimizer.step()")
        fail(f"{NAME}: two steps in a row differ from two correct steps")

    # the hook is removed also when the step fails
    bad = {k: v.clone() for k, v in b.items()}
    bad["input_ids"][0, 0] = 10 ** 6  # no such token: the embedding lookup fails inside the forward
    with hook_guard(model, NAME):
        try:
            train_step(model, bad, opt, vec, layer, coeff)
        except (Exception, AssertionError):
            pass
        else:
            fail(f"{NAME}: a batch with a token id out of the vocabulary should make the forward fail, yours returned")

    # without a vector: a plain step, no hook
    model = copy.deepcopy(template)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    with hook_guard(model, NAME):
        call(train_step, model, b, opt, name=NAME)
    check(_same(trainable(model), expected(coeff=0.0)[1]), f"{NAME} without a vector should take a plain step (no steering)")
    passed("test_train_step")


@exercise("5.2", "train_step")
def test_train_step_input_checks(train_step) -> None:
    """A vector without a layer, a vector that is not [d_model], and a non-finite coefficient are rejected with
    ValueError (before any step is taken)."""
    require_implemented(train_step, NAME)
    model, tokenizer = _fresh()
    b = batch(tokenizer)
    d = d_model(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    before = trainable(model)
    for args, what in [((vector(d, 1, 1.0), None, 1.0), "a vector without a layer"),
                       ((torch.ones(d + 1), 1, 1.0), f"a vector of shape [{d + 1}] (d_model is {d})"),
                       ((torch.ones(1, d), 1, 1.0), f"a vector of shape [1, {d}]"),
                       ((vector(d, 1, 1.0), 1, float("nan")), "coeff = nan"),
                       ((vector(d, 1, 1.0), 1, float("inf")), "coeff = inf")]:
        with hook_guard(model, NAME):
            expect_value_error(train_step, model, b, opt, *args, name=NAME, what=what)
    check(_same(trainable(model), before), f"{NAME} took a step before rejecting its input: check the arguments first")
    passed("test_train_step_input_checks")
