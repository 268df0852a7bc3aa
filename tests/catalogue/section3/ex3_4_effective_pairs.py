"""Exercise 3.4 — Keeping the pairs that worked

Wrong implementations of `filter_effective_pairs` that `test_filter_effective_pairs` must reject, each
declared where it is defined with the phrase its failure message must contain, and correct implementations
written another way, which must pass.
"""

from __future__ import annotations

from tests.catalogue import correct, mistake

COHERENCE_THRESHOLD = 50


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


@mistake("test_filter_effective_pairs", ">=")
def filter_strict_greater(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] > threshold and n["score"] < 100 - threshold and _ok(p) and _ok(n))


@mistake("test_filter_effective_pairs", "not single responses")
def filter_single_responses(responses, trait_data, threshold=50):
    return [r for r in responses if r["score"] is not None and _ok(r)
            and ((r["polarity"] == "pos" and r["score"] >= threshold) or (r["polarity"] == "neg" and r["score"] < 100 - threshold))]


@mistake("test_filter_effective_pairs", "must share both")
def filter_sides_separately_then_zip(responses, trait_data, threshold=50):
    pos = [r for r in responses if r["polarity"] == "pos" and r["score"] is not None and r["score"] >= threshold and _ok(r)]
    neg = [r for r in responses if r["polarity"] == "neg" and r["score"] is not None and r["score"] < 100 - threshold and _ok(r)]
    return [{"instruction_idx": p["instruction_idx"], "question": p["question"], "pos": p, "neg": n} for p, n in zip(pos, neg)]


@mistake("test_filter_effective_pairs", "neg answer must score < 50")
def filter_pos_side_only(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and p["score"] >= threshold and _ok(p) and _ok(n))


@mistake("test_filter_effective_pairs", "is not 0")
def filter_none_as_zero(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: (p["score"] or 0) >= threshold and (n["score"] or 0) < 100 - threshold
                  and _ok(p) and _ok(n))


@mistake("test_filter_effective_pairs", "incoherent")
def filter_ignores_coherence(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold)


@mistake("test_filter_effective_pairs", "both sides must be coherent")
def filter_coherence_pos_only(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and _ok(p))


@mistake("test_filter_effective_pairs", "100 - 60")
def filter_neg_below_threshold(responses, trait_data, threshold=50):
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < threshold and _ok(p) and _ok(n))


@mistake("test_filter_effective_pairs", "coherence of none is not a pass")
def filter_none_coherence_passes(responses, trait_data, threshold=50):
    def ok(r):
        return r["coherence"] is None or r["coherence"] >= COHERENCE_THRESHOLD
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and ok(p) and ok(n))


@mistake("test_filter_effective_pairs", "must share both")
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


@mistake("test_filter_effective_pairs", "not to threshold")
def filter_coherence_held_to_threshold(responses, trait_data, threshold=50):
    def ok(r):
        return r["coherence"] is not None and r["coherence"] >= threshold
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and ok(p) and ok(n))


@mistake("test_filter_effective_pairs", "order of the instruction pairs, then of trait_data['questions']")
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


@mistake("test_filter_effective_pairs", "no 'coherence' key at all")
def filter_missing_key_passes(responses, trait_data, threshold=50):
    def ok(r):
        return r.get("coherence", 100) is not None and r.get("coherence", 100) >= COHERENCE_THRESHOLD

    def score(r, default):
        return r.get("score", default)
    return _pairs(responses, trait_data, lambda p, n: score(p, 100) is not None and score(n, 0) is not None
                  and score(p, 100) >= threshold and score(n, 0) < 100 - threshold and ok(p) and ok(n))


@mistake("test_filter_effective_pairs", "changed the scored records it was given")
def filter_mutates_records(responses, trait_data, threshold=50):
    """Marks the kept records in place (the scored records gain a key)."""
    pairs = _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                   and p["score"] >= threshold and n["score"] < 100 - threshold and _ok(p) and _ok(n))
    for pair in pairs:
        pair["pos"]["effective"] = pair["neg"]["effective"] = True
    return pairs


@mistake("test_filter_effective_pairs", "a neg coherence of none is not a pass")
def filter_neg_coherence_none_passes(responses, trait_data, threshold=50):
    """Checks the neg side's coherence only when it has one: a neg coherence of None passes."""
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and _ok(p)
                  and (n["coherence"] is None or n["coherence"] >= COHERENCE_THRESHOLD))


# Correct, written another way: each must pass.
@mistake("test_filter_effective_pairs", "no int() or round()")
def filter_int_threshold(responses, trait_data, threshold=50):
    """Casts the threshold to int 'since scores are whole numbers': 62.5 lets a pos score of 62 through."""
    threshold = int(threshold)
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= threshold and n["score"] < 100 - threshold and _ok(p) and _ok(n))


@mistake("test_filter_effective_pairs", "no int() or round()")
def filter_rounded_threshold(responses, trait_data, threshold=50):
    """Rounds the threshold (round(70.5) is 70 in Python): a pos score of 70 passes a threshold of 70.5."""
    t = round(threshold)
    return _pairs(responses, trait_data, lambda p, n: p["score"] is not None and n["score"] is not None
                  and p["score"] >= t and n["score"] < 100 - t and _ok(p) and _ok(n))


@correct("test_filter_effective_pairs")
def filter_margin_form(responses, trait_data, threshold=50.0):
    """The two score conditions written as margins from each end of the scale, with a float threshold."""
    by_key = _index(responses)
    out = []
    for idx in range(len(trait_data["instruction"])):
        for q in trait_data["questions"]:
            pos, neg = by_key.get((idx, q, "pos")), by_key.get((idx, q, "neg"))
            if pos is None or neg is None:
                continue
            values = [pos.get("score"), neg.get("score"), pos.get("coherence"), neg.get("coherence")]
            if any(v is None for v in values):
                continue
            if pos["score"] - threshold >= 0 and (100 - neg["score"]) > threshold and min(values[2:]) >= COHERENCE_THRESHOLD:
                out.append({"instruction_idx": idx, "question": q, "pos": pos, "neg": neg})
    return out


@correct("test_filter_effective_pairs")
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


@correct("test_filter_effective_pairs")
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


@correct("test_filter_effective_pairs")
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
