"""Exercise 1.4 — Mean response activations, batched

Tests of extract_response_activations (and its input checks), on the tiny models.
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import (
    NotImplementedYet,
    check,
    exercise,
    expect_value_error,
    fail,
    no_hooks_left,
    passed,
    tiny,
    tiny_variant,
    using,
)
from part_tests.properties import braces_text, for_all, sizes, st
from part_tests.section1._shared import (
    _attempt,
    _gemma_like_tokenizer,
    _ref_extract,
    _ref_format_messages,
    _show,
    _tol,
)
from part_tests.shapes import expect_tensor


# The shape of the exercise's signature (solutions/section1_persona_space.py), checked with expect_tensor.
ACTIVATIONS = Float[Tensor, "n d_model"]

# Eleven examples of uneven lengths: more than one batch of the default batch_size (8), and neither
# example 0 nor example 8 (the first row of each batch) is the longest of its batch.
_EXTRACT_SYSTEMS = ["You are a ghost who haunts an old lighthouse.", "", "You are a data analyst who trusts numbers.",
                    "", "You are a bard.", "You are an editor who cuts every spare word.", "",
                    "You are an oracle.", "", "You are a tired sailor.", "You are a careful clerk."]

_EXTRACT_QUESTIONS = ["Who are you?", "Tell me a long story about the sea, please, with ships in it.", "How do you decide?",
                      "What is two plus two?", "Sing of the tide.", "Shorten this sentence for me.", "Where is home?",
                      "What will tomorrow bring?", "Name a colour.", "Where have you sailed?", "What do you file?"]

_EXTRACT_RESPONSES = ["I am the keeper of a light that no one needs any more.",
                      "Once upon a time there was a very long tale about the ocean, the sky and three small boats.",
                      "I measure first.", "Four.", "O tide, O silver tide, that comes and goes and comes again.",
                      "Cut it.", "Home is where the questions are.", "Fog, and then the sun, and then more fog.",
                      "Blue.", "Every harbour from the cape to the northern ice, and a few I would rather forget.",
                      "Forms."]

EXTRACT_CASES = (_EXTRACT_SYSTEMS[:3], _EXTRACT_QUESTIONS[:3], _EXTRACT_RESPONSES[:3])


@torch.inference_mode()
def _candidate_means(model, tokenizer, system_prompt, question, response, layer) -> dict[str, torch.Tensor]:
    """Per-example means that plausible mistakes compute, from one forward pass with hooks."""
    from utils.chat import build_messages, format_chat
    from utils.hooks import get_blocks, hidden_of, hooks
    from utils.models import input_device

    fc = format_chat(build_messages(system_prompt, question, response), tokenizer)
    s, e = fc.token_span
    n = len(get_blocks(model))
    device = input_device(model)

    def run(ids, attention_mask=None):
        outs: dict[int, torch.Tensor] = {}

        def grab(i):
            def hook(module, args, output):
                outs[i] = hidden_of(output)[0].float().cpu()
            return hook

        kwargs = {} if attention_mask is None else {"attention_mask": torch.tensor([attention_mask], device=device)}
        with hooks(model, {i: grab(i) for i in range(n)}):
            res = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True, **kwargs)
        return outs, res.hidden_states[-1][0].float().cpu()

    outs, final = run(fc.input_ids)
    h = outs[layer]
    cands = {
        "correct": h[s:e].mean(0),
        "every token of the conversation (prompt and markers included): average over the response tokens only": h.mean(0),
        "prompt tokens as well as the response: average over the response span only": h[:e].mean(0),
        "the response and the end-of-turn marker after it: the span ends at the last content token": h[s:e + 1].mean(0),
        "a span shifted by one token (a '+1' guess?): compute the span from the chat template": h[s + 1:e + 1].mean(0),
        "a span that starts one token early (the assistant header's last token)": h[s - 1:e].mean(0),
        "hidden_states[-1], which has the model's final norm applied: hook the output of block `layer` instead": final[s:e].mean(0),
    }
    if layer > 0:
        cands["the output of block layer - 1 (off by one: hidden_states[layer] is block layer-1's output, "
              "hidden_states[0] the embeddings); hook get_blocks(model)[layer]"] = outs[layer - 1][s:e].mean(0)
    if layer + 1 < n:
        cands["the output of block layer + 1 (off by one)"] = outs[layer + 1][s:e].mean(0)
    with_special = tokenizer(fc.text)["input_ids"]
    if len(with_special) == len(fc.input_ids) + 1 and with_special[1:] == fc.input_ids:
        h2 = run(with_special)[0][layer]
        cands["a prompt that starts with two <bos> tokens (double BOS): tokenize the rendered chat with "
              "add_special_tokens=False"] = h2[s + 1:e + 1].mean(0)
        cands["a prompt that starts with two <bos> tokens (double BOS), so the span is one token off: tokenize the "
              "rendered chat with add_special_tokens=False"] = h2[s:e].mean(0)
    pad = tokenizer.pad_token_id
    if pad is not None and pad in fc.input_ids:
        mask = [0 if t == pad else 1 for t in fc.input_ids]
        cands[f"an attention mask built as input_ids != pad_token_id: this template writes the pad token "
              f"({tokenizer.decode([pad])!r}) into the prompt itself (as its BOS), so real tokens were masked; build "
              "the mask from each example's length"] = run(fc.input_ids, mask)[0][layer][s:e].mean(0)
    return cands


def _close(a: torch.Tensor, b: torch.Tensor, tol: dict) -> bool:
    """Equal up to the model's precision: elementwise in float32; in bf16, where another batch layout
    rounds differently, within 3 % of the vector's norm."""
    a, b = a.double(), b.double()
    if tol["rtol"] < 1e-2:
        return torch.allclose(a, b, **tol)
    return a.shape == b.shape and bool((a - b).norm() <= tol["rtol"] * b.norm() + tol["atol"])


class _Boom(Exception):
    pass


class _ForwardCounter:
    """Counts forward passes through block 0 while the student's function runs."""

    def __init__(self, model):
        from utils.hooks import get_blocks

        self.count = 0
        self.rows = 0  # the most conversations one forward pass held
        self.handle = get_blocks(model)[0].register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.count += 1
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.ndim == 3:
            self.rows = max(self.rows, int(hidden.shape[0]))

    def remove(self):
        self.handle.remove()


def _extract_configs(model, tokenizer):
    """(label, model, tokenizer, layers, examples) the test runs; the student's own model when given."""
    from utils.hooks import get_blocks

    if model is not None:
        n = len(get_blocks(model))
        return [(model.config._name_or_path, model, tokenizer, sorted({1 % n, n - 1}), 3)]
    qwen = tiny("tiny-qwen2")
    n = len(get_blocks(qwen[0]))
    return [
        ("tiny-gemma2", tiny("tiny-gemma2")[0], _gemma_like_tokenizer(), [1, n - 1], 3),
        ("tiny-qwen2", *qwen, [1, n - 1], len(_EXTRACT_RESPONSES)),
        ("tiny-qwen2 with a Llama-3-style chat template", *tiny_variant("llama3"), [n - 1], 3),
        ("tiny-qwen2 in bfloat16", *tiny("tiny-qwen2", torch.bfloat16), [1], 3),
        (_RIGHT_PADDING, qwen[0], _right_padding_tokenizer(), [1], 3),
    ]


_RIGHT_PADDING = "tiny-qwen2 with a tokenizer that pads on the right"


@functools.lru_cache(maxsize=None)
def _right_padding_tokenizer():
    """tiny-qwen2's tokenizer with padding_side='right' (the course's tokenizers pad on the left; many others don't)."""
    from utils.models import load_tokenizer

    tok = load_tokenizer("tiny-qwen2")  # a fresh copy: the shared tokenizer keeps its padding side
    tok.padding_side = "right"
    return tok


def _check_returned(got, label, n, d):
    """Shape, dtype and device of what extract_response_activations returned."""
    if isinstance(got, torch.Tensor) and got.ndim == 2 and 0 < got.shape[0] < n and got.shape[0] % 8 == 0:
        fail(f"{label} returned shape {tuple(got.shape)}, expected (n, d_model) = ({n}, {d}): the last, partial batch "
             f"is missing (loop over range(0, n, batch_size))")
    expect_tensor(got, ACTIVATIONS, label, n=n, d_model=d)
    check(got.dtype == torch.float32, f"{label} returned dtype {got.dtype}, expected float32: convert the mean with "
                                      ".float() (a bf16 model's activations are bf16)")
    check(got.device.type == "cpu", f"{label} returned a tensor on {got.device}, expected the CPU (.cpu())")
    check(not got.requires_grad, f"{label} returned a tensor that requires grad: the forward pass built an autograd "
                                 "graph -- run it under torch.inference_mode() (keep the decorator of the stub)")
    return got.detach().double()


def _diagnose_batch(label, got, expected, alone_ok, tol, lengths) -> None:
    n = len(expected)
    bad = [i for i in range(n) if not _close(got[i], expected[i], tol)]
    if not bad:
        return
    ok = sorted(set(range(n)) - set(bad))
    i = bad[0]
    numbers = (f"row {i}: expected {_show(expected[i])}, got {_show(got[i])} "
               f"(max abs difference {(got[i] - expected[i]).abs().max().item():.3g})")
    for j in range(n):
        if j != i and _close(got[i], expected[j], tol):
            fail(f"{label}: row {i} holds example {j}'s mean: return the rows in the order of the inputs ({numbers})")
    if 0 in ok and set(ok) <= {0, 8} and n > 1:
        fail(f"{label}: only the first row of each batch is right ({ok}): `output[0]` of a block output that is a "
             f"tensor is batch row 0, not the hidden states -- use hidden_of(output) ({numbers})")
    if n > 8 and set(bad) == set(range(8, n)):
        fail(f"{label}: the first batch of 8 is right but rows 8-{n - 1} (the second batch) are wrong: reset what you "
             f"collect per batch (spans, captured hidden states) and index each batch's own spans ({numbers})")
    def unpadded(j):  # the longest example of its batch of 8, or of all examples (one batch)
        batch = range(j // 8 * 8, min(n, j // 8 * 8 + 8))
        return lengths[j] == max(lengths) or lengths[j] == max(lengths[b] for b in batch)

    if ok and all(unpadded(j) for j in ok):
        fail(f"{label}: the unpadded (longest) examples are right but the padded ones are wrong (rows {bad}): padding "
             "must change nothing -- pass the attention_mask, keep pads out of the averaged span, and shift each span "
             f"by its padding if you pad on the left ({numbers})")
    if alone_ok:
        fail(f"{label}: rows {bad} are right when the examples go one at a time but wrong when they are batched "
             f"together: mask the padding, shift spans by any left padding, don't take `out[0]` ({numbers})")
    fail(f"{label}: rows {bad} differ from the mean of block output over each response's tokens ({numbers})")


@exercise("1.4", "extract_response_activations")
def test_extract_response_activations(extract_response_activations, model=None, tokenizer=None) -> None:
    from utils.chat import build_messages, format_chat
    from utils.hooks import get_blocks

    fn = extract_response_activations
    owned = model is None
    configs = _extract_configs(model, tokenizer)
    counted = False
    for mname, m, tok, layers, n_examples in configs:
        d = m.config.hidden_size
        tol = _tol(m)
        systems, questions, responses = (x[:n_examples] for x in (_EXTRACT_SYSTEMS, _EXTRACT_QUESTIONS, _EXTRACT_RESPONSES))
        for layer in layers:
            label = f"extract_response_activations on {mname}, layer {layer}"
            expected = _ref_extract(m, tok, systems, questions, responses, layer).double()
            # one at a time: the meaning of the number
            for i in range(3):
                with using(fn, format_messages=_ref_format_messages):
                    got = _attempt(fn, m, tok, systems[i:i + 1], questions[i:i + 1], responses[i:i + 1], layer, name=label)
                no_hooks_left(m, label, clean=owned)
                got = _check_returned(got, f"{label}, one example,", 1, d)
                if _close(got[0], expected[i], tol):
                    continue
                numbers = (f"expected {_show(expected[i])}, got {_show(got[0])} "
                           f"(max abs difference {(got[0] - expected[i]).abs().max().item():.3g})")
                for what, cand in _candidate_means(m, tok, systems[i], questions[i], responses[i], layer).items():
                    if what != "correct" and _close(got[0], cand.double(), tol):
                        fail(f"{label}: example {i}: your mean is over {what} ({numbers})")
                fail(f"{label}: example {i} differs from the mean of block {layer}'s output over the response tokens "
                     f"({numbers})")
            # batched: padding (and the batch boundaries) must change nothing
            counter = _ForwardCounter(m) if not counted and n_examples > 8 else None
            try:
                with using(fn, format_messages=_ref_format_messages):
                    got = _attempt(fn, m, tok, systems, questions, responses, layer, name=label)
            except AssertionError as err:
                if "must match the size of tensor" not in str(err):
                    raise
                raise AssertionError(f"{err} -- it ran one example at a time but not batched: the hidden states and "
                                     "the mask come from different batches (do you keep an earlier batch's captured "
                                     "hidden states, e.g. a list the hook appends to, read at [0]?)") from err
            finally:
                if counter is not None:
                    counter.remove()
            no_hooks_left(m, label, clean=owned)
            got = _check_returned(got, f"{label}, {n_examples} examples,", n_examples, d)
            half = next(m.parameters()).dtype
            if half in (torch.bfloat16, torch.float16) and bool((got == got.to(half).double()).all()):
                # a float32 mean over several tokens is almost never exactly representable in half precision
                fail(f"{label}: every entry of your means is a {half} number: the mean was computed (or rounded) in "
                     f"the model's half precision and only then converted -- convert the hidden states with .float() "
                     "before the masked sum, so the mean keeps float32's precision")
            if counter is not None:
                counted = True
                check(counter.count < n_examples,
                      f"{label}: the model ran {counter.count} forward passes for {n_examples} examples: run several "
                      "conversations per forward pass (batches of batch_size, padded to one length)")
                check(counter.rows <= 8,
                      f"{label}: one forward pass held {counter.rows} conversations with the default batch_size=8: "
                      "run at most batch_size at a time (all at once runs out of memory on a real model)")
            lengths = [len(format_chat(build_messages(s, q, r), tok).input_ids) for s, q, r in zip(systems, questions, responses)]
            if mname == _RIGHT_PADDING and not all(_close(got[i], expected[i], tol) for i in range(n_examples)):
                fail(f"{label}: rows are wrong when batched, though right one at a time: this tokenizer pads on the "
                     "right (tokenizer.padding_side == 'right'), so a span needs no shift -- if you let the tokenizer "
                     "pad, shift each span by the padding it put *before* the sequence (read tokenizer.padding_side), "
                     "or pad yourself")
            _diagnose_batch(label, got, expected, True, tol, lengths)
            if counter is not None:  # the caller's batch_size is honoured, and other batch boundaries change nothing
                small_label = f"{label}, batch_size=3"
                counter = _ForwardCounter(m)
                try:
                    with using(fn, format_messages=_ref_format_messages):
                        small = _attempt(fn, m, tok, systems, questions, responses, layer, batch_size=3, name=small_label)
                finally:
                    counter.remove()
                no_hooks_left(m, small_label, clean=owned)
                check(counter.rows <= 3,
                      f"{small_label}: one forward pass held {counter.rows} conversations: use the batch_size argument "
                      "for the size of each batch (a hard-coded size ignores the caller's memory budget)")
                small = _check_returned(small, f"{small_label}, {n_examples} examples,", n_examples, d)
                bad = [i for i in range(n_examples) if not _close(small[i], expected[i], tol)]
                check(not bad, f"{small_label}: rows {bad} are wrong with batches of 3, though right with batches of 8: "
                               "take each batch's examples, spans and padding from range(0, n, batch_size)")
        # an exception during the forward pass must not leave a hook behind
        n_blocks = len(get_blocks(m))
        blocks = get_blocks(m)

        def boom(module, args, output):
            raise _Boom("raised by the test during the forward pass")

        handle = blocks[n_blocks - 1].register_forward_hook(boom)
        try:
            with using(fn, format_messages=_ref_format_messages):
                fn(m, tok, systems[:3], questions[:3], responses[:3], n_blocks - 1)
        except _Boom:
            pass
        except NotImplementedError as err:
            raise NotImplementedYet("extract_response_activations: not implemented yet") from err
        except Exception:
            pass
        finally:
            handle.remove()
        no_hooks_left(m, f"extract_response_activations on {mname}, after an exception in the forward pass,", clean=owned)
    # property: counts that do and don't divide the batch size, one example, bf16 and float32, replies with braces
    # (batch size 0 stands for n itself: a batch size that divides n)
    for_all(st.tuples(sizes(7), st.sampled_from([0, 2, 3, 4]), st.sampled_from(["float32", "bfloat16"]),
                      st.lists(st.one_of(st.none(), braces_text()), min_size=7, max_size=7)),
            lambda case: _one_batching(fn, *case), name="extract_response_activations", examples=5)
    passed("test_extract_response_activations", ", ".join(x[0] for x in configs))


def _one_batching(fn, n, batch_size, dtype, awkward) -> None:
    """n examples in batches of batch_size on tiny-qwen2 (float32 or bf16); some replies hold braces and placeholders."""
    batch_size = batch_size or n
    m, tok = tiny("tiny-qwen2", getattr(torch, dtype))
    systems, questions = _EXTRACT_SYSTEMS[:n], _EXTRACT_QUESTIONS[:n]
    responses = [r if a is None else a for r, a in zip(_EXTRACT_RESPONSES[:n], awkward)]
    label = f"extract_response_activations on tiny-qwen2 ({dtype}) with {n} examples and batch_size={batch_size}"
    hint = (f" -- {n} examples in batches of {batch_size}: loop over range(0, n, batch_size), so that the last batch "
            "may be partial (or hold one example) and no batch is empty")
    counter = _ForwardCounter(m)
    try:
        with using(fn, format_messages=_ref_format_messages):
            got = _attempt(fn, m, tok, systems, questions, responses, 1, batch_size=batch_size, name=label)
    except AssertionError as err:
        raise AssertionError(f"{err}{hint}") from err
    finally:
        counter.remove()
    no_hooks_left(m, label)
    if isinstance(got, torch.Tensor) and got.ndim == 2 and got.shape[0] != n:
        fail(f"{label} returned {got.shape[0]} rows for {n} examples{hint}")
    got = _check_returned(got, label, n, m.config.hidden_size)
    check(counter.rows <= batch_size, f"{label}: one forward pass held {counter.rows} conversations: use the batch_size "
                                      "argument for the size of each batch")
    expected = _ref_extract(m, tok, systems, questions, responses, 1).double()
    bad = [i for i in range(n) if not _close(got[i], expected[i], _tol(m))]
    check(not bad, f"{label}: rows {bad} differ from the mean of block 1's output over each response's tokens{hint}")


@exercise("1.4", "extract_response_activations")
def test_extract_response_activations_input_checks(extract_response_activations, model=None, tokenizer=None) -> None:
    fn = extract_response_activations
    m, tok = (model, tokenizer) if model is not None else tiny("tiny-qwen2")
    s, q, r = (list(x) for x in EXTRACT_CASES)
    for lists, lens in (((s, q, r[:2]), "3, 3 and 2"), ((s, q[:2], r), "3, 2 and 3"), ((s[:2], q, r), "2, 3 and 3")):
        with using(fn, format_messages=_ref_format_messages):
            expect_value_error(fn, m, tok, *lists, 1, name="extract_response_activations",
                               what=f"lists of lengths {lens} (zip would silently drop an example): compare all three lengths")
    # property: any three lengths that are not all equal
    def one_mismatch(lens):
        lists = [list(x) * 2 for x in EXTRACT_CASES]  # six of each
        with using(fn, format_messages=_ref_format_messages):
            expect_value_error(fn, m, tok, *(x[:k] for x, k in zip(lists, lens)), 1, name="extract_response_activations",
                               what=f"lists of lengths {lens[0]}, {lens[1]} and {lens[2]}: compare all three lengths")

    for_all(st.tuples(sizes(6), sizes(6), sizes(6)).filter(lambda t: len(set(t)) > 1), one_mismatch,
            name="extract_response_activations", examples=6)
    passed("test_extract_response_activations_input_checks")
