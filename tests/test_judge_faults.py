"""The judge against a loopback server that misbehaves in every way we know of (a few hundred calls).

Faults (tests/fake_openai_server.py): 429 with and without a usable Retry-After, 5xx, a body cut
off mid-transfer, a connection reset with no answer, malformed JSON, an error body or empty
`choices` in a 200, `"content": null`, 5 MB answers, 400-digit numbers, logprobs of 800 or NaN, a
server that echoes the key, a server that hangs, a closed port. What must hold, for every run:
no batch crashes, no result is lost, a rerun sends no request for what succeeded, no failure is
cached as an answer, and no file written holds the key. Offline, short timeouts, seconds."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from fake_openai_server import FakeOpenAIServer, FaultMix, closed_port_url, judge_answer  # noqa: E402

import utils.api as api  # noqa: E402
import utils.api_settings as api_settings  # noqa: E402
from utils.api import ChatClient  # noqa: E402
from utils.caching import DiskCache  # noqa: E402
from utils.judge import Judge, logprob_score, parse_score  # noqa: E402

KEY = "sk-test-FAULTS-0123456789abcdef"


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    monkeypatch.setattr(api_settings, "_DOTENV_LOADED", True)
    monkeypatch.setattr(api, "_sleep", lambda s: time.sleep(min(s, 0.01)))
    monkeypatch.setenv("PERSONA_COURSE_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("PERSONA_COURSE_API_DEADLINE", raising=False)


def client_for(url, cache_dir, **kw):
    kw.setdefault("timeout", 1.0)
    kw.setdefault("max_retries", 6)
    kw.setdefault("max_workers", 16)
    kw.setdefault("max_response_bytes", 256 * 1024)
    return ChatClient(base_url=url, model="judge-model", api_key=KEY, cache=DiskCache(cache_dir), **kw)


def clean_value(prompt: str, method: str):
    a = judge_answer({"messages": [{"role": "user", "content": prompt}]})
    return logprob_score(a["top"]) if method == "logprobs" else parse_score(a["text"])


def files_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("method", ["logprobs", "text"])
def test_fault_mix_loses_nothing_caches_no_failure_and_reruns_free(tmp_path, method, caplog):
    caplog.set_level(logging.DEBUG)
    mix = FaultMix(rate=0.3, seed=1 if method == "text" else 2, sticky_rate=0.04)
    prompts = [f"Rate answer {i} from 0 to 100. [ANSWER START]text {i}[ANSWER END]" for i in range(300)]
    with FakeOpenAIServer(responder=mix, huge_bytes=1 * 2**20) as server:
        judge = Judge(client_for(server.url, tmp_path / "cache"), mode=method)
        scores = judge.score_many(prompts, progress=False)  # no exception: no crashed batch
        assert len(scores) == len(prompts)
        sticky = dict(mix.sticky)
        for p, s in zip(prompts, scores):
            assert (s.value is None) == (s.reason is not None), (p, s)
            assert s.method == method
            if s.value is not None and p not in sticky:  # the score a clean server gives
                assert s.value == pytest.approx(clean_value(p, method)), (p, s, sticky.get(p))
            elif p not in sticky:  # transient faults are retried away; refusals are answers
                assert "REFUSAL" in s.reason or "probability" in s.reason or "no integer" in s.reason, s
        # the persistent odd answers each end as None with a reason that names what was wrong
        for p, fault in sticky.items():
            s = scores[prompts.index(p)]
            if fault == "huge":
                assert s.value is None and "not read" in s.reason and "max_response_bytes" in s.reason
            elif fault == "bignumber" and method == "text":
                assert s.value is None and "no integer" in s.reason
            elif fault in ("badlogprob", "nanlogprob") and method == "logprobs":
                assert s.value is None and "invalid logprob" in s.reason
        injected = mix.stats()["injected"]
        assert sum(injected.values()) >= 60 and len(injected) >= 10, injected
        # rerun: nothing that succeeded is asked again; what failed is asked again (not cached)
        failed = [p for p, s in zip(prompts, scores) if s.value is None and p in sticky
                  and sticky[p] in ("huge", "badlogprob", "nanlogprob") and (method == "logprobs" or sticky[p] == "huge")]
        before = server.count
        again = Judge(client_for(server.url, tmp_path / "cache"), mode=method).score_many(prompts, progress=False)
        assert [s.value for s in again] == [s.value for s in scores]
        sent = [r["messages"][-1]["content"] for r in server.requests[before:]]
        assert set(sent) <= set(failed), set(sent) - set(failed)
        assert len(set(sent)) == len(failed)
    written = files_text(tmp_path / "cache")
    assert KEY not in written and KEY not in caplog.text
    for s in scores:
        assert KEY not in (s.reason or "")


def test_null_content_is_retried_and_never_cached(tmp_path):
    with FakeOpenAIServer() as server:
        server.push("null", "null", match="q1")
        server.push("null", "null", "null", "null", match="q2")
        client = client_for(server.url, tmp_path / "c", max_retries=3)
        r1, r2 = client.chat_many([[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]],
                                  progress=False)
        assert r1.text == "85" and r1.error is None
        assert r2.text is None and '"content": null' in r2.error
        assert client.chat([{"role": "user", "content": "q2"}]).text == "85"  # asked again: not cached


def test_huge_answers_are_not_read(tmp_path):
    with FakeOpenAIServer(huge_bytes=2 * 2**20) as server:
        server.push("huge", "huge")
        client = client_for(server.url, tmp_path / "c")
        r = client.chat([{"role": "user", "content": "big"}])
        assert r.text is None and "over the 262144-byte limit" in r.error and server.count == 1
        server.push("huge")
        client = client_for(server.url, tmp_path / "c", max_response_bytes=8 * 2**20, max_answer_chars=10_000)
        r = client.chat([{"role": "user", "content": "big"}])
        assert r.text is None and "max_answer_chars" in r.error
        assert not list((tmp_path / "c").rglob("*.json"))


def test_echoed_key_is_scrubbed_from_answers_and_cache(tmp_path):
    with FakeOpenAIServer() as server:
        server.push("echokey")
        client = client_for(server.url, tmp_path / "c")
        r = client.chat([{"role": "user", "content": "who am i"}])
        assert KEY not in r.text and "***" in r.text
        assert KEY not in files_text(tmp_path / "c") and "***" in files_text(tmp_path / "c")
        s = Judge(client_for(server.url, tmp_path / "c"), mode="text").score("who am i")
        assert s.value == 85.0


def test_closed_port_fails_the_batch_fast_with_one_error(tmp_path):
    url = closed_port_url()
    client = client_for(url, tmp_path / "c", max_retries=5)
    t0 = time.perf_counter()
    results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(60)], progress=False)
    assert time.perf_counter() - t0 < 5
    assert all(r.text is None and r.error.startswith(f"unreachable endpoint {url}") for r in results)
    assert "circuit breaker" in results[-1].error
    assert client.request_count <= 3 + 16  # the breaker's threshold, plus attempts already in flight
    assert not list((tmp_path / "c").rglob("*.json"))


def test_silent_endpoint_stops_after_the_first_timeouts(tmp_path):
    with FakeOpenAIServer(hang_seconds=1.5) as server:
        server.responder = lambda body: "hang"
        client = client_for(server.url, tmp_path / "c", timeout=0.3, max_retries=5, max_workers=4)
        t0 = time.perf_counter()
        results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(40)], progress=False)
        took = time.perf_counter() - t0
        assert all(r.text is None for r in results) and took < 3, took
        assert any("timeouts before any answer" in r.error for r in results)
        assert server.count <= 3 + 4


def test_batch_deadline(tmp_path):
    with FakeOpenAIServer(delay=0.2) as server:
        client = client_for(server.url, tmp_path / "c", max_workers=2, deadline=0.7)
        t0 = time.perf_counter()
        results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(30)], progress=False)
        took = time.perf_counter() - t0
        assert took < 2.5, took
        done = [r for r in results if r.text is not None]
        late = [r for r in results if r.text is None]
        assert done and late and all("deadline of 0.7s" in r.error for r in late)
        rerun = client_for(server.url, tmp_path / "c", max_workers=8, deadline=None).chat_many(
            [[{"role": "user", "content": f"q{i}"}] for i in range(30)], progress=False)
        assert all(r.text == "85" for r in rerun) and sum(r.cached for r in rerun) >= len(done)


def test_cut_connection_is_not_called_unreachable(tmp_path):
    with FakeOpenAIServer() as server:
        server.push("truncated", "truncated", "truncated")
        r = client_for(server.url, tmp_path / "c", max_retries=2).chat([{"role": "user", "content": "x"}])
        assert r.text is None and "unreachable" not in r.error and "connection cut" in r.error
        server.push("reset", "reset", "reset")
        r = client_for(server.url, tmp_path / "c", max_retries=2).chat([{"role": "user", "content": "y"}])
        assert r.text is None and "unreachable" not in r.error, r.error


def test_retry_after_variants(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(api, "_sleep", slept.append)
    with FakeOpenAIServer() as server:
        server.push("429ra", "429bad", "429")
        r = client_for(server.url, tmp_path / "c", backoff_base=0.01).chat([{"role": "user", "content": "x"}])
        assert r.text == "85" and slept[0] >= 1 and slept[1] < 1 and len(slept) == 3
