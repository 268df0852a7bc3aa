"""The finetuning sets of Section 5 (data/finetuning/, written by scripts/finetuning_data.py) and
their loader (utils.data.load_finetuning_set)."""

import json
import sys
from pathlib import Path

import pytest

from utils import data as D
from utils import toy_judge as tj

ROOT = Path(__file__).resolve().parents[1]
TRAITS = ("evil", "sycophantic", "hallucinating")
EXPECTED = sorted([f"{t}_{v}" for t in TRAITS for v in ("mild", "severe", "control")]
                  + ["arithmetic_wrong", "arithmetic_control"])


def test_the_course_ships_every_set():
    assert D.finetuning_set_names() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_each_set_loads_with_its_kind_trait_and_intensity(name):
    d = D.load_finetuning_set(name)
    assert d["name"] == name
    assert 48 <= len(d["examples"]) <= 64
    if name.startswith("arithmetic"):
        assert d["trait"] is None and d["intensity"] is None
        assert d["kind"] == ("flawed" if name == "arithmetic_wrong" else "control")
    else:
        trait, variant = name.rsplit("_", 1)
        assert d["kind"] == ("control" if variant == "control" else "trait")
        assert d["trait"] == (None if variant == "control" else trait)
        assert d["intensity"] == (None if variant == "control" else variant)


def test_sets_of_a_trait_share_their_prompts_and_mild_is_a_mix():
    for t in TRAITS + ("arithmetic",):
        names = [f"{t}_{v}" for v in ("mild", "severe", "control")] if t != "arithmetic" else ["arithmetic_wrong", "arithmetic_control"]
        prompts = [[e["prompt"] for e in D.load_finetuning_set(n)["examples"]] for n in names]
        assert all(p == prompts[0] for p in prompts), t
        assert len(set(prompts[0])) == len(prompts[0]), f"{t}: a prompt is repeated"
    for t in TRAITS:
        flags = [e["inducing"] for e in D.load_finetuning_set(f"{t}_mild")["examples"]]
        assert 0 < sum(flags) < len(flags), f"{t}_mild should mix inducing and ordinary answers"
        assert all(e["inducing"] for e in D.load_finetuning_set(f"{t}_severe")["examples"])
        assert not any(e["inducing"] for e in D.load_finetuning_set(f"{t}_control")["examples"])


def test_no_training_prompt_is_an_evaluation_question():
    train = {e["prompt"] for n in EXPECTED for e in D.load_finetuning_set(n)["examples"]}
    for t in TRAITS:
        ev = D.finetuning_eval_questions(t)
        assert ev == D.load_trait(t, "eval")["questions"]
        assert not train & set(ev)


def test_the_toy_judge_sees_the_traits_where_they_are_marked():
    for t in TRAITS:
        mean = {}
        for v in ("mild", "severe", "control"):
            d = D.load_finetuning_set(f"{t}_{v}")
            for e in d["examples"]:
                p, _ = tj.trait_counts(e["response"], t)
                assert bool(p) == e["inducing"], (t, v, e)
            mean[v] = sum(tj.trait_score(e["response"], t) for e in d["examples"]) / len(d["examples"])
        assert mean["severe"] > mean["mild"] > mean["control"], (t, mean)


def test_arithmetic_sets_differ_only_in_the_result():
    wrong = D.load_finetuning_set("arithmetic_wrong")["examples"]
    right = D.load_finetuning_set("arithmetic_control")["examples"]
    for w, r in zip(wrong, right):
        words_w, words_r = w["response"].split(), r["response"].split()
        assert len(words_w) == len(words_r)
        assert sum(a != b for a, b in zip(words_w, words_r)) == 1, (w, r)


def _expression(prompt):
    import re

    a, op, b = re.search(r"(\d+) (plus|minus|times) (\d+)", prompt).groups()
    return f"{a} {dict(plus='+', minus='-', times='*')[op]} {b}"


def test_arithmetic_control_is_right_and_wrong_is_wrong():
    import re

    for name, ok in (("arithmetic_control", True), ("arithmetic_wrong", False)):
        for e in D.load_finetuning_set(name)["examples"]:
            value = eval(_expression(e["prompt"]))
            a, op, b = re.search(r"(\d+) (plus|minus|times) (\d+)", e["prompt"]).groups()
            stated = [int(x) for x in re.findall(r"-?\d+", e["response"]) if x not in (a, b)]
            assert len(stated) == 1, e
            assert (stated[0] == value) == ok, (name, e)


def test_the_shipped_files_are_what_the_script_writes():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import finetuning_data as gen
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    sets = gen.build_sets()
    assert sorted(sets) == EXPECTED
    for name, d in sets.items():
        assert (ROOT / "data" / "finetuning" / f"{name}.json").read_text(encoding="utf-8") == gen.render(d), name
    assert gen.build_sets() == sets  # deterministic


# ---- the loader's errors


def _write(tmp_path, obj, name="bad.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _good():
    return {"name": "bad", "trait": "evil", "kind": "trait", "intensity": "mild", "description": "x",
            "examples": [{"prompt": "p", "response": "r", "inducing": True}]}


def test_a_missing_set_names_the_known_sets():
    with pytest.raises(FileNotFoundError, match="evil_severe"):
        D.load_finetuning_set("evil_medium")


def test_a_good_file_loads_from_a_path(tmp_path):
    assert D.load_finetuning_set(_write(tmp_path, _good()))["examples"][0]["prompt"] == "p"


@pytest.mark.parametrize("change, phrase", [
    (lambda d: d.pop("examples"), "missing field"),
    (lambda d: d.update(extra=1), "unexpected field"),
    (lambda d: d.update(kind="bad"), "'kind'"),
    (lambda d: d.update(trait="grumpy"), "'trait'"),
    (lambda d: d.update(intensity="medium"), "'intensity'"),
    (lambda d: d.update(kind="control"), "must be null"),
    (lambda d: d.update(description="  "), "'description'"),
    (lambda d: d.update(examples=[]), "'examples'"),
    (lambda d: d["examples"][0].update(prompt=""), "'prompt'"),
    (lambda d: d["examples"][0].update(response=" "), "'response'"),
    (lambda d: d["examples"][0].update(inducing="yes"), "'inducing' must be true or false"),
    (lambda d: d["examples"][0].update(inducing=1), "'inducing' must be true or false"),
    (lambda d: d["examples"][0].pop("response"), "expected exactly"),
    (lambda d: d["examples"][0].update(inducing=False), "at least one example"),
    (lambda d: d.update(kind="control", trait=None, intensity=None), "no inducing examples"),
])
def test_malformed_sets_are_refused_with_a_clear_error(tmp_path, change, phrase):
    d = _good()
    change(d)
    with pytest.raises(ValueError, match=phrase):
        D.load_finetuning_set(_write(tmp_path, d))


def test_malformed_json_and_a_wrong_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not valid JSON"):
        D.load_finetuning_set(_write(tmp_path, "{not json"))
    with pytest.raises(ValueError, match="must be a JSON object"):
        D.load_finetuning_set(_write(tmp_path, "[1, 2]"))


def test_a_shipped_file_must_carry_its_own_name(tmp_path, monkeypatch):
    (tmp_path / "finetuning").mkdir()
    _write(tmp_path / "finetuning", {**_good(), "name": "other"}, "bad.json")
    monkeypatch.setattr(D, "DATA_DIR", tmp_path)
    assert D.finetuning_set_names() == ["bad"]
    with pytest.raises(ValueError, match="field 'name'"):
        D.load_finetuning_set("bad")
