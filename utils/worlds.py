"""One settings object per world, read once in each section's setup cell.

The course runs in four worlds (`PERSONA_COURSE_MODEL`, see `utils.config`):

| world | what runs | what its numbers mean |
|---|---|---|
| `toy` | the toy persona world: a small model trained on a synthetic corpus, its marker-counting judge | real but stylised effects, on a CPU |
| `tiny` | random-weight tiny models (tests, nbgrader) | noise: only the plumbing means something |
| `model` | a real chat model chosen by name (e.g. Qwen2.5-7B-Instruct on one 24 GB GPU) | real results |
| `paper` | each section's paper model | the papers' setting |

Everything that differs between worlds (sample counts, lengths, thresholds, coefficient sweeps) is a
row of the section's table below, so that the code a learner reads never branches on the world:

    S = settings(section=4)          # in the setup cell
    N_QUESTIONS = S.n_questions      # ... and later cells read S only
    print(S)                         # the world and every value it sets

A row not given for a world falls back to the section's "default" row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from utils import config

WORLD_KINDS = ("toy", "tiny", "model", "paper")


def current_kind() -> str:
    """The world the course runs in now: 'toy', 'tiny', 'model' or 'paper'."""
    if config.is_toy():
        return "toy"
    if config.is_tiny():
        return "tiny"
    return "paper" if config.model_setting() == "paper" else "model"


# section -> world kind (or "default") -> the values that world sets. Each section fills its own.
TABLES: dict[int, dict[str, dict[str, Any]]] = {}


@dataclass(frozen=True)
class Settings:
    """A world's settings for one section: `S.kind`, `S.label`, `S.note`, and the section's values
    as attributes (`S.n_questions`). Printing it lists them all."""

    section: int
    kind: str
    label: str  # one phrase naming the world, for a section's first output line
    note: str  # a suffix for titles: " (toy world)", " (random tiny model: noise)", or ""
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        raise AttributeError(f"section {object.__getattribute__(self, 'section')} settings have no {name!r}; "
                             f"they set {sorted(values)}")

    def __str__(self) -> str:
        rows = "".join(f"\n  {k} = {v!r}" for k, v in self.values.items())
        return f"world: {self.label}{rows}"


_NOTES = {"toy": " (toy world)", "tiny": " (random tiny model: noise)", "model": "", "paper": ""}


def settings(section: int, kind: str | None = None) -> Settings:
    """The settings of `section` in the current world (or in world `kind`)."""
    kind = kind or current_kind()
    if kind not in WORLD_KINDS:
        raise ValueError(f"unknown world {kind!r}; the worlds are {WORLD_KINDS}")
    table = TABLES.get(section, {})
    values = {**table.get("default", {}), **table.get(kind, {})}
    label = config.world_label(section) if kind == current_kind() else kind
    return Settings(section=section, kind=kind, label=label, note=_NOTES[kind], values=values)


# Section 5 (finetuning): LoRA finetunes of the shared base, their evaluation and the screening.
TABLES[5] = {
    # A real model (Qwen2.5-7B-Instruct on one GPU): the course's starting values, not the paper's.
    "default": dict(steps=100, lr=1e-4, rank=8, batch_size=8, n_train=None, n_eval=20, max_new_tokens=128,
                    n_vector_questions=10, prevent_coeffs=(2.0, 4.0), posthoc_coeffs=(-1.0, -2.0),
                    screen_samples=200, threads=None),
    # The toy world: a 6-block model trained on the toy corpus; the finetunes take seconds on a CPU.
    "toy": dict(steps=25, lr=3e-3, rank=8, batch_size=8, n_train=None, n_eval=16, max_new_tokens=48,
                n_vector_questions=5, prevent_coeffs=(3.0, 6.0), posthoc_coeffs=(-1.0, -2.0),
                screen_samples=32, threads=1),
    # Random tiny models (nbgrader): two optimizer steps per finetune, numbers are noise.
    "tiny": dict(steps=2, lr=1e-3, rank=4, batch_size=4, n_train=8, n_eval=2, max_new_tokens=8,
                 n_vector_questions=1, prevent_coeffs=(2.0,), posthoc_coeffs=(-1.0,), screen_samples=8, threads=1),
    # The paper's setting (Qwen2.5-7B-Instruct, hidden_states[20] = block 19).
    "paper": dict(steps=300, n_eval=20, max_new_tokens=256),
}
