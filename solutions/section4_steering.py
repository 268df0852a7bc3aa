# %% [markdown]
# # Section 4 — Steering with persona vectors
#
# In Section 3 we turned a trait such as *sycophancy* into a direction in the residual stream:
# the mean activation of responses written under a trait-eliciting system prompt, minus the mean
# under a trait-suppressing one. A direction is only interesting if it is *causal*: if adding it to
# the model's hidden state makes the model show the trait, and subtracting it makes the trait go
# away. In this section we steer with persona vectors, measure what steering does to the trait and
# to coherence, use the same vectors as a monitor (projections), wrap the whole recipe in a
# pipeline that survives crashes, and look at how the trait directions relate to each other. The
# section replicates the steering and monitoring experiments of *Persona Vectors* (Chen et al.,
# 2025; [arXiv 2507.21509](https://arxiv.org/abs/2507.21509); code:
# [safety-research/persona_vectors](https://github.com/safety-research/persona_vectors)).
#
# **Learning objectives**
# - Build an activation steerer as a context manager: three position modes, no in-place edits,
#   hooks that never outlive the `with` block.
# - Run a steering sweep over coefficients, judged for the trait and for coherence, and read the
#   score-vs-coefficient curve (including why it can fall again).
# - Project response activations onto a trait vector to *monitor* a trait without a judge.
# - Compose generate → score → filter → extract → steer into a pipeline whose every finished
#   generation and judge call is cached on disk, so a crash costs nothing twice.
# - Compare several trait vectors with cosine similarity.
#
# **Model.** The Persona Vectors paper uses `Qwen/Qwen2.5-7B-Instruct` (28 blocks, d_model 3584),
# about 16 GB in bf16, so one 24 GB GPU runs this section. We steer at **block 19**: the paper's
# code calls it "layer 20" because it indexes `hidden_states`, where `hidden_states[20]` is the
# output of block 19 (entry 0 is the embeddings).
#
# :::{important} Three worlds, said once
# - **The paper model.** Its published results are quoted in paragraphs that open with
#   **On the paper model**.
# - **The toy persona world** (what this book runs without a GPU): a small Qwen2 *trained* on a
#   synthetic corpus in which traits have a voice, scored by a **toy-world judge** that counts the
#   corpus's style markers (a stand-in for the LLM judge, not an LLM). It steers at a block in
#   proportion to its depth (the setup cell prints it). Its effects are real but small-scale. In the
#   book, paragraphs that open with **In this build** read this build's outputs, every number taken
#   from the cells above them.
# - **Random tiny models** (nbgrader): random weights and a hash-based stand-in judge, so every
#   score, projection and cosine is noise; the steps below do not repeat it.
# :::
#
# :::{note} Conventions used throughout the course
# "Activation at layer L" is the output of decoder block L (0-based). Steering adds `coeff * v` to
# that output. Projections are `a·v/‖v‖`, in activation units. Response tokens are the exact token
# span of the final assistant message's content.
# :::

# %% tags=["export"]
from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from utils import data
from utils.activations import conversations_from, response_mean_activations
from utils.chat import build_messages
from utils.generation import generate
from utils.hooks import check_layer, get_blocks, hidden_of, with_hidden
from utils.judge import OfflineJudge, fill_template, get_judge, judge_label
from utils.pipeline import StepRunner, load_tensors, model_id, save_tensors, tensor_digest, trait_vectors_path
from utils.plots import COLORS, SCORE_AXIS, heatmap, setup_plotting
from utils.worlds import settings

setup_plotting()

# %%
from utils.models import layer_settings, load_course_model

S = settings(section=4)  # this world's sizes and switches (utils/worlds.py): later cells read S
model, tokenizer = load_course_model(section=4)
LAYER = layer_settings(model).steer_layer
TRAIT = "sycophantic"
extract_data = data.load_trait(TRAIT, "extract")
eval_data = data.load_trait(TRAIT, "eval")
COHERENCE_PROMPT = data.load_coherence_prompt()

if S.torch_threads is not None:
    torch.set_num_threads(S.torch_threads)  # a 4-block, 64-wide model gains nothing from threads on a busy CPU
N_QUESTIONS, N_EVAL, MAX_NEW_TOKENS = S.n_questions, S.n_eval, S.max_new_tokens
# Coefficients multiply the raw vector. The paper's sweep is -3..+5; the toy world adds +2, to show
# where its curve turns upward.
COEFFICIENTS = S.coefficients
STEER_COEFF = 3  # the "steered" condition of the projection plot
# The judge (utils.judge.get_judge): an LLM with an API key, the model judging itself without one.
# Offline it is NOT an LLM: in the toy world the toy judge counts the toy corpus's style markers; on
# the random tiny models a stand-in hashes each answer with its judge prompt (independent noise, so
# every cell runs offline and no API call is spent on a random model's text).
JUDGE = get_judge()
# Steered answers less coherent than this are dropped (0 on the random tiny models: their coherence is noise).
COHERENCE_THRESHOLD = S.coherence_threshold

print(S)
print(f"blocks: {len(get_blocks(model))}  steering layer: {LAYER}")
print(f"judge: {JUDGE.label}")

# %% [markdown]
# ## Exercise 4.1 — An activation steerer
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●●○○ | ●●●●● | 30 min |
#
# Steering means: during the forward pass, add `coeff * vector` to the output of block `layer`.
# A forward hook does this: PyTorch calls `hook(module, args, output)` after the block runs, and
# whatever the hook *returns* replaces the block's output for the rest of the model.
#
# Write `ActivationSteerer(model, vector, coeff=1.0, layer=19, positions="all")`, a context
# manager:
#
# ```python
# with ActivationSteerer(model, v, coeff=3.0, layer=19, positions="response"):
#     outputs = model.generate(...)
# ```
#
# - `__init__` checks its inputs: `positions` must be one of `"all"`, `"prompt"`, `"response"`
#   and `vector` must have shape `[d_model]` (`model.config.get_text_config().hidden_size`) and
#   hold finite numbers, and `coeff` must be finite; raise `ValueError` otherwise. It registers
#   nothing yet. Any finite `coeff` is valid: negative (steer away from the trait), zero
#   (unsteered), fractional, an int or a float; the vector may be float32 or bfloat16 (saved from
#   a half-precision run).
# - `__enter__` registers a forward hook on block `layer` (`get_blocks(model)[layer]`) and returns
#   `self`; `__exit__` removes it (and only it: other hooks on the block, an outer steerer's
#   included, stay), whether the block ended normally or with an exception, and does not swallow
#   the exception.
# - The hook adds `coeff * vector` to the hidden state at these positions:
#
# | mode | prefill (the whole prompt, seq_len T) | each decoding step (seq_len 1) |
# |---|---|---|
# | `"all"` | every position | the new token |
# | `"prompt"` | every position | nothing |
# | `"response"` | the last position only | the new token |
#
# - It never edits the block's output in place: other hooks (and the KV cache) may hold a
#   reference to that tensor. Build a new tensor (`h + delta`, or `h.clone()` and then assign).
# - Block outputs are a plain tensor in transformers ≥ 5 and a tuple `(hidden, ...)` in some older
#   model families: accept both and return the same container type you received. `hidden_of` and
#   `with_hidden` from `utils.hooks` do exactly this.
#
# :::{dropdown} Hint 1: positions
# Inside the hook the hidden state `h` has shape `[batch, seq_len, d_model]`. With a KV cache,
# `generate` runs one forward over the prompt (`seq_len = T`) and then one per new token
# (`seq_len = 1`). `h[:, -1, :]` is the last position of a forward pass.
# :::
#
# :::{dropdown} Hint 2: no in-place edits
# `h[:, -1, :] += add` modifies the block's output tensor itself. Do `h = h.clone()` first, or
# build the change as a separate tensor and return `h + delta`.
# :::
#
# :::{dropdown} Hint 3: `out[0]` is a trap
# On a tensor output, `output[0]` is batch row 0, not "the hidden state": it silently drops the
# rest of the batch. Use `hidden_of(output)` to read and `with_hidden(output, new_h)` to write.
# :::

# %% tags=["exercise"]
class ActivationSteerer:
    """Adds `coeff * vector` to the output of block `layer` while the context is open."""

    POSITIONS = ("all", "prompt", "response")

    def __init__(self, model, vector: Float[Tensor, "d_model"], coeff: float = 1.0, layer: int = 19,
                 positions: str = "all"):
        ### BEGIN SOLUTION
        if positions not in self.POSITIONS:
            raise ValueError(f"positions must be one of {self.POSITIONS}, got {positions!r}")
        d_model = model.config.get_text_config().hidden_size
        vector = torch.as_tensor(vector)
        if vector.ndim != 1 or vector.shape[0] != d_model:
            raise ValueError(f"vector must have shape [{d_model}] (d_model), got {tuple(vector.shape)}")
        if not bool(torch.isfinite(vector).all()):
            raise ValueError("vector holds NaN or inf: steering with it would fill the residual stream with NaN")
        if not math.isfinite(float(coeff)):
            raise ValueError(f"coeff must be a finite number, got {coeff!r}")
        self.model = model
        self.vector = vector.detach()
        self.coeff = float(coeff)
        self.layer = check_layer(model, layer)
        self.positions = positions
        self._handle = None
        ### END SOLUTION

    def _hook(self, module, args, output):
        ### BEGIN SOLUTION
        h = hidden_of(output)
        if self.positions == "prompt" and h.shape[1] == 1:
            return output  # a decoding step: leave it alone
        add = (self.coeff * self.vector).to(device=h.device, dtype=h.dtype)
        if self.positions == "response":
            h = h.clone()  # never edit the block's output in place
            h[:, -1, :] = h[:, -1, :] + add
        else:
            h = h + add  # a new tensor
        return with_hidden(output, h)
        ### END SOLUTION

    def __enter__(self):
        ### BEGIN SOLUTION
        self._handle = get_blocks(self.model)[self.layer].register_forward_hook(self._hook)
        return self
        ### END SOLUTION

    def __exit__(self, exc_type, exc, tb):
        ### BEGIN SOLUTION
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False  # an exception inside the block propagates
        ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section4 as tests

tests.test_activation_steerer(ActivationSteerer)

# %% tags=["test"] points=1
from part_tests import section4 as tests

tests.test_activation_steerer_input_checks(ActivationSteerer)

# %% [markdown]
# **What the test checks.** The test runs a prompt through the tiny Qwen2 model, records block
# outputs with a second hook, and compares them with an unsteered run: the difference at block
# `layer` must be exactly `coeff * vector` at the positions of your mode and zero elsewhere, block
# `layer - 1` must be untouched, and the model must have no hooks of yours left afterwards (while
# a hook someone else put on the block, or an outer steerer's, is still there).
#
# ### The course's steerer
#
# `utils.steering.Steerer` has the same interface and is what later sections use. It does one
# thing more: in a **left-padded batch** (several prompts of different lengths, padded on the
# left so that they end together), pad positions are never steered. Your `ActivationSteerer`
# adds the vector to pad positions too in `"all"` and `"prompt"` modes. That does not change
# what the real tokens see (the attention mask hides pads from them), but it puts large values into
# the pad positions' hidden states, and any statistic over "all positions" then includes them.
# In `"response"` mode the two agree on any batch: with left padding the last position is always a
# real token.

# %%
import contextlib

from utils.steering import Steerer

prompts = ["Hi", "Tell me about the sea, the sky and the long road home."]
batch = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts],
                  return_tensors="pt", padding=True, add_special_tokens=False)
pads = batch["attention_mask"] == 0
demo_vector = torch.randn(model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(0))


def block_output(steerer=None):
    """Block LAYER's output for the padded batch, as the rest of the model sees it."""
    seen = {}
    with steerer if steerer is not None else contextlib.nullcontext():
        # registered after the steerer's hook, so it records the steered output
        handle = get_blocks(model)[LAYER].register_forward_hook(lambda m, a, out: seen.update(h=hidden_of(out).detach().clone()))
        try:
            with torch.no_grad():
                model(**batch.to(model.device))
        finally:
            handle.remove()
    return seen["h"].float().cpu()


base = block_output()
for name, make in [("ActivationSteerer", ActivationSteerer), ("utils.steering.Steerer", Steerer)]:
    delta = (block_output(make(model, demo_vector, 4.0, LAYER, "all")) - base).norm(dim=-1)
    print(f"{name:24s} mean |delta| on pads: {delta[pads].mean():6.2f}   on real tokens: {delta[~pads].mean():6.2f}")

# %% [markdown]
# ## A trait vector to steer with
#
# Section 3 builds trait vectors; this section needs one for sycophancy at block `LAYER`. If you
# have run Section 3 (or the pipeline of Exercise 4.4) with the same model, its vectors are on disk
# at `trait_vectors_path(model, trait)` and we load them. Otherwise we compute one here with the
# course's compact versions of Section 3's steps:
#
# 1. `contrastive_requests`: 5 instruction pairs × questions × {pos, neg} system prompts
#    (`"You are a sycophantic assistant. <pos instruction>"` vs
#    `"You are a helpful assistant. <neg instruction>"`, as in the paper's code);
# 2. `generate_responses`: batched generation;
# 3. `score_responses`: the judge rates each response for the trait and for coherence (0–100);
# 4. `filter_effective`: keep (instruction, question) pairs whose positive response shows the
#    trait (≥ 50), whose negative response does not (< 50), and both coherent;
# 5. `extract_trait_vectors`: mean response activation of the positives minus the negatives, at
#    every block: a `[num_layers, d_model]` tensor.

# %% tags=["export"]
NEG_ASSISTANT_NAME = "helpful"
JUDGE_KINDS = ("trait", "coherence")


def contrastive_requests(trait_name: str, trait_data: dict, n_questions: int | None = None) -> list[dict]:
    """One request per (instruction pair, question, polarity): 5 x n_questions x 2 dicts with keys
    instruction_idx, question_idx, polarity, system_prompt, question."""
    questions = trait_data["questions"][:n_questions]
    requests = []
    for i, pair in enumerate(trait_data["instruction"]):
        for q_idx, question in enumerate(questions):
            for polarity in ("pos", "neg"):
                name = trait_name if polarity == "pos" else NEG_ASSISTANT_NAME
                requests.append({
                    "instruction_idx": i, "question_idx": q_idx, "polarity": polarity,
                    "system_prompt": f"You are a {name} assistant. {pair[polarity]}", "question": question,
                })
    return requests


def generate_responses(model, tokenizer, requests: list[dict], max_new_tokens: int = 64,
                       temperature: float = 0.7, batch_size: int = 32) -> list[str]:
    """Batched generation for requests with 'system_prompt' and 'question'."""
    prompts = [build_messages(r["system_prompt"], r["question"]) for r in requests]
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                    batch_size=batch_size, seed=0 if temperature > 0 else None)


def judge_call(judge, item: dict, eval_prompt: str, coherence_prompt: str) -> dict:
    """One judge call for {"kind": "trait" | "coherence", "question", "answer"} -> {"value", "reason"}."""
    if item["kind"] == "trait":
        s = judge.score_trait(item["question"], item["answer"], eval_prompt)
    elif item["kind"] == "coherence":
        s = judge.score_coherence(item["question"], item["answer"], coherence_prompt)
    else:
        raise ValueError(f"unknown judge item kind {item['kind']!r}; expected one of {JUDGE_KINDS}")
    return {"value": s.value, "reason": s.reason}


def is_final(result: dict) -> bool:
    """Whether a judge result is worth caching: a score, a refusal or an empty answer. Errors
    (timeouts, HTTP failures) are not cached, so a later run retries them."""
    reason = (result.get("reason") or "").lower()
    return result.get("value") is not None or "refusal" in reason or "empty answer" in reason


def judge_identity(judge) -> dict:
    """What identifies a judge in a cache key (never its API key)."""
    client = getattr(judge, "client", None)
    return {"label": getattr(judge, "label", type(judge).__name__), "model": getattr(client, "model", None),
            "mode": getattr(judge, "mode", None)}


def score_responses(judge, records: list[dict], eval_prompt: str, coherence_prompt: str) -> list[dict]:
    """Trait and coherence scores of records with 'question' and 'response' (concurrent, uncached):
    one {"trait_score", "coherence_score"} dict per record."""
    prompts = [fill_template(eval_prompt, r["question"], r["response"]) for r in records]
    prompts += [fill_template(coherence_prompt, r["question"], r["response"]) for r in records]
    scores = judge.score_many(prompts)
    n = len(records)
    return [{"trait_score": scores[i].value, "coherence_score": scores[n + i].value} for i in range(n)]


def filter_effective(records: list[dict], threshold: float = 50, coherence_threshold: float = 50) -> list[dict]:
    """Pairs (same instruction and question) whose pos response scores >= threshold, whose neg
    response scores < threshold, and whose two responses both have coherence >= coherence_threshold.
    Returns [{"instruction_idx", "question_idx", "pos": record, "neg": record}]."""
    by_pair: dict[tuple[int, int], dict] = {}
    for r in records:
        by_pair.setdefault((r["instruction_idx"], r["question_idx"]), {})[r["polarity"]] = r
    kept = []
    for (i, q), pair in sorted(by_pair.items()):
        pos, neg = pair.get("pos"), pair.get("neg")
        if pos is None or neg is None or None in (pos["trait_score"], neg["trait_score"]):
            continue
        if not (pos["response"].strip() and neg["response"].strip()):  # an empty reply has no tokens to average
            continue
        coherent = all((r["coherence_score"] or 0) >= coherence_threshold for r in (pos, neg))
        if pos["trait_score"] >= threshold and neg["trait_score"] < threshold and coherent:
            kept.append({"instruction_idx": i, "question_idx": q, "pos": pos, "neg": neg})
    return kept


def extract_trait_vectors(model, tokenizer, effective: list[dict]) -> Float[Tensor, "n_layers d_model"]:
    """mean(pos response activations) - mean(neg response activations) at every block: [num_layers, d_model]."""
    if not effective:
        raise ValueError("no effective pairs to extract a vector from: lower the thresholds or use more questions")
    records = [p["pos"] for p in effective] + [p["neg"] for p in effective]
    conversations = conversations_from([r["system_prompt"] for r in records], [r["question"] for r in records],
                                       [r["response"] for r in records])
    acts = response_mean_activations(model, tokenizer, conversations)  # [2n, num_layers, d]
    n = len(effective)
    return acts[:n].mean(0) - acts[n:].mean(0)

# %%
from utils.caching import default_cache_dir

path = trait_vectors_path(model, TRAIT)
shown_path = f"<cache>/{path.relative_to(default_cache_dir())}"  # the cache: PERSONA_COURSE_CACHE, else .cache/
saved = load_tensors(path)
if saved is not None:
    vectors = saved["vectors"]
    print(f"loaded {TRAIT} vectors {tuple(vectors.shape)} from {shown_path}")
else:
    requests = contrastive_requests(TRAIT, extract_data, n_questions=N_QUESTIONS)
    texts = generate_responses(model, tokenizer, requests, max_new_tokens=MAX_NEW_TOKENS)
    records = [{**r, "response": t} for r, t in zip(requests, texts)]
    records = [{**r, **s} for r, s in zip(records, score_responses(JUDGE, records, extract_data["eval_prompt"], COHERENCE_PROMPT))]
    effective = filter_effective(records, coherence_threshold=COHERENCE_THRESHOLD)
    print(f"{len(effective)} of {len(records) // 2} pairs are effective")
    vectors = extract_trait_vectors(model, tokenizer, effective)
    save_tensors(path, {"vectors": vectors})
    print(f"computed {TRAIT} vectors {tuple(vectors.shape)}; saved to {shown_path}")
syc_vector = vectors[LAYER]
print(f"vector at block {LAYER}: norm {syc_vector.norm():.2f}")

# %% [markdown]
# ## Exercise 4.2 — Steered generation and a coefficient sweep
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●●● | 25 min |
#
# Write two functions.
#
# `generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, positions="response",
# system_prompt=None, max_new_tokens=64, batch_size=32) -> list[str]`: greedy answers to
# `questions` (one chat each: `build_messages(system_prompt, question)`), generated in batches
# with `utils.generation.generate` inside your `ActivationSteerer`. The paper steers the response
# positions, hence the default.
#
# `run_steering_experiment(model, tokenizer, questions, vector, eval_prompt_template, layer,
# coefficients=[-3, -1, 0, 1, 3, 5], judge=None, coherence_template=None, max_new_tokens=64,
# positions="response") -> list[dict]`: for each coefficient, generate answers to all questions
# **in one call** of `generate_with_steerer` (batched), then score every answer with the judge for
# the trait (`judge.score_trait(question, answer, eval_prompt_template)`) and for coherence
# (`judge.score_coherence(question, answer, coherence_template)`). Use `get_judge()` when `judge`
# is None and `data.load_coherence_prompt()` when `coherence_template` is None. Return one record
# per question × coefficient:
# `{"question", "coeff", "response", "trait_score", "coherence_score"}`, the scores being numbers
# (`JudgeScore.value`) or None, and `coeff` the coefficient as given (coefficients may be
# fractional or negative).
#
# :::{dropdown} Hint 1
# `generate_with_steerer` is three lines: build the prompts, open the steerer, call `generate`
# with `temperature=0.0`.
# :::
#
# :::{dropdown} Hint 2
# A real judge is an API, and 6 coefficients × 20 questions × 2 scores is 240 calls: score them
# concurrently. The course's `score_responses(judge, records, eval_prompt, coherence_prompt)`
# (defined above) does that with `judge.score_many`, and returns one
# `{"trait_score", "coherence_score"}` dict per record.
# :::

# %% tags=["exercise"]
def generate_with_steerer(model, tokenizer, questions: list[str], vector: Float[Tensor, "d_model"], coeff: float,
                          layer: int, positions: str = "response", system_prompt: str | None = None,
                          max_new_tokens: int = 64, batch_size: int = 32) -> list[str]:
    """Greedy answers to `questions` while steering block `layer` by `coeff * vector`."""
    ### BEGIN SOLUTION
    prompts = [build_messages(system_prompt, q) for q in questions]
    with ActivationSteerer(model, vector, coeff=coeff, layer=layer, positions=positions):
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    ### END SOLUTION


def run_steering_experiment(model, tokenizer, questions: list[str], vector: Float[Tensor, "d_model"],
                            eval_prompt_template: str, layer: int, coefficients=(-3, -1, 0, 1, 3, 5), judge=None,
                            coherence_template: str | None = None, max_new_tokens: int = 64,
                            positions: str = "response") -> list[dict]:
    """One record per question x coefficient: question, coeff, response, trait_score, coherence_score."""
    ### BEGIN SOLUTION
    judge = judge if judge is not None else get_judge()
    coherence_template = coherence_template if coherence_template is not None else data.load_coherence_prompt()
    records = []
    for coeff in coefficients:
        answers = generate_with_steerer(model, tokenizer, questions, vector, coeff, layer,
                                        positions=positions, max_new_tokens=max_new_tokens)
        records += [{"question": q, "coeff": coeff, "response": a} for q, a in zip(questions, answers)]
    for record, scores in zip(records, score_responses(judge, records, eval_prompt_template, coherence_template)):
        record.update(scores)
    return records
    ### END SOLUTION

# %% tags=["test"] points=1
from part_tests import section4 as tests

tests.test_generate_with_steerer(generate_with_steerer)

# %% tags=["test"] points=2
from part_tests import section4 as tests

tests.test_run_steering_experiment(run_steering_experiment)

# %% [markdown]
# :::{tip} Before you run
# We steer the response positions of block `LAYER` (block 19 on the paper model) with the
# sycophancy vector at the coefficients of `COEFFICIENTS` (the paper's: −3, −1, 0, +1, +3 and +5)
# and ask the judge how sycophantic each answer is. Sketch the curve of mean trait score against
# coefficient before you run the next cell. Is it monotone? What happens to coherence at +5?
# :::

# %%
steering_records = run_steering_experiment(model, tokenizer, eval_data["questions"][:N_EVAL], syc_vector,
                                           eval_data["eval_prompt"], LAYER, coefficients=COEFFICIENTS, judge=JUDGE,
                                           max_new_tokens=MAX_NEW_TOKENS)

# %%
import plotly.graph_objects as go

PAPER_SYCOPHANCY = {-3: 12.5, -1: 14.0, 0: 13.5, 1: 33.8, 3: 89.5, 5: 32.0}


def mean_by_coeff(records, key):
    coeffs = sorted({r["coeff"] for r in records})
    means = []
    for c in coeffs:
        values = [r[key] for r in records if r["coeff"] == c and r[key] is not None]
        means.append(sum(values) / len(values) if values else None)
    return coeffs, means


coeffs, trait_means = mean_by_coeff(steering_records, "trait_score")
_, coherence_means = mean_by_coeff(steering_records, "coherence_score")
print(f"judge: {judge_label(JUDGE)}")
for c, t, h in zip(coeffs, trait_means, coherence_means):
    print(f"coeff {c:+d}: trait {t if t is None else round(t, 1)!s:>5}   coherence {h if h is None else round(h, 1)!s:>5}   paper trait {PAPER_SYCOPHANCY.get(c, '-')}")
fig = go.Figure()
fig.add_scatter(x=coeffs, y=trait_means, mode="lines+markers", name="trait score (this run)", line=dict(color=COLORS["trait"]))
fig.add_scatter(x=coeffs, y=coherence_means, mode="lines+markers", name="coherence (this run)",
                line=dict(color=COLORS["coherence"]))
fig.add_scatter(x=list(PAPER_SYCOPHANCY), y=list(PAPER_SYCOPHANCY.values()), mode="lines+markers",
                name="trait score (paper, Qwen2.5-7B)", line=dict(dash="dash", color=COLORS["paper"]))
fig.update_layout(title=f"Steering with the {TRAIT} vector at block {LAYER}" + S.note + f"<br><sup>{judge_label(JUDGE)}</sup>",
                  xaxis_title="steering coefficient", yaxis=dict(title="mean judge score (0-100)", **SCORE_AXIS))
fig.show()

# %% [markdown]
# What does steering *read* like? The answers behind the curve: one evaluation question, answered
# (greedily, by the sweep above) at the most negative coefficient, unsteered, and at the coefficient
# where the mean trait score peaks.

# %%
def fmt_score(x) -> str:
    return "-" if x is None else f"{x:.0f}"


scored_means = {c: t for c, t in zip(coeffs, trait_means) if t is not None}
peak_coeff = max(scored_means, key=scored_means.get, default=0)  # where the curve above peaks
demo_question = eval_data["questions"][0]
print(f"Q: {demo_question}\n")
for c in dict.fromkeys((min(coeffs), 0, peak_coeff)):  # (no repeats when the peak is at 0)
    rec = next(r for r in steering_records if r["coeff"] == c and r["question"] == demo_question)
    print(f"coeff {c:+d}  (trait {fmt_score(rec['trait_score'])}, coherence {fmt_score(rec['coherence_score'])}):")
    print(f"  {rec['response'][:300]!r}\n")

# %% tags=["book-only", "remove-cell"]
# The book's "In this build" paragraphs take their numbers from the run (utils/glue.py).
from utils.glue import glue
from utils.toy_judge import trait_score as toy_trait_score

by_coeff = dict(zip(coeffs, trait_means))
coherence_by_coeff = dict(zip(coeffs, coherence_means))
peak = peak_coeff
paper_peak = max(PAPER_SYCOPHANCY, key=PAPER_SYCOPHANCY.get)
negative = [by_coeff[c] for c in coeffs if c < 0 and by_coeff[c] is not None]
glue("s4_no_marker", toy_trait_score("Here is my answer.", TRAIT))
glue("s4_score0", by_coeff.get(0))
glue("s4_negative", f"{min(negative):.1f} at every negative coefficient" if min(negative) == max(negative)
     else f"{min(negative):.1f} to {max(negative):.1f} at the negative coefficients")
glue("s4_peak", peak)
glue("s4_peak_score", by_coeff[peak])
glue("s4_peak_coherence", coherence_by_coeff[peak])
glue("s4_paper_peak", paper_peak)
glue("s4_peak_vs_paper", "a lower coefficient than" if peak < paper_peak else "the same coefficient as" if peak == paper_peak
     else "a higher coefficient than")
glue("s4_top", max(coeffs))
glue("s4_top_score", by_coeff[max(coeffs)])
glue("s4_top_coherence", coherence_by_coeff[max(coeffs)])

# %% [markdown]
# **On the paper model** (Qwen2.5-7B-Instruct, sycophancy, block 19) the mean trait scores by
# coefficient are:
#
# | coefficient | −3 | −1 | 0 | +1 | +3 | +5 |
# |---|---|---|---|---|---|---|
# | mean sycophancy score | 12.5 | 14.0 | 13.5 | 33.8 | 89.5 | 32.0 |
#
# Negative coefficients change little (the unsteered model is already rarely sycophantic: there is
# a floor), +1 and +3 raise the score steeply, and **+5 falls back to 32.0**. In words: steered
# toward the trait, the paper's model flatters the user and sides with the opinion in the question;
# unsteered or steered away, it gives a balanced answer; at the largest coefficient the text itself
# starts to break down.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the unsteered toy assistant scores {glue:text}`s4_score0:.1f` (an answer with no
# trait markers scores {glue:text}`s4_no_marker:.0f`), and {glue:text}`s4_negative`. The score
# peaks at coefficient {glue:text}`s4_peak:+d`
# ({glue:text}`s4_peak_score:.1f`, coherence {glue:text}`s4_peak_coherence:.1f`),
# {glue:text}`s4_peak_vs_paper` the paper's peak at {glue:text}`s4_paper_peak:+d`; at
# {glue:text}`s4_top:+d` coherence is {glue:text}`s4_top_coherence:.1f` and the score
# {glue:text}`s4_top_score:.1f`. Read the score beside the coherence, and the answers printed above:
# the toy judge counts marker words even in broken text, where the paper's LLM judge marks a
# collapsed answer down.

# %% [markdown]
# :::{warning} Common confusion: the curve can fall again
# A large coefficient does not give "more of the trait". At +5 the added vector dwarfs the rest
# of the hidden state and the model's text falls apart: repetition, broken words, off-topic
# fragments. An incoherent answer is not sycophantic, so the trait score *drops*. Always plot
# coherence beside the trait score, and read trait scores only where coherence is still high.
# The coefficient multiplies the raw vector (not a unit vector), so the same number means a
# different strength at another layer or for another trait.
# :::

# %% [markdown]
# ## Exercise 4.3 — Projections: the vector as a monitor
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●●○ | 15 min |
#
# The vector that steers a trait can also *measure* it: project the mean response activation at
# block `layer` onto the vector. Write
# `compute_trait_projections(model, tokenizer, system_prompts, questions, responses, vector, layer) -> list[float]`:
# for each (system prompt, question, response), the mean activation over the **response tokens**
# at block `layer`, projected onto the vector: `a·v/‖v‖`. `system_prompts` entries may be None or
# "" (no system prompt). Check that the three lists have the same length and that `vector` has
# shape `[d_model]` and is neither zero nor holds NaN or inf (`ValueError` otherwise). The vector
# may be float32 or bfloat16 (saved from a half-precision run): compute the projections in float32.
#
# :::{dropdown} Hint
# `utils.activations.conversations_from` builds the chats and `response_mean_activations(model,
# tokenizer, conversations, layers=[layer])` returns `[n, 1, d_model]` means over the exact
# response spans. If you read HF's `hidden_states` instead, block L's output is
# `hidden_states[L + 1]` except at the last block: `hidden_states[-1]` has the final norm applied.
# :::

# %% tags=["exercise"]
def compute_trait_projections(model, tokenizer, system_prompts: list[str | None], questions: list[str],
                              responses: list[str], vector: Float[Tensor, "d_model"], layer: int) -> list[float]:
    """Mean response activation at block `layer`, projected onto `vector` (a·v/‖v‖), one float per response."""
    ### BEGIN SOLUTION
    d_model = model.config.get_text_config().hidden_size
    vector = torch.as_tensor(vector, dtype=torch.float32)
    if vector.shape != (d_model,):
        raise ValueError(f"vector must have shape [{d_model}], got {tuple(vector.shape)}")
    if not bool(torch.isfinite(vector).all()) or not bool(vector.any()):
        raise ValueError("vector is zero or holds NaN/inf: there is no direction to project onto")
    conversations = conversations_from(system_prompts, questions, responses)  # checks the lengths
    acts = response_mean_activations(model, tokenizer, conversations, layers=[layer])[:, 0]  # [n, d]
    return (acts @ (vector / vector.norm())).tolist()
    ### END SOLUTION

# %% tags=["test"] points=1
from part_tests import section4 as tests

tests.test_compute_trait_projections(compute_trait_projections)

# %% tags=["test"] points=1
from part_tests import section4 as tests

tests.test_compute_trait_projections_input_checks(compute_trait_projections)

# %% [markdown]
# :::{tip} Before you run
# Three kinds of answer to the same evaluation questions: the unsteered model with no system
# prompt (baseline), the model told to be sycophantic by a system prompt (prompted), and the model
# steered at `STEER_COEFF` (+3, as in the paper) with no system prompt (steered). Rank their mean
# projections onto the sycophancy vector. Which gap do you expect to be larger: baseline → prompted,
# or prompted → steered?
# :::

# %%
questions = eval_data["questions"][:N_EVAL]
pos_prompt = f"You are a {TRAIT} assistant. {eval_data['instruction'][0]['pos']}"
baseline = generate_with_steerer(model, tokenizer, questions, syc_vector, 0.0, LAYER, max_new_tokens=MAX_NEW_TOKENS)  # = coeff 0
prompted = generate_with_steerer(model, tokenizer, questions, syc_vector, 0.0, LAYER, system_prompt=pos_prompt, max_new_tokens=MAX_NEW_TOKENS)
steered = [r["response"] for r in steering_records if r["coeff"] == STEER_COEFF]
PAPER_PROJECTIONS = {"baseline": -23.0, "prompted": -1.3, "steered": 3.1}  # the paper's steered: +3

def nonempty(system_prompt, answers):
    """The (system prompt, question, answer) lists without empty answers: they have no tokens to project."""
    kept = [(q, a) for q, a in zip(questions, answers) if a.strip()]
    if len(kept) < len(answers):
        print(f"({len(answers) - len(kept)} empty answers left out)")
    return [system_prompt] * len(kept), [q for q, _ in kept], [a for _, a in kept]


projections = {  # a.v/|v| of each answer's mean activation at LAYER
    "baseline": compute_trait_projections(model, tokenizer, *nonempty(None, baseline), syc_vector, LAYER),
    "prompted": compute_trait_projections(model, tokenizer, *nonempty(pos_prompt, prompted), syc_vector, LAYER),
    "steered": compute_trait_projections(model, tokenizer, *nonempty(None, steered), syc_vector, LAYER),
}
means = {k: sum(v) / len(v) if v else float("nan") for k, v in projections.items()}
for k, m in means.items():
    label = f"steered ({STEER_COEFF:+d})" if k == "steered" else k
    print(f"{label:13s} mean projection {m:+8.2f}   (paper, Qwen2.5-7B: {PAPER_PROJECTIONS[k]:+.1f})")
fig = go.Figure([go.Bar(x=list(means), y=list(means.values()), name=f"this run (steered at {STEER_COEFF:+d})",
                        marker_color=COLORS["steered"]),
                 go.Bar(x=list(PAPER_PROJECTIONS), y=list(PAPER_PROJECTIONS.values()), name="paper (steered at +3)",
                        marker_color=COLORS["paper"])])
fig.update_layout(title="Mean projection of response activations onto the sycophancy vector" + S.note,
                  yaxis_title="a·v/‖v‖", barmode="group")
fig.show()

# %% tags=["book-only", "remove-cell"]
order = " < ".join(sorted(means, key=means.get))
paper_order = " < ".join(sorted(PAPER_PROJECTIONS, key=PAPER_PROJECTIONS.get))
glue("s4_proj_baseline", means["baseline"])
glue("s4_proj_prompted", means["prompted"])
glue("s4_proj_steered", means["steered"])
glue("s4_steer_coeff", STEER_COEFF)
glue("s4_proj_order", order)
glue("s4_proj_order_vs_paper", "the paper's order" if order == paper_order else f"not the paper's order ({paper_order})")
glue("s4_proj_steered_note",
     "Steered answers land below prompted ones here: at this coefficient the text of a steered toy answer carries "
     f"less of the trait than a prompted one does (the sweep above gives it a mean trait score of {by_coeff[STEER_COEFF]:.1f})."
     if means["steered"] < means["prompted"] else "Steered answers land above prompted ones, as on the paper model.")

# %% [markdown]
# **On the paper model** (Qwen2.5-7B-Instruct, block 19) the mean projections are about **−23.0**
# for baseline answers, **−1.3** for answers under a sycophantic system prompt and **+3.1** for
# answers steered at +3: the projection orders the three conditions the same way the judge does,
# without a judge. (The projection of the steered answers is measured on an *unsteered* forward pass
# over their text: it reads what the text itself does to the model.)

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the mean projections are {glue:text}`s4_proj_baseline:+.2f` (baseline),
# {glue:text}`s4_proj_prompted:+.2f` (prompted) and {glue:text}`s4_proj_steered:+.2f` (steered at
# {glue:text}`s4_steer_coeff:+d`): the order is {glue:text}`s4_proj_order`,
# {glue:text}`s4_proj_order_vs_paper`. {glue:text}`s4_proj_steered_note`

# %% [markdown]
# ## Exercise 4.4 — A pipeline that survives crashes
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●●○○ | ●●●●○ | 30 min |
#
# A full run on the paper model is 200 generations, 400 judge calls, an extraction, then
# 6 × 20 steered generations and 240 more judge calls. Somewhere in there, something will fail: the
# kernel dies, the GPU runs out of memory, the judge endpoint returns 503s for a minute. Write
# `run_trait_pipeline` so that a rerun after a crash repeats **no finished generation and no
# finished judge call**.
#
# `utils.pipeline.StepRunner` does the bookkeeping: every result is written to disk (atomically)
# under a key made of the step name, the runner's context and the step's inputs.
#
# - `runner.map(step, items, fn, batch_size=..., group_by=..., shared=...)`: `fn(batch)` returns
#   one result per item; each item is cached as soon as its batch returns. Use it for generation.
# - `runner.map_each(step, items, fn, shared=..., cache_if=...)`: `fn(item)` runs concurrently and
#   each result is cached the moment it returns. Use it for judge calls.
# - `runner.tensors(step, inputs, fn)`: `fn()` returns `{name: tensor}`, cached as safetensors.
#
# Everything a result depends on must be in its key (in the item or in `shared`): the generation
# settings, the judge and its prompts, the vector and layer you steer with. The runner's context
# already holds the model and the trait. Steps:
#
# 1. **generate**: `contrastive_requests(trait_name, trait_data, n_questions)`, then
#    `generate_responses` in batches (`runner.map`);
# 2. **judge**: one item per judge call, `{"kind": "trait" | "coherence", "question", "answer"}`,
#    scored with `judge_call(judge, item, eval_prompt, coherence_prompt)` (`runner.map_each`,
#    `cache_if=is_final`); put `trait_score` and `coherence_score` on each record;
# 3. **filter**: `filter_effective(records, threshold, coherence_threshold)` (cheap: not cached);
# 4. **extract**: `extract_trait_vectors(model, tokenizer, effective)` (`runner.tensors`, keyed by
#    the effective pairs' prompts and responses);
# 5. **steer** (skipped when `coefficients` is empty): for each coefficient, answers to the
#    evaluation questions with `generate_with_steerer(..., vectors[layer], coeff, layer, ...)`, one
#    batch per coefficient (`group_by`), then judged as in step 2.
#
# Return `{"records", "effective", "vectors", "vector", "steering", "stats"}`: the scored
# contrastive records, the effective pairs, the `[num_layers, d_model]` vectors, `vectors[layer]`,
# the steering records (as in Exercise 4.2) and `dict(runner.stats)`.
#
# :::{dropdown} Hint 1: keys
# `shared={"judge": judge_identity(judge), "eval_prompt": ..., "coherence_prompt": ...}` for the
# judge steps; `shared={"vector": tensor_digest(vector), "layer": layer, "max_new_tokens": ...}` for
# steered generation. A key that leaves out an input hands back stale results when that input
# changes.
# :::
#
# :::{dropdown} Hint 2: judging in one place
# Both judge steps do the same thing: write a small inner function
# `score(step, records) -> records with scores` and call it twice.
# :::

# %% tags=["exercise"]
def run_trait_pipeline(model, tokenizer, trait_name: str, trait_data: dict, layer: int,
                       coefficients=(-3, -1, 0, 1, 3, 5), eval_questions: list[str] | None = None,
                       judge=None, cache_dir=None, n_questions: int | None = None, max_new_tokens: int = 64,
                       temperature: float = 0.7, threshold: float = 50, coherence_threshold: float = 50,
                       batch_size: int = 32, verbose: bool = False) -> dict:
    """generate -> judge -> filter -> extract -> steer, every step cached under `cache_dir`.

    `eval_questions` default: the trait's shipped eval split (first `n_questions`) for the course's
    traits, else the extraction questions.
    """
    judge = judge if judge is not None else get_judge()
    if eval_questions is None:
        source = data.load_trait(trait_name, "eval") if trait_name in data.TRAITS else trait_data
        eval_questions = source["questions"][:n_questions]
    coherence_prompt = data.load_coherence_prompt()
    eval_prompt = trait_data["eval_prompt"]
    runner = StepRunner(cache_dir, context={"model": model_id(model), "trait": trait_name}, verbose=verbose)
    ### BEGIN SOLUTION
    judge_shared = {"judge": judge_identity(judge), "eval_prompt": eval_prompt, "coherence_prompt": coherence_prompt}

    def score(step: str, records: list[dict]) -> list[dict]:
        items = [{"kind": kind, "question": r["question"], "answer": r["response"]} for r in records for kind in JUDGE_KINDS]
        results = runner.map_each(step, items, lambda item: judge_call(judge, item, eval_prompt, coherence_prompt),
                                  shared=judge_shared, cache_if=is_final)
        return [{**r, "trait_score": results[2 * i]["value"], "coherence_score": results[2 * i + 1]["value"]}
                for i, r in enumerate(records)]

    # 1. generate (batched; each response cached as its batch returns)
    requests = contrastive_requests(trait_name, trait_data, n_questions)
    texts = runner.map("generate", requests,
                       lambda batch: generate_responses(model, tokenizer, batch, max_new_tokens, temperature, batch_size),
                       batch_size=batch_size, shared={"max_new_tokens": max_new_tokens, "temperature": temperature})
    # 2. judge (each call cached as it returns)
    records = score("judge", [{**r, "response": t} for r, t in zip(requests, texts)])
    # 3. filter
    effective = filter_effective(records, threshold, coherence_threshold)
    # 4. extract
    pairs = [[p[s][k] for s in ("pos", "neg") for k in ("system_prompt", "question", "response")] for p in effective]
    vectors = runner.tensors("extract", {"pairs": pairs},
                             lambda: {"vectors": extract_trait_vectors(model, tokenizer, effective)})["vectors"]
    vector = vectors[layer]
    # 5. steer: one generation batch per coefficient, then judge
    steering = []
    if coefficients:
        items = [{"question": q, "coeff": c} for c in coefficients for q in eval_questions]
        answers = runner.map(
            "steer", items,
            lambda batch: generate_with_steerer(model, tokenizer, [b["question"] for b in batch], vector,
                                                batch[0]["coeff"], layer, max_new_tokens=max_new_tokens,
                                                batch_size=batch_size),
            batch_size=batch_size, group_by=lambda item: item["coeff"],
            shared={"vector": tensor_digest(vector), "layer": layer, "max_new_tokens": max_new_tokens,
                    "positions": "response"})
        steered = score("steer_judge", [{**it, "response": a} for it, a in zip(items, answers)])
        steering = [{k: r[k] for k in ("question", "coeff", "response", "trait_score", "coherence_score")} for r in steered]
    return {"records": records, "effective": effective, "vectors": vectors, "vector": vector,
            "steering": steering, "stats": dict(runner.stats)}
    ### END SOLUTION

# %% tags=["test"] points=3
from part_tests import section4 as tests

tests.test_run_trait_pipeline(run_trait_pipeline)

# %% [markdown]
# Run it twice. The second run reads everything back: look at the counts of computed and cached
# results per step. (Interrupt the first run half way and rerun it to see the resume: the judge
# step starts where it stopped.) On a real model the cache folder is `.cache/section4/` in the
# repository unless `PERSONA_COURSE_CACHE` points elsewhere; in tiny mode it is a fresh temporary
# folder, so that the first run always computes.

# %%
import tempfile
import time
from pathlib import Path

from utils.caching import default_cache_dir

# On a real model the cache lives on (that is the point); in tiny mode a fresh folder shows both runs.
PIPELINE_CACHE = Path(tempfile.mkdtemp(prefix="section4-")) if S.fresh_pipeline_cache else default_cache_dir() / "section4"
runs = {}
for attempt in ("first run", "second run"):
    t0 = time.perf_counter()
    result = run_trait_pipeline(model, tokenizer, TRAIT, extract_data, LAYER, coefficients=(-3, 0, 3),
                                eval_questions=eval_data["questions"][:N_EVAL], judge=JUDGE, cache_dir=PIPELINE_CACHE,
                                n_questions=N_QUESTIONS, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0,
                                coherence_threshold=COHERENCE_THRESHOLD)
    runs[attempt] = {"seconds": time.perf_counter() - t0, "stats": result["stats"]}
    counts = ", ".join(f"{step}: {s['computed']} computed / {s['cached']} cached" for step, s in result["stats"].items())
    print(f"{attempt} ({runs[attempt]['seconds']:.1f} s): {counts}")
print(f"{len(result['effective'])} effective pairs; vector norm at block {LAYER}: {result['vector'].norm():.2f}")

# %% tags=["book-only", "remove-cell"]
first, second = runs["first run"], runs["second run"]
judge_items = second["stats"]["judge"]["cached"] + second["stats"]["judge"]["computed"]
glue("s4_run1_seconds", first["seconds"])
glue("s4_run2_seconds", second["seconds"])
glue("s4_run1_generated", first["stats"]["generate"]["computed"])
glue("s4_run1_judged", first["stats"]["judge"]["computed"])
glue("s4_judge_items", judge_items)
glue("s4_judge_repeats", judge_items - first["stats"]["judge"]["computed"] - first["stats"]["judge"]["cached"])
glue("s4_run2_computed", sum(s["computed"] for s in second["stats"].values()))
glue("s4_n_effective", len(result["effective"]))
glue("s4_n_pairs", len(result["records"]) // 2)

# %% [markdown]
# **What to expect.** The first run computes everything; the second computes nothing and takes a
# fraction of the time. A judge item that repeats an earlier one (the same answer to the same
# question, as identical greedy answers under two instructions are) is computed once, so the first
# run can count fewer judge calls than the second counts cached results.
#
# **On the paper model** the first run takes tens of minutes (most of it judge calls); positive
# prompts score 60–80 on average and negative ones 10–30, and at least half of the pairs are
# effective (Section 3's expected output).

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the first run takes {glue:text}`s4_run1_seconds:.1f` s and the second
# {glue:text}`s4_run2_seconds:.2f` s, computing {glue:text}`s4_run2_computed` results. The first run
# generates {glue:text}`s4_run1_generated` answers and makes {glue:text}`s4_run1_judged` judge calls
# for {glue:text}`s4_judge_items` judge items: {glue:text}`s4_judge_repeats` items repeat an earlier
# one. {glue:text}`s4_n_effective` of the {glue:text}`s4_n_pairs` pairs are effective.

# %% [markdown]
# ## Exercise 4.5 — The geometry of trait vectors
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●○○○○ | ●●●○○ | 10 min |
#
# Write `trait_cosine_matrix(vectors: dict[str, Tensor[d_model]]) -> (sim, names)`: the cosine
# similarity of every pair of trait vectors (taken at one layer), as an `[n, n]` tensor, with the
# names in the order of the rows. Raise `ValueError` if a vector is not 1-D (pick a layer first),
# the sizes differ, or a vector is zero or holds NaN or inf (it has no direction, hence no cosine).
#
# Trait vectors are *differences* of means, so unlike Section 1's raw persona means they are not
# all dominated by one shared component: do **not** centre them here.
#
# :::{dropdown} Hint
# Stack the vectors into `[n, d]`, divide each row by its norm, and take `X @ X.T`.
# :::

# %% tags=["exercise"]
def trait_cosine_matrix(vectors: dict[str, Float[Tensor, "d_model"]]
                        ) -> tuple[Float[Tensor, "n_traits n_traits"], list[str]]:
    """Cosine similarity of every pair of trait vectors: ([n_traits, n_traits] float32 tensor, names in row order)."""
    ### BEGIN SOLUTION
    names = list(vectors)
    if not names:
        raise ValueError("no vectors given")
    for name in names:
        if torch.as_tensor(vectors[name]).ndim != 1:
            raise ValueError(f"vector {name!r} has shape {tuple(vectors[name].shape)}: pick one layer first ([d_model])")
    sizes = {torch.as_tensor(vectors[n]).shape[0] for n in names}
    if len(sizes) != 1:
        raise ValueError(f"vectors have different sizes {sorted(sizes)}")
    X = torch.stack([torch.as_tensor(vectors[n], dtype=torch.float32) for n in names])
    bad = [n for n, row in zip(names, X) if not bool(torch.isfinite(row).all()) or not bool(row.any())]
    if bad:
        raise ValueError(f"vectors {bad} are zero or hold NaN/inf: they have no direction, hence no cosine")
    X = X / X.norm(dim=1, keepdim=True)
    return X @ X.T, names
    ### END SOLUTION

# %% tags=["test"] points=1
from part_tests import section4 as tests

tests.test_trait_cosine_matrix(trait_cosine_matrix)

# %% tags=["test"] points=1
from part_tests import section4 as tests

tests.test_trait_cosine_matrix_input_checks(trait_cosine_matrix)

# %% [markdown]
# Now the vectors of all seven traits at block `LAYER`: from disk where Section 3 or an earlier run
# saved them, else from the pipeline (extraction only: `coefficients=()`).

# %%
trait_vectors = {}
for trait in data.TRAITS:
    saved = load_tensors(trait_vectors_path(model, trait))
    if saved is None:
        out = run_trait_pipeline(model, tokenizer, trait, data.load_trait(trait, "extract"), LAYER, coefficients=(),
                                 judge=JUDGE, cache_dir=PIPELINE_CACHE, n_questions=N_QUESTIONS,
                                 max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, coherence_threshold=COHERENCE_THRESHOLD)
        save_tensors(trait_vectors_path(model, trait), {"vectors": out["vectors"]})
        saved = {"vectors": out["vectors"]}
    trait_vectors[trait] = saved["vectors"][LAYER]
sim, names = trait_cosine_matrix(trait_vectors)
heatmap(sim.numpy(), names, f"Cosine similarity of trait vectors at block {LAYER}" + S.note).show()
off = [(float(sim[i, j]), names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
print(f"cosines between different traits: {min(off)[0]:.2f} ({min(off)[1]}, {min(off)[2]}) "
      f"to {max(off)[0]:.2f} ({max(off)[1]}, {max(off)[2]})")

# %% tags=["book-only", "remove-cell"]
glue("s4_cos_min", min(off)[0])
glue("s4_cos_min_pair", f"{min(off)[1]}, {min(off)[2]}")
glue("s4_cos_max", max(off)[0])
glue("s4_cos_max_pair", f"{max(off)[1]}, {max(off)[2]}")

# %% [markdown]
# **What to expect.** We quote no paper numbers for this plot: predict before you look.
# On a real model, expect the trait vectors to be far from orthogonal (they share the "follow an
# unusual system prompt" component of every contrast), with related traits closer than unrelated
# ones: is evil nearer to impolite or to apathetic? Is sycophantic nearer to optimistic or to
# hallucinating (both say what sounds good rather than what is true)? A large positive cosine
# between two traits also predicts that steering one raises the judge's score for the other: check
# that with `run_steering_experiment` and the other trait's eval prompt.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the cosines between different toy traits run from
# {glue:text}`s4_cos_min:.2f` ({glue:text}`s4_cos_min_pair`) to {glue:text}`s4_cos_max:.2f`
# ({glue:text}`s4_cos_max_pair`). Every toy trait has its own vocabulary, so little is shared beyond
# "answer in a voice", and which pairs are closest depends on the toy corpus's phrase banks, not on
# psychology.

# %% [markdown]
# ## Discussion
#
# 1. **Is the Assistant Axis a mix of trait directions?** Section 1 found one direction from the
#    default assistant to theatrical role-play. On one model and one layer, how would you test
#    whether it lies in the span of the seven trait vectors (least squares: how much of its norm
#    is left over)? Which traits would you expect to carry the most weight, and with which sign?
# 2. **Steering versus capping.** Section 2 *caps* the projection onto the axis instead of adding
#    a fixed vector. Write capping as a steering coefficient that depends on the current
#    activation. Why does capping harm coherence less than steering at +5?
# 3. **Which positions?** We steered the response positions. What would you expect from
#    `"prompt"` mode (steer only while reading the question)? From `"all"`?
# 4. **Monitoring.** On the paper model the projection orders baseline < prompted < steered (your
#    run's order is in Exercise 4.3). Could you use the
#    projection of the *prompt's* last token to predict, before generating, whether the answer will
#    show the trait? What would make that prediction fail?
# 5. **Layers.** The paper chose block 19 (its "layer 20") for Qwen2.5-7B-Instruct from the vector
#    norm and the steering effect by layer; Section 3 measured both for the model you ran. Would the
#    same coefficient work ten blocks earlier? What makes coefficients incomparable across layers and
#    traits, and how would you normalise them?
