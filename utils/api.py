"""An OpenAI-compatible chat client that survives faults: retries, a disk cache, no leaks.

Every judge and API-generation call of the course goes through
:class:`ChatClient`, which wraps the ``openai`` client and works with any
OpenAI-compatible endpoint: OpenRouter (the default), OpenAI, or a local vLLM
server. Three promises:

1. **Nothing is paid for twice.** Each successful answer is written to a disk
   cache keyed by the full request (endpoint, model, messages, sampling
   settings) the moment it arrives, so a rerun, a crash or Ctrl-C in the middle
   of a batch loses no finished call. Errors are not cached.
   Only a real answer is cached: an error, a ``"content": null`` reply, a body
   over the size limit or invalid logprobs are not.
2. **No exception escapes** :meth:`ChatClient.chat`. 429s, 5xx, timeouts,
   dropped connections and malformed or cut-off responses are retried with
   exponential backoff and jitter; 400/401/403 (and other 4xx) are not. Every
   call ends as a :class:`ChatResult` with either ``text`` or an ``error``
   that says why. (A missing API key is a configuration mistake, not a fault,
   and raises :class:`MissingAPIKeyError` before anything is sent.)
   A dead endpoint fails fast: a *circuit breaker* shared by a batch stops it
   after ``breaker_failures`` failed connection attempts (or timeouts before
   any answer) with one error naming the URL, and ``deadline`` bounds a whole
   ``chat``/``chat_many`` call. Bodies over ``max_response_bytes`` are not read.
3. **The key stays secret.** It is read from the environment, sent only in the
   ``Authorization`` header, and scrubbed from every error message and from
   everything written to the cache (answers included, should a server echo it);
   it is never part of a cache key or file, a log line or a ``repr``.

Settings come from the environment (and from a ``.env`` file at the repository
root, if present, without overriding variables already set; :mod:`utils.api_settings`
reads them and the key, :mod:`utils.api_faults` sorts a call's failures):

==================================  ==========================================================
``PERSONA_COURSE_API_BASE``         endpoint base URL (default ``https://openrouter.ai/api/v1``)
``PERSONA_COURSE_API_KEY_ENV``      *name* of the variable that holds the key
                                    (default ``OPENROUTER_API_KEY``; ``OPENAI_API_KEY`` is
                                    the fallback)
``PERSONA_COURSE_GEN_MODEL``        model for API generation (default ``google/gemma-2-27b-it``)
``PERSONA_COURSE_JUDGE_MODEL``      judge model (default ``openai/gpt-4.1-mini``)
``PERSONA_COURSE_JUDGE_API_BASE``   optional: a different endpoint for the judge only
``PERSONA_COURSE_JUDGE_API_KEY_ENV`` optional: the key variable for that endpoint
``PERSONA_COURSE_JUDGE_LOGPROBS``   optional ``1``/``0``: whether the judge endpoint
                                    returns logprobs (default: find out on the first call)
``PERSONA_COURSE_MAX_WORKERS``      optional: default concurrency of ``chat_many`` (8)
``PERSONA_COURSE_API_DEADLINE``     optional: seconds a whole ``chat``/``chat_many`` call may take
``PERSONA_COURSE_CACHE``            cache folder (see :mod:`utils.caching`)
==================================  ==========================================================
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from .api_faults import (CUT, UNREACHABLE, CallBatch, Fatal, ResponseTooLarge, Retryable, capped_http_client, exception_chain,
                         find_cause, first_token_top_logprobs, retry_after_seconds)
from .api_settings import MissingAPIKeyError, Secret, get_settings, resolve_key, scrub
from .api_settings import key_available  # noqa: F401  (learners call api.key_available())
from .caching import DiskCache, request_key

__all__ = [
    "ChatClient",
    "ChatResult",
    "get_generation_client",
    "get_judge_client",
    "key_available",
]

log = logging.getLogger(__name__)

Messages = Sequence[dict]


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------
@dataclass
class ChatResult:
    """The outcome of one chat call: ``text`` on success, else ``error`` (the reason).

    ``top_logprobs`` is the first generated token's top alternatives as a list
    of ``{"token": str, "logprob": float}`` (when logprobs were requested and
    the endpoint returned them). ``cached`` says the answer came from disk.
    """

    text: str | None
    top_logprobs: list | None = None
    error: str | None = None
    cached: bool = False
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _sleep(seconds: float) -> None:
    """The backoff sleep (tests patch this)."""
    time.sleep(seconds)


def _normalise_base(url: str) -> str:
    return url.strip().rstrip("/")


def _is_openai_host(url: str) -> bool:
    try:
        return (urlparse(url).hostname or "").endswith("api.openai.com")
    except ValueError:
        return False


class ChatClient:
    """A cached, retrying, thread-safe chat client for an OpenAI-compatible endpoint.

    Args:
        base_url: endpoint, e.g. ``http://localhost:8000/v1`` (default: settings).
        model: model name as the endpoint spells it (default: the generation model).
        api_key: the key itself; default: read from the environment at the first
            network call (see :func:`get_settings`).
        cache: a :class:`~utils.caching.DiskCache`; ``...`` (default) means the
            default cache folder; ``None`` disables caching.
        timeout: seconds per attempt (``connect_timeout`` for the connection alone).
        max_retries: retries after the first attempt (so at most ``max_retries + 1``
            requests per call).
        max_workers: default concurrency of :meth:`chat_many`.
        logprobs: whether the endpoint returns logprobs: ``True``, ``False``, or
            ``None`` for "not known yet" (the judge decides once, see ``utils.endpoint_judge``).
        key_env: name of the variable holding the key (default: settings).
        backoff_base, backoff_max: the n-th retry waits between half and all of
            ``min(backoff_max, backoff_base * 2**n)`` seconds (longer if the
            server sends ``Retry-After``).
        deadline: seconds a whole :meth:`chat` / :meth:`chat_many` call may take (default:
            ``PERSONA_COURSE_API_DEADLINE``, else none); calls not finished by then end with an
            error saying so.
        breaker_failures: failed connection attempts in a row (or timeouts before any answer)
            after which a batch stops with one "unreachable endpoint" error.
        max_response_bytes: a response body larger than this is not read (the call ends with
            an error, not cached); ``max_answer_chars`` likewise for the answer text.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, cache: Any = ..., timeout: float = 30,
                 max_retries: int = 5, max_workers: int | None = 8,
                 logprobs: bool | None = None, *, key_env: str | None = None,
                 backoff_base: float = 1.0, backoff_max: float = 60.0,
                 deadline: float | None = ..., breaker_failures: int = 3,  # type: ignore[assignment]
                 connect_timeout: float = 10.0, max_response_bytes: int = 4 * 2**20,
                 max_answer_chars: int = 100_000):
        settings = get_settings()
        self.base_url = _normalise_base(base_url or settings.api_base)
        self.model = model or settings.gen_model
        self.key_env = key_env or settings.key_env
        self._key = Secret(api_key) if api_key else None
        self.cache: DiskCache | None = DiskCache() if cache is ... else cache
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = int(max_retries)
        self.max_workers = int(max_workers or settings.max_workers)
        self.logprobs = logprobs
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.deadline = settings.deadline if deadline is ... else deadline
        self.breaker_failures = int(breaker_failures)
        self.max_response_bytes = int(max_response_bytes)
        self.max_answer_chars = int(max_answer_chars)
        self.request_count = 0
        self._lock = threading.Lock()
        self._openai = None

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"key_env={self.key_env!r}, cache={self.cache!r})")

    # ---- plumbing ----------------------------------------------------------
    def _secret(self) -> str | None:
        return self._key.reveal() if self._key is not None else None

    def _scrub(self, text: Any) -> str:
        return scrub(text, self._secret())

    def _scrub_key(self, text: str) -> str:
        """``text`` with the key itself replaced by ``***`` (and nothing else touched: an answer
        that mentions "bearer bonds" stays as it is)."""
        secret = self._secret()
        if secret and len(secret) >= 4 and secret in text:
            return text.replace(secret, "***")
        return text

    def _ensure_key(self) -> None:
        if self._key is None:
            self._key = Secret(resolve_key(self.key_env))

    def _client(self):
        with self._lock:
            if self._openai is None:
                self._ensure_key()
                import openai

                self._openai = openai.OpenAI(
                    base_url=self.base_url, api_key=self._secret(),
                    timeout=self.timeout, max_retries=0,  # we retry ourselves
                    http_client=capped_http_client(self.max_response_bytes))
            return self._openai

    def build_request(self, messages: Messages, max_tokens: int = 256, temperature: float = 0.0,
                      top_logprobs: int | None = None, **extra: Any) -> dict:
        """The request dict that is sent (and hashed for the cache), without the key.

        ``cache_salt`` (in ``extra``) goes into the cache key only, never to the
        endpoint: use it to draw several independent samples of one prompt.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        request: dict[str, Any] = {
            "base_url": self.base_url,
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": int(max_tokens),
            "temperature": temperature,
        }
        if top_logprobs is not None:
            request["logprobs"] = True
            request["top_logprobs"] = int(top_logprobs)
        for k, v in extra.items():
            if k in ("model", "messages", "base_url", "stream"):
                raise ValueError(f"{k!r} cannot be passed to chat(); set it on the client")
            if v is not None:
                request[k] = v
        return request

    def key_for(self, messages: Messages, **kwargs: Any) -> str:
        """The cache key of a call (same arguments as :meth:`chat`)."""
        return request_key(self.build_request(messages, **kwargs))

    def _cache_get(self, key: str) -> ChatResult | None:
        if self.cache is None:
            return None
        try:
            hit = self.cache.get(key)
        except Exception as e:  # a cache must never break a call
            log.warning("cache read failed: %s", self._scrub(e))
            return None
        if hit is None or not isinstance(hit.get("text"), str):
            return None  # an entry without a real answer (e.g. from an older version) is a miss
        return ChatResult(text=hit.get("text"), top_logprobs=hit.get("top_logprobs"),
                          error=None, cached=True, finish_reason=hit.get("finish_reason"))

    def _cache_put(self, key: str, request: dict, result: ChatResult) -> None:
        if self.cache is None or result.error is not None or not isinstance(result.text, str):
            return
        value = {"text": result.text, "top_logprobs": result.top_logprobs,
                 "finish_reason": result.finish_reason,
                 "request": {k: v for k, v in request.items() if k != "base_url"},
                 "base_url": self.base_url}
        try:
            secret = self._secret()
            if secret and len(secret) >= 4:  # nothing written holds the key, whatever echoed it
                value = json.loads(json.dumps(value).replace(json.dumps(secret)[1:-1], "***"))
            self.cache.put(key, value)
        except Exception as e:
            log.warning("cache write failed (the result is still returned): %s", self._scrub(e))

    def _attempt(self, request: dict, timeout: float) -> ChatResult:
        """One network request. Raises Retryable / Fatal, or returns a result."""
        import openai

        body = {k: v for k, v in request.items() if k not in ("base_url", "cache_salt")}
        client = self._client()
        with self._lock:
            self.request_count += 1
        try:
            import httpx2

            t = httpx2.Timeout(timeout, connect=min(timeout, self.connect_timeout))
            response = client.chat.completions.create(**body, timeout=t)
        except ResponseTooLarge as e:
            raise Fatal(f"answer not read: {e} (max_response_bytes); not cached")
        except openai.APITimeoutError as e:
            if find_cause(e, ("ConnectTimeout",)):
                raise Retryable(f"no connection within {min(timeout, self.connect_timeout):g}s",
                                kind="unreachable")
            raise Retryable(f"timed out after {timeout:g}s with no answer", kind="timeout")
        except openai.APIConnectionError as e:
            big = find_cause(e, ("ResponseTooLarge",))
            if big is not None:
                raise Fatal(f"answer not read: {big} (max_response_bytes); not cached")
            causes = [c for c in exception_chain(e) if c is not e]
            cause = causes[0] if causes else e
            text = f"{type(cause).__name__}: {cause}"
            if find_cause(e, CUT):
                raise Retryable(f"connection cut before the answer was complete ({text})", kind="cut")
            if find_cause(e, UNREACHABLE):
                raise Retryable(text, kind="unreachable")
            raise Retryable(f"connection failed ({text})", kind="cut")
        except openai.APIStatusError as e:
            status = e.status_code
            detail = e.message if getattr(e, "message", None) else str(e)
            reason = f"HTTP {status}: {detail}"
            if status == 429 or status >= 500 or status in (408, 409, 425):
                raise Retryable(reason, retry_after=retry_after_seconds(e), kind="status")
            raise Fatal(reason)
        except openai.OpenAIError as e:
            raise Retryable(f"malformed response ({type(e).__name__}: {e})", kind="malformed")
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise Retryable(f"malformed response ({type(e).__name__}: {e})", kind="malformed")
        choices = getattr(response, "choices", None)
        if not choices:
            err = getattr(response, "error", None)
            if err is None:
                extra = getattr(response, "model_extra", None) or {}
                err = extra.get("error")
            raise Retryable(f"malformed response (no choices{'; error: ' + str(err)[:300] if err else ''})",
                            kind="malformed")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise Retryable("malformed response (choice without message)", kind="malformed")
        text = getattr(message, "content", None)
        if text is None:
            refusal = getattr(message, "refusal", None)
            if isinstance(refusal, str) and refusal.strip():
                raise Fatal(f"the endpoint refused with no answer text: {refusal[:200]}")
            # A transient empty reply (an upstream hiccup, or every token spent on hidden
            # reasoning): not an answer, so it is retried and never cached.
            raise Retryable("no answer text (\"content\": null, finish_reason "
                             f"{getattr(choice, 'finish_reason', None)!r})", kind="empty")
        if not isinstance(text, str):
            raise Retryable(f"malformed response (content is a {type(text).__name__})", kind="malformed")
        if len(text) > self.max_answer_chars:
            raise Fatal(f"answer of {len(text)} characters is over the {self.max_answer_chars}-character "
                        "limit (max_answer_chars); not cached")
        top = first_token_top_logprobs(choice)
        if top is not None:
            top = [{"token": self._scrub_key(t["token"]), "logprob": t["logprob"]} for t in top]
        return ChatResult(text=self._scrub_key(text), top_logprobs=top, error=None, cached=False,
                          finish_reason=getattr(choice, "finish_reason", None))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        delay = cap / 2 + random.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _new_batch(self, deadline: Any = ...) -> CallBatch:
        return CallBatch(self.base_url, self.breaker_failures, self.deadline if deadline is ... else deadline)

    def _call(self, request: dict, key: str, batch: CallBatch | None = None) -> ChatResult:
        batch = batch if batch is not None else self._new_batch()
        last: Retryable | None = None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if batch.open_reason is not None:
                if last is None:
                    return ChatResult(text=None, error=self._scrub(batch.open_reason))
                break
            remaining = batch.remaining()
            if remaining is not None and remaining <= 0:
                return ChatResult(text=None, error=self._scrub(batch.deadline_error(
                    "before this call was sent" if last is None else
                    f"while retrying ({attempts} attempts; last: {last.reason})")))
            timeout = self.timeout if remaining is None else max(0.05, min(self.timeout, remaining))
            attempts += 1
            try:
                result = self._attempt(request, timeout)
            except MissingAPIKeyError:
                raise
            except Fatal as e:
                batch.success()  # the server answered
                return ChatResult(text=None, error=self._scrub(e.reason))
            except Retryable as e:
                last = e
                batch.failure(e)
                if attempt < self.max_retries and batch.open_reason is None:
                    delay = self._backoff(attempt, e.retry_after)
                    remaining = batch.remaining()
                    if remaining is not None and delay >= remaining:
                        return ChatResult(text=None, error=self._scrub(batch.deadline_error(
                            f"before the next retry ({attempts} attempts; last: {e.reason})")))
                    log.warning("%s: %s; retry %d/%d in %.1fs", self.model, self._scrub(e.reason),
                                attempt + 1, self.max_retries, delay)
                    _sleep(delay)
                continue
            except Exception as e:  # anything unforeseen ends as an error, not a crash
                return ChatResult(text=None, error=self._scrub(
                    f"unexpected {type(e).__name__}: {e}"))
            batch.success()
            self._cache_put(key, request, result)
            return result
        assert last is not None
        if batch.open_reason is not None and last.kind in ("unreachable", "timeout"):
            reason = batch.open_reason
        elif last.kind == "unreachable":
            reason = f"unreachable endpoint {self.base_url}: {last.reason} ({attempts} attempts)"
        else:
            reason = f"gave up after {attempts} attempts: {last.reason}"
        return ChatResult(text=None, error=self._scrub(reason))

    # ---- public ------------------------------------------------------------
    def chat(self, messages: Messages, max_tokens: int = 256, temperature: float = 0.0,
             top_logprobs: int | None = None, *, deadline: Any = ..., **extra: Any) -> ChatResult:
        """One chat completion, from the cache if this exact request was answered before.

        ``messages`` is a list of ``{"role", "content"}`` dicts (a plain string
        is taken as one user message). ``top_logprobs=k`` asks for the first
        token's top-k logprobs (``logprobs=True`` is sent with it). Other keyword
        arguments (``seed``, ``top_p``, ``stop``, ...) are sent as they are and
        are part of the cache key. ``deadline`` (seconds) overrides the client's.
        Never raises, except :class:`MissingAPIKeyError` when a network call is
        needed and no key is set.
        """
        try:
            request = self.build_request(messages, max_tokens=max_tokens, temperature=temperature,
                                         top_logprobs=top_logprobs, **extra)
            key = request_key(request)
        except (TypeError, ValueError) as e:
            return ChatResult(text=None, error=self._scrub(f"invalid request: {e}"))
        hit = self._cache_get(key)
        if hit is not None:
            return hit
        self._client()  # resolves the key: MissingAPIKeyError before anything is sent
        return self._call(request, key, self._new_batch(deadline))

    def chat_many(self, list_of_messages: Sequence[Messages], max_tokens: int = 256,
                  temperature: float = 0.0, top_logprobs: int | None = None, *,
                  max_workers: int | None = None, progress: bool = True,
                  on_result: Callable[[int, ChatResult], None] | None = None,
                  desc: str | None = None, deadline: Any = ..., **extra: Any) -> list[ChatResult]:
        """Many calls with bounded concurrency; results in input order.

        Cached requests are answered from disk without touching the network,
        and identical requests in one batch are sent once. Each answer is cached
        as soon as it arrives, so if the batch is interrupted (Ctrl-C, a crash,
        an exception raised by ``on_result``) a rerun pays only for what had not
        finished. ``on_result(index, result)`` is called in the calling thread as
        each result becomes available (cached ones first).

        The calls share a circuit breaker (an unreachable endpoint ends the whole batch after
        ``breaker_failures`` failed attempts, with one error naming the URL) and ``deadline``
        (seconds for the whole batch; default: the client's): calls still unfinished then end
        with an error saying so.
        """
        n = len(list_of_messages)
        results: list[ChatResult | None] = [None] * n
        keys: list[str | None] = [None] * n
        requests: dict[str, dict] = {}
        waiting: dict[str, list[int]] = {}
        for i, messages in enumerate(list_of_messages):
            try:
                req = self.build_request(messages, max_tokens=max_tokens, temperature=temperature,
                                         top_logprobs=top_logprobs, **extra)
                keys[i] = request_key(req)
            except (TypeError, ValueError) as e:
                results[i] = ChatResult(text=None, error=self._scrub(f"invalid request: {e}"))
                continue
            if keys[i] not in requests:
                requests[keys[i]] = req
            waiting.setdefault(keys[i], []).append(i)

        from tqdm.auto import tqdm

        bar = tqdm(total=n, disable=not progress, desc=desc or f"{self.model}", leave=False)
        batch = self._new_batch(deadline)

        def deliver(i: int, result: ChatResult) -> None:
            results[i] = result
            bar.update(1)
            if on_result is not None:
                on_result(i, result)

        def deliver_all(key: str, result: ChatResult) -> None:
            for j, i in enumerate(waiting[key]):
                deliver(i, result if j == 0 else ChatResult(
                    result.text, result.top_logprobs, result.error, result.cached, result.finish_reason))

        try:
            for i, r in enumerate(results):
                if r is not None:
                    deliver(i, r)
            todo: list[str] = []
            for key, idxs in waiting.items():
                hit = self._cache_get(key)
                if hit is None:
                    todo.append(key)
                else:
                    for i in idxs:
                        deliver(i, hit)
            if len(todo) == 1:  # one call: no thread pool needed
                self._client()
                deliver_all(todo[0], self._call(requests[todo[0]], todo[0], batch))
            elif todo:
                self._client()  # MissingAPIKeyError before anything is sent
                workers = max(1, int(max_workers or self.max_workers))
                pool = ThreadPoolExecutor(max_workers=min(workers, len(todo)),
                                          thread_name_prefix="chat")
                try:
                    futures: dict[Future, str] = {
                        pool.submit(self._call, requests[k], k, batch): k for k in todo}
                    pending = set(futures)
                    while pending:
                        remaining = batch.remaining()
                        if remaining is not None and remaining <= -0.5:
                            # the calls still running end at their own (deadline-capped) timeout;
                            # they are reported now, and whatever they bring is still cached
                            for fut in pending:
                                fut.cancel()
                                deliver_all(futures[fut], ChatResult(text=None, error=batch.deadline_error(
                                    "before this call finished")))
                            break
                        step = 0.5 if remaining is None else max(0.01, min(0.5, remaining + 0.5))
                        done, pending = wait(pending, timeout=step, return_when=FIRST_COMPLETED)
                        for fut in done:
                            key = futures[fut]
                            try:
                                result = fut.result()
                            except MissingAPIKeyError:
                                raise
                            except Exception as e:  # _call does not raise; belt and braces
                                result = ChatResult(text=None, error=self._scrub(
                                    f"unexpected {type(e).__name__}: {e}"))
                            deliver_all(key, result)
                finally:
                    # On an interruption: drop queued calls; calls in flight finish
                    # in the background and are still cached.
                    pool.shutdown(wait=False, cancel_futures=True)
        finally:
            bar.close()
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------
# factories
# --------------------------------------------------------------------------
def _model_for(base_url: str, model: str) -> str:
    # OpenRouter names OpenAI models "openai/gpt-4.1-mini"; OpenAI itself wants "gpt-4.1-mini".
    if _is_openai_host(base_url) and model.startswith("openai/"):
        return model.split("/", 1)[1]
    return model


def get_generation_client(**kwargs: Any) -> ChatClient:
    """A :class:`ChatClient` for API generation, from the environment settings."""
    s = get_settings()
    base = kwargs.pop("base_url", None) or s.api_base
    kwargs.setdefault("model", _model_for(base, s.gen_model))
    kwargs.setdefault("key_env", s.key_env)
    return ChatClient(base_url=base, **kwargs)


def get_judge_client(**kwargs: Any) -> ChatClient:
    """A :class:`ChatClient` for the judge, from the environment settings."""
    s = get_settings()
    base = kwargs.pop("base_url", None) or s.judge_api_base
    kwargs.setdefault("model", _model_for(base, s.judge_model))
    kwargs.setdefault("key_env", s.judge_key_env)
    kwargs.setdefault("logprobs", s.judge_logprobs)
    return ChatClient(base_url=base, **kwargs)
