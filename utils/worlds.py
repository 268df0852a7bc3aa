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
# "default" is the real-model setting (a chosen model, or the paper's); "toy" and "tiny" shrink the
# runs so that a notebook executes on a CPU in a minute or two (and say what the offline judges can
# not do). A value of None for a count means "all of them".
TABLES: dict[int, dict[str, dict[str, Any]]] = {
    1: {
        "default": {
            "n_questions": None,  # persona questions per persona (None: all 18)
            "max_tokens": 256,  # tokens per generated response
            "temperature": 0.7,  # sampling temperature of local generation
            "api_generation": True,  # generate through the API when a key is set
            "filter_by_role_score": True,  # keep only responses the judge scored as fully in role
            "load_released_vectors": True,  # compare with the paper's released Gemma 2 27B vectors
        },
        "toy": {"n_questions": 3, "max_tokens": 32, "temperature": 1.0, "api_generation": False,
                "load_released_vectors": False},
        "tiny": {"n_questions": 3, "max_tokens": 8, "temperature": 1.0, "api_generation": False,
                 "filter_by_role_score": False,  # the stand-in judge's scores are noise
                 "load_released_vectors": False},
    },
    2: {
        "default": {
            "n_questions": 10,  # persona questions behind the quick axis
            "max_new_tokens": 200,  # tokens per reply behind the quick axis
            "load_released_axis": True,  # compare with the paper's released axis and capping config
            "reply_tokens": 200,  # tokens per reply in the drifting conversations
            "replay_own_conversation": False,  # replay the model's own pushed conversation, not the therapy one
            "n_replays": 24,  # conversations replayed with and without capping
        },
        # the therapy transcript's plain prose does not move the toy model: replay the pushing user
        "toy": {"n_questions": 4, "max_new_tokens": 32, "load_released_axis": False, "reply_tokens": 96,
                "replay_own_conversation": True, "n_replays": 18},
        "tiny": {"n_questions": 4, "max_new_tokens": 32, "load_released_axis": False, "reply_tokens": 96,
                 "n_replays": 4},
    },
    3: {
        "default": {
            "n_questions": None,  # extraction questions per instruction pair (None: all 20)
            "max_new_tokens": 256,  # tokens per contrastive answer
            "cache_responses": True,  # read and write the generated answers in the course cache
            "sweep_layer_step": 3,  # the layer sweep steers at every n-th block (and the steering layer)
            "n_steer_questions": 5,  # eval questions per layer of the sweep (None: all 20)
            "steer_tokens": 96,  # tokens per steered answer in the sweep
            "load_published_sae": True,  # use a published SAE when the model has one
        },
        # the toy model opens many answers with a plain preamble before the trait's voice shows
        "toy": {"n_questions": 4, "max_new_tokens": 32, "cache_responses": False, "sweep_layer_step": 1,
                "n_steer_questions": None, "load_published_sae": False},
        "tiny": {"n_questions": 4, "max_new_tokens": 12, "cache_responses": False, "sweep_layer_step": 1,
                 "n_steer_questions": 2, "steer_tokens": 8, "load_published_sae": False},
    },
    4: {
        "default": {
            "torch_threads": None,  # CPU threads for torch (None: torch's default)
            "n_questions": 20,  # extraction questions
            "n_eval": 20,  # evaluation questions
            "max_new_tokens": 256,  # tokens per answer
            # coefficients multiply the raw vector: the paper's sweep is -3..+5
            "coefficients": (-3, -1, 0, 1, 3, 5),
            "coherence_threshold": 50,  # steered answers below this coherence are dropped
            "fresh_pipeline_cache": False,  # run the pipeline in a new empty cache folder
        },
        # the toy model shows a trait only once its answer has room for a few style chunks (with 16
        # new tokens every steered answer scores the judge's "no markers" 25); +2 shows where its
        # curve turns upward
        "toy": {"torch_threads": 1, "n_questions": 4, "n_eval": 8, "max_new_tokens": 48,
                "coefficients": (-3, -1, 0, 1, 2, 3, 5), "fresh_pipeline_cache": True},
        # a 4-block, 64-wide model gains nothing from threads; the stand-in's coherence is noise
        "tiny": {"torch_threads": 1, "n_questions": 4, "n_eval": 3, "max_new_tokens": 16,
                 "coherence_threshold": 0, "fresh_pipeline_cache": True},
    },
}


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
