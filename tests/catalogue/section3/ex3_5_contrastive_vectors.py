"""Exercise 3.5 — Activations at every layer, and the difference of means

Wrong implementations of `extract_all_layer_activations` and `extract_contrastive_vectors` that
`test_extract_all_layer_activations`, `test_extract_contrastive_vectors` or
`test_extract_contrastive_vectors_input_checks` must reject, each declared where it is defined with the phrase
its failure message must contain, and correct implementations written another way, which must pass.
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section3._shared import ref
from utils.chat import build_messages, format_chat, format_prompt
from utils.hooks import get_blocks, hidden_of, hooks
from utils.models import input_device

extract_all_layer_activations = ref.extract_all_layer_activations  # the tests replace it with a stand-in


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


def _prefix_len(tokenizer, messages, add_generation_prompt):
    from utils.chat import normalize_messages, render

    text = render(tokenizer, normalize_messages(messages, tokenizer), add_generation_prompt=add_generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _span_by_prefix(model, tokenizer, records, batch_size, start_of):
    starts = {}
    for r, c in zip(records, _chats(records, tokenizer)):
        starts[c.text] = start_of(build_messages(r["system_prompt"], r["question"]))
    return _span_means(model, tokenizer, records, batch_size, spans=lambda c: (starts[c.text], c.token_span[1]))


def _merged_records(records, sep):
    return [{**r, "system_prompt": None, "question": f"{r['system_prompt']}{sep}{r['question']}"} for r in records]


@mistake("test_extract_all_layer_activations", "response tokens only")
def acts_all_tokens(model, tokenizer, records, batch_size=16):
    """Averages over every real token of the conversation, not the response span."""
    return _hooked(model, tokenizer, records, span=lambda s, e, n: (0, n))


@mistake("test_extract_all_layer_activations", "off by one layer")
def acts_embedding_included(model, tokenizer, records, batch_size=16):
    return _hidden_states_version(model, tokenizer, records, lambda hs: hs[:-1])


@mistake("test_extract_all_layer_activations", "final norm")
def acts_final_norm(model, tokenizer, records, batch_size=16):
    return _hidden_states_version(model, tokenizer, records, lambda hs: hs[1:])


@mistake("test_extract_all_layer_activations", "end-of-turn")
def acts_end_of_turn(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, span=lambda s, e, n: (s, e + 1))


@mistake("test_extract_all_layer_activations", "shifted by one")
def acts_plus_one_span(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, span=lambda s, e, n: (s + 1, e + 1))


@mistake("test_extract_all_layer_activations", "forward passes")
def acts_unbatched(model, tokenizer, records, batch_size=16):
    return torch.cat([_hooked(model, tokenizer, [r]) for r in records])


@mistake("test_extract_all_layer_activations", "expected (n, n_layers, d_model) = (6, 4, 64): put the records first")
def acts_layers_first(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records).transpose(0, 1).contiguous()


@mistake("test_extract_all_layer_activations", "with left padding, shift each span by its row's number of pads")
def acts_left_pad_unshifted_span(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, left_pad=True)


@mistake("test_extract_all_layer_activations", "hook(s)")
def acts_hooks_left_behind(model, tokenizer, records, batch_size=16):
    return _hooked(model, tokenizer, records, remove=False)


@mistake("test_extract_all_layer_activations", "inference_mode")
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


@mistake("test_extract_all_layer_activations", "your span is its first occurrence")
def acts_first_occurrence(model, tokenizer, records, batch_size=16):
    """Finds the response by searching for its tokens: the first match can be the question's."""
    return _span_means(model, tokenizer, records, batch_size, spans=_first_occurrence)


@mistake("test_extract_all_layer_activations", "leaves out the response's last token")
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


@mistake("test_extract_all_layer_activations", "at most batch_size records in each forward pass")
def acts_ignores_batch_size(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size=max(len(records), 1))


@mistake("test_extract_all_layer_activations",
         "returned shape (2, 4, 64), expected (n, n_layers, d_model) = (6, 4, 64)")
def acts_last_batch_only(model, tokenizer, records, batch_size=16):
    out = None
    for start in range(0, len(records), batch_size):
        out = _span_means(model, tokenizer, records[start:start + batch_size], batch_size)
    return out


@mistake("test_extract_all_layer_activations", "the records of the first batch are right")
def acts_lengths_from_first_batch(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, lengths_from_first_batch=True)


@mistake("test_extract_all_layer_activations", "the conversation lost its system prompt")
def acts_no_system_prompt(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, [{**r, "system_prompt": None} for r in records], batch_size)


@mistake("test_extract_all_layer_activations", "it includes the assistant turn's header")
def acts_header_included(model, tokenizer, records, batch_size=16):
    """Starts the span where the user turn ends (rendered without the generation prompt): the header is in."""
    return _span_by_prefix(model, tokenizer, records, batch_size, lambda msgs: _prefix_len(tokenizer, msgs, False))


@mistake("test_extract_all_layer_activations", "your span starts one token early")
def acts_fixed_header_length(model, tokenizer, records, batch_size=16):
    """Start = end of the user turn + the tokens of '<|im_start|>assistant\\n' (what the header is on Qwen2.5)."""
    header = len(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    return _span_by_prefix(model, tokenizer, records, batch_size,
                           lambda msgs: _prefix_len(tokenizer, msgs, False) + header)


@mistake("test_extract_all_layer_activations", "not from input_ids != pad_token_id")
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


@mistake("test_extract_all_layer_activations",
         "merges the system prompt into the first user message where the template has no system role")
def acts_template_direct(model, tokenizer, records, batch_size=16):
    """Renders with tokenizer.apply_chat_template itself, system message included (no merging where unsupported)."""
    out = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        for r in batch:
            tokenizer.apply_chat_template(build_messages(r["system_prompt"], r["question"], r["response"]), tokenize=False)
        out.append(_span_means(model, tokenizer, batch, batch_size))
    return torch.cat(out)


@mistake("test_extract_all_layer_activations", "merged into the user message with a space")
def acts_merged_with_space(model, tokenizer, records, batch_size=16):
    from utils.chat import supports_system_role

    if supports_system_role(tokenizer):
        return _span_means(model, tokenizer, records, batch_size)
    return _span_means(model, tokenizer, _merged_records(records, " "), batch_size)


@mistake("test_extract_all_layer_activations",
         "returned dtype torch.bfloat16 on a bfloat16 model, expected torch.float32")
def acts_keeps_model_dtype(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, dtype=next(model.parameters()).dtype)


@mistake("test_extract_all_layer_activations", "the token ids have a second bos token")
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


@mistake("test_extract_contrastive_vectors", "neg - pos")
def vec_neg_minus_pos(model, tokenizer, effective_pairs):
    return -ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)


@mistake("test_extract_contrastive_vectors", "normalised")
def vec_normalised(model, tokenizer, effective_pairs):
    v = ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)
    return v / v.norm(dim=-1, keepdim=True)


@mistake("test_extract_contrastive_vectors", "subtract the negative mean")
def vec_pos_mean_only(model, tokenizer, effective_pairs):
    return extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs]).mean(0)


@mistake("test_extract_contrastive_vectors", "counting once")
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


@mistake("test_extract_contrastive_vectors", "by the number of answers on both sides together")
def vec_unbalanced_denominator(model, tokenizer, effective_pairs):
    if not effective_pairs:
        raise ValueError("no pairs")
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return (pos.sum(0) - neg.sum(0)) / (len(pos) + len(neg))


@mistake("test_extract_contrastive_vectors",
         "returned shape (64,) (1 dims), expected (n_layers, d_model) = (4, 64): you returned one layer's")
def vec_one_layer(model, tokenizer, effective_pairs):
    return ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)[-1]


@mistake("test_extract_contrastive_vectors", "returned shape (1, 4, 64) (3 dims), expected (n_layers, d_model)")
def vec_keepdim(model, tokenizer, effective_pairs):
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return pos.mean(0, keepdim=True) - neg.mean(0, keepdim=True)


@mistake("test_extract_contrastive_vectors", "kept one pair per question")
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


@mistake("test_extract_contrastive_vectors_input_checks", "should raise valueerror")
def vec_no_error_on_empty(model, tokenizer, effective_pairs):
    if not effective_pairs:
        n, d = len(get_blocks(model)), model.config.get_text_config().hidden_size
        return torch.zeros(n, d)
    return ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)


@mistake("test_extract_contrastive_vectors_input_checks", "returned none; it should raise valueerror")
def vec_returns_none_on_empty(model, tokenizer, effective_pairs):
    if not effective_pairs:
        return None
    return ref.extract_contrastive_vectors(model, tokenizer, effective_pairs)


@mistake("test_extract_all_layer_activations", "the last, partial batch")
def acts_drops_partial_batch(model, tokenizer, records, batch_size=16):
    """Counts whole batches (at least one): with 5 records and batch_size=2 the fifth is never run."""
    n_batches = max(1, len(records) // batch_size)
    out = [_span_means(model, tokenizer, records[b * batch_size:(b + 1) * batch_size], batch_size) for b in range(n_batches)]
    return torch.cat(out)


@mistake("test_extract_contrastive_vectors", "single pair")
def vec_squeezed(model, tokenizer, effective_pairs):
    """Squeezes the activations 'to drop a stray dimension': with one pair the records' dimension goes too."""
    if not effective_pairs:
        raise ValueError("no effective pairs")
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs]).squeeze()
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs]).squeeze()
    return pos.mean(0) - neg.mean(0)


# Correct, written another way: each must pass.
@correct("test_extract_all_layer_activations")
def acts_paired_batches(model, tokenizer, records, batch_size=16):
    """Batches from the end backwards: the short batch comes first."""
    rows = []
    stop = len(records)
    while stop > 0:
        start = max(0, stop - batch_size)
        rows.insert(0, _span_means(model, tokenizer, records[start:stop], batch_size))
        stop = start
    return torch.cat(rows)


@correct("test_extract_all_layer_activations")
def acts_left_padded(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, left_pad=True)


@correct("test_extract_all_layer_activations")
def acts_no_attention_mask(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size, mask=False)


@correct("test_extract_all_layer_activations")
def acts_sorted_by_length(model, tokenizer, records, batch_size=16):
    return _span_means(model, tokenizer, records, batch_size,
                       order=lambda chats: sorted(range(len(chats)), key=lambda i: len(chats[i].input_ids)))


@correct("test_extract_all_layer_activations")
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


@correct("test_extract_all_layer_activations")
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


@correct("test_extract_contrastive_vectors", "test_extract_contrastive_vectors_input_checks")
def vec_mean_of_pair_differences(model, tokenizer, effective_pairs):
    if not effective_pairs:
        raise ValueError("no effective pairs")
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return (pos - neg).mean(0)


@correct("test_extract_contrastive_vectors", "test_extract_contrastive_vectors_input_checks")
def vec_one_extraction_call(model, tokenizer, effective_pairs):
    if len(effective_pairs) == 0:
        raise ValueError("there are no effective pairs")
    n = len(effective_pairs)
    acts = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs]
                                         + [p["neg"] for p in effective_pairs])
    return acts[:n].mean(0) - acts[n:].mean(0)


@correct("test_extract_contrastive_vectors", "test_extract_contrastive_vectors_input_checks")
def vec_no_own_check(model, tokenizer, effective_pairs):
    """No check of its own: extract_all_layer_activations raises the ValueError for an empty list."""
    pos = extract_all_layer_activations(model, tokenizer, [p["pos"] for p in effective_pairs])
    neg = extract_all_layer_activations(model, tokenizer, [p["neg"] for p in effective_pairs])
    return pos.mean(0) - neg.mean(0)
