"""Catalogue of plausible wrong implementations for Section 3; each must fail its test.

Wrong implementations look up `generate`, `ask_judge`, `score_trait_response`, ... in this module's
globals, exactly as a student's functions look them up in the notebook's: the tests swap those names
for fakes with `using(...)`, so the same plumbing is exercised.
"""

from __future__ import annotations

import re

import torch

from utils.chat import build_messages, format_chat
from utils.generation import generate  # noqa: F401  (the name the tests replace)
from utils.hooks import get_blocks, hidden_of, hooks
from utils.models import input_device
from utils.reference import load
from utils.steering import Steerer

ref = load("section3")
ask_judge = ref.ask_judge
construct_system_prompt = ref.construct_system_prompt
score_trait_response = ref.score_trait_response
extract_all_layer_activations = ref.extract_all_layer_activations
COHERENCE_THRESHOLD = 50


# ---------------------------------------------------------------------------
# 3.1
# ---------------------------------------------------------------------------
def prompt_no_space(name, instruction):
    return f"You are a {name} assistant.{instruction}"


def prompt_swapped(name, instruction):
    return f"You are a {instruction} assistant. {name}"


def prompt_trailing_newline(name, instruction):
    return f"You are a {name} assistant. {instruction}\n"


def prompt_article(name, instruction):
    article = "an" if name[0] in "aeiou" else "a"
    return f"You are {article} {name} assistant. {instruction}"


def prompt_no_assistant(name, instruction):
    return f"You are {name}. {instruction}"


# ---------------------------------------------------------------------------
# 3.2
# ---------------------------------------------------------------------------
def _records_and_prompts(trait_data, trait_name, neg_name="helpful", neg_key="neg", idx_offset=0, polarities=("pos", "neg"),
                         reverse_questions=False):
    records, prompts = [], []
    for idx, pair in enumerate(trait_data["instruction"]):
        questions = trait_data["questions"][::-1] if reverse_questions else trait_data["questions"]
        for question in questions:
            for polarity in polarities:
                name = trait_name if polarity == "pos" else neg_name
                instruction = pair[polarity] if polarity == "pos" else pair[neg_key]
                sp = construct_system_prompt(name, instruction)
                records.append({"question": question, "system_prompt": sp, "instruction_idx": idx + idx_offset,
                                "polarity": polarity})
                prompts.append(build_messages(sp, question))
    return records, prompts


def _finish(records, answers, max_new_tokens, temperature):
    for r, a in zip(records, answers):
        r["response"] = a
        r["sampling"] = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    return records


def gen_one_call_per_prompt(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = [generate(model, tokenizer, [p], max_new_tokens=max_new_tokens, temperature=temperature)[0] for p in prompts]
    return _finish(records, answers, max_new_tokens, temperature)


def gen_neg_uses_pos_instruction(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, neg_key="pos")
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_neg_named_after_trait(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, neg_name=trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_one_based_index(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, idx_offset=1)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_pos_only(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, polarities=("pos",))
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_misaligned_answers(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    return _finish(records, answers[::-1], max_new_tokens, temperature)


def gen_ignores_temperature(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens), max_new_tokens, temperature)


def gen_no_sampling_record(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    for r, a in zip(records, answers):
        r["response"] = a
    return records


def gen_reversed_questions(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name, reverse_questions=True)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_batch_size_one(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=1)
    return _finish(records, answers, max_new_tokens, temperature)


def gen_model_generate_loop(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    from utils.chat import format_prompt

    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = []
    for p in prompts:
        ids = tokenizer(format_prompt(p, tokenizer), return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return _finish(records, answers, max_new_tokens, temperature)


# ---------------------------------------------------------------------------
# 3.3
# ---------------------------------------------------------------------------
def _parse(reply):
    return ref.parse_judge_reply(reply)


def score_fills_question_only(question, answer, eval_prompt_template):
    return _parse(ask_judge(eval_prompt_template.replace("{question}", question)))


def score_swapped(question, answer, eval_prompt_template):
    return _parse(ask_judge(eval_prompt_template.format(question=answer, answer=question)))


def score_refusal_is_zero(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is not None and "refusal" in reply.lower():
        return 0
    return _parse(reply)


def score_no_range_check(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"-?\d+", reply)
    return int(m.group()) if m else None


def score_unsigned_number(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


def score_last_number(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer))
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    nums = re.findall(r"-?\d+", reply)
    value = int(nums[-1]) if nums else None
    return value if value is not None and 0 <= value <= 100 else None


def score_returns_str(question, answer, eval_prompt_template):
    value = ref.score_trait_response.__globals__["parse_judge_reply"](
        ask_judge(eval_prompt_template.format(question=question, answer=answer)))
    return None if value is None else str(value)


def score_returns_float(question, answer, eval_prompt_template):
    value = _parse(ask_judge(eval_prompt_template.format(question=question, answer=answer)))
    return None if value is None else float(value)


def score_crashes_on_failed_call(question, answer, eval_prompt_template):
    reply = ask_judge(eval_prompt_template.format(question=question, answer=answer)).strip()
    return _parse(reply)


def score_bypasses_ask_judge(question, answer, eval_prompt_template):
    verdict = ref.JUDGE.score(eval_prompt_template.format(question=question, answer=answer))
    return None if verdict.value is None else int(verdict.value)


def coherence_ignores_template(question, answer, template):
    from utils import data

    return _parse(ask_judge(data.load_coherence_prompt().format(question=question, answer=answer)))


def coherence_refusal_is_zero(question, answer, template):
    return score_refusal_is_zero(question, answer, template)


def coherence_fills_question_only(question, answer, template):
    return score_fills_question_only(question, answer, template)


# ---------------------------------------------------------------------------
# 3.4
# ---------------------------------------------------------------------------
def _index(responses):
    return {(r["instruction_idx"], r["question"], r["polarity"]): r for r in responses}


def _pairs(responses, trait_data, keep):
    by_key = _index(responses)
    out = []
    for idx in range(len(trait_data["instruction"])):
        for q in trait_data["questions"]:
            pos, neg = by_key.get((idx, q, "pos")), by_key.get((idx, q, "neg"))
            if pos is not None and neg is not None and keep(pos, neg):
                out.append({"instruction_idx": idx, "question": q, "pos": pos, "neg": neg})
    return out


def _ok(r):
    return r["coherence"] is not None and r["coherence"] >= COHERENCE_THRESHOLD


def filter_strict_greater(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] > threshold and n["score"] < 100 - threshold and _ok(p) and _ok(n))


def filter_single_responses(responses, trait_data, threshold=50):
    return [r for r in responses if r["score"] is not None and _ok(r)
            and ((r["polarity"] == "pos" and r["score"] >= threshold) or (r["polarity"] == "neg" and r["score"] < 100 - threshold))]


def filter_sides_separately_then_zip(responses, trait_data, threshold=50):
    pos = [r for r in responses if r["polarity"] == "pos" and r["score"] is not None and r["score"] >= threshold and _ok(r)]
    neg = [r for r in responses if r["polarity"] == "neg" and r["score"] is not None and r["score"] < 100 - threshold and _ok(r)]
    return [{"instruction_idx": p["instruction_idx"], "question": p["question"], "pos": p, "neg": n} for p, n in zip(pos, neg)]


def filter_pos_side_only(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and p["score"] >= threshold and _ok(p) and _ok(n))


def filter_none_as_zero(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: (p["score"] or 0) >= threshold and (n["score"] or 0) < 100 - threshold
                  and _ok(p) and _ok(n))


def filter_ignores_coherence(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold)


def filter_coherence_pos_only(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and _ok(p))


def filter_neg_below_threshold(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < threshold and _ok(p) and _ok(n))


def filter_none_coherence_passes(responses, trait_data, threshold=50):
    def ok(r):
        return r["coherence"] is None or r["coherence"] >= COHERENCE_THRESHOLD
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and ok(p) and ok(n))


def filter_pairs_by_question_only(responses, trait_data, threshold=50):
    by_q = {(r["question"], r["polarity"]): r for r in responses}  # the last instruction wins
    out = []
    for idx in range(len(trait_data["instruction"])):
        for q in trait_data["questions"]:
            pos, neg = by_q.get((q, "pos")), by_q.get((q, "neg"))
            if pos and neg and pos["score"] is not None and neg["score"] is not None and pos["score"] >= threshold \
                    and neg["score"] < 100 - threshold and _ok(pos) and _ok(neg):
                out.append({"instruction_idx": idx, "question": q, "pos": pos, "neg": neg})
    return out


# ---------------------------------------------------------------------------
# 3.5
# ---------------------------------------------------------------------------
def _chats(records, tokenizer):
    return [format_chat(build_messages(r["system_prompt"], r["question"], r["response"]), tokenizer) for r in records]


def _right_padded(chats, tokenizer):
    T = max(len(c.input_ids) for c in chats)
    ids = torch.full((len(chats), T), tokenizer.pad_token_id or 0, dtype=torch.long)
    attn = torch.zeros((len(chats), T), dtype=torch.long)
    for b, c in enumerate(chats):
        ids[b, :len(c.input_ids)] = torch.tensor(c.input_ids)
        attn[b, :len(c.input_ids)] = 1
    return ids, attn


@torch.inference_mode()
def _hidden_states_version(model, tokenizer, records, pick, span=lambda s, e: (s, e)):
    """One batched forward with output_hidden_states; `pick(hs)` chooses the per-layer tensors."""
    chats = _chats(records, tokenizer)
    ids, attn = _right_padded(chats, tokenizer)
    hs = pick(model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states)
    out = torch.zeros(len(chats), len(hs), hs[0].shape[-1])
    for b, c in enumerate(chats):
        s, e = span(*c.token_span)
        for L, h in enumerate(hs):
            out[b, L] = h[b, s:e].float().mean(0)
    return out


def acts_all_tokens(model, tokenizer, records, batch_size=16):
    """Averages over every real token of the conversation, not the response span."""
    return _hooked(model, tokenizer, records, span=lambda s, e, n: (0, n))


def acts_embedding_included(model, tokenizer, records, batch_size=16):
    return _hidden_states_version(model, tokenizer, records, lambda hs: hs[:-1])


def acts_final_norm(model, tokenizer, records, batch_size=16):
    return _hidden_states_version(model, tokenizer, records, lambda hs: hs[1:])


def acts_end_of_turn(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, span=lambda s, e, n: (s, e + 1))


def acts_plus_one_span(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, span=lambda s, e, n: (s + 1, e + 1))


@torch.inference_mode()
def _hooked(model, tokenizer, records, span=lambda s, e, n: (s, e), batch_size=16, left_pad=False, remove=True):
    chats = _chats(records, tokenizer)
    n_layers = len(get_blocks(model))
    outs = []
    for start in range(0, len(chats), batch_size):
        batch = chats[start:start + batch_size]
        T = max(len(c.input_ids) for c in batch)
        ids = torch.full((len(batch), T), tokenizer.pad_token_id or 0, dtype=torch.long)
        attn = torch.zeros((len(batch), T), dtype=torch.long)
        sel = torch.zeros((len(batch), T))
        for b, c in enumerate(batch):
            off = T - len(c.input_ids) if left_pad else 0
            ids[b, off:off + len(c.input_ids)] = torch.tensor(c.input_ids)
            attn[b, off:off + len(c.input_ids)] = 1
            s, e = span(*c.token_span, len(c.input_ids))  # a left-padding bug: the span is not shifted by the padding
            sel[b, s:e] = 1
        means = {}

        def make(L):
            def hook(module, args, output):
                h = hidden_of(output).float()
                means[L] = (h * sel[..., None]).sum(1) / sel.sum(1, keepdim=True)
            return hook

        if remove:
            with hooks(model, {L: make(L) for L in range(n_layers)}):
                model.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False)
        else:
            for L in range(n_layers):
                get_blocks(model)[L].register_forward_hook(make(L))
            model.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False)
        outs.append(torch.stack([means[L] for L in range(n_layers)], 1))
    return torch.cat(outs)


def acts_unbatched(model, tokenizer, records, batch_size=16):
    return torch.cat([_hooked(model, tokenizer, [r]) for r in records])


def acts_layers_first(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records).transpose(0, 1).contiguous()


def acts_left_pad_unshifted_span(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, left_pad=True)


def acts_hooks_left_behind(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, remove=False)


def acts_no_inference_mode(model, tokenizer, records, batch_size=16):
    chats = _chats(records, tokenizer)
    ids, attn = _right_padded(chats, tokenizer)
    n_layers = len(get_blocks(model))
    sel = torch.zeros(ids.shape, dtype=torch.float)
    for b, c in enumerate(chats):
        s, e = c.token_span
        sel[b, s:e] = 1
    means = {}

    def make(L):
        def hook(module, args, output):
            h = hidden_of(output)
            means[L] = (h * sel[..., None]).sum(1) / sel.sum(1, keepdim=True)
        return hook

    with hooks(model, {L: make(L) for L in range(n_layers)}):
        model.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False)
    return torch.stack([means[L] for L in range(n_layers)], 1)


def vec_neg_minus_pos(model, tokenizer, effective_pairs):
    return -ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)


def vec_normalised(model, tokenizer, effective_pairs):
    v = ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)
    return v / v.norm(dim=-1, keepdim=True)


def vec_pos_mean_only(model, tokenizer, effective_pairs):
    return extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs]).mean(0)


@torch.inference_mode()
def vec_token_pooled(model, tokenizer, effective_pairs):
    """Pools every response token of a side together: long answers outweigh short ones."""
    if not effective_pairs:
        raise ValueError("no pairs")
    n_layers = len(get_blocks(model))

    def pooled(records):
        sums, count = None, 0
        for c in _chats(records, tokenizer):
            caps = {}
            with hooks(model, {L: (lambda L: lambda m, a, o: caps.__setitem__(L, hidden_of(o)[0].float()))(L) for L in range(n_layers)}):
                model.get_decoder()(input_ids=torch.tensor([c.input_ids], device=input_device(model)))
            s, e = c.token_span
            tok = torch.stack([caps[L][s:e].sum(0) for L in range(n_layers)])
            sums = tok if sums is None else sums + tok
            count += e - s
        return sums / count

    return pooled([p["pos"] for p in effective_pairs]) - pooled([p["neg"] for p in effective_pairs])


def vec_unbalanced_denominator(model, tokenizer, effective_pairs):
    if not effective_pairs:
        raise ValueError("no pairs")
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return (pos.sum(0) - neg.sum(0)) / (len(pos) + len(neg))


def vec_no_error_on_empty(model, tokenizer, effective_pairs):
    if not effective_pairs:
        n, d = len(get_blocks(model)), model.config.get_text_config().hidden_size
        return torch.zeros(n, d)
    return ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)


def vec_one_layer(model, tokenizer, effective_pairs):
    return ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)[-1]


# ---------------------------------------------------------------------------
# 3.6
# ---------------------------------------------------------------------------
def _mean(scores, none_as_zero=False):
    if none_as_zero:
        scores = [s or 0 for s in scores]
    valid = [s for s in scores if s is not None]
    return sum(valid) / len(valid) if valid else float("nan")


def _sweep(model, tokenizer, vectors, questions, template, layers, coeff, max_new_tokens, steer_layer=lambda L: L,
           vector_of=lambda v, L: v[L], coeff_of=lambda c: c, inside=True, none_as_zero=False, per_question=False):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        steerer = Steerer(model, vector_of(vectors, layer), coeff=coeff_of(coeff), layer=steer_layer(layer), positions="response")
        if per_question:
            with steerer:
                answers = [generate(model, tokenizer, [p], max_new_tokens=max_new_tokens)[0] for p in prompts]
        elif inside:
            with steerer:
                answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        else:
            with steerer:
                pass
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        out[layer] = _mean([score_trait_response(q, a, template) for q, a in zip(questions, answers)], none_as_zero)
    return out


def steer_outside_context(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, inside=False)


def steer_off_by_one(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    n = vectors.shape[0]
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  steer_layer=lambda L: (L + 1) % n)


def steer_same_vector_everywhere(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  vector_of=lambda v, L: v[-1])


def steer_normalised(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  vector_of=lambda v, L: v[L] / v[L].norm())


def steer_ignores_coeff(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                  coeff_of=lambda c: 1.0)


def steer_none_as_zero(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, none_as_zero=True)


def steer_one_call_per_question(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, per_question=True)


def steer_hooks_never_removed(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        add = coeff * vectors[layer]
        get_blocks(model)[layer].register_forward_hook(lambda m, a, o, add=add: hidden_of(o) + add)
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)])
    return out


def steer_returns_list(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    res = _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens)
    return [res[L] for L in layers]


# ---------------------------------------------------------------------------
# 3.7
# ---------------------------------------------------------------------------
def _topk(values, k):
    top = values.topk(k)
    return top.indices, top.values


def cos_decoder_columns(vector, sae, k=10):
    cols = sae.W_dec.T  # [d_model, d_sae]: its rows are not features
    cols = cols / cols.norm(dim=-1, keepdim=True)
    return _topk(cols @ (vector / vector.norm()), k)


def cos_unnormalised_rows(vector, sae, k=10):
    return _topk(sae.W_dec @ (vector / vector.norm()), k)


def cos_absolute(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    cos = d @ (vector / vector.norm())
    idx = cos.abs().topk(k).indices
    return idx, cos[idx]


def cos_encoder_directions(vector, sae, k=10):
    d = sae.W_enc.T / sae.W_enc.T.norm(dim=-1, keepdim=True)
    return _topk(d @ (vector / vector.norm()), k)


def cos_vector_not_normalised(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    return _topk(d @ vector, k)


def cos_smallest_first(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    cos = d @ (vector / vector.norm())
    top = cos.topk(k, largest=False)
    return top.indices, top.values


def diff_absolute(sae, pos_acts, neg_acts, k=10):
    d = sae.encode(pos_acts).mean(0) - sae.encode(neg_acts).mean(0)
    idx = d.abs().topk(k).indices
    return idx, d[idx]


def diff_neg_minus_pos(sae, pos_acts, neg_acts, k=10):
    return _topk(sae.encode(neg_acts).mean(0) - sae.encode(pos_acts).mean(0), k)


def diff_encode_the_mean(sae, pos_acts, neg_acts, k=10):
    return _topk(sae.encode(pos_acts.mean(0)) - sae.encode(neg_acts.mean(0)), k)


def diff_pre_activations(sae, pos_acts, neg_acts, k=10):
    return _topk(sae.pre_activations(pos_acts).mean(0) - sae.pre_activations(neg_acts).mean(0), k)


def diff_unbalanced(sae, pos_acts, neg_acts, k=10):
    n = len(pos_acts) + len(neg_acts)
    return _topk((sae.encode(pos_acts).sum(0) - sae.encode(neg_acts).sum(0)) / n, k)


def diff_smallest_first(sae, pos_acts, neg_acts, k=10):
    d = sae.encode(pos_acts).mean(0) - sae.encode(neg_acts).mean(0)
    top = d.topk(k, largest=False)
    return top.indices, top.values


# ---------------------------------------------------------------------------
# More mistakes, and correct alternatives (written another way; each must pass)
# ---------------------------------------------------------------------------
import math  # noqa: E402
from contextlib import ExitStack  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from utils.chat import format_prompt  # noqa: E402
from utils.hooks import with_hidden  # noqa: E402


# 3.1
def prompt_lowercase_name(name, instruction):
    return f"You are a {name.lower()} assistant. {instruction}"


def prompt_adds_full_stop(name, instruction):
    if not instruction.endswith("."):
        instruction += "."
    return f"You are a {name} assistant. {instruction}"


def prompt_concatenated(name, instruction):
    return "You are a " + name + " assistant. " + instruction


def prompt_str_format(name, instruction):
    return "You are a {} assistant. {}".format(name, instruction)


def prompt_joined(name, instruction):
    return " ".join(["You are a", name, "assistant.", instruction])


# 3.2
def gen_no_system_prompt(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, _ = _records_and_prompts(trait_data, trait_name)
    prompts = [build_messages(None, r["question"]) for r in records]
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_system_merged_into_user(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, _ = _records_and_prompts(trait_data, trait_name)
    prompts = [build_messages(None, f"{r['system_prompt']}\n\n{r['question']}") for r in records]
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_sampling_defaults(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    return _finish(records, answers, 256, 0.7)


def gen_polarity_outer(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = [], []
    for polarity in ("pos", "neg"):
        for idx, pair in enumerate(trait_data["instruction"]):
            for q in trait_data["questions"]:
                sp = construct_system_prompt(trait_name if polarity == "pos" else "helpful", pair[polarity])
                records.append({"question": q, "system_prompt": sp, "instruction_idx": idx, "polarity": polarity})
                prompts.append(build_messages(sp, q))
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)
    return [{**r, "response": a, "sampling": {"max_new_tokens": max_new_tokens, "temperature": temperature}}
            for r, a in zip(records, answers)]


def gen_formatted_strings(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    texts = [format_prompt(p, tokenizer) for p in prompts]
    return _finish(records, generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def gen_positional_args(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    records, prompts = _records_and_prompts(trait_data, trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens, temperature), max_new_tokens, temperature)


# 3.3
def _reply(question, answer, template):
    return ask_judge(template.format(question=question, answer=answer))


def score_number_before_refusal(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None:
        return None
    m = re.search(r"-?\d+", reply)
    if m:
        value = int(m.group())
        return value if 0 <= value <= 100 else None
    return None  # REFUSAL, or no number


def score_refusal_exact_match(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or reply.strip().upper() == "REFUSAL":
        return None
    m = re.search(r"-?\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


def score_first_in_range(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    for m in re.finditer(r"-?\d+", reply):
        if 0 <= int(m.group()) <= 100:
            return int(m.group())
    return None


def score_single_digit(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"-?\d", reply)
    return int(m.group()) if m and 0 <= int(m.group()) <= 100 else None


def score_rounds_decimal(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"refusal", reply, re.I):
        return None
    m = re.search(r"-?\d+(\.\d+)?", reply)
    value = round(float(m.group())) if m else None
    return value if value is not None and 0 <= value <= 100 else None


def score_with_replace(question, answer, eval_prompt_template):
    prompt = eval_prompt_template.replace("{question}", question).replace("{answer}", answer)
    reply = ask_judge(prompt)
    if reply is None or "refusal" in reply.lower():
        return None
    nums = re.findall(r"-?\d+", reply)
    if not nums:
        return None
    value = int(nums[0])
    return value if 0 <= value <= 100 else None


def score_try_int(question, answer, eval_prompt_template):
    reply = _reply(question, answer, eval_prompt_template)
    if not reply or re.search(r"\brefusal\b", reply, re.IGNORECASE):
        return None
    m = re.search(r"(-?)(\d+)", reply)
    try:
        value = int(m.group(1) + m.group(2))
    except (AttributeError, ValueError):
        return None
    return value if value in range(0, 101) else None


def score_zero_is_missing(question, answer, eval_prompt_template):
    value = _parse(_reply(question, answer, eval_prompt_template))
    return value or None


def coherence_number_before_refusal(question, answer, template):
    return score_number_before_refusal(question, answer, template)


def coherence_via_score_trait(question, answer, template):
    """score_coherence written as a call of the student's own score_trait_response (here score_with_replace)."""
    return score_with_replace(question, answer, template)


# 3.4
def filter_coherence_held_to_threshold(responses, trait_data, threshold=50):
    def ok(r):
        return r["coherence"] is not None and r["coherence"] >= threshold
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and ok(p) and ok(n))


def filter_sorted_by_question_text(responses, trait_data, threshold=50):
    by_key = _index(responses)
    out = []
    for (idx, q, polarity), pos in sorted(by_key.items()):
        if polarity != "pos":
            continue
        neg = by_key.get((idx, q, "neg"))
        if neg is not None and pos["score"] is not None and neg["score"] is not None and pos["score"] >= threshold \
                and neg["score"] < 100 - threshold and _ok(pos) and _ok(neg):
            out.append({"instruction_idx": idx, "question": q, "pos": pos, "neg": neg})
    return out


def filter_missing_key_passes(responses, trait_data, threshold=50):
    def ok(r):
        return r.get("coherence", 100) is not None and r.get("coherence", 100) >= COHERENCE_THRESHOLD

    def score(r, default):
        return r.get("score", default)
    return _pairs(responses, trait_data, lambda p, n: score(p, 100) is not None and score(n, 0) is not None
                  and score(p, 100) >= threshold and score(n, 0) < 100 - threshold and ok(p) and ok(n))


def filter_nested_search(responses, trait_data, threshold=50):
    out = []
    for idx in range(len(trait_data["instruction"])):
        for q in trait_data["questions"]:
            pos = [r for r in responses if r["instruction_idx"] == idx and r["question"] == q and r["polarity"] == "pos"]
            neg = [r for r in responses if r["instruction_idx"] == idx and r["question"] == q and r["polarity"] == "neg"]
            if not pos or not neg:
                continue
            p, n = pos[0], neg[0]
            if None in (p["score"], n["score"], p["coherence"], n["coherence"]):
                continue
            if p["score"] >= threshold and n["score"] < 100 - threshold and min(p["coherence"], n["coherence"]) >= 50:
                out.append({"instruction_idx": idx, "question": q, "pos": p, "neg": n})
    return out


def filter_sort_afterwards(responses, trait_data, threshold=50):
    pos = {(r["instruction_idx"], r["question"]): r for r in responses if r["polarity"] == "pos"}
    neg = {(r["instruction_idx"], r["question"]): r for r in responses if r["polarity"] == "neg"}
    kept = []
    for key in pos.keys() & neg.keys():
        p, n = pos[key], neg[key]
        scores = [p.get("score"), n.get("score"), p.get("coherence"), n.get("coherence")]
        if any(s is None for s in scores):
            continue
        if p["score"] >= threshold and n["score"] < 100 - threshold and p["coherence"] >= 50 and n["coherence"] >= 50:
            kept.append({"instruction_idx": key[0], "question": key[1], "pos": p, "neg": n})
    order = {q: i for i, q in enumerate(trait_data["questions"])}
    return sorted(kept, key=lambda d: (d["instruction_idx"], order[d["question"]]))


# 3.5
@torch.inference_mode()
def _span_means(model, tokenizer, records, batch_size=16, spans=None, left_pad=False, mask=True, dtype=torch.float32,
                order=None, lengths_from_first_batch=False):
    """A batched hook-based extraction; `spans(chat)` picks each record's [start, end)."""
    chats = _chats(records, tokenizer)
    n_layers = len(get_blocks(model))
    idx = list(range(len(chats))) if order is None else order(chats)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [None] * len(chats)
    first_lengths = None
    for start in range(0, len(idx), batch_size):
        batch = idx[start:start + batch_size]
        T = max(len(chats[i].input_ids) for i in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), T), dtype=torch.long)
        sel = torch.zeros((len(batch), T))
        for b, i in enumerate(batch):
            c = chats[i]
            off = T - len(c.input_ids) if left_pad else 0
            ids[b, off:off + len(c.input_ids)] = torch.tensor(c.input_ids)
            attn[b, off:off + len(c.input_ids)] = 1
            s, e = spans(c) if spans else c.token_span
            sel[b, off + s:off + e] = 1
        lengths = sel.sum(1, keepdim=True)
        if lengths_from_first_batch:
            first_lengths = lengths if first_lengths is None else first_lengths
            lengths = first_lengths[:len(batch)]
        means = {}

        def make(L):
            def hook(module, args, output):
                h = hidden_of(output)
                means[L] = ((h.float() * sel[..., None]).sum(1) / lengths).to(dtype)
            return hook

        with hooks(model, {L: make(L) for L in range(n_layers)}):
            model.get_decoder()(input_ids=ids, attention_mask=attn if mask else None, use_cache=False)
        out = torch.stack([means[L] for L in range(n_layers)], 1)
        for b, i in enumerate(batch):
            rows[i] = out[b]
    return torch.stack(rows)


def _first_occurrence(chat):
    s, e = chat.token_span
    target = chat.input_ids[s:e]
    first = next(i for i in range(len(chat.input_ids)) if chat.input_ids[i:i + len(target)] == target)
    return first, first + len(target)


def acts_first_occurrence(model, tokenizer, records, batch_size=16):
    """Finds the response by searching for its tokens: the first match can be the question's."""
    return _span_means(model, tokenizer, records, batch_size, spans=_first_occurrence)


def acts_span_from_prompt_length(model, tokenizer, records, batch_size=16):
    """Start = length of the tokenised generation prompt, end = two tokens before the end (Qwen's '<|im_end|>\\n')."""
    def spans(chat):
        return chat._prompt_len, len(chat.input_ids) - 2

    chats = _chats(records, tokenizer)
    for r, c in zip(records, chats):
        prompt = format_prompt(build_messages(r["system_prompt"], r["question"]), tokenizer)
        object.__setattr__(c, "_prompt_len", len(tokenizer(prompt, add_special_tokens=False)["input_ids"]))
    by_text = {c.text: c for c in chats}
    return _span_means(model, tokenizer, records, batch_size, spans=lambda c: spans(by_text[c.text]))


def acts_ignores_batch_size(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size=max(len(records), 1))


def acts_last_batch_only(model, tokenizer, records, batch_size=16):
    out = None
    for start in range(0, len(records), batch_size):
        out = _span_means(model, tokenizer, records[start:start + batch_size], batch_size)
    return out


def acts_lengths_from_first_batch(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, lengths_from_first_batch=True)


def acts_keeps_model_dtype(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, dtype=next(model.parameters()).dtype)


def acts_left_padded(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, left_pad=True)


def acts_no_attention_mask(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, mask=False)


def acts_sorted_by_length(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size,
                       order=lambda chats: sorted(range(len(chats)), key=lambda i: len(chats[i].input_ids)))


@torch.inference_mode()
def acts_hidden_states_and_last_hook(model, tokenizer, records, batch_size=16):
    """hidden_states[L + 1] for blocks 0..n-2, a hook for the last block (hidden_states[-1] is normed)."""
    chats = _chats(records, tokenizer)
    n_layers = len(get_blocks(model))
    out = []
    for start in range(0, len(chats), batch_size):
        batch = chats[start:start + batch_size]
        ids, attn = _right_padded(batch, tokenizer)
        last = {}
        with hooks(model, {n_layers - 1: lambda m, a, o: last.__setitem__("h", hidden_of(o).float())}):
            hs = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
        per_layer = [hs[L + 1].float() for L in range(n_layers - 1)] + [last["h"]]
        for b, c in enumerate(batch):
            s, e = c.token_span
            out.append(torch.stack([h[b, s:e].mean(0) for h in per_layer]).cpu())
    return torch.stack(out)


def acts_no_system_prompt(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, [{**r, "system_prompt": None} for r in records], batch_size)


def _prefix_len(tokenizer, messages, add_generation_prompt):
    from utils.chat import normalize_messages, render

    text = render(tokenizer, normalize_messages(messages, tokenizer), add_generation_prompt=add_generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _span_by_prefix(model, tokenizer, records, batch_size, start_of):
    starts = {}
    for r, c in zip(records, _chats(records, tokenizer)):
        starts[c.text] = start_of(build_messages(r["system_prompt"], r["question"]))
    return _span_means(model, tokenizer, records, batch_size, spans=lambda c: (starts[c.text], c.token_span[1]))


def acts_header_included(model, tokenizer, records, batch_size=16):
    """Starts the span where the user turn ends (rendered without the generation prompt): the header is in."""
    return _span_by_prefix(model, tokenizer, records, batch_size, lambda msgs: _prefix_len(tokenizer, msgs, False))


def acts_fixed_header_length(model, tokenizer, records, batch_size=16):
    """Start = end of the user turn + the tokens of '<|im_start|>assistant\\n' (what the header is on Qwen2.5)."""
    header = len(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    return _span_by_prefix(model, tokenizer, records, batch_size,
                           lambda msgs: _prefix_len(tokenizer, msgs, False) + header)


@torch.inference_mode()
def acts_mask_from_pad_id(model, tokenizer, records, batch_size=16):
    """Right padding, with the attention mask taken as input_ids != pad_token_id."""
    if len(records) > batch_size:
        return torch.cat([acts_mask_from_pad_id(model, tokenizer, records[i:i + batch_size], batch_size)
                          for i in range(0, len(records), batch_size)])
    chats = _chats(records, tokenizer)
    n_layers = len(get_blocks(model))
    ids, _ = _right_padded(chats, tokenizer)
    attn = (ids != tokenizer.pad_token_id).long()
    sel = torch.zeros(ids.shape)
    for b, c in enumerate(chats):
        sel[b, c.token_span[0]:c.token_span[1]] = 1
    means = {}

    def make(L):
        def hook(module, args, output):
            means[L] = (hidden_of(output).float() * sel[..., None]).sum(1) / sel.sum(1, keepdim=True)
        return hook

    with hooks(model, {L: make(L) for L in range(n_layers)}):
        model.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False)
    return torch.stack([means[L] for L in range(n_layers)], 1)


def steer_sorted_layers(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, sorted(set(layers)), coeff,
                        max_new_tokens)


@torch.inference_mode()
def acts_tokenizer_padding(model, tokenizer, records, batch_size=16):
    """Re-tokenises the rendered chats with the tokenizer's own padding (left here) and shifts each span."""
    chats = _chats(records, tokenizer)
    n_layers = len(get_blocks(model))
    out = []
    for start in range(0, len(chats), batch_size):
        batch = chats[start:start + batch_size]
        enc = tokenizer([c.text for c in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        T = enc["input_ids"].shape[1]
        sel = torch.zeros(len(batch), T)
        for b, c in enumerate(batch):
            off = T - len(c.input_ids) if tokenizer.padding_side == "left" else 0
            sel[b, off + c.token_span[0]:off + c.token_span[1]] = 1
        caught = {}
        with hooks(model, {L: (lambda L: lambda m, a, o: caught.__setitem__(L, hidden_of(o).float()))(L)
                           for L in range(n_layers)}):
            model.get_decoder()(**enc)
        means = [(caught[L] * sel[..., None]).sum(1) / sel.sum(1, keepdim=True) for L in range(n_layers)]
        out.append(torch.stack(means, 1))
    return torch.cat(out)


def acts_retokenized_with_special_tokens(model, tokenizer, records, batch_size=16):
    """Re-tokenises the rendered chats with the tokenizer's defaults: a Llama-3-style tokenizer adds a second BOS."""
    chats = _chats(records, tokenizer)
    n_layers = len(get_blocks(model))
    out = []
    for start in range(0, len(chats), batch_size):
        batch = chats[start:start + batch_size]
        enc = tokenizer([c.text for c in batch], return_tensors="pt", padding=True)
        T = enc["input_ids"].shape[1]
        sel = torch.zeros(len(batch), T)
        for b, c in enumerate(batch):
            off = int((enc["attention_mask"][b] == 0).sum()) if tokenizer.padding_side == "left" else 0
            sel[b, off + c.token_span[0]:off + c.token_span[1]] = 1
        caught = {}
        with torch.inference_mode(), hooks(model, {L: (lambda L: lambda m, a, o: caught.__setitem__(L, hidden_of(o).float()))(L)
                                                   for L in range(n_layers)}):
            model.get_decoder()(**enc)
        means = [(caught[L] * sel[..., None]).sum(1) / sel.sum(1, keepdim=True) for L in range(n_layers)]
        out.append(torch.stack(means, 1))
    return torch.cat(out)


def _merged_records(records, sep):
    return [{**r, "system_prompt": None, "question": f"{r['system_prompt']}{sep}{r['question']}"} for r in records]


def acts_template_direct(model, tokenizer, records, batch_size=16):
    """Renders with tokenizer.apply_chat_template itself, system message included (no merging where unsupported)."""
    out = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        for r in batch:
            tokenizer.apply_chat_template(build_messages(r["system_prompt"], r["question"], r["response"]), tokenize=False)
        out.append(_span_means(model, tokenizer, batch, batch_size))
    return torch.cat(out)


def acts_merged_with_space(model, tokenizer, records, batch_size=16):
    from utils.chat import supports_system_role

    if supports_system_role(tokenizer):
        return _span_means(model, tokenizer, records, batch_size)
    return _span_means(model, tokenizer, _merged_records(records, " "), batch_size)


def vec_keepdim(model, tokenizer, effective_pairs):
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return pos.mean(0, keepdim=True) - neg.mean(0, keepdim=True)


def vec_returns_none_on_empty(model, tokenizer, effective_pairs):
    if not effective_pairs:
        return None
    return ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)


def vec_mean_of_pair_differences(model, tokenizer, effective_pairs):
    if not effective_pairs:
        raise ValueError("no effective pairs")
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return (pos - neg).mean(0)


def vec_one_extraction_call(model, tokenizer, effective_pairs):
    if len(effective_pairs) == 0:
        raise ValueError("there are no effective pairs")
    n = len(effective_pairs)
    acts = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs]
                                         + [p["neg"] for p in effective_pairs])
    return acts[:n].mean(0) - acts[n:].mean(0)


def vec_no_own_check(model, tokenizer, effective_pairs):
    """No check of its own: extract_all_layer_activations raises the ValueError for an empty list."""
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return pos.mean(0) - neg.mean(0)


# 3.6
def _steer_sweep(model, tokenizer, vectors, questions, template, layers, coeff, max_new_tokens, positions="response",
                 gen_kwargs=None, prompt_of=lambda q: build_messages(None, q), score=None, aggregate=None):
    gen_kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0.0} if gen_kwargs is None else gen_kwargs
    score = score or (lambda q, a: score_trait_response(q, a, template))
    aggregate = aggregate or _mean
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions=positions):
            answers = generate(model, tokenizer, [prompt_of(q) for q in questions], **gen_kwargs)
        out[layer] = aggregate([score(q, a) for q, a in zip(questions, answers)])
    return out


def steer_all_positions(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        positions="all")


def steer_sampled(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        gen_kwargs={"max_new_tokens": max_new_tokens, "temperature": 0.7})


def steer_ignores_max_new_tokens(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                                 max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        gen_kwargs={"max_new_tokens": 64, "temperature": 0.0})


def steer_wrong_template(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    from utils import data

    template = data.load_trait("evil", "extract")["eval_prompt"]
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        score=lambda q, a: score_trait_response(q, a, template))


def steer_swapped_scoring(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        score=lambda q, a: score_trait_response(a, q, eval_prompt_template))


def steer_misaligned_scoring(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                             max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers[::-1])])
    return out


def steer_system_prompt(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        prompt_of=lambda q: build_messages("You are a helpful assistant.", q))


def steer_zero_when_all_none(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                             max_new_tokens=64):
    def aggregate(scores):
        valid = [s for s in scores if s is not None]
        return sum(valid) / len(valid) if valid else 0.0
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        aggregate=aggregate)


def steer_divides_by_zero(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    def aggregate(scores):
        valid = [s for s in scores if s is not None]
        return sum(valid) / len(valid)
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        aggregate=aggregate)


def steer_manual_enter_no_finally(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                                  max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        steerer = Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response")
        steerer.__enter__()
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        steerer.__exit__(None, None, None)
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)])
    return out


def _manual_steer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, keep_dtype):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        add = coeff * vectors[layer].float()

        def hook(module, args, output):
            h = hidden_of(output)
            new = h.float() if not keep_dtype else h.clone()
            new[:, -1] += add.to(new.device, new.dtype)
            return with_hidden(output, new)

        handle = get_blocks(model)[layer].register_forward_hook(hook)
        try:
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        finally:
            handle.remove()
        out[layer] = _mean([score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)])
    return out


def steer_upcasting_hook(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """A hand-written hook that returns the hidden state in float32, whatever the model's dtype."""
    return _manual_steer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, False)


def steer_manual_hook(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    return _manual_steer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens, True)


def steer_exitstack(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with ExitStack() as stack:
            stack.enter_context(Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"))
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)  # greedy by default
        scores = [score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)]
        scores = [s for s in scores if s is not None]
        out[layer] = float(sum(scores) / len(scores)) if scores else math.nan
    return out


def steer_numpy_nanmean(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    import warnings

    import numpy as np

    def aggregate(scores):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(np.array([np.nan if s is None else s for s in scores], dtype=float)))
    return _steer_sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens,
                        aggregate=aggregate)


# 3.7
def cos_returns_lists(vector, sae, k=10):
    idx, cos = ref.top_sae_features_by_cosine(vector, sae, k)
    return idx.tolist(), cos.tolist()


def cos_keepdim(vector, sae, k=10):
    idx, cos = ref.top_sae_features_by_cosine(vector, sae, k)
    return idx[None], cos[None]


def cos_columns_normalised(vector, sae, k=10):
    d = sae.W_dec / sae.W_dec.norm(dim=0, keepdim=True)
    return _topk(d @ (vector / vector.norm()), k)


def cos_functional(vector, sae, k=10):
    cos = F.cosine_similarity(sae.W_dec.float(), vector.float()[None, :].to(sae.W_dec.device), dim=-1)
    values, indices = torch.topk(cos, k)
    return indices, values


def cos_feature_directions(vector, sae, k=10):
    dirs = sae.feature_directions()  # unit rows, float32
    cos = dirs @ F.normalize(vector.float(), dim=0)
    order = torch.argsort(cos, descending=True)[:k]
    return order, cos[order]


def diff_mean_of_chunk_means(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    def side(acts):
        return torch.stack([sae.encode(c).mean(0) for c in acts.split(batch_size)]).mean(0)
    return _topk(side(pos_acts) - side(neg_acts), k)


def diff_ignores_batch_size(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    return _topk(sae.encode(pos_acts).mean(0) - sae.encode(neg_acts).mean(0), k)


def diff_returns_numpy(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    idx, vals = ref.feature_activation_differences(sae, pos_acts, neg_acts, k, batch_size)
    return idx.numpy(), vals.numpy()


def diff_concatenated_chunks(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    def side(acts):
        return torch.cat([sae.encode(acts[i:i + batch_size]) for i in range(0, len(acts), batch_size)]).mean(0)
    d = side(pos_acts) - side(neg_acts)
    order = d.argsort(descending=True)[:k]
    return order, d[order]


def diff_running_sums(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    def side(acts):
        total, n = 0.0, 0
        for chunk in torch.split(acts, batch_size):
            total = total + sae.encode(chunk).double().sum(0)
            n += chunk.shape[0]
        return total / n
    return _topk((side(pos_acts) - side(neg_acts)).float(), k)


# ---------------------------------------------------------------------------
# More mistakes: case, inputs changed in place, rounding, extra layers
# ---------------------------------------------------------------------------
def score_refusal_case_sensitive(question, answer, eval_prompt_template):
    """Looks for REFUSAL in capitals only: 'Refusal, so 0' reads as a score of 0."""
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or "REFUSAL" in reply:
        return None
    m = re.search(r"-?\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


def coherence_refusal_case_sensitive(question, answer, template):
    return score_refusal_case_sensitive(question, answer, template)


def score_empty_answer_is_zero(question, answer, eval_prompt_template):
    """Skips the judge for an empty answer and calls it 0 (no trait)."""
    if not answer.strip():
        return 0
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or re.search(r"\brefusal\b", reply, re.IGNORECASE):
        return None
    m = re.search(r"-?\d+", reply)
    value = int(m.group()) if m else None
    return value if value is not None and 0 <= value <= 100 else None


def gen_mutates_trait_data(model, tokenizer, trait_data, trait_name, max_new_tokens=256, temperature=0.7):
    """Writes the trait's name into the trait_data it was given."""
    trait_data["trait"] = trait_name
    records, prompts = _records_and_prompts(trait_data, trait_name)
    return _finish(records, generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature),
                   max_new_tokens, temperature)


def filter_neg_coherence_none_passes(responses, trait_data, threshold=50):
    """Checks the neg side's coherence only when it has one: a neg coherence of None passes."""
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and _ok(p)
                  and (n["coherence"] is None or n["coherence"] >= COHERENCE_THRESHOLD))


def filter_mutates_records(responses, trait_data, threshold=50):
    """Marks the kept records in place (the scored records gain a key)."""
    pairs = _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                   and p["score"] >= threshold and n["score"] < 100 - threshold and _ok(p) and _ok(n))
    for pair in pairs:
        pair["pos"]["effective"] = pair["neg"]["effective"] = True
    return pairs


def vec_one_pair_per_question(model, tokenizer, effective_pairs):
    """Keeps the first pair of each question: the same question under another instruction pair is dropped."""
    if not effective_pairs:
        raise ValueError("no pairs")
    first = {}
    for p in effective_pairs:
        first.setdefault(p["question"], p)
    kept = list(first.values())
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in kept])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in kept])
    return pos.mean(0) - neg.mean(0)


def steer_floor_mean(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """Averages the scores with integer division."""
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        scores = [s for s in (score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers))
                  if s is not None]
        out[layer] = sum(scores) // len(scores) if scores else float("nan")
    return out


def steer_scores_accumulate(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                            max_new_tokens=64):
    """One list of scores for the whole sweep: each layer's mean includes the layers before it."""
    prompts = [build_messages(None, q) for q in questions]
    out, scores = {}, []
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        scores += [s for s in (score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers))
                   if s is not None]
        out[layer] = sum(scores) / len(scores) if scores else float("nan")
    return out


def steer_float32_means(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                        max_new_tokens=64):
    """NaN for a missing score and numpy's nanmean in float32: each mean is a numpy float32."""
    import numpy as np

    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        scores = np.array([np.nan if s is None else s for s in (score_trait_response(q, a, eval_prompt_template)
                                                                for q, a in zip(questions, answers))], dtype=np.float32)
        out[layer] = np.float32("nan") if np.isnan(scores).all() else np.nanmean(scores)
    return out


def steer_tensor_means(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """Stores each mean as a one-element tensor."""
    return {layer: torch.tensor(value) for layer, value in
            _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens).items()}


def cos_normalises_in_place(vector, sae, k=10):
    """Normalises the caller's vector with /=: the persona vector it was given changes."""
    vector /= vector.norm()
    W = sae.W_dec.float()
    return _topk((W / W.norm(dim=-1, keepdim=True)) @ vector.float(), k)


def cos_normalises_decoder_in_place(vector, sae, k=10):
    """Normalises sae.W_dec in place: the SAE's decoder changes."""
    W = sae.W_dec.data
    W /= W.norm(dim=-1, keepdim=True)
    return _topk(W.float() @ (vector.float() / vector.float().norm()), k)


def steer_keyed_by_position(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                            max_new_tokens=64):
    """Keys each mean by its position in `layers` (0, 1, ...), not by the layer."""
    means = _sweep(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff, max_new_tokens)
    return {i: means[layer] for i, layer in enumerate(layers)}


def steer_every_layer(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0, max_new_tokens=64):
    """Sweeps every block, whatever `layers` asks for."""
    return _sweep(model, tokenizer, vectors, questions, eval_prompt_template, range(vectors.shape[0]), coeff,
                  max_new_tokens)


# Correct, written another way
def score_scanned_by_hand(question, answer, eval_prompt_template):
    """No regular expression: the refusal check on the reply's words, the number scanned character by character."""
    reply = _reply(question, answer, eval_prompt_template)
    if reply is None or "refusal" in "".join(c if c.isalpha() else " " for c in reply.lower()).split():
        return None
    for i, c in enumerate(reply):
        if c.isdigit():
            j = i
            while j < len(reply) and reply[j].isdigit():
                j += 1
            value = -int(reply[i:j]) if i > 0 and reply[i - 1] == "-" else int(reply[i:j])
            return value if 0 <= value <= 100 else None
    return None


def filter_direct_lookup(responses, trait_data, threshold=50):
    """Looks both sides up with by_key[...] (a KeyError if a record were missing: every pair has both here)."""
    by_key = {(r["instruction_idx"], r["question"], r["polarity"]): r for r in responses}
    out = []
    for i in range(len(trait_data["instruction"])):
        for q in trait_data["questions"]:
            pos, neg = by_key[(i, q, "pos")], by_key[(i, q, "neg")]
            scores = (pos["score"], neg["score"], pos["coherence"], neg["coherence"])
            if any(x is None for x in scores):
                continue
            if pos["score"] >= threshold and neg["score"] < 100 - threshold \
                    and min(pos["coherence"], neg["coherence"]) >= COHERENCE_THRESHOLD:
                out.append({"instruction_idx": i, "question": q, "pos": pos, "neg": neg})
    return out


def steer_scores_inside_context(model, tokenizer, vectors, questions, eval_prompt_template, layers, coeff=2.0,
                                max_new_tokens=64):
    """Scores while the steering hook is still attached (the judge does not run the model)."""
    prompts = [build_messages(None, q) for q in questions]
    out = {}
    for layer in layers:
        with Steerer(model, vectors[layer], coeff=coeff, layer=layer, positions="response"):
            answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
            scores = [score_trait_response(q, a, eval_prompt_template) for q, a in zip(questions, answers)]
        valid = [s for s in scores if s is not None]
        out[layer] = sum(valid) / len(valid) if valid else float("nan")
    return out


def diff_weighted_chunk_means(sae, pos_acts, neg_acts, k=10, batch_size=1024):
    """Each chunk's mean weighted by its share of the rows (float64)."""
    def side(acts):
        total = torch.zeros(sae.d_sae, dtype=torch.float64)
        for chunk in acts.split(batch_size):
            total += sae.encode(chunk).double().mean(0).cpu() * (chunk.shape[0] / acts.shape[0])
        return total
    d = (side(pos_acts) - side(neg_acts)).float()
    values, order = d.sort(descending=True)
    return order[:k], values[:k]


# test name -> (reference object name, [(wrong implementation, phrase its failure message must contain)])
CATALOGUE = {
    "test_construct_system_prompt": ("construct_system_prompt", [
        (prompt_no_space, "spaces"),
        (prompt_swapped, "assistant name comes first"),
        (prompt_trailing_newline, "whitespace"),
        (prompt_article, "expected exactly"),
        (prompt_no_assistant, "expected exactly"),
        (prompt_lowercase_name, "do not change their case"),
        (prompt_adds_full_stop, "do not add or remove a full stop"),
    ]),
    "test_generate_contrastive_responses": ("generate_contrastive_responses", [
        (gen_one_call_per_prompt, "one call"),
        (gen_neg_uses_pos_instruction, "uses the 'pos' instruction"),
        (gen_neg_named_after_trait, "assistant name"),
        (gen_one_based_index, "0-based"),
        (gen_pos_only, "prompts"),
        (gen_misaligned_answers, "not the answer to its own prompt"),
        (gen_ignores_temperature, "pass max_new_tokens and temperature"),
        (gen_no_sampling_record, "sampling"),
        (gen_reversed_questions, "order"),
        (gen_batch_size_one, "forward passes"),
        (gen_model_generate_loop, "never called"),
        (gen_no_system_prompt, "it has no system prompt"),
        (gen_system_merged_into_user, "merged into the user message by hand"),
        (gen_sampling_defaults, "record['sampling'] should be"),
        (gen_mutates_trait_data, "changed the trait_data it was given"),
    ]),
    "test_score_trait_response": ("score_trait_response", [
        (score_fills_question_only, "placeholder"),
        (score_swapped, "swapped"),
        (score_refusal_is_zero, "refusal is not a score of 0"),
        (score_no_range_check, "outside 0-100"),
        (score_unsigned_number, "keep the sign"),
        (score_last_number, "first number"),
        (score_returns_str, "should return an int"),
        (score_returns_float, "should return an int"),
        (score_crashes_on_failed_call, "failed call"),
        (score_bypasses_ask_judge, "did not call ask_judge"),
        (score_number_before_refusal, "contains refusal: return none even when it also holds a number"),
        (score_refusal_exact_match, "contains refusal"),
        (score_first_in_range, "the first number, 150, is outside 0-100"),
        (score_single_digit, "first digit of a multi-digit number"),
        (score_rounds_decimal, "'72.6' reads as 72"),
        (score_zero_is_missing, "0 is a valid score"),
        (score_refusal_case_sensitive, "in any case (here 'refusal')"),
        (score_empty_answer_is_zero, "for an empty answer without asking the judge"),
    ]),
    "test_score_coherence": ("score_coherence", [
        (coherence_ignores_template, "template you were given"),
        (coherence_refusal_is_zero, "refusal is not a score of 0"),
        (coherence_fills_question_only, "placeholder"),
        (coherence_number_before_refusal, "contains refusal"),
        (coherence_refusal_case_sensitive, "in any case (here 'refusal')"),
    ]),
    "test_filter_effective_pairs": ("filter_effective_pairs", [
        (filter_strict_greater, ">="),
        (filter_single_responses, "not single responses"),
        (filter_sides_separately_then_zip, "must share both"),
        (filter_pos_side_only, "neg answer must score < 50"),
        (filter_none_as_zero, "is not 0"),
        (filter_ignores_coherence, "incoherent"),
        (filter_coherence_pos_only, "both sides must be coherent"),
        (filter_neg_below_threshold, "100 - 60"),
        (filter_none_coherence_passes, "coherence of none is not a pass"),
        (filter_pairs_by_question_only, "must share both"),
        (filter_coherence_held_to_threshold, "not to threshold"),
        (filter_sorted_by_question_text, "order of the instruction pairs, then of trait_data['questions']"),
        (filter_missing_key_passes, "no 'coherence' key at all"),
        (filter_mutates_records, "changed the scored records it was given"),
        (filter_neg_coherence_none_passes, "a neg coherence of none is not a pass"),
    ]),
    "test_extract_all_layer_activations": ("extract_all_layer_activations", [
        (acts_all_tokens, "response tokens only"),
        (acts_embedding_included, "off by one layer"),
        (acts_final_norm, "final norm"),
        (acts_end_of_turn, "end-of-turn"),
        (acts_plus_one_span, "shifted by one"),
        (acts_unbatched, "forward passes"),
        (acts_layers_first, "expected (n, n_layers, d_model) = (6, 4, 64): put the records first"),
        (acts_left_pad_unshifted_span, "with left padding, shift each span by its row's number of pads"),
        (acts_hooks_left_behind, "hook(s)"),
        (acts_no_inference_mode, "inference_mode"),
        (acts_first_occurrence, "your span is its first occurrence"),
        (acts_span_from_prompt_length, "leaves out the response's last token"),
        (acts_ignores_batch_size, "at most batch_size records in each forward pass"),
        (acts_last_batch_only, "returned shape (2, 4, 64), expected (n, n_layers, d_model) = (6, 4, 64)"),
        (acts_lengths_from_first_batch, "the records of the first batch are right"),
        (acts_no_system_prompt, "the conversation lost its system prompt"),
        (acts_header_included, "it includes the assistant turn's header"),
        (acts_fixed_header_length, "your span starts one token early"),
        (acts_mask_from_pad_id, "not from input_ids != pad_token_id"),
        (acts_template_direct, "merges the system prompt into the first user message where the template has no system role"),
        (acts_merged_with_space, "merged into the user message with a space"),
        (acts_keeps_model_dtype, "returned dtype torch.bfloat16 on a bfloat16 model, expected torch.float32"),
        (acts_retokenized_with_special_tokens, "the token ids have a second bos token"),
    ]),
    "test_extract_contrastive_vectors": ("extract_contrastive_vectors", [
        (vec_neg_minus_pos, "neg - pos"),
        (vec_normalised, "normalised"),
        (vec_pos_mean_only, "subtract the negative mean"),
        (vec_token_pooled, "counting once"),
        (vec_unbalanced_denominator, "by the number of answers on both sides together"),
        (vec_one_layer, "returned shape (64,) (1 dims), expected (n_layers, d_model) = (4, 64): you returned one layer's"),
        (vec_keepdim, "returned shape (1, 4, 64) (3 dims), expected (n_layers, d_model)"),
        (vec_one_pair_per_question, "kept one pair per question"),
    ]),
    "test_extract_contrastive_vectors_input_checks": ("extract_contrastive_vectors", [
        (vec_no_error_on_empty, "should raise valueerror"),
        (vec_returns_none_on_empty, "returned none; it should raise valueerror"),
    ]),
    "test_steering_effect_by_layer": ("steering_effect_by_layer", [
        (steer_outside_context, "inside"),
        (steer_off_by_one, "steering was applied at blocks"),
        (steer_same_vector_everywhere, "its own vector"),
        (steer_normalised, "normalised"),
        (steer_ignores_coeff, "coefficient"),
        (steer_none_as_zero, "counted as 0"),
        (steer_one_call_per_question, "one batched call per layer"),
        (steer_hooks_never_removed, "hook(s)"),
        (steer_returns_list, "dict"),
        (steer_all_positions, 'positions="response"'),
        (steer_sampled, "must be greedy"),
        (steer_ignores_max_new_tokens, "pass max_new_tokens through"),
        (steer_wrong_template, "score with the eval_prompt_template passed"),
        (steer_swapped_scoring, "swapped"),
        (steer_misaligned_scoring, "scored with another question than its own"),
        (steer_system_prompt, "no system prompt"),
        (steer_zero_when_all_none, "store float('nan')"),
        (steer_divides_by_zero, "zerodivisionerror"),
        (steer_manual_enter_no_finally, "when generate raised an error"),
        (steer_upcasting_hook, "in the model's own dtype"),
        (steer_floor_mean, "rounded to a whole number"),
        (steer_scores_accumulate, "start a new list of scores for each layer"),
        (steer_tensor_means, "one-element tensor"),
        (steer_keyed_by_position, "not by its position in `layers`"),
        (steer_every_layer, "steer only the layers in `layers`"),
    ]),
    "test_top_sae_features_by_cosine": ("top_sae_features_by_cosine", [
        (cos_decoder_columns, "rows, not columns"),
        (cos_unnormalised_rows, "normalise each decoder row"),
        (cos_absolute, "not by its absolute value"),
        (cos_encoder_directions, "decoder"),
        (cos_vector_not_normalised, "[-1, 1]"),
        (cos_smallest_first, "largest first"),
        (cos_returns_lists, "should return its indices as a torch.tensor of shape (k,) = (3,), got a list"),
        (cos_keepdim, "(indices) returned shape (1, 3) (2 dims), expected (k,) = (3,)"),
        (cos_columns_normalised, "you normalised the columns of w_dec"),
        (cos_normalises_in_place, "changed the vector in place"),
        (cos_normalises_decoder_in_place, "changed sae.w_dec in place"),
    ]),
    "test_feature_activation_differences": ("feature_activation_differences", [
        (diff_absolute, "not by its absolute value"),
        (diff_neg_minus_pos, "not neg - pos"),
        (diff_encode_the_mean, "encode every row first"),
        (diff_pre_activations, "after the relu"),
        (diff_unbalanced, "mean over the positive rows minus mean over the negative rows"),
        (diff_smallest_first, "largest first"),
        (diff_mean_of_chunk_means, "a mean of the chunks' means"),
        (diff_ignores_batch_size, "encode at most batch_size rows at a time"),
        (diff_returns_numpy, "should return its indices as a torch.tensor of shape (k,) = (3,), got a ndarray"),
    ]),
}

# Correct implementations written another way: each must pass its test.
CORRECT_ALTERNATIVES = {
    "test_construct_system_prompt": [prompt_concatenated, prompt_str_format, prompt_joined],
    "test_generate_contrastive_responses": [gen_polarity_outer, gen_formatted_strings, gen_positional_args],
    "test_score_trait_response": [score_with_replace, score_try_int, score_scanned_by_hand],
    "test_score_coherence": [coherence_via_score_trait, score_with_replace],
    "test_filter_effective_pairs": [filter_nested_search, filter_sort_afterwards, filter_direct_lookup],
    "test_extract_all_layer_activations": [acts_left_padded, acts_no_attention_mask, acts_sorted_by_length,
                                           acts_hidden_states_and_last_hook, acts_tokenizer_padding],
    "test_extract_contrastive_vectors": [vec_mean_of_pair_differences, vec_one_extraction_call, vec_no_own_check],
    "test_extract_contrastive_vectors_input_checks": [vec_mean_of_pair_differences, vec_one_extraction_call,
                                                      vec_no_own_check],
    "test_steering_effect_by_layer": [steer_manual_hook, steer_exitstack, steer_numpy_nanmean, steer_sorted_layers,
                                      steer_scores_inside_context, steer_float32_means],
    "test_top_sae_features_by_cosine": [cos_functional, cos_feature_directions],
    "test_feature_activation_differences": [diff_concatenated_chunks, diff_running_sums, diff_weighted_chunk_means],
}
