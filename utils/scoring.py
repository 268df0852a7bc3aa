"""From a judge's answer to a score: the pieces every judge of the course shares.

* :class:`JudgeScore` -- a value, or ``None`` with the reason, and the method that made it;
* :func:`parse_score` -- the first integer in range in a text answer (the **text** method);
* :func:`logprob_score` -- the papers' **logprob** method: the probability-weighted mean of the
  integer answers, ``None`` when they carry less than ``min_mass`` (0.25) of the probability;
* :func:`fill_template` / :func:`extract_answer` -- put an answer into a judge prompt, and find it
  again;
* :func:`hash_score` -- the offline stand-in's pseudo-random score.

Nothing here raises on a judge's answer, however odd (a 400-digit number, a logprob of 800, NaN):
a bad answer is a ``None`` with a reason. The judges themselves live side by side in
``utils.offline_judge`` (hash stand-in), ``utils.toy_judge`` (toy world), ``utils.self_judge``
(the course's own model) and ``utils.endpoint_judge`` (an OpenAI-compatible endpoint);
``utils.judge.get_judge`` chooses one.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable

__all__ = [
    "JudgeScore",
    "extract_answer",
    "fill_template",
    "guarded",
    "hash_score",
    "integer_mass",
    "logprob_score",
    "parse_score",
]

#: Longest number (in digits, before any decimal point) that ``parse_score`` reads as a score;
#: longer digit runs are skipped (they are never a score on any scale the course uses).
MAX_SCORE_DIGITS = 6
#: A logprob above this is not a log-probability (p > 1 beyond rounding): the answer is invalid.
MAX_LOGPROB = 1e-3


@dataclass
class JudgeScore:
    """A judge's verdict: ``value`` (``None`` when there is no score), ``reason`` for ``None``, and
    ``method``, how the value was made ("logprobs", "text", "self-logprobs", "hash", "toy")."""

    value: float | None
    reason: str | None = None
    method: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def guarded(fn: Callable[..., JudgeScore], *args: Any, method: str | None = None) -> JudgeScore:
    """``fn(*args)``, or a ``JudgeScore(None, reason)`` if it raises: one answer never costs a batch."""
    try:
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 - any failure of one item ends as that item's reason
        return JudgeScore(None, f"could not score this answer ({type(e).__name__}: {str(e)[:200]})", method)
    if not isinstance(out, JudgeScore):
        return JudgeScore(None, f"scoring returned {type(out).__name__}, not a JudgeScore", method)
    if out.method is None:
        out.method = method
    return out


# --------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------
_NUMBER_OR_REFUSAL = re.compile(r"(?<![\w.])(-?)(\d+)(?:\.(\d+))?(?![\w])|(\brefusal\b)", re.IGNORECASE)


def parse_score(text: str | None, lo: int = 0, hi: int = 100) -> int | None:
    """The first integer in ``[lo, hi]`` in a judge's answer, else ``None``.

    ``"85"`` -> 85, ``"Score: 72/100"`` -> 72, ``"72.6"`` -> 73 (decimals are rounded half up),
    ``"150 ... 40"`` -> 40 (out-of-range numbers are skipped, and so are digit runs longer than
    ``MAX_SCORE_DIGITS``). ``"REFUSAL"`` (any case) before any in-range number -> ``None``; text
    without an in-range number (garbage, empty, ``None``) -> ``None``. Never raises.
    """
    if not text:
        return None
    for m in _NUMBER_OR_REFUSAL.finditer(str(text)):
        if m.group(4):
            return None
        sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
        if len(whole.lstrip("0")) > MAX_SCORE_DIGITS:
            continue  # a 400-digit number is no score (and float() of it would be inf)
        value = math.floor(Decimal(f"{sign}{whole}.{frac or 0}") + Decimal("0.5"))  # half up, exact
        if lo <= value <= hi:
            return int(value)
    return None


# --------------------------------------------------------------------------
# logprobs
# --------------------------------------------------------------------------
def _iter_token_logprobs(top_logprobs: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(top_logprobs, dict):
        yield from ((str(t), lp) for t, lp in top_logprobs.items())
        return
    for item in top_logprobs:
        if isinstance(item, dict):
            token, lp = item.get("token"), item.get("logprob")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            token, lp = item
        else:
            token, lp = getattr(item, "token", None), getattr(item, "logprob", None)
        if token is not None and lp is not None:
            yield str(token), lp


def _as_logprob(lp: Any) -> float | None:
    """A valid log-probability as a float (``-inf`` allowed), else ``None``."""
    if isinstance(lp, bool):
        return None
    try:
        x = float(lp)
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(x) or x > MAX_LOGPROB:
        return None
    return min(x, 0.0)


def invalid_logprobs(top_logprobs: Any) -> list[tuple[str, Any]]:
    """The (token, logprob) pairs that are not log-probabilities (NaN, > 0, +inf, not a number)."""
    if not top_logprobs:
        return []
    try:
        return [(t, lp) for t, lp in _iter_token_logprobs(top_logprobs) if _as_logprob(lp) is None]
    except TypeError:
        return [("?", top_logprobs)]


def _integer_probs(top_logprobs: Any, lo: int, hi: int) -> dict[int, float]:
    probs: dict[int, float] = {}
    for token, lp in _iter_token_logprobs(top_logprobs):
        t = token.strip()
        if not (t.isascii() and t.isdigit()) or len(t.lstrip("0")) > MAX_SCORE_DIGITS:
            continue
        value = int(t)
        x = _as_logprob(lp)
        if not lo <= value <= hi or x is None:
            continue
        probs[value] = probs.get(value, 0.0) + math.exp(x)
    return probs


def integer_mass(top_logprobs: Any, lo: int = 0, hi: int = 100) -> float:
    """Total probability of the integer tokens in ``[lo, hi]`` (invalid logprobs count as 0)."""
    if not top_logprobs:
        return 0.0
    return sum(_integer_probs(top_logprobs, lo, hi).values())


def weighted_mean(probs: dict[int, float], min_mass: float = 0.25) -> float | None:
    """``sum(p * v) / sum(p)`` over ``{value: probability}``; ``None`` when ``sum(p) < min_mass``."""
    total = sum(probs.values())
    if not total >= min_mass or total <= 0:
        return None
    return sum(v * p for v, p in probs.items()) / total


def logprob_score(top_logprobs: Any, lo: int = 0, hi: int = 100,
                  min_mass: float = 0.25) -> float | None:
    """Probability-weighted mean of the integer tokens among the first token's top logprobs.

    ``top_logprobs``: a list of ``{"token", "logprob"}`` dicts (as in
    :class:`~utils.api.ChatResult`), objects with ``.token``/``.logprob``, ``(token, logprob)``
    pairs, or a ``{token: logprob}`` dict. Tokens that are integers in ``[lo, hi]`` after stripping
    whitespace count (``" 85"`` and ``"85"`` both count as 85); all others are ignored, and so are
    values that are not log-probabilities (NaN, above 0). Returns ``None`` when those tokens' total
    probability is below ``min_mass`` (the judge was not answering with a number), or when there
    are no logprobs at all.
    """
    if not top_logprobs:
        return None
    return weighted_mean(_integer_probs(top_logprobs, lo, hi), min_mass)


# --------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------
def fill_template(template: str, question: str, answer: str) -> str:
    """Put ``question`` and ``answer`` into a judge prompt with ``{question}``/``{answer}``.

    Uses ``str.format`` (so ``{{``/``}}`` escapes work); if the template holds
    other braces that ``format`` rejects (a JSON example, say), the two fields
    are replaced literally instead.
    """
    try:
        return template.format(question=question, answer=answer)
    except (KeyError, IndexError, ValueError):
        return template.replace("{question}", question).replace("{answer}", answer)


_ANSWER_MARKERS = [
    (r"\[ANSWER START\]", r"\[ANSWER END\]"),
    (r"<answer>", r"</answer>"),
    (r"\[ANSWER\]", r"\[/ANSWER\]"),
    (r"\[RESPONSE START\]", r"\[RESPONSE END\]"),
    (r"<response>", r"</response>"),
]


def extract_answer(prompt: str) -> str:
    """The answer text inside a judge prompt, found between known markers
    (``[ANSWER START]…[ANSWER END]``, ``<answer>…</answer>``, ``[ANSWER]…[/ANSWER]``,
    ``[RESPONSE START]…[RESPONSE END]``, ``<response>…</response>``, any case);
    the whole prompt if there are none."""
    for start, end in _ANSWER_MARKERS:
        m = re.search(start + r"(.*?)" + end, prompt, re.IGNORECASE | re.DOTALL)
        if m:
            return m.group(1).strip()
    return prompt


def hash_score(text: str, lo: int = 0, hi: int = 100) -> int:
    """A stable pseudo-random integer in ``[lo, hi]``: sha256 of the whitespace-normalised text."""
    normalised = " ".join(text.split())
    digest = hashlib.sha256(normalised.encode("utf-8")).digest()
    return lo + int.from_bytes(digest[:8], "big") % (hi - lo + 1)


def as_messages(prompt: Any) -> list[dict]:
    """A judge prompt (a string, or a list of chat messages) as a list of messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def prompt_text(prompt: Any) -> str:
    """A judge prompt as one string (the messages' contents joined by newlines)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)
