"""An LLM judge behind an OpenAI-compatible endpoint (OpenRouter, OpenAI, your own vLLM server).

Two ways to turn the judge's answer into a score (``Judge(mode=...)``):

* ``"logprobs"`` -- the papers' method: ask for one token with its top-20 logprobs and average
  the integer tokens weighted by their probabilities (:func:`utils.scoring.logprob_score`);
  ``None`` when they carry less than 25 % of the probability (e.g. the judge began "REFUSAL").
  Right only for judges whose tokenizer writes every score 0-100 as one token (GPT-4o/4.1).
* ``"text"`` -- ask for a short answer and take the first integer in range
  (:func:`utils.scoring.parse_score`).
* ``"auto"`` (default) -- decide **once**, before the first score, with one calibration call
  (cached on disk like any other): the judge is asked to answer "85"; if the endpoint returns
  logprobs and "85" is one token among them, the method is "logprobs", otherwise "text" (no
  logprobs, a refusal to give them, or a tokenizer that splits numbers into digits). The
  decision holds for the judge's lifetime: an answer that later comes back without logprobs is a
  ``None`` with that reason, never a silent switch of method. ``PERSONA_COURSE_JUDGE_LOGPROBS=1``
  or ``0`` decides without the call.

Every score carries its method (``JudgeScore.method``), ``judge.method`` says which one the judge
uses, and ``judge.identity()`` (label, model, endpoint, method) is what a cache of scores should be
keyed by. Nothing raises except :class:`~utils.api_settings.MissingAPIKeyError` (no key configured): each
answer ends as a score or as ``None`` with a reason, whatever the endpoint sends.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from utils.api import ChatClient, ChatResult, get_judge_client
from utils.scoring import (JudgeScore, as_messages, fill_template, guarded, integer_mass,
                           invalid_logprobs, logprob_score, parse_score)

__all__ = ["CALIBRATION_PROMPT", "Judge"]

log = logging.getLogger(__name__)

#: The one call that decides the method in mode "auto".
CALIBRATION_PROMPT = "Reply with the number 85 and nothing else."
METHODS = ("logprobs", "text")


def _looks_like_logprob_rejection(error: str) -> bool:
    e = error.lower()
    return e.startswith("http 4") and "logprob" in e


class Judge:
    """An LLM judge over a :class:`~utils.api.ChatClient` (default: :func:`get_judge_client`).

    ``mode``: ``"auto"`` (decide once, see the module docstring), ``"logprobs"`` or ``"text"``.
    """

    def __init__(self, client: ChatClient | None = None, mode: str = "auto", lo: int = 0,
                 hi: int = 100, min_mass: float = 0.25, top_logprobs: int = 20,
                 text_max_tokens: int = 16):
        if mode not in ("auto",) + METHODS:
            raise ValueError(f"mode must be 'auto', 'text' or 'logprobs', got {mode!r}")
        self.client = client if client is not None else get_judge_client()
        self.requested_mode = mode
        self.lo, self.hi = lo, hi
        self.min_mass = min_mass
        self.top_logprobs = top_logprobs
        self.text_max_tokens = text_max_tokens
        self._method: str | None = mode if mode != "auto" else (
            {True: "logprobs", False: "text"}.get(self.client.logprobs))
        self._undecided_reason: str | None = None

    @property
    def label(self) -> str:
        """``"<model> via <endpoint>"``, e.g. ``"openai/gpt-4.1-mini via https://openrouter.ai/api/v1"``."""
        return f"{self.client.model} via {self.client.base_url}"

    def __repr__(self) -> str:
        return f"Judge(client={self.client!r}, mode={self.requested_mode!r}, method={self._method!r})"

    # ---- the method, decided once -------------------------------------------
    def decide_method(self) -> str | None:
        """The scoring method, deciding it now (one cached calibration call) if not yet decided.
        ``None`` only when the calibration call itself failed (the endpoint is down): the next
        call tries again."""
        if self._method is None:
            self._method, self._undecided_reason = self._calibrate()
            if self._method is not None:
                log.info("judge %s scores by %s", self.label, self._method)
        return self._method

    @property
    def method(self) -> str | None:
        """``"logprobs"`` or ``"text"`` (decided on first use; see :meth:`decide_method`)."""
        return self.decide_method()

    @property
    def mode(self) -> str:
        """The scoring method, as ``method`` (``"undecided"`` while the endpoint cannot be asked)."""
        return self.decide_method() or "undecided"

    @property
    def effective_mode(self) -> str:
        return self.mode

    def identity(self) -> dict:
        """What identifies this judge's scores in a cache key (never its API key)."""
        return {"label": self.label, "model": self.client.model, "base_url": self.client.base_url,
                "method": self.mode, "lo": self.lo, "hi": self.hi, "min_mass": self.min_mass}

    def _calibrate(self) -> tuple[str | None, str | None]:
        r = self.client.chat([{"role": "user", "content": CALIBRATION_PROMPT}], max_tokens=1,
                             temperature=0, top_logprobs=self.top_logprobs)
        if r.error is not None:
            if _looks_like_logprob_rejection(r.error):
                return "text", None
            return None, r.error
        if not r.top_logprobs or invalid_logprobs(r.top_logprobs):
            return "text", None
        tokens = [str(t.get("token", "")).strip() for t in r.top_logprobs if isinstance(t, dict)]
        if "85" in tokens:
            return "logprobs", None
        if tokens and tokens[0].isdigit() and len(tokens[0]) == 1:
            log.info("the judge's tokenizer splits numbers into digits: scoring by text")
        return "text", None

    # ---- one result -> one score ------------------------------------------
    def _from_logprobs(self, r: ChatResult, lo: int, hi: int) -> JudgeScore:
        if r.error is not None:
            return JudgeScore(None, r.error)
        if not r.top_logprobs:
            return JudgeScore(None, "this answer came without logprobs (the judge scores by "
                                    "logprobs for the whole experiment; not switched)")
        bad = invalid_logprobs(r.top_logprobs)
        if bad:
            return JudgeScore(None, f"invalid logprobs in the answer (e.g. {str(bad[0])[:60]})")
        value = logprob_score(r.top_logprobs, lo, hi, self.min_mass)
        if value is None:
            mass = integer_mass(r.top_logprobs, lo, hi)
            first = (r.text if r.text else "?")[:20]
            return JudgeScore(None, f"integer tokens carry {mass:.2f} of the probability "
                                    f"(< {self.min_mass}); first token {first!r}"
                                    + (" (a refusal)" if first.strip().upper().startswith("REF") else ""))
        return JudgeScore(float(value), None)

    def _from_text(self, r: ChatResult, lo: int, hi: int) -> JudgeScore:
        if r.error is not None:
            return JudgeScore(None, r.error)
        value = parse_score(r.text, lo, hi)
        if value is None:
            text = (r.text or "").strip()
            if re.search(r"\brefusal\b", text[:2000], re.IGNORECASE):
                return JudgeScore(None, "the judge answered REFUSAL")
            return JudgeScore(None, f"no integer in [{lo}, {hi}] in the judge's answer {text[:80]!r}")
        return JudgeScore(float(value), None)

    # ---- public ------------------------------------------------------------
    def score(self, prompt: str | Sequence[dict], lo: int | None = None,
              hi: int | None = None) -> JudgeScore:
        """Score one judge prompt (a string, or a list of chat messages)."""
        return self.score_many([prompt], lo=lo, hi=hi, progress=False)[0]

    def score_many(self, prompts: Sequence[str | Sequence[dict]], max_workers: int | None = None,
                   lo: int | None = None, hi: int | None = None, progress: bool = True,
                   deadline: Any = ...) -> list[JudgeScore]:
        """Score many prompts concurrently; scores in input order, each a value or ``None`` with
        a reason (one odd answer never costs the batch)."""
        lo = self.lo if lo is None else lo
        hi = self.hi if hi is None else hi
        prompts = list(prompts)
        if not prompts:
            return []
        method = self.decide_method()
        if method is None:
            return [JudgeScore(None, f"could not decide the scoring method: {self._undecided_reason}")
                    for _ in prompts]
        scores: list[JudgeScore | None] = [None] * len(prompts)
        todo, msgs = [], []
        for i, p in enumerate(prompts):
            try:
                msgs.append(as_messages(p))
                todo.append(i)
            except Exception as e:  # noqa: BLE001
                scores[i] = JudgeScore(None, f"not a judge prompt ({type(e).__name__}: {e})", method)
        if method == "logprobs":
            results = self.client.chat_many(msgs, max_tokens=1, temperature=0,
                                            top_logprobs=self.top_logprobs, max_workers=max_workers,
                                            progress=progress, desc="judge", deadline=deadline)
            to_score = self._from_logprobs
        else:
            results = self.client.chat_many(msgs, max_tokens=self.text_max_tokens, temperature=0,
                                            max_workers=max_workers, progress=progress, desc="judge",
                                            deadline=deadline)
            to_score = self._from_text
        for i, r in zip(todo, results):
            scores[i] = guarded(to_score, r, lo, hi, method=method)
        return scores  # type: ignore[return-value]

    def score_trait(self, question: str, answer: str, eval_prompt_template: str) -> JudgeScore:
        """Score how strongly ``answer`` shows a trait (0–100), with the trait's eval prompt."""
        return self.score(fill_template(eval_prompt_template, question, answer))

    def score_coherence(self, question: str, answer: str, template: str) -> JudgeScore:
        """Score the coherence of ``answer`` (0–100) with a coherence judge prompt."""
        return self.score(fill_template(template, question, answer))
