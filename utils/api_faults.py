"""How an API call fails, and what the calls of one batch share.

:class:`Retryable` (429, 5xx, timeouts, dropped or cut connections, malformed answers) and
:class:`Fatal` (other 4xx) are how :class:`utils.api.ChatClient` sorts an attempt's failure;
:func:`find_cause` reads the exception chain the ``openai`` client raises (``UNREACHABLE``: no
connection was made; ``CUT``: the answer stopped half-way), and :func:`retry_after_seconds` the
server's ``Retry-After``. :func:`first_token_top_logprobs` reads the logprobs of an answer and
rejects ones that are not log-probabilities. :class:`CallBatch` holds the deadline and the circuit
breaker of one ``chat``/``chat_many`` call, and :func:`capped_http_client` an HTTP client that stops
reading a body over a size limit (:class:`ResponseTooLarge`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

class Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, kind: str = "error"):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.kind = kind  # "status", "timeout", "unreachable", "cut", "malformed", "empty"


class Fatal(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ResponseTooLarge(Exception):
    """A response body over the client's ``max_response_bytes`` (it is not read further)."""


def retry_after_seconds(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after")
        x = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return max(0.0, x) if x is not None and x == x and x != float("inf") else None


def exception_chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def find_cause(exc: BaseException, names: tuple[str, ...]) -> BaseException | None:
    for c in exception_chain(exc):
        if type(c).__name__ in names or isinstance(c, ResponseTooLarge) and "ResponseTooLarge" in names:
            return c
    return None


UNREACHABLE = ("ConnectError", "ConnectTimeout", "ConnectionRefusedError", "gaierror")
CUT = ("RemoteProtocolError", "ReadError", "IncompleteRead", "ConnectionResetError", "WriteError")


def first_token_top_logprobs(choice: Any) -> list | None:
    """The first generated token's top logprobs as ``[{"token", "logprob"}]``; ``None`` if absent.
    Raises ``Retryable`` when a logprob is not a log-probability (NaN, above 0, not a number)."""
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if not content:
        return None
    tops = getattr(content[0], "top_logprobs", None)
    if not tops:
        return None
    out = []
    for t in tops:
        token = getattr(t, "token", None)
        logprob = getattr(t, "logprob", None)
        if isinstance(t, dict):
            token, logprob = t.get("token"), t.get("logprob")
        if token is None or logprob is None:
            continue
        try:
            value = float(logprob)
        except (TypeError, ValueError, OverflowError):
            value = float("nan")
        if isinstance(logprob, bool) or value != value or value > 1e-3:
            raise Retryable(f"malformed response (invalid logprob {str(logprob)[:40]} for token "
                             f"{str(token)[:20]!r})", kind="malformed")
        out.append({"token": str(token), "logprob": min(value, 0.0)})
    return out or None


class CallBatch:
    """What the calls of one ``chat``/``chat_many`` share: the deadline and the circuit breaker.

    The breaker opens after ``threshold`` consecutive failed connection attempts (refused, reset
    before an answer, DNS), or timeouts while no call of the batch has yet had an answer; from
    then on every call of the batch ends at once with one error naming the endpoint.
    """

    def __init__(self, base_url: str, threshold: int, deadline: float | None):
        self.base_url = base_url
        self.threshold = max(1, int(threshold))
        self.deadline_s = deadline
        self.deadline = None if deadline is None else time.monotonic() + float(deadline)
        self.lock = threading.Lock()
        self.failures = 0
        self.answers = 0
        self.open_reason: str | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        r = self.remaining()
        return r is not None and r <= 0

    def deadline_error(self, what: str) -> str:
        return f"deadline of {self.deadline_s:g}s for this batch passed {what}"

    def success(self) -> None:
        with self.lock:
            self.failures = 0
            self.answers += 1

    def failure(self, e: Retryable) -> None:
        with self.lock:
            if e.kind == "unreachable" or (e.kind == "timeout" and self.answers == 0):
                self.failures += 1
                if self.failures >= self.threshold and self.open_reason is None:
                    what = ("failed connection attempts" if e.kind == "unreachable"
                            else "timeouts before any answer")
                    self.open_reason = (f"unreachable endpoint {self.base_url}: {e.reason} "
                                        f"(circuit breaker: {self.failures} {what} in a row; "
                                        "the rest of the batch was not sent)")
            elif e.kind != "timeout":
                self.failures = 0  # the server answered something


_TRANSPORT_CLASSES: dict = {}


def capped_http_client(max_bytes: int):
    """An httpx client (openai's defaults) whose responses raise ResponseTooLarge past max_bytes."""
    import httpx2
    import openai

    if "transport" not in _TRANSPORT_CLASSES:
        class CappedStream(httpx2.SyncByteStream):
            def __init__(self, stream, limit: int):
                self._stream, self._limit = stream, limit

            def __iter__(self):
                n = 0
                for chunk in self._stream:
                    n += len(chunk)
                    if n > self._limit:
                        raise ResponseTooLarge(f"response body over {self._limit} bytes")
                    yield chunk

            def close(self) -> None:
                self._stream.close()

        class CappedTransport(httpx2.HTTPTransport):
            def __init__(self, limit: int, **kw):
                super().__init__(**kw)
                self.limit = limit

            def handle_request(self, request):
                response = super().handle_request(request)
                try:
                    declared = int(response.headers.get("content-length") or 0)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    response.close()
                    raise ResponseTooLarge(f"response body of {declared} bytes (Content-Length) is "
                                           f"over the {self.limit}-byte limit")
                return httpx2.Response(status_code=response.status_code, headers=response.headers,
                                       stream=CappedStream(response.stream, self.limit),
                                       extensions=response.extensions, request=request)

        _TRANSPORT_CLASSES["transport"] = CappedTransport
    return openai.DefaultHttpxClient(transport=_TRANSPORT_CLASSES["transport"](max_bytes))
