"""The Python facade: one call per capability, over unclip_core and the embedding store."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from explorer.store import EmbeddingStore, Encoder, embed_items, open_store  # noqa: F401 (api.open_store)

EncoderFactory = Callable[[str], Encoder]
_FACTORIES: dict[str, EncoderFactory] = {}
_LOADED: dict[str, Encoder] = {}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    """Make `load_encoder(name)` call `factory(name)`: for encoders that are not open_clip specs (tests, plug-ins)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable (spec -> encoder), got {type(factory).__name__}")
    _FACTORIES[name] = factory
    _LOADED.pop(name, None)


def unregister_encoder(name: str) -> None:
    """Forget an encoder registered with `register_encoder` (no error when it is absent)."""
    _FACTORIES.pop(name, None)
    _LOADED.pop(name, None)


def load_encoder(spec: str | Encoder) -> Encoder:
    """A CLIP encoder for `spec`: a registered name, else `unclip_core.clip.ClipEncoder.load(spec)`; cached."""
    if not isinstance(spec, str):
        for attr in ("encode_text", "encode_image", "embed_dim", "spec", "model_id"):
            if not hasattr(spec, attr):
                raise TypeError(f"model must be a spec string (e.g. 'shapes-clip') or an encoder with "
                                f"{attr}, got {type(spec).__name__}")
        return spec
    if not spec:
        raise ValueError("model spec is empty; pass a bundled name such as 'shapes-clip' "
                         "(see `unclip-explorer models`) or an open_clip spec")
    if spec not in _LOADED:
        if spec in _FACTORIES:
            _LOADED[spec] = _FACTORIES[spec](spec)
        else:
            from unclip_core.clip import ClipEncoder  # heavy (torch, open_clip): only when needed
            _LOADED[spec] = ClipEncoder.load(spec)
    return _LOADED[spec]


def embed(items: str | Path | Sequence[Any], model: str | Encoder, out: str | Path, kind: str | None = None,
          batch_size: int = 64, chunk_size: int = 1024, dtype: str = "float16",
          extra_metadata: Mapping[str, Any] | pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
          progress: bool = True, *, skip_bad: bool = False) -> EmbeddingStore:
    """Embed an image folder, captions.jsonl, .txt or list into the store at `out` (resumable).

    An unreadable image file is an error before any work, or with skip_bad=True left out and recorded in
    store.json under "skipped"."""
    return embed_items(load_encoder(model), items, out, kind=kind, batch_size=batch_size,
                       chunk_size=chunk_size, extra_metadata=extra_metadata, progress=progress, dtype=dtype,
                       skip_bad=skip_bad)


_PIPES: dict[str, Any] = {}


def load_pipeline(model: Any) -> Any:
    """The one pipeline loader of the toolkit: an UnCLIP (every family: its folder records its conventions) for a
    pipeline folder or bundled name, loaded once and cached; a loaded pipeline is returned as it is."""
    from unclip_core.pipeline import UnCLIP
    if isinstance(model, UnCLIP):
        return model
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a pipeline folder, a bundled name (e.g. 'shapes-unclip') or an UnCLIP, "
                        f"got {type(model).__name__}")
    key = str(Path(model).resolve()) if Path(model).exists() else str(model)
    if key not in _PIPES:
        _PIPES[key] = UnCLIP.load(model)
    return _PIPES[key]


def query_vectors(store: EmbeddingStore, text: str | Sequence[str] | None = None, image: Any = None,
                  vector: np.ndarray | None = None, id: str | Sequence[str] | None = None,
                  model: str | Encoder | None = None) -> np.ndarray:
    """The (q, dim) query vectors for exactly one of text, image, vector or id (a row of the store)."""
    given = {name: v for name, v in (("text", text), ("image", image), ("vector", vector), ("id", id))
             if v is not None}
    if len(given) != 1:
        raise ValueError(f"pass exactly one of text, image, vector or id; got {sorted(given) or 'none'}")
    (name, value), = given.items()
    if name == "vector":
        q = np.atleast_2d(np.asarray(value, dtype=np.float32))
        norms = np.linalg.norm(q, axis=1)
        if q.ndim != 2 or q.shape[1] != store.dim or not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError(f"vector must be (dim,) or (n, dim) with dim {store.dim}, finite and non-zero (cosine "
                             f"needs a direction), got shape {np.shape(value)} with norms {norms.round(4).tolist()[:4]}")
        return q
    if name == "text":
        texts = [value] if isinstance(value, str) else list(value)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a caption or a non-empty list of captions, got {value!r}")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ValueError(f"text query {empty[0]} is empty; pass a caption with at least one word")
    if name == "id":
        ids = [value] if isinstance(value, str) else list(value)
        return np.asarray(store.vectors[[store.row_of(i) for i in ids]], dtype=np.float32)
    if model is None and store.model_spec is None:
        raise ValueError(f"the store at {store.path} records no CLIP model (a clip-retrieval folder names none): pass "
                         "the model its embeddings come from, model=SPEC (--model SPEC)")
    encoder = load_encoder(model if model is not None else store.model_spec)
    store.check_model(encoder.model_id, encoder.spec)
    from explorer.store.format import _as_numpy
    if name == "text":
        return _as_numpy(encoder.encode_text(texts)).astype(np.float32)
    from unclip_core.imageio import load_image
    images = list(value) if isinstance(value, (list, tuple)) else [value]
    return _as_numpy(encoder.encode_image([load_image(im) for im in images])).astype(np.float32)


def neighbors(store: EmbeddingStore | str | Path, text: str | Sequence[str] | None = None, image: Any = None,
              vector: np.ndarray | None = None, id: str | Sequence[str] | None = None, k: int = 10,
              model: str | Encoder | None = None) -> pd.DataFrame:
    """Exact cosine nearest neighbours in a store, queried by text, image, vector or stored id."""
    store = open_store(store)
    q = query_vectors(store, text=text, image=image, vector=vector, id=id, model=model)
    return store.neighbors(q, k=k)


def bundled_dir() -> Path:
    """Folder holding the bundled model checkpoints (unclip_core/bundled)."""
    from unclip_core.checkpoint import BUNDLED_DIR
    return BUNDLED_DIR


def _model_kind(folder: Path) -> str:
    """'clip' (open_clip folder), 'pipeline' (pipeline.json) or the class named by a checkpoint's config.json."""
    if (folder / "open_clip_config.json").is_file():
        return "clip"
    if (folder / "pipeline.json").is_file():
        return "pipeline"
    config = folder / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return "?"
        if isinstance(cfg, dict):
            return str(cfg.get("class") or cfg.get("kind") or "")
    return ""


def list_models() -> pd.DataFrame:
    """Bundled models: name, kind (clip, pipeline or checkpoint class), size in MB and path."""
    rows = []
    root = bundled_dir()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = [f for f in folder.rglob("*") if f.is_file()]
        if folder.name.startswith(".") or not files:
            continue
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        rows.append({"name": folder.name, "kind": _model_kind(folder), "size_mb": round(size_mb, 2),
                     "path": str(folder)})
    return pd.DataFrame(rows, columns=["name", "kind", "size_mb", "path"])


def export_shapes(out: str | Path, n: int = 200, seed: int = 0, size: int = 64, split: str = "train",
                  overwrite: bool = False, progress: bool = True, *, world: int | None = None) -> Path:
    """Write a ShapesWorld sample (images/*.png + captions.jsonl + meta.json) to `out`; returns the folder.

    world: the ShapesWorld version; None takes the one the bundled models were trained on (bundled_world()).
    """
    from unclip_core.clip import bundled_world
    from unclip_core.data.shapes import export
    return Path(export(out, n=n, seed=seed, size=size, split=split, overwrite=overwrite, progress=progress,
                       world=bundled_world() if world is None else world))
