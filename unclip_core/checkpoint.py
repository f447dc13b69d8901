"""Checkpoints as folders: config.json + model.safetensors (+ README.md model card); bundled models; pipelines.

A model checkpoint folder holds
  config.json       {"format": 1, "class": "Decoder", "config": {...}, "metadata": {...}, "n_params": N}
  model.safetensors the state dict (never pickled)
  README.md         optional model card
A pipeline folder holds pipeline.json {"format": 1, "stages": {"prior": "prior", ...}, "metadata": {...}}
and one checkpoint folder per stage. Writes go to a temporary folder that is renamed into place.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_dir
from .autoencoder import Autoencoder
from .decoder import Decoder
from .movq import MoVQ
from .prior import DiffusionPrior
from .upsampler import Upsampler
from .kl_vae import KLAutoencoder

FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
PIPELINE_FILE = "pipeline.json"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

MODEL_CLASSES: dict[str, type[nn.Module]] = {}


def register_model_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a model class loadable by name; it needs a `config_class` frozen dataclass and `__init__(config)`."""
    config_cls = getattr(cls, "config_class", None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"{cls!r} must be an nn.Module subclass with a dataclass `config_class` attribute")
    MODEL_CLASSES[cls.__name__] = cls
    return cls


for _cls in (DiffusionPrior, Decoder, Upsampler, Autoencoder, MoVQ, KLAutoencoder):
    register_model_class(_cls)


# --- configs --------------------------------------------------------------------------------------
def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_dict(config_cls: type, data: Mapping[str, Any], *,
                     fix: str = "The checkpoint was written by another version or edited by hand: remove these keys"
                     ) -> Any:
    """Build `config_cls` from a dict, rejecting unknown keys by name (the error ends with `fix`); JSON lists
    become tuples. The one home for dict -> config: checkpoints, run configs and their networks use it."""
    if not isinstance(data, Mapping):
        raise TypeError(f"config must be a JSON object of {config_cls.__name__} fields, got {type(data).__name__}")
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} keys {unknown}; accepted keys: {fields}. {fix}")
    return config_cls(**{k: _to_tuples(v) for k, v in data.items()})


def _json_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of JSON values, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must hold only JSON values (str, numbers, lists, dicts): {exc}") from None


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


STORAGE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _write_checkpoint(folder: Path, model: nn.Module, card: str | None, metadata: Mapping[str, Any] | None,
                      dtype: torch.dtype | None = None) -> None:
    name = type(model).__name__
    if MODEL_CLASSES.get(name) is not type(model):
        raise TypeError(f"model is a {name}, which is not a registered model class; registered: "
                        f"{sorted(MODEL_CLASSES)}. Register it with register_model_class")
    config = getattr(model, "config", None)
    if not isinstance(config, type(model).config_class):
        raise TypeError(f"model.config must be a {type(model).config_class.__name__}, got {type(config).__name__}")
    if card is not None and not isinstance(card, str):
        raise TypeError(f"card must be a markdown string, got {type(card).__name__}")
    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES)} (or None to keep the model's), got {dtype}")
    state = {k: v.detach().to("cpu", dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    info = {"format": FORMAT, "class": name, "config": config_to_dict(config), "metadata": _json_metadata(metadata),
            "n_params": sum(p.numel() for p in model.parameters())}
    if dtype is not None:
        info["stored_dtype"] = STORAGE_DTYPES[dtype]  # loading casts back to the model's dtype
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    _write_json(folder / CONFIG_FILE, info)
    if card is not None:
        (folder / CARD_FILE).write_text(card, encoding="utf-8")


def save_checkpoint(path: str | Path, model: nn.Module, card: str | None = None,
                    metadata: Mapping[str, Any] | None = None, overwrite: bool = False,
                    dtype: torch.dtype | None = None) -> Path:
    """Write `model` as a checkpoint folder (config.json, model.safetensors, README.md card) atomically.

    dtype=torch.float16 / torch.bfloat16 stores the float weights at half size (loading casts them back).
    """
    path = Path(path)
    with atomic_dir(path, overwrite) as tmp:
        _write_checkpoint(tmp, model, card, metadata, dtype)
    return path


# --- loading --------------------------------------------------------------------------------------
def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """The JSON object in `path`; FileNotFoundError says `missing` when there is no file, ValueError names a damaged
    file or one that holds no object."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_json(path: Path, what: str) -> dict[str, Any]:
    data = read_json_object(path, f"{path} not found: {path.parent} is not a {what} folder")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{path} has format {fmt!r}; this library reads format {FORMAT}")
    return data


def read_checkpoint_config(path: str | Path) -> tuple[type[nn.Module], Any, dict[str, Any]]:
    """Read a checkpoint's config.json -> (model class, config, the whole JSON document)."""
    path = resolve(path)
    info = _read_json(path / CONFIG_FILE, "checkpoint")
    name = info.get("class")
    if name not in MODEL_CLASSES:
        hint = (" (a ShapesWorld read-out: load it with unclip_core.data.readout.load_readout, which registers "
                "the class)" if name == "ShapeClassifier" else "; a module that defines it registers it with "
                "register_model_class when imported")
        raise ValueError(f"{path / CONFIG_FILE} names class {name!r}, which is not known here{hint}; "
                         f"known classes: {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[name]
    return cls, config_from_dict(cls.config_class, info.get("config", {})), info


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise ValueError listing missing, unexpected and shape-mismatched tensors of `state` for `model`."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
                        for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(items)}): {items}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)) if items]
        raise ValueError(f"{source} does not match {type(model).__name__}(config): " + "; ".join(parts)
                         + ". The weights belong to another config or class: check config.json")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint folder (a path or a bundled name) -> the model, in eval mode, on `device`."""
    path = resolve(path)
    cls, config, _ = read_checkpoint_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the checkpoint folder has config.json but no weights")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights} is not a readable safetensors file ({exc}); the file is damaged") from None
    model = cls(config)
    check_state_dict(model, state, source=str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# --- bundled models -------------------------------------------------------------------------------
def list_bundled() -> list[str]:
    """Names of the bundled checkpoints, pipelines and CLIP models (folders under BUNDLED_DIR)."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and
                  any((p / f).is_file() for f in (CONFIG_FILE, PIPELINE_FILE, "open_clip_config.json")))


def resolve(spec: str | Path) -> Path:
    """A bundled name ("shapes-unclip") or a path -> the folder's Path; unknown names list the known ones."""
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec must be a bundled name or a path, got {type(spec).__name__}")
    if isinstance(spec, str) and spec in list_bundled():
        return BUNDLED_DIR / spec
    if isinstance(spec, str) and "/" in spec and spec.split("/", 1)[0] in list_bundled() \
            and (BUNDLED_DIR / spec).is_dir():  # a stage of a bundled pipeline, e.g. "shapes-unclip/decoder"
        return BUNDLED_DIR / spec
    path = Path(spec).expanduser()
    if path.exists():
        return path
    looks_like_path = isinstance(spec, Path) or os.sep in spec or "/" in spec or spec.startswith((".", "~"))
    if looks_like_path:
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    raise ValueError(f"{spec!r} is neither a bundled model nor an existing path; bundled: {list_bundled()}")


# --- pipelines ------------------------------------------------------------------------------------
_STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def save_pipeline(path: str | Path, stages: Mapping[str, nn.Module | str | Path], card: str | None = None,
                  metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a multi-stage folder: pipeline.json + one subfolder per stage (a model, or a folder to copy)."""
    path = Path(path)
    if not isinstance(stages, Mapping) or not stages:
        raise ValueError("stages must be a non-empty dict {stage name: model or checkpoint folder}, "
                         "e.g. {'prior': prior, 'decoder': decoder}")
    for name in stages:
        if not isinstance(name, str) or not _STAGE_NAME.match(name):
            raise ValueError(f"stage name {name!r} must be a simple folder name (letters, digits, _ or -)")
    manifest = {"format": FORMAT, "stages": {name: name for name in stages}, "metadata": _json_metadata(metadata)}
    with atomic_dir(path, overwrite) as tmp:
        for name, stage in stages.items():
            if isinstance(stage, nn.Module):
                (tmp / name).mkdir()
                _write_checkpoint(tmp / name, stage, None, None)
            elif isinstance(stage, (str, Path)):
                shutil.copytree(resolve(stage), tmp / name)
            else:
                raise TypeError(f"stage {name!r} must be an nn.Module or a checkpoint folder, "
                                f"got {type(stage).__name__}")
        _write_json(tmp / PIPELINE_FILE, manifest)
        if card is not None:
            (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    return path


def read_pipeline(path: str | Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Read pipeline.json -> ({stage name: its folder}, metadata); stage folders must exist."""
    path = resolve(path)
    manifest = _read_json(path / PIPELINE_FILE, "pipeline")
    stages = manifest.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"{path / PIPELINE_FILE} must name its stages as {{name: subfolder}}, got {stages!r}")
    dirs = {}
    for name, sub in stages.items():
        folder = path / str(sub)
        if not folder.is_dir():
            raise FileNotFoundError(f"stage {name!r} of {path} points to {folder}, which does not exist")
        dirs[name] = folder
    return dirs, manifest.get("metadata", {})


def load_stages(path: str | Path, stages: list[str] | None = None,
                device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """Load the model stages of a pipeline folder (all, or those named in `stages`) -> {name: model}."""
    dirs, _ = read_pipeline(path)
    names = list(dirs) if stages is None else stages
    unknown = [n for n in names if n not in dirs]
    if unknown:
        raise ValueError(f"stages {unknown} are not in {path}; its stages: {list(dirs)}")
    return {n: load_checkpoint(dirs[n], device=device) for n in names}
