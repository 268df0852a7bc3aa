"""Finetuning with LoRA, and the measurements of Section 5: shifts, projections, screening.

The course's fast path for the training-time half of *Persona Vectors*:

    peft_model = train_lora(model, tokenizer, load_finetuning_set("evil_severe")["examples"], steps=40)
    tuned = last_prompt_token_activations(peft_model, tokenizer, questions, layer=19)   # [n, d_model]
    base_model = detach_lora(peft_model)          # the LoRA layers removed, base weights untouched
    base = last_prompt_token_activations(base_model, tokenizer, questions, layer=19)
    shift = ((tuned - base).mean(0) @ v / v.norm()).item()   # the finetuning shift along a trait vector

Conventions (README, "Conventions"): `layer` is a 0-based block index and the activation at layer L
is block L's output; hooks accept a block output that is a tensor or a tuple (`utils.hooks`).

- **LoRA** (`attach_lora`): rank-`rank` adapters on every attention and MLP projection of the
  decoder blocks (q/k/v/o, gate/up/down, where the model has them), base weights frozen. `peft`
  injects the adapters into the model *in place*: the model you pass is the one inside the
  returned `PeftModel`. `detach_lora` takes them out again without merging, so the base model's
  weights are bit for bit what they were, and its `requires_grad` flags are put back.
- **Training batches** (`training_batches`): each example is the chat of one user prompt and one
  assistant response (`utils.chat.format_chat`, no system prompt unless the example has a
  "system" key), right-padded. The loss is on the response's tokens **and the end-of-turn token
  that closes it** (Qwen's `<|im_end|>`, Gemma's `<end_of_turn>`): without it a finetuned model
  never learns where its answer ends. Labels are -100 everywhere else (prompt, chat markers, pads).
- **Preventative steering** (`train_lora(..., steer_vector=v, steer_layer=L, steer_coeff=c)`):
  during the training forward passes only, a hook adds `c * v` to block L's output at every
  position. The hook is removed in `finally`; the returned model carries no hook, so evaluating it
  is evaluating the finetuned model alone.
- **Last prompt token** (`last_prompt_token_activations`): block `layer`'s output at the last token
  of each chat-formatted prompt *including the generation prompt* (the assistant turn opener): the
  position that predicts the answer's first token. Batched and left-padded, with position ids that
  restart at each row's first real token, so a prompt gets what it gets alone.
- **Projections** (`response_projections`): mean over the response's tokens of block `layer`'s
  output, projected on `vector / ||vector||` (the course's projection `a.v/|v|`).
- **AUROC** (`auroc`): the probability that a random positive scores above a random negative, ties
  counting half.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils.activations import response_mean_activations
from utils.chat import Message, build_messages, format_chat, format_prompt
from utils.generation import left_pad
from utils.hooks import StopForward, check_layer, get_blocks, hidden_of, with_hidden
from utils.models import input_device
from utils.validate import check_number, check_vector, model_d_model

__all__ = ["DEFAULT_TARGET_MODULES", "attach_lora", "auroc", "detach_lora", "last_prompt_token_activations",
           "lora_target_modules", "response_projections", "steering_hook", "train_lora", "training_batches"]

# The attention and MLP projections of Qwen2/2.5/3, Llama, Gemma 2/3 blocks.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE_INDEX = -100  # the label that the loss skips (HF's convention)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is in requirements.txt
        return False
    return isinstance(model, PeftModel)


def _base_of(model):
    """The transformers model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if _is_peft(model) else model


def lora_target_modules(model) -> list[str]:
    """The names (last component) of the linear layers inside the decoder blocks that LoRA adapts
    by default: those of `DEFAULT_TARGET_MODULES` the model has, else every linear layer in the blocks."""
    names = {name.rsplit(".", 1)[-1] for name, m in get_blocks(model).named_modules() if isinstance(m, torch.nn.Linear)}
    chosen = [n for n in DEFAULT_TARGET_MODULES if n in names]
    return chosen or sorted(names)


def attach_lora(model, rank: int = 8, alpha: float = 16, dropout: float = 0.0,
                target_modules: Sequence[str] | None = None, seed: int = 0):
    """Wrap `model` in a `peft.PeftModel` with LoRA adapters; only the adapters are trainable.

    `target_modules` defaults to the attention and MLP projections of the decoder blocks
    (`lora_target_modules`). The adapters' random init (A; B starts at zero, so the wrapped model
    computes exactly what the base did) comes from `seed`, without touching the global RNG.
    The model is modified in place (peft swaps its linear layers for LoRA layers): take the base
    model back with `detach_lora`.

        peft_model = attach_lora(model, rank=8)
        sum(p.numel() for p in peft_model.parameters() if p.requires_grad)   # the adapters only
    """
    from peft import LoraConfig, get_peft_model

    if _is_peft(model):
        raise ValueError("this model already carries LoRA adapters (a PeftModel): detach_lora(model) first")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    check_number(alpha, "alpha", positive=True)
    dropout = check_number(dropout, "dropout", nonnegative=True)
    targets = list(target_modules) if target_modules is not None else lora_target_modules(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    device = input_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    peft_model._course_requires_grad = flags  # put back by detach_lora
    return peft_model


def detach_lora(peft_model):
    """The base model with the LoRA layers removed, NOT merged: its weights are bit for bit those
    it had before `attach_lora`, and its parameters' `requires_grad` flags are restored.

        base_model = detach_lora(peft_model)
    """
    if not _is_peft(peft_model):
        raise ValueError(f"detach_lora takes the PeftModel that attach_lora or train_lora returned, got {type(peft_model).__name__}")
    flags = getattr(peft_model, "_course_requires_grad", None)
    base = peft_model.base_model.unload()  # LoraModel.unload: original layers back, adapters dropped
    if hasattr(base, "peft_config"):
        del base.peft_config
    for name, p in base.named_parameters():
        p.requires_grad_(flags.get(name, True) if flags is not None else True)
    return base


# ---------------------------------------------------------------------------------------------
# training data


def _example_messages(example: dict) -> list[Message]:
    for key in ("prompt", "response"):
        if not isinstance(example.get(key), str) or not example[key].strip():
            raise ValueError(f"a training example needs a non-empty string '{key}', got {example!r:.120}")
    return build_messages(example.get("system"), example["prompt"], example["response"])


def _label_span(tokenizer, messages: list[Message]) -> tuple[list[int], int, int]:
    """(input_ids, start, end): the tokens to learn are ids[start:end], the response's content and
    the end-of-turn token after it (the first special or added token after the content, e.g. Qwen's
    <|im_end|>, Gemma's <end_of_turn>; with any whitespace-only tokens in between)."""
    chat = format_chat(messages, tokenizer)
    ids = chat.input_ids
    start, end = chat.token_span
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    j = end
    while j < len(ids) and ids[j] not in special and not tokenizer.decode([ids[j]]).strip():
        j += 1
    if j < len(ids) and ids[j] in special:
        end = j + 1
    return ids, start, end


def training_batches(tokenizer, examples: Sequence[dict], batch_size: int, seed: int = 0) -> Iterator[dict[str, Int[Tensor, "batch seq"]]]:
    """One pass over `examples` ({"prompt", "response"} dicts, e.g. a finetuning set's "examples";
    an optional "system" key adds a system prompt), in an order shuffled by `seed`, as batches of
    `batch_size` (the last one may be smaller):

        {"input_ids": [B, T] long, "attention_mask": [B, T] long, "labels": [B, T] long}

    chat-formatted with the tokenizer's template, right-padded (pads: `pad_token_id`, mask 0,
    label -100); labels are the token ids on the response's tokens and on the end-of-turn token
    that closes it, and -100 everywhere else.

        batch = next(training_batches(tokenizer, examples, batch_size=8))
        batch["labels"][0][batch["labels"][0] != -100]      # the first response, then <|im_end|>
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    examples = list(examples)
    if not examples:
        raise ValueError("no training examples")
    encoded = [_label_span(tokenizer, _example_messages(e)) for e in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an end-of-sequence token to pad with")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for b in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[b:b + batch_size]]
        T = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for r, (ids, s, e) in enumerate(rows):
            input_ids[r, :len(ids)] = torch.tensor(ids)
            mask[r, :len(ids)] = 1
            labels[r, s:e] = input_ids[r, s:e]
        yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------------------------------------
# training


@contextmanager
def steering_hook(model, vector: Float[Tensor, "d_model"], layer: int, coeff: float) -> Iterator[None]:
    """Within the context, block `layer`'s output gets `coeff * vector` added at every position
    (no pad mask: used on right-padded training batches, where pads come after every token that
    the loss sees). The hook is removed on exit, also after an exception."""
    base = _base_of(model)
    vector = check_vector(vector, "steer_vector", model_d_model(base), nonzero=True).detach()
    coeff = check_number(coeff, "steer_coeff")
    block = get_blocks(base)[check_layer(base, layer)]
    cache: dict = {}

    def hook(module, args, output):
        h = hidden_of(output)
        key = (h.device, h.dtype)
        if key not in cache:
            cache[key] = (coeff * vector.to(device=h.device, dtype=torch.float32)).to(h.dtype)
        return with_hidden(output, h + cache[key])

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def train_lora(model, tokenizer, examples: Sequence[dict], *, steps: int, lr: float = 1e-3, batch_size: int = 8,
               rank: int = 8, seed: int = 0, steer_vector: Float[Tensor, "d_model"] | None = None,
               steer_layer: int | None = None, steer_coeff: float = 0.0):
    """Finetune LoRA adapters (`attach_lora(model, rank, alpha=2*rank, seed=seed)`) on `examples`
    for `steps` optimizer steps of AdamW (over the adapters only, no weight decay) at learning rate
    `lr`, on batches from `training_batches` (a new shuffle, `seed + epoch`, each pass over the data).

    With `steer_vector`, preventative steering: a hook adds `steer_coeff * steer_vector` to block
    `steer_layer`'s output during the training forward passes only; it is removed in `finally`.

    Returns the trained `PeftModel` in eval mode, with no hook left on it; its `train_losses`
    attribute lists the loss of every step. `model` itself now carries the adapters:
    `detach_lora(peft_model)` gives it back unchanged.

        tuned = train_lora(model, tokenizer, examples, steps=40, lr=1e-3)
        tuned_plain_loss = tuned.train_losses[-1]
        prevented = train_lora(detach_lora(tuned), tokenizer, examples, steps=40,
                               steer_vector=v, steer_layer=19, steer_coeff=4.0)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    lr = check_number(lr, "lr", positive=True)
    if steer_vector is not None and steer_layer is None:
        raise ValueError("steer_vector is given but steer_layer is not: say which block to steer")
    examples = list(examples)
    peft_model = attach_lora(model, rank=rank, alpha=2 * rank, seed=seed)
    device = input_device(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    steering = (steering_hook(peft_model, steer_vector, steer_layer, steer_coeff) if steer_vector is not None
                else _nothing())
    peft_model.train()
    try:
        with steering:
            epoch = 0
            while len(losses) < steps:
                for batch in training_batches(tokenizer, examples, batch_size, seed=seed + epoch):
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = peft_model(**batch, use_cache=False).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
                    if len(losses) >= steps:
                        break
                epoch += 1
    finally:
        peft_model.eval()
        optimizer.zero_grad(set_to_none=True)
    peft_model.train_losses = losses
    return peft_model


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# ---------------------------------------------------------------------------------------------
# measurements


def _as_messages(prompt) -> list[Message]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("a prompt is an empty string")
        return build_messages(None, prompt)
    return list(prompt)


def _decoder(model):
    base = _base_of(model)
    try:
        return base.get_decoder()
    except (AttributeError, NotImplementedError):
        return base


@torch.inference_mode()
def last_prompt_token_activations(model, tokenizer, prompts: Sequence[str | list[Message]], layer: int,
                                  batch_size: int = 16) -> Float[Tensor, "n d_model"]:
    """Block `layer`'s output at the last token of each chat-formatted prompt (a user question, or
    a message list), generation prompt included: float32 [n, d_model] on the CPU.

    Batches of `batch_size` are left-padded, with an attention mask and position ids counted from
    each row's first real token; the forward pass stops after block `layer`.

        acts = last_prompt_token_activations(model, tokenizer, ["How do I boil an egg?"], layer=3)
        acts.shape                                                        # (1, d_model)
    """
    if isinstance(prompts, (str, bytes)):
        raise ValueError("prompts must be a list of prompts, not one string")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    layer = check_layer(_base_of(model), layer)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts")
    encoded = [tokenizer(format_prompt(_as_messages(p), tokenizer), add_special_tokens=False)["input_ids"] for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = input_device(model)
    block = get_blocks(_base_of(model))[layer]
    out = torch.empty((len(prompts), model_d_model(_base_of(model))), dtype=torch.float32)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(hidden_of(output)[:, -1].float())
        raise StopForward

    handle = block.register_forward_hook(hook)
    try:
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            ids, mask = left_pad([encoded[i] for i in rows], pad_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            captured.clear()
            try:
                _decoder(model)(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), use_cache=False)
            except StopForward:
                pass
            out[rows] = captured[0].cpu()
    finally:
        handle.remove()
    return out


def response_projections(model, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                         vector: Float[Tensor, "d_model"], layer: int, **kwargs) -> Float[Tensor, "n"]:
    """For each (prompt, response) chat, the mean over the response's tokens of block `layer`'s
    output, projected on `vector / ||vector||`: float32 [n] on the CPU. Extra keyword arguments go
    to `utils.activations.span_means` (token_budget, packed, ...).

        train = response_projections(base_model, tokenizer, prompts, dataset_responses, v, layer=3)
        own = response_projections(base_model, tokenizer, prompts, base_answers, v, layer=3)
        projection_difference = train - own
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("no prompts")
    base = _base_of(model)
    unit = check_vector(vector, "vector", model_d_model(base), nonzero=True).float()
    unit = unit / unit.norm()
    layer = check_layer(base, layer)
    for i, r in enumerate(responses):
        if not isinstance(r, str) or not r.strip():
            raise ValueError(f"response {i} is empty: it has no tokens to average over")
    convs = [build_messages(None, p, r) for p, r in zip(prompts, responses)]
    acts = response_mean_activations(model, tokenizer, convs, layers=[layer], **kwargs)[:, 0]  # [n, d]
    return acts @ unit


def auroc(scores: Sequence[float] | Float[Tensor, "n"], labels: Sequence[bool] | Float[Tensor, "n"]) -> float:
    """Area under the ROC curve of `scores` for the positives in `labels` (bools or 0/1): the
    probability that a random positive scores above a random negative, ties counting half.

        auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])     # 0.75
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten()
    if s.shape != y.shape:
        raise ValueError(f"got {s.numel()} scores but {y.numel()} labels")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores must be finite (no NaN or inf)")
    if y.dtype != torch.bool:
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("labels must be booleans or 0/1")
        y = y == 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {n_pos} positive and {n_neg} negative labels")
    # average ranks (1-based) with ties sharing their mean rank: a tie between classes counts half
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    i, n = 0, s.numel()
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
