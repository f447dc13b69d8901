"""Train unCLIP stages on your own data: image folders, webdataset shards and embedding stores as training data.

`open_training_data(config, clip=..., run_dir=...)` turns a run's `[data]` table into the items a stage trains on,
reading every input through explorer.store (resolve_items for folders, captions.jsonl and tar shards;
embed_items for the z_i cache; open_store for our stores and clip-retrieval folders). `train_run` opens the data
and the CLIP, fills the network fields that follow from the CLIP, and calls unclip_core's `train_stage`.

Layouts:
  folder      images + captions.jsonl (`unclip-explorer shapes export`), or images with same-name .txt captions
              (cat.jpg + cat.txt), in any subfolders
  webdataset  .tar shards (a file, a folder of them, 'shards/{000..099}.tar'): samples 0001.jpg + 0001.txt
              (or .caption, or "caption" in 0001.json)
  embeddings  (prior) an embedding store with image and text rows of the same items, or a clip-retrieval output
              folder (img_emb/, text_emb/, metadata/ with a caption column)

The CLIP image embeddings of a folder or shards are computed once into an embedding store (data.cache, default
RUN/embeddings), resumably; the store records its CLIP, and a run with another CLIP is refused. The stages that
need no CLIP (the autoencoder, the upsamplers) read the images only: nothing is embedded or cached.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from unclip_core.train.data import DataBatch, DataConfig, square_image, to_tensor

REPORT_FILE = "data.json"
_SHOWN = 20  # file names listed in messages; data.json lists them all


def resolve_kind(data: DataConfig) -> str:
    """The layout of data.path: data.kind, or for "auto" the one the path looks like."""
    if data.kind != "auto":
        return data.kind
    from explorer.store import MANIFEST, is_clip_retrieval_folder
    path = Path(data.path)
    if "{" in str(data.path) or path.suffix == ".tar":
        return "webdataset"
    if path.is_dir() and ((path / MANIFEST).is_file() or is_clip_retrieval_folder(path)):
        return "embeddings"
    if path.is_dir() and any(p.suffix == ".tar" for p in path.iterdir()):
        return "webdataset"
    return "folder"


def _load(payload: Any) -> Any:
    from unclip_core.imageio import load_image
    return payload.load() if hasattr(payload, "load") else load_image(payload)


@dataclass
class ImageData:
    """Images (files or tar members) with their captions and cached CLIP image embeddings (rows of a store; None
    for the stages that need no CLIP)."""

    payloads: list[Any]
    captions: list[str | None]
    vectors: Any  # (n_store, d) memory-mapped store vectors, or None
    rows: np.ndarray | None  # store row of each item
    clip_model_id: str | None
    report: dict[str, Any] = field(default_factory=dict)
    has_images: bool = True
    has_z_t: bool = False

    @property
    def has_z_i(self) -> bool:
        return self.vectors is not None

    @property
    def has_captions(self) -> bool:
        return all(c is not None for c in self.captions)

    def __len__(self) -> int:
        return len(self.payloads)

    def batch(self, indices: Sequence[int], *, sizes: tuple[int, ...] = ()) -> DataBatch:
        per_size: list[list[np.ndarray]] = [[] for _ in sizes]
        for i in indices:
            if sizes:
                with_pil = _load(self.payloads[i])
                for k, s in enumerate(sizes):
                    per_size[k].append(square_image(with_pil, s))
        z_i = None
        if self.vectors is not None:
            z_i = torch.from_numpy(np.asarray(self.vectors[self.rows[list(indices)]], dtype=np.float32))
            z_i = torch.nn.functional.normalize(z_i, dim=-1)
        return DataBatch(images=[to_tensor(a) for a in per_size] if sizes else None,
                         captions=[self.captions[i] for i in indices], z_i=z_i)


@dataclass
class EmbeddingData:
    """Precomputed CLIP embeddings for the prior: z_i, z_t (None: encoded from the captions) and captions."""

    z_i: Any
    z_i_rows: np.ndarray
    z_t: Any | None
    z_t_rows: np.ndarray | None
    captions: list[str | None]
    clip_model_id: str | None
    report: dict[str, Any] = field(default_factory=dict)
    has_images: bool = False
    has_z_i: bool = True

    @property
    def has_z_t(self) -> bool:
        return self.z_t is not None

    @property
    def has_captions(self) -> bool:
        return all(c is not None for c in self.captions)

    def __len__(self) -> int:
        return len(self.z_i_rows)

    def batch(self, indices: Sequence[int], *, sizes: tuple[int, ...] = ()) -> DataBatch:
        if sizes:
            raise ValueError("precomputed embeddings hold no images; train the decoder and upsamplers on an image "
                             "folder or webdataset shards")
        idx = list(indices)

        def rows(vectors: Any, at: np.ndarray) -> torch.Tensor:
            z = torch.from_numpy(np.asarray(vectors[at[idx]], dtype=np.float32))
            return torch.nn.functional.normalize(z, dim=-1)
        return DataBatch(captions=[self.captions[i] for i in idx], z_i=rows(self.z_i, self.z_i_rows),
                         z_t=None if self.z_t is None else rows(self.z_t, self.z_t_rows))


def _needs_captions(config: Any) -> bool:
    """Whether a stage trains on captions: the prior always, a decoder with a caption pathway."""
    return config.stage == "prior" or (config.stage == "decoder" and config.model_config().text_width > 0)


def _sidecar_caption(path: Path) -> str | None:
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return None
    text = txt.read_text(encoding="utf-8", errors="replace").strip()
    return text or None


def _unlisted_images(root: Path, named: set[str]) -> list[str]:
    """Image files beside a captions.jsonl (or in its images/) that it names no caption for."""
    from explorer.store import IMAGE_SUFFIXES, PARTIAL_DIR
    out = []
    for base in (root, root / "images"):
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and PARTIAL_DIR not in p.parts:
                if p.name not in named and p.relative_to(root).as_posix() not in named:
                    out.append(p.relative_to(root).as_posix())
    return out


def _rank() -> tuple[int, int]:
    from unclip_core.train.diffusion import _dist_info
    return _dist_info()


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()


def _open_images(config: Any, data: DataConfig, kind: str, clip: Any, run_dir: Path, progress: bool) -> ImageData:
    from explorer.store import EmbeddingStore, MANIFEST, embed_items, resolve_items
    path = Path(data.path) if "{" not in data.path else data.path
    jsonl = kind == "folder" and (Path(path).suffix == ".jsonl" or (Path(path) / "captions.jsonl").is_file())
    records = [r for r in resolve_items(path, "both" if jsonl else "image") if r.kind == "image"]
    missing: list[str] = []
    if jsonl:
        root = Path(path).parent if Path(path).suffix == ".jsonl" else Path(path)
        missing = _unlisted_images(root, {str(r.extra.get("file")) for r in records})
        captions = {r.id: r.extra.get("caption") for r in records}
    else:
        if kind == "folder":
            captions = {r.id: _sidecar_caption(Path(r.payload)) for r in records}
        else:  # webdataset: the sample's .txt / .caption member or its json "caption"
            captions = {r.id: r.extra.get("caption") for r in records}
    if clip is None:
        return _images_only(config, data, kind, records, captions)
    cache = Path(data.cache) if data.cache else run_dir / "embeddings"
    if (cache / MANIFEST).is_file():
        existing = EmbeddingStore.open(cache)
        if existing.model_id != clip.model_id:
            raise ValueError(f"the embedding cache {cache} holds z_i of CLIP {existing.model_spec!r} (model_id "
                             f"{existing.model_id!r}); this run's CLIP is {clip.spec!r} ({clip.model_id!r}). Pass "
                             "another data cache folder (or delete that one) to embed with this CLIP")
    rank, _ = _rank()
    if rank == 0:
        try:
            store = embed_items(clip, path, cache, kind="image", batch_size=data.embed_batch_size,
                                progress=progress, skip_bad=data.on_bad_image == "skip")
        except ValueError as e:
            if "cannot be read" not in str(e):
                raise
            first = str(e).split(". Fix or remove")[0]
            raise ValueError(f"data path {data.path!r}: {first}. Fix or remove them, or set data on_bad_image = "
                             "\"skip\" (--skip-bad-images) to train on the rest; nothing was trained") from None
    _barrier()
    if rank != 0:
        store = EmbeddingStore.open(cache)
    row_of = {v: i for i, v in enumerate(store.metadata["id"].tolist())}
    bad = [dict(s) for s in store.manifest.get("skipped", [])]
    bad_ids = {b["id"] for b in bad}
    keep = [r for r in records if r.id in row_of and r.id not in bad_ids]
    if not jsonl:  # readable images without a caption: their name in the folder, or SHARD.tar/KEY
        missing = [str(r.extra.get("file", r.id.split(":", 1)[-1])) for r in keep if captions[r.id] is None]
    if _needs_captions(config):
        keep = [r for r in keep if captions[r.id] is not None]
    report = {"kind": kind, "path": str(data.path), "cache": str(cache), "clip": clip.spec,
              "n_items": len(keep), "n_unreadable": len(bad), "unreadable": [b["source"] for b in bad],
              "n_missing_captions": len(missing), "missing_captions": missing,
              "missing_captions_dropped": _needs_captions(config)}
    if not keep:
        why = (f"; {len(bad)} unreadable" if bad else "") + (
            f"; {len(missing)} images without a caption, which the {config.stage} needs" if missing else "")
        raise ValueError(f"the data set {data.path!r} has no usable items ({len(records)} images found{why}); "
                         "see the layouts in docs/training.md (\"Your own data\")")
    return ImageData([r.payload for r in keep], [captions[r.id] for r in keep], store.vectors,
                     np.array([row_of[r.id] for r in keep], dtype=np.int64), store.model_id, report)


def _images_only(config: Any, data: DataConfig, kind: str, records: list[Any], captions: dict[str, str | None]
                 ) -> ImageData:
    """The images of a stage that needs no CLIP (autoencoder, upsamplers): unreadable files found (PIL verify) and
    skipped or refused as data.on_bad_image says; no embeddings."""
    from explorer.store.inputs import _unreadable_images
    if data.cache is not None:
        raise ValueError(f"data cache={data.cache!r} caches CLIP image embeddings, which the {config.stage} does not "
                         "use (it trains on the images alone); drop cache from the run's [data] table")
    bad = _unreadable_images(records)
    if bad and data.on_bad_image == "fail":
        shown = "; ".join(f"{b['source']} ({b['error']})" for b in bad[:3])
        raise ValueError(f"data path {data.path!r}: {len(bad)} of {len(records)} images cannot be read: {shown}"
                         f"{'; ...' if len(bad) > 3 else ''}. Fix or remove them, or set data on_bad_image = \"skip\" "
                         "(--skip-bad-images) to train on the rest; nothing was trained")
    bad_ids = {b["id"] for b in bad}
    keep = [r for r in records if r.id not in bad_ids]
    # captions are not read by these stages: none is reported missing
    report = {"kind": kind, "path": str(data.path), "cache": None, "clip": None, "n_items": len(keep),
              "n_unreadable": len(bad), "unreadable": [b["source"] for b in bad], "n_missing_captions": 0,
              "missing_captions": [], "missing_captions_dropped": False}
    if not keep:
        why = f"; {len(bad)} unreadable" if bad else ""
        raise ValueError(f"the data set {data.path!r} has no usable images ({len(records)} images found{why}); "
                         "see the layouts in docs/training.md (\"Your own data\")")
    return ImageData([r.payload for r in keep], [captions[r.id] for r in keep], None, None, None, report)


def _pair_key(meta: Any) -> list[str]:
    if "file" in meta.columns:
        return meta["file"].astype(str).tolist()
    return [i.split(":", 1)[-1] for i in meta["id"].astype(str)]


def _open_embeddings(config: Any, data: DataConfig, clip: Any) -> EmbeddingData:
    from explorer.store import ClipRetrievalStore, EmbeddingStore, open_store
    store = open_store(data.path, what="data path")
    missing: list[str] = []
    if isinstance(store, ClipRetrievalStore):
        meta = store.metadata
        z_i, z_i_rows = store.vectors, np.arange(len(store))
        z_t = z_t_rows = None
        if (Path(data.path) / "text_emb").is_dir():
            text = ClipRetrievalStore(data.path, "text")
            if len(text) != len(store):
                raise ValueError(f"{data.path}: text_emb holds {len(text)} rows for {len(store)} img_emb rows; the "
                                 "prior pairs them row by row, so they must be aligned (re-run clip-retrieval)")
            z_t, z_t_rows = text.vectors, np.arange(len(text))
        captions = [None if c is None or (isinstance(c, float) and np.isnan(c)) else str(c)
                    for c in (meta["caption"] if "caption" in meta.columns else [None] * len(meta))]
        names = meta["source"].astype(str).tolist()
        model_id = store.model_id
    else:
        assert isinstance(store, EmbeddingStore)
        meta = store.metadata
        kinds = meta["kind"].astype(str).to_numpy()
        keys = _pair_key(meta)
        text_row = {keys[i]: i for i in np.flatnonzero(kinds == "text")}
        img = np.flatnonzero(kinds == "image")
        if not img.size:
            raise ValueError(f"the store {data.path} holds no image rows (kinds: {sorted(set(kinds))}); the prior "
                             "learns z_i from z_t, so embed the images too (`unclip-explorer embed DATA --kind both`)")
        captions = []
        for i in img:
            c = meta["caption"].iloc[i] if "caption" in meta.columns else None
            if (c is None or (isinstance(c, float) and np.isnan(c))) and keys[i] in text_row:
                c = meta["source"].iloc[text_row[keys[i]]]
            captions.append(None if c is None or (isinstance(c, float) and np.isnan(c)) else str(c))
        z_i, z_i_rows = store.vectors, img
        z_t = z_t_rows = None
        if text_row:
            z_t = store.vectors
            z_t_rows = np.array([text_row.get(keys[i], -1) for i in img], dtype=np.int64)
        names = [keys[i] for i in img]
        model_id = store.model_id
    if store.dim != clip.embed_dim:
        raise ValueError(f"the embeddings at {data.path} are {store.dim}-d but the run's CLIP {clip.spec!r} makes "
                         f"{clip.embed_dim}-d ones; pass the CLIP they were made with (clip = \"...\")")
    keep = np.ones(len(z_i_rows), dtype=bool)
    if z_t_rows is not None:
        keep &= z_t_rows >= 0
    no_caption = np.array([c is None for c in captions], dtype=bool)
    if config.model_config().n_text_tokens or z_t is None:  # captions are needed for tokens or for z_t
        keep &= ~no_caption
    missing = [n for n, bad in zip(names, no_caption) if bad]
    report = {"kind": "embeddings", "path": str(data.path), "clip": clip.spec, "n_items": int(keep.sum()),
              "n_unreadable": 0, "unreadable": [], "n_missing_captions": len(missing), "missing_captions": missing,
              "missing_captions_dropped": bool(no_caption.any() and not keep[no_caption].any()),
              "text_embeddings": "precomputed" if z_t is not None else "encoded from captions"}
    if not keep.any():
        raise ValueError(f"the embeddings at {data.path} give the prior no usable items ({len(z_i_rows)} image "
                         f"embeddings, {len(missing)} without a caption); it needs captions (a 'caption' metadata "
                         "column) or text embeddings, or set model n_text_tokens = 0 with text embeddings present")
    idx = np.flatnonzero(keep)
    return EmbeddingData(z_i, np.asarray(z_i_rows)[idx], z_t, None if z_t_rows is None else z_t_rows[idx],
                         [captions[i] for i in idx], model_id, report)


def open_training_data(config: Any, *, clip: Any, run_dir: str | Path, progress: bool = True
                       ) -> ImageData | EmbeddingData:
    """The items a run trains on, from config.data (not ShapesWorld); writes run_dir/data.json (counts of items,
    unreadable images and images without captions, with their file names) and says on stderr what was left out.

    Folders and shards: the CLIP image embeddings are cached in data.cache (default run_dir/embeddings), resumably.
    Unreadable images are skipped and counted (data.on_bad_image = "skip") or stop the run before any work
    ("fail"). Images without a caption are reported; the stages that need captions leave them out. An empty data
    set is a ValueError. clip=None (the autoencoder and upsamplers, which need no CLIP): images only, no cache.
    """
    data = config.data
    if clip is None and config.stage in ("prior", "decoder"):
        raise ValueError(f"the {config.stage} trains on CLIP embeddings of its data: pass clip= (prepare_run loads "
                         "the run's)")
    if data.is_shapesworld:
        raise ValueError("config.data is ShapesWorld (rendered on the fly); open_training_data reads files: set "
                         "data kind and path")
    run_dir = Path(run_dir)
    kind = resolve_kind(data)
    if kind == "embeddings" and config.stage != "prior":
        raise ValueError(f"data path {data.path!r} holds precomputed embeddings, which train the prior only; the "
                         f"{config.stage} needs images (an image folder or webdataset shards)")
    if "{" not in str(data.path) and not Path(data.path).exists():
        raise FileNotFoundError(f"data path not found: {data.path}; pass an image folder, a captions.jsonl, "
                                "webdataset .tar shards, an embedding store or a clip-retrieval folder")
    items = _open_embeddings(config, data, clip) if kind == "embeddings" else \
        _open_images(config, data, kind, clip, run_dir, progress)
    rank, _ = _rank()
    if rank == 0:
        from unclip_core.atomic import write_json
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / REPORT_FILE, items.report, fsync=False)
        r = items.report
        if r["n_unreadable"]:
            print(f"data: skipped {r['n_unreadable']} unreadable images, e.g. {r['unreadable'][:3]} "
                  f"(all in {run_dir / REPORT_FILE})", file=sys.stderr)
        if r["n_missing_captions"]:
            left = "left out" if r["missing_captions_dropped"] else "kept: this stage needs no captions"
            print(f"data: {r['n_missing_captions']} images have no caption ({left}): "
                  f"{r['missing_captions'][:_SHOWN]}{' ...' if r['n_missing_captions'] > _SHOWN else ''}",
                  file=sys.stderr)
    return items


def prepare_run(config: Any, *, clip: Any = None) -> tuple[Any, Any]:
    """(config with the network fields that follow from the CLIP and the autoencoder filled in, the CLIP or None)."""
    from unclip_core.train.diffusion import fit_to_autoencoder, fit_to_clip
    config = fit_to_autoencoder(config)
    if config.stage in ("prior", "decoder"):
        if clip is None:
            from unclip_core.clip import ClipEncoder
            clip = ClipEncoder.load(config.clip)
        config = fit_to_clip(config, embed_dim=clip.embed_dim, text_width=clip.text_width,
                             context_length=clip.context_length)
    return config, clip


def train_run(config: Any, out: str | Path, *, resume: bool = True, progress: bool = True, clip: Any = None,
              callback: Callable[[int, dict[str, float]], None] | None = None,
              on_end: Callable[[torch.nn.Module], None] | None = None) -> Path:
    """Train one stage of a run config on its data (ShapesWorld, a folder, shards or embeddings); returns the
    exported checkpoint folder. The CLI's `train STAGE --config RUN.toml` and DDP runs under torchrun call this.
    An AutoencoderTrainConfig trains the autoencoder (images only; on_end is not called)."""
    from unclip_core.train.autoencoder import AutoencoderTrainConfig, train_autoencoder
    if isinstance(config, AutoencoderTrainConfig):
        images = None if config.data.is_shapesworld else open_training_data(config, clip=None, run_dir=out,
                                                                           progress=progress)
        return train_autoencoder(config, out, resume=resume, progress=progress, callback=callback, data=images)
    from unclip_core.train.diffusion import train_stage
    config, clip = prepare_run(config, clip=clip)
    items = None
    if not config.data.is_shapesworld:
        items = open_training_data(config, clip=clip, run_dir=out, progress=progress)
    return train_stage(config, out, resume=resume, progress=progress, clip=clip, callback=callback, on_end=on_end,
                       data=items)


__all__ = ["EmbeddingData", "ImageData", "open_training_data", "prepare_run", "resolve_kind", "train_run"]
