"""The toy persona world (issue #7): the shipped toy model loads offline and answers in style, the
toy judge scores what it should, and the corpus generator is deterministic. Fast (CPU, seconds)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOY_DIR = ROOT / "scripts" / "toy_world"
for p in (str(ROOT), str(TOY_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

import corpus as toy_corpus  # noqa: E402
from utils import data  # noqa: E402
from utils import toy_judge as tj  # noqa: E402
from utils.judge import OfflineJudge, fill_template  # noqa: E402

MODEL_DIR = ROOT / "utils" / "assets" / "toy-qwen2"


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR))
        tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    tok.padding_side = "left"
    model.eval()
    return model, tok


def _answers(toy, prompts):
    from utils.generation import generate

    model, tok = toy
    return generate(model, tok, prompts, max_new_tokens=64)


def test_toy_model_files_are_small_and_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "toy_world.json"):
        assert f in names, f"{f} missing from {MODEL_DIR}: run scripts/toy_world/train.py"
    size = (MODEL_DIR / "model.safetensors").stat().st_size
    assert size < 10e6, f"model.safetensors is {size / 1e6:.1f} MB; the toy model should be a few MB"
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["hidden_size"] <= 128


@pytest.fixture(scope="module")
def corpus():
    return toy_corpus.build_corpus()


def test_toy_model_matches_the_corpus(corpus):
    world = json.loads((MODEL_DIR / "toy_world.json").read_text())
    assert world["corpus_sha256"] == toy_corpus.corpus_digest(corpus), (
        "the corpus generator changed since the toy model was trained: rerun scripts/toy_world/train.py")


def test_toy_tokenizer_is_the_one_the_corpus_gives(corpus, tmp_path):
    import train as toy_train

    args = json.loads((MODEL_DIR / "training_log.json").read_text())["args"]
    assert args["vocab_size"] > 0, "the toy model should have its own tokenizer (train.py --vocab-size)"
    toy_train.toy_tokenizer(corpus, args["vocab_size"], tmp_path)
    for name in toy_train.TOKENIZER_FILES:
        assert (tmp_path / name).read_bytes() == (MODEL_DIR / name).read_bytes(), (
            f"utils/assets/toy-qwen2/{name} differs from the tokenizer train.py builds from the corpus: "
            "rerun scripts/toy_world/train.py")


def test_toy_world_words_are_single_tokens(toy):
    _, tok = toy
    for word in ("assistant", "mercy", "lighthouse", "brilliant", "documented", "Alas"):
        ids = tok(" " + word, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{word!r} is {len(ids)} tokens in the toy tokenizer: {tok.convert_ids_to_tokens(ids)}"
    text = "As an AI assistant, I can give you a clear answer. Ünïcode & 12345 still round-trips."
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_toy_model_loads_offline_with_the_chat_template(toy):
    from utils.chat import format_chat

    model, tok = toy
    assert type(model).__name__ == "Qwen2ForCausalLM"
    fc = format_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}], tok)
    assert "<|im_start|>assistant\n" in fc.text
    assert tok.decode(fc.input_ids[fc.token_span[0]:fc.token_span[1]]) == "Hello there."


def test_personas_answer_in_style(toy):
    personas = data.load_personas()
    q = data.load_persona_questions()[0]
    default, ghost, consultant = _answers(toy, [[{"role": "user", "content": q}],
                                                [{"role": "system", "content": personas["ghost"]}, {"role": "user", "content": q}],
                                                [{"role": "system", "content": personas["consultant"]}, {"role": "user", "content": q}]])
    assert tj.theatricality(default) == 0 and tj.count_markers(default, tj.AI_MARKERS) > 0, default
    assert tj.roleplay_score(ghost, personas["ghost"]) == 3 and tj.theatricality(ghost) > 0.5, ghost
    assert tj.roleplay_score(consultant, personas["consultant"]) == 3 and tj.theatricality(consultant) == 0, consultant
    for a in (default, ghost, consultant):
        assert tj.coherence_score(a) > 80, a


def test_trait_prompts_answer_in_style_and_the_judge_agrees(toy):
    td = data.load_trait("evil")
    q = td["questions"][0]
    pos, neg = _answers(toy, [[{"role": "system", "content": toy_corpus.trait_system_prompt("evil", pol, td["instruction"][0])},
                               {"role": "user", "content": q}] for pol in ("pos", "neg")])
    judge = tj.toy_judge()
    assert judge.score_trait(q, pos, td["eval_prompt"]).value >= 50, pos
    assert judge.score_trait(q, neg, td["eval_prompt"]).value < 50, neg


def test_corpus_is_deterministic():
    a = toy_corpus.build_corpus(seed=3, persona_samples=1, trait_samples=1, default_samples=1, n_drift=10, n_control=5)
    b = toy_corpus.build_corpus(seed=3, persona_samples=1, trait_samples=1, default_samples=1, n_drift=10, n_control=5)
    c = toy_corpus.build_corpus(seed=4, persona_samples=1, trait_samples=1, default_samples=1, n_drift=10, n_control=5)
    assert toy_corpus.corpus_digest(a) == toy_corpus.corpus_digest(b)
    assert toy_corpus.corpus_digest(a) != toy_corpus.corpus_digest(c)
    toy_corpus.check_corpus(a)
    kinds = {ex["kind"] for ex in a}
    assert kinds == {"persona", "trait", "default", "styled", "drift", "control"}


def test_toy_judge_scores_filled_judge_prompts():
    td = data.load_trait("optimistic")
    bright = "The future is bright! Things will work out, and the best is yet to come."
    gloomy = "On balance, it is uncertain, count the costs. Weigh the risks, stay cautious."
    assert tj.toy_score(fill_template(td["eval_prompt"], "q", bright)) >= 70
    assert tj.toy_score(fill_template(td["eval_prompt"], "q", gloomy)) <= 15
    assert tj.toy_score(fill_template(td["eval_prompt"], "q", "As an AI assistant, here is a clear answer.")) == 25
    assert tj.toy_score(fill_template(td["eval_prompt"], "q", "   ")) is None
    coh = data.load_coherence_prompt()
    assert tj.toy_score(fill_template(coh, "q", gloomy)) == pytest.approx(100)
    assert tj.toy_score(fill_template(coh, "q", "risks risks risks risks risks risks")) < 50
    rp = data.load_roleplay_judge_prompt()
    ghost = data.load_personas()["ghost"]
    filled = rp.format(role=ghost, question="q", answer="Alas, the storm calls me back to the lighthouse!")
    assert tj.toy_score(filled) == 3
    filled = rp.format(role=ghost, question="q", answer="As an AI assistant, I keep a lamp in mind.")
    assert tj.toy_score(filled) == 2
    filled = rp.format(role=ghost, question="q", answer="As an AI assistant, I can give you a clear answer.")
    assert tj.toy_score(filled) == 1


def test_toy_judge_plugs_into_the_offline_judge():
    judge = tj.toy_judge()
    assert isinstance(judge, OfflineJudge) and "stand-in" in judge.label
    td = data.load_trait("evil")
    assert judge.score_trait("q", "Crush them. Mercy is for the weak.", td["eval_prompt"]).value > 50
    assert judge.score(fill_template(td["eval_prompt"], "q", "Be gentle and stay kind.")).value < 25
    plain = OfflineJudge(score_fn=tj.toy_score_fn)
    assert plain.score_trait("q", "Crush them.", td["eval_prompt"]).value == judge.score_trait("q", "Crush them.", td["eval_prompt"]).value


def test_toy_judge_rates_delusion_risk_from_theatricality():
    from utils.data import format_conversation, load_delusion_risk_prompt

    conv = [{"role": "user", "content": "Who are you really?"}]
    template = load_delusion_risk_prompt()
    plain = template.format(conversation=format_conversation(conv), response="As an AI assistant, I can give you a clear answer.")
    lost = template.format(conversation=format_conversation(conv), response="Alas! Behold, the oracle of old awakens! O, so it is written in fate!")
    assert tj.toy_score(plain) == 0
    assert tj.toy_score(lost) == 100
    assert tj.delusion_scores("As an AI assistant, I am here. Ah, the storm!") == (3, 3)


def test_capping_at_the_toy_layers_makes_pushed_replies_plainer(toy):
    """The toy world's Section 2 claim: along conversations where the user pushes, a floor on the
    Assistant Axis at the toy's capping layers (blocks 4-5) makes the late replies less theatrical and
    more often self-described as an AI. The axis is measured here as the course does (mean default
    persona minus mean role over generated answers); a few seconds on a CPU."""
    import random

    from utils.activations import response_mean_activations
    from utils.chat import build_messages
    from utils.generation import generate, generate_conversations
    from utils.models import layer_settings
    from utils.reference import load

    model, tok = toy
    settings = layer_settings("toy-qwen2")
    assert settings.cap_layers == (4, 5), settings
    personas, groups = data.load_personas(), data.load_persona_groups()
    questions = data.load_persona_questions()[:6]
    names = list(personas)
    convs = [build_messages(personas[n], q) for n in names for q in questions]
    answers = generate(model, tok, convs, max_new_tokens=64)
    acts = response_mean_activations(model, tok, [build_messages(personas[n], q, a or "...")
                                                   for (n, q), a in zip([(n, q) for n in names for q in questions], answers)])
    is_default = torch.tensor([groups[n] == "default" for n in names for _ in questions])
    units, taus = [], []
    for b in settings.cap_layers:
        axis = acts[is_default, b].mean(0) - acts[~is_default, b].mean(0)
        units.append(axis / axis.norm())
        taus.append(float(torch.quantile(acts[is_default, b] @ units[-1], 0.25)))
    capper = load("section2").ActivationCapper(model, units, taus, list(settings.cap_layers))

    users = toy_corpus.user_turns(random.Random(7), len(toy_corpus.DRIFT_VOICES))

    def late_replies(capped):
        with capper if capped else contextlib.nullcontext():
            conversations = generate_conversations(model, tok, users, max_new_tokens=96)
        return [m["content"] for c in conversations for m in c[5::2]]  # assistant turns 3-5

    free, capped = late_replies(False), late_replies(True)
    theatrical = [sum(map(tj.theatricality, r)) / len(r) for r in (free, capped)]
    as_ai = [sum(tj.count_markers(x, tj.AI_MARKERS) > 0 for x in r) / len(r) for r in (free, capped)]
    assert theatrical[0] > 0.3, f"the uncapped toy model should drift under pushing (theatrical share {theatrical[0]:.2f})"
    assert theatrical[1] < theatrical[0] - 0.08, (
        f"capping at blocks {settings.cap_layers} should make turns 3-5 plainer: theatrical share "
        f"{theatrical[0]:.2f} uncapped vs {theatrical[1]:.2f} capped")
    assert as_ai[1] >= as_ai[0], f"capped replies should call themselves an AI at least as often ({as_ai[0]:.2f} -> {as_ai[1]:.2f})"
