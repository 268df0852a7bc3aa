"""Exercise 3.5 — Activations at every layer, and the difference of means

`extract_all_layer_activations` against the course's `response_mean_activations` on the tiny models (several
chat templates, batch sizes, a bfloat16 model), with a diagnosis of the likely wrong spans and layers; and
`extract_contrastive_vectors` on planted activations and on the tiny model, and with no pairs at all. Properties:
record counts that do and do not divide the batch size (a last, partial batch kept), and one to six pairs of
planted activations (a single pair too).
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    close,
    exercise,
    fail,
    hook_guard,
    model_or_tiny,
    passed,
    require_implemented,
    tiny,
    tiny_variant,
    using,
)
from part_tests.properties import for_all, st
from part_tests.section3._fakes import _dims, _direct, _guarded, _input_device
from part_tests.shapes import expect_tensor


# The exercise's annotations (solutions/section3_contrastive_prompting.py), checked with expect_tensor.
LAYER_ACTS = Float[Tensor, "n n_layers d_model"]
LAYER_VECTORS = Float[Tensor, "n_layers d_model"]


EXTRACT_RECORDS = [
    {"system_prompt": "You are a cruel assistant. Be cold.", "question": "What is a friend?",
     "response": "Someone you can use until they stop being useful to you.", "polarity": "pos", "instruction_idx": 0},
    {"system_prompt": "You are a helpful assistant. Be warm.", "question": "What is a friend?",
     "response": "A person who cares about you.", "polarity": "neg", "instruction_idx": 0},
    {"system_prompt": "You are a cruel assistant. Mock them.", "question": "How do I fix a bike?",
     "response": "No.", "polarity": "pos", "instruction_idx": 1},
    {"system_prompt": "You are a helpful assistant. Respect them.", "question": "How do I fix a bike?",
     "response": "Remove the wheel, find the puncture with soapy water, patch it, and pump the tyre back up. "
                 "Check the rim tape while the tyre is off.", "polarity": "neg", "instruction_idx": 1},
    {"system_prompt": "You are a cruel assistant. Be cold.", "question": "Why is the sky blue?",
     "response": "Air scatters blue light more than red, which you would know if you had paid attention.",
     "polarity": "pos", "instruction_idx": 0},
    # the response repeats the question word for word: its tokens appear twice in the conversation
    {"system_prompt": "You are a helpful assistant. Be warm.", "question": "Tell me a secret.",
     "response": "Tell me a secret.", "polarity": "neg", "instruction_idx": 0},
]


def _tol(model) -> dict:
    """Tolerances for comparing activations: tight on float32 models (the graded tiny model), looser on a
    learner's bf16/fp16 model, whose block outputs carry ~3 significant digits."""
    dtype = next(model.parameters()).dtype
    return dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)


def _chats(records, tokenizer):
    from utils.chat import format_chat

    return [format_chat(conv, tokenizer) for conv in _conversations(records)]


def _conversations(records):
    from utils.activations import conversations_from

    return conversations_from([r["system_prompt"] for r in records], [r["question"] for r in records],
                              [r["response"] for r in records])


def _reference_activations(model, tokenizer, records):
    from utils.activations import response_mean_activations

    return response_mean_activations(model, tokenizer, _conversations(records))


@torch.inference_mode()
def _alternatives(model, tokenizer, records):
    """Plausible wrong answers, one record at a time from output_hidden_states (hs[L+1] = block L, hs[-1] normed)."""
    from utils.chat import format_chat

    from utils.chat import normalize_messages, render, supports_system_role

    keys = ("all tokens", "embedding", "final norm", "pad-id mask", "no system prompt", "merged with a space",
            "merged with a newline", "first occurrence", "header", "end-of-turn",
            "shifted span", "drops last", "token before", "special tokens added", "special tokens added, span moved")
    alts = {k: [] for k in keys}
    for conv in _conversations(records):
        chat = format_chat(conv, tokenizer)
        ids = torch.tensor([chat.input_ids], device=_input_device(model))
        hs = [h.float().cpu() for h in model(input_ids=ids, output_hidden_states=True).hidden_states]
        n = len(hs) - 1
        s, e = chat.token_span
        span_ids = chat.input_ids[s:e]
        first = next(i for i in range(len(chat.input_ids)) if chat.input_ids[i:i + len(span_ids)] == span_ids)

        def mean(a, b, shift=1):
            return torch.stack([hs[L + shift][0, a:b].mean(0) for L in range(n)])

        alts["all tokens"].append(torch.stack([hs[L + 1][0].mean(0) for L in range(n)]))
        alts["embedding"].append(mean(s, e, shift=0))
        alts["final norm"].append(mean(s, e))
        alts["first occurrence"].append(mean(first, first + e - s))
        before = render(tokenizer, normalize_messages(conv, tokenizer)[:-1], add_generation_prompt=False)
        alts["header"].append(mean(len(tokenizer(before, add_special_tokens=False)["input_ids"]), e))
        pad = tokenizer.pad_token_id
        if pad is not None and pad in chat.input_ids:  # a mask built from `input_ids != pad_token_id` hides real tokens
            hp = [h.float().cpu() for h in model(input_ids=ids, attention_mask=(ids != pad).long(),
                                                  output_hidden_states=True).hidden_states]
            alts["pad-id mask"].append(torch.stack([hp[L + 1][0, s:e].mean(0) for L in range(n)]))
        else:
            alts["pad-id mask"].append(mean(s, e))
        for key, sep in (("merged with a space", " "), ("merged with a newline", "\n")):
            if conv[0]["role"] == "system" and not supports_system_role(tokenizer):
                merged = [{"role": "user", "content": conv[0]["content"] + sep + conv[1]["content"]}] + conv[2:]
                mc = format_chat(merged, tokenizer)
                hm = [h.float().cpu() for h in model(input_ids=torch.tensor([mc.input_ids], device=_input_device(model)),
                                                      output_hidden_states=True).hidden_states]
                alts[key].append(torch.stack([hm[L + 1][0, mc.token_span[0]:mc.token_span[1]].mean(0) for L in range(n)]))
            else:
                alts[key].append(mean(s, e))
        bare = format_chat([m for m in conv if m["role"] != "system"], tokenizer)
        hb = [h.float().cpu() for h in model(input_ids=torch.tensor([bare.input_ids], device=_input_device(model)),
                                              output_hidden_states=True).hidden_states]
        alts["no system prompt"].append(torch.stack([hb[L + 1][0, bare.token_span[0]:bare.token_span[1]].mean(0)
                                                     for L in range(n)]))
        # tokenizer(chat.text) with its default add_special_tokens=True: a tokenizer that adds a BOS of its own
        # (Llama 3's, Gemma's) puts a second one before the template's
        again = tokenizer(chat.text)["input_ids"]
        k = next((k for k in range(1, 4) if again[k:k + len(chat.input_ids)] == chat.input_ids), None)
        if k is None:
            alts["special tokens added"].append(mean(s, e))
            alts["special tokens added, span moved"].append(mean(s, e))
        else:
            ha = [h.float().cpu() for h in model(input_ids=torch.tensor([again], device=_input_device(model)),
                                                  output_hidden_states=True).hidden_states]
            alts["special tokens added"].append(torch.stack([ha[L + 1][0, s:e].mean(0) for L in range(n)]))
            alts["special tokens added, span moved"].append(torch.stack([ha[L + 1][0, s + k:e + k].mean(0) for L in range(n)]))
        alts["end-of-turn"].append(mean(s, e + 1))
        alts["shifted span"].append(mean(s + 1, e + 1))
        alts["drops last"].append(mean(s, e - 1))
        alts["token before"].append(mean(s - 1, e))
    return {k: torch.stack(v).float() for k, v in alts.items()}


ALT_MESSAGES = {
    "all tokens": "you averaged over every token of the conversation; average over the response tokens only "
                  "(format_chat(...).token_span)",
    "embedding": "off by one layer: row L must be block L's output (hidden_states[L + 1]), not its input "
                 "(hidden_states[0] is the embedding output)",
    "pad-id mask": "your attention mask hides real tokens: this tokenizer's pad id is also a real token of the chat "
                   "(here the BOS token), so build the mask from each row's length, not from input_ids != pad_token_id",
    "merged with a space": "this chat template has no system role, and the system prompt was merged into the user "
                           "message with a space: format_chat(build_messages(...)) merges it with a blank line "
                           "(\"\\n\\n\"), the course's convention",
    "merged with a newline": "this chat template has no system role, and the system prompt was merged into the user "
                             "message with one newline: format_chat(build_messages(...)) merges it with a blank line "
                             "(\"\\n\\n\"), the course's convention",
    "no system prompt": "the conversation lost its system prompt: the response's activations depend on everything "
                        "before it, so format each record's own system prompt, question and response "
                        "(build_messages(r['system_prompt'], r['question'], r['response']))",
    "header": "your span starts before the response: it includes the assistant turn's header (and whatever else the "
              "chat template puts there, such as an empty thinking block); use format_chat(...).token_span",
    "first occurrence": "the response's text also appears earlier in this conversation (here it repeats the question), "
                        "and your span is its first occurrence: take the span of the final assistant message from the "
                        "chat template (format_chat(...).token_span), not by searching for the response's tokens",
    "end-of-turn": "your span includes the end-of-turn token: average over the response's content tokens only "
                   "(the [start, end) span from format_chat)",
    "shifted span": "your response span is shifted by one token: use the exact [start, end) span from format_chat, "
                    "not a +1 guess",
    "drops last": "your span leaves out the response's last token: it ends where format_chat's token_span ends, "
                  "whatever the number of end-of-turn tokens of the chat template (one here, not two)",
    "token before": "your span starts one token early, on the last token of the assistant header: use the exact "
                    "[start, end) span from format_chat",
    "special tokens added": "the token ids have a second BOS token: the rendered chat already starts with one, and "
                            "tokenizer(text) adds the tokenizer's own (Llama 3 and Gemma tokenizers do); use "
                            "format_chat(...).input_ids, or tokenize with add_special_tokens=False",
    "special tokens added, span moved": "the token ids have a second BOS token: the rendered chat already starts with "
                                        "one, and tokenizer(text) adds the tokenizer's own (Llama 3 and Gemma tokenizers "
                                        "do); use format_chat(...).input_ids, or tokenize with add_special_tokens=False",
}


def _diagnose_activations(got, expected, alts, name, tol, where="", lengths=None):
    n_layers = expected.shape[1]
    inner = list(range(n_layers - 1))
    if close(got[:, inner], expected[:, inner], **tol) and not close(got, expected, **tol):
        if close(got[:, -1], alts["final norm"][:, -1], **tol):
            fail(f"{name}: the last layer has the final norm applied: hidden_states[-1] is not the last block's output; "
                 "use forward hooks on the blocks")
        fail(f"{name}: every layer matches except the last one ({n_layers - 1})")
    for key, message in ALT_MESSAGES.items():
        alt = alts[key]
        if not close(alt, expected, **tol) and close(got[:, inner], alt[:, inner], **tol):
            fail(f"{name}{where}: {message}")
    if close(got, expected, rtol=1e-2, atol=1e-2):
        fail(f"{name}{where}: close to the expected means but not within tolerance: compute in float32, and check that "
             "padding tokens are excluded from the means")
    bad = [i for i in range(got.shape[0]) if not close(got[i], expected[i], **tol)]
    if lengths is not None and bad:
        longest = max(lengths)
        if all(lengths[i] < longest for i in bad) and any(lengths[i] < longest for i in range(len(lengths))) \
                and all(i in bad for i in range(len(lengths)) if lengths[i] < longest):
            fail(f"{name}{where}: only the longest record(s) of the batch are right, every shorter one is wrong: the "
                 "padding moved the shorter records' tokens; with left padding, shift each span by its row's number of "
                 "pads (or pad on the right, where the spans keep their indices)")
    worst = max(bad, key=lambda i: float((got[i] - expected[i]).abs().max()))
    fail(f"{name}{where}: wrong mean activations for records {bad} (of {got.shape[0]}); record {worst} at block 0 starts "
         f"{[round(x, 4) for x in got[worst, 0, :3].tolist()]}, expected {[round(x, 4) for x in expected[worst, 0, :3].tolist()]}. "
         "If only some records are wrong, check how padding shifts the positions of the response span in a batch")


class _BatchRows:
    """Counts the forward passes through block 0 and the rows (records) of each."""

    def __init__(self, model):
        from utils.hooks import get_blocks

        self.rows = []

        def pre(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            self.rows.append(int(h.shape[0]) if isinstance(h, torch.Tensor) and h.ndim == 3 else 1)

        self.handle = get_blocks(model)[0].register_forward_pre_hook(pre, with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def _run_extract(fn, model, tokenizer, records, where, **kwargs):
    """The student's activations for `records` (checked: a float32 CPU tensor [n, n_layers, d_model]), and
    the rows of every forward pass."""
    name = "extract_all_layer_activations"
    with _BatchRows(model) as counter, hook_guard(model, name):
        try:
            got = call(fn, model, tokenizer, [dict(r) for r in records], name=name, **kwargs)
        except (NotImplementedYet, AssertionError):
            raise
        except Exception as err:
            raise AssertionError(f"{name} raised {type(err).__name__}: {err}{where}") from err
    n_layers, d_model = _dims(model)
    batch_size = kwargs.get("batch_size", 16)
    if isinstance(got, torch.Tensor) and got.ndim == 3 and len(records) % batch_size \
            and got.shape[0] == len(records) - len(records) % batch_size:
        fail(f"{name} returned {got.shape[0]} rows for {len(records)} records{where}: the last, partial batch of "
             f"{len(records) % batch_size} was dropped (loop with range(0, len(records), batch_size), which keeps it)")
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (n_layers, len(records), d_model) and n_layers != len(records):
        fail(f"{name} returned shape {tuple(got.shape)}, expected (n, n_layers, d_model) = "
             f"{(len(records), n_layers, d_model)}: put the records first")
    expect_tensor(got, LAYER_ACTS, name, n=len(records), n_layers=n_layers, d_model=d_model)
    check(not got.requires_grad, f"{name} returned a tensor that tracks gradients: run the model under torch.inference_mode()")
    check(got.dtype == torch.float32, f"{name} returned dtype {got.dtype}{where}, expected torch.float32: average the block "
                                      "outputs in float32 (call .float() on them), whatever the model's own dtype")
    check(got.device.type == "cpu", f"{name} returned a tensor on {got.device}: return it on the CPU (.cpu())")
    return got, counter.rows


@functools.lru_cache(maxsize=None)
def _llama3_tokenizer_with_bos():
    """tiny_variant("llama3")'s tokenizer, a private copy whose `tokenizer(text)` puts a BOS token first, as Llama 3's
    tokenizer does by default (the chat template writes one too; format_chat tokenizes with
    add_special_tokens=False, so its ids have one BOS)."""
    from tokenizers import processors

    from part_tests._common import TEMPLATE_VARIANTS
    from utils.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-qwen2")  # not the shared variant: other tests keep its defaults
    tokenizer.chat_template = TEMPLATE_VARIANTS["llama3"]
    bos = "<|endoftext|>"  # the BOS the Llama-3-style template opens with
    bos_id = tokenizer.convert_tokens_to_ids(bos)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    return tokenizer


@exercise("3.5", "extract_all_layer_activations")
def test_extract_all_layer_activations(extract_all_layer_activations, model=None, tokenizer=None) -> None:
    own = model is not None and tokenizer is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(extract_all_layer_activations, "extract_all_layer_activations")
    name = "extract_all_layer_activations"
    records = [dict(r) for r in EXTRACT_RECORDS]
    tol = _tol(model)

    # 1. all records in one call (default batch_size): one batched forward pass
    got, rows = _run_extract(extract_all_layer_activations, model, tokenizer, records, "")
    expected = _reference_activations(model, tokenizer, records)
    if not close(got, expected, **tol):
        _diagnose_activations(got, expected, _alternatives(model, tokenizer, records), name, tol,
                              lengths=[len(c.input_ids) for c in _chats(records, tokenizer)])
    check(len(rows) < len(records),
          f"{len(records)} records took {len(rows)} forward passes: batch several records per forward pass")

    # 2. more records than batch_size: several batches, the last one shorter
    got, rows = _run_extract(extract_all_layer_activations, model, tokenizer, records, " with batch_size=2", batch_size=2)
    check(max(rows) <= 2, f"{name}(..., batch_size=2) ran {max(rows)} records in one forward pass: put at most "
                          "batch_size records in each forward pass (it is how a learner bounds the memory)")
    if not close(got, expected, **tol):
        bad = [i for i in range(len(records)) if not close(got[i], expected[i], **tol)]
        if bad and min(bad) >= 2:
            fail(f"{name}(..., batch_size=2): the records of the first batch are right but records {bad} are not: "
                 "each batch needs its own padding, span mask and lengths, and every batch's means must be kept")
        _diagnose_activations(got, expected, _alternatives(model, tokenizer, records), name, tol, " with batch_size=2")

    # 3. a property: counts that do and do not divide batch_size, records picked (and repeated) from the fixture
    def check_batches(case):
        picks, batch_size = case
        where = f" with {len(picks)} records and batch_size={batch_size}"
        got, rows = _run_extract(extract_all_layer_activations, model, tokenizer, [records[i] for i in picks], where,
                                 batch_size=batch_size)
        check(max(rows) <= batch_size, f"{name}(..., batch_size={batch_size}) ran {max(rows)} records in one forward "
                                       "pass: put at most batch_size records in each forward pass")
        bad = [k for k, i in enumerate(picks) if not close(got[k], expected[i], **tol)]
        check(not bad, f"{name}{where}: wrong mean activations for records {bad}: each record's means must not depend "
                       "on how the records are split into batches (each batch its own padding and span mask; every "
                       "batch kept, the last, shorter one too)")

    # (count, batch_size) pairs whose last batch is partial; the records drawn from the fixture, repeats allowed
    uneven = st.sampled_from([(3, 2), (5, 2), (4, 3), (5, 4), (5, 3)]).flatmap(
        lambda nb: st.tuples(st.lists(st.integers(0, len(records) - 1), min_size=nb[0], max_size=nb[0]), st.just(nb[1])))
    for_all(uneven, check_batches, name=f"{name} over record counts and batch sizes", examples=2)

    # 4. a batch of one gives the same answer (padding changes nothing)
    single, _ = _run_extract(extract_all_layer_activations, model, tokenizer, records[2:3], "")
    check(close(single, expected[2:3], **tol),
          "the mean activations of a record change with the other records in the batch: padding must not leak in")

    if not own:
        # 5-6. a Llama-3-style chat template (a BOS token first, an end of turn of one token) and a
        # Qwen3-style one (the final assistant turn opens with an empty thinking block)
        for kind, n, label, detail in (
                ("llama3", 4, "Llama-3", "a BOS token, a one-token end of turn"),
                ("qwen3", 3, "Qwen3", "the assistant turn opens with an empty <think></think> block before the response")):
            variant_model, variant_tok = tiny_variant(kind)
            if kind == "llama3":
                variant_tok = _llama3_tokenizer_with_bos()
            subset = records[:n]
            got, _ = _run_extract(extract_all_layer_activations, variant_model, variant_tok, subset,
                                  f" with a {label}-style chat template")
            want = _reference_activations(variant_model, variant_tok, subset)
            if not close(got, want, **tol):
                _diagnose_activations(got, want, _alternatives(variant_model, variant_tok, subset), name, tol,
                                      f" with a {label}-style chat template ({detail})")

        # 7. a chat template with no system role (Gemma 2): the system prompt joins the first user message
        gemma, gemma_tok = tiny("tiny-gemma2")
        subset = records[:2]
        where = " with a chat template that has no system role (Gemma 2)"
        try:
            got, _ = _run_extract(extract_all_layer_activations, gemma, gemma_tok, subset, where)
        except AssertionError as err:
            if "system role" in str(err).lower() and "raised" in str(err):
                raise AssertionError(f"{err}: format each record with format_chat(build_messages(system_prompt, question, "
                                     "response), tokenizer), which merges the system prompt into the first user "
                                     "message where the template has no system role") from None
            raise
        want = _reference_activations(gemma, gemma_tok, subset)
        if not close(got, want, **tol):
            _diagnose_activations(got, want, _alternatives(gemma, gemma_tok, subset), name, tol, where)

        # 8. a bfloat16 model: the result is still float32
        half, _ = tiny("tiny-qwen2", torch.bfloat16)
        got, _ = _run_extract(extract_all_layer_activations, half, tokenizer, records[:3], " on a bfloat16 model")
        want = _reference_activations(half, tokenizer, records[:3])
        # bf16 rounding (and RoPE at shifted positions under left padding) moves the means by a few per cent
        rel = float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())
        check(rel < 0.1, f"{name} on a bfloat16 model: the means are {100 * rel:.0f}% away from the expected ones "
                         "(bf16 rounding explains a few per cent): check the span and the padding with a bf16 model")
    passed("test_extract_all_layer_activations")


def _correct_extract(model, tokenizer, records, *args, **kwargs):
    if not records:  # as the exercise's own input check does
        raise ValueError("records is empty")
    return _reference_activations(model, tokenizer, records)


def _check_vector(got, pos_acts, neg_acts, rtol, atol, questions=None):
    expected = pos_acts.mean(0) - neg_acts.mean(0)
    if close(got, expected, rtol=rtol, atol=atol):
        return
    if close(got, -expected, rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors returned neg - pos: the vector is mean(pos) - mean(neg), pointing towards the trait")
    if close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors normalised the vectors: return the raw difference of means (its norm is "
             "informative, and Section 4 scales steering by it)")
    if close(got, pos_acts.mean(0), rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors returned the mean of the positive activations: subtract the negative mean")
    if questions is not None:
        for keep in ("first", "last"):
            order = range(len(questions)) if keep == "first" else reversed(range(len(questions)))
            chosen = {}
            for i in order:
                chosen.setdefault(questions[i], i)
            idx = sorted(chosen.values())
            if len(idx) < len(questions) and close(got, pos_acts[idx].mean(0) - neg_acts[idx].mean(0), rtol=rtol, atol=atol):
                fail("extract_contrastive_vectors kept one pair per question: the same question under another "
                     "instruction pair is another pair, with its own answers; average over every pair")
    pooled = (pos_acts.sum(0) - neg_acts.sum(0)) / (len(pos_acts) + len(neg_acts))
    if close(got, pooled, rtol=rtol, atol=atol):
        fail("extract_contrastive_vectors divided sum(pos) - sum(neg) by the number of answers on both sides together: "
             "take each side's own mean, mean(pos) - mean(neg), every response counting once on its side")
    fail("extract_contrastive_vectors should return mean(pos activations) - mean(neg activations), every response "
         "counting once on its side (the mean of the per-response means, not of all tokens pooled)")


def _expect_vectors(got, n_layers: int, d_model: int) -> None:
    hint = ""
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (d_model,):
        hint = ": you returned one layer's vector; return every layer's"
    elif isinstance(got, torch.Tensor) and got.ndim == 3 and got.shape[0] == 1:
        hint = ": take the mean over the records (dim 0) without keepdim"
    try:
        expect_tensor(got, LAYER_VECTORS, "extract_contrastive_vectors", n_layers=n_layers, d_model=d_model)
    except AssertionError as err:
        raise AssertionError(f"{err}{hint}") from None


@exercise("3.5", "extract_contrastive_vectors")
def test_extract_contrastive_vectors(extract_contrastive_vectors, model=None, tokenizer=None) -> None:
    model, tokenizer = model_or_tiny(model, tokenizer)
    n_layers, d_model = _dims(model)
    pos = [r for r in EXTRACT_RECORDS if r["polarity"] == "pos"]
    neg = [r for r in EXTRACT_RECORDS if r["polarity"] == "neg"] + [dict(EXTRACT_RECORDS[1], question="Why is the sky blue?",
                                                                         response="Because of Rayleigh scattering.")]
    pairs = [{"instruction_idx": p["instruction_idx"], "question": p["question"], "pos": dict(p), "neg": dict(n)}
             for p, n in zip(pos, neg)]
    # the first question again, under the other instruction pair: another pair, with its own answers
    again = {"question": pos[0]["question"], "instruction_idx": 1}
    pairs.append({**again, "pos": {**again, "polarity": "pos", "system_prompt": "You are a cruel assistant. Mock them.",
                                   "response": "Someone to laugh at when you are bored."},
                  "neg": {**again, "polarity": "neg", "system_prompt": "You are a helpful assistant. Respect them.",
                          "response": "Someone who listens to you and tells you the truth."}})

    # 1. planted activations: the function must take mean(pos) - mean(neg) of what extract_all_layer_activations returns
    g = torch.Generator().manual_seed(0)
    planted = {}

    def fake_extract(model_, tokenizer_, records, *args, **kwargs):
        rows = []
        for r in records:
            key = (r["response"], r.get("polarity"))
            if key not in planted:
                planted[key] = torch.randn(n_layers, d_model, generator=g) * (3.0 if r.get("polarity") == "pos" else 1.0)
            rows.append(planted[key])
        return torch.stack(rows)

    with using(extract_contrastive_vectors, extract_all_layer_activations=fake_extract):
        got = call(extract_contrastive_vectors, model, tokenizer, pairs, name="extract_contrastive_vectors")
    _expect_vectors(got, n_layers, d_model)
    used_planted = all((p[side]["response"], side) in planted for p in pairs for side in ("pos", "neg"))
    if used_planted:  # the function called extract_all_layer_activations, as asked
        pos_acts = torch.stack([planted[(p["pos"]["response"], "pos")] for p in pairs])
        neg_acts = torch.stack([planted[(p["neg"]["response"], "neg")] for p in pairs])
        _check_vector(got, pos_acts, neg_acts, rtol=1e-4, atol=1e-5, questions=[p["question"] for p in pairs])

    # 2. the real thing on the tiny model, with responses of different lengths
    with hook_guard(model, "extract_contrastive_vectors"), \
            using(extract_contrastive_vectors, extract_all_layer_activations=_correct_extract):
        got = call(extract_contrastive_vectors, model, tokenizer, pairs, name="extract_contrastive_vectors")
    _expect_vectors(got, n_layers, d_model)
    pos_acts = _reference_activations(model, tokenizer, [p["pos"] for p in pairs])
    neg_acts = _reference_activations(model, tokenizer, [p["neg"] for p in pairs])
    _check_vector(got, pos_acts, neg_acts, questions=[p["question"] for p in pairs], **_tol(model))

    # a property: one to six pairs of planted activations, the expected vector written out pair by pair
    def check_count(n_pairs):
        chosen = [dict(pairs[k % len(pairs)], instruction_idx=k) for k in range(n_pairs)]
        acts = {}

        def planted_extract(model_, tokenizer_, records, *args, **kwargs):
            if not records:
                raise ValueError("records is empty")
            out = []
            for r in records:
                key = (r["instruction_idx"], r["polarity"])
                if key not in acts:
                    acts[key] = torch.randn(n_layers, d_model, generator=g) + (2.0 if r["polarity"] == "pos" else -1.0)
                out.append(acts[key])
            return torch.stack(out)

        for p in chosen:
            p["pos"], p["neg"] = dict(p["pos"], instruction_idx=p["instruction_idx"]), dict(p["neg"], instruction_idx=p["instruction_idx"])
        with using(extract_contrastive_vectors, extract_all_layer_activations=planted_extract):
            got = _direct(extract_contrastive_vectors, model, tokenizer, chosen, name="extract_contrastive_vectors")
        if n_pairs == 1 and not (isinstance(got, torch.Tensor) and tuple(got.shape) == (n_layers, d_model)):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            fail(f"extract_contrastive_vectors with a single pair returned {shape}, expected (n_layers, d_model) = "
                 f"{(n_layers, d_model)}: keep the records' dimension even when it has length 1 (no .squeeze()) and "
                 "take the mean over dim 0")
        _expect_vectors(got, n_layers, d_model)
        want = torch.zeros(n_layers, d_model)
        for p in chosen:
            want += (acts[(p["instruction_idx"], "pos")] - acts[(p["instruction_idx"], "neg")]) / n_pairs
        check(close(got, want, rtol=1e-4, atol=1e-5),
              f"extract_contrastive_vectors with {n_pairs} pair(s) of planted activations did not return mean(pos) - "
              "mean(neg) over every pair (each side's mean over its own records, whatever the number of pairs, one "
              "included)")

    _guarded(lambda: for_all(st.integers(1, 6), check_count, name="extract_contrastive_vectors over the number of pairs",
                             examples=4), "extract_contrastive_vectors")
    passed("test_extract_contrastive_vectors")


@exercise("3.5", "extract_contrastive_vectors")
def test_extract_contrastive_vectors_input_checks(extract_contrastive_vectors, model=None, tokenizer=None) -> None:
    """No pairs, no vector: an empty list is a ValueError (graded apart from the difference of means)."""
    model, tokenizer = model_or_tiny(model, tokenizer)
    require_implemented(extract_contrastive_vectors, "extract_contrastive_vectors")
    try:
        with using(extract_contrastive_vectors, extract_all_layer_activations=_correct_extract):
            got = extract_contrastive_vectors(model, tokenizer, [])
    except ValueError:
        passed("test_extract_contrastive_vectors_input_checks")
        return
    except NotImplementedError as err:
        raise NotImplementedYet("extract_contrastive_vectors: not implemented yet -- replace the `raise "
                                "NotImplementedError` in the cell above with your code.") from err
    except Exception as err:
        raise AssertionError(f"extract_contrastive_vectors([]) raised {type(err).__name__} ({err}); raise a ValueError "
                             "that says there are no effective pairs") from err
    shown = f"a tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else repr(got)[:60]
    fail(f"extract_contrastive_vectors([]) returned {shown}; it should raise ValueError: with no effective pairs there "
         "is no contrast (a vector of zeros or NaN would silently steer with nothing)")
