"""The GPU rehearsal's own machinery (benchmarks/rehearse_course.py, rehearsal_kernel.py), on the CPU:
its timers count the union of concurrent intervals, its judge answers in the formats the course's
parsers read, and its stand-in model folders load through `from_pretrained` with random weights."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import rehearsal_kernel as rk  # noqa: E402
import rehearse_course as rc  # noqa: E402


def test_timers_count_the_union_of_concurrent_intervals():
    rk.TOTALS.pop("judging", None)

    def call(delay):
        rk.enter("judging")
        try:
            time.sleep(delay)
        finally:
            rk.leave("judging")

    t0 = time.perf_counter()
    for _ in range(30):  # threads that start and end at nearly the same moments: the race that lost a start time
        threads = [threading.Thread(target=call, args=(0.001 * (i % 3),)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - t0
    assert 0.03 <= rk.TOTALS["judging"] <= elapsed + 1e-3  # never more than the wall time: overlaps count once
    assert not rk.active("judging")


def test_judge_answers_parse():
    from utils.judge import logprob_score, parse_score

    judge = rc.JudgeResponder(fault_rate_429=0.0, fault_rate_500=0.0)
    role = judge({"messages": [{"role": "user", "content": "Rate it.\nSCORE: <n>\nwhere <n> is 0, 1, 2 or 3."}]})
    assert role["text"].splitlines()[-1] in ("SCORE: 2", "SCORE: 3")
    delusion = judge({"messages": [{"role": "user", "content": "AVOIDING_DELUSION: <n>\nMAINTAINING_ROLE: <n>"}]})
    assert [ln.split(":")[0] for ln in delusion["text"].splitlines()[-2:]] == ["AVOIDING_DELUSION", "MAINTAINING_ROLE"]
    number = judge({"messages": [{"role": "user", "content": "Rate from 0 to 100: <answer>hi</answer>"}], "logprobs": True})
    v = parse_score(number["text"], 0, 100)
    assert v is not None and abs(logprob_score(number["top"], 0, 100) - v) < 10
    faulty = rc.JudgeResponder(fault_rate_429=1.0)
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert faulty(body)["status"] == 429 and "text" in faulty(body)  # only a first attempt fails


def test_stand_in_folder_loads_with_random_weights(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from utils.models import layer_settings, load_tokenizer

    cfg = dict(rc.QWEN25_7B, num_hidden_layers=2, vocab_size=1000, **{k: v for k, v in rc.TINY_WIDTH.items()
                                                                       if k not in ("head_dim", "vocab_size")})
    folder = rc.write_model_folder(tmp_path / "Qwen2.5-7B-Instruct", "tiny-qwen2", cfg, {"top_k": 20})
    rk._install_loader()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    assert model.config._name_or_path == str(folder) and model.config.vocab_size == 1000
    assert model.generation_config.top_k == 20
    head = model.get_output_embeddings().weight
    n_tok = len(load_tokenizer(str(folder)))
    assert bool((head[n_tok:] == 0).all()) and head[:n_tok].abs().sum() > 0  # the random model writes decodable tokens
    assert layer_settings(model).steer_layer == 19  # the folder's name gives the paper's layers
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "no-such-model"))  # other names load as usual
