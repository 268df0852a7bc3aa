"""Exercise 4.2 — Steered generation and a coefficient sweep

Tests of generate_with_steerer (greedy, batched, steered answers equal to the course's Steerer +
generate; a property over fractional and negative coefficients and partial batches) and
run_steering_experiment (a coefficient sweep scored by a fake judge; a property over questions and
answers with braces and placeholders, and fractional and negative coefficients).
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager

import torch

from part_tests._common import (
    NotImplementedYet,
    call,
    check,
    exercise,
    fail,
    model_or_tiny,
    no_hooks_left,
    passed,
    remove_leftover_hooks,
    require_implemented,
    tiny,
    using,
)
from part_tests.properties import braces_text, coefficients, for_all, st
from part_tests.section4._fakes import (
    COHERENCE_TEMPLATE,
    PIRATE,
    TRAIT_TEMPLATE,
    FakeJudge,
    _clean_afterwards,
    _coefficient_cause,
    _d_model,
    _layer_for,
    _vector,
)

QUESTIONS = ["What is the capital of France?", "Hi", "Write a haiku about rain, please."]
MORE_QUESTIONS = ["Why is the sky blue?", "Hello there", "List three fruits that are red, and say why each is red.",
                  "Is two plus two four?", "Tell me a story about a lighthouse keeper and a storm."]


def _course_generate_with_steerer(model, tokenizer, questions, vector, coeff, layer, positions="response",
                                  system_prompt=None, max_new_tokens=64, batch_size=32):
    """The course's steered greedy generation: utils.steering.Steerer around utils.generation.generate."""
    from utils.chat import build_messages
    from utils.generation import generate
    from utils.steering import Steerer

    prompts = [build_messages(system_prompt, q) for q in questions]
    with Steerer(model, vector, coeff=coeff, layer=layer, positions=positions):
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)


@contextmanager
def _count_prefills(model):
    """Count forward passes over more than one new token (a generate call's prefill)."""
    counter = {"n": 0}

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[1] > 1:
            counter["n"] += 1

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()


class _InjectedFailure(RuntimeError):
    """Raised by the model half way through generation (injected by the test)."""


@contextmanager
def _failing_model(model, after: int = 2):
    """The model's last block raises after `after` forward passes (a crash mid-generation)."""
    from utils.hooks import get_blocks

    state = {"n": 0}

    def hook(module, args, output):
        state["n"] += 1
        if state["n"] > after:
            raise _InjectedFailure("the model failed mid-generation (injected by the test)")

    handle = get_blocks(model)[-1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _texts(got, n: int, name: str, batch_size: int | None = None) -> list[str]:
    if batch_size and n % batch_size and isinstance(got, (list, tuple)) and len(got) == n - n % batch_size:
        fail(f"{name} returned {len(got)} answers for {n} questions with batch_size={batch_size}: the last, partial"
             f" batch ({n % batch_size} question(s)) was dropped -- loop with range(0, len(questions), batch_size)")
    check(isinstance(got, (list, tuple)) and len(got) == n and all(isinstance(x, str) for x in got),
          f"{name} should return a list of {n} strings, one per question; got "
          f"{type(got).__name__}{f' of length {len(got)}' if hasattr(got, '__len__') else ''}")
    return list(got)


def _same_texts(a, b) -> bool:
    return len(a) == len(b) and all(x.strip() == y.strip() for x, y in zip(a, b))


def _diagnose_answers(got, want, candidates, name: str, what: str) -> None:
    """Fail naming the first candidate mistake whose answers match `got` (candidates are computed lazily)."""
    for make, why in candidates:
        answers = make()
        if answers is not None and _same_texts(got, answers):
            fail(f"{name}: {why}")
    if sorted(x.strip() for x in got) == sorted(y.strip() for y in want):
        fail(f"{name}: the right answers in the wrong order: return one answer per question, in the order of `questions`"
             " (sorted by length for batching? put them back)")
    first = next(i for i, (x, y) in enumerate(zip(got, want)) if x.strip() != y.strip())
    fail(f"{name}: {what}; answer {first} is {got[first]!r}, expected {want[first]!r}")


def _check_gws_no_system_role(generate_with_steerer, name: str) -> None:
    """tiny-gemma2, whose chat template has no system role, with a system prompt: the answers must be the course's
    (build_messages, then utils.generation.generate, whose format_prompt merges the system prompt)."""
    model, tokenizer = tiny("tiny-gemma2")
    remove_leftover_hooks(model)
    layer = _layer_for(model)
    vector = _vector(_d_model(model), 2, 8.0)
    questions = QUESTIONS[:2]
    where = "tiny-gemma2, whose chat template has no system role"
    advice = ("build each chat with build_messages(system_prompt, question) and pass the message lists to"
              " utils.generation.generate, whose format_prompt merges the system prompt into the first user message;"
              " do not apply the chat template by hand")
    try:
        try:
            got = call(generate_with_steerer, model, tokenizer, questions, vector, 4.0, layer, system_prompt=PIRATE,
                       max_new_tokens=4, name=name)
        except (AssertionError, NotImplementedYet):
            raise
        except Exception as err:
            fail(f"{name} raised {type(err).__name__} ({err}) with a system prompt on {where}: {advice}")
        got = _texts(got, len(questions), name)
        no_hooks_left(model, name)
        want = _course_generate_with_steerer(model, tokenizer, questions, vector, 4.0, layer, system_prompt=PIRATE,
                                             max_new_tokens=4)
        if not _same_texts(got, want):
            fail(f"{name}: with system_prompt={PIRATE!r} on {where} the answers differ from the course's steered greedy"
                 f" generation (got {got!r}, expected {want!r}): {advice}")
    finally:
        remove_leftover_hooks(model)


def _check_gws_coefficients(generate_with_steerer, model, tokenizer, layer: int, name: str) -> None:
    """Property: fractional, negative and zero coefficients, 1 to 5 questions in batches of 2 to 4 (a single question,
    full batches and a last, partial one): the answers are the course's steered greedy generation (Steerer around
    utils.generation.generate, computed here) and there is one generate call per batch."""
    vector = _vector(_d_model(model), 9, 16.0)
    pool = MORE_QUESTIONS + QUESTIONS

    def check_one(example):
        coeff, n, batch_size = example
        questions = pool[:n]
        ref = lambda c: _course_generate_with_steerer(model, tokenizer, questions, vector, c, layer,  # noqa: E731
                                                      max_new_tokens=3, batch_size=batch_size)
        with _count_prefills(model) as prefills:
            got = call(generate_with_steerer, model, tokenizer, questions, vector, coeff, layer, max_new_tokens=3,
                       batch_size=batch_size, name=name)
        no_hooks_left(model, name)
        got = _texts(got, n, name, batch_size)
        want = ref(coeff)
        if not _same_texts(got, want):
            used = sorted({float(math.trunc(coeff)), float(round(coeff)), abs(coeff), max(coeff, 0.0), 1.0} - {coeff})
            _diagnose_answers(got, want, [(lambda c=c: ref(c), _coefficient_cause(coeff, c) or f"steered by {c:g}"
                                           f" instead of coeff={coeff:g}") for c in used],
                              name, f"with coeff={coeff:g} and batch_size={batch_size} the answers differ from the course's"
                                    " steered greedy generation")
        batches = math.ceil(n / batch_size)
        check(prefills["n"] == batches, f"{name}(batch_size={batch_size}) ran {prefills['n']} generate call(s) for {n}"
                                        f" question(s), expected {batches}: one utils.generation.generate call over all"
                                        " the prompts, with batch_size")

    for_all(st.tuples(coefficients(), st.integers(1, 5), st.integers(2, 4)), check_one,
            name=f"{name} over fractional and negative coefficients and partial batches", examples=4)


@exercise("4.2", "generate_with_steerer")
def test_generate_with_steerer(generate_with_steerer, model=None, tokenizer=None) -> None:
    """Greedy, batched, steered answers must equal the course's Steerer + generate, for the
    defaults, for every argument changed, over fractional and negative coefficients and partial
    batches (a property), and with a system prompt on a template without a system role
    (tiny-gemma2); hooks are removed even when the model raises."""
    from utils.generation import generate
    from utils.steering import Steerer

    require_implemented(generate_with_steerer, "generate_with_steerer")
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    other_layer = layer - 1
    vector = _vector(_d_model(model), 1, 8.0)

    def ref(questions=QUESTIONS, coeff=4.0, at=layer, positions="response", system_prompt=None, max_new_tokens=6,
            batch_size=32, vec=vector):
        return _course_generate_with_steerer(model, tokenizer, questions, vec, coeff, at, positions, system_prompt,
                                             max_new_tokens, batch_size)

    def raw():
        with Steerer(model, vector, coeff=4.0, layer=layer, positions="response"):
            return generate(model, tokenizer, list(QUESTIONS), max_new_tokens=6)

    name = "generate_with_steerer"
    with _clean_afterwards(model, own), using(generate_with_steerer, ActivationSteerer=Steerer):
        # -- the defaults ----------------------------------------------------------------
        with _count_prefills(model) as prefills:
            got = _texts(call(generate_with_steerer, model, tokenizer, QUESTIONS, vector, 4.0, layer, max_new_tokens=6,
                              name=name), len(QUESTIONS), name, 32)
        no_hooks_left(model, name)
        want = ref()
        if not _same_texts(got, want):
            _diagnose_answers(got, want, [
                (lambda: ref(coeff=-4.0), "the sign is flipped: steer with +coeff"),
                (lambda: ref(coeff=0.0), "the answers are unsteered: open the steerer with the vector and coeff around generation"),
                (lambda: ref(coeff=1.0), "the coeff is ignored: pass coeff to the steerer"),
                (lambda: ref(vec=vector / vector.norm()), "steered with the normalised vector: the coefficient multiplies"
                                                          " the raw vector (coeff * vector)"),
                (lambda: ref(positions="all"), "steered every position: pass `positions` to the steerer (default 'response')"),
                (lambda: ref(at=layer - 1), f"off by one layer: steered block {layer - 1} instead of block {layer}"),
                (lambda: ref(at=layer + 1), f"off by one layer: steered block {layer + 1} instead of block {layer}"),
                (lambda: ref(max_new_tokens=64), "max_new_tokens is ignored: the answers have 64 new tokens, not 6"),
                (lambda: raw(), "the prompts are the raw questions, without the chat template: build each chat with"
                                " build_messages(system_prompt, question)"),
            ], name, "the answers differ from greedy generation (temperature 0) with utils.generation.generate under the"
                     " steerer, chats built with build_messages(system_prompt, question) (sampled with temperature > 0?)")
        check(prefills["n"] == 1,
              f"{name} ran {prefills['n']} generate calls for {len(QUESTIONS)} questions: generate them"
              " together in batches (one utils.generation.generate call with batch_size)")

        # -- every argument changed --------------------------------------------------------
        args = dict(coeff=-3.0, at=other_layer, positions="all", system_prompt=PIRATE, max_new_tokens=4, batch_size=2)
        with _count_prefills(model) as prefills:
            got = _texts(call(generate_with_steerer, model, tokenizer, MORE_QUESTIONS, vector, -3.0, other_layer,
                              positions="all", system_prompt=PIRATE, max_new_tokens=4, batch_size=2, name=name),
                         len(MORE_QUESTIONS), name, 2)
        no_hooks_left(model, name)
        want = ref(MORE_QUESTIONS, **args)
        if not _same_texts(got, want):
            _diagnose_answers(got, want, [
                (lambda: ref(MORE_QUESTIONS, **{**args, "positions": "response"}),
                 "`positions` is ignored: with positions='all' the steerer must steer every position"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "system_prompt": None}),
                 "system_prompt is ignored: build each chat with build_messages(system_prompt, question)"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "at": layer}),
                 f"`layer` is ignored: asked to steer block {other_layer}, it steered block {layer} (the notebook's LAYER?)"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "max_new_tokens": 64}), "max_new_tokens is ignored"),
                (lambda: ref(MORE_QUESTIONS, **{**args, "coeff": 3.0}), "the sign is flipped: steer with +coeff"),
            ], name, f"with coeff=-3, layer={other_layer}, positions='all', system_prompt={PIRATE!r}, max_new_tokens=4 and"
                     " batch_size=2 the answers differ from the course's steered greedy generation")
        batches = math.ceil(len(MORE_QUESTIONS) / 2)
        if prefills["n"] != batches:
            if prefills["n"] == len(MORE_QUESTIONS):
                fail(f"{name} ran one generate call per question ({prefills['n']} for {len(MORE_QUESTIONS)}): pass all"
                     " the prompts to utils.generation.generate with batch_size")
            fail(f"{name}(batch_size=2) ran {prefills['n']} batch(es) for {len(MORE_QUESTIONS)} questions, expected"
                 f" {batches}: batch_size is ignored (pass it to utils.generation.generate)")

        _check_gws_coefficients(generate_with_steerer, model, tokenizer, layer, name)

        # -- a template without a system role (tiny-gemma2): the course's formatting merges the system prompt --
        if not own:
            _check_gws_no_system_role(generate_with_steerer, name)

        # -- the model raises half way: the exception propagates and no hook is left ----------
        try:
            with _failing_model(model, after=2):
                call(generate_with_steerer, model, tokenizer, QUESTIONS, vector, 4.0, layer, max_new_tokens=6, name=name)
        except AssertionError:
            raise
        except Exception:
            pass
        else:
            fail(f"{name} returned although the model raised mid-generation: let the exception propagate")
        no_hooks_left(model, f"{name} (after the model raised mid-generation)")
    passed("test_generate_with_steerer")


class _RecordingSteeredGeneration:
    """The course's generate_with_steerer, recording the arguments of every call (patched into the
    notebook's globals as generate_with_steerer)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.__signature__ = inspect.signature(_course_generate_with_steerer)

    def __call__(self, *args, **kwargs):
        bound = self.__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append({k: v for k, v in bound.arguments.items() if k not in ("model", "tokenizer")})
        return _course_generate_with_steerer(*bound.args, **bound.kwargs)


@contextmanager
def _course_get_judge(fake):
    """utils.judge.get_judge replaced too, for code that calls it through the module (`utils.judge.get_judge()`, or
    `from utils.judge import get_judge` inside the function) rather than the notebook's global name."""
    from unittest import mock

    import utils.judge

    with mock.patch.object(utils.judge, "get_judge", fake):
        yield


def _check_scores(records, judge: FakeJudge, name: str) -> None:
    for r in records:
        for key in ("trait_score", "coherence_score"):
            check(r[key] is None or (isinstance(r[key], (int, float)) and not isinstance(r[key], bool)),
                  f"{name}: {key} should be a number or None (the JudgeScore's .value), got {type(r[key]).__name__}")
        q, a = r["question"], r["response"]
        want_t, want_c = judge.expected("trait", q, a), judge.expected("coherence", q, a)
        if (r["trait_score"], r["coherence_score"]) == (want_t, want_c):
            continue
        if (r["trait_score"], r["coherence_score"]) == (want_c, want_t):
            fail(f"{name}: trait_score and coherence_score are swapped")
        if (r["trait_score"], r["coherence_score"]) == (judge.expected("trait", a, q), judge.expected("coherence", a, q)):
            fail(f"{name}: the judge was given the question as the answer: call judge.score_trait(question, answer, template)")
        if None in (want_t, want_c) and 0 in (r["trait_score"], r["coherence_score"]):
            fail(f"{name}: the judge gave no score (a refusal) and the record holds 0: keep the JudgeScore's .value, None,"
                 " so that a missing score is not counted as a score of 0")
        fail(f"{name}: trait_score / coherence_score do not belong to the record's response (got"
             f" {(r['trait_score'], r['coherence_score'])}, the judge gave {(want_t, want_c)} for {a[:30]!r}): score each answer"
             " with the trait template and with the coherence template, and keep the scores in the answers' order")


def _check_steered_args(steered: _RecordingSteeredGeneration, name: str, **want) -> None:
    """Where the student called generate_with_steerer, it got the experiment's arguments."""
    for key, value in want.items():
        used = {c[key] for c in steered.calls}
        if steered.calls and used != {value}:
            other = sorted(used - {value}, key=str)[0]
            fail(f"{name} was called with {key}={value!r} but generated with {key}={other!r}: pass {key} on to"
                 " generate_with_steerer")


def _check_experiment_records(records, questions, coefficients, expected, name: str, layer: int) -> None:
    check(isinstance(records, list) and all(isinstance(r, dict) for r in records), f"{name} should return a list of dicts")
    check(len(records) == len(questions) * len(coefficients),
          f"{name} returned {len(records)} records for {len(questions)} questions x {len(coefficients)}"
          f" coefficients: expected one per question x coefficient ({len(questions) * len(coefficients)})")
    keys = {"question", "coeff", "response", "trait_score", "coherence_score"}
    for r in records:
        check(keys <= set(r), f"{name}: each record needs the keys {sorted(keys)}; got {sorted(r)} (a key is there even"
                              " when its score is None)")
    pairs = {(r["question"], r["coeff"]) for r in records}
    missing = {(q, c) for q in questions for c in coefficients} - pairs
    check(not missing, f"{name} is missing question x coefficient combinations, e.g. {sorted(missing, key=str)[:2]}")
    for r in records:
        i = questions.index(r["question"])
        if r["response"].strip() != expected[r["coeff"]][i].strip():
            other = [c for c in coefficients if expected[c][i].strip() == r["response"].strip()]
            if other:
                fail(f"{name}: the record for coeff {r['coeff']} holds the answer generated at coeff {other[0]}: label each"
                     " batch with the coefficient it was generated with")
            fail(f"{name}: the response for coeff {r['coeff']} differs from greedy generation steered by coeff * vector at"
                 f" block {layer} (generate_with_steerer): got {r['response']!r}, expected {expected[r['coeff']][i]!r}")


class _FakeSteeredGeneration(_RecordingSteeredGeneration):
    """generate_with_steerer replaced by answers made of the question, the coefficient and `extra` (no model runs)."""

    def __init__(self, extra: str):
        super().__init__()
        self.extra = extra

    def answer(self, question: str, coeff) -> str:
        return f"{self.extra} | {question} @ {float(coeff):+g}"

    def __call__(self, *args, **kwargs):
        bound = self.__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append({k: v for k, v in bound.arguments.items() if k not in ("model", "tokenizer")})
        return [self.answer(q, bound.arguments["coeff"]) for q in bound.arguments["questions"]]


def _text_judge() -> FakeJudge:
    """A fake judge whose scores depend on the question and on the answer (a changed question changes them)."""
    import zlib

    code = lambda text: zlib.crc32(text.encode())  # noqa: E731
    return FakeJudge(trait_fn=lambda q, a: float((7 * code(q) + code(a)) % 101),
                     coherence_fn=lambda q, a: float((code(q) + 3 * code(a)) % 97))


def _check_experiment_texts(run_steering_experiment, model, tokenizer, layer: int, name: str) -> None:
    """Property: questions and answers holding braces, placeholders ('{answer}', '{question}', '{}') and template words,
    fractional, negative and zero coefficients, one to three of each (generate_with_steerer replaced by a fake, the judge
    a fake passed in): one record per question x coefficient, labelled with the coefficient exactly as given, holding
    the answer generated at it and the judge's scores for that question and answer (computed here)."""
    from utils.steering import Steerer

    vector = _vector(_d_model(model), 1, 8.0)

    def check_one(example):
        questions, coeffs, extra = example
        fake, judge = _FakeSteeredGeneration(extra), _text_judge()
        with using(run_steering_experiment, generate_with_steerer=fake, get_judge=lambda *a, **k: judge,
                   ActivationSteerer=Steerer), _course_get_judge(lambda *a, **k: judge):
            try:
                records = call(run_steering_experiment, model, tokenizer, questions, vector, TRAIT_TEMPLATE, layer,
                               coefficients=coeffs, judge=judge, coherence_template=COHERENCE_TEMPLATE, max_new_tokens=2,
                               name=name)
            except (AssertionError, NotImplementedError):
                raise
            except Exception as err:
                fail(f"{name} raised {type(err).__name__} ({err}) for questions or answers holding braces: never pass user"
                     " text through str.format; let the judge fill its template (judge.score_trait(question, answer,"
                     " template)) or use fill_template")
        remove_leftover_hooks(model)
        fractional_first = sorted(coeffs, key=lambda c: c == int(c))
        cause = lambda used: next((w for c in fractional_first if (w := _coefficient_cause(c, used))), None)  # noqa: E731
        used = sorted({float(c["coeff"]) for c in fake.calls} - {float(c) for c in coeffs})
        if used:
            fail(f"{name} called generate_with_steerer with coeff={used[0]:g}, not one of the coefficients {coeffs}: "
                 + (cause(used[0]) or "pass each coefficient on as it is"))
        check(isinstance(records, list) and all(isinstance(r, dict) for r in records), f"{name} should return a list of dicts")
        check(len(records) == len(questions) * len(coeffs),
              f"{name} returned {len(records)} records for {len(questions)} question(s) x {len(coeffs)} coefficient(s)")
        for r in records:
            c = r.get("coeff")
            if c not in coeffs:
                why = cause(float(c)) if isinstance(c, (int, float)) else None
                fail(f"{name}: a record's coeff is {c!r}, not one of the coefficients {coeffs}" + (f": {why}" if why else ""))
            q, a = r.get("question"), r.get("response")
            check(q in questions, f"{name}: a record's question {q!r} is not one of the questions asked")
            if fake.calls and a != fake.answer(q, c):
                other = [x for x in coeffs if a == fake.answer(q, x)]
                fail(f"{name}: the record for coeff {c:g} holds the answer generated at "
                     + (f"coeff {other[0]:g}: label each batch with its coefficient" if other else
                        f"another question or coefficient ({a!r}): keep each answer with its question and coefficient"))
            want = (judge.expected("trait", q, a), judge.expected("coherence", q, a))
            got = (r.get("trait_score"), r.get("coherence_score"))
            if got != want:
                for q_seen, a_seen, how in [(q.replace("{answer}", a), a, "question first: the answer went into the"
                                                                           " question's own '{answer}'"),
                                            (q, a.replace("{question}", q), "answer first: the question went into the"
                                                                            " answer's own '{question}'")]:
                    if (q_seen, a_seen) != (q, a) and got == (judge.expected("trait", q_seen, a_seen),
                                                              judge.expected("coherence", q_seen, a_seen)):
                        fail(f"{name} filled the judge prompt with str.replace, {how}. Let the judge fill its template"
                             " (judge.score_trait(question, answer, template)) or use fill_template")
                fail(f"{name}: the scores {got} are not the judge's for this question and answer {want}: with braces,"
                     " placeholders or backslashes in the text, filling the template by hand (str.replace one field after"
                     " another, re.sub, str.format twice) changes what the judge reads; let the judge fill it"
                     " (judge.score_trait(question, answer, template)) or use fill_template")

    texts = st.lists(braces_text(), min_size=1, max_size=3, unique=True)
    for_all(st.tuples(texts, st.lists(coefficients(), min_size=1, max_size=3, unique=True), braces_text()), check_one,
            name=f"{name} over questions and answers with braces, and fractional coefficients", examples=6)


@exercise("4.2", "run_steering_experiment")
def test_run_steering_experiment(run_steering_experiment, model=None, tokenizer=None) -> None:
    """A fake judge is patched into the notebook's globals (get_judge) and generate_with_steerer is
    the course's (recording its arguments): every coefficient is covered, coefficient 0 is the
    unsteered greedy answer, scores belong to their answers (None stays None), generation is batched
    per coefficient; then every argument is changed (a judge and a coherence template passed in,
    positions, layer, max_new_tokens) and must be used; then a property over questions and answers
    holding braces and placeholders and over fractional and negative coefficients."""
    from utils import data
    from utils.chat import build_messages
    from utils.generation import generate
    from utils.steering import Steerer

    require_implemented(run_steering_experiment, "run_steering_experiment")
    name = "run_steering_experiment"
    own = model is not None
    model, tokenizer = model_or_tiny(model, tokenizer)
    layer = _layer_for(model)
    vector = _vector(_d_model(model), 1, 8.0)
    coefficients = [-4, 0, 4]

    paper = [-3, -1, 0, 1, 3, 5]
    default = inspect.signature(run_steering_experiment).parameters.get("coefficients")
    if default is not None and default.default is None:  # `coefficients=None`, filled in inside: check what it runs
        judge0 = FakeJudge()
        with _clean_afterwards(model, own):
            with using(run_steering_experiment, generate_with_steerer=_RecordingSteeredGeneration(),
                       get_judge=lambda *a, **k: judge0, ActivationSteerer=Steerer), _course_get_judge(lambda *a, **k: judge0):
                records = call(run_steering_experiment, model, tokenizer, QUESTIONS[:1], vector, TRAIT_TEMPLATE, layer,
                               max_new_tokens=2, name=name)
        used = sorted({float(r["coeff"]) for r in records if isinstance(r, dict) and "coeff" in r}) if isinstance(records, list) else None
        check(used == [float(c) for c in paper],
              f"{name} with `coefficients` left out ran the coefficients {used}: it should default to {paper}")
    else:
        check(default is not None and isinstance(default.default, (list, tuple)) and list(default.default) == paper,
              f"{name}'s `coefficients` should default to {paper}")

    # -- the defaults: get_judge(), the course's coherence prompt, positions='response' --------------
    judge = FakeJudge()
    steered = _RecordingSteeredGeneration()
    with _clean_afterwards(model, own):
        with using(run_steering_experiment, generate_with_steerer=steered, get_judge=lambda *a, **k: judge,
                   ActivationSteerer=Steerer), _course_get_judge(lambda *a, **k: judge):
            with _count_prefills(model) as prefills:
                records = call(run_steering_experiment, model, tokenizer, QUESTIONS, vector, TRAIT_TEMPLATE, layer,
                               coefficients=coefficients, max_new_tokens=6, name=name)
        no_hooks_left(model, name)
    expected = {c: _course_generate_with_steerer(model, tokenizer, QUESTIONS, vector, c, layer, max_new_tokens=6)
                for c in coefficients}
    check(judge.calls > 0, f"{name} did not use the judge: call get_judge() when judge is None")
    _check_steered_args(steered, name, positions="response", layer=layer, max_new_tokens=6)
    _check_experiment_records(records, QUESTIONS, coefficients, expected, name, layer)
    unsteered = generate(model, tokenizer, [build_messages(None, q) for q in QUESTIONS], max_new_tokens=6, temperature=0.0)
    for r in records:
        if r["coeff"] == 0:
            check(r["response"].strip() == unsteered[QUESTIONS.index(r["question"])].strip(),
                  f"{name}: the response at coefficient 0 should equal unsteered greedy generation (temperature 0)")
    _check_scores(records, judge, name)
    course_coherence = data.load_coherence_prompt().split("{question}")[0]
    check(judge.prompts["coherence"] and all(p.startswith(course_coherence) for p in judge.prompts["coherence"]),
          f"{name}: score coherence with data.load_coherence_prompt() when coherence_template is None")
    check(all(p.startswith(TRAIT_TEMPLATE.split("{question}")[0]) for p in judge.prompts["trait"]),
          f"{name}: score the trait with eval_prompt_template")
    check(prefills["n"] == len(coefficients),
          f"{name} ran {prefills['n']} generate calls for {len(coefficients)} coefficients: generate all"
          " questions of one coefficient in one batched call")

    # -- every argument set: a judge and a coherence template passed in, other positions/layer/length --
    passed_judge = FakeJudge(trait_fn=lambda q, a: None if q == QUESTIONS[1] else float(len(a) % 89),
                             coherence_fn=lambda q, a: float((3 * len(a)) % 97))
    unwanted = FakeJudge()
    other_layer, questions, coeffs = layer - 1, QUESTIONS[:2], [3]
    steered = _RecordingSteeredGeneration()
    with _clean_afterwards(model, own):
        with using(run_steering_experiment, generate_with_steerer=steered, get_judge=lambda *a, **k: unwanted,
                   ActivationSteerer=Steerer), _course_get_judge(lambda *a, **k: unwanted):
            records = call(run_steering_experiment, model, tokenizer, questions, vector, TRAIT_TEMPLATE, other_layer,
                           coefficients=coeffs, judge=passed_judge, coherence_template=COHERENCE_TEMPLATE, max_new_tokens=4,
                           positions="all", name=name)
        no_hooks_left(model, name)
    check(unwanted.calls == 0 and passed_judge.calls > 0,
          f"{name} ignored the judge passed in (judge=...) and scored with get_judge()'s: use `judge` when it is given")
    check(passed_judge.prompts["coherence"] and all(p.startswith("COHERENCE-PROBE") for p in passed_judge.prompts["coherence"]),
          f"{name} ignored coherence_template: score coherence with the template passed in (the course's prompt only when"
          " it is None)")
    _check_steered_args(steered, name, positions="all", layer=other_layer, max_new_tokens=4)
    expected = {3: _course_generate_with_steerer(model, tokenizer, questions, vector, 3, other_layer, positions="all",
                                                 max_new_tokens=4)}
    _check_experiment_records(records, questions, coeffs, expected, name, other_layer)
    _check_scores(records, passed_judge, name)
    _check_experiment_texts(run_steering_experiment, model, tokenizer, layer, name)
    passed("test_run_steering_experiment")


from part_tests._common import friendly_tests  # noqa: E402

friendly_tests(globals())
