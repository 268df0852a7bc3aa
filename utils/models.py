"""Model loading for three tiers: the paper model, a model chosen by one setting, the tiny models.

    model, tokenizer = load_course_model(section=3)   # follows PERSONA_COURSE_MODEL (utils.config)
    model, tokenizer = load_model("Qwen/Qwen2.5-7B-Instruct")  # a real model, standard from_pretrained
    model, tokenizer = load_model("tiny-qwen2")        # offline: random weights, local tokenizer

Tiny models are the real Qwen2 / Gemma2 architectures with 4 blocks and d_model 64, randomly
initialised from the config in utils/assets/<name>/ with a fixed seed, so every run (CI, nbgrader,
the book) sees the same weights. Nothing is downloaded for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

# Expandable segments keep the CUDA allocator from fragmenting across the many batch shapes of
# extraction and generation (measured on an H200: reserved memory above the weights 4.5-5.6 GiB
# without, 2.4-3.0 GiB with). Read when CUDA first allocates, so set before any model loads.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

from utils import config

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_NAMES = ("tiny-qwen2", "tiny-gemma2")  # random weights, built from a config at load time
TOY_NAMES = ("toy-qwen2",)  # the toy persona world: trained weights shipped in utils/assets


@dataclass(frozen=True)
class LayerSettings:
    """Layers (0-based block indices, the layer convention of utils/hooks.py) that the papers used for a model."""

    axis_layer: int  # Assistant Axis / persona-space layer
    steer_layer: int  # persona-vector extraction and steering layer
    cap_layers: tuple[int, ...]  # activation-capping layers


# Settings the papers state, as block indices. The persona-vectors repo's "layer 20"
# is hidden_states[20], i.e. the output of block 19 here. Fields the papers do not give for a model
# are the course's proportional choices (see `proportional_layers`).
def proportional_layers(num_layers: int) -> LayerSettings:
    """The course's choice for models the papers did not study: axis at half depth, steering at
    ~70 % depth, capping over the band from ~72 % to ~84 % of depth (Qwen3-32B's 46-53 of 64)."""
    cap_start = round(num_layers * 0.72)
    cap_end = min(num_layers, max(cap_start + 1, round(num_layers * 0.84)))
    return LayerSettings(
        axis_layer=num_layers // 2,
        steer_layer=max(0, round(num_layers * 0.7) - 1),
        cap_layers=tuple(range(cap_start, cap_end)),
    )


PAPER_LAYERS = {
    # Assistant Axis: Gemma 2 27B (46 blocks), target layer 22.
    "google/gemma-2-27b-it": LayerSettings(22, 22, proportional_layers(46).cap_layers),
    # Assistant Axis: Qwen3-32B (64 blocks), target layer 32, capping layers 46-53.
    "Qwen/Qwen3-32B": LayerSettings(32, 32, tuple(range(46, 54))),
    # Persona Vectors: Qwen2.5-7B-Instruct (28 blocks), hidden_states[20] = block 19.
    "Qwen/Qwen2.5-7B-Instruct": LayerSettings(proportional_layers(28).axis_layer, 19, proportional_layers(28).cap_layers),
    # Assistant Axis: Llama 3.3 70B (80 blocks), capping layers 56-71.
    "meta-llama/Llama-3.3-70B-Instruct": LayerSettings(40, 40, tuple(range(56, 72))),  # axis: course choice
}


# The toy world's model (6 blocks; scripts/toy_world): axis and steering at the proportional blocks,
# but capping over blocks 4-5. The proportional band (72-84 % of depth) is a single block at this
# depth; Llama 3.3 70B's band (56-71 of 80, i.e. 70-90 % of depth) covers blocks 4 and 5 of six.
TOY_LAYERS = {"toy-qwen2": replace(proportional_layers(6), cap_layers=(4, 5))}


def known_model(name: str) -> str | None:
    """The model of `PAPER_LAYERS` that `name` is: its hub id; a local folder named like it
    (`/models/Qwen3-32B`, `~/weights/Qwen_Qwen3-32B`); or a hub-cache snapshot of it
    (`.../models--Qwen--Qwen3-32B/snapshots/<revision>`). Case is ignored. None for other names."""
    if not name:
        return None
    if name in PAPER_LAYERS:
        return name
    parts = [p for p in str(name).replace("\\", "/").rstrip("/").split("/") if p]
    candidates = {parts[-1].lower()} if parts else set()
    if len(parts) >= 2:
        candidates.add(f"{parts[-2]}/{parts[-1]}".lower())
    for p in parts:
        if p.startswith("models--"):  # huggingface_hub's cache folder: models--<org>--<name>
            candidates.add(p[len("models--"):].replace("--", "/").lower())
    for hub_id in PAPER_LAYERS:
        short = hub_id.split("/")[-1].lower()
        if {hub_id.lower(), short, hub_id.replace("/", "_").lower(), hub_id.replace("/", "--").lower()} & candidates:
            return hub_id
    return None


def layer_settings(model_or_name, num_layers: int | None = None) -> LayerSettings:
    """The paper's layers for a known model (its hub id, or a local folder of it: see `known_model`)
    or the toy world's, else proportional choices for any depth."""
    name = model_or_name if isinstance(model_or_name, str) else getattr(model_or_name.config, "_name_or_path", "")
    known = known_model(name)
    if known is not None:
        return PAPER_LAYERS[known]
    if name in TOY_LAYERS:
        return TOY_LAYERS[name]
    if num_layers is None:
        num_layers = num_blocks(model_or_name)
    return proportional_layers(num_layers)


def num_blocks(model) -> int:
    from utils.hooks import get_blocks

    return len(get_blocks(model))


def available_memory(device: torch.device | str | int | None = None) -> int:
    """Bytes of GPU memory this process may still allocate on `device`: what the card has free plus
    what PyTorch's allocator holds unused, capped by `torch.cuda.set_per_process_memory_fraction`
    where one is set. 0 on a non-CUDA device."""
    device = torch.device("cuda" if device is None else device) if not isinstance(device, int) else torch.device("cuda", device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    room = free + max(0, torch.cuda.memory_reserved(device) - allocated)
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if getter is not None:
        fraction = getter(device)
        if fraction < 1.0:
            room = min(room, int(fraction * total) - allocated)
    return max(0, int(room))


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = ASSETS / name if name in TINY_NAMES + TOY_NAMES else name
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation and batched extraction both pad on the left
    return tok


def load_tiny_model(name: str = "tiny-qwen2", seed: int = 0):
    """A tiny random-weight model of a real architecture, and its local tokenizer. Offline."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in TINY_NAMES:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {TINY_NAMES}")
    cfg = AutoConfig.from_pretrained(str(ASSETS / name))
    # A d_model-64 model gains nothing from several threads; on a small shared CPU they only contend.
    torch.set_num_threads(1)
    devices_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(devices_state)
    model.config._name_or_path = name
    model.eval()
    return model, load_tokenizer(name)


def load_toy_model(name: str = "toy-qwen2"):
    """The toy persona world's trained model (scripts/toy_world/train.py), from its local folder."""
    from transformers import AutoModelForCausalLM

    folder = ASSETS / name
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder}/model.safetensors is missing: run python scripts/toy_world/train.py")
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.config._name_or_path = name
    model.eval()
    return model, load_tokenizer(name)


_LAST_LOADED: list = []  # [(weak reference to the model, tokenizer)] of the last load_model call


def last_loaded():
    """(model, tokenizer) that `load_model` returned last, while that model is still alive; else
    None. The self-judge (utils.self_judge) judges with it."""
    if not _LAST_LOADED:
        return None
    ref, tokenizer = _LAST_LOADED[0]
    model = ref()
    return None if model is None else (model, tokenizer)


def _remember(loaded):
    import weakref

    _LAST_LOADED[:] = [(weakref.ref(loaded[0]), loaded[1])]
    return loaded


def load_model(name: str, dtype: torch.dtype | None = None, device_map: str | dict | None = None):
    """Load `name` ('tiny-qwen2', 'tiny-gemma2', 'toy-qwen2' or an HF id / local folder) in eval mode."""
    if name in TINY_NAMES:
        return _remember(load_tiny_model(name))
    if name in TOY_NAMES:
        return _remember(load_toy_model(name))
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if device_map is None:
        device_map = "auto" if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=device_map)
    model.eval()
    return _remember((model, load_tokenizer(name)))


def load_course_model(section: int, **kwargs):
    """The model a section uses under the course's one model setting (see utils.config)."""
    return load_model(config.model_name_for_section(section), **kwargs)


def input_device(model) -> torch.device:
    """Where input ids must go (the embedding's device, also for device_map='auto' models)."""
    return model.get_input_embeddings().weight.device
