"""Saved Assistant Axes and activation-capping configurations: one format, and loaders that also
read the paper's released files.

The course states capping as a **floor** on a unit vector that points toward the Assistant
(the course's capping convention): at each capped block L,

    h <- h - v_hat * min(<h, v_hat> - tau, 0)     (projections below tau are raised to tau)

The released code of *The Assistant Axis* states the same operation as a **ceiling** on vectors
that point *against* the axis, h <- h - u_hat * max(<h, u_hat> - c, 0). The two are one operation
with v_hat = -u_hat and tau = -c (see `ceiling_to_floor`); every config this module returns is in
the floor form.

Files:

    <name>_axis.safetensors   tensor "axis": float32 [num_layers, d_model] (row L = output of block L)
                              or [d_model]; metadata "model", "layer_convention"
    data/capping/<name>.json  {"format": "persona-course-capping/1", "model", "form": "floor",
                               "axis_file" (relative to the json), "axis_layer", "layers",
                               "thresholds", "quantile", "note"}
                              A json may instead point to the paper's release:
                               "released": {"repo_id", "axis_file", "capping_file", "experiment"}

The paper's releases (HF dataset `lu-christina/assistant-axis-vectors`) load too:
- `<model>/assistant_axis.pt`: a [num_layers, d_model] tensor (or {"axis": tensor}): `load_axis`;
- `<model>/capping_config.pt`: {"vectors": {name: {"layer", "vector"}}, "experiments":
  [{"id", "interventions": [{"vector": name, "cap": c}, ...]}]}: `load_capping_config(path,
  experiment="layers_46:54-p0.25")`, converted to the floor form.
`.pt` files are read with `torch.load(..., weights_only=True)`: tensors, numbers, strings, lists
and dicts load; anything that would need unpickling arbitrary objects is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from utils.validate import check_index, check_matrix, check_number, check_numbers, check_vector

FORMAT = "persona-course-capping/1"
RELEASED_REPO = "lu-christina/assistant-axis-vectors"


def capping_dir() -> Path:
    from utils.data import DATA_DIR

    return Path(DATA_DIR) / "capping"


def unit(v: Float[Tensor, "d_model"], name: str = "vector") -> Float[Tensor, "d_model"]:
    """`v / ||v||` in float32. A zero, NaN or infinite vector (or an integer one) is refused with a
    ValueError naming `name`."""
    v = check_vector(v, name, nonzero=True).detach().float()
    n = v.norm()
    if not torch.isfinite(n) or n == 0:  # finite entries whose norm under- or overflows
        raise ValueError(f"{name} cannot be normalised (its norm is {float(n)})")
    return v / n


def ceiling_to_floor(vector: Float[Tensor, "d_model"], cap: float) -> tuple[Float[Tensor, "d_model"], float]:
    """The released form (ceiling `cap` on `vector`, which points against the axis) as the course's
    form: a floor `tau = -cap` on the unit vector `v_hat = -vector / ||vector||`."""
    return -unit(vector, "vector"), -check_number(cap, "cap")


# -----------------------------------------------------------------------------
# axes


def _safe_torch_load(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError and friends
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(err).__name__}: {err}). "
            "The course never unpickles arbitrary objects from a download; convert the file to "
            "safetensors or plain tensors/dicts first."
        ) from err


def _check_axis(axis, name: str) -> Tensor:
    """An axis, [d_model] or [n_layers, d_model], floating point and finite."""
    if isinstance(axis, Tensor) and axis.ndim == 1:
        return check_vector(axis, name)
    return check_matrix(axis, name)


def save_axis(path: str | os.PathLike, axis: Float[Tensor, "n_layers d_model"] | Float[Tensor, "d_model"],
              model: str = "") -> Path:
    """Write an axis ([num_layers, d_model] or [d_model]) to a safetensors file."""
    from safetensors.torch import save_file

    if isinstance(axis, Tensor) and axis.ndim not in (1, 2):
        raise ValueError(f"axis must be [d_model] or [num_layers, d_model], got shape {tuple(axis.shape)}")
    axis = _check_axis(axis, "axis").detach().float().cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"axis": axis}, str(path), metadata={"model": model, "layer_convention": "row L = output of block L (0-based)"})
    return path


def load_axis(path: str | os.PathLike, layer: int | None = None) -> Float[Tensor, "n_layers d_model"] | Float[Tensor, "d_model"]:
    """An axis from a .safetensors file (tensor "axis", or the only tensor) or a .pt/.pth file (a
    tensor, or a dict with "axis"). Returns float32 [num_layers, d_model] (or [d_model]); with
    `layer`, the row of that block."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"axis file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # a truncated or corrupt file
            raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
        if "axis" in tensors:
            axis = tensors["axis"]
        elif len(tensors) == 1:
            axis = next(iter(tensors.values()))
        else:
            raise ValueError(f"{path}: no tensor named 'axis' among {sorted(tensors)}")
    else:
        obj = _safe_torch_load(path)
        if isinstance(obj, dict):
            if "axis" not in obj:
                raise ValueError(f"{path}: a dict without an 'axis' entry (keys: {sorted(map(str, obj))[:8]})")
            obj = obj["axis"]
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor, got {type(obj).__name__}")
        axis = obj
    if axis.ndim not in (1, 2):
        raise ValueError(f"{path}: an axis must be [d_model] or [num_layers, d_model], got shape {tuple(axis.shape)}")
    axis = _check_axis(axis, f"the axis in {path}").float()
    if layer is not None:
        if axis.ndim != 2:
            raise ValueError(f"{path}: holds a single-layer axis; cannot select layer {layer}")
        layer = check_index(layer, "layer", axis.shape[0])
        return axis[layer]
    return axis


# -----------------------------------------------------------------------------
# capping configurations


@dataclass
class CappingConfig:
    """Capping in the course's floor form: at block `layers[i]`, the projection onto the unit vector
    `vectors[i]` is kept at or above `thresholds[i]`."""

    model: str
    layers: list[int]
    thresholds: list[float]
    vectors: Float[Tensor, "n d_model"]  # [len(layers), d_model], unit rows, pointing toward the Assistant
    axis_layer: int | None = None
    quantile: float | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.layers = [check_index(x, f"layers[{i}]") for i, x in enumerate(self.layers)]
        self.thresholds = check_numbers(self.thresholds, "thresholds")
        if isinstance(self.vectors, (list, tuple)) and self.vectors and isinstance(self.vectors[0], Tensor):
            self.vectors = torch.stack([check_vector(v, f"vectors[{i}]") for i, v in enumerate(self.vectors)])
        if isinstance(self.vectors, Tensor) and self.vectors.ndim != 2:
            raise ValueError(f"vectors must be [n, d_model], got shape {tuple(self.vectors.shape)}")
        self.vectors = check_matrix(self.vectors, "vectors", nonzero_rows=True).float() if len(self.layers) else \
            torch.as_tensor(self.vectors).float()
        if not (len(self.layers) == len(self.thresholds) == self.vectors.shape[0]):
            raise ValueError(
                f"layers, thresholds and vectors must have the same length, got {len(self.layers)}, "
                f"{len(self.thresholds)} and {self.vectors.shape[0]}"
            )
        self.vectors = torch.stack([unit(v, f"vectors[{i}]") for i, v in enumerate(self.vectors)]) \
            if len(self.layers) else self.vectors

    def capper_args(self) -> dict:
        """Keyword arguments for an `ActivationCapper(model, **config.capper_args())`."""
        return {"vectors": self.vectors, "thresholds": list(self.thresholds), "layers": list(self.layers)}


def make_config(model: str, axis: Float[Tensor, "n_layers d_model"], layers: Sequence[int], thresholds: Sequence[float],
                axis_layer: int | None = None, quantile: float | None = None) -> CappingConfig:
    """A floor-form config from a per-layer axis [num_layers, d_model] (row L = block L)."""
    if isinstance(axis, Tensor) and axis.ndim != 2:
        raise ValueError(f"make_config needs a per-layer axis [num_layers, d_model], got shape {tuple(axis.shape)}")
    axis = check_matrix(axis, "axis").float()
    layers = [check_index(layer, f"layers[{i}]", axis.shape[0]) for i, layer in enumerate(layers)]
    return CappingConfig(model=model, layers=list(layers), thresholds=list(thresholds),
                         vectors=axis[list(layers)], axis_layer=axis_layer, quantile=quantile, source="in memory")


def save_capping_config(path: str | os.PathLike, config: CappingConfig, axis: Float[Tensor, "n_layers d_model"],
                        note: str = "") -> Path:
    """Write `config` as data/capping-style json, with the full per-layer axis next to it
    (`<stem>_axis.safetensors`). The vectors of the config must be the unit axis rows."""
    path = Path(path)
    axis = check_matrix(axis, "axis").float()
    for i, layer in enumerate(config.layers):
        if not torch.allclose(unit(axis[layer]), config.vectors[i], atol=1e-5):
            raise ValueError(f"the config's vector for layer {layer} is not the axis row {layer}; "
                             "this format stores the axis, so its vectors must be the unit axis rows")
    axis_path = path.with_name(path.stem + "_axis.safetensors")
    save_axis(axis_path, axis, model=config.model)
    record = {
        "format": FORMAT,
        "model": config.model,
        "form": "floor",
        "axis_file": axis_path.name,
        "axis_layer": config.axis_layer,
        "layers": list(config.layers),
        "thresholds": [round(t, 6) for t in config.thresholds],
        "quantile": config.quantile,
        "note": note,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def from_released(capping_config: dict, experiment: str | int | None = None, model: str = "", source: str = "") -> CappingConfig:
    """The paper's capping-config dict ({"vectors", "experiments"}) as a floor-form CappingConfig.

    `experiment` is an experiment id (e.g. "layers_46:54-p0.25") or index; it may be left out
    only when the file holds a single experiment.
    """
    if not isinstance(capping_config, dict) or "vectors" not in capping_config or "experiments" not in capping_config:
        raise ValueError(f"{source or 'capping config'}: expected a dict with 'vectors' and 'experiments'")
    exps = capping_config["experiments"]
    ids = [e.get("id") for e in exps]
    if experiment is None:
        if len(exps) != 1:
            raise ValueError(f"{source or 'capping config'} holds {len(exps)} experiments; name one, e.g. {ids[:4]}")
        exp = exps[0]
    elif isinstance(experiment, int):
        exp = exps[experiment]
    else:
        matches = [e for e in exps if e.get("id") == experiment]
        if not matches:
            raise ValueError(f"experiment {experiment!r} not in {source or 'capping config'}; available: {ids[:10]}")
        exp = matches[0]
    layers, thresholds, vectors = [], [], []
    for iv in exp.get("interventions", []):
        if "cap" not in iv:
            continue
        vec = capping_config["vectors"][iv["vector"]]
        v_hat, tau = ceiling_to_floor(torch.as_tensor(vec["vector"]), check_number(iv["cap"], f"cap of {iv['vector']!r}"))
        layers.append(int(vec["layer"]))
        thresholds.append(tau)
        vectors.append(v_hat)
    if not layers:
        raise ValueError(f"experiment {exp.get('id')!r} has no capping interventions")
    return CappingConfig(model=model, layers=layers, thresholds=thresholds, vectors=torch.stack(vectors),
                         source=f"{source} [{exp.get('id')}] (converted from the released ceiling form)".strip(),
                         extra={"experiment": exp.get("id")})


def _find_json_for_model(model: str) -> Path:
    folder = capping_dir()
    for p in sorted(folder.glob("*.json")):
        try:
            if json.loads(p.read_text()).get("model") == model:
                return p
        except (OSError, json.JSONDecodeError):
            continue
    have = sorted(p.stem for p in folder.glob("*.json"))
    raise FileNotFoundError(f"no capping config for model {model!r} in {folder} (have: {have}); pass a path")


def released_file(filename: str) -> Path:
    """A file of the paper's release: from $PERSONA_COURSE_VECTORS/<filename> when present, else
    downloaded with huggingface_hub (never in tiny mode)."""
    from utils import config

    local = os.environ.get("PERSONA_COURSE_VECTORS", "").strip()
    if local and (Path(local) / filename).is_file():
        return Path(local) / filename
    if config.is_tiny():
        raise RuntimeError(
            f"the released file {filename!r} is needed, but tiny mode never downloads; set "
            "PERSONA_COURSE_VECTORS to a folder holding a copy of the release"
        )
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=RELEASED_REPO, filename=filename, repo_type="dataset"))


def load_capping_config(source, experiment: str | int | None = None) -> CappingConfig:
    """A floor-form CappingConfig from:
    - a course json (path, or a model name with a json in data/capping/);
    - a course json that points to the paper's release (its "released" entry is fetched);
    - a released `capping_config.pt` path, or the dict already loaded from one (`experiment`
      chooses among its experiments).
    """
    if isinstance(source, dict):
        return from_released(source, experiment, source="capping config dict")
    s = str(source)
    path = Path(s)
    if not path.suffix and not path.exists():
        path = _find_json_for_model(s)
    if not path.is_file():
        raise FileNotFoundError(f"capping config not found: {path}")
    if path.suffix in (".pt", ".pth"):
        return from_released(_safe_torch_load(path), experiment, source=str(path))
    if path.suffix != ".json":
        raise ValueError(f"{path}: expected a .json (course format) or .pt (released format) capping config")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}, got {record.get('format')!r}")
    if record.get("form", "floor") != "floor":
        raise ValueError(f"{path}: field 'form' must be 'floor' (the course's form), got {record.get('form')!r}")
    if record.get("thresholds") is None:
        rel = record.get("released")
        if not rel:
            raise ValueError(f"{path}: has no thresholds and no 'released' entry to fetch them from")
        if "capping_file" not in rel:
            raise ValueError(f"{path}: the paper released no capping config for {record.get('model')!r} "
                             "(only an axis: use load_released_axis)")
        cfg = load_capping_config(released_file(rel["capping_file"]), experiment or rel.get("experiment"))
        cfg.model = record.get("model", "")
        cfg.axis_layer = record.get("axis_layer")
        cfg.quantile = record.get("quantile")
        return cfg
    axis = load_axis(path.parent / record["axis_file"])
    cfg = make_config(record.get("model", ""), axis, record["layers"], record["thresholds"],
                      axis_layer=record.get("axis_layer"), quantile=record.get("quantile"))
    cfg.source = str(path)
    return cfg


def load_released_axis(model: str) -> Float[Tensor, "n_layers d_model"]:
    """The paper's released per-layer axis [num_layers, d_model] for a model with a pointer json in
    data/capping/ (downloads with huggingface_hub; not in tiny mode)."""
    record = json.loads(_find_json_for_model(model).read_text())
    rel = record.get("released") or {}
    if "axis_file" not in rel:
        raise ValueError(f"the capping config of {model!r} names no released axis file")
    return load_axis(released_file(rel["axis_file"]))
