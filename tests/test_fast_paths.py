"""The fast paths compute what the plain ones do (CPU, tiny models, float32).

- extraction: right-padded, mask-free batches and packed rows give each example's one-at-a-time
  span means;
  the forward stops after the deepest block asked for; out-of-memory halves the batch;
- generation: the static-cache decoding loop gives the same greedy tokens as `model.generate`
  with a Steerer active in each position mode, never steers pads, and backs off on out-of-memory.
"""

from __future__ import annotations

import pytest
import torch

import utils.activations as activations
import utils.decoding as decoding
import utils.generation as generation
from utils.activations import activation_bytes_per_token, auto_token_budget, response_mean_activations, span_means
from utils.chat import build_messages
from utils.decoding import generate_ids_fast, generate_ids_plain, hooks_graph_safe
from utils.generation import generate
from utils.hooks import count_hooks, get_blocks, hidden_of
from utils.models import load_tiny_model
from utils.sampling import choose_tokens
from utils.steering import Steerer, graph_safe

FAMILIES = ["tiny-qwen2", "tiny-gemma2"]
MODES = [None, "all", "prompt", "response"]
_MODELS: dict = {}


def tiny(name):
    if name not in _MODELS:
        _MODELS[name] = load_tiny_model(name)
    return _MODELS[name]


def random_examples(vocab: int, lengths, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    spans = []
    for n in ids:
        L = len(n)
        spans.append([(L // 3, L - 1), (0, 2)] if L > 6 else [(0, L)])
    return ids, spans


@torch.no_grad()
def one_at_a_time(model, ids, spans, layers):
    """The reference: each example alone, output_hidden_states (block L = hidden_states[L + 1])
    and a hook on the last block (hidden_states[-1] has the final norm applied)."""
    n = len(get_blocks(model))
    out = []
    for x, sp in zip(ids, spans):
        seen = {}
        handle = get_blocks(model)[n - 1].register_forward_hook(lambda m, a, o: seen.update(h=hidden_of(o)))
        try:
            hs = model(torch.tensor([x]), output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        per_layer = [seen["h"][0] if layer == n - 1 else hs[layer + 1][0] for layer in layers]
        out.append(torch.stack([torch.stack([h[s:e].mean(0) for h in per_layer]) for s, e in sp]))
    return out


# ------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_extraction_equals_one_at_a_time(name):
    model, _ = tiny(name)
    lengths = [5, 40, 7, 81, 33, 12, 60, 2, 19, 70]  # gemma2's sliding window is 64: some go past it
    ids, spans = random_examples(model.config.vocab_size, lengths)
    layers = [0, 3, 1]
    ref = one_at_a_time(model, ids, spans, layers)
    for budget in (1, 100, 400, 10_000):  # one at a time, several padded batches, one batch
        got = span_means(model, ids, spans, layers, token_budget=budget)
        for r, g in zip(ref, got):
            assert g.shape == r.shape and g.dtype == torch.float32
            torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-5)
    assert count_hooks(model) == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_response_means_batched_equal_single(name):
    model, tok = tiny(name)
    convs = [build_messages(s, q, r) for s, q, r in [
        ("You are a bard.", "Sing!", "La la la, the river sings of stones and of the sea."),
        (None, "Hi", "Hello."),
        ("You are an analyst.", "Numbers?", "Revenue rose 12 percent in the third quarter, costs fell."),
    ]]
    batched = response_mean_activations(model, tok, convs)
    single = torch.cat([response_mean_activations(model, tok, [c]) for c in convs])
    torch.testing.assert_close(batched, single, atol=2e-5, rtol=1e-5)


def test_extraction_stops_after_the_deepest_layer():
    model, _ = tiny("tiny-qwen2")
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(get_blocks(model))]
    try:
        ids, spans = random_examples(model.config.vocab_size, [10, 20])
        span_means(model, ids, spans, [1], token_budget=10_000)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]


def test_extraction_backs_off_on_out_of_memory(monkeypatch):
    model, _ = tiny("tiny-qwen2")
    ids, spans = random_examples(model.config.vocab_size, [9, 14, 20, 11, 30, 25, 8, 17])
    expected = span_means(model, ids, spans, [2], token_budget=10_000)
    real = activations._span_means_batch
    sizes, ok = [], []

    def flaky(model, ids, spans, layers, packed=False):  # "memory" for 50 padded tokens
        sizes.append(len(ids))
        if len(ids) * max(map(len, ids)) > 50:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        ok.append(len(ids) * max(map(len, ids)))
        return real(model, ids, spans, layers, packed=packed)

    monkeypatch.setattr(activations, "_span_means_batch", flaky)
    with pytest.warns(UserWarning, match="out of memory"):
        got = span_means(model, ids, spans, [2], token_budget=10_000)
    assert sizes[:3] == [8, 4, 2]  # halved until it fits
    assert len(sizes) - len(ok) <= 4  # the lowered budget is kept for the rest: few further failures
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)

    def always(model, ids, spans, layers, packed=False):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    monkeypatch.setattr(activations, "_span_means_batch", always)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(UserWarning):
        span_means(model, ids, spans, [2], token_budget=10_000)


def test_extraction_falls_back_when_compilation_fails(monkeypatch):
    import contextlib

    model, _ = tiny("tiny-qwen2")
    ids, spans = random_examples(model.config.vocab_size, [9, 14, 20])
    expected = span_means(model, ids, spans, [1, 2], compiled=False)
    real = activations._span_means_batch

    @contextlib.contextmanager
    def broken(model):  # stands in for torch.compile failing at the first forward
        def fail(*args, **kwargs):
            raise RuntimeError("backend compiler failed (fake)")

        monkeypatch.setattr(activations, "_span_means_batch", fail)
        try:
            yield
        finally:
            monkeypatch.setattr(activations, "_span_means_batch", real)

    monkeypatch.setattr(activations, "compiled_blocks", broken)
    with pytest.warns(UserWarning, match="without torch.compile"):
        got = span_means(model, ids, spans, [1, 2], compiled=True)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


def test_token_budget_follows_model_size():
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device("meta"):
        big = AutoModelForCausalLM.from_config(
            Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=2, num_attention_heads=28,
                        num_key_value_heads=4, vocab_size=1024), dtype=torch.bfloat16)
    per_token = activation_bytes_per_token(big)
    assert 100_000 < per_token < 300_000  # ~3 x intermediate x 2 bytes, with margin
    assert activation_bytes_per_token(tiny("tiny-qwen2")[0]) < per_token / 50
    assert auto_token_budget(tiny("tiny-qwen2")[0]) == activations.DEFAULT_TOKEN_BUDGET  # CPU


# ------------------------------------------------------------------------------------- generation


def prompt_batch(tok):
    prompts = [build_messages(None, "Hi"), build_messages("You are a poet.", "Tell me about the sea and the sky, at length."),
               build_messages(None, "Numbers?"), build_messages(None, "x " * 70)]
    return generation.left_pad(generation._encode(tok, prompts), tok.pad_token_id)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FAMILIES)
def test_fast_generation_gives_the_plain_greedy_tokens(name, mode):
    model, tok = tiny(name)
    ids, mask = prompt_batch(tok)
    assert (mask == 0).any()  # left padding is exercised
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    results = {}
    for path, fn in (("plain", generate_ids_plain), ("fast", generate_ids_fast)):
        if mode is None:
            results[path] = fn(model, ids, mask, 24, tok.pad_token_id)
        else:
            with Steerer(model, vector, coeff=8.0, layer=1, positions=mode):
                results[path] = fn(model, ids, mask, 24, tok.pad_token_id)
    assert results["fast"].shape[1] > 0
    assert torch.equal(results["fast"], results["plain"]), f"{name} {mode}: fast and plain greedy tokens differ"
    assert count_hooks(model) == 0
    assert model.config._attn_implementation in ("sdpa", "eager")  # switched back after the call
    if mode is not None:
        unsteered = generate_ids_plain(model, ids, mask, 24, tok.pad_token_id)
        assert not torch.equal(unsteered, results["plain"]), "steering changed nothing: the test would prove nothing"


@pytest.mark.parametrize("path", ["plain", "fast"])
@pytest.mark.parametrize("mode", ["all", "prompt", "response"])
def test_generation_never_steers_pads(path, mode):
    model, tok = tiny("tiny-qwen2")
    ids, mask = prompt_batch(tok)
    pads = mask == 0
    vector = torch.randn(model.config.hidden_size)
    fn = generate_ids_plain if path == "plain" else generate_ids_fast

    def prefill_output(steer: bool):
        seen = {}

        @graph_safe
        def spy(module, args, out):
            h = hidden_of(out)
            if h.shape[1] > 1 and "h" not in seen:
                seen["h"] = h.detach().clone()

        with Steerer(model, vector, 3.0, 2, mode) if steer else torch.no_grad():
            handle = get_blocks(model)[2].register_forward_hook(spy)  # after the steerer's hook
            try:
                fn(model, ids, mask, 2, tok.pad_token_id)
            finally:
                handle.remove()
        return seen["h"]

    delta = prefill_output(True) - prefill_output(False)
    assert delta[pads].abs().max() == 0, f"{path}/{mode}: pad positions were steered"
    expected = torch.zeros_like(delta)
    if mode == "response":
        expected[:, -1] = 3.0 * vector
    else:
        expected[~pads] = 3.0 * vector
    torch.testing.assert_close(delta, expected, atol=1e-4, rtol=1e-4)


def test_public_generate_fast_equals_plain():
    model, tok = tiny("tiny-gemma2")
    prompts = [build_messages(None, q) for q in ["Hi", "Why is the sky blue?", "Tell me a story about a fox.", "2+2?", "Go"]]
    vector = torch.randn(model.config.hidden_size)
    with Steerer(model, vector, 4.0, 2, "response"):
        plain = generate(model, tok, prompts, max_new_tokens=20, batch_size=2, fast=False)
        fast = generate(model, tok, prompts, max_new_tokens=20, batch_size=2, fast=True)
    assert fast == plain
    assert decoding.LAST_RUN["steps"] > 0  # the fast path ran


def test_generation_backs_off_on_out_of_memory(monkeypatch):
    model, tok = tiny("tiny-qwen2")
    prompts = [build_messages(None, f"Question number {i}?") for i in range(6)]
    expected = generate(model, tok, prompts, max_new_tokens=8, batch_size=6, fast=True)
    real = generation.generate_ids_fast
    sizes = []

    def flaky(model, ids, *args, **kwargs):
        sizes.append(ids.shape[0])
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_ids_fast", flaky)
    with pytest.warns(UserWarning, match="out of memory"):
        got = generate(model, tok, prompts, max_new_tokens=8, batch_size=6, fast=True)
    assert got == expected
    assert sizes[:2] == [6, 3]
    assert max(sizes[2:]) <= 2


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0], [5.0, 0.0, 4.9, 0.0]])
    assert choose_tokens(logits).tolist() == [1, 0]
    torch.manual_seed(0)
    assert choose_tokens(logits, temperature=1.0, top_k=1).tolist() == [1, 0]
    assert choose_tokens(logits, temperature=1.0, top_p=0.01).tolist() == [1, 0]  # nucleus of one token
    draws = torch.stack([choose_tokens(logits, temperature=1.0, top_p=0.9) for _ in range(200)])
    assert set(draws[:, 1].tolist()) == {0, 2}  # row 2: the two near-equal tokens, never the tail
    torch.manual_seed(3)
    a = choose_tokens(logits, temperature=0.7)
    torch.manual_seed(3)
    assert torch.equal(a, choose_tokens(logits, temperature=0.7))


def test_cuda_graph_gate_accepts_only_marked_hooks():
    model, _ = tiny("tiny-qwen2")
    with Steerer(model, torch.zeros(model.config.hidden_size), 1.0, 1, "all"):
        assert hooks_graph_safe(model)
        handle = get_blocks(model)[0].register_forward_hook(lambda m, a, o: None)
        try:
            assert not hooks_graph_safe(model)
        finally:
            handle.remove()
    assert hooks_graph_safe(model)


def test_steerer_delta_is_computed_once_per_device_and_dtype():
    model, _ = tiny("tiny-qwen2")
    s = Steerer(model, torch.ones(model.config.hidden_size), 2.0, 1, "all")
    h = torch.zeros(1, 1, model.config.hidden_size)
    d1 = s.delta(h)
    assert s.delta(h) is d1 and torch.equal(d1, torch.full_like(d1, 2.0))
    assert s.delta(h.double()).dtype == torch.float64
    s.coeff = 3.0
    assert s.delta(h)[0] == 3.0


# ------------------------------------------------------------------------------------- packing


def test_packed_extraction_equals_one_at_a_time():
    """Packed rows (examples end to end, positions restarting, attention kept inside each example)
    give each example's one-at-a-time means: a token seeing its neighbour's tokens, or a position
    counted from the row's start, would change them."""
    from utils.packing import can_pack

    model, _ = tiny("tiny-qwen2")
    assert can_pack(model)
    ids, spans = random_examples(model.config.vocab_size, [5, 40, 7, 81, 33, 12, 60, 2, 19, 70])
    layers = [0, 3, 1]
    ref = one_at_a_time(model, ids, spans, layers)
    before = model.config._attn_implementation
    for budget in (1, 100, 400, 10_000):
        got = span_means(model, ids, spans, layers, token_budget=budget, packed=True)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-5)
    assert model.config._attn_implementation == before  # the model's own attention is back
    assert count_hooks(model) == 0


def test_packed_batches_fill_the_budget_with_real_tokens():
    lengths = [50, 10, 30, 20, 40]
    assert activations.length_batches(lengths, 60, packed=True) == [[0], [4], [2, 3, 1]]  # 30 + 20 + 10 real tokens
    assert activations.length_batches(lengths, 60) == [[0], [4], [2, 3], [1]]  # padded: 3 rows x 30 > 60


def test_packing_refused_where_attention_is_not_plain_causal():
    from utils.packing import can_pack, varlen_attention_on

    model, _ = tiny("tiny-gemma2")  # soft-capped logits and sliding windows
    assert not can_pack(model)
    ids, spans = random_examples(model.config.vocab_size, [9, 14])
    with pytest.raises(ValueError, match="soft-capped"):
        span_means(model, ids, spans, [1], packed=True)
    qwen, _ = tiny("tiny-qwen2")
    before = qwen.config._attn_implementation
    with pytest.raises(RuntimeError), varlen_attention_on(qwen):
        raise RuntimeError("boom")
    assert qwen.config._attn_implementation == before  # restored even when the block fails


def test_generate_conversations_batches_turns_like_one_conversation_at_a_time():
    """utils.generation.generate_conversations: one batch per turn, the same replies as writing each
    conversation alone (greedy), empty replies recorded as given, and ragged turn lists refused."""
    from utils.generation import generate_conversations

    model, tok = tiny("tiny-qwen2")
    users = [["Hi", "Who are you?", "Tell me more."], ["What is the sea?", "Why?", "And then?"]]
    together = generate_conversations(model, tok, users, max_new_tokens=6, empty_reply="[empty]")
    for turns, conv in zip(users, together):
        alone = []
        for u in turns:
            alone.append({"role": "user", "content": u})
            reply = generate(model, tok, [alone], max_new_tokens=6)[0]
            alone.append({"role": "assistant", "content": reply if reply.strip() else "[empty]"})
        assert conv == alone
        assert [m["role"] for m in conv] == ["user", "assistant"] * 3
    with pytest.raises(ValueError, match="same number of user turns"):
        generate_conversations(model, tok, [["a", "b"], ["c"]])
