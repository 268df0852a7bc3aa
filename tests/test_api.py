"""Tests of utils.caching and utils.api against a loopback fake of the OpenAI API.

Everything runs offline: the only server is tests/fake_openai_server.py on
127.0.0.1. Backoff sleeps are patched out (and recorded) to keep this fast.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from fake_openai_server import FakeOpenAIServer, closed_port_url, fake_server  # noqa: E402,F401

import utils.api as api  # noqa: E402
import utils.api_settings as api_settings  # noqa: E402
from utils.api import ChatClient, ChatResult  # noqa: E402
from utils.api_settings import MissingAPIKeyError  # noqa: E402
from utils.caching import (  # noqa: E402
    DiskCache, atomic_write_bytes, atomic_write_json, cached_call, load_json, request_key)

KEY = "sk-test-SECRET-0123456789abcdef"
ENV_VARS = ["PERSONA_COURSE_API_BASE", "PERSONA_COURSE_API_KEY_ENV", "PERSONA_COURSE_GEN_MODEL",
            "PERSONA_COURSE_JUDGE_MODEL", "PERSONA_COURSE_JUDGE_API_BASE",
            "PERSONA_COURSE_JUDGE_API_KEY_ENV", "PERSONA_COURSE_JUDGE_LOGPROBS",
            "PERSONA_COURSE_MAX_WORKERS", "OPENROUTER_API_KEY", "OPENAI_API_KEY", "MY_KEY",
            "PERSONA_COURSE_TINY", "NBGRADER_EXECUTION"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PERSONA_COURSE_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setattr(api_settings, "_DOTENV_LOADED", True)  # never read the repo's real .env


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Backoff sleeps, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(api, "_sleep", recorded.append)
    return recorded


@pytest.fixture
def cache(tmp_path):
    return DiskCache(tmp_path / "cache")


@pytest.fixture
def make_client(fake_server, cache):
    def make(**kw):
        kw.setdefault("base_url", fake_server.url)
        kw.setdefault("model", "test-model")
        kw.setdefault("api_key", KEY)
        kw.setdefault("cache", cache)
        kw.setdefault("timeout", 0.5)
        kw.setdefault("max_retries", 3)
        return ChatClient(**kw)
    return make


def user(text):
    return [{"role": "user", "content": text}]


def cache_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).rglob("*") if p.is_file())


# --------------------------------------------------------------------------
# utils.caching
# --------------------------------------------------------------------------
def test_request_key_is_canonical_and_ignores_secrets():
    a = {"base_url": "u", "model": "m", "messages": user("hi"), "temperature": 0.0, "max_tokens": 5}
    b = {"max_tokens": 5, "temperature": 0, "messages": user("hi"), "model": "m", "base_url": "u"}
    assert request_key(a) == request_key(b)
    assert request_key({**a, "api_key": KEY}) == request_key(a)
    assert request_key({**a, "headers": {"Authorization": KEY}}) == request_key(a)
    assert request_key({**a, "model": "m2"}) != request_key(a)
    assert request_key({**a, "temperature": 0.7}) != request_key(a)
    assert request_key({**a, "base_url": "v"}) != request_key(a)
    assert len(request_key(a)) == 64
    with pytest.raises(TypeError):
        request_key({"x": object()})


def test_disk_cache_roundtrip_and_corrupt_files_are_misses(cache):
    key = request_key({"q": 1})
    assert cache.get(key) is None
    cache.put(key, {"text": "85"})
    assert cache.get(key) == {"text": "85"}
    path = cache.path_for(key)
    assert path.parent.name == key[:2] and path.exists()
    good = path.read_bytes()
    for bad in (good[: len(good) // 2], b"", b"\xff\xfe garbage", b"[1, 2]",
                json.dumps({"key": "0" * 64, "value": {"text": "x"}}).encode()):
        path.write_bytes(bad)
        assert cache.get(key) is None  # a miss, not a crash
    cache.put(key, {"text": "90"})  # overwritten
    assert cache.get(key) == {"text": "90"}
    assert key in cache and len(cache) == 1
    with pytest.raises(ValueError):
        cache.path_for("../../etc/passwd")


def test_atomic_write_and_load_json(tmp_path):
    p = tmp_path / "a" / "b" / "step.json"
    atomic_write_json(p, {"scores": [1, 2, None]})
    assert load_json(p) == {"scores": [1, 2, None]}
    assert load_json(tmp_path / "missing.json", default=[]) == []
    p.write_text('{"scores": [1, 2')
    assert load_json(p, default="dflt") == "dflt"
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert not list(tmp_path.rglob(".tmp-*"))


def test_cached_call(cache):
    calls = []
    fn = lambda: calls.append(1) or {"v": len(calls)}  # noqa: E731
    assert cached_call(cache, {"step": "s", "x": 1}, fn) == {"v": 1}
    assert cached_call(cache, {"step": "s", "x": 1}, fn) == {"v": 1}
    assert len(calls) == 1
    assert cached_call(cache, {"step": "fails"}, lambda: None) is None  # failures not cached
    assert cached_call(None, {"step": "s"}, fn) == {"v": 2}


def test_threads_hammering_the_cache_leave_no_corrupt_files(cache):
    keys = [request_key({"k": i}) for i in range(16)]
    errors: list[BaseException] = []

    def worker(seed: int):
        try:
            for j in range(150):
                key = keys[(seed * 7 + j) % len(keys)]
                value = {"text": "x" * (1 + (seed * j) % 3000), "seed": seed, "j": j}
                cache.put(key, value)
                got = cache.get(key)
                assert got is not None and got["text"] == "x" * len(got["text"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    files = cache_files(cache.directory)
    assert not [f for f in files if f.name.startswith(".tmp-")], "stray temp files"
    assert len(files) == len(keys)
    for f in files:
        entry = json.loads(f.read_text())
        assert entry["key"] == f.stem and isinstance(entry["value"], dict)


HAMMER_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from utils.caching import DiskCache, request_key
cache = DiskCache(sys.argv[2])
keys = [request_key({"k": i}) for i in range(8)]
seed = int(sys.argv[3])
for j in range(200):
    key = keys[(seed + j) % len(keys)]
    cache.put(key, {"text": "y" * (1 + (seed * 31 + j * 17) % 5000), "seed": seed})
    got = cache.get(key)
    assert got is not None and got["text"] == "y" * len(got["text"]), got
"""


def test_processes_sharing_a_cache_leave_no_corrupt_files(cache):
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER_SCRIPT, str(ROOT), str(cache.directory),
                               str(seed)]) for seed in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    files = cache_files(cache.directory)
    assert len(files) == 8 and not [f for f in files if f.name.startswith(".tmp-")]
    for f in files:
        assert cache.get(f.stem) is not None


# --------------------------------------------------------------------------
# ChatClient: success, cache, request shape
# --------------------------------------------------------------------------
def test_chat_ok_then_cached(make_client, fake_server, cache):
    client = make_client()
    r = client.chat(user("hello"), max_tokens=7, temperature=0.5, seed=3)
    assert r == ChatResult(text="85", top_logprobs=None, error=None, cached=False, finish_reason="stop")
    assert fake_server.count == 1 and client.request_count == 1
    body = fake_server.requests[0]
    assert body["model"] == "test-model" and body["messages"] == user("hello")
    assert body["max_tokens"] == 7 and body["temperature"] == 0.5 and body["seed"] == 3
    assert "base_url" not in body and "cache_salt" not in body
    assert fake_server.headers[0]["authorization"] == f"Bearer {KEY}"

    again = make_client().chat(user("hello"), max_tokens=7, temperature=0.5, seed=3)
    assert again.text == "85" and again.cached
    assert fake_server.count == 1  # no new request
    # any change to the request is a different key
    make_client().chat(user("hello"), max_tokens=7, temperature=0.5, seed=4)
    assert fake_server.count == 2
    # cache_salt: another sample of the same prompt, salt never sent
    make_client().chat(user("hello"), max_tokens=7, temperature=0.5, seed=3, cache_salt=1)
    assert fake_server.count == 3 and "cache_salt" not in fake_server.requests[-1]


def test_chat_logprobs_request(make_client, fake_server):
    r = make_client().chat(user("rate"), max_tokens=1, top_logprobs=20)
    body = fake_server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert r.text == "85"
    assert {"token": "85", "logprob": -0.2} in r.top_logprobs
    assert all(set(t) == {"token", "logprob"} for t in r.top_logprobs)


def test_cached_answer_needs_no_key(make_client, fake_server, cache):
    make_client().chat(user("once"))
    keyless = make_client(api_key=None)
    assert keyless.chat(user("once")).cached  # served from disk, no key needed
    with pytest.raises(MissingAPIKeyError):
        keyless.chat(user("a new question"))


# --------------------------------------------------------------------------
# retries
# --------------------------------------------------------------------------
def test_retries_every_transient_fault_with_backoff(make_client, fake_server, sleeps):
    fake_server.sleep_seconds = 1.5
    faults = ["429", "500", "503", "timeout", "truncated", "badjson", "nochoices"]
    fake_server.push(*faults, {"text": "42"})
    client = make_client(max_retries=len(faults), timeout=0.3, backoff_base=1.0, backoff_max=60)
    r = client.chat(user("flaky"))
    assert r.text == "42" and r.error is None
    assert fake_server.count == len(faults) + 1 == client.request_count
    assert len(sleeps) == len(faults)
    for n, delay in enumerate(sleeps):  # exponential caps 1, 2, 4, ... with jitter in [cap/2, cap]
        cap = min(60, 2 ** n)
        assert cap / 2 <= delay <= cap, (n, delay)


def test_gives_up_with_reason_and_does_not_cache_errors(make_client, fake_server, sleeps):
    fake_server.push("500", "500", "500", "500")
    client = make_client(max_retries=3)
    r = client.chat(user("down"))
    assert r.text is None and r.error.startswith("gave up after 4 attempts: HTTP 500")
    assert fake_server.count == 4 and len(sleeps) == 3
    r2 = client.chat(user("down"))  # the error was not cached: asks again
    assert r2.text == "85" and fake_server.count == 5


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(make_client, fake_server, sleeps, status):
    fake_server.push(status)
    r = make_client().chat(user("bad"))
    assert r.text is None and r.error.startswith(f"HTTP {status}")
    assert fake_server.count == 1 and sleeps == []


def test_retry_after_header_is_honoured(make_client, fake_server, sleeps):
    fake_server.push({"status": 429, "retry_after": 7})
    r = make_client(backoff_base=0.1).chat(user("slow down"))
    assert r.text == "85" and sleeps and sleeps[0] >= 7


def test_unreachable_endpoint_ends_as_none_with_reason(cache, sleeps):
    url = closed_port_url()
    client = ChatClient(base_url=url, model="m", api_key=KEY, cache=cache, timeout=0.5, max_retries=2)
    r = client.chat(user("anyone there?"))
    assert r.text is None and r.error.startswith(f"unreachable endpoint {url}")
    assert client.request_count == 3 and len(sleeps) == 2
    assert cache_files(cache.directory) == []  # nothing cached
    many = client.chat_many([user("a"), user("b")], progress=False)
    assert all(x.text is None and "unreachable endpoint" in x.error for x in many)


# --------------------------------------------------------------------------
# settings, keys and secrets
# --------------------------------------------------------------------------
def test_missing_key_is_a_clear_error_on_first_call(monkeypatch, cache):
    client = ChatClient(model="m", cache=cache)  # constructing is fine
    with pytest.raises(MissingAPIKeyError) as e:
        client.chat(user("hi"))
    assert isinstance(e.value, RuntimeError)
    assert "OPENROUTER_API_KEY" in str(e.value) and "OPENAI_API_KEY" in str(e.value)
    with pytest.raises(MissingAPIKeyError):
        client.chat_many([user("a"), user("b")], progress=False)
    monkeypatch.setenv("PERSONA_COURSE_API_KEY_ENV", "MY_KEY")
    with pytest.raises(MissingAPIKeyError, match="MY_KEY"):
        ChatClient(model="m", cache=cache).chat(user("hi"))


def test_key_from_named_env_var_and_fallback(monkeypatch, fake_server, cache):
    monkeypatch.setenv("PERSONA_COURSE_API_BASE", fake_server.url)
    monkeypatch.setenv("PERSONA_COURSE_API_KEY_ENV", "MY_KEY")
    monkeypatch.setenv("MY_KEY", KEY)
    assert ChatClient(model="m", cache=None).chat(user("a")).text == "85"
    assert fake_server.headers[-1]["authorization"] == f"Bearer {KEY}"
    monkeypatch.delenv("MY_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback-key-123456")
    assert ChatClient(model="m", cache=None).chat(user("b")).text == "85"
    assert fake_server.headers[-1]["authorization"] == "Bearer sk-fallback-key-123456"


def test_dotenv_parser(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("# comment\nexport MY_KEY='sk-from-dotenv'\nPERSONA_COURSE_GEN_MODEL=qwen/x # note\n"
                   'PERSONA_COURSE_JUDGE_MODEL="a b"\nnot a line\nOPENAI_API_KEY=keep-me\n')
    monkeypatch.setenv("OPENAI_API_KEY", "already-set")
    found = api_settings.load_dotenv(env)
    assert found["MY_KEY"] == "sk-from-dotenv"
    assert os.environ["MY_KEY"] == "sk-from-dotenv"
    assert os.environ["PERSONA_COURSE_GEN_MODEL"] == "qwen/x"
    assert os.environ["PERSONA_COURSE_JUDGE_MODEL"] == "a b"
    assert os.environ["OPENAI_API_KEY"] == "already-set"  # not overridden
    assert api_settings.load_dotenv(tmp_path / "nope.env") == {}


def test_factories_read_settings(monkeypatch):
    monkeypatch.setenv("PERSONA_COURSE_API_BASE", "http://localhost:8000/v1/")
    monkeypatch.setenv("PERSONA_COURSE_GEN_MODEL", "Qwen/Qwen2.5-7B-Instruct")
    gen = api.get_generation_client(cache=None)
    assert gen.base_url == "http://localhost:8000/v1" and gen.model == "Qwen/Qwen2.5-7B-Instruct"
    judge = api.get_judge_client(cache=None)
    assert judge.model == "openai/gpt-4.1-mini" and judge.base_url == gen.base_url
    monkeypatch.setenv("PERSONA_COURSE_JUDGE_API_BASE", "https://api.openai.com/v1")
    monkeypatch.setenv("PERSONA_COURSE_JUDGE_LOGPROBS", "1")
    judge = api.get_judge_client(cache=None)
    assert judge.model == "gpt-4.1-mini" and judge.logprobs is True
    monkeypatch.delenv("PERSONA_COURSE_API_BASE")
    assert api.get_generation_client(cache=None).base_url == "https://openrouter.ai/api/v1"


def test_key_never_leaks(make_client, fake_server, cache, caplog, sleeps):
    caplog.set_level(logging.DEBUG)  # every logger, including openai and httpx
    client = make_client()
    assert KEY not in repr(client) and KEY not in str(client)
    client.chat(user("fine"))
    client.chat_many([user(f"q{i}") for i in range(5)], progress=False)
    fake_server.push("500", "429")
    client.chat(user("flaky"))  # logs retry warnings
    fake_server.require_key = "sk-the-right-key-999999"  # the server echoes the wrong key it got
    bad = client.chat(user("rejected"))
    assert bad.text is None and bad.error.startswith("HTTP 401") and KEY not in bad.error
    assert "***" in bad.error
    for f in cache_files(cache.directory):
        assert KEY not in f.read_text()
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # we did log something
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text
    with pytest.raises(MissingAPIKeyError) as e:
        make_client(api_key=None).chat(user("no key"))
    assert KEY not in str(e.value)


# --------------------------------------------------------------------------
# chat_many: order, cache, concurrency, interruption
# --------------------------------------------------------------------------
def echo_number(body):
    return {"text": body["messages"][-1]["content"].split()[-1]}


def test_chat_many_in_order_and_rerun_is_free(make_client, fake_server):
    fake_server.responder = echo_number
    prompts = [user(f"question {i}") for i in range(30)]
    client = make_client(max_workers=6)
    results = client.chat_many(prompts, max_tokens=4, progress=False)
    assert [r.text for r in results] == [str(i) for i in range(30)]
    assert fake_server.count == 30 and not any(r.cached for r in results)
    again = make_client().chat_many(prompts, max_tokens=4, progress=True)
    assert [r.text for r in again] == [str(i) for i in range(30)]
    assert all(r.cached for r in again) and fake_server.count == 30  # zero new requests


def test_chat_many_faults_each_end_as_text_or_reason(make_client, fake_server, sleeps):
    fake_server.responder = echo_number
    fake_server.push("429", "500", match="question 1")
    fake_server.push("400", match="question 2")
    fake_server.push("500", "500", "500", "500", match="question 3")
    prompts = [user(f"question {i}") for i in range(6)]
    results = make_client(max_retries=3).chat_many(prompts, progress=False)
    assert [r.text for r in results] == ["0", "1", None, None, "4", "5"]
    assert results[2].error.startswith("HTTP 400")
    assert results[3].error.startswith("gave up after 4 attempts")
    assert all((r.text is None) == (r.error is not None) for r in results)


def test_chat_many_sends_duplicates_once(make_client, fake_server):
    results = make_client().chat_many([user("same")] * 5 + [user("other")], progress=False)
    assert [r.text for r in results] == ["85"] * 6 and fake_server.count == 2


def test_interrupted_batch_loses_no_finished_result(make_client, fake_server, cache):
    fake_server.responder = echo_number
    fake_server.delay = 0.01
    prompts = [user(f"question {i}") for i in range(40)]
    delivered: list[int] = []

    def stop_after_five(i, result):
        delivered.append(i)
        if len(delivered) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_client(max_workers=3).chat_many(prompts, progress=False, on_result=stop_after_five)
    time.sleep(0.3)  # let the calls that were in flight finish (they are cached too)
    sent_before = fake_server.count
    assert sent_before < 40, "queued calls should have been cancelled"
    results = make_client().chat_many(prompts, progress=False)
    assert [r.text for r in results] == [str(i) for i in range(40)]
    assert all(results[i].cached for i in delivered)
    n_cached = sum(r.cached for r in results)
    assert n_cached >= 5
    assert fake_server.count - sent_before == 40 - n_cached  # nothing paid twice


CRASH_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from utils.api import ChatClient
from utils.caching import DiskCache
client = ChatClient(base_url=sys.argv[2], model="test-model", api_key="sk-test-SECRET-0123456789abcdef",
                    cache=DiskCache(sys.argv[3]), max_workers=2)
prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(40)]
def report(i, r):
    print(i, r.text, flush=True)
client.chat_many(prompts, progress=False, on_result=report)
print("finished", flush=True)
"""


def test_process_killed_mid_batch_loses_no_finished_result(make_client, fake_server, cache):
    fake_server.responder = echo_number
    fake_server.delay = 0.03
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(ROOT), fake_server.url,
                             str(cache.directory)], stdout=subprocess.PIPE, text=True)
    done: list[int] = []
    try:
        for line in proc.stdout:
            done.append(int(line.split()[0]))
            if len(done) == 6:
                proc.kill()  # SIGKILL: no cleanup, no finally blocks
                break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(done) == 6 and proc.returncode != 0
    # requests the killed process had already sent may still reach the server: let them land
    settled = -1
    while settled != fake_server.count:
        settled = fake_server.count
        time.sleep(0.3)
    sent_before = fake_server.count
    assert sent_before < 40
    for f in cache_files(cache.directory):  # every file on disk is complete
        if not f.name.startswith(".tmp-"):
            assert json.loads(f.read_text())["key"] == f.stem
    results = make_client().chat_many([user(f"question {i}") for i in range(40)], progress=False)
    assert [r.text for r in results] == [str(i) for i in range(40)]
    assert all(results[i].cached for i in done)
    n_cached = sum(r.cached for r in results)
    assert fake_server.count - sent_before == 40 - n_cached


def test_chat_never_raises_on_odd_input(make_client):
    r = make_client().chat(user("x"), stop=object())  # not JSON-able
    assert r.text is None and r.error.startswith("invalid request")
