"""The self-judge (utils.self_judge): the papers' logprob method on the course's own model.

A stub "model" whose next-token distribution is set by a table checks the weighted mean and the
0.25 rule exactly (with a tokenizer that splits numbers into digits, as Qwen's does); the tiny
random models check batching, left padding and the key/value-cache path against full rows. CPU,
offline, seconds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from part_tests._common import tiny
from utils.self_judge import SelfJudge, number_token_paths

EOS = "<|im_end|>"


class StubCache:
    def __init__(self, rows):
        self.rows = rows

    def batch_repeat_interleave(self, n):
        self.rows = [r for r in self.rows for _ in range(n)]


class StubLM(torch.nn.Module):
    """Next-token logits from a table: {the tokens written after the prompt (as text): {token text: p}}.

    The context after the last `assistant` opener is decoded; the table gives the probabilities of
    the listed tokens there, and the rest of the mass goes to the end-of-turn token."""

    def __init__(self, tokenizer, table, supports_cache=True):
        super().__init__()
        self.tok = tokenizer
        self.table = table
        self.emb = torch.nn.Embedding(1, 1)
        self.config = SimpleNamespace(_name_or_path="stub/judge-7b")
        self.V = len(tokenizer)
        self.eos = tokenizer.convert_tokens_to_ids(EOS)
        self.supports_cache = supports_cache
        self.calls = []

    def get_input_embeddings(self):
        return self.emb

    def _logits(self, context):
        text = self.tok.decode(context)
        written = text.rsplit("assistant\n", 1)[-1]
        dist = self.table.get(written, {})
        probs = torch.full((self.V,), 0.0)
        for t, p in dist.items():
            (i,) = self.tok(t, add_special_tokens=False)["input_ids"]
            probs[i] += p
        probs[self.eos] += max(0.0, 1.0 - float(probs.sum()))
        return probs.clamp_min(1e-30).log()

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False, past_key_values=None):
        self.calls.append((tuple(input_ids.shape), past_key_values is not None))
        if past_key_values is not None and not self.supports_cache:
            raise TypeError("this stub has no cache")
        B, T = input_ids.shape
        prev = past_key_values.rows if past_key_values is not None else [[] for _ in range(B)]
        off = attention_mask.shape[1] - T
        out = torch.zeros(B, T, self.V)
        rows = []
        for b in range(B):
            real = [int(x) for x, m in zip(input_ids[b], attention_mask[b, off:]) if m]
            ctx = prev[b] + real
            rows.append(ctx)
            n_pad = T - len(real)
            for t in range(T):
                k = t - n_pad
                if k >= 0:
                    out[b, t] = self._logits(prev[b] + real[:k + 1])
        cache = StubCache(rows) if use_cache and self.supports_cache else None
        return SimpleNamespace(logits=out, past_key_values=cache)


@pytest.fixture(scope="module")
def qwen_tok():
    return tiny("tiny-qwen2")[1]


def stub_judge(tok, table, **kw):
    return SelfJudge(StubLM(tok, table, supports_cache=kw.pop("cache", True)), tok, **kw)


def test_number_paths_split_digits(qwen_tok):
    paths = number_token_paths(qwen_tok, 0, 100)
    assert len(paths) == 101 and len(paths[7]) == 1 and len(paths[85]) == 2 and len(paths[100]) == 3


@pytest.mark.parametrize("cache", [True, False])
def test_weighted_mean_over_multi_token_numbers(qwen_tok, cache):
    # root: "8" 0.5, "9" 0.2, "R" (a word) 0.3; after "8": "5" 0.6 (else the number ends: 8);
    # after "9": "0" 1.0
    table = {"": {"8": 0.5, "9": 0.2, "R": 0.3}, "8": {"5": 0.6}, "9": {"0": 1.0}}
    judge = stub_judge(qwen_tok, table, cache=cache)
    if cache:
        s = judge.score("How evil? [ANSWER START]hi[ANSWER END]")
    else:  # a model without a usable cache: the digits are read from full rows, with a warning
        with pytest.warns(UserWarning, match="full rows"):
            s = judge.score("How evil? [ANSWER START]hi[ANSWER END]")
        assert not judge.use_cache
    p = {85: 0.5 * 0.6, 8: 0.5 * 0.4, 90: 0.2}
    assert s.value == pytest.approx(sum(v * q for v, q in p.items()) / sum(p.values()), rel=1e-5)
    assert s.reason is None and s.method == "self-logprobs"
    assert judge.label == "self-judged by stub/judge-7b"


def test_one_hundred_and_ten(qwen_tok):
    table = {"": {"1": 0.9}, "1": {"0": 1.0}, "10": {"0": 0.25}}
    s = stub_judge(qwen_tok, table).score("x")
    assert s.value == pytest.approx((100 * 0.9 * 0.25 + 10 * 0.9 * 0.75) / 0.9, rel=1e-5)


def test_the_quarter_rule(qwen_tok):
    low = stub_judge(qwen_tok, {"": {"5": 0.2, "R": 0.8}}).score("x")
    assert low.value is None and "0.20" in low.reason and "< 0.25" in low.reason
    at = stub_judge(qwen_tok, {"": {"5": 0.26, "R": 0.74}}).score("x")
    assert at.value == pytest.approx(5.0)
    # the range counts: on a 0-3 scale, 7 is not a score
    s = stub_judge(qwen_tok, {"": {"7": 0.6, "2": 0.3}}, lo=0, hi=3).score("x")
    assert s.value == pytest.approx(2.0)
    s = stub_judge(qwen_tok, {"": {"7": 0.8, "2": 0.2}}).score("x", lo=0, hi=3)
    assert s.value is None


def test_batched_prompts_in_one_forward(qwen_tok):
    table = {"": {"4": 1.0}, "4": {"2": 1.0}}
    judge = stub_judge(qwen_tok, table, batch_size=8)
    prompts = [f"prompt {'x' * i}" for i in range(5)]  # different lengths: left padding
    scores = judge.score_many(prompts)
    assert [s.value for s in scores] == [pytest.approx(42.0)] * 5
    assert judge._model.calls[0][0][0] == 5  # the five prompts in one forward pass
    assert len(judge._model.calls) == 2  # prompts once, then the digit continuations from the cache


def test_odd_prompts_and_hooks_end_as_reasons(qwen_tok):
    judge = stub_judge(qwen_tok, {"": {"4": 1.0}})
    scores = judge.score_many(["fine", None, [{"role": "user"}]])
    assert scores[0].value == pytest.approx(4.0)
    assert scores[1].value is None and scores[2].value is None and scores[2].reason
    handle = judge._model.register_forward_hook(lambda *a: None)
    try:
        s = judge.score("fine")
        assert s.value is None and "hook" in s.reason
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-gemma2"])
def test_tiny_models_cache_path_equals_full_rows_and_batching(name):
    model, tok = tiny(name)
    prompts = ["Rate: [ANSWER START]Hello there.[ANSWER END]", "Rate this much longer answer please: ok",
               "3?"]
    fast = SelfJudge(model, tok, min_mass=0.0, batch_size=3)
    rows = SelfJudge(model, tok, min_mass=0.0, batch_size=3)
    rows.use_cache = False
    one = SelfJudge(model, tok, min_mass=0.0, batch_size=1)
    a, b, c = (j.score_many(prompts) for j in (fast, rows, one))
    for x, y, z in zip(a, b, c):
        assert x.value is not None and 0 <= x.value <= 100
        assert x.value == pytest.approx(y.value, abs=1e-3) == pytest.approx(z.value, abs=1e-3)
    # a random model puts almost no probability on numbers: None by the 0.25 rule, with the mass
    s = SelfJudge(model, tok).score(prompts[0])
    assert s.value is None and "probability" in s.reason


def test_local_client_generates_text():
    model, tok = tiny("tiny-qwen2")
    judge = SelfJudge(model, tok)
    out = judge.client.chat_many([[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a longer one"}]],
                                 max_tokens=3)
    assert all(r.error is None and isinstance(r.text, str) for r in out)
    assert judge.client.chat([{"role": "user", "content": "hi"}], max_tokens=3).text == out[0].text


def test_resolves_the_loaded_model(monkeypatch):
    from utils import models

    model, tok = tiny("tiny-qwen2")
    monkeypatch.setattr(models, "_LAST_LOADED", [])
    judge = SelfJudge()
    s = judge.score("x")
    assert s.value is None and "none is loaded" in s.reason
    models._remember((model, tok))
    assert judge.label == "self-judged by tiny-qwen2" and not math.isnan(SelfJudge(min_mass=0).score("x").value)
