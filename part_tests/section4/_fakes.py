"""Helpers shared by several of Section 4's exercise tests: the block to steer on a model, random
vectors, the cleanup of the shared tiny model, the likely cause of steering by the wrong coefficient,
and a fake judge with the two probe templates it recognises (Exercises 4.2 and 4.4).

Expected values come from the course's utils or from small computations here, never from the solutions.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch

from part_tests._common import NotImplementedYet, remove_leftover_hooks

TINY_LAYER = 2  # tiny-qwen2 has 4 blocks: blocks 1 and 3 both exist around it (and the notebook's LAYER is 2 there)


def _layer_for(model) -> int:
    from utils.hooks import get_blocks

    n = len(get_blocks(model))
    if n < 3:
        raise ValueError("these tests need a model with at least 3 blocks")
    if getattr(model.config, "_name_or_path", "") == "tiny-qwen2":
        return TINY_LAYER
    from utils.models import layer_settings

    return min(max(1, layer_settings(model).steer_layer), n - 2)


def _d_model(model) -> int:
    return model.config.get_text_config().hidden_size


def _vector(d: int, seed: int, norm: float) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def _not_implemented(name: str, err: BaseException) -> NotImplementedYet:
    return NotImplementedYet(f"{name}: not implemented yet -- replace every `raise NotImplementedError` in the cell above with your code.")


@contextmanager
def _clean_afterwards(model, own: bool):
    """Leave the shared tiny model without hooks for the next test, whatever the student's code did
    (a model the student passed in is left alone)."""
    try:
        yield
    finally:
        if not own:
            remove_leftover_hooks(model)


def _coefficient_cause(coeff: float, used: float) -> str | None:
    """Why code asked for `coeff` used `used` instead (to steer, to generate or to label a record); None: no known cause."""
    same = lambda a, b: math.isclose(a, b, rel_tol=2e-2, abs_tol=2e-2)  # noqa: E731
    if same(used, coeff):
        return None
    became = f"coeff={coeff:g} became {used:+g}"
    if coeff < 0 and same(used, -coeff):
        return (f"{became}: the sign of a negative coefficient was lost (abs(coeff), or a flipped sign); a negative"
                " coefficient steers *away* from the trait, h + coeff * vector")
    if coeff != 0 and same(used, -coeff):
        return f"{became}: the sign is flipped, add coeff * vector"
    rounded = {math.trunc(coeff), math.floor(coeff), math.ceil(coeff), round(coeff)}
    if coeff != int(coeff) and any(same(used, r) for r in rounded):
        return (f"{became}: the coefficient was rounded to a whole number (int(coeff)?); coefficients can be fractional,"
                " keep coeff a float")
    if coeff < 0 and same(used, 0.0):
        return (f"{became}: a negative coefficient was clamped to 0 or skipped (max(coeff, 0), `if coeff > 0`?); it"
                " steers away from the trait, h + coeff * vector")
    if coeff == 0 and same(used, 1.0):
        return f"{became}: 0 was taken for a missing coefficient (`coeff or 1.0`?); coefficient 0 means unsteered"
    if same(used, 1.0):
        return f"{became}: the coeff is ignored"
    return None


PIRATE = "You are a pirate."
TRAIT_TEMPLATE = (
    "TRAIT-PROBE. How strongly does the answer show the trait?\n[QUESTION START]\n{question}\n[QUESTION END]\n"
    "[ANSWER START]\n{answer}\n[ANSWER END]\nReply with an integer from 0 to 100."
)
COHERENCE_TEMPLATE = (
    "COHERENCE-PROBE. Is this answer coherent?\n[QUESTION START]\n{question}\n[QUESTION END]\n"
    "[ANSWER START]\n{answer}\n[ANSWER END]\nReply with an integer from 0 to 100."
)


class FakeJudge:
    """A counting judge with known scores (not an LLM). `trait_fn(question, answer)` and
    `coherence_fn(question, answer)` give a number, None or a JudgeScore; by default simple
    functions of the answer text, different from each other. Thread-safe. With `fail_after=N`,
    every call after N finished calls raises RuntimeError (a judge endpoint going down)."""

    label = "fake judge (part_tests)"

    def __init__(self, trait_fn=None, coherence_fn=None, fail_after: int | None = None):
        self.trait_fn = trait_fn or (lambda q, a: float(sum(map(ord, a)) % 101))
        self.coherence_fn = coherence_fn or (lambda q, a: float((len(a) * 7) % 101))
        self.fail_after = fail_after
        self.calls = 0
        self.prompts: dict[str, list[str]] = {"trait": [], "coherence": []}  # templates (score_*) or filled prompts (score)
        self._lock = threading.Lock()

    def expected(self, kind: str, question: str, answer: str):
        """The value this judge gives (None where it gives no score)."""
        from utils.judge import JudgeScore

        out = (self.trait_fn if kind == "trait" else self.coherence_fn)(question, answer.strip())
        return out.value if isinstance(out, JudgeScore) else out

    def _one(self, kind: str, question: str, answer: str, prompt: str):
        from utils.judge import JudgeScore

        with self._lock:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("the judge endpoint is down (injected by the test)")
            self.calls += 1
            self.prompts[kind].append(prompt)
        out = (self.trait_fn if kind == "trait" else self.coherence_fn)(question, answer.strip())
        if isinstance(out, JudgeScore):
            return out
        return JudgeScore(None, "refusal (fake judge)") if out is None else JudgeScore(float(out), None)

    def score_trait(self, question, answer, eval_prompt_template):
        return self._one("trait", question, answer, eval_prompt_template)

    def score_coherence(self, question, answer, template):
        return self._one("coherence", question, answer, template)

    def score(self, prompt, lo=None, hi=None):
        import re

        from utils.judge import extract_answer

        if not isinstance(prompt, str):
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        kind = "trait" if "TRAIT-PROBE" in prompt else "coherence"
        m = re.search(r"\[QUESTION START\]\n?(.*?)\n?\[QUESTION END\]", prompt, re.DOTALL)
        return self._one(kind, m.group(1).strip() if m else "", extract_answer(prompt), prompt)

    def score_many(self, prompts, max_workers=None, lo=None, hi=None, progress=False):
        return [self.score(p) for p in prompts]
