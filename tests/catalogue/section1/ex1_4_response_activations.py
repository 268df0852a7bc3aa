"""Exercise 1.4 — Mean response activations, batched

Wrong extract_response_activations: one configurable version (`_extract`), each entry turning on one
mistake, and a few written out. `format_messages` comes from this module's globals (the test puts the
course's version there).
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import factory


@torch.inference_mode()
def _extract(model, tokenizer, system_prompts, questions, responses, layer, *, span="exact", source="hook",
             pad="right", attention=True, shift=True, out0=False, finally_remove=True, check_lengths=True,
             batch_size=8, batching="ok", keep_dtype=False, mask="lengths", special_tokens=False, keepdim=False,
             half_mean=False):
    from utils.chat import build_messages
    from utils.hooks import get_blocks, hidden_of

    if check_lengths == "two" and len(system_prompts) != len(responses):
        raise ValueError("lengths differ")
    if check_lengths is True and not len(system_prompts) == len(questions) == len(responses):
        raise ValueError("lengths differ")
    all_ids, all_spans = [], []
    for s, q, r in zip(system_prompts, questions, responses):
        text, sp = format_messages(build_messages(s, q, r), tokenizer)  # noqa: F821
        all_ids.append(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
        all_spans.append(sp)
    n = len(all_ids)
    starts = range(0, n - n % batch_size if batching == "drop_last" and n > batch_size else n, batch_size)
    if batching == "extra_batch":  # n // batch_size + 1 batches: an empty one when batch_size divides n
        starts = range(0, (n // batch_size + 1) * batch_size, batch_size)
    means = []
    for b0 in starts:
        ids = all_ids[b0:b0 + batch_size]
        spans = all_spans[:len(ids)] if batching == "first_spans" else all_spans[b0:b0 + batch_size]
        B, T = len(ids), max(len(x) for x in ids)
        pad_id = tokenizer.pad_token_id
        input_ids = torch.full((B, T), pad_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        sel = torch.zeros((B, T))
        for i, (x, (a, b)) in enumerate(zip(ids, spans)):
            off = T - len(x) if pad == "left" else 0
            input_ids[i, off:off + len(x)] = torch.tensor(x)
            attn[i, off:off + len(x)] = 1
            o = off if shift else 0
            lo, hi = {"exact": (a, b), "all": (0, T), "prompt": (0, b), "marker": (a, b + 1)}[span]
            if span == "all":
                sel[i, off:off + len(x)] = 1
            else:
                sel[i, lo + o:hi + o] = 1
        if mask == "ne_pad":
            attn = (input_ids != pad_id).long()
        kwargs = dict(input_ids=input_ids, attention_mask=attn if attention else None)
        if source == "hook":
            captured = {}

            def hook(module, args, output):
                captured["h"] = output[0] if out0 else hidden_of(output)

            handle = get_blocks(model)[layer].register_forward_hook(hook)
            if finally_remove:
                try:
                    model(**kwargs)
                finally:
                    handle.remove()
            else:
                model(**kwargs)
                handle.remove()
            h = captured["h"]
            if h.ndim == 2:
                h = h.unsqueeze(0).expand(B, -1, -1)
        else:
            hs = model(**kwargs, output_hidden_states=True).hidden_states
            h = {"hs[layer]": hs[layer], "hs[-1]": hs[-1], "hs[layer+1]": hs[layer + 1]}[source]
        h = h if keep_dtype else h.float()
        if half_mean:
            h = h.to(model.dtype)
        m = sel[:, :, None].to(h.dtype)
        means.append(((h * m).sum(1, keepdim=keepdim) / m.sum(1, keepdim=keepdim)).float().cpu() if half_mean
                     else ((h * m).sum(1, keepdim=keepdim) / m.sum(1, keepdim=keepdim)).cpu())
    return torch.cat(means)


@mistake("test_extract_response_activations", "inference_mode")
def extract_with_grad(model, tokenizer, system_prompts, questions, responses, layer, batch_size=8):
    """The stub's @torch.inference_mode() dropped: the forward pass records an autograd graph."""
    return _extract.__wrapped__(model, tokenizer, system_prompts, questions, responses, layer, batch_size=batch_size)


@mistake("test_extract_response_activations", "read tokenizer.padding_side")
@torch.inference_mode()
def extract_tokenizer_pads_left(model, tokenizer, system_prompts, questions, responses, layer, batch_size=8):
    """Lets the tokenizer pad, and shifts every span as if it padded on the left (the course's tokenizers do)."""
    from utils.chat import build_messages
    from utils.hooks import get_blocks, hidden_of

    if not len(system_prompts) == len(questions) == len(responses):
        raise ValueError("lengths differ")
    texts, spans = [], []
    for s, q, r in zip(system_prompts, questions, responses):
        text, span = format_messages(build_messages(s, q, r), tokenizer)  # noqa: F821
        texts.append(text)
        spans.append(span)
    means = []
    for b0 in range(0, len(texts), batch_size):
        enc = tokenizer(texts[b0:b0 + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
        T = enc["input_ids"].shape[1]
        sel = torch.zeros(enc["input_ids"].shape)
        for i, (a, b) in enumerate(spans[b0:b0 + batch_size]):
            off = T - int(enc["attention_mask"][i].sum())  # assumes the pads come first
            sel[i, off + a:off + b] = 1
        captured = {}
        handle = get_blocks(model)[layer].register_forward_hook(
            lambda module, args, output: captured.update(h=hidden_of(output)))
        try:
            model(**enc)
        finally:
            handle.remove()
        h = captured["h"].float()
        means.append(((h * sel[:, :, None]).sum(1) / sel.sum(1, keepdim=True)).cpu())
    return torch.cat(means)


@mistake("test_extract_response_activations", "from different batches")
@torch.inference_mode()
def extract_first_capture(model, tokenizer, system_prompts, questions, responses, layer, batch_size=8):
    """The hook appends to one list for every batch, and each batch reads captured[0] (the first batch's)."""
    from utils.chat import build_messages
    from utils.hooks import get_blocks, hidden_of

    if not len(system_prompts) == len(questions) == len(responses):
        raise ValueError("lengths differ")
    items = []
    for s, q, r in zip(system_prompts, questions, responses):
        text, span = format_messages(build_messages(s, q, r), tokenizer)  # noqa: F821
        items.append((tokenizer(text, add_special_tokens=False)["input_ids"], span))
    captured, means = [], []
    handle = get_blocks(model)[layer].register_forward_hook(lambda module, args, output: captured.append(hidden_of(output)))
    try:
        for b0 in range(0, len(items), batch_size):
            batch = items[b0:b0 + batch_size]
            T = max(len(x) for x, _ in batch)
            ids = torch.full((len(batch), T), tokenizer.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(batch), T), dtype=torch.long)
            sel = torch.zeros((len(batch), T))
            for i, (x, (a, b)) in enumerate(batch):
                ids[i, :len(x)] = torch.tensor(x)
                attn[i, :len(x)] = 1
                sel[i, a:b] = 1
            model(input_ids=ids, attention_mask=attn)
            h = captured[0].float()
            means.append(((h * sel[:, :, None]).sum(1) / sel.sum(1, keepdim=True)).cpu())
    finally:
        handle.remove()
    return torch.cat(means)


@factory
def _wrong_extract(**mistake):
    """One mistake; a batch_size among the mistakes is hard-coded (the caller's batch_size is ignored)."""
    def wrong(model, tokenizer, system_prompts, questions, responses, layer, batch_size=8):
        return _extract(model, tokenizer, system_prompts, questions, responses, layer,
                        **{"batch_size": batch_size, **mistake})
    return wrong


@correct("test_extract_response_activations")
@torch.inference_mode()
def alt_extract_hidden_states(model, tokenizer, system_prompts, questions, responses, layer, batch_size=8):
    """output_hidden_states, left padding with shifted spans; a hook only for the last block (hidden_states[-1] is normed)."""
    from contextlib import ExitStack

    from utils.chat import build_messages
    from utils.hooks import get_blocks, hidden_of

    n_blocks = len(get_blocks(model))
    out = []
    for b0 in range(0, len(responses), batch_size):
        rows = [format_messages(build_messages(s, q, r), tokenizer)  # noqa: F821
                for s, q, r in zip(system_prompts[b0:b0 + batch_size], questions[b0:b0 + batch_size], responses[b0:b0 + batch_size])]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in rows]
        T = max(map(len, ids))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (T - len(x)) + x for x in ids])
        attn = torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in ids])
        captured = {}
        with ExitStack() as stack:
            if layer == n_blocks - 1:
                handle = get_blocks(model)[layer].register_forward_hook(lambda m, a, o: captured.update(h=hidden_of(o)))
                stack.callback(handle.remove)
            res = model(input_ids=input_ids, attention_mask=attn, output_hidden_states=True)
        h = captured["h"] if layer == n_blocks - 1 else res.hidden_states[layer + 1]
        for i, (x, (s, e)) in enumerate(zip(ids, (sp for _, sp in rows))):
            off = T - len(x)
            out.append(h[i, off + s:off + e].float().mean(0))
    return torch.stack(out).cpu()


# Made by the factories above: each declared on the line that makes it.
mistake("test_extract_response_activations", "every token")(_wrong_extract(span="all"))
mistake("test_extract_response_activations", "prompt tokens")(_wrong_extract(span="prompt"))
mistake("test_extract_response_activations", "end-of-turn marker")(_wrong_extract(span="marker"))
mistake("test_extract_response_activations", "off by one")(_wrong_extract(source="hs[layer]"))
mistake("test_extract_response_activations", "final norm")(_wrong_extract(source="hs[-1]"))
mistake("test_extract_response_activations", "final norm")(_wrong_extract(source="hs[layer+1]"))
mistake("test_extract_response_activations", "padded ones are wrong")(_wrong_extract(pad="left", attention=False))
mistake("test_extract_response_activations", "padded ones are wrong")(_wrong_extract(pad="left", shift=False))
mistake("test_extract_response_activations", "output[0]")(_wrong_extract(out0=True))
mistake("test_extract_response_activations", "hook")(_wrong_extract(finally_remove=False))
mistake("test_extract_response_activations", "expected float32")(_wrong_extract(keep_dtype=True))
mistake("test_extract_response_activations", "before the masked sum")(_wrong_extract(half_mean=True))
mistake("test_extract_response_activations", "partial batch")(_wrong_extract(batching="drop_last"))
mistake("test_extract_response_activations", "second batch")(_wrong_extract(batching="first_spans"))
mistake("test_extract_response_activations", "no batch is empty")(_wrong_extract(batching="extra_batch"))
mistake("test_extract_response_activations", "forward passes")(_wrong_extract(batch_size=1))
mistake("test_extract_response_activations", "batch_size")(_wrong_extract(batch_size=64))
mistake("test_extract_response_activations", "use the batch_size argument")(_wrong_extract(batch_size=8))
mistake("test_extract_response_activations", "pad_token_id")(_wrong_extract(mask="ne_pad"))
mistake("test_extract_response_activations", "double BOS")(_wrong_extract(special_tokens=True))
mistake("test_extract_response_activations", "returned shape")(_wrong_extract(keepdim=True))
mistake("test_extract_response_activations_input_checks", "ValueError")(_wrong_extract(check_lengths=False))
mistake("test_extract_response_activations_input_checks", "3, 2 and 3")(_wrong_extract(check_lengths="two"))
correct("test_extract_response_activations")(_wrong_extract(check_lengths=False))
correct("test_extract_response_activations")(_wrong_extract(pad="left"))
correct("test_extract_response_activations")(_wrong_extract(pad="right", attention=False))
