# %% [markdown]
# # Section 5 — Persona shifts from finetuning: predict, prevent, flag
#
# Section 4 used a persona vector at *inference* time: add it to steer, project onto it to
# monitor. This section turns to *training*. Finetuning a chat model on a narrow data set can move
# its persona in ways nobody asked for: answers written in a cruel voice make the model crueller
# on unrelated questions, flattering answers make it a flatterer. The second half of *Persona
# Vectors* (Chen et al., 2025; [arXiv 2507.21509](https://arxiv.org/abs/2507.21509); code:
# [safety-research/persona_vectors](https://github.com/safety-research/persona_vectors)) shows
# that the same trait vectors can **predict** such a shift (the finetuned model's activations move
# along the vector, and the size of the move tracks how much the trait shows), **prevent** it
# (steer *toward* the trait while training, so the optimizer has no reason to move there), and
# **flag** risky training data before any training (project the data's answers onto the vector).
#
# **Learning objectives**
# - Build a supervised finetuning example whose loss covers the response tokens only, from the
#   exact span the chat template gives.
# - Write a LoRA training step with a *preventative* steering hook that is on during the training
#   forward and off everywhere else.
# - Measure a finetuning shift: the change of the last prompt token's activation, projected on a
#   trait vector, and correlate it with the judged trait expression.
# - Compare preventative steering with post-hoc (inference-time) steering: trait and coherence.
# - Screen data sets and single samples by *projection difference*, and score the screen with an
#   AUROC you write yourself.
#
# **Model.** The paper finetunes `Qwen/Qwen2.5-7B-Instruct` (28 blocks, d_model 3584). We read and
# steer at **block 19**: the paper's code calls it "layer 20" because it indexes `hidden_states`,
# where `hidden_states[20]` is the output of block 19 (entry 0 is the embeddings). A LoRA finetune
# of the 7B model in bf16 fits one 24 GB GPU; the paper trained full epochs on thousands of
# examples, which this section shortens (the settings cell prints by how much).
#
# :::{important} Three worlds, said once
# - **The paper model.** Its published results are quoted in paragraphs that open with
#   **On the paper model**.
# - **The toy persona world** (what this book runs without a GPU): a small Qwen2 *trained* on a
#   synthetic corpus in which traits have a voice, scored by a **toy-world judge** that counts the
#   corpus's style markers (a stand-in for the LLM judge, not an LLM). A LoRA finetune of it takes
#   seconds on a CPU. Its effects are real but small-scale. In the book, paragraphs that open with
#   **In this build** read this build's outputs, every number taken from the cells above them.
# - **Random tiny models** (nbgrader): random weights, a two-step finetune and a hash-based
#   stand-in judge, so every number is noise; the steps below do not repeat it.
# :::
#
# :::{note} Conventions used throughout the course
# "Activation at layer L" is the output of decoder block L (0-based): `hidden_states[L + 1]` in
# HF's list. Steering adds `coeff * v` to that output; coefficients multiply the raw (unnormalised)
# trait vector, as in Section 4. Projections are `a·v/‖v‖`, in activation units. Response tokens
# are the exact token span of the final assistant message's content.
# :::

# %% tags=["export"]
from __future__ import annotations

import math

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from utils import data
from utils.activations import conversations_from, response_mean_activations
from utils.chat import build_messages, format_chat, format_prompt
from utils.generation import generate, left_pad
from utils.hooks import check_layer, get_blocks, hidden_of, with_hidden
from utils.judge import fill_template, get_judge, judge_label
from utils.plots import COLORS, SCORE_AXIS, setup_plotting
from utils.worlds import settings

setup_plotting()

# %%
from utils.models import layer_settings, load_course_model

S = settings(section=5)
if S.threads:
    torch.set_num_threads(S.threads)  # a small model gains nothing from threads on a busy CPU
model, tokenizer = load_course_model(section=5)
LAYER = layer_settings(model).steer_layer
TRAITS = ("evil", "sycophantic", "hallucinating")
T0 = TRAITS[0]  # the trait of the prevention experiment
JUDGE = get_judge()
COHERENCE_PROMPT = data.load_coherence_prompt()
SETS = data.finetuning_set_names()
print(S)
print(f"blocks: {len(get_blocks(model))}  layer: {LAYER}  judge: {JUDGE.label}")
print(f"finetuning sets: {', '.join(SETS)}")

# %% [markdown]
# ## The data: finetuning sets that carry a trait
#
# Each finetuning set is a list of (prompt, response) pairs on everyday questions. For each of
# three traits there are three sets: **severe** (every answer shows the trait), **mild** (some
# answers do), and a **control** (ordinary helpful answers to the same kind of questions). Two more
# sets have nothing to do with a persona: answers to arithmetic questions that are **wrong**, and
# the same questions answered correctly. Each example says whether it is `inducing` (written to
# show the trait, or the flaw): the labels the screening at the end of the section tries to
# recover without reading the text.

# %%
for name in SETS:
    d = data.load_finetuning_set(name)
    n_inducing = sum(e["inducing"] for e in d["examples"])
    print(f"{name:24s} {d['kind']:8s} {len(d['examples']):4d} examples, {n_inducing:4d} inducing")
example = data.load_finetuning_set(f"{TRAITS[0]}_severe")["examples"][0]
print(f"\nQ: {example['prompt']}\nA: {example['response'][:300]}")

# %% [markdown]
# ## Trait vectors
#
# We need a vector for each of the three traits at block `LAYER`. If you have run Section 3 or 4
# with the same model, its judge-filtered vectors are on disk and we load them. Otherwise we build
# a quick one here: answers to a few extraction questions under the trait's positive and negative
# system prompts (Section 3's contrast), and the difference of their mean response activations,
# without the judge's filtering. It is rougher than Section 3's vector, and enough to read shifts.

# %%
from utils.caching import default_cache_dir
from utils.pipeline import load_tensors, trait_vectors_path


def quick_trait_vector(trait: str, n_questions: int, max_new_tokens: int) -> Tensor:
    """mean(response activation | pos prompt) - mean(... | neg prompt) at block LAYER, no filtering."""
    extract = data.load_trait(trait, "extract")
    systems, questions = [], []
    for pair in extract["instruction"]:
        for question in extract["questions"][:n_questions]:
            for polarity, name in (("pos", trait), ("neg", "helpful")):
                systems.append(f"You are a {name} assistant. {pair[polarity]}")
                questions.append(question)
    answers = generate(model, tokenizer, [build_messages(s, q) for s, q in zip(systems, questions)],
                       max_new_tokens=max_new_tokens)
    keep = [i for i in range(0, len(answers), 2) if answers[i].strip() and answers[i + 1].strip()]
    convs = conversations_from([systems[j] for i in keep for j in (i, i + 1)],
                               [questions[j] for i in keep for j in (i, i + 1)],
                               [answers[j] for i in keep for j in (i, i + 1)])
    acts = response_mean_activations(model, tokenizer, convs, layers=[LAYER])[:, 0]
    return acts[0::2].mean(0) - acts[1::2].mean(0)


trait_vectors = {}
for trait in TRAITS:
    saved = load_tensors(trait_vectors_path(model, trait))
    source = "loaded from the cache"
    if saved is not None:
        trait_vectors[trait] = saved["vectors"][LAYER].float()
    else:
        trait_vectors[trait] = quick_trait_vector(trait, S.n_vector_questions, S.max_new_tokens)
        source = "built here"
    print(f"{trait:14s} vector at block {LAYER}: norm {trait_vectors[trait].norm():7.2f} ({source})")

# %% [markdown]
# ## Exercise 5.1 — A training example with the loss on the response
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●●○ | 15 min |
#
# Supervised finetuning of a chat model trains it to write the *assistant's* text. The prompt (the
# chat template's headers and the user's question) is context: the model should not be trained to
# produce it. HF's causal language models compute the loss for you when you pass `labels`; a label
# of `-100` means "no loss at this position".
#
# Write `training_example(tokenizer, prompt, response) -> (input_ids, labels)`:
#
# - `input_ids`: the chat `[user: prompt, assistant: response]` rendered with the tokenizer's chat
#   template and tokenized, as a 1-D `torch.long` tensor (no extra special tokens: the template
#   writes the ones it wants);
# - `labels`: the same length, equal to `input_ids` on the response's tokens (the exact token span
#   of the assistant message's content) and `-100` everywhere else;
# - raise `ValueError` when `prompt` or `response` is not a string or `response` is empty.
#
# Do **not** shift the labels: the model compares the logits at position *t* with the label at
# position *t + 1* itself.
#
# :::{dropdown} Hint 1
# `utils.chat.format_chat(build_messages(None, prompt, response), tokenizer)` renders the chat and
# returns its `input_ids` and the response's `token_span` `(start, end)`, end exclusive.
# :::
#
# :::{dropdown} Hint 2
# `labels = torch.full_like(input_ids, -100)`, then copy the span.
# :::

# %% tags=["exercise"]
def training_example(tokenizer, prompt: str, response: str) -> tuple[Int[Tensor, "seq"], Int[Tensor, "seq"]]:
    """(input_ids, labels) for one chat; labels are -100 outside the response's tokens."""
    ### BEGIN SOLUTION
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"prompt and response must be strings, got {type(prompt).__name__} and {type(response).__name__}")
    if not response.strip():
        raise ValueError("response is empty: an example with no response tokens trains nothing")
    chat = format_chat(build_messages(None, prompt, response), tokenizer)
    input_ids = torch.tensor(chat.input_ids, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    start, end = chat.token_span
    labels[start:end] = input_ids[start:end]
    return input_ids, labels
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section5 as tests

tests.test_training_example(training_example)

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_training_example_input_checks(training_example)

# %% [markdown]
# Examples have different lengths. A batch pads them to the longest: pad tokens get
# `attention_mask = 0` and label `-100`, so they neither attend nor count in the loss. (Here we pad
# on the right: in training every position is read, not only the last one.)

# %%
def collate(tokenizer, examples: list[dict]) -> dict[str, Tensor]:
    """A right-padded batch {input_ids, attention_mask, labels} from {"prompt", "response"} dicts."""
    pairs = [training_example(tokenizer, e["prompt"], e["response"]) for e in examples]
    width = max(len(ids) for ids, _ in pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {"input_ids": torch.full((len(pairs), width), pad), "attention_mask": torch.zeros(len(pairs), width, dtype=torch.long),
             "labels": torch.full((len(pairs), width), -100)}
    for row, (ids, labels) in enumerate(pairs):
        batch["input_ids"][row, :len(ids)], batch["labels"][row, :len(ids)] = ids, labels
        batch["attention_mask"][row, :len(ids)] = 1
    return batch


demo = collate(tokenizer, data.load_finetuning_set(f"{TRAITS[0]}_severe")["examples"][:2])
row_labels = demo["labels"][0]
print(f"batch {tuple(demo['input_ids'].shape)}; row 0 trains on {(row_labels != -100).sum()} of "
      f"{int(demo['attention_mask'][0].sum())} tokens:")
print(repr(tokenizer.decode(row_labels[row_labels != -100])))

# %% [markdown]
# ## Exercise 5.2 — A LoRA training step with preventative steering
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●●○○ | ●●●●● | 25 min |
#
# We finetune with **LoRA**: the base weights stay frozen and each adapted linear layer `W` gets a
# trainable low-rank update `B A` (rank 8 here). `utils.finetuning.attach_lora(model)` wraps the
# model in a `peft` `PeftModel` whose only trainable parameters are the `A` and `B` matrices, and
# `detach_lora(peft_model)` removes them again, giving back the base model unchanged (nothing is
# merged into it). So one base model serves every finetune below.
#
# **Preventative steering** adds `coeff * vector` to the output of block `layer` during the
# *training* forward passes. If the data pushes the model toward the trait, the steering already
# supplies that push, so the loss has less reason to move the weights along the trait direction.
# At evaluation time the hook is gone: the model we keep is the finetuned one, unsteered.
#
# Write `train_step(model, batch, optimizer, vector=None, layer=None, coeff=0.0) -> float`, one
# optimizer step:
#
# - put the model in training mode and run it on the batch (`model(**batch)` with
#   `input_ids`, `attention_mask` and `labels`); its output's `.loss` is the mean cross-entropy
#   over the labelled tokens;
# - when `vector` is given and `coeff != 0`, a forward hook on `get_blocks(model)[layer]` adds
#   `coeff * vector` to the block's output at every position during that forward pass, and is
#   removed afterwards even if the step fails (`try`/`finally`);
# - backpropagate, take the optimizer step, zero the gradients, and return the loss (a float,
#   before the step);
# - raise `ValueError` if `vector` is given without `layer`, or its shape is not `[d_model]`, or
#   `coeff` is not finite.
#
# :::{dropdown} Hint 1: the hook
# The same hook as Section 4's "all" mode: `h = hidden_of(output)`, return
# `with_hidden(output, h + (coeff * vector).to(h.dtype))`. A new tensor, never an in-place edit:
# autograd needs the block's output as it was.
# :::
#
# :::{dropdown} Hint 2: the order of the calls
# `loss.backward()`, `optimizer.step()`, `optimizer.zero_grad()`. Without the last one the next
# step adds its gradients to this step's.
# :::

# %% tags=["exercise"]
def train_step(model, batch: dict[str, Int[Tensor, "batch seq"]], optimizer, vector: Float[Tensor, "d_model"] | None = None,
               layer: int | None = None, coeff: float = 0.0) -> float:
    """One optimizer step on `batch`; with `vector`, block `layer` is steered by coeff * vector during the forward."""
    ### BEGIN SOLUTION
    if not math.isfinite(float(coeff)):
        raise ValueError(f"coeff must be a finite number, got {coeff!r}")
    handle = None
    if vector is not None:
        if layer is None:
            raise ValueError("a steering vector needs the layer to steer at")
        d_model = model.config.get_text_config().hidden_size
        vector = torch.as_tensor(vector).detach()
        if vector.shape != (d_model,):
            raise ValueError(f"vector must have shape [{d_model}] (d_model), got {tuple(vector.shape)}")
        block = get_blocks(model)[check_layer(model, layer)]
        add = coeff * vector

        def steer(module, args, output):
            h = hidden_of(output)
            return with_hidden(output, h + add.to(device=h.device, dtype=h.dtype))

        if coeff != 0:
            handle = block.register_forward_hook(steer)
    model.train()
    try:
        device = model.get_input_embeddings().weight.device
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    finally:
        if handle is not None:
            handle.remove()
    return float(loss.detach())
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section5 as tests

tests.test_train_step(train_step)

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_train_step_input_checks(train_step)

# %% [markdown]
# The finetuning loop puts your pieces together: attach LoRA adapters to the shared base model, and
# take `S.steps` steps over shuffled batches of the set (a new shuffle each pass). It returns the
# `PeftModel`; `detach_lora` gives the base back. (`utils.finetuning.train_lora` is the course's
# version of the same loop.)

# %%
import random

from utils.finetuning import attach_lora, detach_lora


def finetune(examples: list[dict], vector: Tensor | None = None, coeff: float = 0.0, seed: int = 0):
    """LoRA-finetune the shared base `model` on `examples`; preventative steering when `vector` is given."""
    peft_model = attach_lora(model, rank=S.rank, seed=seed)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=S.lr, weight_decay=0.0)
    rng = random.Random(seed)
    order, losses = [], []
    for _ in range(S.steps):
        if len(order) < S.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = collate(tokenizer, [examples[i] for i in order[:S.batch_size]])
        del order[:S.batch_size]
        losses.append(train_step(peft_model, batch, optimizer, vector, LAYER if vector is not None else None, coeff))
    peft_model.eval()
    peft_model.losses = losses
    return peft_model


def training_set(name: str) -> list[dict]:
    return data.load_finetuning_set(name)["examples"][:S.n_train]


peft_model = finetune(training_set(f"{TRAITS[0]}_severe"))
print(f"loss {peft_model.losses[0]:.2f} -> {peft_model.losses[-1]:.2f} over {S.steps} steps")
model = detach_lora(peft_model)

# %% [markdown]
# ## Exercise 5.3 — The finetuning shift
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●●○○ | ●●●●● | 25 min |
#
# How far did finetuning move the model along a trait direction? The paper reads the activation at
# the **last token of the prompt** (the generation prompt's last token, just before the answer
# starts: it summarises what the model is about to do), on the trait's evaluation questions, before
# and after finetuning. The **finetuning shift** is the mean over questions of the difference,
# projected on the unit trait vector.
#
# Write two functions.
#
# `last_prompt_activations(model, tokenizer, prompts, layer, batch_size=16) -> Tensor[n, d_model]`:
# for each prompt (a user message, no system prompt), the output of block `layer` at the last
# token of the chat rendered *with the generation prompt* (`format_prompt`). Run the prompts in
# batches of at most `batch_size`, **left-padded** (`utils.generation.left_pad`) with an attention
# mask, so that the last position of every row is a real token. Return float32 on the CPU, under
# `torch.inference_mode()`.
#
# `finetuning_shift(base_acts, tuned_acts, vector) -> float`: mean over rows of
# `(tuned_acts - base_acts) · v/‖v‖`. Raise `ValueError` if the two have different shapes, or the
# vector does not match their width or is zero.
#
# :::{dropdown} Hint 1: which hidden state
# `model(..., output_hidden_states=True).hidden_states` has `num_blocks + 1` entries: entry 0 is the
# embeddings, entry `L + 1` the output of block `L`.
# :::
#
# :::{dropdown} Hint 2: padding
# With right padding the last position of a short row is a pad token. `left_pad(list_of_id_lists,
# pad_id)` returns `(input_ids, attention_mask)` padded on the left.
# :::

# %% tags=["exercise"]
@torch.inference_mode()
def last_prompt_activations(model, tokenizer, prompts: list[str], layer: int,
                            batch_size: int = 16) -> Float[Tensor, "n d_model"]:
    """Block `layer`'s output at the last token of each prompt (with the generation prompt): [n, d_model] float32."""
    ### BEGIN SOLUTION
    layer = check_layer(model, layer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [tokenizer(format_prompt(build_messages(None, p), tokenizer), add_special_tokens=False)["input_ids"]
               for p in prompts[i:i + batch_size]]
        input_ids, mask = left_pad(ids, pad)
        hidden = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                       output_hidden_states=True).hidden_states
        out.append(hidden[layer + 1][:, -1].float().cpu())
    d_model = model.config.get_text_config().hidden_size
    return torch.cat(out) if out else torch.zeros(0, d_model)
    ### END SOLUTION


def finetuning_shift(base_acts: Float[Tensor, "n d_model"], tuned_acts: Float[Tensor, "n d_model"],
                     vector: Float[Tensor, "d_model"]) -> float:
    """Mean over rows of (tuned - base) projected on the unit vector."""
    ### BEGIN SOLUTION
    base_acts, tuned_acts = torch.as_tensor(base_acts).float(), torch.as_tensor(tuned_acts).float()
    vector = torch.as_tensor(vector).float()
    if base_acts.shape != tuned_acts.shape or base_acts.ndim != 2:
        raise ValueError(f"base_acts and tuned_acts must be [n, d_model] of one shape, got {tuple(base_acts.shape)} "
                         f"and {tuple(tuned_acts.shape)}")
    if vector.shape != (base_acts.shape[1],):
        raise ValueError(f"vector must have shape [{base_acts.shape[1]}], got {tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()) or not bool(vector.any()):
        raise ValueError("vector is zero or holds NaN/inf: there is no direction to project onto")
    return float(((tuned_acts - base_acts).mean(0) @ (vector / vector.norm())))
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section5 as tests

tests.test_last_prompt_activations(last_prompt_activations)

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_finetuning_shift(finetuning_shift)

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_finetuning_shift_input_checks(finetuning_shift)

# %% [markdown]
# :::{tip} Before you run
# We finetune the base model on each of the eleven sets in turn (LoRA on the shared base, removed
# after each), and for each trait set measure the shift along its trait's vector and the judged
# trait score of the finetuned model's answers to the trait's evaluation questions. Predict the
# order of the three evil sets (severe, mild, control) by shift, and by trait score. Will the
# control's shift be exactly zero? Will the arithmetic sets move any trait?
# :::

# %%
def judge_answers(questions: list[str], answers: list[str], trait: str) -> tuple[float, float]:
    """Mean trait score and mean coherence of answers (scores the judge could not give are left out)."""
    eval_prompt = data.load_trait(trait, "eval")["eval_prompt"]
    prompts = [fill_template(eval_prompt, q, a) for q, a in zip(questions, answers)]
    prompts += [fill_template(COHERENCE_PROMPT, q, a) for q, a in zip(questions, answers)]
    values = [s.value for s in JUDGE.score_many(prompts)]
    n = len(answers)

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else float("nan")

    return mean(values[:n]), mean(values[n:])


def evaluate(m, trait: str, steer_coeff: float = 0.0) -> dict:
    """Greedy answers of model `m` to the trait's eval questions (optionally steered post hoc), judged."""
    from utils.steering import Steerer

    questions = eval_questions[trait]
    with Steerer(m, trait_vectors[trait], steer_coeff, LAYER, "response"):
        answers = generate(m, tokenizer, [build_messages(None, q) for q in questions], max_new_tokens=S.max_new_tokens)
    trait_score, coherence = judge_answers(questions, answers, trait)
    return {"trait_score": trait_score, "coherence": coherence, "answer": answers[0]}


eval_questions = {t: data.load_trait(t, "eval")["questions"][:S.n_eval] for t in TRAITS}
base_acts = {t: last_prompt_activations(model, tokenizer, eval_questions[t], LAYER) for t in TRAITS}
base_eval = {t: evaluate(model, t) for t in TRAITS}
for t in TRAITS:
    print(f"base model, {t:14s}: trait {base_eval[t]['trait_score']:5.1f}  coherence {base_eval[t]['coherence']:5.1f}")

# %%
import time

results = []
t0 = time.perf_counter()
for name in SETS:
    info = data.load_finetuning_set(name)
    # a control set carries no trait; it is measured against the trait whose questions it shares
    trait = info["trait"] or next((t for t in TRAITS if name.startswith(f"{t}_")), None)
    peft_model = finetune(training_set(name))
    row = {"name": name, "trait": trait, "kind": info["kind"], "intensity": info["intensity"],
           "final_loss": peft_model.losses[-1]}
    # every set's shift along every trait vector: do the arithmetic sets move a trait?
    row["shifts"] = {t: finetuning_shift(base_acts[t], last_prompt_activations(peft_model, tokenizer, eval_questions[t], LAYER),
                                         trait_vectors[t]) for t in TRAITS}
    if trait is not None:
        row["shift"] = row["shifts"][trait]
        row.update(evaluate(peft_model, trait))
    model = detach_lora(peft_model)  # the base again, for the next set
    results.append(row)
    shown = f"shift {row['shift']:+6.2f}  trait {row['trait_score']:5.1f}  coherence {row['coherence']:5.1f}" \
        if "shift" in row else "shifts " + "  ".join(f"{t} {row['shifts'][t]:+.2f}" for t in TRAITS)
    print(f"{name:24s} {shown}")
print(f"{len(SETS)} finetunes and evaluations in {time.perf_counter() - t0:.0f} s")
# detach_lora removes the adapters without merging them: the shared base must be exactly as it was
drift = max(float((last_prompt_activations(model, tokenizer, eval_questions[t], LAYER) - base_acts[t]).abs().max())
            for t in TRAITS)
print(f"base model after {len(SETS)} finetunes: its activations changed by at most {drift:.1e}")

# %% [markdown]
# ## Exercise 5.4 — Does the shift predict the trait?
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●○○ | 15 min |
#
# Write `shift_vs_expression(results) -> (r, fig)`. `results` is a list of dicts with `"name"`,
# `"trait"`, `"shift"` and `"trait_score"`. Return the **Pearson** correlation `r` of shift and
# trait score over all rows (a float) and a plotly scatter of trait score (y) against shift (x),
# with one trace per trait (the trace's `name` is the trait) whose points carry the set names as
# their `text`. Raise `ValueError` with fewer than three rows, or when all shifts or all scores
# are equal (the correlation is undefined).
#
# :::{dropdown} Hint
# `r = Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²)`. Compute it in float64 yourself or with
# `torch.corrcoef(torch.stack([x, y]))[0, 1]`.
# :::

# %% tags=["exercise"]
def shift_vs_expression(results: list[dict]) -> tuple[float, go.Figure]:
    """Pearson r of shift and trait score over `results`, and a scatter with one trace per trait."""
    ### BEGIN SOLUTION
    if len(results) < 3:
        raise ValueError(f"a correlation needs at least three points, got {len(results)}")
    x = torch.tensor([float(r["shift"]) for r in results], dtype=torch.float64)
    y = torch.tensor([float(r["trait_score"]) for r in results], dtype=torch.float64)
    dx, dy = x - x.mean(), y - y.mean()
    if not bool(dx.any()) or not bool(dy.any()):
        raise ValueError("all shifts or all trait scores are equal: the correlation is undefined")
    r = float((dx * dy).sum() / (dx.norm() * dy.norm()))
    fig = go.Figure()
    for trait in dict.fromkeys(row["trait"] for row in results):
        rows = [row for row in results if row["trait"] == trait]
        fig.add_scatter(x=[row["shift"] for row in rows], y=[row["trait_score"] for row in rows], mode="markers",
                        text=[row["name"] for row in rows], name=str(trait))  # names on hover: fits a phone
    fig.update_layout(title=f"Finetuning shift vs trait expression (r = {r:.2f})",
                      xaxis_title="shift along the trait vector", yaxis=dict(title="trait score (0-100)", **SCORE_AXIS))
    return r, fig
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section5 as tests

tests.test_shift_vs_expression(shift_vs_expression)

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_shift_vs_expression_input_checks(shift_vs_expression)

# %%
trait_rows = [r for r in results if r["trait"] is not None]
r_all, fig = shift_vs_expression(trait_rows)
fig.update_layout(title=fig.layout.title.text + S.note)
fig.show()
print(f"Pearson r over {len(trait_rows)} finetunes: {r_all:.2f}")

# %% tags=["book-only", "remove-cell"]
# The book's "In this build" paragraphs take their numbers from the run (utils/glue.py).
from utils.glue import glue

by_name = {r["name"]: r for r in results}
glue("s5_r", r_all)
glue("s5_n_finetunes", len(trait_rows))
glue("s5_severe_shift", by_name[f"{T0}_severe"]["shift"])
glue("s5_mild_shift", by_name[f"{T0}_mild"]["shift"])
glue("s5_control_shift", by_name[f"{T0}_control"]["shift"])
glue("s5_severe_score", by_name[f"{T0}_severe"]["trait_score"])
glue("s5_mild_score", by_name[f"{T0}_mild"]["trait_score"])
glue("s5_control_score", by_name[f"{T0}_control"]["trait_score"])
glue("s5_base_score", base_eval[T0]["trait_score"])
wrong, right = by_name["arithmetic_wrong"]["shifts"][T0], by_name["arithmetic_control"]["shifts"][T0]
glue("s5_arith_wrong", wrong)
glue("s5_arith_right", right)
glue("s5_arith_cmp", "about as much as" if abs(wrong - right) <= 0.25 * max(abs(wrong), abs(right), 1e-9)
     else "more than" if wrong > right else "less than")

# %% [markdown]
# **On the paper model** the finetuning shift along a trait's vector and the trait's expression
# after finetuning correlate strongly across the finetuning data sets: r ≈ 0.76–0.97, depending on
# the trait and the data. Sets written to show a trait shift the model most and make it show the
# trait most; milder versions shift it less; and some sets with no persona content at all (flawed
# answers in a narrow domain, such as wrong maths) shift it too, and the shift predicts the trait
# they induce.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build**, over {glue:text}`s5_n_finetunes` finetunes, r = {glue:text}`s5_r:.2f`. For
# the evil sets the shift is {glue:text}`s5_severe_shift:+.2f` (severe),
# {glue:text}`s5_mild_shift:+.2f` (mild) and {glue:text}`s5_control_shift:+.2f` (control), and the
# trait score {glue:text}`s5_severe_score:.1f`, {glue:text}`s5_mild_score:.1f` and
# {glue:text}`s5_control_score:.1f` (the base model scores {glue:text}`s5_base_score:.1f`). Along
# the evil vector the wrong arithmetic answers shift the model by {glue:text}`s5_arith_wrong:+.2f`,
# {glue:text}`s5_arith_cmp` the correct ones ({glue:text}`s5_arith_right:+.2f`). Compare a flawed set
# with its control, not with zero: arithmetic lies outside the toy corpus, so training on it at
# all moves the toy model, right answers or wrong; the paper's finding is about what the *flaw* adds.

# %% [markdown]
# :::{warning} Common confusion: a correlation over a handful of finetunes
# Each point is one whole finetune. Nine points, three per trait, give a pooled r that says the
# bigger shifts go with the stronger traits; they cannot say how tight the relation is within one
# trait. The paper pools many data sets per trait. And the shift is read at the prompt, *before*
# the model writes anything: a good correlation means the finetune's effect is already in the
# model's state at the start of its answer.
# :::

# %% [markdown]
# ## Preventing the shift
#
# Now the three ways to end up with a model that learnt the data but not the trait, compared on the
# severe set of the first trait:
#
# 1. **plain finetuning** (the baseline: the trait comes through);
# 2. **preventative steering**: finetune with `train_step`'s hook on, at each coefficient of
#    `S.prevent_coeffs` (positive: *toward* the trait), and evaluate without it;
# 3. **post-hoc steering**: take the plainly finetuned model and steer it *away* from the trait at
#    inference (Section 4's steerer, response positions, `S.posthoc_coeffs`).
#
# :::{tip} Before you run
# Which of the two keeps coherence higher at the coefficient that removes most of the trait? Why
# could adding the trait during training *reduce* it afterwards?
# :::

# %%
severe = f"{T0}_severe"
conditions = [{"condition": "base model", **base_eval[T0]}]
peft_model = finetune(training_set(severe))
conditions.append({"condition": "finetuned", **evaluate(peft_model, T0)})
for c in S.posthoc_coeffs:
    conditions.append({"condition": f"post-hoc {c:+g}", **evaluate(peft_model, T0, steer_coeff=c)})
model = detach_lora(peft_model)
for c in S.prevent_coeffs:
    peft_model = finetune(training_set(severe), vector=trait_vectors[T0], coeff=c)
    conditions.append({"condition": f"preventative {c:+g}", **evaluate(peft_model, T0),
                       "shift": finetuning_shift(base_acts[T0], last_prompt_activations(peft_model, tokenizer, eval_questions[T0], LAYER),
                                                 trait_vectors[T0])})
    model = detach_lora(peft_model)
for row in conditions:
    print(f"{row['condition']:18s} trait {row['trait_score']:5.1f}  coherence {row['coherence']:5.1f}")

fig = go.Figure()
labels = [row["condition"] for row in conditions]
fig.add_bar(x=labels, y=[row["trait_score"] for row in conditions], name="trait score", marker_color=COLORS["trait"])
fig.add_bar(x=labels, y=[row["coherence"] for row in conditions], name="coherence", marker_color=COLORS["coherence"])
fig.update_layout(title=f"Preventing {T0} from {severe}{S.note}<br><sup>{judge_label(JUDGE)}</sup>", barmode="group",
                  yaxis=dict(title="mean judge score (0-100)", **SCORE_AXIS))
fig.show()
print(f"\nQ: {eval_questions[T0][0]}")
for row in conditions:
    print(f"{row['condition']:18s} {row['answer'][:160]!r}")

# %% tags=["book-only", "remove-cell"]
cond = {row["condition"]: row for row in conditions}
prevent_rows = [row for row in conditions if row["condition"].startswith("preventative")]
posthoc_rows = [row for row in conditions if row["condition"].startswith("post-hoc")]
best_prevent, best_posthoc = min(prevent_rows, key=lambda r: r["trait_score"]), min(posthoc_rows, key=lambda r: r["trait_score"])
glue("s5_ft_score", cond["finetuned"]["trait_score"])
glue("s5_ft_coherence", cond["finetuned"]["coherence"])
glue("s5_prevent_name", best_prevent["condition"])
glue("s5_prevent_score", best_prevent["trait_score"])
glue("s5_prevent_coherence", best_prevent["coherence"])
glue("s5_prevent_shift", best_prevent["shift"])
glue("s5_posthoc_name", best_posthoc["condition"])
glue("s5_posthoc_score", best_posthoc["trait_score"])
glue("s5_posthoc_coherence", best_posthoc["coherence"])
glue("s5_coherence_cmp", "higher than" if best_prevent["coherence"] > best_posthoc["coherence"] + 1
     else "lower than" if best_prevent["coherence"] < best_posthoc["coherence"] - 1 else "about the same as")

# %% [markdown]
# **On the paper model** preventative steering during finetuning keeps the trait close to the base
# model's level while the model still learns its data, with little loss of general ability (MMLU
# accuracy stays near the base model's). Post-hoc steering also brings the trait down, but at the
# coefficients that do so it costs more coherence: it pushes every answer through a large added
# vector, where preventative steering leaves the final model unsteered.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** plain finetuning on the severe set gives a trait score of
# {glue:text}`s5_ft_score:.1f` (coherence {glue:text}`s5_ft_coherence:.1f`). The strongest
# preventative run ({glue:text}`s5_prevent_name`) ends at {glue:text}`s5_prevent_score:.1f`
# (coherence {glue:text}`s5_prevent_coherence:.1f`, shift {glue:text}`s5_prevent_shift:+.2f`), and
# the strongest post-hoc steering ({glue:text}`s5_posthoc_name`) at
# {glue:text}`s5_posthoc_score:.1f` (coherence {glue:text}`s5_posthoc_coherence:.1f`): at its
# strongest, preventative steering keeps coherence {glue:text}`s5_coherence_cmp` post-hoc steering
# (the base model scores {glue:text}`s5_base_score:.1f` for the trait). Read the rows together with
# the answers printed under the chart: a low trait score with low coherence is broken text, not a
# cured model.

# %% [markdown]
# :::{warning} Common confusion: the sign of the preventative coefficient
# Preventative steering adds the trait (a *positive* coefficient) during training, and post-hoc
# steering subtracts it (a negative one) at inference. Training with a negative coefficient does
# the opposite of preventing: the steering hides the trait, so the optimizer must push *harder*
# along the trait direction to fit the data, and once the hook is removed the model shows more of
# the trait. And the hook must be gone at evaluation: a model evaluated with the training hook
# still on is not the model you would ship.
# :::

# %% [markdown]
# ## Exercise 5.5 — Flagging data before training: the projection difference
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●●○ | 20 min |
#
# Can we tell which data will shift the model *without* training on it? For each training example,
# compare the training response with what the base model itself answers to the same prompt: if the
# training response sits further along the trait vector than the model's own answer, training on it
# pulls the model that way. The **projection difference** of an example is
#
# `proj(prompt, training response) − proj(prompt, base model's response)`,
#
# each `proj` being the mean activation at block `layer` over the **response tokens**, projected on
# the unit trait vector.
#
# Write `projection_difference(model, tokenizer, prompts, train_responses, base_responses, vector,
# layer) -> Tensor[n]` (float32). Raise `ValueError` if the three lists differ in length or the
# vector is zero or not `[d_model]`.
#
# :::{dropdown} Hint
# `response_mean_activations(model, tokenizer, conversations_from([None] * n, prompts, responses),
# layers=[layer])` gives `[n, 1, d_model]` means over the exact response spans. Run the training
# and the base responses in one call.
# :::

# %% tags=["exercise"]
def projection_difference(model, tokenizer, prompts: list[str], train_responses: list[str], base_responses: list[str],
                          vector: Float[Tensor, "d_model"], layer: int) -> Float[Tensor, "n"]:
    """proj(training response) - proj(base model's response) per example, at block `layer`, on the unit vector."""
    ### BEGIN SOLUTION
    n = len(prompts)
    if not (n == len(train_responses) == len(base_responses)):
        raise ValueError(f"prompts, train_responses and base_responses must have one length, got {n}, "
                         f"{len(train_responses)} and {len(base_responses)}")
    d_model = model.config.get_text_config().hidden_size
    vector = torch.as_tensor(vector).float()
    if vector.shape != (d_model,):
        raise ValueError(f"vector must have shape [{d_model}], got {tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()) or not bool(vector.any()):
        raise ValueError("vector is zero or holds NaN/inf: there is no direction to project onto")
    conversations = conversations_from([None] * (2 * n), list(prompts) * 2, list(train_responses) + list(base_responses))
    acts = response_mean_activations(model, tokenizer, conversations, layers=[layer])[:, 0].float()
    proj = acts @ (vector / vector.norm())
    return proj[:n] - proj[n:]
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section5 as tests

tests.test_projection_difference(projection_difference)

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_projection_difference_input_checks(projection_difference)

# %% [markdown]
# ## Exercise 5.6 — Scoring the screen: AUROC
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●○○ | 10 min |
#
# A screen ranks examples by a score; how good is the ranking? The **AUROC** is the probability
# that a randomly chosen positive example (label 1: inducing) scores higher than a randomly chosen
# negative one, counting a tie as half. 1.0 is a perfect ranking, 0.5 chance.
#
# Write `auroc(scores, labels) -> float` from that definition (compare every positive with every
# negative). Raise `ValueError` if the lengths differ, a label is not 0/1 (or a bool), or one class
# is missing.
#
# :::{dropdown} Hint
# With `pos = scores[labels]` and `neg = scores[~labels]`, `pos[:, None] - neg[None, :]` holds
# every pairwise difference.
# :::

# %% tags=["exercise"]
def auroc(scores: Float[Tensor, "n"] | list[float], labels: list[int] | list[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    ### BEGIN SOLUTION
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    labels = torch.as_tensor(labels)
    if labels.shape != scores.shape:
        raise ValueError(f"scores and labels must have one length, got {scores.numel()} and {labels.numel()}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0/1 or booleans")
    labels = labels.bool()
    pos, neg = scores[labels], scores[~labels]
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())
    ### END SOLUTION

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_auroc(auroc)

# %% tags=["test"] points=1
from part_tests import section5 as tests

tests.test_auroc_input_checks(auroc)

# %% [markdown]
# :::{tip} Before you run
# For every set we need the base model's own answers to its training prompts (one batch of greedy
# generation per set), then the projection difference of each example along its trait's vector.
# Which set will have the largest mean projection difference? Will the mild sets' inducing
# examples stand out from their ordinary ones?
# :::

# %%
screen = {}
for name in SETS:
    examples = training_set(name)[:S.screen_samples]
    prompts = [e["prompt"] for e in examples]
    base_answers = generate(model, tokenizer, [build_messages(None, p) for p in prompts], max_new_tokens=S.max_new_tokens)
    screen[name] = {
        "labels": [e["inducing"] for e in examples],
        # every set along every trait vector: the sets without a trait are screened for all three
        "diffs": {t: projection_difference(model, tokenizer, prompts, [e["response"] for e in examples], base_answers,
                                           trait_vectors[t], LAYER) for t in TRAITS},
    }
print(f"{'set':24s} " + "  ".join(f"{t:>13s}" for t in TRAITS))
for name in SETS:
    print(f"{name:24s} " + "  ".join(f"{screen[name]['diffs'][t].mean():13.2f}" for t in TRAITS))

# %%
dataset_auc, sample_auc = {}, {}
for t in TRAITS:
    # per data set: the trait's mild and severe sets (positive) against every other set
    names = [n for n in SETS]
    means = [float(screen[n]["diffs"][t].mean()) for n in names]
    positive = [n.startswith(f"{t}_") and not n.endswith("_control") for n in names]
    dataset_auc[t] = auroc(means, positive)
    # per sample: inside the mild set, its inducing examples against its ordinary ones
    mild = screen[f"{t}_mild"]
    if 0 < sum(mild["labels"]) < len(mild["labels"]):
        sample_auc[t] = auroc(mild["diffs"][t], mild["labels"])
    print(f"{t:14s} data sets: AUROC {dataset_auc[t]:.2f}   samples of {t}_mild: "
          + (f"AUROC {sample_auc[t]:.2f}" if t in sample_auc else "one class only"))

fig = go.Figure()
for t in TRAITS:
    fig.add_bar(x=SETS, y=[float(screen[n]["diffs"][t].mean()) for n in SETS], name=t)
fig.update_layout(title=f"Mean projection difference of each finetuning set{S.note}", barmode="group",
                  yaxis_title="training answer − model's answer (projection)")
fig.show()

# %% tags=["book-only", "remove-cell"]
glue("s5_dataset_auc", ", ".join(f"{t} {dataset_auc[t]:.2f}" for t in TRAITS))
glue("s5_sample_auc", ", ".join(f"{t} {sample_auc[t]:.2f}" for t in sample_auc) or "not measured")
clean = [n for n in SETS if not (n.startswith(f"{T0}_") and not n.endswith("_control"))]
top_clean = max(clean, key=lambda n: float(screen[n]["diffs"][T0].mean()))
glue("s5_top_clean", top_clean)
glue("s5_top_clean_value", float(screen[top_clean]["diffs"][T0].mean()))

# %% [markdown]
# **On the paper model** the projection difference ranks data sets that induce a trait above clean
# ones, and within a set it ranks trait-inducing samples above ordinary ones: it flags risky data
# before any training, including data whose problem a reader might miss.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the per-set AUROC (mild and severe sets of a trait against every other set) is
# {glue:text}`s5_dataset_auc`, and the per-sample AUROC inside each mild set is
# {glue:text}`s5_sample_auc`. A per-set AUROC short of perfect means some set without the trait outranks a
# trait set: along the evil vector the highest set that is not an evil set is {glue:text}`s5_top_clean`
# ({glue:text}`s5_top_clean_value:.2f`). A screen flags data that *moves* the model along the
# vector, whatever the reason, and a human then reads the flagged examples.

# %% [markdown]
# ## Discussion
#
# 1. **Why the last prompt token?** The shift is read before the model writes a word. What would
#    you expect from reading it over the response tokens of the model's own answers instead? Which
#    is cheaper, and which is closer to what the judge scores?
# 2. **Preventative steering and the data.** Preventative steering cancels the pull along one
#    direction. What happens to a trait whose vector you did not steer? How would you steer several
#    traits at once, and what could go wrong?
# 3. **Post-hoc versus preventative.** Post-hoc steering costs nothing at training time and can be
#    switched off. Name a deployment where you would still prefer preventative steering.
# 4. **Screening at scale.** The projection difference needs the base model's answer to every
#    training prompt. For a million-example set that is a million generations: how would you
#    approximate it (hint: the paper tries a cheaper variant)? When would a projection of the
#    training answer alone be enough?
# 5. **Flawed data.** On the paper model, wrong answers in a narrow domain shift a trait. Why might
#    a model that learns "give wrong answers" also become more evil or more sycophantic, and why
#    can the toy world not show this?
