"""Helpers of the Section 1 tests that several exercises use: the small persona set, the course's
reference computations (exercises 1.3 and 1.4) the later tests stand on, persona-like vectors, and
the tolerances and messages shared between exercises.
"""

from __future__ import annotations

import copy
import functools

import torch
from jaxtyping import Float
from torch import Tensor

from part_tests._common import call, tiny


# The shape of a persona vector in the exercises' signatures (solutions/section1_persona_space.py),
# checked with expect_tensor.
VECTOR = Float[Tensor, "d_model"]

PERSONAS_SMALL = {
    "default": "",
    "ghost": "You are a ghost who has haunted an old lighthouse for two hundred years.",
    "analyst": "You are a data analyst who trusts numbers more than anecdotes.",
}

QUESTIONS_SMALL = [
    "What do you value most?",
    "How do you spend a day?",
    "What are you afraid of?",
    "Describe the place where you feel at home.",
]


def _attempt(fn, *args, name: str, **kwargs):
    """`call`, but an exception from the student's code becomes a failure that names it."""
    try:
        return call(fn, *args, name=name, **kwargs)
    except AssertionError:
        raise
    except Exception as err:  # the student's code crashed: say where, not a traceback from the test
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}") from err


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return v / v.norm()


def _show(v: torch.Tensor, k: int = 3) -> str:
    """The first k entries of a vector, for messages that show expected vs got."""
    return "[" + ", ".join(f"{float(x):.4g}" for x in v.flatten()[:k]) + ", ...]"


def _ref_format_messages(messages, tokenizer):
    """The course's exact-span formatting (utils.chat), in the shape of exercise 1.3's answer."""
    from utils.chat import format_chat

    fc = format_chat(messages, tokenizer)
    return fc.text, fc.token_span


def _ref_extract(model, tokenizer, system_prompts, questions, responses, layer):
    """The course's response-mean activations (utils.activations), in the shape of exercise 1.4's answer."""
    from utils.activations import conversations_from, response_mean_activations

    convs = conversations_from(system_prompts, questions, responses)
    return response_mean_activations(model, tokenizer, convs, layers=[layer])[:, 0]


@functools.lru_cache(maxsize=None)
def _gemma_like_tokenizer():
    """tiny-gemma2's tokenizer, made to add <bos> when add_special_tokens=True, as the real Gemma
    tokenizer does (so that a template's <bos> plus the tokenizer's <bos> shows up as a double BOS)."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tiny("tiny-gemma2")[1])
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)])
    return tok


def _tol(model) -> dict:
    dtype = next(model.parameters()).dtype
    return dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)


_NAMES = ["oracle", "assistant", "ghost", "analyst", "bard", "editor", "mystic"]

_SIDES = {"oracle": -1.0, "assistant": 1.0, "ghost": -1.1, "analyst": 0.9, "bard": -0.8, "editor": 1.1, "mystic": -0.2}


def _geometry(d: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    """Persona-like vectors: a big shared component plus small structure (two camps and a middle).

    Names are in a non-alphabetical order so that sorting them gives a different order."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g, dtype=torch.float64) * 40 + 25  # not constant across dims
    u = torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    return {n: common + 3 * _SIDES[n] * u + 0.8 * ((i % 3) - 1) * w + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
            for i, n in enumerate(_NAMES)}


def _geometry_bf16(d: int = 64, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Persona-like vectors in bfloat16, as a GPU model gives them: entries of a few hundred that differ
    between personas by a few per cent (below bf16's resolution once subtracted), and an axis (not unit)
    with a component along the shared direction, so projections are large and close together."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g, dtype=torch.float64) * 300 + 100
    u = torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    vectors = {n: (common + 12 * _SIDES[n] * u + 4 * ((i % 3) - 1) * w + 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
                   ).to(torch.bfloat16) for i, n in enumerate(_NAMES)}
    axis = (2.5 * (_unit(common) + 0.3 * _unit(u))).to(torch.bfloat16)
    return vectors, axis


def _undirected(d: int = 16) -> list[tuple[str, torch.Tensor]]:
    """Vectors with no direction: what a broken extraction or an empty layer gives."""
    nan = torch.randn(d)
    nan[3] = float("nan")
    inf = torch.randn(d)
    inf[0] = float("inf")
    return [("a zero vector", torch.zeros(d)), ("a vector holding NaN", nan), ("a vector holding inf", inf)]
