"""GPU benchmark of the course's activation extraction and steered generation (issue #6).

    python benchmarks/bench_gpu.py                 # Qwen2.5-7B architecture, random bf16 weights, on cuda
    python benchmarks/bench_gpu.py --small         # a small Qwen2 config (CPU check of the script itself)

The model is the real-size Qwen2.5-7B architecture (28 blocks, d_model 3584, MLP 18944, 28 query /
4 key-value heads, vocabulary 152,064) built from its config with random weights: no download.
Conversations are rendered with the course's tiny Qwen2 tokenizer (the ChatML format, exact
response spans from `format_chat`) around contents of realistic lengths, and every tiny-vocabulary
id is then mapped to a fixed random id of the 152k vocabulary: the token structure and the spans
are the course's, the ids are random.

It prints, side by side:
- extraction of all-layer response means: the naive loop (one example at a time,
  `output_hidden_states`), plain length-sorted batching with hooks (the course's first version:
  attention mask, one host copy per block), and the course's path (`utils.activations.span_means`)
  with right-padded batches and with packed rows (variable-length attention), eager and compiled;
  tokens/s, model FLOP/s as a fraction of the bf16 peak, peak memory above the weights, and the
  largest relative difference from the naive loop;
- steered generation at batch 64: `model.generate` one prompt at a time and in a batch, and the
  course's static-cache path (`utils.decoding.generate_ids_fast`) with and without its CUDA
  graph, in each steering position mode; new tokens/s, against the decode limit (the weights read
  once per step at the measured copy bandwidth); and the fast path's logits against the plain
  path's (teacher-forced on the same tokens, steering active).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.activations import activation_bytes_per_token, auto_token_budget, length_batches, span_means  # noqa: E402
from utils.chat import build_messages, format_chat, format_prompt  # noqa: E402
from utils.decoding import LAST_RUN, generate_ids_fast, generate_ids_plain  # noqa: E402
from utils.generation import left_pad  # noqa: E402
from utils.hooks import get_blocks, hidden_of, hooks  # noqa: E402
from utils.models import load_tokenizer  # noqa: E402
from utils.steering import Steerer  # noqa: E402

DATASHEET_BF16 = 989.4e12  # dense bf16 FLOP/s of the H100 / H200 SXM (the vendor's figure)
WORDS = ("the sea river stone light voice morning quiet answer question people city garden story "
         "number market change water reason friend music paper window table letter mountain").split()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def gib(x):
    return x / 2**30


# --------------------------------------------------------------------------------------------- setup


def build_model(small: bool, device: str):
    from transformers import AutoModelForCausalLM, Qwen2Config

    if small:
        sizes = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
    else:  # Qwen2.5-7B
        sizes = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4)
    cfg = Qwen2Config(vocab_size=152064, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, **sizes)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                                 attn_implementation="sdpa")
    model.eval()
    return model


class Corpus:
    """Chats rendered by the tiny tokenizer, ids mapped into the big vocabulary."""

    def __init__(self, vocab: int, seed: int = 0):
        self.tok = load_tokenizer("tiny-qwen2")
        self.rng = random.Random(seed)
        g = torch.Generator().manual_seed(seed)
        self.map = torch.randperm(vocab - 1000, generator=g)[: len(self.tok)] + 500  # away from special ids

    def words(self, tokens: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(max(1, round(tokens / 2.4))))

    def big(self, ids):
        return self.map[torch.tensor(ids)].tolist()

    def messages(self, response_tokens: int | None):
        system = self.words(self.rng.randint(10, 40)) if self.rng.random() < 0.8 else None
        question = self.words(self.rng.randint(10, 60))
        response = self.words(response_tokens) if response_tokens else None
        return build_messages(system, question, response)

    def chats(self, n: int):
        ids, spans = [], []
        for _ in range(n):
            fc = format_chat(self.messages(self.rng.randint(32, 256)), self.tok)
            ids.append(self.big(fc.input_ids))
            spans.append([fc.token_span])
        return ids, spans

    def prompts(self, n: int):
        return [self.big(self.tok(format_prompt(self.messages(None), self.tok), add_special_tokens=False)["input_ids"]) for _ in range(n)]


def block_flops(model, lengths, n_layers):
    """Model FLOPs of running `n_layers` blocks over sequences of these lengths: 2 x weights per
    token in the projections and MLP, plus causal attention (QK and PV: 2 T^2 H Dh per block)."""
    cfg = model.config
    d, inter, H = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    Dh = d // H
    kv = cfg.num_key_value_heads * Dh
    per_token = 2 * (d * d + 2 * d * kv + d * d + 3 * d * inter)
    tokens = sum(lengths)
    attn = sum(2 * T * T * H * Dh for T in lengths)
    return n_layers * (per_token * tokens + attn)


# ---------------------------------------------------------------------------------------- extraction


@torch.inference_mode()
def naive_means(model, ids, spans):
    """One example at a time through the whole model with output_hidden_states; the last block's
    output from a hook (hidden_states[-1] has the final norm)."""
    n = len(get_blocks(model))
    out = []
    device = model.device
    for x, ((s, e),) in zip(ids, spans):
        seen = {}
        with hooks(model, {n - 1: lambda m, a, o: seen.update(h=hidden_of(o))}):
            hs = model(torch.tensor([x], device=device), output_hidden_states=True).hidden_states
        rows = [hs[L + 1][0, s:e].float().mean(0) for L in range(n - 1)] + [seen["h"][0, s:e].float().mean(0)]
        out.append(torch.stack(rows).cpu())
    return out


@torch.inference_mode()
def plain_batched_means(model, ids, spans, token_budget=16384):
    """The course's first version: right-padded length-sorted batches with an attention mask, a
    [K, T] selection matrix, and each block's sums copied to the host as soon as it runs."""
    n = len(get_blocks(model))
    device = model.device
    results = [None] * len(ids)
    for batch in length_batches([len(x) for x in ids], token_budget):
        B, T = len(batch), max(len(ids[i]) for i in batch)
        input_ids = torch.zeros((B, T), dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        sel = torch.zeros((B, T))
        lens = torch.zeros(B)
        for b, i in enumerate(batch):
            input_ids[b, : len(ids[i])] = torch.tensor(ids[i])
            attn[b, : len(ids[i])] = 1
            s, e = spans[i][0]
            sel[b, s:e] = 1
            lens[b] = e - s
        collected = {}

        def make(L):
            def hook(m, a, o):
                h = hidden_of(o)
                collected[L] = torch.bmm(sel.to(h.device, h.dtype).unsqueeze(1), h).squeeze(1).float().cpu()
            return hook

        with hooks(model, {L: make(L) for L in range(n)}):
            model.model(input_ids=input_ids.to(device), attention_mask=attn.to(device), use_cache=False)
        out = torch.stack([collected[L] for L in range(n)], dim=1) / lens[:, None, None]
        for b, i in enumerate(batch):
            results[i] = out[b]
    return results


def rel_errs(got, ref):
    """Median and largest ||a - b|| / ||b|| over examples and layers (None: nothing to compare)."""
    if ref is None:
        return float("nan"), float("nan")
    e = torch.cat([((a.reshape(b.shape) - b).norm(dim=-1) / b.norm(dim=-1)).flatten() for a, b in zip(got, ref)])
    return float(e.median()), float(e.max())


def bench_extraction(model, args, peak, weights, report):
    corpus = Corpus(model.config.vocab_size)
    ids, spans = corpus.chats(args.n_extract)
    lengths = [len(x) for x in ids]
    n_layers = len(get_blocks(model))
    report(f"corpus: {len(ids)} chats, {sum(lengths)} tokens, length {min(lengths)}-{max(lengths)} "
           f"(mean {sum(lengths) / len(ids):.0f}), response spans {min(e - s for [(s, e)] in spans)}-{max(e - s for [(s, e)] in spans)} tokens")
    per_token = activation_bytes_per_token(model, max(lengths))
    budget = auto_token_budget(model, max(lengths))
    report(f"course path token budget: {budget} padded tokens (estimate {per_token / 1024:.0f} KiB/token, "
           f"activation memory limit 4 GiB, free {gib(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else float('nan'):.1f} GiB)")
    layers = list(range(n_layers))
    sub = slice(0, args.n_naive)
    rows = []

    def run(name, fn, idx, warm=None):
        ii = list(range(len(ids)))[idx]
        warm = warm or max(1, len(ii) // 8)
        _, dt_warm = timed(lambda: fn([ids[i] for i in ii[:warm]], [spans[i] for i in ii[:warm]]))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out, dt = timed(lambda: fn([ids[i] for i in ii], [spans[i] for i in ii]))
        toks = sum(lengths[i] for i in ii)
        flops = block_flops(model, [lengths[i] for i in ii], n_layers)
        mem = (gib(torch.cuda.max_memory_allocated() - weights), gib(torch.cuda.max_memory_reserved() - weights)) if torch.cuda.is_available() else (float("nan"),) * 2
        rows.append((name, toks / dt, flops / dt, mem, dt, len(ii), dt_warm))
        return out

    ref = run("naive: one at a time, output_hidden_states", lambda i, s: naive_means(model, i, s), sub)
    plain = run("plain length-sorted batches + hooks (v0)", lambda i, s: plain_batched_means(model, i, s), slice(None))
    gpu = torch.cuda.is_available()
    padded = run("course: padded batches, eager", lambda i, s: span_means(model, i, s, layers, compiled=False, packed=False), slice(None))
    padded_c = run("course: padded batches, compiled", lambda i, s: span_means(model, i, s, layers, compiled=gpu, packed=False), slice(None), warm=64)
    course = run("course: packed, eager", lambda i, s: span_means(model, i, s, layers, compiled=False, packed=True), slice(None))
    fused = run("course: packed, compiled (default)", lambda i, s: span_means(model, i, s, layers, compiled=gpu, packed=True), slice(None), warm=64)
    pads = sum(len(b) * max(lengths[i] for i in b) for b in length_batches(lengths, budget)) / sum(lengths) - 1
    # stop after block L: only the first half of the blocks
    half = n_layers // 2 - 1
    _, dt_half = timed(lambda: span_means(model, ids, spans, [half], compiled=False))
    report("")
    report(f"{'extraction, all ' + str(n_layers) + ' blocks':46s} {'examples':>8s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'% peak':>7s} {'% mm':>6s} {'mem+ GiB':>9s} {'resv+':>6s}")
    for name, tps, fps, (ma, mr), dt, n, _ in rows:
        report(f"{name:46s} {n:8d} {tps:10.0f} {fps / 1e12:8.1f} {100 * fps / DATASHEET_BF16:6.1f}% {100 * fps / peak:5.1f}% {ma:9.2f} {mr:6.2f}")
    report(f"(% peak: of the datasheet's dense bf16 {DATASHEET_BF16 / 1e12:.0f} TFLOP/s; % mm: of the measured matmul rate; "
           f"mem+ / resv+: peak allocated / reserved GPU memory above the weights; compiled blocks: first call with "
           f"compilation took {rows[3][6]:.1f} s (padded) and {rows[5][6]:.1f} s (packed) for 64 chats; padded batches spend {100 * pads:.1f}% more tokens than the chats have, "
           f"packed rows none)")
    report(f"layers=[{half}] only (StopForward after block {half}, packed, eager): {dt_half:.2f} s vs {rows[4][4]:.2f} s for all {n_layers} blocks")
    # accuracy: every bf16 path against a float32 run of the same weights (one at a time)
    n32 = min(args.n_fp32, args.n_naive)
    paths = (("naive bf16", ref), ("v0", plain), ("padded eager", padded), ("padded compiled", padded_c),
             ("packed eager", course), ("packed compiled", fused))
    errs = {key: rel_errs(got[:n32], None) for key, got in paths}
    if torch.cuda.is_available() and args.n_fp32 > 0:
        import copy

        model32 = copy.deepcopy(model).float()
        ref32 = naive_means(model32, ids[:n32], spans[:n32])
        del model32
        torch.cuda.empty_cache()
        for key, got in paths:
            errs[key] = rel_errs(got[:n32], ref32)
        report(f"relative difference ||a - b|| / ||b|| per chat and block against a float32 run of the same weights "
               f"({n32} chats x {n_layers} blocks): median / max")
        for key, (med, mx) in errs.items():
            report(f"  {key:16s} {med:.2e} / {mx:.2e}")
    for key, got in paths[1:]:
        med, mx = rel_errs(got[sub], ref)
        report(f"  {key:16s} against the naive bf16 loop ({len(ref)} chats): median {med:.2e}, max {mx:.2e}")
    return ids, spans, rows


# ---------------------------------------------------------------------------------------- generation


@torch.inference_mode()
def teacher_forced_logits(model, ids, mask, forced):
    """The plain path's logits for given tokens: model forwards with a growing cache and the 2-D
    mask, as `model.generate` runs them (hooks active)."""
    from transformers import DynamicCache

    device = model.device
    ids, mask, forced = ids.to(device), mask.to(device), forced.to(device)
    cache = DynamicCache(config=model.config)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1].float()]
    nxt = pos[:, -1:] + 1
    for t in range(forced.shape[1] - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=forced[:, t : t + 1], attention_mask=mask, position_ids=nxt, past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1].float())
        nxt = nxt + 1
    return torch.stack(logits, dim=1)


def bench_generation(model, args, weights, bandwidth, report):
    corpus = Corpus(model.config.vocab_size, seed=1)
    pad = model.config.pad_token_id
    prompts = corpus.prompts(args.batch)
    ids, mask = left_pad(prompts, pad)
    lens = [len(p) for p in prompts]
    report(f"prompts: batch {len(prompts)}, {min(lens)}-{max(lens)} tokens (mean {sum(lens) / len(lens):.0f}), greedy, "
           f"steering vector at block {args.steer_layer}, coeff 4")
    g = torch.Generator().manual_seed(0)
    vector = torch.randn(model.config.hidden_size, generator=g)
    rows = []

    def run(name, fn, B, n_new, mode="response"):
        with Steerer(model, vector, 4.0, args.steer_layer, mode):
            fn(min(B, 2), 4)  # warm-up
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            out, dt = timed(lambda: fn(B, n_new))
        steps = out.shape[1]
        mem = gib(torch.cuda.max_memory_allocated() - weights) if torch.cuda.is_available() else float("nan")
        rows.append((name, mode, B, steps, B * steps / dt, mem, LAST_RUN.get("cuda_graph") if "fast" in name else None))

    def plain(B, n):
        return generate_ids_plain(model, ids[:B], mask[:B], n, pad)

    def one_at_a_time(B, n):
        outs = [generate_ids_plain(model, ids[i : i + 1, -lens[i]:], mask[i : i + 1, -lens[i]:], n, pad) for i in range(B)]
        return torch.cat([o[:, :n] for o in outs])

    def fast(B, n, graphs=None):
        return generate_ids_fast(model, ids[:B], mask[:B], n, pad, cuda_graphs=graphs)

    run("plain: model.generate, one prompt at a time", one_at_a_time, 2, args.new_tokens_slow)
    run("plain: model.generate, batched", plain, args.batch, args.new_tokens_slow)
    run("fast: static cache, no CUDA graph", lambda B, n: fast(B, n, graphs=False), args.batch, args.new_tokens_slow)
    for mode in ("all", "prompt", "response"):
        run("fast: static cache + CUDA graph", fast, args.batch, args.new_tokens, mode=mode)
    step_limit = bandwidth / weights if weights else float("nan")
    report("")
    report(f"{'steered generation':46s} {'mode':>8s} {'batch':>5s} {'steps':>5s} {'new tok/s':>10s} {'% limit':>8s} {'mem+ GiB':>9s} graph")
    for name, mode, B, steps, tps, mem, graph in rows:
        report(f"{name:46s} {mode:>8s} {B:5d} {steps:5d} {tps:10.0f} {100 * tps / (step_limit * B):7.1f}% {mem:9.2f} {'' if graph is None else graph}")
    report(f"decode limit at batch {args.batch}: weights {gib(weights):.1f} GiB read once per step at {bandwidth / 1e12:.2f} TB/s "
           f"= {step_limit:.0f} steps/s = {step_limit * args.batch:.0f} new tokens/s")

    # logits of the fast path against the plain path, teacher-forced on the fast path's tokens
    B, n = 8, 32
    for mode in ("all", "prompt", "response"):
        with Steerer(model, vector, 4.0, args.steer_layer, mode):
            toks, fast_logits = generate_ids_fast(model, ids[:B], mask[:B], n, pad, return_logits=True)
            ref = teacher_forced_logits(model, ids[:B], mask[:B], toks)
        ref = ref[:, : fast_logits.shape[1]]
        err = ((fast_logits - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
        agree = (fast_logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        report(f"fast vs plain logits ({mode:8s}, batch {B}, {fast_logits.shape[1]} steps, teacher-forced): "
               f"max relative difference {err:.2e}, arg-max agreement {100 * agree:.1f}%")


def check_tiny_models(report):
    """The tiny course models on this device in float32: the fast path (with its CUDA graph) gives
    the plain path's greedy tokens in every steering mode, and batched extraction equals one at a time."""
    from utils.generation import _encode
    from utils.models import load_tiny_model

    for name in ("tiny-qwen2", "tiny-gemma2"):
        model, tok = load_tiny_model(name)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        prompts = [build_messages(None, q) for q in ["Hi", "Tell me about the sea and the sky, at length.", "Numbers?", "x " * 70]]
        ids, mask = left_pad(_encode(tok, prompts), tok.pad_token_id)
        vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
        same = []
        for mode in ("all", "prompt", "response"):
            with Steerer(model, vector, 8.0, 1, mode):
                a = generate_ids_plain(model, ids, mask, 48, tok.pad_token_id)
                b = generate_ids_fast(model, ids, mask, 48, tok.pad_token_id)
            same.append(f"{mode} {'same' if torch.equal(a.cpu(), b.cpu()) else 'DIFFERENT'} (graph {LAST_RUN.get('cuda_graph')})")
        g = torch.Generator().manual_seed(0)
        xs = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (5, 40, 81, 33, 70)]
        sp = [[(1, len(x) - 1)] for x in xs]
        batched = span_means(model, xs, sp, [0, 3])
        single = [span_means(model, [x], [s], [0, 3])[0] for x, s in zip(xs, sp)]
        err = max(float((b - s).abs().max()) for b, s in zip(batched, single))
        report(f"{name} fp32 on {model.device.type}: fast vs plain greedy tokens (48 new, 4 left-padded prompts): "
               f"{', '.join(same)}; batched vs single extraction max |diff| {err:.1e}")
        if name == "tiny-qwen2" and torch.cuda.is_available():  # packed rows through the flash kernel (bf16 only)
            model.to(torch.bfloat16)
            padded = span_means(model, xs, sp, [0, 3], packed=False)
            packed = span_means(model, xs, sp, [0, 3], packed=True)
            rel = max(float((a - b).norm() / b.norm()) for a, b in zip(packed, padded))
            report(f"{name} bf16 on cuda: packed rows (flash variable-length attention) vs padded batches: "
                   f"largest relative difference {rel:.1e}")


def bench_extras(model, args, peak, weights, report):
    """Where the compiled extraction's GPU time goes (profiler), the allocator without expandable
    segments (reserved memory), and optionally inductor's max-autotune (GEMM epilogue fusion)."""
    import utils.activations as acts

    corpus = Corpus(model.config.vocab_size)
    ids, spans = corpus.chats(args.n_extract)
    lengths = [len(x) for x in ids]
    n_layers = len(get_blocks(model))
    layers = list(range(n_layers))
    flops = block_flops(model, lengths, n_layers)
    if torch.cuda.is_available():
        from torch.profiler import ProfilerActivity, profile

        sub = slice(0, 160)
        span_means(model, ids[sub], spans[sub], layers, compiled=True)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            _, wall = timed(lambda: span_means(model, ids[sub], spans[sub], layers, compiled=True))
        cats = {}
        for ev in prof.key_averages():
            # kernels only: host-side ops (a compiled region, aten::mm) carry their kernels' time too
            if ev.device_type != torch.autograd.DeviceType.CUDA or ev.self_device_time_total <= 0:
                continue
            t = ev.self_device_time_total
            k = ev.key.lower()
            cat = ("gemm" if any(w in k for w in ("gemm", "cutlass", "xmma", "nvjet", "matmul", "sm90")) and "flash" not in k
                   else "attention" if any(w in k for w in ("flash", "fmha", "attention")) else
                   "fused elementwise (triton)" if "triton" in k else "copy/other")
            cats[cat] = cats.get(cat, 0) + t / 1e6
        busy = sum(cats.values())
        report(f"profile, compiled extraction of {sub.stop} chats: wall {wall:.2f} s, GPU kernels {busy:.2f} s "
               f"({100 * busy / wall:.0f}% busy); " + ", ".join(f"{k} {v:.2f} s ({100 * v / busy:.0f}%)" for k, v in sorted(cats.items(), key=lambda x: -x[1])))
        # reserved memory without expandable segments (utils.models turns them on before CUDA starts)
        torch.cuda.empty_cache()
        setting = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
        try:
            setting("expandable_segments:False")
        except Exception as err:  # noqa: BLE001
            report(f"allocator settings unavailable: {err}")
        else:
            for name, comp in (("course eager, no expandable segments", False), ("course compiled, no expandable segments", True)):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                _, dt = timed(lambda: span_means(model, ids, spans, layers, compiled=comp))
                ma, mr = gib(torch.cuda.max_memory_allocated() - weights), gib(torch.cuda.max_memory_reserved() - weights)
                report(f"{name:46s} {len(ids):8d} {sum(lengths) / dt:10.0f} {flops / dt / 1e12:8.1f} {100 * flops / dt / DATASHEET_BF16:6.1f}% "
                       f"{100 * flops / dt / peak:5.1f}% {ma:9.2f} {mr:6.2f}")
            setting("expandable_segments:True")
    if args.autotune:
        acts.COMPILE_OPTIONS["mode"] = "max-autotune-no-cudagraphs"
        acts._COMPILED_FORWARDS.clear()
        torch._dynamo.reset()
        _, dt_c = timed(lambda: span_means(model, ids[:64], spans[:64], layers, compiled=True))
        report(f"(max-autotune compilation and first call: {dt_c:.0f} s)")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        out, dt = timed(lambda: span_means(model, ids, spans, layers, compiled=True))
        ma = gib(torch.cuda.max_memory_allocated() - weights)
        report(f"{'course compiled, max-autotune':46s} {len(ids):8d} {sum(lengths) / dt:10.0f} {flops / dt / 1e12:8.1f} "
               f"{100 * flops / dt / DATASHEET_BF16:6.1f}% {100 * flops / dt / peak:5.1f}% {ma:9.2f}")


# ---------------------------------------------------------------------------------------------- main


def measure_peaks(report):
    if not torch.cuda.is_available():
        return 1e12, 1e11
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    sync()
    mm = 20 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3)
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    sync()
    bw = 10 * 2 * x.numel() / (start.elapsed_time(end) / 1e3)
    del a, b, x, y
    torch.cuda.empty_cache()
    report(f"measured: bf16 8192^3 matmul {mm / 1e12:.0f} TFLOP/s ({100 * mm / DATASHEET_BF16:.0f}% of the datasheet's "
           f"{DATASHEET_BF16 / 1e12:.0f}); device-to-device copy {bw / 1e12:.2f} TB/s (read + write)")
    return mm, bw


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a small Qwen2 config (checks the script; CPU is fine)")
    p.add_argument("--n-extract", type=int, default=768)
    p.add_argument("--n-naive", type=int, default=48)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--new-tokens-slow", type=int, default=48)
    p.add_argument("--steer-layer", type=int, default=19)
    p.add_argument("--n-fp32", type=int, default=16, help="chats checked against a float32 copy of the model (GPU)")
    p.add_argument("--extras", action="store_true", help="profile, allocator without expandable segments (GPU)")
    p.add_argument("--autotune", action="store_true", help="also time inductor max-autotune (long compile)")
    p.add_argument("--skip", default="", help="comma-separated: tiny,extraction,generation")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.small:
        args.steer_layer = min(args.steer_layer, 2)
    lines = []

    def report(s=""):
        print(s, flush=True)
        lines.append(s)

    import transformers

    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    report(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}; "
           f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF')}")
    peak, bandwidth = measure_peaks(report)
    model, dt = timed(lambda: build_model(args.small, device))
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    report(f"model: Qwen2 {'small' if args.small else '2.5-7B'} architecture, random weights, "
           f"{sum(t.numel() for t in model.parameters()) / 1e9:.2f} B parameters, {gib(weights):.2f} GiB "
           f"({next(model.parameters()).dtype}), built in {dt:.0f} s")
    skip = set(args.skip.split(","))
    if "tiny" not in skip:
        check_tiny_models(report)
    if "extraction" not in skip:
        bench_extraction(model, args, peak, weights, report)
    if "generation" not in skip:
        bench_generation(model, args, weights, bandwidth, report)
    if args.extras or args.autotune:
        report("")
        bench_extras(model, args, peak, weights, report)


if __name__ == "__main__":
    main()
