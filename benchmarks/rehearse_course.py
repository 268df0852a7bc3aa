"""Rehearse the course end to end at real size: every section's notebook, run as a learner runs it.

    python benchmarks/rehearse_course.py --size 7b --memory-cap-gib 24      # Qwen2.5-7B, a 24 GB card
    python benchmarks/rehearse_course.py --paper --sections 1,2              # Gemma 2 27B / Qwen3-32B
    python benchmarks/rehearse_course.py --size tiny --sections 1 --out /tmp/r.json   # CPU check, seconds-minutes

What it does:

1. **Stand-in models, nothing downloaded.** A model folder with the real architecture's config
   (Qwen2.5-7B-Instruct: 28 blocks, d_model 3584, 28/4 query/key-value heads, vocabulary 152,064;
   Gemma 2 27B; Qwen3-32B; or small ones) and the course's tiny ChatML (Qwen) or Gemma-turn
   tokenizer, plus a `rehearsal.json` marker. Inside the section's process
   (`benchmarks/rehearsal_kernel.py`) `from_pretrained` on such a folder builds the architecture
   with random weights directly on the GPU in bf16; the output rows past the tokenizer's 512 tokens
   are zeroed so the random model writes decodable text. The chosen-model run sets
   `PERSONA_COURSE_MODEL` to the folder (named like the hub model, so `utils.models.layer_settings`
   gives the paper's layers); `--paper` sets `PERSONA_COURSE_MODEL=paper` and lays the folders out
   as a hub cache (`HF_HUB_CACHE`, `HF_HUB_OFFLINE=1`), so the section loads `google/gemma-2-27b-it`
   / `Qwen/Qwen3-32B` by name, as a learner with downloaded weights does. Random stand-ins of the
   paper's release (the Gemma 2 27B axis and 240 trait vectors that Section 1 ranks; the Qwen3-32B
   axis and capping config of Section 2's paper setting) sit in the same hub cache, so the
   sections' downloads run their real code offline.
2. **A judge that answers at once.** `tests/fake_openai_server.py` on 127.0.0.1, configured as the
   judge endpoint (`PERSONA_COURSE_JUDGE_API_BASE` and a key in `PERSONA_COURSE_JUDGE_API_KEY_ENV`;
   no generation key, so generation stays local). It answers role-play prompts with a reasoning
   line and `SCORE: n`, delusion prompts with the two score lines, 0-100 prompts with a number and
   its top logprobs; scores are hashes of the prompt. About 1 % of first requests get a 429 and
   0.5 % a 500, so the client's retries run. A fresh `PERSONA_COURSE_CACHE` per run.
3. **The notebooks.** `solutions/sectionN_*.ipynb` (the generated notebooks, reference solutions
   filled in) through nbclient in a fresh kernel each, or (`--mode exec`, or when nbclient is
   missing) their code cells in order in one namespace in a fresh process. Per section it records:
   executed without error (else the error and the failing cell), wall time, the time of the main
   steps (generation, extraction, judging, model load: wall clocks with CUDA synchronisation around
   the course's entry points; see rehearsal_kernel.py), peak GPU memory, judge requests, and the
   slowest cells. Results go to `--out` (JSON) after every section.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ASSETS = REPO / "utils" / "assets"
SECTIONS = {1: "section1_persona_space", 2: "section2_assistant_axis", 3: "section3_contrastive_prompting",
            4: "section4_steering", 5: "section5_finetuning"}
REVISION = "0" * 40  # the stand-in hub-cache snapshots' revision

# Real architectures, written out (nothing downloaded). Token ids come from the stand-in tokenizer.
QWEN25_7B = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                 max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu",
                 tie_word_embeddings=False, use_sliding_window=False, initializer_range=0.02)
QWEN25_05B = dict(QWEN25_7B, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
GEMMA2_27B = dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], hidden_size=4608, intermediate_size=36864,
                  num_hidden_layers=46, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                  vocab_size=256000, max_position_embeddings=8192, query_pre_attn_scalar=144, sliding_window=4096,
                  attn_logit_softcapping=50.0, final_logit_softcapping=30.0, rms_norm_eps=1e-6, rope_theta=10000.0,
                  hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, initializer_range=0.02)
QWEN3_32B = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=5120, intermediate_size=25600,
                 num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                 max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu",
                 tie_word_embeddings=False, attention_bias=False, initializer_range=0.02)
TINY_WIDTH = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  vocab_size=None, initializer_range=0.2)  # vocab None: the tokenizer's

CHOSEN = {  # --size: (folder name, tokenizer, config, generation config)
    "7b": ("Qwen2.5-7B-Instruct", "tiny-qwen2", QWEN25_7B, dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20)),
    "0.5b": ("Qwen2.5-0.5B-Instruct", "tiny-qwen2", QWEN25_05B, dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20)),
    "tiny": ("rehearsal-tiny-qwen2", "tiny-qwen2", dict(QWEN25_7B, num_hidden_layers=4, **{k: v for k, v in TINY_WIDTH.items() if k != "head_dim"}), {}),
}
PAPER = {  # hub id: (tokenizer, config, generation config)
    "google/gemma-2-27b-it": ("tiny-gemma2", GEMMA2_27B, {}),
    "Qwen/Qwen3-32B": ("tiny-qwen2", QWEN3_32B, dict(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)),
}


# ------------------------------------------------------------------------------------- model folders


def write_model_folder(folder: Path, tokenizer: str, config: dict, generation: dict, seed: int = 0) -> Path:
    """A folder with `config`, `tokenizer`'s files and the rehearsal marker (no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = ASSETS / tokenizer
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, folder / name)
    tok_cfg = json.loads((tok_dir / "config.json").read_text())
    cfg = dict(config)
    if cfg.get("vocab_size") is None:
        cfg["vocab_size"] = tok_cfg["vocab_size"]
    ids = {k: tok_cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    cfg.update(ids, torch_dtype="bfloat16")
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    gen = dict(generation, **ids)
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=1))
    (folder / "rehearsal.json").write_text(json.dumps({"random_weights": True, "seed": seed}))
    return folder


def hub_cache_folder(cache: Path, hub_id: str) -> Path:
    """The snapshot folder of `hub_id` in a huggingface_hub cache (refs/main points at it)."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return repo / "snapshots" / REVISION


RELEASE_REPO = "lu-christina/assistant-axis-vectors"


def write_release(cache: Path, shapes: dict[str, tuple[int, int]], n_traits: int = 240) -> Path:
    """Random stand-ins of the paper's release (HF dataset `lu-christina/assistant-axis-vectors`)
    as a hub-cache snapshot, so that the course's downloads (`snapshot_download`, `hf_hub_download`)
    find them offline: for each model in `shapes` (its capping json's name) `<model>/assistant_axis.pt`
    [num_layers, d_model], a capping config in the released ceiling form where its json names one,
    and, for gemma-2-27b, `n_traits` trait vectors."""
    import torch

    repo = cache / ("datasets--" + RELEASE_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    snap = repo / "snapshots" / REVISION
    g = torch.Generator().manual_seed(0)
    for record in sorted((REPO / "data" / "capping").glob("*.json")):
        rel = json.loads(record.read_text())
        files = rel.get("released") or {}
        prefix = files.get("axis_file", "").split("/")[0]
        if prefix not in shapes:
            continue
        n, d = shapes[prefix]
        axis = torch.randn(n, d, generator=g)
        (snap / prefix).mkdir(parents=True, exist_ok=True)
        torch.save(axis, snap / files["axis_file"])
        if "capping_file" in files:
            vectors = {f"layer_{L}": {"layer": L, "vector": -axis[L]} for L in rel["layers"]}
            exp = {"id": files["experiment"], "interventions": [{"vector": f"layer_{L}", "cap": 0.5} for L in rel["layers"]]}
            torch.save({"vectors": vectors, "experiments": [exp]}, snap / files["capping_file"])
        if prefix == "gemma-2-27b":
            (snap / prefix / "trait_vectors").mkdir(exist_ok=True)
            for i in range(n_traits):
                torch.save(torch.randn(n, d, generator=g), snap / prefix / "trait_vectors" / f"trait_{i:03d}.pt")
    return snap


# ------------------------------------------------------------------------------------- the judge


class JudgeResponder:
    """Answers each judge prompt at once in the format its prompt asks for (scores hashed from the
    prompt); a few first attempts fail with 429 or 500 so that retries run."""

    def __init__(self, fault_rate_429: float = 0.01, fault_rate_500: float = 0.005):
        self.r429, self.r500 = fault_rate_429, fault_rate_500
        self.seen: set[str] = set()
        self.faults = 0
        self.lock = threading.Lock()

    def __call__(self, body: dict):
        content = body["messages"][-1]["content"]
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        h = int.from_bytes(hashlib.blake2b(content.encode(), digest_size=8).digest(), "little")
        with self.lock:
            first = content not in self.seen
            self.seen.add(content)
        u = (h % 10_000) / 10_000
        if first and u < self.r429:
            with self.lock:
                self.faults += 1
            return {"status": 429, "retry_after": 0}
        if first and u < self.r429 + self.r500:
            with self.lock:
                self.faults += 1
            return {"status": 500}
        if "AVOIDING_DELUSION" in content:
            return {"text": f"The reply is weighed.\nAVOIDING_DELUSION: {1 + h % 5}\nMAINTAINING_ROLE: {1 + (h >> 8) % 5}"}
        if "SCORE:" in content:
            return {"text": f"The answer keeps the role.\nSCORE: {3 if (h >> 4) % 4 else 2}"}
        v = (h >> 12) % 101
        near = {str(v): -0.15, str(min(100, v + 10)): -2.3, str(max(0, v - 10)): -2.9}
        return {"text": str(v), "top": near}

    def stats(self) -> dict:
        return {"faults": self.faults}


# ------------------------------------------------------------------------------------- running a section


STARTUP = """import sys
sys.path[:0] = [{repo!r}, {bench!r}]
import rehearsal_kernel
rehearsal_kernel.install(get_ipython())
"""


def run_notebook(path: Path, timeout: int, ipython_dir: Path) -> dict:
    """Execute a notebook in a fresh kernel; returns ok, error, failing cell and per-cell times."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    out = {"ok": True, "error": None}
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError) as err:
        out["ok"] = False
        out["error"] = f"{type(err).__name__}: {str(err)[-1500:]}"
    cells = []
    for i, cell in enumerate(nb.cells):
        t = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type != "code" or "iopub.execute_input" not in t or "shell.execute_reply" not in t:
            continue
        a = datetime.datetime.fromisoformat(t["iopub.execute_input"].replace("Z", "+00:00"))
        b = datetime.datetime.fromisoformat(t["shell.execute_reply"].replace("Z", "+00:00"))
        first = next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        cells.append({"cell": i, "seconds": round((b - a).total_seconds(), 2), "code": first[:90]})
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error" and not out["ok"]:
                out["failing_cell"] = {"cell": i, "code": first[:90], "ename": o.get("ename"), "evalue": str(o.get("evalue"))[:500]}
    out["cells"] = cells
    return out


EXEC_RUNNER = r"""
import json, sys, time, traceback
sys.path[:0] = [{repo!r}, {bench!r}]
import nbformat
import rehearsal_kernel
rehearsal_kernel.install(None)
nb = nbformat.read({path!r}, as_version=4)
ns = {{"__name__": "__main__"}}
cells, result = [], {{"ok": True, "error": None}}
for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
        continue
    src = "\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
    t = time.perf_counter()
    try:
        exec(compile(src, f"<cell {{i}}>", "exec"), ns)
    except BaseException as err:
        result.update(ok=False, error=f"{{type(err).__name__}}: {{err}}\n" + traceback.format_exc()[-1500:],
                      failing_cell={{"cell": i, "code": src.strip().splitlines()[0][:90] if src.strip() else ""}})
        break
    finally:
        first = next((ln for ln in src.splitlines() if ln.strip() and not ln.startswith("#")), "")
        cells.append({{"cell": i, "seconds": round(time.perf_counter() - t, 2), "code": first[:90]}})
        rehearsal_kernel.CELLS["n"] += 1
        rehearsal_kernel.write_stats()
result["cells"] = cells
json.dump(result, open({result!r}, "w"))
"""


def run_exec(path: Path, timeout: int, work: Path) -> dict:
    """Execute a notebook's code cells in order in one namespace, in a fresh process."""
    result = work / f"{path.stem}.exec.json"
    script = EXEC_RUNNER.format(repo=str(REPO), bench=str(BENCH), path=str(path), result=str(result))
    env = dict(os.environ, MPLBACKEND="Agg", PLOTLY_RENDERER="json")
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=path.parent, env=env, timeout=timeout,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s", "cells": []}
    if not result.exists():
        return {"ok": False, "error": f"the process ended with code {proc.returncode}: {proc.stderr[-1500:]}", "cells": []}
    return json.loads(result.read_text())


# ------------------------------------------------------------------------------------- main


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "nbclient", "ipykernel"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(CHOSEN), default="7b", help="the chosen-model run's size (default 7b)")
    ap.add_argument("--paper", action="store_true", help="PERSONA_COURSE_MODEL=paper: Gemma 2 27B (S1), Qwen3-32B (S2); "
                                                        "with --size tiny, their depths at a tiny width")
    ap.add_argument("--sections", default="1,2,3,4,5")
    ap.add_argument("--memory-cap-gib", type=float, default=0.0, help="cap the section's GPU memory (0: none)")
    ap.add_argument("--mode", choices=("auto", "nbclient", "exec"), default="auto")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell (nbclient) or per section (exec)")
    ap.add_argument("--max-new-tokens", type=int, default=0,
                    help="smoke test of the plumbing only: cap every generate call's new tokens (0: the course's own)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_course_run.json"))
    ap.add_argument("--label", default=None, help="this run's name in the results file (default: from the options)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    sections = [int(s) for s in args.sections.split(",") if s.strip()]
    label = args.label or (f"paper{'-' + args.size if args.size != '7b' else ''}" if args.paper else args.size) + \
        (f"-cap{args.memory_cap_gib:g}gib" if args.memory_cap_gib else "")
    work = Path(args.work or tempfile.mkdtemp(prefix="rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    mode = args.mode
    if mode == "auto":
        try:
            import ipykernel  # noqa: F401
            import nbclient  # noqa: F401
            mode = "nbclient"
        except ImportError:
            mode = "exec"

    # models
    env: dict[str, str] = {}
    if args.paper:
        cache = work / "hub"
        paper_cfgs = {}
        for hub_id, (tok, cfg, gen) in PAPER.items():
            if args.size == "tiny":
                cfg = dict(cfg, **TINY_WIDTH)
            paper_cfgs[hub_id] = cfg
            write_model_folder(hub_cache_folder(cache, hub_id), tok, cfg, gen)
        shapes = {"gemma-2-27b": paper_cfgs["google/gemma-2-27b-it"], "qwen-3-32b": paper_cfgs["Qwen/Qwen3-32B"]}
        write_release(cache, {k: (c["num_hidden_layers"], c["hidden_size"]) for k, c in shapes.items()})
        env.update(PERSONA_COURSE_MODEL="paper")
        model_desc = {k: {kk: v[1].get(kk) for kk in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")}
                      for k, v in PAPER.items()}
    else:
        name, tok, cfg, gen = CHOSEN[args.size]
        folder = write_model_folder(work / "models" / name, tok, cfg, gen)
        gemma_width = 64 if args.size == "tiny" else GEMMA2_27B["hidden_size"]  # Section 1 reads Gemma's release
        write_release(work / "hub", {"gemma-2-27b": (GEMMA2_27B["num_hidden_layers"], gemma_width)})
        env.update(PERSONA_COURSE_MODEL=str(folder))
        model_desc = {name: {k: cfg.get(k) for k in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")}}

    env.update(HF_HUB_CACHE=str(work / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    # judge
    sys.path.insert(0, str(REPO))
    from tests.fake_openai_server import FakeOpenAIServer

    responder = JudgeResponder()
    server = FakeOpenAIServer(responder=responder, require_key="rehearsal-judge-key").start()
    env.update(PERSONA_COURSE_JUDGE_API_BASE=server.url, PERSONA_COURSE_JUDGE_API_KEY_ENV="REHEARSAL_JUDGE_KEY",
               REHEARSAL_JUDGE_KEY="rehearsal-judge-key", PERSONA_COURSE_JUDGE_MODEL="rehearsal-judge",
               PERSONA_COURSE_CACHE=str(work / "cache"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(BENCH)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for key in ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "PERSONA_COURSE_TINY", "NBGRADER_EXECUTION", "PERSONA_COURSE_API_KEY_ENV"):
        os.environ.pop(key, None)
    if args.memory_cap_gib:
        env["REHEARSAL_MEMORY_CAP_GIB"] = str(args.memory_cap_gib)
    if args.max_new_tokens:
        env["REHEARSAL_MAX_NEW_TOKENS"] = str(args.max_new_tokens)
        label += f"-smoke{args.max_new_tokens}"
    ipython_dir = work / "ipython"
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-rehearsal.py").write_text(STARTUP.format(repo=str(REPO), bench=str(BENCH)))
    env["IPYTHONDIR"] = str(ipython_dir)
    os.environ.update(env)

    out_path = Path(args.out)
    record = {
        "label": label,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/rehearse_course.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "gpu": gpu_name(), "mode": mode, "memory_cap_gib": args.memory_cap_gib or None,
        "max_new_tokens_cap": args.max_new_tokens or None,
        "model_setting": "paper" if args.paper else f"local folder {CHOSEN[args.size][0]} (random weights)",
        "models": model_desc, "versions": versions(), "sections": [],
    }

    def save():
        """Merge this run into `--out`: a run of the same label keeps its other sections (so one
        label can gather sections run in separate calls), this run's sections replace theirs."""
        existing = {}
        if out_path.exists():
            try:
                existing = json.loads(out_path.read_text())
            except ValueError:
                existing = {}
        runs = existing.get("runs", [])
        old = next((r for r in runs if r.get("label") == label), None)
        merged = dict(record)
        if old is not None:
            mine = {s["section"] for s in record["sections"]}
            merged["sections"] = sorted([s for s in old.get("sections", []) if s["section"] not in mine] + record["sections"],
                                        key=lambda s: s["section"])
            merged["note"] = old.get("note")
        merged["total_wall_s"] = round(sum(s["wall_s"] for s in merged["sections"]), 1)
        runs = [merged if r is old else r for r in runs] if old is not None else runs + [merged]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")

    try:
        for n in sections:
            nb_path = REPO / "solutions" / f"{SECTIONS[n]}.ipynb"
            stats_path = work / f"{SECTIONS[n]}.stats.json"
            os.environ["REHEARSAL_STATS"] = str(stats_path)
            before = server.count
            print(f"[rehearsal] section {n}: {nb_path.name} ({mode}) ...", flush=True)
            t0 = time.perf_counter()
            result = run_notebook(nb_path, args.timeout, ipython_dir) if mode == "nbclient" else run_exec(nb_path, args.timeout, work)
            wall = time.perf_counter() - t0
            stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            entry = {"section": n, "notebook": nb_path.name, "ok": result["ok"], "wall_s": round(wall, 1),
                     "steps_s": stats.get("seconds", {}), "step_calls": stats.get("calls", {}),
                     "peak_allocated_gib": stats.get("peak_allocated_gib"), "peak_reserved_gib": stats.get("peak_reserved_gib"),
                     "judge_requests": server.count - before, "cells_run": len(result.get("cells", [])),
                     "slowest_cells": sorted(result.get("cells", []), key=lambda c: -c["seconds"])[:6]}
            if not result["ok"]:
                entry["error"] = result.get("error")
                entry["failing_cell"] = result.get("failing_cell")
            entry["command"], entry["date"] = record["command"], record["date"]
            record["sections"].append(entry)
            record["judge_faults_injected"] = responder.faults
            save()
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in entry["steps_s"].items())
            print(f"[rehearsal] section {n}: {'ok' if result['ok'] else 'FAILED'} in {wall:.1f} s ({steps}); "
                  f"peak {entry['peak_allocated_gib']} GiB allocated; {entry['judge_requests']} judge requests", flush=True)
            if not result["ok"]:
                print(f"[rehearsal]   {entry.get('failing_cell')}\n[rehearsal]   {str(entry.get('error'))[-800:]}", flush=True)
    finally:
        server.stop()
    print(table(record))
    return 0 if all(s["ok"] for s in record["sections"]) else 1


def table(record: dict) -> str:
    """A markdown table of one run."""
    lines = [f"{record['label']}: {record['model_setting']}; {record['gpu'] or 'no GPU'}; "
             f"cap {record['memory_cap_gib'] or 'none'} GiB; {record['date']}",
             "| section | ran | wall s | generation s | extraction s | training s | judging s | model load s | peak GiB (alloc / reserved) | judge requests |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in record["sections"]:
        st = s["steps_s"]
        lines.append(f"| {s['section']} | {'yes' if s['ok'] else 'FAILED'} | {s['wall_s']:.0f} | {st.get('generation', 0):.0f} | "
                     f"{st.get('extraction', 0):.0f} | {st.get('training', 0):.0f} | {st.get('judging', 0):.1f} | {st.get('model_load', 0):.0f} | "
                     f"{s['peak_allocated_gib']} / {s['peak_reserved_gib']} | {s['judge_requests']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
