"""Exercise 3.4 — Keeping the pairs that worked

`filter_effective_pairs` on shuffled scored records, one (instruction, question) per rule of the filter (the
thresholds, None scores, coherence on both sides, missing keys), at the default threshold and at 60; then a property
over one to three instruction pairs and one to four questions written with braces, scores near the thresholds and
fractional thresholds (62.5: no int() or round()).
"""

from __future__ import annotations

import hashlib
import math

from part_tests._common import call, check, exercise, fail, passed
from part_tests.properties import for_all, st
from part_tests.section3._fakes import AWKWARD_TEXTS, _direct, _guarded


def _filter_fixture():
    # not in alphabetical order: sorting by the question's text is not the order of trait_data["questions"]
    questions = ["Why do cats purr?", "Is tea better than coffee?", "How do tides work?", "What makes music sad?",
                 "Can plants hear?", "Does money buy happiness?", "Are dreams meaningful?", "Why do we yawn?"]
    trait = {"instruction": [{"pos": "p0", "neg": "n0"}, {"pos": "p1", "neg": "n1"}], "questions": questions,
             "eval_prompt": "{question} {answer}"}
    # (instruction, question index): ((pos score, pos coherence), (neg score, neg coherence), kept?, why)
    table = {
        (0, 0): ((80, 90), (10, 90), True, ""),
        (0, 1): ((50, 50), (49, 50), True, "a pos score of exactly 50 passes (>=), and so does a coherence of exactly 50"),
        (0, 2): ((49, 90), (10, 90), False, "the pos answer must score >= 50"),
        (0, 3): ((80, 90), (50, 90), False, "the neg answer must score < 50 (here it scored 50)"),
        (0, 4): ((80, 90), (None, 90), False, "a neg score of None (refusal or failure) is not 0: drop the pair"),
        (0, 5): ((None, 90), (5, 90), False, "a pos score of None: drop the pair"),
        (0, 6): ((85, 55), (20, 52), True, "coherence 55 and 52 pass (>= COHERENCE_THRESHOLD = 50)"),
        (1, 0): ((90, 40), (10, 90), False, "the pos answer is incoherent (coherence 40 < 50)"),
        (1, 1): ((90, 90), (5, 30), False, "the neg answer is incoherent (coherence 30 < 50): both sides must be coherent"),
        (1, 2): ((95, 95), (0, 95), True, ""),
        (1, 3): ((70, None), (10, 90), False, "a coherence of None is not a pass"),
        (1, 4): ((20, 90), (60, 90), False, "the pos answer must score >= 50 and the neg < 50"),
        (1, 5): ((65, 80), (35, 80), True, ""),
        (1, 6): ((60, 70), (30, 70), True, ""),
        (0, 7): ((80, 90), (10, None), False, "a neg coherence of None is not a pass: both sides must be coherent"),
        (1, 7): ((30, 85), (15, 85), False, "the pos answer must score >= 50"),
    }
    records = []
    for (i, q), (pos, neg, _, _) in table.items():
        for polarity, (score, coherence) in (("pos", pos), ("neg", neg)):
            records.append({"question": questions[q], "system_prompt": f"sp {polarity} {i}", "response": f"r {polarity} {i} {q}",
                            "instruction_idx": i, "polarity": polarity, "score": score, "coherence": coherence})
    # shuffle deterministically so that pairing by position cannot work
    records = [records[j] for j in sorted(range(len(records)), key=lambda j: hashlib.sha1(str(j).encode()).hexdigest())]
    return trait, table, records


_COHERENCES = st.sampled_from([80, 80, 80, 50, 49, None])


@st.composite
def _scored_case(draw):
    n_pairs = draw(st.integers(1, 3))
    questions = draw(st.lists(st.sampled_from(AWKWARD_TEXTS), min_size=1, max_size=4, unique=True))
    threshold = draw(st.sampled_from([62.5, 37.5, 70.5, 50, 60]))
    # scores on either side of each bound (the whole numbers next to a fractional threshold), and None
    lo, hi = math.floor(threshold), math.ceil(threshold)
    pos_scores = st.sampled_from([lo, hi, lo, 100, 0, 50, None])
    neg_scores = st.sampled_from([100 - hi, 100 - lo, 100 - hi, 0, 100, 49, None])
    table = {(i, q): ((draw(pos_scores), draw(_COHERENCES)), (draw(neg_scores), draw(_COHERENCES)))
             for i in range(n_pairs) for q in range(len(questions))}
    order = draw(st.permutations(range(2 * len(table))))
    return n_pairs, questions, threshold, table, order


def _kept_by_rule(pos, neg, threshold) -> bool:
    """The filter written out: no None, pos score >= threshold, neg score < 100 - threshold, both coherences >= 50."""
    (ps, pc), (ns, nc) = pos, neg
    if None in (ps, pc, ns, nc):
        return False
    return ps >= threshold and ns < 100 - threshold and pc >= 50 and nc >= 50


def _check_scored_case(fn, case) -> None:
    n_pairs, questions, threshold, table, order = case
    trait = {"instruction": [{"pos": f"p{i}", "neg": f"n{i}"} for i in range(n_pairs)], "questions": questions,
             "eval_prompt": "{question} {answer}"}
    records = []
    for (i, q), sides in table.items():
        for polarity, (score, coherence) in zip(("pos", "neg"), sides):
            records.append({"question": questions[q], "system_prompt": f"sp {polarity} {i}", "response": f"r {i} {q}",
                            "instruction_idx": i, "polarity": polarity, "score": score, "coherence": coherence})
    records = [records[j] for j in order]
    kept = _direct(fn, [dict(r) for r in records], trait, threshold=threshold, name="filter_effective_pairs")
    check(isinstance(kept, list) and all(isinstance(p, dict) and {"instruction_idx", "question"} <= set(p) for p in kept),
          "filter_effective_pairs should return a list of pair dicts {instruction_idx, question, pos, neg}")
    got = [(p["instruction_idx"], questions.index(p["question"]) if p["question"] in questions else p["question"])
           for p in kept]
    want = sorted(key for key, sides in table.items() if _kept_by_rule(*sides, threshold))
    for key in got:
        if key not in table:
            fail(f"kept a pair {key!r} that is not an (instruction, question) of trait_data: keep each question as given")
        if key not in want:
            (ps, pc), (ns, nc) = table[key]
            hint = (f" (threshold {threshold} is not a whole number: compare with it as given, no int() or round())"
                    if threshold != int(threshold) and ps is not None and int(threshold) <= ps < threshold else "")
            fail(f"with threshold={threshold} kept the pair (instruction {key[0]}, question {key[1]}): pos score {ps}, "
                 f"coherence {pc}; neg score {ns}, coherence {nc}; keep only pos >= {threshold}, neg < {100 - threshold}, "
                 f"both coherences >= 50 and no None{hint}")
    for key in want:
        if key not in got:
            (ps, pc), (ns, nc) = table[key]
            fail(f"with threshold={threshold} dropped the pair (instruction {key[0]}, question {key[1]}): pos score {ps}, "
                 f"coherence {pc}; neg score {ns}, coherence {nc}, which passes pos >= {threshold}, "
                 f"neg < {100 - threshold} and both coherences >= 50"
                 + (f" (threshold {threshold} is not a whole number: compare with it as given, no int() or round())"
                    if threshold != int(threshold) else ""))
    check(got == want, f"pairs should come once each, in the order of the instruction pairs, then of "
                       f"trait_data['questions']; got {got}, expected {want}")


@exercise("3.4", "filter_effective_pairs")
def test_filter_effective_pairs(filter_effective_pairs) -> None:
    trait, table, records = _filter_fixture()
    questions = trait["questions"]
    given = [dict(r) for r in records]
    kept = call(filter_effective_pairs, given, trait, name="filter_effective_pairs")
    check(isinstance(kept, list), f"filter_effective_pairs should return a list, got {type(kept).__name__}")
    for p in kept:
        check(isinstance(p, dict) and {"instruction_idx", "question", "pos", "neg"} <= set(p),
              "each item of the result should be a pair {instruction_idx, question, pos, neg}: filter pairs, "
              "not single responses")
        for side in ("pos", "neg"):
            rec = p[side]
            check(isinstance(rec, dict) and rec.get("polarity") == side,
                  f"pair[{side!r}] should be the {side} record (filter pairs, not single responses)")
            check(rec["instruction_idx"] == p["instruction_idx"] and rec["question"] == p["question"],
                  "a pair joins records of different (instruction, question): the pos and neg answers of a pair "
                  "must share both the instruction_idx and the question")
    got = [(p["instruction_idx"], questions.index(p["question"])) for p in kept]
    want = [key for key, row in table.items() if row[2]]
    for key in set(got) - set(want):
        fail(f"kept the pair (instruction {key[0]}, question {key[1]}), which should be dropped: {table[key][3]}")
    for key in set(want) - set(got):
        why = table[key][3] or "both sides did what they were told"
        fail(f"dropped the pair (instruction {key[0]}, question {key[1]}), which should be kept: {why}")
    check(len(got) == len(set(got)), "a pair appears more than once in the result")
    check(got == sorted(want), f"pairs should come in the order of the instruction pairs, then of trait_data['questions']; got {got}")
    check(given == records, "filter_effective_pairs changed the scored records it was given (added, removed or "
                            "changed a key): leave them as they are and put them into new pair dicts (the scored "
                            "records are used again later)")

    # the negative side is held to 100 - threshold
    strict = call(filter_effective_pairs, [dict(r) for r in records], trait, threshold=60, name="filter_effective_pairs")
    got60 = {(p["instruction_idx"], questions.index(p["question"])) for p in strict}
    want60 = {(0, 0), (1, 2), (1, 5), (0, 6), (1, 6)}
    if (0, 6) not in got60 and got60 >= want60 - {(0, 6)}:
        fail("with threshold=60 the pair (instruction 0, question 6), pos 85 and neg 20 with coherence 55 and 52, should "
             "be kept: coherence is held to COHERENCE_THRESHOLD (50) whatever the trait threshold, not to threshold")
    if (1, 6) not in got60 and got60 >= want60 - {(1, 6)}:
        fail("with threshold=60 a pair with pos 60 and neg 30 should be kept (pos >= 60: the threshold itself passes)")
    if (1, 5) not in got60 and got60 >= {(0, 0), (1, 2)}:
        fail("with threshold=60 a pair with pos 65 and neg 35 should be kept (pos >= 60, neg < 100 - 60 = 40)")
    if (0, 1) in got60 or got60 != want60:
        extra = sorted(got60 - want60)
        fail(f"with threshold=60 keep pos >= 60 and neg < 100 - 60 = 40; expected {sorted(want60)}, got {sorted(got60)}"
             + (f" (should not keep {extra})" if extra else ""))

    # a score that is missing altogether (no key) is no score: drop the pair, or raise; never keep it
    holed = [dict(r) for r in records]
    for r in holed:
        if (r["instruction_idx"], questions.index(r["question"])) == (0, 0) and r["polarity"] == "pos":
            del r["coherence"]
        if (r["instruction_idx"], questions.index(r["question"])) == (1, 2) and r["polarity"] == "neg":
            del r["score"]
    try:
        kept = call(filter_effective_pairs, holed, trait, name="filter_effective_pairs")
    except (KeyError, ValueError, TypeError):
        kept = []
    got = {(p["instruction_idx"], questions.index(p["question"])) for p in kept}
    check((0, 0) not in got, "kept a pair whose pos record has no 'coherence' key at all: a missing coherence is not a "
                             "pass (treat it like None)")
    check((1, 2) not in got, "kept a pair whose neg record has no 'score' key at all: a missing score is not 0 (treat it "
                             "like None)")

    _guarded(lambda: for_all(_scored_case(), lambda case: _check_scored_case(filter_effective_pairs, case),
                             name="filter_effective_pairs on drawn scores and thresholds", examples=5),
             "filter_effective_pairs")
    passed("test_filter_effective_pairs")
