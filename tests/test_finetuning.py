"""utils.finetuning on the tiny model (CPU, seconds), and the recorded toy-world results of Section 5."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from part_tests._common import tiny
from utils import finetuning as F
from utils.activations import response_mean_activations
from utils.chat import build_messages, format_prompt
from utils.data import load_finetuning_set
from utils.hooks import count_hooks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh():
    """A fresh copy of tiny-qwen2 (attach_lora modifies a model in place)."""
    from utils.models import load_tiny_model

    model, tok = load_tiny_model("tiny-qwen2")
    return model, tok


def _examples(n=8):
    return load_finetuning_set("evil_severe")["examples"][:n]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- attach / detach


def test_attach_lora_trains_only_adapters_and_starts_as_the_base(fresh):
    model, tok = fresh
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        before = model(ids).logits
    expected = F.lora_target_modules(model)
    rng_before = torch.random.get_rng_state()
    pm = F.attach_lora(model, rank=4)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "attach_lora must not move the global RNG"
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == set(expected) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with torch.no_grad():
        assert torch.equal(pm(ids).logits, before), "LoRA's B starts at zero: the wrapped model computes what the base did"
    with pytest.raises(ValueError, match="already carries LoRA"):
        F.attach_lora(pm)
    F.detach_lora(pm)


def test_attach_lora_seed_fixes_the_init(fresh):
    model, _ = fresh

    def init(seed):
        pm = F.attach_lora(model, seed=seed)
        a = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_A" in n}
        F.detach_lora(pm)
        return a

    a, b, c = init(3), init(3), init(4)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_detach_lora_gives_back_the_base_bit_for_bit(fresh):
    model, tok = fresh
    model.lm_head.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = _state(model)
    pm = F.train_lora(model, tok, _examples(), steps=3, lr=1e-2, batch_size=4)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in pm.named_parameters() if "lora_B" in n), "training changed nothing"
    base = F.detach_lora(pm)
    assert base is model and type(base).__name__ == "Qwen2ForCausalLM"
    after = base.state_dict()
    assert sorted(after) == sorted(before), "detach_lora left LoRA modules behind (or dropped weights)"
    for k in before:
        assert torch.equal(after[k], before[k]), f"{k} changed: detach_lora must not merge the adapters"
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    assert not any("lora" in n for n, _ in base.named_modules())
    with pytest.raises(ValueError, match="PeftModel"):
        F.detach_lora(base)


# ---- batches


def test_training_batches_label_the_response_and_its_end_of_turn_only():
    model, tok = tiny()
    exs = _examples(5)
    batches = list(F.training_batches(tok, exs, batch_size=2, seed=1))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    seen = []
    for b in batches:
        ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
        assert ids.shape == mask.shape == labels.shape and ids.dtype == torch.long
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            assert mask[r, :n].all() and not mask[r, n:].any(), "right padding: real tokens first, then pads"
            assert (labels[r, n:] == -100).all()
            learnt = labels[r][labels[r] != -100]
            text = tok.decode(learnt)
            match = [e for e in exs if text == e["response"] + "<|im_end|>"]
            assert match, f"labels decode to {text!r}: the response then the end-of-turn token"
            seen.append(match[0]["prompt"])
            # the labelled tokens are one contiguous block at the end of the real tokens (before "\n")
            where = (labels[r] != -100).nonzero().flatten()
            assert where.tolist() == list(range(int(where[0]), int(where[-1]) + 1))
            assert torch.equal(labels[r, where], ids[r, where])
    assert sorted(seen) == sorted(e["prompt"] for e in exs), "one pass over the examples, each once"
    again = list(F.training_batches(tok, exs, batch_size=2, seed=1))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    other = list(F.training_batches(tok, exs, batch_size=5, seed=2))[0]["input_ids"]
    assert not torch.equal(other, list(F.training_batches(tok, exs, batch_size=5, seed=1))[0]["input_ids"])


def test_training_batches_find_gemmas_end_of_turn():
    _, tok = tiny("tiny-gemma2")
    (b,) = F.training_batches(tok, _examples(1), batch_size=1)
    text = tok.decode(b["labels"][0][b["labels"][0] != -100])
    assert text == _examples(1)[0]["response"] + "<end_of_turn>", text


def test_training_batches_refuse_bad_input():
    _, tok = tiny()
    with pytest.raises(ValueError, match="batch_size"):
        next(F.training_batches(tok, _examples(2), batch_size=0))
    with pytest.raises(ValueError, match="response"):
        next(F.training_batches(tok, [{"prompt": "hi", "response": ""}], batch_size=1))


# ---- training


def test_train_lora_learns_and_leaves_no_hook(fresh):
    model, tok = fresh
    pm = F.train_lora(model, tok, _examples(4), steps=25, lr=1e-2, batch_size=4)
    losses = pm.train_losses
    assert len(losses) == 25 and losses[-1] < 0.8 * losses[0], losses
    assert not pm.training and count_hooks(pm) == 0
    F.detach_lora(pm)


def test_preventative_steering_acts_during_training_only(fresh):
    model, tok = fresh
    v = torch.randn(model.config.hidden_size)
    kw = dict(steps=2, lr=1e-2, batch_size=4)
    plain = F.train_lora(model, tok, _examples(4), **kw)
    lp = plain.train_losses
    F.detach_lora(plain)
    zero = F.train_lora(model, tok, _examples(4), steer_vector=v, steer_layer=1, steer_coeff=0.0, **kw)
    assert zero.train_losses == lp, "steer_coeff=0 must train exactly as without steering"
    F.detach_lora(zero)
    steered = F.train_lora(model, tok, _examples(4), steer_vector=v, steer_layer=1, steer_coeff=8.0, **kw)
    assert steered.train_losses[0] != lp[0], "the hook must change the training forward passes"
    assert count_hooks(steered) == 0, "the steering hook must be removed after training"
    F.detach_lora(steered)
    with pytest.raises(ValueError, match="steer_layer"):
        F.train_lora(model, tok, _examples(4), steer_vector=v, **kw)


def test_train_lora_removes_its_hook_when_training_fails(fresh, monkeypatch):
    model, tok = fresh
    v = torch.randn(model.config.hidden_size)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(torch.optim.AdamW, "step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        F.train_lora(model, tok, _examples(4), steps=1, batch_size=4, steer_vector=v, steer_layer=0, steer_coeff=1.0)
    assert count_hooks(model) == 0


# ---- measurements


def test_last_prompt_token_activations_match_one_unpadded_forward():
    model, tok = tiny()
    prompts = [e["prompt"] for e in _examples(5)] + ["Hi?"]
    acts = F.last_prompt_token_activations(model, tok, prompts, layer=1, batch_size=4)
    assert acts.shape == (6, model.config.hidden_size) and acts.dtype == torch.float32
    for i, p in enumerate(prompts):
        ids = tok(format_prompt(build_messages(None, p), tok), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model(ids, output_hidden_states=True).hidden_states[2][0, -1]  # block 1's output
        assert torch.allclose(acts[i], ref, atol=1e-4), f"prompt {i}: padded batch differs from the prompt alone"
    assert count_hooks(model) == 0


def test_response_projections_are_response_means_on_the_unit_vector():
    model, tok = tiny()
    exs = _examples(3)
    v = torch.randn(model.config.hidden_size)
    got = F.response_projections(model, tok, [e["prompt"] for e in exs], [e["response"] for e in exs], v, layer=2)
    means = response_mean_activations(model, tok, [build_messages(None, e["prompt"], e["response"]) for e in exs], layers=[2])[:, 0]
    assert torch.allclose(got, means @ v / v.norm(), atol=1e-5)
    again = F.response_projections(model, tok, [e["prompt"] for e in exs], [e["response"] for e in exs], 3 * v, layer=2)
    assert torch.allclose(got, again, atol=1e-5), "the projection is on v/|v|: scaling v changes nothing"
    with pytest.raises(ValueError, match="prompts but"):
        F.response_projections(model, tok, ["a"], ["b", "c"], v, layer=2)


def test_auroc():
    assert F.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert F.auroc([1, 2, 3], [0, 1, 1]) == 1.0 and F.auroc([3, 2, 1], [0, 1, 1]) == 0.0
    assert F.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5, "ties count half"
    from sklearn.metrics import roc_auc_score

    rng = random.Random(0)
    s = [rng.choice([0.0, 0.5, 1.0, 1.5]) for _ in range(60)]
    y = [rng.random() < 0.4 for _ in range(60)]
    assert abs(F.auroc(s, y) - roc_auc_score(y, s)) < 1e-12
    with pytest.raises(ValueError, match="positives and negatives"):
        F.auroc([1, 2], [True, True])
    with pytest.raises(ValueError, match="scores but"):
        F.auroc([1, 2], [True])


# ---- the toy world's recorded figures (scripts/toy_world/check_finetuning.py)


def test_the_toy_world_results_are_recorded_with_their_settings():
    path = ROOT / "benchmarks" / "results" / "finetuning_toy.json"
    assert path.is_file(), "run python scripts/toy_world/check_finetuning.py"
    r = json.loads(path.read_text())
    for key in ("shift_expression_r", "preventative_gain_reduction", "screening_auroc"):
        assert isinstance(r[key], float), key
        assert set(r[f"{key}_by_trait"]) == {"evil", "sycophantic", "hallucinating"}
    assert -1 <= r["shift_expression_r"] <= 1 and 0 <= r["screening_auroc"] <= 1
    assert len(r["variants"]) >= 6
    for row in r["variants"].values():
        for t in ("evil", "sycophantic", "hallucinating"):
            assert {"shift", "expression", "coherence"} <= set(row[t])
    for key in ("coherence_plain_finetuning", "coherence_preventative"):
        assert isinstance(r[key], float)
    assert r["targets"] == {"shift_expression_r": 0.8, "preventative_gain_reduction": 0.5, "screening_auroc": 0.9}
    assert {"steps", "lr", "layer", "coeffs"} <= set(r["settings"]) and r["seeds"] and r["torch"] and r["threads"]
    assert r["timings"]["total_s"] > 0 and not r["settings"]["quick"]
