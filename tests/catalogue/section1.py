"""Catalogue of plausible wrong implementations for Section 1; each must fail its test."""

from __future__ import annotations

import re

from utils.reference import load

ref = load("section1")


def parse_score_first_match(text):
    m = re.search(r"SCORE:\s*(\d+)", text)
    if not m:
        raise ValueError("no score")
    return int(m.group(1))


def parse_score_no_range_check(text):
    return int(re.findall(r"SCORE:\s*(-?\d+)", text)[-1]) if "SCORE" in text else ref.parse_score(text)


def parse_score_returns_str(text):
    return str(ref.parse_score(text))


def parse_score_returns_none(text):
    try:
        return ref.parse_score(text)
    except ValueError:
        return None


def parse_score_first_digit(text):
    """Reads one digit after the last SCORE: ('SCORE: 12' becomes 1)."""
    found = re.findall(r"SCORE:\s*(\d)", text)
    if not found or not 0 <= int(found[-1]) <= 3:
        raise ValueError("no score")
    return int(found[-1])


def parse_score_last_number(text):
    """The last number anywhere in the reply, once it has a SCORE: line."""
    numbers = re.findall(r"-?\d+", text)
    if "SCORE:" not in text or not numbers or not 0 <= int(numbers[-1]) <= 3:
        raise ValueError("no score")
    return int(numbers[-1])


def parse_score_split_rest(text):
    """int() of everything after the last SCORE: (crashes on text after the number)."""
    if "SCORE:" not in text:
        raise ValueError("no score")
    score = int(text.rsplit("SCORE:", 1)[1].strip())
    if not 0 <= score <= 3:
        raise ValueError("out of range")
    return score


def parse_score_last_line(text):
    """Reads only the reply's final line (misses a SCORE: line followed by a remark)."""
    lines = text.strip().splitlines()
    found = re.findall(r"SCORE:\s*(\d+)", lines[-1]) if lines else []
    if not found or not 0 <= int(found[-1]) <= 3:
        raise ValueError("no score")
    return int(found[-1])


def parse_score_last_valid(text):
    """The last SCORE: whose number is in 0-3, skipping an invalid final answer."""
    for found in reversed(re.findall(r"SCORE:\s*(\d+)", text)):
        if 0 <= int(found) <= 3:
            return int(found)
    raise ValueError("no score")


def parse_score_ignore_case(text):
    matches = re.findall(r"score:\s*(-?\d+)", text, flags=re.I)
    if not matches or not 0 <= int(matches[-1]) <= 3:
        raise ValueError(f"no valid score in {text!r}")
    return int(matches[-1])


def parse_score_rfind(text):
    i = text.rfind("SCORE:")
    m = re.match(r"\s*(-?\d+)", text[i + 6:]) if i >= 0 else None
    if m is None:
        raise ValueError("no score")
    score = int(m.group(1))
    if score not in (0, 1, 2, 3):
        raise ValueError("out of range")
    return score


# test name -> (reference object name, [(wrong implementation, phrase its failure message must contain)])
CATALOGUE = {
    "test_judge_prompt_template": ("JUDGE_PROMPT_TEMPLATE", [
        ("Rate how well the model played {role}. Question: {question}. Answer: {answer}.", "SCORE:"),
        ("Judge {role} answering {question}: {answer}. End with SCORE: <n> on a 0-3 scale (0 refusal, 1 helps out of role, 2 AI with traits, 3 in role). Example: {\"score\": 3}", "escape literal braces"),
        ("Judge {role} answering {question}. End with SCORE: <n>, 0 to 3.", "{answer}"),
        ("Rate how fully the model played {role} when asked {question}; its answer: {answer}. From 0 (refuses) to 3 "
         "(fully in role). Finish with SCORE: <n>.", "score 1 is missing"),
    ]),
    "test_parse_score_hidden": ("parse_score", [
        (parse_score_first_match, "expected 0"),
        (parse_score_returns_str, "expected 2"),
    ]),
    "test_parse_score": ("parse_score", [
        (parse_score_first_match, "last one"),
        (parse_score_no_range_check, "raise ValueError"),
        (parse_score_returns_str, "should return an int"),
        (parse_score_returns_none, "raise ValueError"),
        (parse_score_first_digit, "first digit"),
        (parse_score_last_number, "last number in the text"),
        (parse_score_split_rest, "right after the last 'SCORE:'"),
        (parse_score_last_line, "not only its final line"),
        (parse_score_last_valid, "draft score"),
    ]),
}


# ---------------------------------------------------------------------------------------------
# Exercise 1.2 -- generate_all_responses. The wrong versions call `generate_response` from this
# module's globals, which the test replaces with its recording fake.

from concurrent.futures import ThreadPoolExecutor, as_completed  # noqa: E402

import torch  # noqa: E402


def gen_sequential(personas, questions, max_tokens=256, max_workers=10):
    return {(n, q): generate_response(p, qq, max_tokens) for n, p in personas.items() for q, qq in enumerate(questions)}  # noqa: F821


def gen_as_completed_zip(personas, questions, max_tokens=256, max_workers=10):
    keys = [(n, q) for n in personas for q in range(len(questions))]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = [pool.submit(generate_response, personas[n], questions[q], max_tokens) for n, q in keys]  # noqa: F821
        return {key: fut.result() for key, fut in zip(keys, as_completed(futures))}


def gen_no_max_tokens(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, p, qq): (n, q)  # noqa: F821
                   for n, p in personas.items() for q, qq in enumerate(questions)}
        return {key: f.result() for f, key in futures.items()}


def gen_late_binding(personas, questions, max_tokens=256, max_workers=10):
    """A lambda per pair, submitted in the loop: it reads sp and qq when it runs, by then later values."""
    futures = {}
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        for n, sp in personas.items():
            for q, qq in enumerate(questions):
                futures[pool.submit(lambda: generate_response(sp, qq, max_tokens))] = (n, q)  # noqa: B023, F821
        return {key: f.result() for f, key in futures.items()}


def _gen_keyed(key_fn, workers=None, q_offset=0):
    def wrong(personas, questions, max_tokens=256, max_workers=10):
        with ThreadPoolExecutor(max_workers=workers or max_workers) as pool:
            futures = {pool.submit(generate_response, p, qq, max_tokens): key_fn(n, p, q + q_offset, qq)  # noqa: F821
                       for n, p in personas.items() for q, qq in enumerate(questions)}
            return {key: f.result() for f, key in futures.items()}
    return wrong


gen_keyed_by_prompt = _gen_keyed(lambda n, p, q, qq: (p, q))
gen_keys_swapped = _gen_keyed(lambda n, p, q, qq: (q, n))
gen_keyed_by_question_text = _gen_keyed(lambda n, p, q, qq: (n, qq))
gen_one_based = _gen_keyed(lambda n, p, q, qq: (n, q), q_offset=1)
gen_ignores_max_workers = _gen_keyed(lambda n, p, q, qq: (n, q), workers=32)


# ---------------------------------------------------------------------------------------------
# Exercise 1.3 -- format_messages


def _merged(messages, tokenizer, merge=True, keep_system=False):
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system" and not keep_system:
        system = msgs.pop(0)["content"]
        try:
            tokenizer.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
            msgs.insert(0, {"role": "system", "content": system})
        except Exception:
            if merge:
                msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
    return msgs


def fmt_system_not_merged(messages, tokenizer):
    return ref.format_messages([dict(m) for m in messages], tokenizer) if messages[0]["role"] != "system" else \
        _fmt_from(_merged(messages, tokenizer, keep_system=True), tokenizer)


def fmt_system_dropped(messages, tokenizer):
    return ref.format_messages([m for m in messages if m["role"] != "system"], tokenizer)


def fmt_double_bos(messages, tokenizer):
    text, (s, e) = ref.format_messages(messages, tokenizer)
    if tokenizer.bos_token and text.startswith(tokenizer.bos_token):
        return tokenizer.bos_token + text, (s + 1, e + 1)
    return text, (s, e)


def fmt_tokenized_with_special_tokens(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    start = len(tokenizer(prefix)["input_ids"])  # add_special_tokens=True: a second <bos> on Gemma
    n_content = len(tokenizer(msgs[-1]["content"].strip(), add_special_tokens=False)["input_ids"])
    return full, (start, start + n_content)


def _fmt_from(msgs, tokenizer):
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    return full, (start, len(tokenizer(full, add_special_tokens=False)["input_ids"]) - 2)


def fmt_end_includes_marker(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    full, (start, _) = _fmt_from(msgs, tokenizer)
    return full, (start, len(tokenizer(full, add_special_tokens=False)["input_ids"]) - 1)


def fmt_plus_one_guess(messages, tokenizer):
    """The prefix *without* the generation prompt, plus one token for the assistant header."""
    msgs = _merged(messages, tokenizer)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False)
    return full, (len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) + 1, len(ids) - 2)


def fmt_first_occurrence(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    c0 = full.find(msgs[-1]["content"].strip())
    c1 = c0 + len(msgs[-1]["content"].strip())
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c1 and e > s]
    return full, (inside[0], inside[-1] + 1)


def fmt_modifies_input(messages, tokenizer):
    if messages[0]["role"] == "system" and len(messages) > 1:
        system = messages.pop(0)["content"]
        messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
    return ref.format_messages(messages, tokenizer)


def fmt_no_check_last_role(messages, tokenizer):
    if messages[-1]["role"] != "assistant":
        return tokenizer.apply_chat_template(messages, tokenize=False), (0, 1)
    return ref.format_messages(messages, tokenizer)


# ---------------------------------------------------------------------------------------------
# Exercise 1.4 -- extract_response_activations. One configurable wrong version; each catalogue
# entry turns on one mistake. `format_messages` comes from this module's globals (the test puts
# the course's version there).


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


def extract_with_grad(model, tokenizer, system_prompts, questions, responses, layer, batch_size=8):
    """The stub's @torch.inference_mode() dropped: the forward pass records an autograd graph."""
    return _extract.__wrapped__(model, tokenizer, system_prompts, questions, responses, layer, batch_size=batch_size)


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


def _wrong_extract(**mistake):
    """One mistake; a batch_size among the mistakes is hard-coded (the caller's batch_size is ignored)."""
    def wrong(model, tokenizer, system_prompts, questions, responses, layer, batch_size=8):
        return _extract(model, tokenizer, system_prompts, questions, responses, layer,
                        **{"batch_size": batch_size, **mistake})
    return wrong


# ---------------------------------------------------------------------------------------------
# Exercise 1.5 -- extract_persona_vectors. `extract_response_activations` comes from this
# module's globals (the test puts a stand-in there).


def _persona_vectors(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3, *,
                     keep=lambda s, t: s is not None and s >= t, on_empty="warn", skip_empty_prompt=False,
                     q_shift=0, fixed_layer=None, fixed_threshold=None, use_scores=True):
    import warnings

    t = score_threshold if fixed_threshold is None else fixed_threshold
    kept = [k for n in personas for k in responses if k[0] == n
            and not (skip_empty_prompt and not personas[n])
            and (scores is None or not use_scores or keep(scores.get(k), t))]
    acts = extract_response_activations(  # noqa: F821
        model, tokenizer, [personas[n] for n, _ in kept], [questions[(q + q_shift) % len(questions)] for _, q in kept],
        [responses[k] for k in kept], layer if fixed_layer is None else fixed_layer)
    out = {}
    for name in personas:
        rows = [i for i, (n, _) in enumerate(kept) if n == name]
        if rows:
            out[name] = acts[rows].mean(0)
        elif on_empty == "nan":
            out[name] = acts[rows].mean(0)  # mean over zero rows: NaN
        elif on_empty == "zeros":
            out[name] = torch.zeros(acts.shape[1])
        elif on_empty == "warn" and not (skip_empty_prompt and not personas[name]):
            warnings.warn(f"{name}: skipped")
    return out


def _wrong_pv(**mistake):
    def wrong(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
        return _persona_vectors(model, tokenizer, personas, questions, responses, layer, scores, score_threshold, **mistake)
    return wrong


def pv_none_as_zero(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
    """A None or missing score counts as 0 (`scores.get(key) or 0`): it passes threshold 0."""
    return _persona_vectors(model, tokenizer, personas, questions, responses, layer, scores, score_threshold,
                            keep=lambda s, t: (s or 0) >= t)


def pv_falsy_scores(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
    """`if not scores:` keeps every response when the dict of scores is empty."""
    return _persona_vectors(model, tokenizer, personas, questions, responses, layer, scores or None, score_threshold)


def pv_names_from_responses(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
    """Groups by the names found in `responses`: a persona with no response at all is dropped without a warning."""
    present = {n: p for n, p in personas.items() if any(k[0] == n for k in responses)}
    return _persona_vectors(model, tokenizer, present, questions, responses, layer, scores, score_threshold)


# ---------------------------------------------------------------------------------------------
# Exercise 1.6 -- cosine similarity matrices


def _stack(vectors, names=None):
    names = list(vectors) if names is None else names
    return torch.stack([vectors[n].double() for n in names]), names


def _cos(X):
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T


def cos_dot_products(vectors):
    X, names = _stack(vectors)
    return X @ X.T, names


def cos_names_sorted(vectors):
    X, _ = _stack(vectors)
    return _cos(X), sorted(vectors)


def cos_sorted_consistently(vectors):
    """Rows, columns and names all in sorted order: consistent, but not the caller's order."""
    return ref.compute_cosine_similarity_matrix({k: vectors[k] for k in sorted(vectors)})


def cen_sorted_consistently(vectors):
    return ref.compute_cosine_similarity_matrix_centered({k: vectors[k] for k in sorted(vectors)})


def cos_centred_in_raw(vectors):
    X, names = _stack(vectors)
    return _cos(X - X.mean(0)), names


def cos_only_sim(vectors):
    return ref.compute_cosine_similarity_matrix(vectors)[0]


def cen_not_centred(vectors):
    X, names = _stack(vectors)
    return _cos(X), names


def cen_wrong_axis(vectors):
    X, names = _stack(vectors)
    return _cos(X - X.mean(dim=1, keepdim=True)), names


def cen_not_normalised(vectors):
    X, names = _stack(vectors)
    Xc = X - X.mean(0)
    return Xc @ Xc.T, names


def cen_in_place(vectors):
    X, names = _stack(vectors)
    mean = X.mean(0).to(next(iter(vectors.values())).dtype)
    for v in vectors.values():
        v -= mean
    X, names = _stack(vectors)
    return _cos(X), names


def cen_names_sorted(vectors):
    X, _ = _stack(vectors)
    return _cos(X - X.mean(0)), sorted(vectors)


# ---------------------------------------------------------------------------------------------
# Exercise 1.7 -- PCA and the axis


def _pca(vectors, default_personas, *, flip=False, normalise=True, roles_include_defaults=False,
         uncentred=False, order=None, fit_on_roles=False, check_names=True, axis_numpy=False):
    import numpy as np
    from sklearn.decomposition import PCA

    if check_names and any(n not in vectors for n in default_personas):
        raise ValueError("unknown default persona")
    defaults = [n for n in default_personas if n in vectors]
    names = list(vectors) if order is None else order(list(vectors), defaults)
    roles = list(vectors) if roles_include_defaults else [n for n in vectors if n not in defaults]
    axis = torch.stack([vectors[n].float() for n in defaults]).mean(0) - torch.stack([vectors[n].float() for n in roles]).mean(0)
    if flip:
        axis = -axis
    if normalise:
        axis = axis / axis.norm()
    X = torch.stack([vectors[n].float() for n in names]).numpy()
    pca = PCA(n_components=2)
    if uncentred:
        pca.fit(X)
        _, _, vh = np.linalg.svd(X, full_matrices=False)
        coords = X @ vh[:2].T
    elif fit_on_roles:
        pca.fit(torch.stack([vectors[n].float() for n in roles if n not in defaults]).numpy())
        coords = pca.transform(X)
    else:
        coords = pca.fit_transform(X)
    return (axis.numpy() if axis_numpy else axis), coords, pca


def _wrong_pca(**mistake):
    return lambda vectors, default_personas: _pca(vectors, default_personas, **mistake)


def pca_roles_only_rows(vectors, default_personas):
    axis, _, pca = _pca(vectors, default_personas)
    roles = [n for n in vectors if n not in default_personas]
    X = torch.stack([vectors[n].float() for n in roles]).numpy()
    return axis, pca.transform(X), pca


def pca_coords_flipped(vectors, default_personas):
    """Orients the coordinates toward the defaults but leaves pca.components_ as fitted."""
    axis, coords, pca = ref.pca_decompose_persona_vectors(vectors, default_personas)
    return axis, -coords, pca


def pca_all_components(vectors, default_personas):
    """PCA() with every component, and the first two columns of its coordinates."""
    from sklearn.decomposition import PCA

    axis, _, _ = ref.pca_decompose_persona_vectors(vectors, default_personas)
    X = torch.stack([v.float() for v in vectors.values()]).numpy()
    pca = PCA()
    return axis, pca.fit_transform(X)[:, :2], pca


# ---------------------------------------------------------------------------------------------
# Exercises 1.8 and 1.9 -- projections and rankings


def _proj(vectors, axis, *, divide="axis", sign=1.0, ascending=False, as_tensor=False):
    out = {}
    for n, a in vectors.items():
        value = a.float() @ axis.float()
        if divide in ("axis", "both"):
            value = value / axis.float().norm()
        if divide == "both":
            value = value / a.float().norm()
        value = sign * value
        out[n] = value if as_tensor else float(value)
    return dict(sorted(out.items(), key=lambda kv: float(kv[1]), reverse=not ascending))


def _wrong_proj(**mistake):
    return lambda vectors, axis: _proj(vectors, axis, **mistake)


def _rank(vectors, axis, *, measure="cos", ascending=False, check_shape=True, as_tensor=False):
    out = []
    for n, v in vectors.items():
        if check_shape and v.shape != axis.shape:
            raise ValueError("shape")
        v, a = v.float(), axis.float()
        value = {"cos": torch.nn.functional.cosine_similarity(v, a, dim=-1), "dot": v @ a,
                 "proj": v @ a / a.norm()}[measure]
        out.append((n, value if as_tensor else float(value)))
    return sorted(out, key=lambda x: float(x[1]), reverse=not ascending)


def _wrong_rank(**mistake):
    return lambda vectors, axis: _rank(vectors, axis, **mistake)


def rank_no_shape_check(vectors, axis):
    out = []
    for n, v in vectors.items():
        out.append((n, float((v.float() * axis.float()).sum() / (v.float().norm() * axis.float().norm()))))
    return sorted(out, key=lambda x: x[1], reverse=True)


# ---------------------------------------------------------------------------------------------
# More mistakes, found by reading each exercise as a student does.


def gen_passes_name(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, n, qq, max_tokens): (n, q)  # noqa: F821
                   for n in personas for q, qq in enumerate(questions)}
        return {key: f.result() for f, key in futures.items()}


def gen_args_swapped(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, qq, p, max_tokens): (n, q)  # noqa: F821
                   for n, p in personas.items() for q, qq in enumerate(questions)}
        return {key: f.result() for f, key in futures.items()}


def gen_index_lookup(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, p, qq, max_tokens): (n, questions.index(qq))  # noqa: F821
                   for n, p in personas.items() for qq in questions}
        return {key: f.result() for f, key in futures.items()}


def _fmt_span(full, prefix_len, content, tokenizer):
    c0 = full.find(content, prefix_len)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c0 + len(content) and e > s]
    return inside[0], inside[-1] + 1


def fmt_header_search(messages, tokenizer):
    """Finds the last assistant header by its text and starts the span right after it."""
    msgs = _merged(messages, tokenizer)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    header = "<start_of_turn>model\n" if "<start_of_turn>" in full else "<|im_start|>assistant\n"
    c0 = full.rindex(header) + len(header)
    content = msgs[-1]["content"].strip()
    c1 = full.index(content, c0) + len(content)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c1 and e > s]
    return full, (inside[0], inside[-1] + 1)


def fmt_end_minus_two(messages, tokenizer):
    """Start from the prefix's length, end two tokens before the end (end-of-turn marker + newline)."""
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return full, (len(tokenizer(prefix, add_special_tokens=False)["input_ids"]), len(ids) - 2)


def fmt_always_merge(messages, tokenizer):
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
    return ref.format_messages(msgs, tokenizer)


def _fmt_merge_with(sep, into="first"):
    def wrong(messages, tokenizer):
        msgs = [dict(m) for m in messages]
        if msgs[0]["role"] == "system":
            try:
                tokenizer.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)
            except Exception:
                system = msgs.pop(0)["content"]
                users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
                i = users[0] if into == "first" else users[-1]
                msgs[i]["content"] = f"{system}{sep}{msgs[i]['content']}"
        return ref.format_messages(msgs, tokenizer)
    return wrong


def fmt_no_strip_fallback(messages, tokenizer):
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    c0 = full.find(msgs[-1]["content"], len(prefix))
    if c0 < 0:
        raise ValueError("response not found in the rendered chat")
    return full, _fmt_span(full, len(prefix), msgs[-1]["content"], tokenizer)


def fmt_content_after_prefix(messages, tokenizer):
    """The response starts where the generation prompt ends (not so when only the final turn has a thinking block)."""
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    c0 = full.find(content, len(prefix))
    if c0 < 0:
        content = content.strip()
        c0 = full.find(content, len(prefix))
    c0, c1 = len(prefix), c0 + len(content)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c1 and e > s]
    return full, (inside[0], inside[-1] + 1)


def fmt_find_unchecked(messages, tokenizer):
    """full_prompt.find(content) without checking for -1 (the template trimmed the content)."""
    msgs = _merged(messages, tokenizer)
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    c0 = full.find(content, len(prefix))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c0 + len(content) and e > s]
    return full, (inside[0], inside[-1] + 1)


def fmt_assert_last_role(messages, tokenizer):
    assert messages[-1]["role"] == "assistant", "the last message must be the assistant's"
    return ref.format_messages(messages, tokenizer)


def _pv_missing(mode):
    def wrong(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
        import warnings

        kept = []
        for n in personas:
            for k in responses:
                if k[0] != n:
                    continue
                if scores is not None:
                    if mode == "missing_passes" and k in scores and (scores[k] is None or scores[k] < score_threshold):
                        continue
                    if mode == "keyerror" and (scores[k] is None or scores[k] < score_threshold):
                        continue
                    if mode == "falsy" and (not scores.get(k) or scores[k] < score_threshold):
                        continue
                kept.append(k)
        acts = extract_response_activations(  # noqa: F821
            model, tokenizer, [personas[n] for n, _ in kept], [questions[q] for _, q in kept], [responses[k] for k in kept], layer)
        out = {}
        for name in personas:
            rows = [i for i, (n, _) in enumerate(kept) if n == name]
            if rows:
                out[name] = acts[rows].mean(0, keepdim=mode == "keepdim")
            else:
                warnings.warn(f"{name}: skipped")
        return out
    return wrong


def cos_wrong_dim(vectors):
    X, names = _stack(vectors)
    return torch.nn.functional.cosine_similarity(X[:, None], X[None], dim=1), names


def cos_numpy(vectors):
    sim, names = ref.compute_cosine_similarity_matrix(vectors)
    return sim.numpy(), names


def cos_in_input_dtype(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n] for n in names])
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names


def cen_global_mean(vectors):
    X, names = _stack(vectors)
    return _cos(X - X.mean()), names


def cen_in_input_dtype(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n] for n in names])
    X = X - X.mean(dim=0, keepdim=True)
    return compute_cosine_similarity_matrix(dict(zip(names, X)))  # noqa: F821


def pca_axis_is_pc1(vectors, default_personas):
    _, coords, pca = ref.pca_decompose_persona_vectors(vectors, default_personas)
    return torch.tensor(pca.components_[0], dtype=torch.float32), coords, pca


def pca_three_components(vectors, default_personas):
    import numpy as np
    from sklearn.decomposition import PCA

    axis, _, _ = ref.pca_decompose_persona_vectors(vectors, default_personas)
    X = np.stack([vectors[n].float().numpy() for n in vectors])
    pca = PCA(n_components=3)
    return axis, pca.fit_transform(X), pca


def proj_divided_twice(vectors, axis):
    out = {n: float(a.float() @ axis.float() / axis.float().norm() ** 2) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def proj_centred(vectors, axis):
    mean = torch.stack([v.float() for v in vectors.values()]).mean(0)
    out = {n: float((a.float() - mean) @ axis.float() / axis.float().norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def proj_in_input_dtype(vectors, axis):
    out = {n: float(a @ axis / axis.norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def rank_abs(vectors, axis):
    out = [(n, abs(float(torch.nn.functional.cosine_similarity(v.float(), axis.float(), dim=0)))) for n, v in vectors.items()]
    return sorted(out, key=lambda x: x[1], reverse=True)


def rank_in_input_dtype(vectors, axis):
    out = []
    for n, v in vectors.items():
        if v.shape != axis.shape:
            raise ValueError("shape")
        out.append((n, float(torch.nn.functional.cosine_similarity(v, axis, dim=0))))
    return sorted(out, key=lambda x: x[1], reverse=True)


def rank_ndim_check_only(vectors, axis):
    for n, v in vectors.items():
        if v.ndim != 1:
            raise ValueError(f"{n}: select one layer first")
    return _rank(vectors, axis, check_shape=False)


CATALOGUE.update({
    "test_generate_all_responses": ("generate_all_responses", [
        (gen_sequential, "concurrently"),
        (gen_as_completed_zip, "mixed up"),
        (gen_no_max_tokens, "max_tokens"),
        (gen_keyed_by_prompt, "not its system prompt"),
        (gen_keys_swapped, "in that order"),
        (gen_keyed_by_question_text, "index"),
        (gen_one_based, "counts from 0"),
        (gen_ignores_max_workers, "max_workers"),
        (gen_passes_name, "persona's name"),
        (gen_args_swapped, "swapped"),
        (gen_index_lookup, "questions.index"),
        (gen_late_binding, "late binding"),
    ]),
    "test_format_messages": ("format_messages", [
        (fmt_system_not_merged, "merge the system prompt"),
        (fmt_system_dropped, "system prompt is missing"),
        (fmt_double_bos, "double BOS"),
        (fmt_tokenized_with_special_tokens, "off by one"),
        (fmt_end_includes_marker, "chat marker"),
        (fmt_plus_one_guess, "guess"),
        (fmt_first_occurrence, "earlier copy"),
        (fmt_modifies_input, "modified the messages"),
        (fmt_header_search, "header"),
        (fmt_end_minus_two, "off by one"),
        (fmt_always_merge, "merge only when the template has no system role"),
        (_fmt_merge_with("\n"), "separates them"),
        (_fmt_merge_with(" "), "separates them"),
        (_fmt_merge_with("\n\n", into="last"), "*first* user message"),
        (fmt_no_strip_fallback, "stripped content"),
        (fmt_content_after_prefix, "generation prompt does not have"),
        (fmt_find_unchecked, "stripped content"),
    ]),
    "test_format_messages_input_checks": ("format_messages", [
        (fmt_no_check_last_role, "should raise ValueError"),
        (fmt_assert_last_role, "got AssertionError"),
    ]),
    "test_extract_response_activations": ("extract_response_activations", [
        (_wrong_extract(span="all"), "every token"),
        (_wrong_extract(span="prompt"), "prompt tokens"),
        (_wrong_extract(span="marker"), "end-of-turn marker"),
        (_wrong_extract(source="hs[layer]"), "off by one"),
        (_wrong_extract(source="hs[-1]"), "final norm"),
        (_wrong_extract(source="hs[layer+1]"), "final norm"),
        (_wrong_extract(pad="left", attention=False), "padded ones are wrong"),
        (_wrong_extract(pad="left", shift=False), "padded ones are wrong"),
        (_wrong_extract(out0=True), "output[0]"),
        (_wrong_extract(finally_remove=False), "hook"),
        (_wrong_extract(keep_dtype=True), "expected float32"),
        (_wrong_extract(half_mean=True), "before the masked sum"),
        (extract_with_grad, "inference_mode"),
        (extract_tokenizer_pads_left, "read tokenizer.padding_side"),
        (extract_first_capture, "from different batches"),
        (_wrong_extract(batching="drop_last"), "partial batch"),
        (_wrong_extract(batching="first_spans"), "second batch"),
        (_wrong_extract(batch_size=1), "forward passes"),
        (_wrong_extract(batch_size=64), "batch_size"),
        (_wrong_extract(batch_size=8), "use the batch_size argument"),
        (_wrong_extract(mask="ne_pad"), "pad_token_id"),
        (_wrong_extract(special_tokens=True), "double BOS"),
        (_wrong_extract(keepdim=True), "returned shape"),
    ]),
    "test_extract_response_activations_input_checks": ("extract_response_activations", [
        (_wrong_extract(check_lengths=False), "ValueError"),
        (_wrong_extract(check_lengths="two"), "3, 2 and 3"),
    ]),
    "test_extract_persona_vectors": ("extract_persona_vectors", [
        (_wrong_pv(keep=lambda s, t: s is not None and s > t), ">="),
        (_wrong_pv(use_scores=False), "keep only those"),
        (_wrong_pv(fixed_threshold=3), "score_threshold argument"),
        (_wrong_pv(on_empty="nan"), "NaN"),
        (_wrong_pv(on_empty="zeros"), "skipped"),
        (_wrong_pv(on_empty="silent"), "warning"),
        (_wrong_pv(keep=lambda s, t: s is None or s >= t), "None"),
        (_wrong_pv(skip_empty_prompt=True), "empty system prompt"),
        (_wrong_pv(q_shift=1), "question"),
        (_wrong_pv(fixed_layer=0), "layer"),
        (_pv_missing("missing_passes"), "absent"),
        (_pv_missing("keyerror"), "absent"),
        (_pv_missing("falsy"), "truth value"),
        (_pv_missing("keepdim"), "returned shape"),
        (pv_none_as_zero, "passes threshold 0"),
        (pv_falsy_scores, "not `not scores`"),
        (pv_names_from_responses, "loop over `personas`"),
    ]),
    "test_compute_cosine_similarity_matrix": ("compute_cosine_similarity_matrix", [
        (cos_dot_products, "normalise"),
        (cos_names_sorted, "names[i]"),
        (cos_sorted_consistently, "don't sort the names"),
        (cos_centred_in_raw, "should not be centred"),
        (cos_only_sim, "(sim, names)"),
        (cos_wrong_dim, "returned shape"),
        (cos_numpy, "torch.Tensor"),
        (cos_in_input_dtype, "bf16"),
    ]),
    "test_compute_cosine_similarity_matrix_centered": ("compute_cosine_similarity_matrix_centered", [
        (cen_not_centred, "raw cosine"),
        (cen_wrong_axis, "own mean over dimensions"),
        (cen_not_normalised, "normalise"),
        (cen_in_place, "modified the vectors"),
        (cen_names_sorted, "names[i]"),
        (cen_sorted_consistently, "don't sort the names"),
        (cen_global_mean, "one number"),
        (cen_in_input_dtype, "bf16"),
    ]),
    "test_pca_decompose_persona_vectors": ("pca_decompose_persona_vectors", [
        (_wrong_pca(flip=True), "wrong way"),
        (_wrong_pca(normalise=False), "normalise"),
        (_wrong_pca(uncentred=True), "uncentred"),
        (_wrong_pca(order=lambda names, defaults: sorted(names)), "sorted by name"),
        (_wrong_pca(fit_on_roles=True), "all personas"),
        (pca_roles_only_rows, "returned shape"),
        (_wrong_pca(axis_numpy=True), "torch.Tensor"),
        (pca_axis_is_pc1, "is PC1"),
        (pca_three_components, "returned shape"),
        (pca_coords_flipped, "coordinates of the returned PCA"),
        (pca_all_components, "fit PCA(n_components=2)"),
    ]),
    "test_pca_decompose_persona_vectors_input_checks": ("pca_decompose_persona_vectors", [
        (_wrong_pca(check_names=False), "unknown default"),
    ]),
    "test_project_personas_onto_axis": ("project_personas_onto_axis", [
        (_wrong_proj(divide="none"), "not divided"),
        (_wrong_proj(sign=-1.0), "sign"),
        (_wrong_proj(divide="both"), "cosine"),
        (_wrong_proj(ascending=True), "sorted"),
        (_wrong_proj(as_tensor=True), "Python floats"),
        (proj_divided_twice, "divided by ‖v‖²"),
        (proj_centred, "subtracted the mean"),
        (proj_in_input_dtype, "bf16"),
    ]),
    "test_rank_by_cosine": ("rank_by_cosine", [
        (_wrong_rank(measure="dot"), "dot product"),
        (_wrong_rank(measure="proj"), "projection"),
        (_wrong_rank(ascending=True), "sorted"),
        (_wrong_rank(as_tensor=True), "floats"),
        (rank_abs, "absolute value"),
        (rank_in_input_dtype, "bf16"),
    ]),
    "test_rank_by_cosine_input_checks": ("rank_by_cosine", [
        (rank_no_shape_check, "ValueError"),
        (rank_ndim_check_only, "length 16"),
    ]),
})


# ---------------------------------------------------------------------------------------------
# Correct implementations written another way: each must pass its test.


def alt_gen_map(personas, questions, max_tokens=256, max_workers=10):
    keys = [(n, q) for n in personas for q in range(len(questions))]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        texts = pool.map(lambda k: generate_response(personas[k[0]], questions[k[1]], max_tokens), keys)  # noqa: F821
        return dict(zip(keys, texts))


def alt_gen_as_completed(personas, questions, max_tokens=256, max_workers=10):
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {pool.submit(generate_response, system_prompt=p, question=qq, max_tokens=max_tokens): (n, q)  # noqa: F821
                   for n, p in personas.items() for q, qq in enumerate(questions)}
        return {futures[f]: f.result() for f in as_completed(futures)}


def alt_fmt_rfind(messages, tokenizer):
    """The last occurrence of the response text in the full prompt is the last message's."""
    msgs = [dict(m) for m in messages]
    if msgs[-1]["role"] != "assistant":
        raise ValueError("last message must be the assistant's")
    if msgs[0]["role"] == "system":
        try:
            tokenizer.apply_chat_template(msgs, tokenize=False)
        except Exception:
            system = msgs.pop(0)["content"]
            msgs[0]["content"] = system + "\n\n" + msgs[0]["content"]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    c0 = full.rfind(content)
    if c0 < 0:
        content = content.strip()
        c0 = full.rfind(content)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if c0 <= s and e <= c0 + len(content) and e > s]
    return full, (inside[0], inside[-1] + 1)


def alt_fmt_searchsorted(messages, tokenizer):
    """Binary search of the content's characters in the token offsets (the span comes back as numpy ints)."""
    import numpy as np

    msgs = _merged(messages, tokenizer)
    if msgs[-1]["role"] != "assistant":
        raise ValueError("last message must be the assistant's")
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"]
    if full.find(content, len(prefix)) < 0:
        content = content.strip()
    c0 = full.find(content, len(prefix))
    offsets = np.array(tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
    start = np.searchsorted(offsets[:, 0], c0, side="left")
    end = np.searchsorted(offsets[:, 1], c0 + len(content), side="right")
    return full, (start, end)


def alt_fmt_token_counts(messages, tokenizer):
    """Token counts instead of character offsets: the prefix's tokens, then the content's."""
    msgs = _merged(messages, tokenizer)
    if msgs[-1]["role"] != "assistant":
        raise ValueError("last message must be the assistant's")
    prefix = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    content = msgs[-1]["content"] if full.find(msgs[-1]["content"], len(prefix)) >= 0 else msgs[-1]["content"].strip()
    c0 = full.find(content, len(prefix))  # not len(prefix): a template may put a thinking block before the content
    start = len(tokenizer(full[:c0], add_special_tokens=False)["input_ids"])
    return full, (start, start + len(tokenizer(content, add_special_tokens=False)["input_ids"]))


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


def alt_pv_per_persona(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
    import warnings

    out = {}
    for name, prompt in personas.items():
        keys = [k for k in responses if k[0] == name
                and (scores is None or (scores.get(k) is not None and scores.get(k) >= score_threshold))]
        if not keys:
            warnings.warn(f"persona {name!r} has no response that passes the judge")
            continue
        acts = extract_response_activations(  # noqa: F821
            model, tokenizer, [prompt] * len(keys), [questions[q] for _, q in keys], [responses[k] for k in keys], layer)
        out[name] = acts.mean(dim=0)
    return out


def alt_cos_broadcast(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n].float() for n in names])
    return torch.nn.functional.cosine_similarity(X[:, None, :], X[None, :, :], dim=-1), names


def alt_cos_sklearn(vectors):
    import numpy as np
    from sklearn.metrics.pairwise import cosine_similarity

    names = list(vectors)
    X = np.stack([vectors[n].double().numpy() for n in names])
    return torch.from_numpy(cosine_similarity(X)), names


def alt_cen_normalize(vectors):
    names = list(vectors)
    X = torch.stack([vectors[n].double() for n in names])
    Xn = torch.nn.functional.normalize(X - X.mean(0), dim=1)
    return (Xn @ Xn.T).float(), names


def alt_pca_fit_on_centred(vectors, default_personas):
    """Centres the vectors itself and fits the PCA on them; returns torch coordinates."""
    import numpy as np
    from sklearn.decomposition import PCA

    if set(default_personas) - set(vectors):
        raise ValueError("unknown default persona")
    X = np.stack([vectors[n].double().numpy() for n in vectors])
    is_default = np.array([n in default_personas for n in vectors])
    axis = X[is_default].mean(0) - X[~is_default].mean(0)
    Xc = X - X.mean(0)
    pca = PCA(n_components=2).fit(Xc)
    return torch.from_numpy(axis / np.linalg.norm(axis)).float(), torch.from_numpy(pca.transform(Xc)), pca


def alt_proj_numpy(vectors, axis):
    import numpy as np

    v = axis.double().numpy()
    out = {n: float(np.dot(a.double().numpy(), v) / np.linalg.norm(v)) for n, a in vectors.items()}
    return {n: out[n] for n in sorted(out, key=out.get, reverse=True)}


def alt_rank_unit_vectors(vectors, axis):
    if not torch.isfinite(axis).all() or axis.norm() == 0:
        raise ValueError("bad axis")
    u = torch.nn.functional.normalize(axis.double(), dim=0)
    out = []
    for n, v in vectors.items():
        if v.shape != axis.shape:
            raise ValueError(f"{n}: shape {tuple(v.shape)} differs from the axis {tuple(axis.shape)}")
        if not torch.isfinite(v).all() or v.norm() == 0:
            raise ValueError(f"{n}: no direction")
        out.append((n, (torch.nn.functional.normalize(v.double(), dim=0) @ u).item()))
    out.sort(key=lambda x: -x[1])
    return out


# Input checks for vectors with no direction (zero, NaN, inf).

def rank_shape_check_only(vectors, axis):
    """Checks shapes, but a zero or NaN axis gives NaN cosines (F.cosine_similarity's eps gives 0)."""
    for n, v in vectors.items():
        if v.shape != axis.shape:
            raise ValueError(f"{n}: shape differs from the axis")
    return rank_no_shape_check(vectors, axis)


def cos_clamped_norm(vectors):
    """The reference maths with a clamped norm: a zero vector silently gets cosine 0."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names])
    Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Xn @ Xn.T, names


def cos_zero_check_only(vectors):
    """Refuses a zero vector, but lets NaN through."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names])
    if (X.norm(dim=1) == 0).any():
        raise ValueError("zero vector")
    Xn = X / X.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names


def alt_cos_checked(vectors):
    names = list(vectors)
    if len(names) == 0:
        raise ValueError("empty")
    X = torch.stack([vectors[n].double() for n in names])
    norms = X.norm(dim=1)
    if not torch.isfinite(norms).all() or (norms == 0).any():
        raise ValueError("a vector has no direction")
    Xn = X / norms[:, None]
    return (Xn @ Xn.T).float(), names


def cen_no_count_check(vectors):
    """Centres a single vector into zeros and passes it on (its cosine matrix is [[nan]] or [[0]])."""
    names = list(vectors)
    if not names:
        raise ValueError("no vectors")
    X = torch.stack([vectors[n].float() for n in names])
    Xc = X - X.mean(dim=0, keepdim=True)
    Xn = Xc / Xc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Xn @ Xn.T, names


def cen_checks_before_centring(vectors):
    """Checks the vectors passed in, but not the centred ones (two identical vectors centre to zero: NaN)."""
    names = list(vectors)
    if len(names) < 2:
        raise ValueError("need two vectors")
    X = torch.stack([vectors[n].float() for n in names])
    if not torch.isfinite(X).all() or (X.norm(dim=1) == 0).any():
        raise ValueError("a vector is zero or not finite")
    Xc = X - X.mean(dim=0, keepdim=True)
    Xn = Xc / Xc.norm(dim=1, keepdim=True)
    return Xn @ Xn.T, names


def alt_cen_checked(vectors):
    if len(vectors) < 2:
        raise ValueError("need two vectors")
    names = list(vectors)
    X = torch.stack([vectors[n].double() for n in names])
    return compute_cosine_similarity_matrix(dict(zip(names, X - X.mean(0))))  # noqa: F821 (the notebook's, via `using`)


def proj_no_axis_check(vectors, axis):
    """The reference maths without checking the axis: a zero axis gives NaN projections."""
    out = {}
    for n, a in vectors.items():
        if a.shape != axis.shape:
            raise ValueError("shape")
        out[n] = float(a.float() @ axis.float() / axis.float().norm())
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def proj_zero_check_only(vectors, axis):
    if axis.norm() == 0:
        raise ValueError("zero axis")
    return proj_no_axis_check(vectors, axis)


def proj_no_shape_check(vectors, axis):
    if not torch.isfinite(axis).all() or axis.norm() == 0:
        raise ValueError("bad axis")
    out = {n: float((a.float() * axis.float()).sum() / axis.float().norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def proj_matmul_no_shape_check(vectors, axis):
    """a @ v with no shape check: a [num_layers, d] vector fails in float(), but a [1, d] row passes silently."""
    axis = axis.float()
    if not torch.isfinite(axis).all() or axis.norm() == 0:
        raise ValueError("bad axis")
    out = {n: float(a.float() @ axis / axis.norm()) for n, a in vectors.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))


def rank_numel_check(vectors, axis):
    """Compares the number of entries, not the shapes, and flattens."""
    for n, v in vectors.items():
        if v.numel() != axis.numel():
            raise ValueError(f"{n}: size differs from the axis")
        v = v.float()
        if not torch.isfinite(v).all() or v.norm() == 0:
            raise ValueError(f"{n}: no direction")
    a = axis.float()
    if not torch.isfinite(a).all() or a.norm() == 0:
        raise ValueError("bad axis")
    return rank_no_shape_check({n: v.flatten() for n, v in vectors.items()}, axis)


def alt_proj_checked(vectors, axis):
    import numpy as np

    v = axis.double().numpy()
    if not np.isfinite(v).all() or not v.any():
        raise ValueError("axis has no direction")
    for n, a in vectors.items():
        if tuple(a.shape) != tuple(axis.shape):
            raise ValueError(f"{n}: wrong shape")
    return alt_proj_numpy(vectors, axis)


CATALOGUE.update({
    "test_rank_by_cosine_input_checks": ("rank_by_cosine", CATALOGUE["test_rank_by_cosine_input_checks"][1] + [
        (rank_shape_check_only, "an axis that is zero"),
        (rank_numel_check, "compare the shapes, not the number of entries"),
    ]),
    "test_compute_cosine_similarity_matrix_input_checks": ("compute_cosine_similarity_matrix", [
        (cos_clamped_norm, "a zero vector"),
        (cos_zero_check_only, "NaN"),
        (alt_cos_broadcast, "should raise ValueError"),
    ]),
    "test_compute_cosine_similarity_matrix_centered_input_checks": ("compute_cosine_similarity_matrix_centered", [
        (cen_no_count_check, "a single vector"),
        (cen_checks_before_centring, "check the centred vectors"),
    ]),
    "test_project_personas_onto_axis_input_checks": ("project_personas_onto_axis", [
        (proj_no_axis_check, "an axis that is zero"),
        (proj_zero_check_only, "NaN"),
        (proj_no_shape_check, "select a layer first"),
        (proj_matmul_no_shape_check, "compare a.shape with the axis's shape"),
    ]),
})


CORRECT_ALTERNATIVES = {
    "test_parse_score": [parse_score_ignore_case, parse_score_rfind],
    "test_parse_score_hidden": [parse_score_ignore_case, parse_score_rfind],
    "test_generate_all_responses": [alt_gen_map, alt_gen_as_completed],
    "test_format_messages": [alt_fmt_rfind, alt_fmt_token_counts, fmt_no_check_last_role, alt_fmt_searchsorted],
    "test_format_messages_input_checks": [alt_fmt_rfind, alt_fmt_token_counts, alt_fmt_searchsorted],
    "test_extract_response_activations": [alt_extract_hidden_states, _wrong_extract(check_lengths=False),
                                          _wrong_extract(pad="left"),
                                          _wrong_extract(pad="right", attention=False)],
    "test_extract_persona_vectors": [alt_pv_per_persona],
    "test_compute_cosine_similarity_matrix": [alt_cos_broadcast, alt_cos_sklearn],
    "test_compute_cosine_similarity_matrix_centered": [alt_cen_normalize],
    # mean(defaults) - mean(all personas) is parallel to mean(defaults) - mean(roles): the same unit axis
    "test_pca_decompose_persona_vectors": [alt_pca_fit_on_centred, _wrong_pca(check_names=False),
                                           _wrong_pca(roles_include_defaults=True)],
    "test_pca_decompose_persona_vectors_input_checks": [alt_pca_fit_on_centred],
    "test_project_personas_onto_axis": [alt_proj_numpy],
    "test_rank_by_cosine": [alt_rank_unit_vectors, rank_no_shape_check],
    "test_rank_by_cosine_input_checks": [alt_rank_unit_vectors],
}

CORRECT_ALTERNATIVES.update({
    "test_compute_cosine_similarity_matrix_input_checks": [alt_cos_checked],
    "test_compute_cosine_similarity_matrix_centered_input_checks": [alt_cen_checked],
    "test_project_personas_onto_axis_input_checks": [alt_proj_checked],
})
