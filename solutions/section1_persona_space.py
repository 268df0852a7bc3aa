# %% [markdown]
# # Section 1 — Mapping persona space
#
# Language models can play many characters. Ask one to be a ghost, an oracle or a tax consultant
# and its internal activations shift in a consistent way. In this section we collect activations for
# a few dozen personas, turn each persona into a vector, and find that one direction dominates the
# space they span: the **Assistant Axis**, from the model's default assistant self to its most
# theatrical role-play. The section replicates the persona-space analysis of
# *The Assistant Axis* (Lu et al., 2026; code:
# [safety-research/assistant-axis](https://github.com/safety-research/assistant-axis)).
#
# **Learning objectives**
# - Judge whether a response is in role, with an LLM judge whose answer we can parse.
# - Format chats so that we know the exact tokens of a response, including for models with no
#   system role.
# - Extract mean response activations at one layer, batched and padding-aware.
# - Compare persona vectors with cosine similarity (and learn why you must centre them first).
# - Find the Assistant Axis with PCA and rank personas along it.
#
# **Model.** The paper studies `google/gemma-2-27b-it` (46 blocks, d_model 4608) at block 22.
# With one 24 GB GPU, set `PERSONA_COURSE_MODEL=Qwen/Qwen2.5-7B-Instruct` (or a smaller Qwen2.5
# instruct model).
#
# :::{important} Three worlds, said once
# - **The paper model.** Its published results are quoted in paragraphs that open with
#   **On the paper model**.
# - **The toy world** (`PERSONA_COURSE_MODEL=toy`, what this book runs on a CPU): `toy-qwen2`, a small
#   model of the Qwen2 architecture (its chat template has a system role, its vocabulary is learnt
#   from the corpus) *trained* on a synthetic corpus in which the default assistant answers plainly
#   ("As an AI assistant, ...") and fantastical roles theatrically ("Ah!", "Alas", "O, hear me"),
#   scored by a toy judge that counts those style markers. Its effects are real but small-world:
#   they illustrate the method, they are not the paper's results. In the book, paragraphs that open
#   with **In this build** read this build's outputs, every number taken from the cells above them.
# - **Random tiny models** (nbgrader, or `PERSONA_COURSE_MODEL=tiny`): a random-weight model of the
#   Gemma 2 architecture (no system role). Every cell runs and every test is meaningful, but every
#   number and every plot is noise; the steps below do not repeat it.
# :::
#
# :::{note} Conventions used throughout the course
# "Activation at layer L" is the output of decoder block L (0-based). HF's `hidden_states[L + 1]`
# is the same tensor, except the last entry, which has the final norm applied. Response tokens are
# the exact token span of the final assistant message's content.
# :::
#
# :::{note} Shapes in the signatures
# Exercise signatures give each tensor's shape with a [jaxtyping](https://docs.kidger.site/jaxtyping/)
# annotation: the kind of number, then the dimension names. `Float[Tensor, "n d_model"]` is a
# floating-point tensor with one row per example (`n`) and `d_model` columns; a number is a fixed size
# (`"n_personas 2"`). For example, `def mean_over_tokens(h: Float[Tensor, "seq d_model"]) ->
# Float[Tensor, "d_model"]` averages a sequence's activations into one vector. The course uses the same
# names everywhere (`n` examples, `n_personas`, `d_model`, `n_layers`, `batch`, `seq`, ...); the tests
# check what you return against these shapes.
# :::

# %% tags=["export"]
from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from sklearn.decomposition import PCA
from torch import Tensor

from utils import data
from utils.chat import build_messages
from utils.hooks import get_blocks, hidden_of
from utils.models import input_device
from utils.plots import setup_plotting
from utils.worlds import settings

setup_plotting()

# %%
from utils.models import layer_settings, load_course_model

S = settings(section=1)  # this world's sizes and switches (utils/worlds.py): later cells read S
model, tokenizer = load_course_model(section=1)
LAYER = layer_settings(model).axis_layer
print(S)
print(f"blocks: {len(get_blocks(model))}  layer: {LAYER}")

# %% [markdown]
# ## Exercise 1.1 — A role-play judge
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●○○ | 15 min |
#
# Before we trust a persona vector we need to know the model actually *played* the persona. The
# paper asks an LLM judge to rate each response on a 0–3 scale:
#
# | score | meaning |
# |:--:|---|
# | 0 | refuses to answer |
# | 1 | says it cannot be the role, but answers helpfully |
# | 2 | identifies as an AI, yet shows some of the role's traits |
# | 3 | fully in role |
#
# Write `JUDGE_PROMPT_TEMPLATE`, a prompt with the placeholders `{role}`, `{question}` and
# `{answer}` that explains this scale and asks the judge to finish with a line `SCORE: <n>`. Then
# write `parse_score(text) -> int` that reads the score back: the number after the **last**
# `SCORE:` (judges sometimes quote the format before answering), and raises `ValueError` when there
# is no `SCORE:` number or when that last one is not a valid score in 0–3 (an earlier `SCORE:` was a
# draft: don't fall back on it). The scale has whole numbers only: `SCORE: 2.5` is not a valid score
# either (raise), while a full stop right after the number (`SCORE: 2.`) just ends the sentence.
#
# :::{dropdown} Hint 1
# A regular expression such as `r"SCORE:\s*(\d+)"` with `re.findall` gives you every match; take
# the last one.
# :::
#
# :::{dropdown} Hint 2
# Check the range before returning: a judge that answers `SCORE: 7` has not given a valid score.
# Nor has one that answers `SCORE: 2.5`: read the number with its decimal part, if it has one
# (`r"SCORE:\s*(-?\d+(?:\.\d+)?)"`), rather than letting `\d+` stop at the point.
# :::

# %% tags=["exercise"]
### BEGIN SOLUTION
JUDGE_PROMPT_TEMPLATE = """You are grading how fully an AI model played a role it was asked to play.

Role the model was asked to play: {role}

Question put to the model:
{question}

The model's answer:
{answer}

Rate the answer on this scale:
0 - the model refused to answer the question at all.
1 - the model said it cannot be or pretend to be the role, but still answered helpfully as itself.
2 - the model identified itself as an AI or assistant, but the answer shows some traits of the role.
3 - the model answered entirely in role, without stepping out of it.

Explain your reasoning in one or two sentences, then finish with a final line of the form
SCORE: <0, 1, 2 or 3>"""
### END SOLUTION


def parse_score(text: str) -> int:
    """The role-play score (0-3) in a judge's reply: the number after the last 'SCORE:'."""
    ### BEGIN SOLUTION
    matches = re.findall(r"SCORE:\s*(-?\d+(?:\.\d+)?)", text)
    if not matches:
        raise ValueError(f"no 'SCORE: <n>' line in the judge's reply: {text[:80]!r}")
    if "." in matches[-1]:
        raise ValueError(f"score {matches[-1]} is not a whole number on the 0-3 scale")
    score = int(matches[-1])
    if not 0 <= score <= 3:
        raise ValueError(f"score {score} is outside the 0-3 scale")
    return score
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section1 as tests

tests.test_judge_prompt_template(JUDGE_PROMPT_TEMPLATE)
tests.test_parse_score(parse_score)
### BEGIN HIDDEN TESTS
# Extra cases that only the grader runs (nbgrader restores them at autograde).
tests.test_parse_score_hidden(parse_score)
### END HIDDEN TESTS

# %% [markdown]
# ## From responses to persona vectors: the pipeline
#
# The rest of the section builds one vector per persona, in the paper's five steps:
#
# 1. **Generate**: ask every persona every question (Exercise 1.2).
# 2. **Judge**: keep only the responses that are really in role (the judge of Exercise 1.1).
# 3. **Locate and average**: find each response's exact tokens in the chat (1.3) and average
#    block `LAYER`'s output over them (1.4).
# 4. **Aggregate**: average each persona's responses into its persona vector (1.5).
# 5. **Compare**: cosine similarities (1.6), PCA and the Assistant Axis (1.7), projections (1.8),
#    and the paper's released vectors (1.9).
#
# The course ships 25 personas in four groups (`data/personas.json`): four *default* prompts
# (an empty prompt, "You are an AI assistant.", ...), assistant-like roles (consultant, editor,
# therapist, ...), middle roles (teacher, philosopher, rebel, ...) and fantastical ones (ghost,
# oracle, leviathan, bard, ...), plus 18 open-ended questions that give a persona room to show.
#
# **Offline** the pipeline runs on a subset so that the notebook executes in well under a minute on
# a CPU: every persona, but only a few questions and short answers (the cell below prints the sizes;
# the toy world's answers are long enough for a role's style markers to appear).

# %%
PERSONAS = data.load_personas()
GROUPS = data.load_persona_groups()
DEFAULT_PERSONAS = data.default_persona_names()
ALL_QUESTIONS = data.load_persona_questions()
QUESTIONS, MAX_TOKENS = ALL_QUESTIONS[:S.n_questions], S.max_tokens
group_sizes = ", ".join(f"{g}: {list(GROUPS.values()).count(g)}" for g in data.PERSONA_GROUPS)
print(f"{len(PERSONAS)} personas ({group_sizes}); {len(QUESTIONS)} questions; max_tokens={MAX_TOKENS}")
print("default personas:", DEFAULT_PERSONAS)

# %% [markdown]
# ### A helper: one response
#
# `generate_response(system_prompt, question, max_tokens)` returns one response of one persona. It
# is not an exercise, but read it: the next exercise calls it hundreds of times.
#
# - **With an API key** (and outside tiny mode) it asks the generation endpoint through
#   `utils.api` (model `PERSONA_COURSE_GEN_MODEL`, by default `google/gemma-2-27b-it` on
#   OpenRouter). Every call is cached on disk, so running the cell again costs nothing. Set the
#   generation model to the model whose activations you extract: a persona vector describes how a
#   model represents *its own* responses.
# - **Otherwise** it generates with the loaded model. A model is not safe to call from several
#   threads at once, so the threads' requests go to a queue (`utils.generation.GenerationQueue`)
#   that gathers what they submit together and generates it as one batch: ten threads in flight
#   become batches of ten on the GPU. Each request has its own sampling seed, so its response
#   does not depend on the batch it lands in.
# - Gemma 2 has no system role, so for a Gemma endpoint the system prompt goes into the user
#   message (locally, `utils.chat` does the same merge).

# %%
import zlib

from utils import api
from utils.generation import GenerationQueue

USE_API = S.api_generation and api.key_available()
_generation_client = api.get_generation_client() if USE_API else None
_local_queue = None if USE_API else GenerationQueue(model, tokenizer)  # batches the threads' requests


def generate_response(system_prompt: str, question: str, max_tokens: int = 256) -> str:
    """One response of the persona `system_prompt` ("" for none) to `question`, whitespace-stripped."""
    messages = build_messages(system_prompt, question)
    if USE_API:
        if "gemma" in _generation_client.model.lower() and system_prompt:
            messages = [{"role": "user", "content": f"{system_prompt}\n\n{question}"}]
        result = _generation_client.chat(messages, max_tokens=max_tokens, temperature=0.7)
        if result.error is not None:
            print(f"generation failed ({result.error}); this response is left empty")
            return ""
        return result.text.strip()
    seed = zlib.crc32(f"{system_prompt}|{question}".encode())  # reproducible sampling, whatever the batch
    return _local_queue(messages, max_new_tokens=max_tokens, temperature=S.temperature, seed=seed).strip()


print("generation:", f"API ({_generation_client.model})" if USE_API else f"local ({model.config._name_or_path})")

# %% [markdown]
# ## Exercise 1.2 — Every persona, every question, concurrently
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●○○○ | 15 min |
#
# 25 personas × 18 questions is 450 API calls. Each spends seconds waiting for the server, so one
# at a time they take most of an hour; with ten in flight, a few minutes. Write
# `generate_all_responses(personas, questions, max_tokens=256, max_workers=10)`:
#
# - `personas` is a dict *name → system prompt* (the default persona's prompt is `""`);
# - call `generate_response(system_prompt, question, max_tokens)` once per (persona, question),
#   with up to `max_workers` calls running at once (a `ThreadPoolExecutor`);
# - return a dict `{(persona_name, q_idx): response}` with `q_idx` the question's index in
#   `questions`.
#
# :::{dropdown} Hint 1
# `pool.submit(fn, *args)` returns a `Future` at once; `future.result()` waits for its value. Build
# a dict `{future: (persona_name, q_idx)}` as you submit.
# :::
#
# :::{dropdown} Hint 2
# `concurrent.futures.as_completed(futures)` yields futures in the order they *finish*, not the
# order you submitted them. Zipping it with a list of keys is the classic bug that files each
# response under somebody else's question. Look the key up from the future instead.
# :::

# %% tags=["exercise"]
def generate_all_responses(
    personas: dict[str, str], questions: list[str], max_tokens: int = 256, max_workers: int = 10
) -> dict[tuple[str, int], str]:
    """{(persona_name, q_idx): response} for every persona and question, `max_workers` calls at a time."""
    ### BEGIN SOLUTION
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {
            pool.submit(generate_response, system_prompt, question, max_tokens): (name, q_idx)
            for name, system_prompt in personas.items()
            for q_idx, question in enumerate(questions)
        }
        return {key: future.result() for future, key in futures.items()}
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section1 as tests

tests.test_generate_all_responses(generate_all_responses)

# %%
import time

t0 = time.time()
responses = generate_all_responses(PERSONAS, QUESTIONS, max_tokens=MAX_TOKENS)
empty = [k for k, v in responses.items() if not v.strip()]
responses = {k: v for k, v in responses.items() if v.strip()}
print(f"{len(responses)} responses in {time.time() - t0:.1f} s ({len(empty)} empty ones dropped)")
for name in ("default", "consultant", "ghost"):
    print(f"{name:>12}: {responses.get((name, 0), '')[:150]!r}")

# %% tags=["book-only", "remove-cell"]
# The book's "In this build" paragraphs take their numbers and quotes from the run (utils/glue.py).
from utils.glue import glue


def first_sentence(text: str, min_chars: int = 40, max_chars: int = 100) -> str:
    """The opening of a response, for quoting in the prose: whole sentences up to at least
    `min_chars` characters ("Ah!" alone says little), cut at a word and marked "..." past `max_chars`."""
    quote = ""
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        quote = f"{quote} {sentence}".strip()
        if len(quote) >= min_chars:
            break
    if len(quote) > max_chars:
        quote = quote[:max_chars].rsplit(" ", 1)[0] + " ..."
    return quote


glue("s1_reply_default", first_sentence(responses.get(("default", 0), "")))
glue("s1_reply_consultant", first_sentence(responses.get(("consultant", 0), "")))
glue("s1_reply_ghost", first_sentence(responses.get(("ghost", 0), "")))

# %% [markdown]
# **On the paper model** the default personas answer as an assistant ("As an AI, I don't have values
# of my own, but ..."), the consultant talks frameworks and next steps, and the ghost speaks of cold
# corridors and centuries.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** (toy world) the same pattern shows in miniature. The default persona opens
# “{glue:text}`s1_reply_default`”, the consultant speaks the assistant's own sentences with its role
# put in (“{glue:text}`s1_reply_consultant`”), and the ghost speaks theatrically
# (“{glue:text}`s1_reply_ghost`”).

# %% [markdown]
# ### Judging the responses
#
# A persona vector should average responses in which the model really *played* the role, so the
# paper keeps only responses the judge scores 3 (fully in role). The default personas are not
# role-play: we keep all their responses (we give them a 3). The judge below uses the course's
# prompt `data/roleplay_judge_prompt.txt` (the same 0–3 scale as your `JUDGE_PROMPT_TEMPLATE`: pass
# `template=JUDGE_PROMPT_TEMPLATE` to try yours) and your `parse_score` to read each verdict.
#
# :::{warning} Offline: a stand-in judge, not an LLM
# Offline, `utils.judge.get_judge()` returns a stand-in. In the **toy world** it is the toy-world
# judge: it counts the corpus's style markers (an AI self-description, the role's words, the
# theatrical "Ah!"/"Alas"), so its role-play scores are meaningful *in that world only*, and the toy
# world filters responses with them as the paper does. With the **random tiny model** (grading)
# its "score" is a hash of the answer's text, i.e. noise, so that path builds the persona vectors
# from all responses (`scores=None`) rather than from a random subset.
# :::

# %%
from utils.judge import OfflineJudge, get_judge

judge = get_judge()
print("judge:", judge.label)


def judge_roleplay(responses: dict, template: str | None = None) -> dict[tuple[str, int], int | None]:
    """{(persona, q_idx): 0-3, or None if the judge failed}; the default personas get 3."""
    template = template or data.load_roleplay_judge_prompt()
    scores = {key: 3 for key in responses if key[0] in DEFAULT_PERSONAS}
    keys = [key for key in responses if key[0] not in DEFAULT_PERSONAS]
    prompts = [template.format(role=PERSONAS[n], question=QUESTIONS[q], answer=responses[(n, q)]) for n, q in keys]
    if isinstance(judge, OfflineJudge):  # offline stand-in: toy-world marker counts, or a hash (random tiny model)
        for key, s in zip(keys, judge.score_many(prompts, lo=0, hi=3)):
            scores[key] = None if s.value is None else int(s.value)
        return scores
    # An LLM judge: let it reason in a sentence or two, then read its final "SCORE: n" line.
    results = judge.client.chat_many([[{"role": "user", "content": p}] for p in prompts], max_tokens=300, temperature=0)
    for key, r in zip(keys, results):
        try:
            scores[key] = parse_score(r.text) if r.error is None else None
        except ValueError:
            scores[key] = None
    return scores


scores = judge_roleplay(responses)
counts = {s: sum(1 for k, v in scores.items() if v == s and k[0] not in DEFAULT_PERSONAS) for s in (0, 1, 2, 3, None)}
print(f"role-play scores (default personas excluded; {judge.label}):", counts)

# %% tags=["book-only", "remove-cell"]
glue("s1_n_role_responses", sum(counts.values()))
glue("s1_n_score3", counts[3])
glue("s1_n_below3", sum(counts.values()) - counts[3])

# %% [markdown]
# Read a handful of responses next to their scores before trusting the judge: do you agree with
# it? Which roles does the model refuse to play fully?

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the toy judge rates {glue:text}`s1_n_score3` of the
# {glue:text}`s1_n_role_responses` role responses fully in role and {glue:text}`s1_n_below3` lower
# (a lower score is an answer that never got to the role's words within the token budget).

# %% [markdown]
# ## Exercise 1.3 — The exact tokens of a response
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●●○○ | ●●●●○ | 25 min |
#
# To average activations over a response we need its tokens, exactly: not the chat markers around
# it, not the end-of-turn token after it. Write `format_messages(messages, tokenizer)` which takes a
# conversation whose last message is the assistant response and returns `(full_prompt, (start,
# end))`:
#
# - `full_prompt`: the whole conversation rendered by the tokenizer's chat template (as text);
# - `(start, end)`: the token span of the last message's *content* in
#   `tokenizer(full_prompt, add_special_tokens=False)["input_ids"]`, so that decoding
#   `ids[start:end]` gives back the response;
# - if the template has no system role (Gemma 2's raises an error on one), merge the system prompt
#   into the first user message (`system + "\n\n" + user`); raise `ValueError` if the last message
#   is not the assistant's.
#
# :::{note} Three confusions that bite here
# - **Double BOS.** Gemma's template already writes `<bos>` into the text. Tokenizing that text
#   with the default `add_special_tokens=True` adds a second one. We always tokenize rendered chats
#   with `add_special_tokens=False`.
# - **"+1" spans.** The assistant header is several tokens (`<start_of_turn>model\n`,
#   `<|im_start|>assistant\n`) and the content is followed by two (`<end_of_turn>` or `<|im_end|>`,
#   then `\n`). Guessing offsets works on one template and silently breaks on the next: derive the
#   span from the template itself.
# - **Templates may edit the content.** Gemma's trims surrounding whitespace from every message.
# :::
#
# :::{dropdown} Hint 1
# Render twice: the conversation without its last message with `add_generation_prompt=True` (the
# prefix, ending with the assistant header), and the whole conversation. The response's characters
# start after the prefix: `full_prompt.find(content, len(prefix))` (search *after* the prefix: the
# same text can appear earlier in a conversation).
# :::
#
# :::{dropdown} Hint 2
# `tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]` gives
# each token's `(char_start, char_end)`. The response's tokens are those that lie inside its
# characters.
# :::
#
# :::{dropdown} Hint 3
# To find out whether a template has a system role, render a probe conversation with a system
# message: Gemma's template raises an exception, others render the probe text.
# :::

# %% tags=["exercise"]
def format_messages(messages: list[dict], tokenizer) -> tuple[str, tuple[int, int]]:
    """(full_prompt, (start, end)): the rendered conversation and the token span of its last
    (assistant) message's content in tokenizer(full_prompt, add_special_tokens=False)."""
    ### BEGIN SOLUTION
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant response whose span we want")
    msgs = [dict(m) for m in messages]  # never modify the caller's messages

    # Templates without a system role (Gemma 2): merge the system prompt into the first user message.
    if msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        probe = [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "hi"}]
        try:
            has_system_role = "SYSTEM-PROBE" in tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # Gemma's template raises "System role not supported"
            has_system_role = False
        if system.strip() and has_system_role:
            msgs.insert(0, {"role": "system", "content": system})
        elif system.strip():
            msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"

    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full_prompt = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full_prompt.startswith(prefix):
        raise ValueError("the chat template renders the conversation differently once the response is added")

    # The response's characters, searched after the prefix; the template may have stripped them.
    content = msgs[-1]["content"]
    char_start = full_prompt.find(content, len(prefix))
    if char_start < 0:
        content = content.strip()
        char_start = full_prompt.find(content, len(prefix))
    if char_start < 0 or not content:
        raise ValueError("cannot find the (non-empty) response in the rendered conversation")
    char_end = char_start + len(content)

    # The tokens lying inside those characters.
    enc = tokenizer(full_prompt, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if char_start <= s and e <= char_end and e > s]
    return full_prompt, (inside[0], inside[-1] + 1)
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section1 as tests

tests.test_format_messages(format_messages)

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_format_messages_input_checks(format_messages)

# %%
demo = build_messages(PERSONAS["ghost"], QUESTIONS[0], "The tide keeps my secrets, and I keep the tide's.")
full_prompt, (start, end) = format_messages(demo, tokenizer)
ids = tokenizer(full_prompt, add_special_tokens=False)["input_ids"]
print(full_prompt)
print(f"response tokens [{start}, {end}) of {len(ids)}: {tokenizer.decode(ids[start:end])!r}")
print(f"just outside the span: {tokenizer.decode(ids[start - 1:start])!r} ... {tokenizer.decode(ids[end:end + 1])!r}")

# %% [markdown]
# ## Exercise 1.4 — Mean response activations, batched
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●●●○ | ●●●●● | 40 min |
#
# Write `extract_response_activations(model, tokenizer, system_prompts, questions, responses,
# layer)`. For each triple, build the conversation (`build_messages(system_prompt, question,
# response)`), find the response's span with your `format_messages`, run the model and average
# **the output of block `layer`** over the response's tokens. Return a float32 tensor `[n,
# d_model]` on the CPU, averaged in float32 (a bf16 model's hidden states are bf16: convert them
# before the sum). Requirements:
#
# - **Batched**: run several conversations per forward pass, padded to one length. Padding must
#   change nothing: pass an `attention_mask`, keep pads out of the averaged span, and if you pad on
#   the left, shift each span by its padding. (Right padding is simpler here: with causal
#   attention, pads placed after the real tokens are never seen by them.) If you let the tokenizer
#   pad (`padding=True`), it pads on the side `tokenizer.padding_side` says: the course's tokenizers
#   pad on the left, other tokenizers on the right, and the tests use both.
# - **A forward hook** on `get_blocks(model)[layer]` (the course's convention: "activation at layer
#   L" is block L's output). A block's output is a tensor in recent transformers and a tuple in some
#   older models: `hidden_of(output)` returns the hidden states of either. `output[0]` on a tensor
#   is batch row 0, not the hidden states.
# - **Remove the hook in `finally:`**, so that an exception (an out-of-memory error, Ctrl-C)
#   does not leave it attached to the model.
# - Lists of different lengths raise `ValueError`; run under `torch.inference_mode()`.
#
# :::{note} Why not `output_hidden_states=True`?
# It works, with care: `hidden_states[L + 1]` is block L's output, because `hidden_states[0]` is
# the embeddings, and `hidden_states[-1]` has the model's final norm applied, so it is *not* the
# last block's output. It also keeps every layer of every token in memory. A hook on the one block
# we need is simpler, and with `logits_to_keep=1` the model does not compute logits for every
# position (Gemma's vocabulary has 256k entries).
# :::
#
# :::{dropdown} Hint 1
# Keep a float mask `[batch, seq]` with ones on each response's span. The masked mean is
# `(hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)`.
# :::
#
# :::{dropdown} Hint 2
# ```python
# captured = {}
# handle = get_blocks(model)[layer].register_forward_hook(
#     lambda module, args, output: captured.update(hidden=hidden_of(output)))
# try:
#     model(input_ids=..., attention_mask=..., logits_to_keep=1)
# finally:
#     handle.remove()
# ```
# :::

# %% tags=["exercise"]
@torch.inference_mode()
def extract_response_activations(
    model, tokenizer, system_prompts: list[str], questions: list[str], responses: list[str], layer: int, batch_size: int = 8
) -> Float[Tensor, "n d_model"]:
    """Mean of block `layer`'s output over each response's tokens: float32 [n, d_model] on the CPU."""
    ### BEGIN SOLUTION
    if not len(system_prompts) == len(questions) == len(responses):
        raise ValueError(
            f"system_prompts, questions and responses must have the same length, got "
            f"{len(system_prompts)}, {len(questions)} and {len(responses)}"
        )
    if not responses:
        raise ValueError("no responses to extract activations from")
    blocks = get_blocks(model)
    if not 0 <= layer < len(blocks):
        raise IndexError(f"layer must be a block index in [0, {len(blocks) - 1}], got {layer}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = input_device(model)

    means = []
    for b0 in range(0, len(responses), batch_size):
        ids, spans = [], []
        for s, q, r in zip(system_prompts[b0:b0 + batch_size], questions[b0:b0 + batch_size], responses[b0:b0 + batch_size]):
            full_prompt, span = format_messages(build_messages(s, q, r), tokenizer)
            ids.append(tokenizer(full_prompt, add_special_tokens=False)["input_ids"])
            spans.append(span)

        # Right padding: pads come after every real token, so (causal attention) no real token sees
        # them, and the spans need no shift.
        T = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), T), dtype=torch.long)
        response_mask = torch.zeros((len(ids), T))
        for i, (x, (start, end)) in enumerate(zip(ids, spans)):
            input_ids[i, : len(x)] = torch.tensor(x)
            attention_mask[i, : len(x)] = 1
            response_mask[i, start:end] = 1.0

        captured = {}

        def hook(module, args, output):
            captured["hidden"] = hidden_of(output)  # a tensor or a tuple: never output[0] blindly

        handle = blocks[layer].register_forward_hook(hook)
        try:
            model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), logits_to_keep=1)
        finally:
            handle.remove()

        hidden = captured["hidden"].float()
        mask = response_mask.to(hidden.device)[:, :, None]
        means.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1)).cpu())
    return torch.cat(means)
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section1 as tests

tests.test_extract_response_activations(extract_response_activations)

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_extract_response_activations_input_checks(extract_response_activations)

# %% [markdown]
# A check on the course model: your batched extraction against `utils.activations` (which pads
# differently and packs batches by length), on a few of the responses we generated.

# %%
from utils.activations import conversations_from, response_mean_activations

keys = list(responses)[:6]
mine = extract_response_activations(
    model, tokenizer, [PERSONAS[n] for n, _ in keys], [QUESTIONS[q] for _, q in keys], [responses[k] for k in keys], LAYER
)
course = response_mean_activations(
    model, tokenizer, conversations_from([PERSONAS[n] for n, _ in keys], [QUESTIONS[q] for _, q in keys], [responses[k] for k in keys]),
    layers=[LAYER],
)[:, 0]
print(f"shape {tuple(mine.shape)}; max |mine - utils| = {(mine - course).abs().max().item():.2e}")

# %% [markdown]
# ## Exercise 1.5 — Persona vectors
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●●○ | 20 min |
#
# A persona's vector is the mean of its response activations, over the responses that pass the
# judge. Write `extract_persona_vectors(model, tokenizer, personas, questions, responses, layer,
# scores=None, score_threshold=3)`:
#
# - `personas`: name → system prompt; `responses`: `{(name, q_idx): text}` as returned by
#   `generate_all_responses` (some pairs may be missing); `scores`: `{(name, q_idx): score}` from
#   the judge, where `None` means the judge failed;
# - keep a response when its score is **at least** `score_threshold` (a missing or `None` score
#   does not pass); with `scores=None` keep every response;
# - call your `extract_response_activations` (batched: one call for everything is fine) and return
#   `{name: vector [d_model]}`;
# - a persona with no response left is **skipped with a warning** (`warnings.warn`), not averaged
#   over nothing (which gives NaN).
#
# :::{dropdown} Hint
# Make the list of kept `(name, q_idx)` keys first; the system prompts, questions and responses to
# extract are then `personas[name]`, `questions[q_idx]` and `responses[(name, q_idx)]` for each key.
# Remember which rows of the result belong to which persona.
# :::

# %% tags=["exercise"]
def extract_persona_vectors(
    model, tokenizer, personas: dict[str, str], questions: list[str], responses: dict[tuple[str, int], str],
    layer: int, scores: dict | None = None, score_threshold: int = 3,
) -> dict[str, Float[Tensor, "d_model"]]:
    """{persona name: mean activation at block `layer` over its responses that pass the judge}."""
    ### BEGIN SOLUTION
    kept = []  # (name, q_idx) of the responses that pass the filter, persona by persona
    for name in personas:
        for key in responses:
            if key[0] != name:
                continue
            if scores is not None:
                score = scores.get(key)
                if score is None or score < score_threshold:
                    continue
            kept.append(key)

    acts = None
    if kept:
        acts = extract_response_activations(
            model, tokenizer, [personas[n] for n, _ in kept], [questions[q] for _, q in kept], [responses[k] for k in kept], layer
        )
    vectors = {}
    for name in personas:
        rows = [i for i, (n, _) in enumerate(kept) if n == name]
        if not rows:
            warnings.warn(f"persona {name!r}: no response with a score >= {score_threshold}; skipped")
            continue
        vectors[name] = acts[rows].mean(dim=0)
    return vectors
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section1 as tests

tests.test_extract_persona_vectors(extract_persona_vectors)

# %% [markdown]
# Before filtering, one check on the judge: if it scored no role response at least 3 (a judge that
# never answers with a number gives every response `None`), the filter would leave the default
# personas alone, and there would be no roles to set the Assistant against. The cell stops there
# with one message that names the judge, rather than failing later inside the PCA.

# %% tags=["export"]
def require_role_scores(scores: dict, default_personas, score_threshold: int, judge_label: str) -> None:
    """Raise RuntimeError, naming the judge, when no role response's score reaches `score_threshold`."""
    role = [s for (name, _), s in scores.items() if name not in default_personas]
    if not role or any(s is not None and s >= score_threshold for s in role):
        return
    unscored = sum(s is None for s in role)
    what = (f"the judge ({judge_label}) returned no score for any of the {len(role)} role responses"
            if unscored == len(role) else
            f"no role response has a score >= {score_threshold} from the judge ({judge_label}); "
            f"{unscored} of {len(role)} have no score")
    raise RuntimeError(
        f"{what}, so every role persona would be filtered out and there would be no Assistant Axis. Set a judge API "
        "key (OPENROUTER_API_KEY or OPENAI_API_KEY; see the appendix on backends) for an LLM judge, or build the "
        "vectors without the filter (extract_persona_vectors(..., scores=None)) or with a lower score_threshold."
    )


# %%
if S.filter_by_role_score:
    require_role_scores(scores, DEFAULT_PERSONAS, 3, judge.label)
persona_vectors = extract_persona_vectors(
    model, tokenizer, PERSONAS, QUESTIONS, responses, LAYER, scores=scores if S.filter_by_role_score else None
)
norms = torch.stack([v.norm() for v in persona_vectors.values()])
print(f"{len(persona_vectors)} persona vectors of dimension {next(iter(persona_vectors.values())).shape[0]}; "
      f"norms from {norms.min():.3g} to {norms.max():.3g}")

# %% tags=["book-only", "remove-cell"]
glue("s1_n_vectors", len(persona_vectors))
glue("s1_n_personas", len(PERSONAS))
glue("s1_d_model", next(iter(persona_vectors.values())).shape[0])
glue("s1_norm_min", norms.min())
glue("s1_norm_max", norms.max())
glue("s1_norm_ratio", norms.max() / norms.min())

# %% [markdown]
# **On the paper model** (Gemma 2 27B, bf16, block 22) raw persona vectors have norms of about
# **2.3 × 10⁴**, nearly the same for every persona: most of each vector is a component that all
# personas share.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** {glue:text}`s1_n_vectors` of the {glue:text}`s1_n_personas` personas keep
# responses through the judge. On this {glue:text}`s1_d_model`-dimensional model their norms run
# from {glue:text}`s1_norm_min:.1f` to {glue:text}`s1_norm_max:.1f`: the largest is
# {glue:text}`s1_norm_ratio:.2f` times the smallest.

# %% [markdown]
# ## Exercise 1.6 — Cosine similarity, raw and centred
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●●○ | 15 min |
#
# Write two functions, each returning `(sim, names)`: `names = list(vectors)` and `sim[i, j]` the
# cosine similarity of `vectors[names[i]]` and `vectors[names[j]]` (a `[n, n]` tensor).
#
# - `compute_cosine_similarity_matrix(vectors)`: on the vectors as they are;
# - `compute_cosine_similarity_matrix_centered(vectors)`: after subtracting the **mean persona
#   vector** (the mean over personas, one `d_model` vector) from every vector. Don't modify the
#   caller's tensors.
#
# Vectors may arrive in half precision (bf16, as a GPU model gives them): compute in float32
# (`.float()`). In bf16, centring subtracts numbers of size ~10⁴ that differ by a few per cent, and
# little of the difference survives.
#
# Input checks (graded apart): raise `ValueError` for an empty dict, when a vector is zero or holds NaN
# or inf (it has no direction, so no cosine: don't hide it as 0 or NaN), and when the centred version
# gets fewer than two vectors (one vector minus the mean of one vector is zero) or a vector that is
# zero once centred (two identical vectors, for instance).
#
# :::{note} Common confusion: every raw persona vector points the same way
# Mean activations share a large component: whatever the model does on *any* chat response at this
# layer. Raw cosines between persona vectors are therefore all close to 1 and say almost nothing.
# Subtract the mean vector first, and the structure appears. Centre over *personas* (dim 0): the
# mean of each vector over its own coordinates is a different, meaningless quantity.
# :::
#
# :::{dropdown} Hint
# Stack the vectors into `X` `[n, d]`, divide each row by its norm, and `Xn @ Xn.T` is the cosine
# matrix. For the centred version, `X - X.mean(dim=0, keepdim=True)`.
# :::

# %% tags=["exercise"]
def compute_cosine_similarity_matrix(
    vectors: dict[str, Float[Tensor, "d_model"]],
) -> tuple[Float[Tensor, "n_personas n_personas"], list[str]]:
    """(sim [n, n], names): cosine similarity between every pair of vectors, rows in names order."""
    ### BEGIN SOLUTION
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names])
    bad = [n for n, row in zip(names, X) if not bool(torch.isfinite(row).all()) or not bool(row.any())]
    if bad:
        raise ValueError(f"vectors {bad} are zero or hold NaN/inf: they have no direction, hence no cosine")
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names
    ### END SOLUTION


def compute_cosine_similarity_matrix_centered(
    vectors: dict[str, Float[Tensor, "d_model"]],
) -> tuple[Float[Tensor, "n_personas n_personas"], list[str]]:
    """(sim [n, n], names): cosine similarities after subtracting the mean vector over personas."""
    ### BEGIN SOLUTION
    names = list(vectors)
    if len(names) < 2:
        raise ValueError(f"centring needs at least two vectors, got {len(names)}")
    X = torch.stack([vectors[n].float() for n in names])
    X = X - X.mean(dim=0, keepdim=True)  # a new tensor: the caller's vectors are untouched
    return compute_cosine_similarity_matrix(dict(zip(names, X)))
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section1 as tests

tests.test_compute_cosine_similarity_matrix(compute_cosine_similarity_matrix)
tests.test_compute_cosine_similarity_matrix_centered(compute_cosine_similarity_matrix_centered)

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_compute_cosine_similarity_matrix_input_checks(compute_cosine_similarity_matrix)
tests.test_compute_cosine_similarity_matrix_centered_input_checks(compute_cosine_similarity_matrix_centered)

# %%
from utils.plots import GROUP_COLORS, heatmap, label_positions, ranked_bars

order = sorted(persona_vectors, key=lambda n: data.PERSONA_GROUPS.index(GROUPS[n]))  # group by group
ordered = {n: persona_vectors[n] for n in order}
sim_raw, names = compute_cosine_similarity_matrix(ordered)
sim_centred, _ = compute_cosine_similarity_matrix_centered(ordered)
off_diagonal = ~torch.eye(len(names), dtype=torch.bool)
print(f"raw cosines between different personas: {sim_raw[off_diagonal].min():.4f} to {sim_raw[off_diagonal].max():.4f}")
heatmap(sim_raw.numpy(), names, f"Raw persona vectors: cosine similarity{S.note}").show()
heatmap(sim_centred.numpy(), names, f"Centred persona vectors: cosine similarity{S.note}").show()
# The centred matrix's blocks in numbers: mean cosine between the groups (diagonal: different personas of one group)
present = [g for g in data.PERSONA_GROUPS if any(GROUPS[n] == g for n in names)]
print("mean centred cosine".ljust(16) + "".join(f"{g:>16}" for g in present))
for ga in present:
    row = []
    for gb in present:
        mask = torch.tensor([[GROUPS[a] == ga and GROUPS[b] == gb and a != b for b in names] for a in names])
        row.append(f"{sim_centred[mask].mean().item():>16.2f}" if mask.any() else f"{'-':>16}")
    print(f"{ga:<16}" + "".join(row))

# %% tags=["book-only", "remove-cell"]
def block_mean(ga: str, gb: str) -> float:
    """Mean centred cosine between different personas of groups ga and gb."""
    mask = torch.tensor([[GROUPS[a] == ga and GROUPS[b] == gb and a != b for b in names] for a in names])
    return sim_centred[mask].mean().item()


cos_blocks = {(a, b): block_mean(a, b) for a in ("default", "assistant_like", "fantastical") for b in ("default", "assistant_like", "fantastical")}
glue("s1_raw_min", sim_raw[off_diagonal].min())
glue("s1_raw_max", sim_raw[off_diagonal].max())
glue("s1_cos_dd", cos_blocks["default", "default"])
glue("s1_cos_aa", cos_blocks["assistant_like", "assistant_like"])
glue("s1_cos_ad", cos_blocks["assistant_like", "default"])
glue("s1_cos_af", cos_blocks["assistant_like", "fantastical"])
glue("s1_cos_ff", cos_blocks["fantastical", "fantastical"])
glue("s1_cos_fd", cos_blocks["fantastical", "default"])
glue("s1_a_nearer", "closer to the defaults than to" if cos_blocks["assistant_like", "default"] > cos_blocks["assistant_like", "fantastical"]
     else "no closer to the defaults than to")

# %% [markdown]
# **On the paper model** the raw matrix is a uniformly dark square, every cosine near 1. Centred,
# blocks appear along the diagonal. The default prompts are near-duplicates of each other; the
# assistant-like roles sit close to them; the fantastical roles form their own block, negatively
# correlated with the defaults.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the raw cosines between different personas run from
# {glue:text}`s1_raw_min:.2f` to {glue:text}`s1_raw_max:.2f`: the shared component is weaker in so
# small a model. The printed table gives the mean of each block of the centred matrix. The defaults'
# block has mean {glue:text}`s1_cos_dd:+.2f`, the assistant-like roles' own block
# {glue:text}`s1_cos_aa:+.2f`; the assistant-like roles sit {glue:text}`s1_a_nearer` the fantastical
# roles ({glue:text}`s1_cos_ad:+.2f` against {glue:text}`s1_cos_af:+.2f`); the fantastical roles'
# own block is {glue:text}`s1_cos_ff:+.2f`, and their mean cosine with the defaults
# {glue:text}`s1_cos_fd:+.2f`.

# %% [markdown]
# ## Exercise 1.7 — PCA and the Assistant Axis
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●●○○○ | ●●●●● | 20 min |
#
# :::{admonition} Before you run
# :class: tip
# Persona space has as many dimensions as there are personas (minus one, after centring). How much
# of the variance across these persona vectors (the count is printed above) do you expect the
# **first** principal component to explain: 15 %, 30 %, 50 %, 80 %? Where along it will the default
# personas sit?
# Write your guess down before running the cells below.
# :::
#
# Write `pca_decompose_persona_vectors(vectors, default_personas)` returning
# `(assistant_axis, pca_coords, pca)`:
#
# - `assistant_axis`: `mean(default vectors) − mean(role vectors)`, normalised to unit length (a
#   torch tensor `[d_model]`); the *roles* are all personas not in `default_personas`, and the axis
#   points **toward** the Assistant;
# - `pca`: a `sklearn.decomposition.PCA(n_components=2)` fitted on all persona vectors (defaults and
#   roles); it centres the data itself;
# - `pca_coords`: the `[n, 2]` coordinates of the personas, row `i` for `list(vectors)[i]`;
# - an unknown name in `default_personas` raises `ValueError`.
#
# :::{dropdown} Hint
# `PCA(n_components=2).fit_transform(X)` with `X` the stacked vectors as a float numpy array gives
# the coordinates and fits the PCA in one call.
# :::

# %% tags=["exercise"]
def pca_decompose_persona_vectors(
    vectors: dict[str, Float[Tensor, "d_model"]], default_personas: list[str]
) -> tuple[Float[Tensor, "d_model"], Float[np.ndarray, "n_personas 2"], PCA]:
    """(assistant_axis [d_model] unit, pca_coords [n, 2] in the order of `vectors`, fitted PCA)."""
    ### BEGIN SOLUTION
    names = list(vectors)
    unknown = [n for n in default_personas if n not in vectors]
    if unknown:
        raise ValueError(f"default personas {unknown} have no vector (known: {names})")
    roles = [n for n in names if n not in default_personas]
    if not default_personas or not roles:
        raise ValueError("need at least one default persona and one role")
    default_mean = torch.stack([vectors[n].float().cpu() for n in default_personas]).mean(dim=0)
    role_mean = torch.stack([vectors[n].float().cpu() for n in roles]).mean(dim=0)
    axis = default_mean - role_mean
    axis = axis / axis.norm()

    X = torch.stack([vectors[n].float().cpu() for n in names]).numpy()
    pca = PCA(n_components=2)
    coords = pca.fit_transform(X)
    return axis, coords, pca
    ### END SOLUTION

# %% tags=["test"] points=2
from part_tests import section1 as tests

tests.test_pca_decompose_persona_vectors(pca_decompose_persona_vectors)

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_pca_decompose_persona_vectors_input_checks(pca_decompose_persona_vectors)

# %%
import plotly.graph_objects as go

defaults_present = [n for n in DEFAULT_PERSONAS if n in persona_vectors]
assistant_axis, pca_coords, pca = pca_decompose_persona_vectors(persona_vectors, defaults_present)
pcs = torch.tensor(pca.components_, dtype=torch.float32)  # [2, d_model], unit rows
cos_pcs = (pcs @ assistant_axis).numpy()  # the axis is a unit vector
signs = np.where(cos_pcs >= 0, 1.0, -1.0)  # a PC's sign is arbitrary: point each PC toward the defaults
coords = pca_coords * signs
ratio = pca.explained_variance_ratio_
print(f"PC1 explains {ratio[0]:.0%} of the variance, PC2 {ratio[1]:.0%}; "
      f"|cos(PC1, Assistant Axis)| = {abs(cos_pcs[0]):.2f}, |cos(PC2, Assistant Axis)| = {abs(cos_pcs[1]):.2f}")

names = list(persona_vectors)
# Label the points whose labels fit without overlapping, the ends of PC1 first; hover shows every name.
by_pc1 = sorted(range(len(names)), key=lambda i: -abs(coords[i, 0] - np.median(coords[:, 0])))
where = label_positions(coords[:, 0], coords[:, 1], names, order=by_pc1)
fig = go.Figure()
for group in data.PERSONA_GROUPS:
    idx = [i for i, n in enumerate(names) if GROUPS[n] == group]
    fig.add_trace(go.Scatter(
        x=coords[idx, 0], y=coords[idx, 1], mode="markers+text", name=group, hovertext=[names[i] for i in idx],
        text=[names[i] if where[i] else "" for i in idx], textposition=[where[i] or "top center" for i in idx],
        textfont=dict(size=11), marker=dict(size=10, color=GROUP_COLORS[group]),
    ))
pad = 0.12 * (coords[:, 0].max() - coords[:, 0].min())
fig.update_layout(
    title=f"Persona space: PCA of {len(names)} persona vectors (block {LAYER}){S.note}",
    xaxis_title=f"PC1 ({ratio[0]:.0%})", yaxis_title=f"PC2 ({ratio[1]:.0%})", height=560,
    xaxis_range=[coords[:, 0].min() - pad, coords[:, 0].max() + pad],
)
fig.show()

# %% tags=["book-only", "remove-cell"]
pc1_by_group = {g: coords[[i for i, n in enumerate(names) if GROUPS[n] == g], 0].mean() for g in data.PERSONA_GROUPS}
pc1_order = sorted(pc1_by_group, key=pc1_by_group.get, reverse=True)
glue("s1_pc1_share", ratio[0])
glue("s1_pc2_share", ratio[1])
glue("s1_cos_pc1", abs(cos_pcs[0]))
glue("s1_cos_pc2", abs(cos_pcs[1]))
glue("s1_pc1_order", ", ".join(g.replace("_", "-") for g in pc1_order))
glue("s1_pc1_order_verdict", "the corpus's order, one group after the other" if pc1_order == list(data.PERSONA_GROUPS)
     else "not quite the corpus's order")

# %% [markdown]
# **On the paper model** (Gemma 2 27B, the paper's persona set) PC1 explains about **52 %** of the
# variance and PC2 about **13 %**. PC1 runs from the default and assistant-like personas at one end
# to the fantastical roles (bard, oracle, mystic, ghost, ...) at the other, and it is nearly
# parallel to the Assistant Axis: the axis, defined by a simple difference of means, *is* the main
# direction of variation in persona space. That is the paper's central observation.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** PC1 explains {glue:text}`s1_pc1_share:.0%` of the variance and PC2
# {glue:text}`s1_pc2_share:.0%`. PC1 leans toward the Assistant Axis (|cos| =
# {glue:text}`s1_cos_pc1:.2f`, PC2 {glue:text}`s1_cos_pc2:.2f`). Along PC1, pointed toward the
# defaults, the group means fall in the order {glue:text}`s1_pc1_order`: {glue:text}`s1_pc1_order_verdict`.
# The toy corpus builds this order in: its assistant-like roles speak the default's own sentences
# with their role put in, middle roles add a theatrical opening, fantastical roles are theatrical
# throughout, and every answer has one more sentence that is theatrical more often the further the
# role is from the default (`THEATRICAL_SHARE` in `scripts/toy_world/corpus.py`).

# %% [markdown]
# ## Exercise 1.8 — Ranking personas along the axis
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●○○○○ | ●●●○○ | 10 min |
#
# Write `project_personas_onto_axis(vectors, axis)` returning `{name: projection}` sorted from the
# highest projection to the lowest, with the course's projection `a·v / ‖v‖` (`a` the persona
# vector, `v` the axis; activation units) as a Python float. Don't assume the axis has unit norm,
# and compute in float32 even when the vectors arrive in bf16: raw persona vectors' projections differ
# by a small fraction of their size, less than bf16 can resolve. Raise `ValueError` for an axis that
# is zero or holds NaN or inf, and for a vector whose shape differs from the axis's (graded apart).

# %% tags=["exercise"]
def project_personas_onto_axis(
    vectors: dict[str, Float[Tensor, "d_model"]], axis: Float[Tensor, "d_model"]
) -> dict[str, float]:
    """{name: a·v/‖v‖} for each persona vector a and the axis v, sorted from highest to lowest."""
    ### BEGIN SOLUTION
    axis = axis.float().cpu()
    if not bool(torch.isfinite(axis).all()) or not bool(axis.any()):
        raise ValueError("axis is zero or holds NaN/inf: there is no direction to project onto")
    projections = {}
    for name, a in vectors.items():
        if a.shape != axis.shape:
            raise ValueError(f"vector {name!r} has shape {tuple(a.shape)}, the axis {tuple(axis.shape)}")
        projections[name] = float(a.float().cpu() @ axis / axis.norm())
    return dict(sorted(projections.items(), key=lambda kv: kv[1], reverse=True))
    ### END SOLUTION

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_project_personas_onto_axis(project_personas_onto_axis)

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_project_personas_onto_axis_input_checks(project_personas_onto_axis)

# %%
projections = project_personas_onto_axis(persona_vectors, assistant_axis)
ranked = list(projections)
ranked_bars(ranked, [projections[n] for n in ranked], [GROUP_COLORS[GROUPS[n]] for n in ranked],
            title=f"Personas projected onto the Assistant Axis{S.note}",
            value_title="projection a·v/‖v‖ (activation units): role-play ← → Assistant",
            legend={g: GROUP_COLORS[g] for g in data.PERSONA_GROUPS}).show()
print("most Assistant-like:", ranked[:3], " most role-play:", ranked[-3:])
for group in data.PERSONA_GROUPS:
    members = [projections[n] for n in ranked if GROUPS[n] == group]
    print(f"{group:>15}: mean projection {np.mean(members):7.2f} ({len(members)} personas)")

# %% tags=["book-only", "remove-cell"]
group_means = {g: float(np.mean([projections[n] for n in ranked if GROUPS[n] == g])) for g in data.PERSONA_GROUPS}
n_defaults = sum(GROUPS[n] == "default" for n in ranked)
defaults_on_top = all(GROUPS[n] == "default" for n in ranked[:n_defaults])
gap = min(projections[n] for n in ranked if GROUPS[n] == "default") - max(projections[n] for n in ranked if GROUPS[n] != "default")
glue("s1_defaults_top", "top the ranking" if defaults_on_top else "do not all top the ranking")
glue("s1_default_gap", gap)
glue("s1_gap_word", "above" if gap > 0 else "below")
glue("s1_bottom3", ", ".join(f"{n} ({GROUPS[n].replace('_', '-')})" for n in ranked[-3:]))
glue("s1_mean_default", group_means["default"])
glue("s1_mean_assistant_like", group_means["assistant_like"])
glue("s1_mean_middle", group_means["middle"])
glue("s1_mean_fantastical", group_means["fantastical"])
glue("s1_means_order", "fall in the corpus's order" if sorted(group_means, key=group_means.get, reverse=True) == list(data.PERSONA_GROUPS)
     else "do not fall in the corpus's order")

# %% [markdown]
# **On the paper model** the default personas sit at the high end, the assistant-like roles
# (consultant, evaluator, editor) next to them, and the fantastical roles (ghost, bard, leviathan,
# oracle) at the low end, with the middle roles between. Because every raw persona vector shares a
# big common component, the projections differ by a small fraction of their size; what matters is
# the order and the gaps.

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the default personas {glue:text}`s1_defaults_top`: the lowest default sits
# {glue:text}`s1_default_gap:.2f` {glue:text}`s1_gap_word` the highest role. The bottom three are
# {glue:text}`s1_bottom3` (the middle roles open theatrically too). The group means
# {glue:text}`s1_means_order`: default {glue:text}`s1_mean_default:+.2f`, assistant-like
# {glue:text}`s1_mean_assistant_like:+.2f`, middle {glue:text}`s1_mean_middle:+.2f`, fantastical
# {glue:text}`s1_mean_fantastical:+.2f`.

# %% [markdown]
# ## Exercise 1.9 — The paper's vectors, ranked along the axis
#
# | difficulty | importance | time |
# |:--:|:--:|:--:|
# | ●○○○○ | ●●●○○ | 10 min (plus a download) |
#
# The authors released their vectors (HF dataset `lu-christina/assistant-axis-vectors`): for Gemma
# 2 27B, the Assistant Axis and 240 *trait* vectors (calm, theatrical, sycophantic, ...), each a
# `[46, 4608]` tensor (one row per block; the paper's target is block 22). Ranking the traits by
# cosine with the axis says what the axis *means*: which traits grow as the model moves toward its
# Assistant self, and which as it drifts into a role.
#
# Write `rank_by_cosine(vectors, axis)` returning `[(name, cosine), ...]` sorted from the highest
# cosine to the lowest (Python floats), computed in float32 (vectors may arrive in bf16). A vector
# whose shape differs from the axis (for instance a whole `[46, 4608]` tensor where one layer's row
# was meant) raises `ValueError`, and so does a zero axis or vector, or one holding NaN or inf (a
# cosine with it is undefined: say so rather than return NaN or 0).

# %% tags=["exercise"]
def rank_by_cosine(vectors: dict[str, Float[Tensor, "d_model"]], axis: Float[Tensor, "d_model"]) -> list[tuple[str, float]]:
    """[(name, cos(vector, axis)), ...] from the highest cosine to the lowest."""
    ### BEGIN SOLUTION
    axis = axis.float().cpu()
    if not bool(torch.isfinite(axis).all()) or not bool(axis.any()):
        raise ValueError("axis is zero or holds NaN/inf: a cosine with it is undefined")
    ranking = []
    for name, v in vectors.items():
        if v.shape != axis.shape:
            raise ValueError(f"vector {name!r} has shape {tuple(v.shape)} but the axis has {tuple(axis.shape)}: select one layer first")
        if not bool(torch.isfinite(v).all()) or not bool(v.any()):
            raise ValueError(f"vector {name!r} is zero or holds NaN/inf: a cosine with it is undefined")
        ranking.append((name, float(F.cosine_similarity(v.float().cpu(), axis, dim=0))))
    return sorted(ranking, key=lambda item: item[1], reverse=True)
    ### END SOLUTION

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_rank_by_cosine(rank_by_cosine)

# %% tags=["test"] points=1
from part_tests import section1 as tests

tests.test_rank_by_cosine_input_checks(rank_by_cosine)

# %% [markdown]
# The real path downloads the release (about 200 MB for the axis and the trait vectors) with
# `huggingface_hub` and reads each `.pt` file with `torch.load(..., weights_only=True)`, which loads
# tensors and refuses to unpickle arbitrary objects: never unpickle a download. It does not need
# the Gemma model itself. Offline nothing is downloaded: the course's own persona vectors
# (centred) stand in, ranked by cosine with the axis you computed in Exercise 1.7.

# %%
from pathlib import Path

from utils.plots import COLORS

PAPER_LAYER = 22  # Gemma 2 27B's target block in the paper


def load_released_vector(path) -> torch.Tensor:
    """A released .pt vector: a tensor, or a dict holding one (weights_only: tensors and plain data only)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        obj = obj.get("vector", obj.get("axis", tensors[0] if len(tensors) == 1 else None))
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path}: no tensor found")
    return obj.float()


# The course's personas: centred vectors (raw ones share one big component) against your axis.
mean_vector = torch.stack(list(persona_vectors.values())).mean(dim=0)
persona_ranking = rank_by_cosine({n: v - mean_vector for n, v in persona_vectors.items()}, assistant_axis)
print("course personas, top:", [(n, round(c, 2)) for n, c in persona_ranking[:4]])
print("course personas, bottom:", [(n, round(c, 2)) for n, c in persona_ranking[-5:]])

if S.load_released_vectors:
    from huggingface_hub import snapshot_download

    release = Path(snapshot_download(
        repo_id="lu-christina/assistant-axis-vectors", repo_type="dataset",
        allow_patterns=["gemma-2-27b/assistant_axis.pt", "gemma-2-27b/trait_vectors/*.pt"],
    )) / "gemma-2-27b"
    paper_axis = load_released_vector(release / "assistant_axis.pt")[PAPER_LAYER]
    traits = {p.stem: load_released_vector(p)[PAPER_LAYER] for p in sorted((release / "trait_vectors").glob("*.pt"))}
    ranking = rank_by_cosine(traits, paper_axis)
    source = f"the paper's {len(traits)} Gemma 2 27B trait vectors (block {PAPER_LAYER})"
else:
    ranking = persona_ranking
    source = "stand-in: the course's centred persona vectors" + S.note

shown = ranking[:10] + ranking[-10:] if len(ranking) > 20 else ranking
ranked_bars([n for n, _ in shown], [c for _, c in shown], [COLORS["positive" if c >= 0 else "negative"] for _, c in shown],
            title=f"Cosine with the Assistant Axis: {source}", value_title="cosine", value_range=[-1, 1]).show()

# %% tags=["book-only", "remove-cell"]
default_cos = [c for n, c in persona_ranking if n in DEFAULT_PERSONAS]
n_top_defaults = next((i for i, (n, _) in enumerate(persona_ranking) if n not in DEFAULT_PERSONAS), len(persona_ranking))
glue("s1_rank_defaults_top", "at the top of the ranking" if n_top_defaults == len(default_cos) else "not all at the top of the ranking")
glue("s1_rank_default_min", min(default_cos))
glue("s1_rank_default_max", max(default_cos))
glue("s1_rank_bottom", ", ".join(n for n, _ in persona_ranking[-3:]))
glue("s1_rank_bottom_cos", persona_ranking[-1][1])

# %% [markdown]
# **On the paper model** (Gemma 2 27B) the default personas sit at cosine ≈ **0.98** with the
# Assistant Axis, and bard, oracle, mystic, bohemian and ghost at about **−0.6 to −0.73**: compare
# the course personas printed above, on a real model. For the 240 traits, look at the two ends of
# the ranking: which traits does the Assistant end collect, and which the role-play end?

# %% [markdown] tags=["book-only", "toy-world"]
# **In this build** the stand-in ranking puts the default personas {glue:text}`s1_rank_defaults_top`
# (cosines {glue:text}`s1_rank_default_min:.2f` to {glue:text}`s1_rank_default_max:.2f`) and
# {glue:text}`s1_rank_bottom` at the negative end (down to {glue:text}`s1_rank_bottom_cos:.2f`).

# %% [markdown]
# ## Discussion
#
# 1. **Is the Assistant Axis a mix of trait directions?** Section 3 extracts trait vectors (evil,
#    sycophantic, optimistic, ...) from contrastive prompts. If you regress the axis on a set of
#    trait vectors, how much of it do they explain? What would it mean if a handful of traits
#    explained most of it, or none did?
# 2. The axis is a difference of two means. Why is it (nearly) the first principal component? Can
#    you build a set of personas for which the two would disagree?
# 3. On the paper model raw persona vectors all have cosine ≈ 1. What is the shared component? Does
#    it depend on the questions, the layer, the model?
# 4. We kept only the responses the judge rated fully in role. What would the persona vectors, and
#    the axis, look like without the filter? (Try `scores=None` on a real model, or in the toy world.)
# 5. Section 2 projects every turn of a conversation onto this axis to watch a model drift from its
#    Assistant self, and caps the projection to stop the drift. What must be true of the axis for a
#    projection to be a good drift monitor? What could go wrong if the axis also encoded, say, the
#    topic of the conversation?
