"""A scriptable fake of the OpenAI chat-completions API, for tests and benchmarks.

It is a real HTTP server (``http.server`` in a background thread) bound to
127.0.0.1 on an ephemeral port, so the ``openai`` client talks to it exactly as
it would talk to OpenRouter, OpenAI or a vLLM server: same URL layout
(``POST /v1/chat/completions``), same JSON bodies, same status codes.

Each request consumes one *behaviour* from a script. Behaviours are dicts (or
short strings, see ``_normalise``):

======================  =========================================================
``"ok"``                200 with the default answer (``default_text``), and the
                        default logprobs when the request asked for logprobs
``{"text": "85"}``      200 whose message content is ``"85"``
``{"top": {"85": -0.1}}``  200 whose first token carries these top logprobs
``"refusal"``           200 with content ``"REFUSAL"``
``"garbage"``           200 with a non-numeric answer
``429`` / ``500`` ...   that status with an OpenAI-style error body
``"timeout"``           sleep ``sleep_seconds`` (default 2 s) before answering
``"truncated"``         headers promise a body longer than what is sent, then
                        the connection closes (a cut-off transfer)
``"badjson"``           a complete HTTP response whose JSON body is cut in half
``"nochoices"``         valid JSON without ``choices`` (an error-shaped 200)
``"nologprobs"``        200 with the default answer but no logprobs even if asked
``"null"``              200 whose message content is ``null`` (a transient empty reply)
``"emptychoices"``      200 with ``"choices": []``
``"errorbody"``         200 whose body is only an error object (no ``choices``)
``"huge"``              200 whose answer is ``huge_bytes`` long (default 5 MB)
``"hang"``              accept the request and send nothing for ``hang_seconds``
``"reset"``             close the connection without any response
``"badlogprob"``        200 whose first token ``"85"`` has logprob 800 (not a log-probability)
``"nanlogprob"``        200 whose first token's logprob is NaN
``"bignumber"``         200 whose answer is a 400-digit number
``"echokey"``           200 whose answer repeats the ``Authorization`` header it received
``"429ra"``             429 with ``Retry-After: 1``
``"429bad"``            429 with an unparsable ``Retry-After``
======================  =========================================================

:class:`FaultMix` is a responder that answers like a judge but answers a share of requests with
one of these faults, at random (seeded), and counts what it injected.

Scripts are per *match*: ``server.push("429", "ok", match="question 3")`` makes
the next two requests whose last message contains ``"question 3"`` answer 429
then ok. ``server.push(...)`` without ``match`` fills the global queue, used
when no matching per-prompt script is pending. When every queue is empty the
``responder`` callable (if set) decides, else ``"ok"``.

The server counts requests (``server.count``) and keeps their JSON bodies and
headers (``server.requests``), so tests can check that cached items are not
sent again. ``require_key`` makes it answer 401 to a wrong key, echoing the key
it received in the error message (as some providers do), which lets tests
check that the client scrubs secrets from error text.

``GET /stats`` returns ``{"count": ...}`` (plus ``responder.stats()`` if the
responder has that method), for clients in another process.

Pytest fixture: ``fake_server`` (import it into a test module).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

DEFAULT_TOP = {"85": -0.2, "90": -2.0, "80": -2.5, "The": -4.0}

Behaviour = dict[str, Any]


def _normalise(b: Any) -> Behaviour:
    if isinstance(b, dict):
        return dict(b)
    if isinstance(b, int):
        return {"status": b}
    if isinstance(b, str):
        if b.isdigit():
            return {"status": int(b)}
        named = {
            "ok": {},
            "refusal": {"text": "REFUSAL"},
            "garbage": {"text": "I would rather describe the answer in words."},
            "timeout": {"sleep": None},
            "truncated": {"truncated": True},
            "badjson": {"badjson": True},
            "nochoices": {"nochoices": True},
            "nologprobs": {"no_logprobs": True},
            "null": {"text": None},
            "emptychoices": {"emptychoices": True},
            "errorbody": {"nochoices": True},
            "huge": {"huge": True},
            "hang": {"hang": True},
            "reset": {"reset": True},
            "badlogprob": {"text": "85", "top": {"85": 800.0, "90": -2.0}},
            "nanlogprob": {"text": "85", "top": {"85": float("nan"), "90": -2.0}},
            "bignumber": {"text": "9" * 400},
            "echokey": {"echo_key": True},
            "429ra": {"status": 429, "retry_after": 1},
            "429bad": {"status": 429, "retry_after": "soon"},
        }
        if b in named:
            return dict(named[b])
    raise ValueError(f"unknown fake-server behaviour: {b!r}")


def completion_body(model: str, text: str | None, top: dict[str, float] | None,
                    finish_reason: str = "stop") -> dict:
    """An OpenAI chat.completion JSON body with optional first-token top logprobs."""
    logprobs = None
    if top is not None:
        first = text[:1] if text else (next(iter(top)) if top else "")
        first_lp = top.get(first, max(top.values()) if top else 0.0)
        logprobs = {
            "content": [{
                "token": first,
                "logprob": first_lp,
                "bytes": list(first.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())}
                    for t, lp in sorted(top.items(), key=lambda kv: -kv[1])
                ],
            }],
            "refusal": None,
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


def _last_content(body: dict) -> str:
    try:
        content = body["messages"][-1]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # handler threads never block shutdown
    request_queue_size = 256  # listen() backlog: many clients connect at once


class FakeOpenAIServer:
    """Start with ``start()`` (or use as a context manager); ``url`` is the base URL."""

    def __init__(self, default_text: str = "85", default_top: dict[str, float] | None = None,
                 sleep_seconds: float = 2.0, delay: float = 0.0,
                 responder: Callable[[dict], Any] | None = None,
                 require_key: str | None = None, hang_seconds: float = 3.0,
                 huge_bytes: int = 5 * 2**20):
        self.default_text = default_text
        self.default_top = dict(DEFAULT_TOP if default_top is None else default_top)
        self.sleep_seconds = sleep_seconds
        self.delay = delay  # added to every answer (simulates model latency)
        self.responder = responder
        self.require_key = require_key
        self.hang_seconds = hang_seconds
        self.huge_bytes = huge_bytes
        self.count = 0
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._queues: dict[str | None, deque] = {None: deque()}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- scripting ---------------------------------------------------------
    def push(self, *behaviours: Any, match: str | None = None) -> None:
        with self._lock:
            q = self._queues.setdefault(match, deque())
            q.extend(_normalise(b) for b in behaviours)

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.requests.clear()
            self.headers.clear()
            self._queues = {None: deque()}

    def _next_behaviour(self, body: dict) -> Behaviour:
        content = _last_content(body)
        with self._lock:
            self.count += 1
            self.requests.append(body)
            for match, q in self._queues.items():
                if match is not None and q and match in content:
                    return q.popleft()
            if self._queues[None]:
                return self._queues[None].popleft()
        if self.responder is not None:
            return _normalise(self.responder(body))
        return {}

    # ---- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real endpoints
            # Headers and body leave in one write (flushed after each request), and
            # without Nagle: otherwise every answer waits ~40 ms for a delayed ACK.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # silence stderr
                pass

            def _send_json(self, status: int, obj: Any, extra_headers: dict | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra_headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                # GET /stats: the request count (and the responder's own stats, if it has any),
                # for a client in another process.
                if self.path.rstrip("/") != "/stats":
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                stats = {"count": server.count}
                extra = getattr(server.responder, "stats", None)
                if callable(extra):
                    stats.update(extra())
                self._send_json(200, stats)

            def do_POST(self) -> None:  # noqa: N802
                try:
                    self._handle()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send_json(400, {"error": {"message": "invalid JSON body"}})
                    return
                with server._lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                auth = self.headers.get("Authorization", "")
                if server.require_key is not None and auth != f"Bearer {server.require_key}":
                    with server._lock:
                        server.count += 1
                        server.requests.append(body)
                    got = auth.removeprefix("Bearer ")
                    self._send_json(401, {"error": {
                        "message": f"Incorrect API key provided: {got}",
                        "type": "invalid_request_error", "code": "invalid_api_key"}})
                    return
                b = server._next_behaviour(body)
                if b.get("reset"):
                    self.close_connection = True
                    try:
                        import socket

                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if b.get("hang"):
                    time.sleep(server.hang_seconds)
                    self.close_connection = True
                    return
                if server.delay:
                    time.sleep(server.delay)
                if "sleep" in b:
                    time.sleep(server.sleep_seconds if b["sleep"] is None else b["sleep"])
                if "status" in b and b["status"] != 200:
                    headers = {}
                    if b.get("retry_after") is not None:
                        headers["Retry-After"] = str(b["retry_after"])
                    self._send_json(b["status"], {"error": {
                        "message": b.get("message", f"fake error {b['status']}"),
                        "type": "fake_error", "code": b["status"]}}, headers)
                    return
                model = body.get("model", "fake-model")
                if b.get("nochoices"):
                    self._send_json(200, {"error": {"message": "upstream provider failed",
                                                    "code": 502}})
                    return
                if b.get("emptychoices"):
                    self._send_json(200, {**completion_body(model, "x", None), "choices": []})
                    return
                text = b.get("text", server.default_text)
                if b.get("huge"):
                    text = "7" + " lorem" * (server.huge_bytes // 6)
                if b.get("echo_key"):
                    text = f"You sent {auth}. Score: 85"
                wants_lp = bool(body.get("logprobs"))
                top = b.get("top")
                if top is None and wants_lp:
                    top = server.default_top
                if not wants_lp or b.get("no_logprobs"):
                    top = None
                full = json.dumps(completion_body(model, text, top)).encode()
                if b.get("truncated"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(full)))
                    self.end_headers()
                    self.wfile.write(full[: len(full) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if b.get("badjson"):
                    cut = full[: len(full) // 2]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(cut)))
                    self.end_headers()
                    self.wfile.write(cut)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(full)))
                self.end_headers()
                self.wfile.write(full)

        httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def judge_answer(body: dict) -> dict:
    """A deterministic judge answer per prompt: a score from a hash of the last message, with a
    logprob distribution around it (2 % of prompts: a refusal)."""
    import hashlib
    import math

    content = _last_content(body)
    h = int(hashlib.sha256(content.encode()).hexdigest(), 16)
    score = h % 101
    if h % 50 == 0:
        return {"text": "REFUSAL", "top": {"REF": math.log(0.9), "50": math.log(0.05)}}
    top = {str(score): math.log(0.6), str(min(100, score + 5)): math.log(0.2),
           str(max(0, score - 5)): math.log(0.1), "The": math.log(0.1)}
    return {"text": str(score), "top": top}


class FaultMix:
    """A responder: :func:`judge_answer`, except that a share ``rate`` of requests get one of
    ``faults`` (chosen at random, seeded). ``injected`` counts them by kind.

    Transient faults are what a retry can cure; the *persistent* ones (``"huge"``, ``"bignumber"``,
    ``"badlogprob"``, ``"echokey"``...) are answers, and a prompt that got one keeps getting it
    (``sticky``), as a real endpoint would answer the same prompt the same way."""

    TRANSIENT = ("429", "429ra", "429bad", "500", "503", "truncated", "badjson", "errorbody",
                 "emptychoices", "null", "reset")
    STICKY = ("huge", "bignumber", "badlogprob", "nanlogprob", "echokey")

    def __init__(self, rate: float, faults=TRANSIENT + STICKY, seed: int = 0, sticky_rate: float | None = None):
        import random

        self.rate = rate
        self.faults = tuple(faults)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: dict[str, int] = {}
        self.sticky: dict[str, str] = {}
        self.sticky_rate = rate / 4 if sticky_rate is None else sticky_rate
        self.seen: dict[str, int] = {}  # requests per prompt (last message)

    def __call__(self, body: dict):
        content = _last_content(body)
        with self.lock:
            self.seen[content] = self.seen.get(content, 0) + 1
            if content in self.sticky:
                fault = self.sticky[content]
            else:
                fault = None
                if self.rng.random() < self.rate:
                    fault = self.rng.choice(self.faults)
                    if fault in self.STICKY:
                        if self.rng.random() < self.sticky_rate / max(self.rate, 1e-9):
                            self.sticky[content] = fault
                        else:
                            fault = self.rng.choice([f for f in self.faults if f not in self.STICKY] or ["500"])
            if fault is not None:
                self.injected[fault] = self.injected.get(fault, 0) + 1
        if fault is None:
            return judge_answer(body)
        if fault in ("badlogprob", "nanlogprob") and not body.get("logprobs"):
            return judge_answer(body)
        return fault

    def stats(self) -> dict:
        with self.lock:
            return {"injected": dict(self.injected), "sticky": dict(self.sticky), "seen": dict(self.seen)}


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 whose port has nothing listening (connection refused)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


try:  # the fixture, for test modules that import it
    import pytest

    @pytest.fixture
    def fake_server():
        server = FakeOpenAIServer().start()
        try:
            yield server
        finally:
            server.stop()
except ImportError:  # pragma: no cover - benchmarks run without pytest
    pass
