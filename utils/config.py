"""Course settings: which model runs, and whether we are in tiny (offline) mode.

One setting chooses the model for the whole course:

    PERSONA_COURSE_MODEL=tiny                      # offline random-weight models (CI, grading, CPU readers)
    PERSONA_COURSE_MODEL=toy                       # the toy persona world: a small trained model and its judge
    PERSONA_COURSE_MODEL=paper                     # each section's paper model (big GPUs)
    PERSONA_COURSE_MODEL=Qwen/Qwen2.5-7B-Instruct  # any HF chat model, for every section

When the variable is unset, the course runs the random tiny models if nbgrader is executing the
notebook (nbgrader sets NBGRADER_EXECUTION in the kernel), the toy world if no CUDA GPU is present
(the tiny random models if its weights are missing), and otherwise `DEFAULT_CHOSEN_MODEL`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHOSEN_MODEL = "Qwen/Qwen2.5-7B-Instruct"

# The paper model of each section (the model each replicated paper used).
PAPER_MODELS = {
    1: "google/gemma-2-27b-it",
    2: "Qwen/Qwen3-32B",
    3: "Qwen/Qwen2.5-7B-Instruct",
    4: "Qwen/Qwen2.5-7B-Instruct",
    5: "Qwen/Qwen2.5-7B-Instruct",
}
# The tiny offline model of each section: the same family as the paper model.
TINY_MODELS = {1: "tiny-gemma2", 2: "tiny-qwen2", 3: "tiny-qwen2", 4: "tiny-qwen2", 5: "tiny-qwen2"}


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is reported elsewhere
        return False


def model_setting() -> str:
    """The raw model setting: 'tiny', 'paper' or an HF model id."""
    value = os.environ.get("PERSONA_COURSE_MODEL", "").strip()
    if value:
        return value
    if os.environ.get("NBGRADER_EXECUTION") or os.environ.get("PERSONA_COURSE_TINY"):
        return "tiny"
    if _cuda_available():
        return DEFAULT_CHOSEN_MODEL
    return "toy" if (REPO_ROOT / "utils" / "assets" / "toy-qwen2" / "model.safetensors").exists() else "tiny"


def is_toy() -> bool:
    """True when the course runs in the toy persona world (scripts/toy_world): an offline model
    trained on a synthetic corpus, scored by the toy judge. nbgrader never runs it."""
    return not os.environ.get("NBGRADER_EXECUTION") and model_setting() == "toy"


def is_tiny() -> bool:
    """True when the course runs offline on the small local models (the random tiny models, or the
    toy world): no downloads, no API calls."""
    if os.environ.get("NBGRADER_EXECUTION") or os.environ.get("PERSONA_COURSE_TINY"):
        return True
    return model_setting() in ("tiny", "toy")


def model_name_for_section(section: int) -> str:
    """The model a section loads under the current setting."""
    if section not in PAPER_MODELS:
        raise ValueError(f"unknown section {section!r}; the course has sections {sorted(PAPER_MODELS)}")
    if is_toy():
        return "toy-qwen2"
    if is_tiny():
        return TINY_MODELS[section]
    setting = model_setting()
    if setting == "paper":
        return PAPER_MODELS[section]
    return setting


def world_label(section: int) -> str:
    """What a section runs on, in one phrase for its first output line: 'toy persona world
    (toy-qwen2)', 'random tiny model (tiny-gemma2): its numbers are noise', or the model's name."""
    name = model_name_for_section(section)
    if is_toy():
        return f"toy persona world ({name})"
    if is_tiny():
        return f"random tiny model ({name}): its numbers are noise"
    return name
