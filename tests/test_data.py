"""Tests for the shipped data files and their loaders in utils/data.py."""

import json
import re

import pytest

from utils import data as D

# -----------------------------------------------------------------------------
# personas


def test_personas_load_with_expected_names_and_groups():
    personas = D.load_personas()
    groups = D.load_persona_groups()
    assert list(personas) == list(groups)
    assert 18 <= len(personas) <= 30
    expected = {
        "default": {"default", "ai_assistant", "language_model", "helpful_assistant"},
        "assistant_like": {"consultant", "analyst", "evaluator", "generalist", "editor", "coach", "therapist"},
        "middle": {"teacher", "storyteller", "philosopher", "artist", "rebel", "mystic"},
        "fantastical": {"ghost", "hermit", "bohemian", "trickster", "leviathan", "oracle", "jester", "bard"},
    }
    for group, names in expected.items():
        assert {n for n, g in groups.items() if g == group} == names, group
    assert personas["default"] == ""
    assert personas["ai_assistant"] == "You are an AI assistant."
    assert "large language model" in personas["language_model"]
    assert D.default_persona_names() == ["default", "ai_assistant", "language_model", "helpful_assistant"]


def test_role_prompts_are_two_to_four_sentences():
    groups = D.load_persona_groups()
    for name, prompt in D.load_personas().items():
        if groups[name] == "default":
            continue
        n = len(re.findall(r"[.!?](\s|$)", prompt))
        assert 2 <= n <= 4, f"{name}: {n} sentences"


def test_persona_questions():
    qs = D.load_persona_questions()
    assert 15 <= len(qs) <= 25
    assert len(set(qs)) == len(qs)
    assert all(q.strip().endswith(("?", ".")) for q in qs)


def test_roleplay_judge_prompt():
    p = D.load_roleplay_judge_prompt()
    filled = p.format(role="a pirate", question="Who are you?", answer="Arr.")
    assert "a pirate" in filled and "Who are you?" in filled and "Arr." in filled
    assert "SCORE:" in p
    for level in "0123":
        assert re.search(rf"^{level}\b", p, re.M), f"level {level} not described"


def test_personas_malformed(tmp_path):
    bad = tmp_path / "personas.json"
    bad.write_text(json.dumps({"personas": [{"name": "default", "group": "default"}]}))
    with pytest.raises(ValueError, match="system_prompt"):
        D.load_personas(bad)
    bad.write_text(json.dumps({"personas": [{"name": "x", "group": "wizards", "system_prompt": "You are x."}]}))
    with pytest.raises(ValueError, match="unknown group 'wizards'"):
        D.load_persona_groups(bad)
    bad.write_text(json.dumps({"personas": [{"name": "x", "group": "middle", "system_prompt": "You are x."}]}))
    with pytest.raises(ValueError, match="no persona in group 'default'"):
        D.load_personas(bad)
    bad.write_text(json.dumps({"people": []}))
    with pytest.raises(ValueError, match="'personas'"):
        D.load_personas(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        D.load_personas(bad)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        D.load_personas(missing)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        D.load_trait("evil", path=missing)


def test_assistant_axis_role_folder_and_jsonl_questions(tmp_path):
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "default.json").write_text(json.dumps({"instruction": [{"pos": ""}, {"pos": "You are an AI."}]}))
    (roles / "pirate.json").write_text(json.dumps({"instruction": [{"pos": "You are a pirate."}], "eval_prompt": "..."}))
    assert D.load_personas(roles) == {"default": "", "pirate": "You are a pirate."}
    assert D.default_persona_names(roles) == ["default"]
    q = tmp_path / "questions.jsonl"
    q.write_text('{"question": "Who are you?", "id": 0}\n\n{"question": "What do you fear?", "id": 1}\n')
    assert D.load_persona_questions(q) == ["Who are you?", "What do you fear?"]

# -----------------------------------------------------------------------------
# traits


@pytest.mark.parametrize("split", ["extract", "eval"])
def test_all_traits_load(split):
    traits = D.load_all_traits(split)
    assert tuple(traits) == D.TRAITS
    for name, t in traits.items():
        assert len(t["instruction"]) == 5, name
        assert len(t["questions"]) == 20, name
        assert len(set(t["questions"])) == 20, name
        p = t["eval_prompt"]
        assert p.count("{question}") == 1 and p.count("{answer}") == 1, name
        assert "REFUSAL" in p and "100" in p and name in p, name
        filled = p.format(question="Q?", answer="A.")
        assert "Q?" in filled and "A." in filled


def test_eval_questions_disjoint_from_extract():
    for name in D.TRAITS:
        ex = D.load_trait(name, "extract")
        ev = D.load_trait(name, "eval")
        norm = lambda q: q.lower().strip()
        assert not {norm(q) for q in ex["questions"]} & {norm(q) for q in ev["questions"]}, name
        assert ex["instruction"] == ev["instruction"], name


def test_no_question_repeated_across_traits():
    seen = {}
    for split in D.TRAIT_SPLITS:
        for name, t in D.load_all_traits(split).items():
            for q in t["questions"]:
                assert q not in seen, f"{q!r} in {name}/{split} and {seen[q]}"
                seen[q] = f"{name}/{split}"


def test_unknown_trait_and_split():
    with pytest.raises(ValueError, match="unknown trait 'grumpy'"):
        D.load_trait("grumpy")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        D.load_trait("evil", split="test")


def _good_trait():
    return {
        "instruction": [{"pos": f"Be bad {i}.", "neg": f"Be good {i}."} for i in range(5)],
        "questions": [f"Question number {i}?" for i in range(20)],
        "eval_prompt": "Rate it.\nQ: {question}\nA: {answer}\nReply 0-100 or REFUSAL.",
    }


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("eval_prompt"), "missing field 'eval_prompt'"),
    (lambda d: d.pop("questions"), "missing field 'questions'"),
    (lambda d: d["instruction"].pop(), "5 pos/neg pairs, found 4"),
    (lambda d: d["instruction"][2].pop("neg"), r"instruction\[2\]' is missing 'neg'"),
    (lambda d: d["instruction"][0].update(pos=""), r"instruction\[0\]\.pos"),
    (lambda d: d["questions"].pop(), "20 entries, found 19"),
    (lambda d: d.update(eval_prompt="Q: {question} only"), r"\{answer\} must appear exactly once, found 0"),
    (lambda d: d.update(eval_prompt="{question} {answer} {answer}"), r"\{answer\} must appear exactly once, found 2"),
    (lambda d: d.update(eval_prompt="{question} {answer} {trait}"), "unexpected placeholder"),
    (lambda d: d.update(eval_prompt="{question} {answer} {"), "unbalanced braces"),
])
def test_malformed_trait_files(tmp_path, mutate, message):
    d = _good_trait()
    D.validate_trait_data(d, "ok")  # the unmutated dict is valid
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message) as e:
        D.load_trait("anything", path=path)
    assert "bad.json" in str(e.value)


def test_duplicate_trait_question_loads_with_a_warning(tmp_path):
    d = _good_trait()
    d["questions"][3] = d["questions"][0]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(d))
    with pytest.warns(D.DataWarning, match=r"dup.json: field 'questions' lists 1 entry twice .*questions\[0\] and questions\[3\]"):
        t = D.load_trait("anything", path=path)
    assert len(t["questions"]) == 19 and t["questions"][0] == d["questions"][0]
    assert len(d["questions"]) == 20  # the caller's dict is not changed


def test_extraction_questions_jsonl_with_a_duplicate(tmp_path):
    """The assistant-axis repository's data/extraction_questions.jsonl lists one question twice:
    it loads, with a warning naming the lines, keeping the first occurrence and the file's ids."""
    lines = [{"question": f"Open question number {i}?", "id": i} for i in range(240)]
    lines[200] = {"question": lines[17]["question"], "id": 200}
    q = tmp_path / "extraction_questions.jsonl"
    q.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(D.DataWarning, match=r"lists 1 entry twice .* line 18 and line 201"):
        questions = D.load_persona_questions(q)
    assert len(questions) == 239 and questions[17] == lines[17]["question"]
    with pytest.warns(D.DataWarning):
        with_ids = D.load_persona_questions(q, with_ids=True)
    assert with_ids[17] == (17, lines[17]["question"]) and with_ids[200] == (201, lines[201]["question"])
    # one id for two different questions cannot be used
    lines[5]["id"] = 4
    lines[200]["question"] = "A question of its own?"
    q.write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(ValueError, match=r"id 4 is used for two different questions \(lines 5 and 6\)"):
        D.load_persona_questions(q)
    q.write_text('{"question": "A?"}\n{"question": ""}\n')
    with pytest.raises(ValueError, match="line 2 must be a non-empty string"):
        D.load_persona_questions(q)
    q.write_text('{"question": "A?"}\n{"q": "B?"}\n')
    with pytest.raises(ValueError, match="line 2 has no field 'question'"):
        D.load_persona_questions(q)


def test_duplicate_personas(tmp_path):
    base = [{"name": "default", "group": "default", "system_prompt": ""},
            {"name": "ghost", "group": "fantastical", "system_prompt": "You are a ghost."}]
    f = tmp_path / "personas.json"
    f.write_text(json.dumps({"personas": base + [dict(base[1])]}))
    with pytest.warns(D.DataWarning, match=r"persona 'ghost' is listed twice \(personas\[1\] and personas\[2\]"):
        assert D.load_personas(f) == {"default": "", "ghost": "You are a ghost."}
    f.write_text(json.dumps({"personas": base + [{**base[1], "system_prompt": "You are a spirit."}]}))
    with pytest.raises(ValueError, match="'ghost' is used twice"):
        D.load_personas(f)


def test_paper_schema_file_loads(tmp_path):
    # persona_vectors layout: data_generation/trait_data_{extract,eval}/<trait>.json, same keys as ours;
    # some forks add extra keys such as "few_shot_examples", which are kept.
    d = _good_trait()
    d["few_shot_examples"] = [{"question": "Q?", "answer": "A.", "score": 90}]
    folder = tmp_path / "data_generation" / "trait_data_extract"
    folder.mkdir(parents=True)
    (folder / "curious.json").write_text(json.dumps(d, indent=4))
    t = D.load_trait("curious", path=folder / "curious.json")
    assert t["questions"] == d["questions"] and t["few_shot_examples"] == d["few_shot_examples"]
    assert D.load_trait("curious", "extract", path=tmp_path / "data_generation") == t
    with pytest.raises(FileNotFoundError, match="curious"):
        D.load_trait("curious", "eval", path=tmp_path / "data_generation")


def test_coherence_prompt():
    p = D.load_coherence_prompt()
    assert p.count("{question}") == 1 and p.count("{answer}") == 1
    assert "0" in p and "50" in p and "100" in p
    p.format(question="q", answer="a")

# -----------------------------------------------------------------------------
# transcripts and delusion risk


def test_transcripts_load_and_alternate():
    ts = D.load_transcripts()
    names = {t["name"] for t in ts}
    assert {"therapy", "philosophy", "creative_writing", "coding", "spirituality", "coding_control"} <= names
    for t in ts:
        conv = t["conversation"]
        assert 6 <= len(conv) <= 10, t["name"]
        assert [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2), t["name"]
        assert t["domain"] and t["description"], t["name"]
        for m in conv:
            if m["role"] == "assistant":
                n = len(re.findall(r"[.!?](\s|$)", m["content"]))
                assert 2 <= n <= 6, f"{t['name']}: assistant turn with {n} sentences"
    control = D.load_transcript("coding_control")
    assert control.get("control") is True
    assert [t["name"] for t in D.load_transcripts(["therapy", "coding"])] == ["therapy", "coding"]


def test_unknown_transcript():
    with pytest.raises(FileNotFoundError, match="available"):
        D.load_transcript("astrology")


@pytest.mark.parametrize("conv, message", [
    ([{"role": "assistant", "content": "Hi."}], r"conversation\[0\] has role 'assistant', expected 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], r"conversation\[1\].*expected 'assistant'"),
    ([{"role": "user", "content": "a"}], "must end with an assistant turn"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}], "empty"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([], "non-empty list"),
])
def test_malformed_transcripts(tmp_path, conv, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"domain": "x", "conversation": conv}))
    with pytest.raises(ValueError, match=message) as e:
        D.load_transcript(path)
    assert "bad.json" in str(e.value)
    path.write_text(json.dumps({"domain": "x"}))
    with pytest.raises(ValueError, match="missing field 'conversation'"):
        D.load_transcript(path)


def test_assistant_axis_transcript_format(tmp_path):
    raw = {
        "model": "some/model",
        "turns": 2,
        "steering_config": {"layers": [1, 2]},
        "conversation": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Hello."},
            {"role": "assistant", "content": "Ahoy."},
        ],
        "projections": [0.5],
    }
    path = tmp_path / "pirate_case.json"
    path.write_text(json.dumps(raw))
    t = D.load_transcript(path)
    assert t["domain"] == "pirate_case" and t["name"] == "pirate_case"
    assert t["system_prompt"] == "You are a pirate."
    assert [m["role"] for m in t["conversation"]] == ["user", "assistant"]
    assert t["model"] == "some/model" and t["projections"] == [0.5]


def test_delusion_risk_prompt():
    p = D.load_delusion_risk_prompt()
    assert p.count("{conversation}") == 1 and p.count("{response}") == 1
    filled = p.format(conversation="User: hi", response="Hello.")
    assert re.search(r"^AVOIDING_DELUSION: <n>$", filled, re.M)
    assert re.search(r"^MAINTAINING_ROLE: <n>$", filled, re.M)


def test_delusion_risk_from_scores():
    assert D.delusion_risk_from_scores(5, 5) == 0
    assert D.delusion_risk_from_scores(1, 1) == 100
    assert D.delusion_risk_from_scores(3, 3) == 50
    assert D.delusion_risk_from_scores(4, 5) == 13
    assert D.delusion_risk_from_scores(5, 4) == 13
    assert D.delusion_risk_from_scores(2, 1) == 88
    risks = [D.delusion_risk_from_scores(a, b) for a in range(1, 6) for b in range(1, 6)]
    assert all(isinstance(r, int) and 0 <= r <= 100 for r in risks)
    assert D.delusion_risk_from_scores(2, 5) < D.delusion_risk_from_scores(1, 5)  # lower score, higher risk
    for bad in [(0, 3), (3, 6), (2.5, 3), (True, 3), ("3", 3)]:
        with pytest.raises(ValueError, match="1 to 5"):
            D.delusion_risk_from_scores(*bad)


def test_format_conversation():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert D.format_conversation(msgs) == "System: S\n\nUser: U\n\nAssistant: A"
    assert D.format_conversation(D.load_transcript("therapy")["conversation"]).startswith("User: ")
    with pytest.raises(ValueError, match="unknown role"):
        D.format_conversation([{"role": "tool", "content": "x"}])


def test_data_dir_override(tmp_path, monkeypatch):
    import importlib

    monkeypatch.setenv("PERSONA_COURSE_DATA", str(tmp_path))
    try:
        mod = importlib.reload(D)
        assert mod.DATA_DIR == tmp_path
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            mod.load_coherence_prompt()
    finally:
        monkeypatch.delenv("PERSONA_COURSE_DATA")
        importlib.reload(D)
    assert (D.DATA_DIR / "personas.json").is_file()
