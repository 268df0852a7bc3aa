"""Exercise 4.3 — Projections: the vector as a monitor

Wrong and correct compute_trait_projections: other denominators, spans, layers, paddings and
templates applied by hand, each declared with the test it must fail and the phrase its message must name.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section4._shared import LAYER, build_messages, conversations_from, response_mean_activations
from utils.chat import format_chat
from utils.hooks import get_blocks, hidden_of


def _check_inputs(model, system_prompts, questions, responses, vector, directions=True):
    d = model.config.get_text_config().hidden_size
    vector = torch.as_tensor(vector, dtype=torch.float32)
    if vector.shape != (d,):
        raise ValueError("bad vector")
    if not len(system_prompts) == len(questions) == len(responses):
        raise ValueError("lengths differ")
    if directions and (not torch.isfinite(vector).all() or not vector.any()):
        raise ValueError("vector has no direction")
    return vector


@mistake("test_compute_trait_projections_input_checks", "a zero vector")
def proj_no_direction_check(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Checks shapes and lengths, but a zero vector gives NaN projections."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector, directions=False)
    convs = conversations_from(system_prompts, questions, responses)
    acts = response_mean_activations(model, tokenizer, convs, layers=[layer])[:, 0]
    return (acts.float() @ (vector / vector.norm())).tolist()


def _projections(model, tokenizer, system_prompts, questions, responses, vector, layer, *, denom="norm", span="response", offset=0):
    vector = _check_inputs(model, system_prompts, questions, responses, vector)
    convs = conversations_from(system_prompts, questions, responses)
    if span == "response":
        acts = response_mean_activations(model, tokenizer, convs, layers=[layer + offset])[:, 0]
    else:
        from utils.activations import span_means

        chats = [format_chat(c, tokenizer) for c in convs]
        acts = torch.cat(span_means(model, [c.input_ids for c in chats], [[(0, len(c.input_ids))] for c in chats], [layer]))[:, 0]
    scale = {"norm": vector.norm(), "none": torch.tensor(1.0), "norm2": vector.norm() ** 2}[denom]
    return (acts @ vector / scale).tolist()


def _block_output(model, ids, layer, attention_mask=None, hidden_states=False):
    """Block `layer`'s output [B, T, d] (float32) for a batch of ids."""
    device = model.get_input_embeddings().weight.device
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(device)}
    with torch.no_grad():
        # hidden_states[layer + 1] is block `layer`'s output except at the last block, where it is the final norm's
        # output: hidden_states=True reads it from hidden_states below the last block only, "always" everywhere
        if hidden_states == "always" or (hidden_states and layer + 1 < len(get_blocks(model))):
            return model(input_ids=ids.to(device), output_hidden_states=True, **kwargs).hidden_states[layer + 1].float().cpu()
        seen = {}
        handle = get_blocks(model)[layer].register_forward_hook(lambda m, a, out: seen.update(h=hidden_of(out)))
        try:
            model(input_ids=ids.to(device), **kwargs)
        finally:
            handle.remove()
    return seen["h"].float().cpu()


def _hand_rolled(model, tokenizer, system_prompts, questions, responses, vector, layer, *, span_of=None, empty_system=False,
                 merge=None, add_special=False, as_numpy=False, hidden_states=False):
    """One chat at a time, the template applied by hand, the span located by `span_of(text, prompt_text, response, tok)`."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector)
    out = []
    for s, q, r in zip(system_prompts, questions, responses):
        msgs = []
        if s is not None and (s or empty_system):
            if merge is not None:
                q = f"{s}{merge}{q}"
            else:
                msgs.append({"role": "system", "content": s})
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        start, end = span_of(text, prompt, r, enc, tokenizer)
        h = _block_output(model, torch.tensor([enc["input_ids"]]), layer, hidden_states=hidden_states)[0]
        a = h[start:end].mean(0)
        if as_numpy:
            v = vector.numpy()
            out.append(np.float32(a.numpy() @ v / np.linalg.norm(v)))
        else:
            out.append(float(a @ vector / vector.norm()))
    return out


def _char_to_tokens(enc, c0, c1):
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= c0 and b <= c1 and b > a]
    return inside[0], inside[-1] + 1


def _span_after_prompt(text, prompt, r, enc, tok):  # correct: search after the prompt
    c0 = text.find(r.strip(), len(prompt))
    return _char_to_tokens(enc, c0, c0 + len(r.strip()))


def _span_first_match(text, prompt, r, enc, tok):
    c0 = text.find(r)
    return _char_to_tokens(enc, c0, c0 + len(r))


def _n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _span_prompt_to_end(text, prompt, r, enc, tok):
    return _n_tokens(tok, prompt), len(enc["input_ids"])


def _span_prompt_minus_two(text, prompt, r, enc, tok):
    return _n_tokens(tok, prompt), len(enc["input_ids"]) - 2


def _span_header(text, prompt, r, enc, tok):
    """From the end of the conversation before the assistant turn (its header included)."""
    before = text[: text.rfind(r)]
    header = before.rfind("<|im_start|>") if "<|im_start|>" in before else len(before)
    s, e = _span_after_prompt(text, prompt, r, enc, tok)
    return _n_tokens(tok, text[:header]), e


def _span_last_token(text, prompt, r, enc, tok):
    s, e = _span_after_prompt(text, prompt, r, enc, tok)
    return e - 1, e


@mistake("test_compute_trait_projections", "not divided by ‖v‖")
def proj_no_norm(*args):
    return _projections(*args, denom="none")


@mistake("test_compute_trait_projections", "‖v‖²")
def proj_norm_squared(*args):
    return _projections(*args, denom="norm2")


@mistake("test_compute_trait_projections", "response tokens only")
def proj_all_tokens(*args):
    return _projections(*args, span="all")


@mistake("test_compute_trait_projections", "off by one layer")
def proj_layer_minus_one(*args):
    return _projections(*args, offset=-1)


@mistake("test_compute_trait_projections", "off by one layer")
def proj_layer_plus_one(*args):
    return _projections(*args, offset=1)


@mistake("test_compute_trait_projections", "`layer` is ignored")
def proj_layer_global(model, tokenizer, system_prompts, questions, responses, vector, layer):
    return _projections(model, tokenizer, system_prompts, questions, responses, vector, LAYER)


@mistake("test_compute_trait_projections", "not a tensor")
def proj_tensor(*args):
    return torch.tensor(_projections(*args))


@mistake("test_compute_trait_projections", "sign is flipped")
def proj_neg(*args):
    return [-x for x in _projections(*args)]


@mistake("test_compute_trait_projections", "end-of-turn token(s)")
def proj_to_end(*args):
    return _hand_rolled(*args, span_of=_span_prompt_to_end)


@mistake("test_compute_trait_projections", "ends in two tokens")
def proj_minus_two(*args):
    """Prompt length to two tokens before the end: right for '<|im_end|>\\n', wrong for a one-token end of turn."""
    return _hand_rolled(*args, span_of=_span_prompt_minus_two)


@mistake("test_compute_trait_projections", "assistant header")
def proj_header(*args):
    return _hand_rolled(*args, span_of=_span_header)


@mistake("test_compute_trait_projections", "only the last response token")
def proj_last_token(*args):
    return _hand_rolled(*args, span_of=_span_last_token)


@mistake("test_compute_trait_projections", "occurrence of the response text")
def proj_first_match(*args):
    return _hand_rolled(*args, span_of=_span_first_match)


@mistake("test_compute_trait_projections", "empty system prompt")
def proj_empty_system_kept(*args):
    return _hand_rolled(*args, span_of=_span_after_prompt, empty_system=True)


@mistake("test_compute_trait_projections", "merged into the question with '\\n'")
def proj_merge_newline(model, tokenizer, *args):
    """Merges the system prompt into the question by hand, with one newline (the course: two)."""
    from utils.chat import supports_system_role

    merge = None if supports_system_role(tokenizer) else "\n"
    return _hand_rolled(model, tokenizer, *args, span_of=_span_after_prompt, merge=merge)


@mistake("test_compute_trait_projections", "plain Python floats")
def proj_numpy_float32(*args):
    return [np.float32(x) for x in _projections(*args)]


def _batched(model, tokenizer, system_prompts, questions, responses, vector, layer, *, side="left", mask=True, shift=True):
    vector = _check_inputs(model, system_prompts, questions, responses, vector)
    chats = [format_chat(build_messages(s, q, r), tokenizer) for s, q, r in zip(system_prompts, questions, responses)]
    T = max(len(c.input_ids) for c in chats)
    ids = torch.zeros((len(chats), T), dtype=torch.long)
    attn = torch.zeros((len(chats), T), dtype=torch.long)
    offsets = []
    for b, c in enumerate(chats):
        n = len(c.input_ids)
        off = T - n if side == "left" else 0
        ids[b, off:off + n] = torch.tensor(c.input_ids)
        attn[b, off:off + n] = 1
        offsets.append(off if shift else 0)
    h = _block_output(model, ids, layer, attention_mask=attn if mask else None)
    acts = torch.stack([h[b, c.token_span[0] + o:c.token_span[1] + o].mean(0) for b, (c, o) in enumerate(zip(chats, offsets))])
    return (acts @ (vector / vector.norm())).tolist()


@mistake("test_compute_trait_projections", "without the attention mask")
def proj_left_pad_no_mask(*args):
    return _batched(*args, mask=False)


@mistake("test_compute_trait_projections", "not shifted")
def proj_left_pad_unshifted(*args):
    return _batched(*args, shift=False)


@correct("test_compute_trait_projections")
def proj_left_padded(*args):
    return _batched(*args)


@correct("test_compute_trait_projections")
def proj_right_padded(*args):
    return _batched(*args, side="right")


@correct("test_compute_trait_projections", "test_compute_trait_projections_input_checks")
def proj_per_chat_hooks(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Correct: format_chat per example, a hook, float64 maths."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector).double()
    out = []
    for s, q, r in zip(system_prompts, questions, responses):
        chat = format_chat(build_messages(s, q, r), tokenizer)
        h = _block_output(model, torch.tensor([chat.input_ids]), layer)[0].double()
        out.append(float(h[slice(*chat.token_span)].mean(0) @ vector / vector.norm()))
    return out


@correct("test_compute_trait_projections")
def proj_hidden_states_numpy(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Correct: hidden_states[layer + 1] (a hook at the last block, whose hidden_states entry is normed), the
    template applied by hand, numpy maths, Python floats."""
    return [float(x) for x in _hand_rolled(model, tokenizer, system_prompts, questions, responses, vector, layer,
                                           span_of=_span_after_prompt, as_numpy=True, hidden_states=True,
                                           merge=None if _system_role(tokenizer) else "\n\n")]


@mistake("test_compute_trait_projections", "final norm")
def proj_hidden_states_everywhere(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """hidden_states[layer + 1] at every layer: at the last block that is hidden_states[-1], the final norm's output."""
    return _hand_rolled(model, tokenizer, system_prompts, questions, responses, vector, layer, span_of=_span_after_prompt,
                        hidden_states="always", merge=None if _system_role(tokenizer) else "\n\n")


@mistake("test_compute_trait_projections_input_checks", "a vector holding inf")
def proj_no_inf_check(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Refuses a zero or NaN vector, but not one holding inf (every projection is then inf or NaN)."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector, directions=False)
    if torch.isnan(vector).any() or not vector.any():
        raise ValueError("vector has no direction")
    return _projections(model, tokenizer, system_prompts, questions, responses, vector.nan_to_num(posinf=1.0), layer)


def _system_role(tokenizer):
    from utils.chat import supports_system_role

    return supports_system_role(tokenizer)


@mistake("test_compute_trait_projections_input_checks", "ValueError")
@correct("test_compute_trait_projections")  # no input checks: full credit for the maths
def proj_no_checks(model, tokenizer, system_prompts, questions, responses, vector, layer):
    n = min(len(system_prompts), len(questions), len(responses))
    vector = torch.as_tensor(vector).reshape(-1)[: model.config.get_text_config().hidden_size]
    return _projections(model, tokenizer, list(system_prompts)[:n], list(questions)[:n], list(responses)[:n], vector, layer)


@mistake("test_compute_trait_projections_input_checks", "lists of different lengths")
def proj_no_length_check(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Checks the vector, then zips the lists (the shortest wins)."""
    n = min(len(system_prompts), len(questions), len(responses))
    return _projections(model, tokenizer, list(system_prompts)[:n], list(questions)[:n], list(responses)[:n], vector, layer)


@mistake("test_compute_trait_projections_input_checks", "shape [1, 64]")
def proj_accepts_row_vector(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Checks only the vector's last dimension, then flattens it."""
    vector = torch.as_tensor(vector)
    if vector.shape[-1] != model.config.get_text_config().hidden_size:
        raise ValueError("bad vector size")
    return _projections(model, tokenizer, system_prompts, questions, responses, vector.reshape(-1), layer)


# -- record counts that do not divide a batch size, bfloat16 vectors, lengths, -inf ----------------------------
@mistake("test_compute_trait_projections", "partial batch")
def proj_drops_partial_batch(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Its own batches of 4, over full batches only: records past the last multiple of 4 are lost."""
    vector = _check_inputs(model, system_prompts, questions, responses, vector)
    convs = conversations_from(system_prompts, questions, responses)
    out = []
    for b in range(len(convs) // 4):
        acts = response_mean_activations(model, tokenizer, convs[4 * b:4 * b + 4], layers=[layer])[:, 0]
        out += (acts @ (vector / vector.norm())).tolist()
    return out


@mistake("test_compute_trait_projections", "wrong order")
def proj_sorted_by_length(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Sorts the records by response length (less padding) and returns the projections in that order."""
    order = sorted(range(len(responses)), key=lambda i: len(responses[i]))
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return _projections(model, tokenizer, pick(system_prompts), pick(questions), pick(responses), vector, layer)


@mistake("test_compute_trait_projections", "bfloat16")
def proj_in_vector_dtype(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Brings the activations to the vector's dtype: a bfloat16 vector gives bfloat16 maths."""
    _check_inputs(model, system_prompts, questions, responses, vector)
    vector = torch.as_tensor(vector)
    acts = response_mean_activations(model, tokenizer, conversations_from(system_prompts, questions, responses), layers=[layer])
    return (acts[:, 0].to(vector.dtype) @ (vector / vector.norm())).float().tolist()


@mistake("test_compute_trait_projections", "float32")
def proj_vector_as_given(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Uses the vector as given: float32 activations @ a bfloat16 vector raises."""
    _check_inputs(model, system_prompts, questions, responses, vector)
    acts = response_mean_activations(model, tokenizer, conversations_from(system_prompts, questions, responses), layers=[layer])
    return (acts[:, 0] @ (vector / vector.norm())).tolist()


@correct("test_compute_trait_projections", "test_compute_trait_projections_input_checks")
def proj_float64_single_record_batches(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Correct: one record per call of response_mean_activations, float64 maths on a float64 vector."""
    v = _check_inputs(model, system_prompts, questions, responses, vector).double()
    out = []
    for conv in conversations_from(system_prompts, questions, responses):
        a = response_mean_activations(model, tokenizer, [conv], layers=[layer])[0, 0].double()
        out.append(float(a @ v / v.norm()))
    return out


@mistake("test_compute_trait_projections_input_checks", "lists of different lengths")
def proj_compares_two_lengths(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Compares the number of system prompts with the number of responses only, then zips the three lists."""
    if len(system_prompts) != len(responses):
        raise ValueError("lengths differ")
    vector = _check_inputs(model, system_prompts, system_prompts, responses, vector)
    convs = [build_messages(s, q, r) for s, q, r in zip(system_prompts, questions, responses)]
    acts = response_mean_activations(model, tokenizer, convs, layers=[layer])[:, 0]
    return (acts @ (vector / vector.norm())).tolist()


@mistake("test_compute_trait_projections_input_checks", "-inf")
def proj_checks_plus_inf_only(model, tokenizer, system_prompts, questions, responses, vector, layer):
    """Looks for NaN and +inf by comparison (`v == inf`): a vector holding -inf gets through."""
    v = _check_inputs(model, system_prompts, questions, responses, vector, directions=False)
    if torch.isnan(v).any() or (v == float("inf")).any() or not v.any():
        raise ValueError("vector has no direction")
    return _projections(model, tokenizer, system_prompts, questions, responses, v.nan_to_num(neginf=-1.0), layer)
