"""The offline stand-in judge: a hash of the answer, for the random tiny models only. Not an LLM.

With the random-weight tiny models (CI, nbgrader, a CPU without the toy world) there is no model
worth asking and no network, but the notebooks must still run end to end. :class:`OfflineJudge`
takes the judge's place there. Its scores are **noise**: a SHA-256 hash of the answer and the judge
prompt around it, mapped into the score range. It is labelled as such, and it never grades a
student (the exercise tests check code against fixed inputs, not judge scores).

A text rule can be plugged in instead of the hash (``score_fn``): the toy world's judge
(``utils.toy_judge``) is one.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

from utils.scoring import JudgeScore, extract_answer, fill_template, guarded, hash_score, prompt_text

__all__ = ["OFFLINE_JUDGE_LABEL", "OfflineJudge"]

OFFLINE_JUDGE_LABEL = "offline stand-in judge (hash noise, not an LLM)"


class OfflineJudge:
    """A deterministic stand-in for the LLM judge: no network, no key, **not an LLM**.

    Same interface as the other judges (``score``, ``score_many``, ``score_trait``,
    ``score_coherence``, ``label``, ``method``). The default rule is deliberately simple and
    carries no information about the answer's meaning:

    1. find the answer in the prompt (:func:`~utils.scoring.extract_answer`: the text between
       ``[ANSWER START]`` and ``[ANSWER END]`` or similar markers; the whole prompt if there are
       none; for :meth:`score_trait` / :meth:`score_coherence` the answer given);
    2. an empty answer scores ``None`` (reason "empty answer");
    3. otherwise the score is :func:`~utils.scoring.hash_score` of the answer together with the
       rest of the judge prompt. The same answer to the same judge prompt always gets the same
       score, on every machine and run; different judges (a trait judge and the coherence judge,
       say) give unrelated scores, as two real judges would, rather than copies of one number.

    ``score_fn`` replaces step 3: ``score_fn(answer, prompt)`` (or ``score_fn(answer)``) returns a
    number, ``None``, or a :class:`~utils.scoring.JudgeScore`.
    """

    label = OFFLINE_JUDGE_LABEL
    method = "hash"

    def __init__(self, score_fn: Callable[..., Any] | None = None, lo: int = 0, hi: int = 100,
                 label: str | None = None, method: str | None = None):
        self.score_fn = score_fn
        self.lo, self.hi = lo, hi
        self._two_args = score_fn is not None and _accepts_two_args(score_fn)
        if label is not None:
            self.label = label
        if method is not None:
            self.method = method
        elif score_fn is not None:
            self.method = "rule"

    @property
    def mode(self) -> str:
        """The scoring method (kept under this name for code that reads ``judge.mode``)."""
        return self.method

    def identity(self) -> dict:
        """What identifies this judge in a cache key."""
        fn = getattr(self.score_fn, "__name__", None) if self.score_fn else "hash_score"
        return {"label": self.label, "method": self.method, "rule": fn}

    def __repr__(self) -> str:
        fn = getattr(self.score_fn, "__name__", repr(self.score_fn)) if self.score_fn else "hash_score"
        return f"OfflineJudge(score_fn={fn}, label={self.label!r})"

    def _rule(self, answer: str, prompt: str, lo: int, hi: int) -> JudgeScore:
        if self.score_fn is None:
            if not answer.strip():
                return JudgeScore(None, "empty answer (offline stand-in judge)")
            context = prompt.replace(answer, "", 1) if answer != prompt else ""
            return JudgeScore(float(hash_score(context + "\x00" + answer, lo, hi)), None)
        try:
            out = self.score_fn(answer, prompt) if self._two_args else self.score_fn(answer)
        except Exception as e:  # noqa: BLE001
            return JudgeScore(None, f"offline score_fn failed: {type(e).__name__}: {e}")
        if isinstance(out, JudgeScore):
            return out
        if out is None:
            return JudgeScore(None, "offline score_fn gave no score")
        try:
            value = float(out)
        except (TypeError, ValueError, OverflowError):
            return JudgeScore(None, f"offline score_fn returned {str(out)[:80]!r}, not a number")
        if not math.isfinite(value):
            return JudgeScore(None, f"offline score_fn returned {value}")
        return JudgeScore(value, None)

    def _score(self, answer: str, prompt: str, lo: int, hi: int) -> JudgeScore:
        return guarded(self._rule, answer, prompt, lo, hi, method=self.method)

    def score(self, prompt: str | Sequence[dict], lo: int | None = None,
              hi: int | None = None) -> JudgeScore:
        """Score one judge prompt (a string, or a list of chat messages)."""
        text = prompt_text(prompt)
        lo = self.lo if lo is None else lo
        hi = self.hi if hi is None else hi
        return self._score(extract_answer(text), text, lo, hi)

    def score_many(self, prompts: Sequence[str | Sequence[dict]], max_workers: int | None = None,
                   lo: int | None = None, hi: int | None = None,
                   progress: bool = False, **_: Any) -> list[JudgeScore]:
        """Score many prompts; scores in input order (one bad prompt never costs the batch)."""
        return [guarded(self.score, p, lo, hi, method=self.method) for p in prompts]

    def score_trait(self, question: str, answer: str, eval_prompt_template: str) -> JudgeScore:
        return self._score(answer, fill_template(eval_prompt_template, question, answer), self.lo, self.hi)

    def score_coherence(self, question: str, answer: str, template: str) -> JudgeScore:
        return self._score(answer, fill_template(template, question, answer), self.lo, self.hi)


def _accepts_two_args(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2
