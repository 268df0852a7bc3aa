"""Which judge scores the course's answers: one chooser, and the judges side by side.

Four judges share one interface (``score``, ``score_many``, ``score_trait``, ``score_coherence``,
``label``, ``method``, ``identity()``); every score is a :class:`~utils.scoring.JudgeScore` (a
value, or ``None`` with the reason, and the method that made it):

==========================  =========================================  ================================
judge                       when :func:`get_judge` picks it            label (example)
==========================  =========================================  ================================
toy judge                   the toy world (``PERSONA_COURSE_MODEL=toy``) "toy-world judge (marker counts; ...)"
  (``utils.toy_judge``)
offline stand-in            the random tiny models (CI, nbgrader)       "offline stand-in judge (hash
  (``utils.offline_judge``)                                             noise, not an LLM)"
endpoint judge              a real model and an API key                 "openai/gpt-4.1-mini via
  (``utils.endpoint_judge``)                                            https://openrouter.ai/api/v1"
self-judge                  a real model and no API key                 "self-judged by
  (``utils.self_judge``)                                                Qwen/Qwen2.5-7B-Instruct"
==========================  =========================================  ================================

The endpoint judge is the papers' set-up (``gpt-4.1-mini``) and is preferred whenever a key is
set; an OpenAI-compatible server of your own (vLLM) is the way to judge at scale. The self-judge
needs nothing but the model the section loaded. Whatever judged, say so next to the scores:
:func:`judge_label` gives the line to print or put in a plot title.

The names below stay importable from here (``from utils.judge import Judge, OfflineJudge,
JudgeScore, parse_score, ...``), so this module is the one place to get a judge from.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from utils import config
from utils.api import get_judge_client
from utils.api_settings import MissingAPIKeyError, key_available
from utils.endpoint_judge import CALIBRATION_PROMPT, Judge
from utils.offline_judge import OFFLINE_JUDGE_LABEL, OfflineJudge
from utils.scoring import (JudgeScore, extract_answer, fill_template, guarded, hash_score,
                           integer_mass, logprob_score, parse_score)
from utils.self_judge import SelfJudge
from utils.toy_judge import TOY_JUDGE_LABEL, toy_judge

__all__ = [
    "CALIBRATION_PROMPT",
    "JUDGE_KINDS",
    "Judge",
    "JudgeScore",
    "MissingAPIKeyError",
    "OFFLINE_JUDGE_LABEL",
    "OfflineJudge",
    "SelfJudge",
    "TOY_JUDGE_LABEL",
    "extract_answer",
    "fill_template",
    "get_judge",
    "guarded",
    "hash_score",
    "integer_mass",
    "judge_kind",
    "judge_label",
    "logprob_score",
    "offline_delusion_reply",
    "parse_score",
    "tiny_mode",
    "toy_judge",
]

log = logging.getLogger(__name__)

JUDGE_KINDS = ("toy", "offline", "endpoint", "self")
_CHOSEN: dict[tuple, Any] = {}


def tiny_mode() -> bool:
    """True when the course runs offline on the small local models (``utils.config.is_tiny()``)."""
    return config.is_tiny()


def judge_kind() -> str:
    """Which judge :func:`get_judge` gives right now: "toy", "offline", "endpoint" or "self"."""
    if config.is_toy():
        return "toy"
    if config.is_tiny():
        return "offline"
    return "endpoint" if key_available(get_judge_client(cache=None).key_env) else "self"


def get_judge(allow_offline: bool = True, kind: str | None = None, model=None, tokenizer=None,
              **judge_kwargs: Any):
    """The judge to use right now (see the module docstring): the toy judge in the toy world, the
    hash stand-in on the random tiny models, else the endpoint judge when an API key is set and the
    self-judge (the course's loaded model) when not.

    ``kind`` forces one ("endpoint" raises :class:`~utils.api_settings.MissingAPIKeyError` without a key;
    "self" takes ``model``/``tokenizer``, default the model the course loaded last).
    ``judge_kwargs`` go to the judge's constructor (``client=``, ``mode=``, ``batch_size=``...).
    Without arguments, the same judge object is returned for the same settings, so its scoring
    method, once decided, holds for the whole session. ``allow_offline`` is accepted for older
    code and changes nothing: a real model is never judged by hash noise.
    """
    if kind is None:
        if judge_kwargs.get("client") is not None:
            kind = "endpoint"
        elif model is not None:
            kind = "self"
        else:
            kind = judge_kind()
    if kind not in JUDGE_KINDS:
        raise ValueError(f"kind must be one of {JUDGE_KINDS}, got {kind!r}")
    memo = None
    if not judge_kwargs and model is None:
        s = config.model_setting(), os.environ.get("PERSONA_COURSE_TINY", ""), os.environ.get("NBGRADER_EXECUTION", "")
        memo = (kind, s, repr(get_judge_client(cache=None)) if kind == "endpoint" else "")
        if memo in _CHOSEN:
            return _CHOSEN[memo]
    if kind == "toy":
        judge = toy_judge()
    elif kind == "offline":
        judge = OfflineJudge()
    elif kind == "endpoint":
        client = judge_kwargs.pop("client", None)
        if client is None:
            client = get_judge_client()
            client._ensure_key()  # MissingAPIKeyError naming the variable to set
        judge = Judge(client=client, **judge_kwargs)
    else:
        judge = SelfJudge(model, tokenizer, **judge_kwargs)
    if memo is not None:
        _CHOSEN[memo] = judge
    return judge


def judge_label(judge=None) -> str:
    """The label of ``judge`` (default: :func:`get_judge`), e.g. ``"self-judged by
    Qwen/Qwen2.5-7B-Instruct"``: print it beside a score table, or put it in a plot's title, so
    that every score says which judge made it."""
    judge = judge if judge is not None else get_judge()
    return str(getattr(judge, "label", type(judge).__name__))


def offline_delusion_reply(judge: OfflineJudge, prompt: str) -> str | None:
    """What an offline judge (not an LLM) answers to Section 2's delusion prompt: the two score lines
    ``AVOIDING_DELUSION: <1-5>`` and ``MAINTAINING_ROLE: <1-5>`` for the reply in ``prompt``, or None
    when it gives no score. The toy judge rates the reply's theatricality and AI self-description
    (marker counts); the hash stand-in of the random tiny models turns hashes of the reply into
    numbers (noise), and says so in a first line."""
    reply = extract_answer(prompt)
    if getattr(judge, "method", None) == "toy":
        from utils.toy_judge import delusion_scores

        scores = delusion_scores(reply)
        return None if scores is None else f"AVOIDING_DELUSION: {scores[0]}\nMAINTAINING_ROLE: {scores[1]}"
    a = judge.score(f"<response>{reply}</response>", lo=1, hi=5).value
    b = judge.score(f"<response>role: {reply}</response>", lo=1, hi=5).value
    if a is None or b is None:
        return None
    return f"[{judge.label}]\nAVOIDING_DELUSION: {int(a)}\nMAINTAINING_ROLE: {int(b)}"
