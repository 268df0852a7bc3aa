"""Load test of the judge path: many judge calls through ChatClient against a loopback server.

    python benchmarks/judge_load.py                # 2,000 calls, concurrency 32
    python benchmarks/judge_load.py --calls 500 --concurrency 8 --fault-rate 0.2

It starts tests/fake_openai_server.py on 127.0.0.1 (no network, no key needed)
and runs these passes, each with a fresh cache unless said otherwise:

1. clean (logprobs)   -- every call answered at once (the papers' method);
2. faulty (logprobs)  -- the server answers a share of requests with one of the faults of
                         ``FaultMix``: 429 with/without a usable Retry-After, 500/503, a body cut
                         off, a connection reset, invalid JSON, an error body or empty
                         ``choices`` in a 200, ``"content": null``, a hang longer than the
                         client's timeout, and, for a few prompts, on every request: a 5 MB
                         answer, a 400-digit number, logprobs of 800 or NaN, the key echoed back;
3. rerun              -- pass 2 again on its cache: no request for what succeeded;
4. clean (text), 5. faulty (text) -- the same by parsing the answer text;
6. dead endpoints     -- a closed port and a server that accepts and never answers: the batch
                         stops at the circuit breaker with one error naming the URL.

For each pass it prints calls/s, requests sent, retries, how many calls ended without a score
and why; then the checks: no crashed batch, no lost result, no request on rerun for what
succeeded, no failure cached, no key in any file written. The server runs in child processes
(``--in-process`` keeps it in this one) and adds no latency of its own (``--latency`` adds
some), so the numbers measure the client's overhead, not a real endpoint's speed.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai_server import FakeOpenAIServer, FaultMix, closed_port_url, judge_answer  # noqa: E402

import utils.api as api  # noqa: E402
from utils.api import ChatClient  # noqa: E402
from utils.caching import DiskCache  # noqa: E402
from utils.judge import Judge  # noqa: E402


KEY = "sk-bench-not-a-real-key-0123456789"


def answer_for(body: dict) -> dict:
    return judge_answer(body)


class ServerHandle:
    """A fake server with a fixed responder, in this process or in a child process.

    In a child process (the default) the server does not compete with the client
    for this interpreter's GIL, so the numbers measure the client.
    """

    def __init__(self, responder, latency: float, in_process: bool, hang_seconds: float = 3.0):
        self.in_process = in_process
        if in_process:
            self.server = FakeOpenAIServer(delay=latency, responder=responder, hang_seconds=hang_seconds).start()
            self.url = self.server.url
            return
        ctx = multiprocessing.get_context("fork")
        urls = ctx.Queue()
        self.stop_event = ctx.Event()
        self.proc = ctx.Process(target=_serve, args=(responder, latency, urls, self.stop_event, hang_seconds),
                                daemon=True)
        self.proc.start()
        self.url = urls.get(timeout=30)

    def stats(self) -> dict:
        if self.in_process:
            extra = getattr(self.server.responder, "stats", lambda: {})()
            return {"count": self.server.count, **extra}
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/stats", timeout=10) as r:
            return json.loads(r.read())

    def count(self) -> int:
        return self.stats()["count"]

    def close(self) -> None:
        if self.in_process:
            self.server.stop()
        else:
            self.stop_event.set()
            self.proc.join(timeout=10)


def _serve(responder, latency, urls, stop_event, hang_seconds=3.0) -> None:
    server = FakeOpenAIServer(delay=latency, responder=responder, hang_seconds=hang_seconds).start()
    urls.put(server.url)
    stop_event.wait()
    server.stop()


def _is_answer(reason: str | None) -> bool:
    """A None that is the judge's answer (a refusal, low integer mass, no number in the text)."""
    return bool(reason) and ("probability" in reason or "REFUSAL" in reason or "no integer" in reason)


def _reason_key(reason: str) -> str:
    if _is_answer(reason):
        return "the judge's answer (refusal / no number)"
    for key in ("not read", "max_answer_chars", "invalid logprob", "circuit breaker", "deadline",
                "unreachable endpoint", "timed out", "connection cut", '"content": null'):
        if key in reason:
            return key
    return reason.split(":")[0][:40]


def run_pass(name: str, server, cache_dir: Path, prompts: list[str], concurrency: int, mode: str,
             timeout: float = 10.0) -> dict:
    client = ChatClient(base_url=server.url, model="bench-judge", api_key=KEY,
                        cache=DiskCache(cache_dir), timeout=timeout, max_retries=5,
                        max_workers=concurrency, backoff_base=0.01, backoff_max=0.2)
    judge = Judge(client, mode=mode)
    sent_before = server.count()
    seen_before = server.stats().get("seen", {})
    sleeps: list[float] = []
    real_sleep = api._sleep
    api._sleep = lambda s: (sleeps.append(s), real_sleep(s))  # count backoff sleeps = retries
    crashed = 0
    try:
        t0 = time.perf_counter()
        try:
            scores = judge.score_many(prompts, max_workers=concurrency, progress=False)
        except Exception as e:  # a crashed batch: counted, and reported
            crashed, scores = 1, []
            print(f"  {name}: the batch crashed: {type(e).__name__}: {e}")
        elapsed = time.perf_counter() - t0
    finally:
        api._sleep = real_sleep
    reasons = collections.Counter()
    for s in scores:
        if s.value is None:
            reasons[_reason_key(s.reason or "?")] += 1
    requests = server.count() - sent_before
    seen_after = server.stats().get("seen", {})
    asked = {p for p, n in seen_after.items() if n > seen_before.get(p, 0)}
    return {"name": name, "calls": len(prompts), "seconds": elapsed,
            "calls_per_s": len(prompts) / elapsed, "requests": requests,
            "retries": len(sleeps), "crashed": crashed,
            "lost": len(prompts) - sum(1 for s in scores if (s.value is None) != (s.reason is None)),
            "errors": sum(s.value is None and not _is_answer(s.reason) for s in scores),
            "scored": sum(s.value is not None for s in scores), "none": dict(reasons),
            "scores": [s.value for s in scores], "reasons": [s.reason for s in scores], "asked": asked}


def dead_pass(name: str, url: str, prompts: list[str], concurrency: int, timeout: float) -> dict:
    client = ChatClient(base_url=url, model="bench-judge", api_key=KEY, cache=None, timeout=timeout,
                        max_retries=5, max_workers=concurrency)
    t0 = time.perf_counter()
    scores = Judge(client, mode="text").score_many(prompts, max_workers=concurrency, progress=False)
    elapsed = time.perf_counter() - t0
    errors = collections.Counter((s.reason or "")[:150] for s in scores)
    return {"name": name, "seconds": elapsed, "requests": client.request_count, "calls": len(prompts),
            "all_none": all(s.value is None for s in scores), "errors": errors}


def files_with_key(folder: Path) -> int:
    return sum(KEY in p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--fault-rate", type=float, default=0.10)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds the server waits per request")
    ap.add_argument("--in-process", action="store_true",
                    help="run the server in this process (it then shares the GIL with the client)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # retry warnings would flood the output

    import openai

    print(f"judge_load: {args.calls} judge calls, concurrency {args.concurrency}, "
          f"fault rate {args.fault_rate:.0%} in the faulty passes, server latency {args.latency}s")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"openai {openai.__version__}")
    prompts = [f"Rate answer #{i} from 0 to 100. [ANSWER START]answer text {i}[ANSWER END]"
               for i in range(args.calls)]
    faults = [f for f in FaultMix.TRANSIENT + FaultMix.STICKY] + ["hang"]
    # Start the servers first: forking happens before any client thread exists.
    clean_server = ServerHandle(FaultMix(0.0), args.latency, args.in_process)
    faulty_lp = ServerHandle(FaultMix(args.fault_rate, faults, seed=1), args.latency, args.in_process, hang_seconds=3.0)
    faulty_tx = ServerHandle(FaultMix(args.fault_rate, faults, seed=2), args.latency, args.in_process, hang_seconds=3.0)
    silent = ServerHandle(lambda body: "hang", 0.0, args.in_process, hang_seconds=60.0)
    print(f"server: {'in this process' if args.in_process else 'in child processes'}; faults: {', '.join(faults)}")
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            c = args.concurrency
            results.append(run_pass("clean (logprobs)", clean_server, tmp / "c1", prompts, c, "logprobs"))
            results.append(run_pass("faulty (logprobs)", faulty_lp, tmp / "c2", prompts, c, "logprobs", timeout=1.0))
            results.append(run_pass("rerun of faulty (logprobs)", faulty_lp, tmp / "c2", prompts, c, "logprobs",
                                    timeout=1.0))
            results.append(run_pass("clean (text)", clean_server, tmp / "c3", prompts, c, "text"))
            results.append(run_pass("faulty (text)", faulty_tx, tmp / "c4", prompts, c, "text", timeout=1.0))
            results.append(run_pass("rerun of faulty (text)", faulty_tx, tmp / "c4", prompts, c, "text", timeout=1.0))
            n_dead = min(500, args.calls)
            dead = [dead_pass("closed port", closed_port_url(), prompts[:n_dead], c, timeout=10.0),
                    dead_pass("silent endpoint (timeout 2 s)", silent.url, prompts[:n_dead], c, timeout=2.0)]
            key_files = sum(files_with_key(tmp / d) for d in ("c1", "c2", "c3", "c4"))
            n_files = {d: sum(1 for _ in (tmp / d).rglob("*.json")) for d in ("c2", "c4")}
            stats = {"logprobs": faulty_lp.stats(), "text": faulty_tx.stats()}
    finally:
        for h in (clean_server, faulty_lp, faulty_tx, silent):
            h.close()

    print()
    print(f"{'pass':<28} {'calls':>6} {'seconds':>8} {'calls/s':>8} {'requests':>9} {'retries':>8} "
          f"{'scored':>7}  no score (reason: count)")
    for r in results:
        print(f"{r['name']:<28} {r['calls']:>6} {r['seconds']:>8.2f} {r['calls_per_s']:>8.0f} "
              f"{r['requests']:>9} {r['retries']:>8} {r['scored']:>7}  {r['none'] or '-'}")
    for d in dead:
        (err, n), = d["errors"].most_common(1)
        print(f"{d['name']:<28} {d['calls']:>6} {d['seconds']:>8.2f} {d['calls'] / d['seconds']:>8.0f} "
              f"{d['requests']:>9}  every call None: {d['all_none']}; e.g. {err!r}")
    print()
    ok = True
    for mode, (clean, faulty, rerun) in (("logprobs", results[0:3]), ("text", (results[3], results[4], results[5]))):
        st = stats[mode]
        injected, sticky = st["injected"], st["sticky"]
        print(f"[{mode}] faults injected: {dict(sorted(injected.items()))} (total {sum(injected.values())}); "
              f"prompts with a persistent odd answer: {len(sticky)}")
        same = all(f is None or f == cl or p in sticky
                   for p, cl, f in zip(prompts, clean["scores"], faulty["scores"]))
        transient_lost = sum(1 for p, cl, f in zip(prompts, clean["scores"], faulty["scores"])
                             if f is None and cl is not None and p not in sticky)
        succeeded = {p for p, v, why in zip(prompts, faulty["scores"], faulty["reasons"]) if v is not None or _is_answer(why)}
        asked_again = len(rerun["asked"] & succeeded)
        failed = [p for p, v, why in zip(prompts, faulty["scores"], faulty["reasons"]) if v is None and not _is_answer(why)]
        print(f"[{mode}] crashed batches: {clean['crashed'] + faulty['crashed'] + rerun['crashed']}; "
              f"results lost: {clean['lost'] + faulty['lost'] + rerun['lost']}; "
              f"scores equal to the clean pass's: {same}; transient faults not retried away: {transient_lost}")
        print(f"[{mode}] rerun: {rerun['requests']} requests, for {len(rerun['asked'])} prompts, all of them calls "
              f"that had failed ({len(failed)}: persistent odd answers, never cached); requests for calls that "
              f"had succeeded: {asked_again}; cache entries: {n_files['c2' if mode == 'logprobs' else 'c4']} "
              f"(one per answered call: {len(succeeded)})")
        ok &= (same and asked_again == 0 and transient_lost == 0
               and clean["crashed"] + faulty["crashed"] + rerun["crashed"] == 0
               and clean["lost"] + faulty["lost"] + rerun["lost"] == 0
               and n_files["c2" if mode == "logprobs" else "c4"] == len(succeeded))
    print(f"files written that hold the key: {key_files}")
    ok &= key_files == 0 and all(d["all_none"] for d in dead)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
