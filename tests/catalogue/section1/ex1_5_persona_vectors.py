"""Exercise 1.5 — Persona vectors

Wrong extract_persona_vectors. `extract_response_activations` comes from this module's globals (the test
puts a stand-in there).
"""

from __future__ import annotations

import torch

from tests.catalogue import correct, mistake
from tests.catalogue.section1._shared import factory


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


@factory
def _wrong_pv(**mistake):
    def wrong(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
        return _persona_vectors(model, tokenizer, personas, questions, responses, layer, scores, score_threshold, **mistake)
    return wrong


@mistake("test_extract_persona_vectors", "passes threshold 0")
def pv_none_as_zero(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
    """A None or missing score counts as 0 (`scores.get(key) or 0`): it passes threshold 0."""
    return _persona_vectors(model, tokenizer, personas, questions, responses, layer, scores, score_threshold,
                            keep=lambda s, t: (s or 0) >= t)


@mistake("test_extract_persona_vectors", "not `not scores`")
def pv_falsy_scores(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
    """`if not scores:` keeps every response when the dict of scores is empty."""
    return _persona_vectors(model, tokenizer, personas, questions, responses, layer, scores or None, score_threshold)


@mistake("test_extract_persona_vectors", "loop over `personas`")
def pv_names_from_responses(model, tokenizer, personas, questions, responses, layer, scores=None, score_threshold=3):
    """Groups by the names found in `responses`: a persona with no response at all is dropped without a warning."""
    present = {n: p for n, p in personas.items() if any(k[0] == n for k in responses)}
    return _persona_vectors(model, tokenizer, present, questions, responses, layer, scores, score_threshold)


@factory
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


@correct("test_extract_persona_vectors")
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


def _above_strictly(s, t):  # score > threshold: a score equal to the threshold is dropped
    return s is not None and s > t


def _none_passes(s, t):  # a None score (the judge failed) passes
    return s is None or s >= t


# Made by the factories above: each declared on the line that makes it.
mistake("test_extract_persona_vectors", ">=")(_wrong_pv(keep=_above_strictly))
mistake("test_extract_persona_vectors", "keep only those")(_wrong_pv(use_scores=False))
mistake("test_extract_persona_vectors", "score_threshold argument")(_wrong_pv(fixed_threshold=3))
mistake("test_extract_persona_vectors", "NaN")(_wrong_pv(on_empty="nan"))
mistake("test_extract_persona_vectors", "skipped")(_wrong_pv(on_empty="zeros"))
mistake("test_extract_persona_vectors", "warning")(_wrong_pv(on_empty="silent"))
mistake("test_extract_persona_vectors", "None")(_wrong_pv(keep=_none_passes))
mistake("test_extract_persona_vectors", "empty system prompt")(_wrong_pv(skip_empty_prompt=True))
mistake("test_extract_persona_vectors", "question")(_wrong_pv(q_shift=1))
mistake("test_extract_persona_vectors", "layer")(_wrong_pv(fixed_layer=0))
mistake("test_extract_persona_vectors", "absent")(_pv_missing("missing_passes"))
mistake("test_extract_persona_vectors", "absent")(_pv_missing("keyerror"))
mistake("test_extract_persona_vectors", "truth value")(_pv_missing("falsy"))
mistake("test_extract_persona_vectors", "returned shape")(_pv_missing("keepdim"))
