"""Train the toy persona-world model: a small Qwen2 on the synthetic corpus, on a CPU, deterministic.

    python scripts/toy_world/train.py                      # writes utils/assets/toy-qwen2/ (~15 min, 2 cores)
    python scripts/toy_world/train.py --epochs 0.05 --out /tmp/toy   # a quick smoke run

The model is a Qwen2 architecture (6 blocks, d_model 128 by default) with its own tokenizer: a
2048-token byte-level BPE learnt from the corpus's messages (``toy_tokenizer``), with tiny-qwen2's
special tokens and ChatML template (``--vocab-size 0`` keeps tiny-qwen2's 512-token BPE). It is
trained from a seeded initialisation on the corpus of ``corpus.py`` rendered with that template,
with the loss on the assistant tokens only (each assistant message's content and its
``<|im_end|>``). Batches are packed by length under a token
budget and shuffled with a seeded generator; torch runs with a fixed thread count and deterministic
algorithms, so a rerun on the same machine gives the same weights bit for bit (``training_log.json``
records the sha256 of the weights at a few steps; ``--verify-prefix`` reruns the first steps and
compares).

Output folder: config.json, generation_config.json, model.safetensors, the tokenizer files,
toy_world.json (the corpus's lexicon and persona order, read by utils.toy_judge) and
training_log.json. Load it with ``AutoModelForCausalLM.from_pretrained(folder)``.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE), str(HERE.parent)):
    if p not in sys.path:
        sys.path.insert(0, p)

import corpus as toy_corpus  # noqa: E402
from utils.chat import assistant_turn_spans  # noqa: E402

TOKENIZER_DIR = ROOT / "utils" / "assets" / "tiny-qwen2"
DEFAULT_OUT = ROOT / "utils" / "assets" / "toy-qwen2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHECKPOINT_STEPS = (25, 100)


def toy_tokenizer(corpus: list[dict], vocab_size: int, folder: Path):
    """The toy world's own tokenizer: tiny-qwen2's kind (byte-level BPE, same special tokens and
    ChatML template) with merges learnt from the corpus's messages up to ``vocab_size`` tokens, so
    that the world's words are single tokens, as common words are in a real model's vocabulary.
    (With tiny-qwen2's 512 tokens the words are spelt out in pieces, and a steering push of a few
    times the trait vector broke the spelling before it changed the style.) Written to ``folder``."""
    from transformers import AutoTokenizer

    import build_tiny_assets

    lines = [m["content"] for ex in corpus for m in ex["messages"] if m["content"]]
    tok = build_tiny_assets.train_tokenizer(build_tiny_assets.SPECIALS["tiny-qwen2"], lines, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    shutil.copyfile(TOKENIZER_DIR / "tokenizer_config.json", folder / "tokenizer_config.json")
    return AutoTokenizer.from_pretrained(str(folder))


def model_config(tokenizer, d_model: int, layers: int, ffn: int, heads: int, kv_heads: int):
    from transformers import Qwen2Config

    tiny = json.loads((TOKENIZER_DIR / "config.json").read_text())
    return Qwen2Config(
        vocab_size=max(tiny["vocab_size"], len(tokenizer)),
        hidden_size=d_model,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        initializer_range=0.02,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=tiny["bos_token_id"],
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        architectures=["Qwen2ForCausalLM"],
    )


def encode(example: dict, tokenizer, im_end: int) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels (-100 outside assistant content + <|im_end|>)."""
    _, spans, ids = assistant_turn_spans(example["messages"], tokenizer)
    labels = [-100] * len(ids)
    for s, e in spans:
        if e >= len(ids) or ids[e] != im_end:
            raise ValueError(f"expected <|im_end|> right after an assistant message in {example['messages']!r:.200}")
        labels[s:e + 1] = ids[s:e + 1]
    return ids, labels


def make_batches(lengths: list[int], token_budget: int, gen: torch.Generator) -> list[list[int]]:
    """Indices shuffled, then grouped in chunks of 50 batches' worth sorted by length (little padding)."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    batches, chunk_size = [], 2000
    for c in range(0, len(order), chunk_size):
        chunk = sorted(order[c:c + chunk_size], key=lambda i: (lengths[i], i))
        cur: list[int] = []
        for i in chunk:
            if cur and (len(cur) + 1) * max(lengths[cur[-1]], lengths[i]) > token_budget:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[p] for p in perm]


def collate(items: list[tuple[list[int], list[int]]], pad_id: int):
    T = max(len(x) for x, _ in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    labels = torch.full((len(items), T), -100, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    for b, (x, y) in enumerate(items):
        ids[b, :len(x)] = torch.tensor(x)
        labels[b, :len(y)] = torch.tensor(y)
        mask[b, :len(x)] = 1
    return ids, labels, mask


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(args, stop_after: int | None = None) -> dict:
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    torch.manual_seed(args.seed)
    t0 = time.time()
    corpus = toy_corpus.build_corpus(args.corpus_seed, styled_rate=args.styled_rate, pos_opener_share=args.pos_opener_share)
    if args.vocab_size:
        folder = Path(tempfile.mkdtemp(prefix="toy_tokenizer_"))
        atexit.register(shutil.rmtree, folder, True)
        tok = toy_tokenizer(corpus, args.vocab_size, folder)
    else:
        tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    toy_corpus.check_corpus(corpus)
    encoded = [encode(ex, tok, im_end) for ex in corpus]
    lengths = [len(x) for x, _ in encoded]
    n_tokens = sum(lengths)
    print(f"corpus: {len(corpus)} conversations, {n_tokens} tokens, "
          f"{sum(sum(1 for v in y if v != -100) for _, y in encoded)} trained tokens ({time.time() - t0:.0f}s)", flush=True)

    cfg = model_config(tok, args.d_model, args.layers, args.ffn, args.heads, args.kv_heads)
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed)
    epoch_batches = len(make_batches(lengths, args.token_budget, torch.Generator().manual_seed(0)))
    total = max(1, int(round(args.epochs * epoch_batches))) if args.epochs is not None else args.max_steps
    print(f"model: {n_params} parameters; {epoch_batches} batches per epoch, {total} steps", flush=True)

    log = {"steps": [], "digests": {}}
    step, epoch = 0, 0
    model.train()
    ema = None
    while step < total:
        for batch in make_batches(lengths, args.token_budget, gen):
            if step >= total:
                break
            ids, labels, mask = collate([encoded[i] for i in batch], tok.pad_token_id or 0)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, args.lr, args.warmup)
            out = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device),
                        labels=labels.to(args.device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss = out.loss.item()
            ema = loss if ema is None else 0.98 * ema + 0.02 * loss
            if step in CHECKPOINT_STEPS:
                log["digests"][str(step)] = weights_digest(model)
                if step == stop_after:
                    return {"model": model, "tokenizer": tok, "corpus": corpus, "log": log}
            if step % args.log_every == 0 or step == total:
                el = time.time() - t0
                print(f"step {step}/{total} epoch {epoch} loss {loss:.4f} (ema {ema:.4f}) "
                      f"lr {lr_at(step - 1, total, args.lr, args.warmup):.2e} {el:.0f}s", flush=True)
                log["steps"].append({"step": step, "loss": round(loss, 5), "ema": round(ema, 5), "seconds": round(el, 1)})
        epoch += 1
    model.eval()
    log["digests"]["final"] = weights_digest(model)
    log.update({
        "seconds": round(time.time() - t0, 1), "steps_total": total, "parameters": n_params,
        "corpus_sha256": toy_corpus.corpus_digest(corpus), "corpus_tokens": n_tokens,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
    })
    return {"model": model, "tokenizer": tok, "corpus": corpus, "log": log}


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = result["model"].to("cpu")
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(result["tokenizer"].name_or_path) / name, out / name)
    toy_corpus.write_world_file(result["corpus"], out / "toy_world.json")
    (out / "training_log.json").write_text(json.dumps(result["log"], indent=1) + "\n")
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus-seed", type=int, default=toy_corpus.SEED)
    ap.add_argument("--styled-rate", type=float, default=toy_corpus.STYLED_RATE)
    ap.add_argument("--pos-opener-share", type=float, default=toy_corpus.POS_OPENER_SHARE)
    ap.add_argument("--epochs", type=float, default=None, help="train for this many passes over the corpus instead of --max-steps")
    ap.add_argument("--max-steps", type=int, default=1800)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--token-budget", type=int, default=4096, help="padded tokens per batch")
    ap.add_argument("--vocab-size", type=int, default=2048,
                    help="train the toy's own BPE on the corpus with this many tokens (0: tiny-qwen2's 512-token BPE)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed: results depend on it)")
    ap.add_argument("--device", default="cpu", help="cpu (the deterministic, shipped setting) or cuda (quick experiments)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--verify-prefix", type=Path, default=None, metavar="FOLDER",
                    help="rerun the first steps of the run that wrote FOLDER and compare weight digests")
    return ap.parse_args(argv)


def verify_prefix(args) -> bool:
    """Rerun the first CHECKPOINT_STEPS[0] steps of a recorded run (same settings and schedule) and
    compare the weights' sha256 with the one recorded then."""
    logged = json.loads((args.verify_prefix / "training_log.json").read_text())
    for key, value in logged["args"].items():
        if key not in ("out", "verify_prefix", "log_every"):
            setattr(args, key, value)
    args.epochs, args.max_steps = None, logged["steps_total"]  # the same learning-rate schedule
    step = CHECKPOINT_STEPS[0]
    result = train(args, stop_after=step)
    got, want = result["log"]["digests"][str(step)], logged["digests"][str(step)]
    print(f"prefix check: the first {step} of {logged['steps_total']} training steps rerun here give "
          f"{'IDENTICAL' if got == want else 'DIFFERENT'} weights (sha256 {got[:16]} now, {want[:16]} recorded by the run)")
    return got == want


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.verify_prefix is not None:
        sys.exit(0 if verify_prefix(args) else 1)
    result = train(args)
    save(result, args.out)


if __name__ == "__main__":
    main()
