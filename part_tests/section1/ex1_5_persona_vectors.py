"""Exercise 1.5 — Persona vectors

Test of extract_persona_vectors, run against a stand-in extractor whose activations are known.
"""

from __future__ import annotations

import warnings

import torch

from part_tests._common import call, check, exercise, fail, passed, tiny, using
from part_tests.properties import for_all, st
from part_tests.section1._shared import (
    PERSONAS_SMALL,
    QUESTIONS_SMALL,
    VECTOR,
    _attempt,
    _ref_extract,
    _show,
    _tol,
)
from part_tests.shapes import expect_tensor


class _TableExtractor:
    """Stands in for extract_response_activations: each response text has a known activation."""

    def __init__(self, personas, questions, responses, d=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.d = d
        self.table = {text: torch.randn(d, generator=g, dtype=torch.float64) * 3 + 1 for text in responses.values()}
        self.owner = {text: key for key, text in responses.items()}
        self.personas, self.questions = personas, questions
        self.calls = []
        self.errors: list[str] = []

    def __call__(self, model, tokenizer, system_prompts, questions, responses, layer, *args, **kwargs):
        system_prompts, questions, responses = list(system_prompts), list(questions), list(responses)
        self.calls.append((model, tokenizer, layer, len(responses)))
        if not (len(system_prompts) == len(questions) == len(responses)):
            raise ValueError("system_prompts, questions and responses must have the same length")
        rows = []
        for s, q, r in zip(system_prompts, questions, responses):
            if r not in self.table:
                self.errors.append(f"got a response that is not in `responses`: {r!r:.60}")
                rows.append(torch.zeros(self.d, dtype=torch.float64))
                continue
            name, q_idx = self.owner[r]
            if (s or "") != self.personas[name]:
                self.errors.append(f"the response of ({name!r}, {q_idx}) came with system prompt {s!r:.50}, expected personas[{name!r}]")
            if q != self.questions[q_idx]:
                self.errors.append(f"the response of ({name!r}, {q_idx}) came with question {q!r:.50}, expected questions[{q_idx}]")
            rows.append(self.table[r])
        return torch.stack(rows).float() if rows else torch.zeros(0, self.d)

    def mean(self, keys, responses):
        return torch.stack([self.table[responses[k]] for k in keys]).mean(0)


def _persona_case():
    personas, questions = PERSONAS_SMALL, QUESTIONS_SMALL
    responses = {(n, q): f"response of {n} to question {q}" for n in personas for q in range(len(questions))}
    del responses[("default", 3)]  # a failed generation: not every pair has a response
    scores = {("default", q): 3 for q in range(4)}
    scores.update({("ghost", 0): 3, ("ghost", 2): 3, ("ghost", 3): None})  # ("ghost", 1): no score at all
    scores.update({("analyst", 0): 1, ("analyst", 1): 2, ("analyst", 2): 0, ("analyst", 3): 2})
    return personas, questions, responses, scores


def _run_persona_vectors(fn, fake, *args, label, **kwargs):
    with using(fn, extract_response_activations=fake), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = call(fn, *args, name=label, **kwargs)
        except AssertionError:
            raise
        except KeyError as err:
            raise AssertionError(f"{label} raised KeyError: {err} -- a response may have no score at all (its key is "
                                 "absent from `scores`): treat it like None, it does not pass (scores.get(key))") from err
        except Exception as err:
            raise AssertionError(f"{label} raised {type(err).__name__}: {err}") from err
    check(isinstance(out, dict), f"{label} should return a dict name -> vector, got {type(out).__name__}")
    for name, v in out.items():
        if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v.float()).all()):
            fail(f"{label}[{name!r}] contains NaN: a persona with no response passing the filter must be skipped "
                 "(with a warning), not averaged over zero rows")
        expect_tensor(v, VECTOR, f"{label}[{name!r}]", d_model=fake.d)
    check(not fake.errors, f"{label}: {fake.errors[0] if fake.errors else ''}")
    return out, [str(w.message) for w in caught]


def _check_vectors(out, expected: dict, label: str, fake, responses, candidates: dict | None = None) -> None:
    for name, keys in expected.items():
        check(name in out, f"{label}: persona {name!r} is missing from the result")
        want = fake.mean(keys, responses)
        got = out[name].detach().double().cpu()
        if torch.allclose(got, want, atol=1e-4):
            continue
        for what, cand_keys in (candidates or {}).get(name, {}).items():
            if cand_keys and torch.allclose(got, fake.mean(cand_keys, responses), atol=1e-4):
                fail(f"{label}[{name!r}] averages the responses {sorted(q for _, q in cand_keys)}, expected "
                     f"{sorted(q for _, q in keys)}: {what}")
        fail(f"{label}[{name!r}] should be the mean activation over its responses {sorted(q for _, q in keys)} "
             f"(the ones kept by the filter): expected {_show(want)}, got {_show(got)}")


@exercise("1.5", "extract_persona_vectors")
def test_extract_persona_vectors(extract_persona_vectors, model=None, tokenizer=None) -> None:
    fn = extract_persona_vectors
    personas, questions, responses, scores = _persona_case()
    sentinel_model, sentinel_tok = object(), object()

    # no scores: every response counts
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=None)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7, label=label)
    check(fake.calls, f"{label} never called extract_response_activations")
    check(all(c[0] is sentinel_model and c[1] is sentinel_tok for c in fake.calls),
          f"{label}: pass the model and tokenizer on to extract_response_activations")
    check(all(c[2] == 7 for c in fake.calls), f"{label}: pass `layer` on to extract_response_activations (called with {fake.calls[0][2]!r}, expected 7)")
    check(set(out) == set(personas), f"{label}: expected a vector for every persona {sorted(personas)}, got {sorted(out)}"
          + (" (the default persona has an empty system prompt: it must still get a vector)" if "default" not in out else ""))
    _check_vectors(out, {n: [k for k in responses if k[0] == n] for n in personas}, label, fake, responses)

    # scores with the default threshold 3: >= 3 is kept; None (the judge failed) and a missing score are not
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=3)"
    out, warned = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                       scores=scores, label=label)
    if "ghost" not in out:
        fail(f"{label}: 'ghost' has two responses scored exactly 3 but got no vector: a response whose score equals "
             "score_threshold must be kept (score >= threshold, not >)")
    g = lambda *qs: [("ghost", q) for q in qs]  # noqa: E731
    _check_vectors(out, {"ghost": g(0, 2)}, label, fake, responses, candidates={"ghost": {
        "you kept all of them -- keep only those with score >= score_threshold (a missing score or None does not "
        "pass)": g(0, 1, 2, 3),
        "a score of None (the judge failed) should not pass the filter": g(0, 2, 3),
        "a response with no score at all (its key is absent from `scores`) should not pass the filter": g(0, 1, 2),
    }})
    if "analyst" in out:
        fail(f"{label}: no response of 'analyst' has a score >= 3, so it should be skipped (with a warning) "
             "rather than given a vector")
    check(any("analyst" in w for w in warned),
          f"{label}: skipping 'analyst' (no response passed the filter) should raise a warning naming it "
          "(warnings.warn), so the loss is not silent")
    _check_vectors(out, {"default": [("default", q) for q in range(3)]}, label, fake, responses)
    check(set(out) == {"default", "ghost"}, f"{label}: expected vectors for ['default', 'ghost'], got {sorted(out)}")

    # a different threshold is honoured
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=2)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                  scores=scores, score_threshold=2, label=label)
    check(set(out) == set(personas), f"{label}: with threshold 2 every persona has a response that passes; got {sorted(out)} "
          "(use the score_threshold argument, not a hard-coded 3)")
    _check_vectors(out, {"ghost": g(0, 2), "analyst": [("analyst", 1), ("analyst", 3)]}, label, fake, responses)

    # threshold 0: a score of 0 passes (it is a score, not a missing one)
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=scores, score_threshold=0)"
    out, _ = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                  scores=scores, score_threshold=0, label=label)
    a = lambda *qs: [("analyst", q) for q in qs]  # noqa: E731
    _check_vectors(out, {"analyst": a(0, 1, 2, 3)}, label, fake, responses, candidates={"analyst": {
        "a score of 0 is a score (0 >= 0): test `score is None`, not the score's truth value": a(0, 1, 3)}})
    _check_vectors(out, {"ghost": g(0, 2)}, label, fake, responses, candidates={"ghost": {
        "a None or missing score became 0 (`scores.get(key) or 0`, `scores.get(key, 0)`), which passes threshold 0: "
        "a response the judge did not score never passes": g(0, 1, 2, 3),
        "a None score (the judge failed) became 0, which passes threshold 0: it never passes": g(0, 2, 3),
        "a missing score became 0, which passes threshold 0: a response with no score never passes": g(0, 1, 2),
    }})

    # scores={} (the judge scored nothing): nothing passes -- an empty dict is not None
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores={})"
    out, warned = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, personas, questions, responses, 7,
                                       scores={}, label=label)
    check(set(out) != {"default"}, f"{label}: you kept the default persona's responses, which have no score: the "
                                   "filter applies to every persona alike (judge_roleplay gives the defaults their 3)")
    check(not out, f"{label}: no response has a score, so every persona should be skipped (with a warning), but you "
                   f"returned vectors for {sorted(out)} -- test `scores is None`, not `not scores`: an empty dict of "
                   "scores filters everything out")

    # a persona with no response at all (every generation failed) is skipped with a warning too
    fake = _TableExtractor(personas, questions, responses)
    label = "extract_persona_vectors(..., scores=None) with a persona that has no response"
    more = {**personas, "bard": "You are a wandering bard who sings of old battles."}
    out, warned = _run_persona_vectors(fn, fake, sentinel_model, sentinel_tok, more, questions, responses, 7, label=label)
    check("bard" not in out, f"{label}: 'bard' has no response, so it should be skipped (with a warning)")
    check(any("bard" in w for w in warned),
          f"{label}: 'bard' is in `personas` but has no response in `responses` (its generations all failed): skipping it "
          "should raise a warning naming it -- loop over `personas`, not only over the names found in `responses`")

    # property: any mix of missing responses, absent scores, None and 0-3 scores, any threshold, or no scores at all
    status = st.sampled_from(["no response", "no score", None, 0, 1, 2, 3])
    for_all(st.tuples(st.lists(status, min_size=12, max_size=12), st.sampled_from([0, 1, 2, 3, "scores=None"])),
            lambda case: _one_filter(fn, *case), name="extract_persona_vectors", examples=8)

    # end to end on a tiny model, with the default persona's empty system prompt
    m, tok = (model, tokenizer) if model is not None else tiny("tiny-gemma2")
    small = {"default": "", "ghost": PERSONAS_SMALL["ghost"]}
    qs = QUESTIONS_SMALL[:2]
    resp = {("default", 0): "I value being useful.", ("default", 1): "I answer questions all day.",
            ("ghost", 0): "I value the silence of the tide.", ("ghost", 1): "I drift between the rooms."}
    label = "extract_persona_vectors on a tiny model"
    with using(fn, extract_response_activations=_ref_extract):
        out = _attempt(fn, m, tok, small, qs, resp, 1, name=label)
    for name in small:
        check(name in out, f"{label}: persona {name!r} is missing" + (" (its system prompt is empty)" if not small[name] else ""))
        keys = [k for k in resp if k[0] == name]
        want = _ref_extract(m, tok, [small[name]] * len(keys), [qs[q] for _, q in keys], [resp[k] for k in keys], 1).mean(0)
        got = expect_tensor(out[name], VECTOR, f"{label}[{name!r}]", d_model=m.config.hidden_size)
        check(torch.allclose(got.float(), want, **_tol(m)),
              f"{label}: the vector of {name!r} is not the mean of its response activations: expected {_show(want)}, "
              f"got {_show(got)}")
    passed("test_extract_persona_vectors")


def _one_filter(fn, statuses, threshold) -> None:
    """Each (persona, question) of the small set gets a status: its response missing, its score absent, None or 0-3."""
    personas, questions = PERSONAS_SMALL, QUESTIONS_SMALL
    keys = [(n, q) for n in personas for q in range(len(questions))]
    responses = {k: f"response of {k[0]} to question {k[1]}" for k, st_ in zip(keys, statuses) if st_ != "no response"}
    scores = {k: st_ for k, st_ in zip(keys, statuses) if st_ not in ("no response", "no score")}
    unfiltered = threshold == "scores=None"
    kept = {n: [k for k in keys if k[0] == n and k in responses
                and (unfiltered or (scores.get(k) is not None and scores[k] >= threshold))] for n in personas}
    fake = _TableExtractor(personas, questions, responses)
    kwargs = {} if unfiltered else {"scores": scores, "score_threshold": threshold}
    label = f"extract_persona_vectors(..., {'scores=None' if unfiltered else f'scores=..., score_threshold={threshold}'})"
    got, warned = _run_persona_vectors(fn, fake, object(), object(), personas, questions, responses, 7, label=label, **kwargs)
    shown = {k: ("no response" if k not in responses else scores.get(k, "no score") if not unfiltered else "kept") for k in keys}
    hint = (f" -- with these responses and scores {shown}: keep a response when it exists and its score is not None "
            "and >= score_threshold (every response with scores=None); skip a persona with none left, with a warning")
    want = sorted(n for n in personas if kept[n])
    check(sorted(got) == want, f"{label}: expected vectors for {want}, got {sorted(got)}{hint}")
    for name in personas:
        if not kept[name]:
            check(any(name in w for w in warned), f"{label}: {name!r} has no response left and should be skipped with "
                                                  f"a warning naming it{hint}")
    try:
        _check_vectors(got, {n: ks for n, ks in kept.items() if ks}, label, fake, responses)
    except AssertionError as err:
        raise AssertionError(f"{err}{hint}") from err
