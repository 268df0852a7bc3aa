"""Sparse autoencoders (SAEs) on the residual stream: a small class, loaders, a synthetic builder.

One convention for the whole course (it matches SAELens):

    W_enc [d_model, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_model]   b_dec [d_model]

    pre = (x - b_dec) @ W_enc + b_enc      (the "- b_dec" only when apply_b_dec_to_input)
    f   = relu(pre), then zeroed where f <= threshold (a scalar, or one value per feature)
    x_hat = f @ W_dec + b_dec

so **row i of W_dec is feature i's direction** in the residual stream (d_model numbers). Decoders
are often, but not always, unit-norm: normalise rows before comparing them by cosine.

Published SAEs for the course's models
--------------------------------------
Qwen/Qwen2.5-7B-Instruct (the paper model of sections 3-4): `andyrdt/saes-qwen2.5-7b-instruct` on
the Hugging Face Hub holds BatchTopK SAEs (the `dictionary_learning` library's format) trained on the
output of blocks 3, 7, 11, 15, 19, 23 and 27 -- "activation at layer L" in the course's convention,
so block 19 is the persona-vectors repo's "layer 20". Four SAEs per block, 131072 features each,
`trainer_0..3` with k = 32, 64, 128, 256. Files: `resid_post_layer_<L>/trainer_<t>/ae.pt` (a
state dict of tensors, ~3.8 GB in float32) and `config.json`. SAELens lists the same SAEs as the
release `qwen2.5-7b-instruct-andyrdt`, and Neuronpedia has feature pages for `trainer_1`
(`qwen2.5-7b-it`, source `<L>-resid-post-aa`).

    sae = load_published_sae("Qwen/Qwen2.5-7B-Instruct", layer=19)   # downloads ae.pt once

At inference time a BatchTopK SAE uses its learned global threshold instead of the batch top-k
(the library's own `encode(use_threshold=True)`), which is what `SparseAutoencoder.encode` does.

Other models: no SAE is registered here for the smaller Qwen2.5 instruct models; SAEs for them
exist on the Hub from third parties (in SAELens format) but are not tested by the course.
`load_sae(path)` reads either format from a local file or folder:
- a `dictionary_learning` checkpoint: `ae.pt` (keys `encoder.weight`, `encoder.bias`,
  `decoder.weight`, `b_dec`, optional `threshold`, `k`), or a folder that holds one, with an
  optional `config.json` beside it;
- a SAELens folder: `cfg.json` + `sae_weights.safetensors` (keys `W_enc`, `b_enc`, `W_dec`,
  `b_dec`, optional `threshold` for JumpReLU SAEs).
Checkpoints are read with `torch.load(..., weights_only=True)` or safetensors: nothing is unpickled.

Tests and tiny mode use `synthetic_sae(...)`: random unit-norm features plus features planted in
directions you choose, so that a method's answer is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from utils.validate import check_vector

__all__ = [
    "PUBLISHED_SAES",
    "SparseAutoencoder",
    "UnsafeCheckpointError",
    "from_dictionary_learning",
    "from_saelens",
    "load_published_sae",
    "load_sae",
    "published_sae_layers",
    "synthetic_sae",
]


class SparseAutoencoder(torch.nn.Module):
    """A residual-stream SAE in the convention of this module's docstring.

    `threshold` is a float (one value for every feature) or a tensor [d_sae]; activations at or
    below it are set to 0 after the ReLU. `meta` keeps where the SAE came from (repo, layer, k...).
    """

    def __init__(
        self,
        W_enc: Float[Tensor, "d_model d_sae"],
        b_enc: Float[Tensor, "d_sae"],
        W_dec: Float[Tensor, "d_sae d_model"],
        b_dec: Float[Tensor, "d_model"],
        threshold: float | Float[Tensor, "d_sae"] = 0.0,
        apply_b_dec_to_input: bool = True,
        meta: Mapping | None = None,
    ):
        super().__init__()
        W_enc, b_enc, W_dec, b_dec = (torch.as_tensor(t) for t in (W_enc, b_enc, W_dec, b_dec))
        if W_enc.ndim != 2 or W_dec.ndim != 2:
            raise ValueError(f"W_enc and W_dec must be matrices, got shapes {tuple(W_enc.shape)} and {tuple(W_dec.shape)}")
        d_model, d_sae = W_enc.shape
        if tuple(W_dec.shape) != (d_sae, d_model):
            raise ValueError(
                f"W_dec must have shape [d_sae, d_model] = [{d_sae}, {d_model}] (one row per feature) "
                f"to match W_enc [d_model, d_sae] = {tuple(W_enc.shape)}; got {tuple(W_dec.shape)}"
            )
        if tuple(b_enc.shape) != (d_sae,) or tuple(b_dec.shape) != (d_model,):
            raise ValueError(f"b_enc must be [{d_sae}] and b_dec [{d_model}], got {tuple(b_enc.shape)} and {tuple(b_dec.shape)}")
        for label, t in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            if not t.is_floating_point():
                raise ValueError(f"{label} must be a floating-point tensor, got dtype {t.dtype}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{label} has NaN or infinite entries")
        self.W_enc = torch.nn.Parameter(W_enc, requires_grad=False)
        self.b_enc = torch.nn.Parameter(b_enc, requires_grad=False)
        self.W_dec = torch.nn.Parameter(W_dec, requires_grad=False)
        self.b_dec = torch.nn.Parameter(b_dec, requires_grad=False)
        threshold = torch.as_tensor(threshold, dtype=W_enc.dtype)
        if not bool(torch.isfinite(threshold).all()):
            raise ValueError("threshold has NaN or infinite entries")
        if threshold.ndim not in (0, 1) or (threshold.ndim == 1 and threshold.shape[0] != d_sae):
            raise ValueError(f"threshold must be a number or a tensor [{d_sae}], got shape {tuple(threshold.shape)}")
        self.register_buffer("threshold", threshold)
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.meta = dict(meta or {})

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def __repr__(self) -> str:
        src = self.meta.get("source", "custom")
        return f"SparseAutoencoder(d_model={self.d_model}, d_sae={self.d_sae}, source={src!r})"

    def _check_input(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        x = torch.as_tensor(x)
        if x.dtype == torch.bool or not x.is_floating_point():
            raise ValueError(f"x (the SAE input) must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x (the SAE input) must end in d_model = {self.d_model}, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"x (the SAE input) has {int((~torch.isfinite(x)).sum())} NaN or infinite entries")
        return x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    @torch.no_grad()
    def pre_activations(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
        """Encoder pre-activations [..., d_sae] (before the ReLU and the threshold)."""
        x = self._check_input(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations [..., d_sae] of activations x [..., d_model] (non-negative, sparse)."""
        f = torch.relu(self.pre_activations(x))
        return f * (f > self.threshold)

    @torch.no_grad()
    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_model"]:
        """Reconstruction [..., d_model] from feature activations [..., d_sae]."""
        f = torch.as_tensor(f).to(device=self.W_dec.device, dtype=self.W_dec.dtype)
        if f.shape[-1] != self.d_sae:
            raise ValueError(f"feature activations must end in d_sae = {self.d_sae}, got shape {tuple(f.shape)}")
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def feature_directions(self, normalize: bool = True) -> Float[Tensor, "d_sae d_model"]:
        """Rows of W_dec [d_sae, d_model], unit-norm when `normalize`."""
        W = self.W_dec.float()
        return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normalize else W


# --------------------------------------------------------------------------
# converters
# --------------------------------------------------------------------------
def from_dictionary_learning(state: Mapping[str, torch.Tensor], config: Mapping | None = None,
                             dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """A SparseAutoencoder from a `dictionary_learning` state dict (BatchTopK, TopK or ReLU SAE).

    Its `nn.Linear` layout is transposed into ours: `encoder.weight` [d_sae, d_model] -> W_enc.T,
    `decoder.weight` [d_model, d_sae] -> W_dec.T. A BatchTopK SAE's learned `threshold` is kept; a
    negative threshold (never set in training) counts as 0.
    """
    missing = [k for k in ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec") if k not in state]
    if missing:
        raise ValueError(f"not a dictionary_learning SAE state dict: missing {missing} (keys: {sorted(state)[:8]})")
    enc, dec = state["encoder.weight"], state["decoder.weight"]
    if enc.ndim != 2 or dec.ndim != 2 or tuple(dec.shape) != tuple(enc.shape[::-1]):
        raise ValueError(f"encoder.weight {tuple(enc.shape)} and decoder.weight {tuple(dec.shape)} are not transposes in shape")
    threshold = state.get("threshold", torch.tensor(0.0))
    threshold = torch.as_tensor(threshold).float()
    if threshold.ndim == 0:
        threshold = torch.clamp(threshold, min=0.0)
    dtype = dtype or enc.dtype
    meta = {"source": "dictionary_learning"}
    if "k" in state:
        meta["k"] = int(torch.as_tensor(state["k"]).item())
    if config:
        trainer = config.get("trainer", config)
        for key in ("dict_class", "dict_size", "k", "layer", "lm_name", "submodule_name"):
            if key in trainer:
                meta[key] = trainer[key]
    return SparseAutoencoder(
        W_enc=enc.T.to(dtype), b_enc=state["encoder.bias"].to(dtype),
        W_dec=dec.T.to(dtype), b_dec=state["b_dec"].to(dtype),
        threshold=threshold.to(dtype), apply_b_dec_to_input=True, meta=meta,
    )


def from_saelens(state: Mapping[str, torch.Tensor], cfg: Mapping | None = None,
                 dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """A SparseAutoencoder from SAELens weights (W_enc [d_in, d_sae], W_dec [d_sae, d_in], ...)."""
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in state]
    if missing:
        raise ValueError(f"not a SAELens SAE state dict: missing {missing} (keys: {sorted(state)[:8]})")
    cfg = dict(cfg or {})
    dtype = dtype or state["W_enc"].dtype
    threshold = state.get("threshold", torch.tensor(0.0))
    meta = {"source": "saelens", **{k: cfg[k] for k in ("architecture", "hook_name", "model_name", "d_sae") if k in cfg}}
    return SparseAutoencoder(
        W_enc=state["W_enc"].to(dtype), b_enc=state["b_enc"].to(dtype),
        W_dec=state["W_dec"].to(dtype), b_dec=state["b_dec"].to(dtype),
        threshold=torch.as_tensor(threshold).to(dtype),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), meta=meta,
    )


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds more than tensors and plain containers: refused, never unpickled."""


def _unsafe(path: Path) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused as unsafe. It holds Python objects beyond tensors and plain containers, and "
        "loading those means unpickling, which can run any code the file's author chose. The course "
        "reads checkpoints with torch.load(weights_only=True) and safetensors only, and never unpickles "
        "a download. Get the SAE as safetensors (or as a state dict of tensors) instead.")


def _torch_load(path: Path) -> dict:
    # weights_only: tensors and plain containers only -- a download is never unpickled.
    import pickle

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # not a zip-format checkpoint (mmap unavailable), or a corrupt one
            if "weights only" in str(err).lower():
                raise _unsafe(path) from None
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except RuntimeError:
                raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: "
                                 f"{str(err).splitlines()[0][:160]})") from None
    except pickle.UnpicklingError:
        raise _unsafe(path) from None
    except (EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    return obj


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError on a truncated or corrupt file names no path
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt "
                         f"({type(err).__name__}: {err})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON config ({type(err).__name__}: {err})") from None


def load_sae(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> SparseAutoencoder:
    """Load an SAE from a local file or folder (see the module docstring for the formats)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}")
    if path.is_dir():
        if (path / "sae_weights.safetensors").is_file():
            cfg_path = path / "cfg.json"
            cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
            sae = from_saelens(_load_safetensors(path / "sae_weights.safetensors"), cfg, dtype=dtype)
        elif (path / "ae.pt").is_file():
            cfg_path = path / "config.json"
            cfg = _read_json(cfg_path) if cfg_path.is_file() else None
            sae = from_dictionary_learning(_torch_load(path / "ae.pt"), cfg, dtype=dtype)
        else:
            raise FileNotFoundError(f"{path} holds neither sae_weights.safetensors (SAELens) nor ae.pt (dictionary_learning)")
    elif path.suffix == ".safetensors":
        cfg_path = path.with_name("cfg.json")
        cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
        sae = from_saelens(_load_safetensors(path), cfg, dtype=dtype)
    else:
        cfg_path = path.with_name("config.json")
        cfg = _read_json(cfg_path) if cfg_path.is_file() else None
        sae = from_dictionary_learning(_torch_load(path), cfg, dtype=dtype)
    sae.meta.setdefault("path", str(path))
    return sae.to(device) if device is not None else sae


# --------------------------------------------------------------------------
# published SAEs
# --------------------------------------------------------------------------
PUBLISHED_SAES = {
    "Qwen/Qwen2.5-7B-Instruct": {
        "repo_id": "andyrdt/saes-qwen2.5-7b-instruct",
        "format": "dictionary_learning",
        "layers": (3, 7, 11, 15, 19, 23, 27),  # block outputs (course convention)
        "trainers": {0: 32, 1: 64, 2: 128, 3: 256},  # trainer index -> k
        "d_sae": 131072,
        "file": "resid_post_layer_{layer}/trainer_{trainer}/ae.pt",
        "config": "resid_post_layer_{layer}/trainer_{trainer}/config.json",
        "neuronpedia": "https://www.neuronpedia.org/qwen2.5-7b-it/{layer}-resid-post-aa/{feature}",  # trainer_1 only
    },
}


def published_sae_layers(model_name: str) -> tuple[int, ...]:
    """Blocks with a published SAE for `model_name` (empty when none is registered)."""
    entry = PUBLISHED_SAES.get(model_name)
    return tuple(entry["layers"]) if entry else ()


def load_published_sae(model_name: str, layer: int, trainer: int = 1, revision: str | None = None,
                       dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> SparseAutoencoder:
    """Download (once, into the Hugging Face cache) and load a published SAE for `model_name`.

    Needs the network on first use; raises ValueError, before any download, for a model or a layer
    without a registered SAE (the message lists what exists).
    """
    entry = PUBLISHED_SAES.get(model_name)
    if entry is None:
        raise ValueError(
            f"no published SAE is registered for {model_name!r} (known: {sorted(PUBLISHED_SAES)}); "
            "download one yourself and load it with utils.sae.load_sae(path)"
        )
    if layer not in entry["layers"]:
        nearest = min(entry["layers"], key=lambda L: abs(L - layer))
        raise ValueError(f"{entry['repo_id']} has SAEs for blocks {entry['layers']}, not {layer}; the nearest is {nearest}")
    if trainer not in entry["trainers"]:
        raise ValueError(f"trainer must be one of {sorted(entry['trainers'])} (k = {entry['trainers']}), got {trainer}")
    from huggingface_hub import hf_hub_download

    names = {"layer": layer, "trainer": trainer}
    weights = hf_hub_download(entry["repo_id"], entry["file"].format(**names), revision=revision)
    try:
        cfg_file = hf_hub_download(entry["repo_id"], entry["config"].format(**names), revision=revision)
        cfg = json.loads(Path(cfg_file).read_text())
    except Exception:  # the config is informative only
        cfg = None
    sae = from_dictionary_learning(_torch_load(Path(weights)), cfg, dtype=dtype)
    sae.meta.update({"repo_id": entry["repo_id"], "layer": layer, "trainer": trainer, "model": model_name})
    if "neuronpedia" in entry and trainer == 1:
        sae.meta["neuronpedia"] = entry["neuronpedia"].replace("{layer}", str(layer))
    return sae.to(device) if device is not None else sae


# --------------------------------------------------------------------------
# synthetic SAEs for tests and tiny mode
# --------------------------------------------------------------------------
def synthetic_sae(
    d_model: int,
    d_sae: int,
    planted: Mapping[int, Float[Tensor, "d_model"]] | None = None,
    seed: int = 0,
    decoder_norms: Float[Tensor, "d_sae"] | None = None,
    threshold: float = 0.0,
) -> SparseAutoencoder:
    """A random SAE with known features, for tests and tiny mode.

    Every decoder row is a random unit vector (times `decoder_norms[i]` when given), except the
    rows in `planted` = {feature index: direction [d_model]}, which point exactly along the given
    direction (unit norm times `decoder_norms[i]`). The encoder is the decoder transposed (a tied
    SAE) and the biases are 0, so feature i fires on activations that point along row i.
    Deterministic for a given seed; the global RNG is not touched.
    """
    if d_model < 1 or d_sae < 1:
        raise ValueError(f"d_model and d_sae must be positive, got {d_model} and {d_sae}")
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d_sae, d_model, generator=gen)
    W = W / W.norm(dim=-1, keepdim=True)
    for i, direction in (planted or {}).items():
        if not 0 <= int(i) < d_sae:
            raise ValueError(f"planted feature index {i} is outside [0, {d_sae})")
        direction = check_vector(torch.as_tensor(direction).flatten() if isinstance(direction, torch.Tensor) else direction,
                                 f"planted[{i}]", d_model, nonzero=True).float()
        W[int(i)] = direction / direction.norm()
    if decoder_norms is not None:
        norms = torch.as_tensor(decoder_norms, dtype=torch.float32)
        if norms.shape != (d_sae,):
            raise ValueError(f"decoder_norms must have shape [{d_sae}], got {tuple(norms.shape)}")
        W = W * norms[:, None]
    unit = W / W.norm(dim=-1, keepdim=True)
    return SparseAutoencoder(
        W_enc=unit.T.contiguous(), b_enc=torch.zeros(d_sae), W_dec=W.contiguous(), b_dec=torch.zeros(d_model),
        threshold=threshold, meta={"source": "synthetic", "seed": seed, "planted": sorted(int(i) for i in (planted or {}))},
    )
