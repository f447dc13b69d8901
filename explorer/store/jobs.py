"""Embedding jobs: `embed_items` fills a store in chunks that survive a kill and resume by rerunning the call."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from explorer.store.format import (FORMAT_VERSION, KINDS, MANIFEST, PARTIAL_DIR, REQUIRED_COLUMNS, EmbeddingStore,
                                   _as_numpy, _check_dtype, _save_npy, _write_json)
from unclip_core.checks import check_embeddings, check_positive_int
from explorer.store.inputs import Encoder, Record, TarMember, _unreadable_images, resolve_items

def _hash_payload(h: "hashlib._Hash", payload: Any) -> None:
    if hasattr(payload, "tobytes") and hasattr(payload, "size"):  # PIL image: hash its pixels
        h.update(payload.tobytes())
    elif isinstance(payload, Path):
        st = payload.stat()
        h.update(f"{payload}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        h.update(str(payload).encode())


def _job_key(records: Sequence[Record], meta: pd.DataFrame, model_id: str, dtype: str,
             batch_size: int, chunk_size: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, model_id, dtype, batch_size, chunk_size]).encode())
    for r in records:
        h.update(f"\n{r.id}\t{r.kind}\t{r.source}\t".encode())
        _hash_payload(h, r.payload)
    h.update(pd.util.hash_pandas_object(meta.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:32]


def _metadata_frame(records: Sequence[Record], extra_metadata: Any, n_inputs: int,
                    input_index: Sequence[int]) -> pd.DataFrame:
    rows = [{"id": r.id, "kind": r.kind, "source": r.source, **r.extra} for r in records]
    df = pd.DataFrame(rows)
    if extra_metadata is None:
        return df
    if isinstance(extra_metadata, Mapping):
        extra = pd.DataFrame({k: [v] * len(df) for k, v in extra_metadata.items()})
    else:
        if isinstance(extra_metadata, pd.DataFrame):
            per_input = extra_metadata.reset_index(drop=True)
        elif isinstance(extra_metadata, Sequence) and not isinstance(extra_metadata, (str, bytes)):
            per_input = pd.DataFrame(list(extra_metadata))
        else:
            raise TypeError("extra_metadata must be a dict (same values on every row), a DataFrame or a list "
                            f"of dicts (one per input item), got {type(extra_metadata).__name__}")
        if len(per_input) != n_inputs:
            raise ValueError(f"extra_metadata has {len(per_input)} rows but the input has {n_inputs} items; "
                             "pass one row per input item, or a dict for values shared by all rows")
        extra = per_input.iloc[list(input_index)].reset_index(drop=True)
    reserved = sorted(set(REQUIRED_COLUMNS).intersection(extra.columns))
    if reserved:
        raise ValueError(f"extra_metadata may not set the columns {reserved}; they are written by the store")
    for col in extra.columns:
        df[col] = extra[col].to_numpy()
    return df


def _chunk_path(partial: Path, i: int) -> Path:
    return partial / f"chunk-{i:06d}.npy"


def _load_chunk(path: Path, n_rows: int, dim: int, dtype: str) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception:  # unreadable: recompute it
        return None
    if arr.shape != (n_rows, dim) or arr.dtype.name != dtype:
        return None
    return arr


def _encode(encoder: Encoder, kind: str, payloads: list[Any]) -> np.ndarray:
    if kind == "text":
        z = encoder.encode_text(payloads)
    else:
        from unclip_core.imageio import load_image
        z = encoder.encode_image([p.load() if isinstance(p, TarMember) else load_image(p) for p in payloads])
    return _as_numpy(z)


def _check_world(meta: pd.DataFrame, encoder: Any) -> None:
    """Refuse ShapesWorld scenes of another version than a ShapesWorld-trained encoder's (its words differ)."""
    world = getattr(encoder, "world", None)
    if world is None or "scene" not in meta.columns:
        return
    has_scene = meta["scene"].notna()
    # scenes written before versions were recorded carry no world: they are v1
    worlds = meta["scene.world"] if "scene.world" in meta.columns else pd.Series(1, index=meta.index)
    found = sorted({int(v) for v in worlds[has_scene].fillna(1)} - {int(world)})
    if found:
        raise ValueError(f"the input holds ShapesWorld v{found[0]} scenes but the encoder {encoder.spec!r} was "
                         f"trained on ShapesWorld v{world}; export v{world} scenes (`unclip-explorer shapes export "
                         f"--world {world}`) or embed with a v{found[0]} model")


@dataclass
class EmbedJob:
    """One embedding call, resolved: its rows, their metadata, the unreadable files left out, the chunks (kind,
    row indices) in store order, and the key that makes a rerun a no-op. Shared by single-process and distributed
    runs, so both cut the same chunks and batches (and compute bit-identical vectors)."""

    records: list[Record]
    meta: pd.DataFrame
    skipped: list[dict[str, Any]]
    chunks: list[tuple[str, list[int]]]
    key: str
    dim: int
    dtype: str
    batch_size: int


BadCheck = Callable[[Sequence[Record], bool], list[dict[str, Any]]]


def plan_job(encoder: Encoder, items: str | Path | Sequence[Any], *, kind: str | None = None, batch_size: int = 64,
             chunk_size: int = 1024,
             extra_metadata: Mapping[str, Any] | pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
             progress: bool = True, dtype: str = "float16", skip_bad: bool = False,
             bad_check: BadCheck | None = None) -> EmbedJob:
    """Check the arguments and the inputs and cut the job into chunks; nothing is written.

    `bad_check(records, progress)` finds unreadable image files (default: every file is opened here; distributed
    runs split the check across ranks)."""
    batch_size = check_positive_int("batch_size", batch_size)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    dtype = _check_dtype(dtype)
    for attr in ("encode_text", "encode_image", "embed_dim", "spec", "model_id"):
        if not hasattr(encoder, attr):
            raise TypeError(f"encoder must provide {attr} (like unclip_core.clip.ClipEncoder), "
                            f"got {type(encoder).__name__} without it")
    records = resolve_items(items, kind)
    # rows of one input item (an image and its caption in a captions.jsonl) share its extra_metadata row
    keys = [r.extra.get("file", r.id) for r in records]
    first = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    input_index = [first[key] for key in keys]
    meta = _metadata_frame(records, extra_metadata, len(first), input_index)
    dup = meta["id"][meta["id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"the input yields duplicate ids {dup[:3]} (e.g. a captions.jsonl naming one file "
                         "twice); make each file / item appear once")
    bad = (bad_check or _unreadable_images)(records, progress)
    if bad and not skip_bad:
        shown = "; ".join(f"{b['source']} ({b['error']})" for b in bad[:3])
        raise ValueError(f"{len(bad)} of {sum(r.kind == 'image' for r in records)} images cannot be read: {shown}"
                         f"{'; ...' if len(bad) > 3 else ''}. Fix or remove them, or pass --skip-bad (skip_bad=True) "
                         "to embed the rest and record the skipped files in store.json; nothing was written")
    if bad:
        drop = {b["row"] for b in bad}
        keep = [i for i in range(len(records)) if i not in drop]
        records = [records[i] for i in keep]
        meta = meta.iloc[keep].reset_index(drop=True)
        if not records:
            raise ValueError(f"every input of {items} is unreadable; nothing to embed")
    skipped = [{"id": b["id"], "source": b["source"], "error": b["error"]} for b in bad]
    _check_world(meta, encoder)
    # chunks never straddle kinds, so every batch (and its floating-point result) is the same on each run
    chunks: list[tuple[str, list[int]]] = []
    for k in KINDS:
        idx = [i for i, r in enumerate(records) if r.kind == k]
        chunks += [(k, idx[s:s + chunk_size]) for s in range(0, len(idx), chunk_size)]
    key = _job_key(records, meta, encoder.model_id, dtype, batch_size, chunk_size)
    return EmbedJob(records, meta, skipped, chunks, key, int(encoder.embed_dim), dtype, batch_size)


def open_target(out: Path, encoder: Encoder, dim: int, dtype: str) -> EmbeddingStore:
    """The store at `out` (checked against the encoder, dim and dtype), or a new one."""
    if (out / MANIFEST).exists():
        store = EmbeddingStore.open(out)
        store.check_model(encoder.model_id, encoder.spec)
        if store.dim != dim:
            raise ValueError(f"dim mismatch: the store at {out} holds {store.dim}-d vectors, the encoder "
                             f"{encoder.spec!r} makes {dim}-d ones; embed into a new store")
        if store.dtype != dtype:
            raise ValueError(f"dtype={dtype!r} but the store at {out} holds {store.dtype}; "
                             f"pass dtype={store.dtype!r} or embed into a new store")
        return store
    return EmbeddingStore.create(out, encoder.spec, encoder.model_id, dim, dtype)


def check_no_clash(store: EmbeddingStore, meta: pd.DataFrame) -> None:
    clash = sorted(set(store.metadata["id"]).intersection(meta["id"]))
    if clash:
        raise ValueError(f"{len(clash)} ids are already in the store at {store.path}, e.g. {clash[:3]}, from an "
                         "earlier call with other items or settings; embed into another store")


def open_partial(partial: Path, key: str, n_rows: int, chunk_size: int) -> None:
    """The folder of a job's finished chunks: kept when it belongs to this job, else discarded (with a warning)."""
    job_file = partial / "job.json"
    if partial.exists():
        old = json.loads(job_file.read_text()) if job_file.exists() else {}
        if old.get("key") != key:
            warnings.warn(f"discarding unfinished chunks in {partial}: they belong to another embed call "
                          "(other items or settings)", stacklevel=3)
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not job_file.exists():
        _write_json(job_file, {"key": key, "n_rows": n_rows, "chunk_size": chunk_size})


def run_chunks(encoder: Encoder, job: EmbedJob, partial: Path, chunk_ids: Sequence[int], *, desc: str,
               progress: bool = True, on_chunk: Callable[[int, int], None] | None = None) -> None:
    """Embed the job's chunks `chunk_ids` into partial/chunk-NNNNNN.npy (global chunk numbers); finished ones are
    skipped, so a killed run resumes."""
    from tqdm.auto import tqdm
    total = sum(len(job.chunks[ci][1]) for ci in chunk_ids)
    bar = tqdm(total=total, desc=desc, unit="item", disable=not progress)
    try:
        for ci in chunk_ids:
            k, idx = job.chunks[ci]
            path = _chunk_path(partial, ci)
            if path.exists() and _load_chunk(path, len(idx), job.dim, job.dtype) is not None:
                bar.update(len(idx))
                continue
            parts = []
            for s in range(0, len(idx), job.batch_size):
                batch = [job.records[i].payload for i in idx[s:s + job.batch_size]]
                z = _encode(encoder, k, batch)
                check_embeddings(f"encoder output ({k})", z, dim=job.dim)
                if len(z) != len(batch):
                    raise ValueError(f"encoder returned {len(z)} embeddings for {len(batch)} {k} inputs")
                parts.append(z.astype(job.dtype))
                bar.update(len(batch))
            _save_npy(path, np.concatenate(parts))
            if on_chunk is not None:
                on_chunk(ci, len(job.chunks))
    finally:
        bar.close()


def embed_items(encoder: Encoder, items: str | Path | Sequence[Any], out: str | Path,
                kind: str | None = None, batch_size: int = 64, chunk_size: int = 1024,
                extra_metadata: Mapping[str, Any] | pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
                progress: bool = True, dtype: str = "float16",
                on_chunk: Callable[[int, int], None] | None = None, skip_bad: bool = False) -> EmbeddingStore:
    """Embed items with a CLIP encoder into the store at `out`, in resumable chunks; returns the store.

    Every image file is checked before any work: an unreadable one is an error naming it (nothing is written),
    or with skip_bad=True it is left out and recorded in store.json under "skipped" (file and reason).

    items: an image folder, a captions.jsonl (ShapesWorld export; scene columns are carried), a .txt with
    one caption per line, webdataset .tar shards (a file, a folder of them, or 'dir/{000..099}.tar'), or a list
    of captions / image paths / PIL images. Each chunk of `chunk_size` rows is saved atomically under out/.partial;
    a rerun of a killed call with the same arguments skips finished chunks and yields the same store bit for bit.
    A finished call rerun is a no-op. `on_chunk(i, n_chunks)` is called after chunk i is saved (for progress
    reporting and tests). Several processes split one call with `explorer.store.distributed.embed_distributed`.
    """
    job = plan_job(encoder, items, kind=kind, batch_size=batch_size, chunk_size=chunk_size,
                   extra_metadata=extra_metadata, progress=progress, dtype=dtype, skip_bad=skip_bad)
    out = Path(out)
    store = open_target(out, encoder, job.dim, job.dtype)
    partial = out / PARTIAL_DIR
    if job.key in store._manifest.get("jobs", []):
        shutil.rmtree(partial, ignore_errors=True)
        return store
    check_no_clash(store, job.meta)
    open_partial(partial, job.key, len(job.records), chunk_size)
    run_chunks(encoder, job, partial, range(len(job.chunks)), desc=f"embed -> {out.name}", progress=progress,
               on_chunk=on_chunk)
    order = [i for _, idx in job.chunks for i in idx]
    blocks: Iterator[np.ndarray] = (np.load(_chunk_path(partial, ci), allow_pickle=False)
                                    for ci in range(len(job.chunks)))
    store._commit(blocks, len(job.records), job.meta.iloc[order].reset_index(drop=True), job=job.key,
                  skipped=job.skipped)
    shutil.rmtree(partial, ignore_errors=True)
    return store
