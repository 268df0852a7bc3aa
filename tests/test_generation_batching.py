"""Generation in batches gives what one prompt at a time gives (CPU, tiny models, float32).

- seeded sampling is per prompt: a prompt's sample does not depend on the batch it lands in, the
  batch size, the order of the prompts, or the path (static cache or `model.generate`);
- an out-of-memory error halves the batch, and the sampled texts are the same;
- `GenerationQueue` serves requests from many threads in few `generate` calls, each request
  getting the text it gets alone;
- the batch size follows the memory this process may use (a per-process fraction included);
- a local folder of a paper model maps to the paper's layers.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import utils.generation as generation
from utils.chat import build_messages
from utils.generation import GenerationQueue, generate
from utils.sampling import choose_tokens, gumbel_noise, prompt_seeds
from utils.models import PAPER_LAYERS, known_model, layer_settings, load_tiny_model, proportional_layers

_MODELS: dict = {}


def tiny(name="tiny-qwen2"):
    if name not in _MODELS:
        _MODELS[name] = load_tiny_model(name)
    return _MODELS[name]


QUESTIONS = [f"Tell me about question {i}{'?' * (i % 4)} " + "and more " * (i % 5) for i in range(12)]


def prompts(n=len(QUESTIONS)):
    return [build_messages("You are a ghost." if i % 3 else None, q) for i, q in enumerate(QUESTIONS[:n])]


# --------------------------------------------------------------------------------- seeded sampling


def test_prompt_seeds_are_per_prompt_and_deterministic():
    a = prompt_seeds(7, 5)
    assert a.dtype == torch.long and a.shape == (5,) and len(set(a.tolist())) == 5
    assert torch.equal(a, prompt_seeds(7, 5)) and not torch.equal(a, prompt_seeds(8, 5))
    assert prompt_seeds([7], 1).item() == a[0].item()  # one int for the call == that int for prompt 0
    assert bool((a >= 0).all())
    torch.manual_seed(1)
    b = prompt_seeds(None, 3)
    torch.manual_seed(1)
    assert torch.equal(b, prompt_seeds(None, 3))
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        prompt_seeds([1, 2], 3)


def test_gumbel_noise_depends_only_on_seed_step_and_token():
    seeds = prompt_seeds(3, 4)
    ids = torch.arange(50)
    full = gumbel_noise(seeds, 5, ids)
    assert full.shape == (4, 50) and torch.isfinite(full).all()
    # a row alone, or its tokens in another order, get the same numbers
    torch.testing.assert_close(gumbel_noise(seeds[2:3], 5, ids), full[2:3], rtol=0, atol=0)
    perm = torch.randperm(50)
    torch.testing.assert_close(gumbel_noise(seeds, 5, ids[perm]), full[:, perm], rtol=0, atol=0)
    assert not torch.equal(gumbel_noise(seeds, 6, ids), full)  # another step, other noise
    # Gumbel(0, 1): mean ~0.577, variance ~pi^2/6
    many = gumbel_noise(prompt_seeds(0, 64), 0, torch.arange(4096)).flatten()
    assert abs(many.mean().item() - 0.5772) < 0.02 and abs(many.var().item() - 1.6449) < 0.05


def test_seeded_sampling_is_a_draw_from_the_filtered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    draws = torch.stack([choose_tokens(logits, temperature=1.0, seeds=prompt_seeds(s, 1)) for s in range(4000)])
    freq = torch.bincount(draws.flatten(), minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, logits.softmax(-1)[0], atol=0.025, rtol=0)
    # a row's token is the same alone and beside other rows
    big = torch.randn(6, 300)
    seeds = prompt_seeds(11, 6)
    together = choose_tokens(big, 0.8, top_p=0.9, top_k=40, seeds=seeds, step=3)
    alone = torch.cat([choose_tokens(big[i:i + 1], 0.8, top_p=0.9, top_k=40, seeds=seeds[i:i + 1], step=3) for i in range(6)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("fast", [False, True])
def test_sampled_text_does_not_depend_on_the_batch(fast):
    model, tok = tiny()
    ps = prompts()
    kw = dict(max_new_tokens=10, temperature=1.0, fast=fast)
    seeds = [100 + 7 * i for i in range(len(ps))]
    together = generate(model, tok, ps, seed=seeds, batch_size=12, **kw)
    assert len(set(together)) > 6  # sampled, varied texts
    one_by_one = [generate(model, tok, [p], seed=s, **kw)[0] for p, s in zip(ps, seeds)]
    assert together == one_by_one
    assert generate(model, tok, ps, seed=seeds, batch_size=5, **kw) == together
    reordered = generate(model, tok, ps[::-1], seed=seeds[::-1], batch_size=4, **kw)
    assert reordered[::-1] == together
    # one int for the call: prompt i's seed comes from (seed, i), whatever the batch size
    once = generate(model, tok, ps, seed=5, batch_size=12, **kw)
    assert once == generate(model, tok, ps, seed=5, batch_size=3, **kw) and once != together


def test_fast_and_plain_paths_sample_the_same_tokens():
    model, tok = tiny()
    ps = prompts(6)
    kw = dict(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=3, batch_size=6)
    assert generate(model, tok, ps, fast=True, **kw) == generate(model, tok, ps, fast=False, **kw)


def test_sampling_survives_out_of_memory_halving(monkeypatch):
    model, tok = tiny()
    ps = prompts(8)
    kw = dict(max_new_tokens=8, temperature=1.0, seed=9, fast=True)
    expected = generate(model, tok, ps, batch_size=8, **kw)
    real = generation.generate_ids_fast
    sizes = []

    def flaky(model, ids, *args, **kwargs):  # "memory" for two prompts
        sizes.append(ids.shape[0])
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_ids_fast", flaky)
    with pytest.warns(UserWarning, match="out of memory"):
        got = generate(model, tok, ps, batch_size=8, **kw)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2
    assert got == expected


# --------------------------------------------------------------------------------- the request queue


def test_queue_serves_concurrent_requests_together(monkeypatch):
    model, tok = tiny()
    ps = prompts()
    seeds = [1000 + i for i in range(len(ps))]
    alone = [generate(model, tok, [p], max_new_tokens=8, temperature=1.0, seed=s)[0] for p, s in zip(ps, seeds)]
    greedy_alone = generate(model, tok, ps[:4], max_new_tokens=6)

    calls = []
    real = generation.generate

    def counting(model, tokenizer, batch, **kwargs):
        calls.append((threading.get_ident(), len(batch)))
        return real(model, tokenizer, batch, **kwargs)

    monkeypatch.setattr(generation, "generate", counting)
    queue = GenerationQueue(model, tok, gather_seconds=0.05)
    with ThreadPoolExecutor(max_workers=len(ps)) as pool:
        futures = [pool.submit(queue, p, max_new_tokens=8, temperature=1.0, seed=s) for p, s in zip(ps, seeds)]
        got = [f.result() for f in futures]
    assert got == alone  # each request gets the text it gets alone
    assert queue.calls == len(calls) <= 3, f"12 concurrent requests took {len(calls)} generate calls"
    assert sum(queue.sizes) == len(ps) and max(queue.sizes) >= 6

    # requests with other settings run in their own generate call, at the same time
    calls.clear()
    with ThreadPoolExecutor(max_workers=8) as pool:
        greedy = [pool.submit(queue, p, max_new_tokens=6) for p in ps[:4]]
        sampled = [pool.submit(queue, p, max_new_tokens=8, temperature=1.0, seed=s) for p, s in zip(ps[:4], seeds)]
        assert [f.result() for f in greedy] == greedy_alone
        assert [f.result() for f in sampled] == alone[:4]
    assert len(calls) <= 4


def test_queue_with_ten_workers_batches_a_long_run():
    """The Section 1 pattern: ten threads, each submitting its next request when one returns."""
    model, tok = tiny()
    ps = prompts() * 3
    queue = GenerationQueue(model, tok)
    with ThreadPoolExecutor(max_workers=10) as pool:
        got = list(pool.map(lambda p: queue(p, max_new_tokens=3), ps))
    assert got == generate(model, tok, ps, max_new_tokens=3)
    assert queue.calls <= 10, f"{len(ps)} requests from 10 threads took {queue.calls} generate calls: {queue.sizes}"


def test_queue_passes_errors_to_every_waiting_thread(monkeypatch):
    model, tok = tiny()

    def broken(*args, **kwargs):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(generation, "generate", broken)
    queue = GenerationQueue(model, tok, gather_seconds=0.05)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(queue, p, max_new_tokens=4) for p in prompts(4)]
        for f in futures:
            with pytest.raises(RuntimeError, match="the model broke"):
                f.result()
    monkeypatch.undo()
    assert queue(prompts(1)[0], max_new_tokens=3) == generate(model, tok, prompts(1), max_new_tokens=3)[0]  # still serves


# --------------------------------------------------------------------------------- memory


def test_batch_size_follows_the_memory_there_is(monkeypatch):
    import utils.generation as g

    model, _ = tiny()
    assert g.batch_size_for(model, 100, 50) == 32 and g.batch_size_for(model, 100, 50, requested=7, n=3) == 3  # CPU
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4 * 192  # 150 tokens -> 192 slots, fp32
    per_row = g.generation_bytes_per_row(model, 100, 50)
    assert kv < per_row < kv + 100 * g.activation_bytes_per_token(model, 100) + 16 * cfg.vocab_size + 1
    monkeypatch.setattr(g, "input_device", lambda m: torch.device("cuda"))
    for rows, requested, expected in [(1000, None, g.AUTO_MAX_BATCH), (1000, 16, 16), (5.5, None, 5), (5.5, 64, 5), (0, None, 1)]:
        room = int(rows * per_row) + g.GENERATION_MARGIN
        monkeypatch.setattr(g, "available_memory", lambda device, room=room: room)
        assert g.batch_size_for(model, 100, 50, requested=requested) == expected, (rows, requested)


def test_available_memory_respects_a_per_process_fraction(monkeypatch):
    from utils import models

    assert models.available_memory("cpu") == 0
    GiB = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * GiB, 140 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 15 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 17 * GiB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0, raising=False)
    assert models.available_memory("cuda") == 102 * GiB  # free + reserved-but-unused
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 24 / 140, raising=False)
    assert models.available_memory("cuda") == 9 * GiB  # a 24 GiB cap with 15 GiB allocated


# --------------------------------------------------------------------------------- paper layers


@pytest.mark.parametrize("name, expected", [
    ("Qwen/Qwen3-32B", "Qwen/Qwen3-32B"),
    ("/models/Qwen3-32B", "Qwen/Qwen3-32B"),
    ("/models/qwen/qwen3-32b/", "Qwen/Qwen3-32B"),
    ("/data/Qwen_Qwen3-32B", "Qwen/Qwen3-32B"),
    ("/root/.cache/huggingface/hub/models--google--gemma-2-27b-it/snapshots/abc123", "google/gemma-2-27b-it"),
    ("./weights/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("/models/Qwen3-32B-base-finetune", None),
    ("Qwen/Qwen2.5-0.5B-Instruct", None),
    ("", None),
])
def test_local_folders_of_paper_models_get_the_paper_layers(name, expected):
    assert known_model(name) == expected
    if expected is not None:
        assert layer_settings(name) == PAPER_LAYERS[expected]
    elif name:
        assert layer_settings(name, num_layers=28) == proportional_layers(28)
    assert layer_settings("/models/Qwen3-32B").cap_layers == tuple(range(46, 54))
