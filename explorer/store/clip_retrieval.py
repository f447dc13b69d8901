"""clip-retrieval / embedding-reader output folders, opened in place as read-only stores, and exported to.

clip-retrieval (`clip-retrieval inference`) writes LAION-scale embeddings as numbered shards:

    FOLDER/img_emb/img_emb_0.npy, img_emb_1.npy, ...      (n_k, d) float16 / float32, row-aligned with
    FOLDER/text_emb/text_emb_0.npy, ...                    the same rows' captions
    FOLDER/metadata/metadata_0.parquet, ...                image_path / url, caption, ... one row per vector

`ClipRetrievalStore(folder, kind="image")` memory-maps every shard of one kind (no copy: a 100M-row folder opens
in the time it takes to read the .npy headers) and reads the parquet metadata; it answers what the toolkit asks
of a store (len, dim, vectors by rows and blocks, metadata with id / kind / source, select, search, neighbors),
so neighbours, projections, metrics and the dashboards take it as they take an EmbeddingStore. It is read-only.
`export_clip_retrieval(store, out)` writes an EmbeddingStore in that layout.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explorer.store.search import SearchMixin

KIND_DIRS = {"image": ("img_emb", "img_emb"), "text": ("text_emb", "text_emb")}
SPEC_FILE = "unclip_explorer_model.json"  # our record of the model, when export_clip_retrieval wrote the folder


def is_clip_retrieval_folder(path: str | Path) -> bool:
    """Whether `path` holds clip-retrieval output (img_emb/ or text_emb/ with numbered .npy shards)."""
    path = Path(path)
    return any(sorted((path / d).glob(f"{p}_*.npy")) for d, p in KIND_DIRS.values())


def _numbered(folder: Path, prefix: str, suffix: str) -> list[Path]:
    files = []
    for f in folder.glob(f"{prefix}_*{suffix}"):
        m = re.fullmatch(rf"{re.escape(prefix)}_(\d+){re.escape(suffix)}", f.name)
        if m:
            files.append((int(m.group(1)), f))
    return [f for _, f in sorted(files)]


class ShardedRows:
    """Row access across memory-mapped .npy shards as one (n, d) array: slices, integer arrays, np.asarray."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.shape = (int(self.offsets[-1]), int(shards[0].shape[1]) if shards else 0)
        self.dtype = shards[0].dtype if shards else np.dtype("float32")
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.shards[k][rows[sel] - self.offsets[k]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                parts = []
                for k, s in enumerate(self.shards):
                    a, b = max(start, self.offsets[k]), min(stop, self.offsets[k + 1])
                    if a < b:
                        parts.append(np.asarray(s[a - self.offsets[k]:b - self.offsets[k]]))
                return np.concatenate(parts) if parts else np.empty((0, self.shape[1]), self.dtype)
            return self._rows(np.arange(start, stop, step))
        if isinstance(key, (int, np.integer)):
            return self._rows(np.array([int(key) % max(self.shape[0], 1)]))[0]
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self._rows(rows.astype(np.int64))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr.astype(dtype) if dtype is not None else arr


class ClipRetrievalStore(SearchMixin):
    """A clip-retrieval output folder as a read-only store of one kind ("image" or "text").

    model_spec / model_id: the CLIP the embeddings come from, as clip-retrieval records none (a folder written by
    export_clip_retrieval carries ours); queries by text or image need model_spec.
    """

    read_only = True

    def __init__(self, path: str | Path, kind: str = "image", *, model_spec: str | None = None,
                 model_id: str | None = None) -> None:
        self.path = Path(path)
        if kind not in KIND_DIRS:
            raise ValueError(f"kind={kind!r} is not known; a clip-retrieval folder holds 'image' (img_emb/) and "
                             "'text' (text_emb/) embeddings")
        if not self.path.is_dir():
            raise FileNotFoundError(f"no clip-retrieval folder at {self.path}: the folder does not exist")
        sub, prefix = KIND_DIRS[kind]
        files = _numbered(self.path / sub, prefix, ".npy")
        if not files:
            raise FileNotFoundError(f"{self.path} has no {sub}/{prefix}_N.npy files: is it a clip-retrieval output "
                                    f"folder of {kind} embeddings? (kinds there: "
                                    f"{[k for k, (d, p) in KIND_DIRS.items() if _numbered(self.path / d, p, '.npy')]})")
        shards = []
        for f in files:
            try:
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:
                raise ValueError(f"{f} is not a plain numeric .npy array ({type(e).__name__}: {e}); the folder is "
                                 "damaged: re-run the embedding or restore the file") from None
            if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"{f} holds a {a.dtype} array of shape {a.shape}; expected (n, d) floats")
            shards.append(a)
        dims = {a.shape[1] for a in shards}
        if len(dims) != 1:
            raise ValueError(f"the {prefix} shards of {self.path} disagree on the dimension: {sorted(dims)}")
        self.kind = kind
        self._vectors = ShardedRows(shards)
        self._files = files
        recorded = {}
        if (self.path / SPEC_FILE).is_file():
            recorded = json.loads((self.path / SPEC_FILE).read_text(encoding="utf-8"))
        self._model_spec = model_spec or recorded.get("model_spec")
        self._model_id = model_id or recorded.get("model_id")
        self._metadata: pd.DataFrame | None = None
        self._inv_norm: np.ndarray | None = None
        self._row_of_id: dict[str, int] | None = None

    # -- what the toolkit reads of a store
    @property
    def vectors(self) -> ShardedRows:
        return self._vectors

    @property
    def count(self) -> int:
        return len(self._vectors)

    def __len__(self) -> int:
        return self.count

    @property
    def dim(self) -> int:
        return self._vectors.shape[1]

    @property
    def dtype(self) -> str:
        return np.dtype(self._vectors.dtype).name

    @property
    def model_spec(self) -> str | None:
        return self._model_spec

    @property
    def model_id(self) -> str | None:
        return self._model_id

    def __repr__(self) -> str:
        return (f"ClipRetrievalStore({str(self.path)!r}, kind={self.kind!r}, n={self.count}, dim={self.dim}, "
                f"shards={len(self._files)}, model={self.model_spec!r})")

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per vector: the parquet shards' columns plus id, kind and source (image_path, url or caption)."""
        if self._metadata is None:
            files = _numbered(self.path / "metadata", "metadata", ".parquet")
            if files:
                df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
                if len(df) != self.count:
                    raise ValueError(f"{self.path}/metadata holds {len(df)} rows for {self.count} {self.kind} vectors; "
                                     "the shards are not row-aligned (a shard missing or cut short?)")
            else:
                df = pd.DataFrame(index=range(self.count))
            source = next((c for c in ("image_path", "url", "caption") if c in df.columns), None)
            ids = df["id"].astype(str) if "id" in df.columns else [f"{self.kind}-{i}" for i in range(self.count)]
            kinds = df["kind"] if "kind" in df.columns else self.kind
            sources = df["source"] if "source" in df.columns else (df[source].astype(str) if source else "")
            rest = df.drop(columns=[c for c in ("id", "kind", "source") if c in df.columns])
            out = pd.DataFrame({"id": ids, "kind": kinds, "source": sources}, index=df.index)
            self._metadata = pd.concat([out, rest], axis=1).reset_index(drop=True)
        return self._metadata

    def select(self, kind: str | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        if kind not in (None, self.kind):
            raise ValueError(f"this clip-retrieval store is opened for {self.kind!r} embeddings; open it with "
                             f"kind={kind!r} for those")
        return np.asarray(self.vectors, np.float32), np.arange(self.count), self.metadata.reset_index(drop=True)

    def row_of(self, id: str) -> int:
        if self._row_of_id is None:
            self._row_of_id = {v: i for i, v in enumerate(self.metadata["id"].tolist())}
        if id not in self._row_of_id:
            raise ValueError(f"id {id!r} is not in {self.path} ({self.count} rows, e.g. "
                             f"{list(self._row_of_id)[:3]})")
        return self._row_of_id[id]

    def check_model(self, model_id: str, model_spec: str | None = None) -> None:
        """Refuse vectors of another model when this folder's model is known (given or recorded)."""
        if self.model_id is not None and model_id != self.model_id:
            raise ValueError(f"cannot mix models: {self.path} holds embeddings of {self.model_spec!r} (model_id "
                             f"{self.model_id!r}), the query comes from {model_spec or model_id!r}")

    def append(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(f"{self.path} is a clip-retrieval folder opened in place, read-only; embed into a store of "
                         "ours (unclip-explorer embed ... --out STORE) or add shards with clip-retrieval")


def export_clip_retrieval(store: Any, out: str | Path, *, shard_rows: int = 1_000_000) -> Path:
    """Write a store (ours) as a clip-retrieval folder: img_emb/ and text_emb/ shards of its image and text rows
    (each kind with its own metadata shards under metadata/ for the image rows, as clip-retrieval does) and our
    record of the model. Returns `out`."""
    from unclip_core.atomic import atomic_dir
    out = Path(out)
    meta = store.metadata
    kinds = meta["kind"].to_numpy() if "kind" in meta.columns else np.array(["image"] * len(store))
    with atomic_dir(out, overwrite=False) as tmp:
        for kind, (sub, prefix) in KIND_DIRS.items():
            rows = np.flatnonzero(kinds == kind)
            if not rows.size:
                continue
            (tmp / sub).mkdir()
            for k, start in enumerate(range(0, len(rows), shard_rows)):
                part = rows[start:start + shard_rows]
                np.save(tmp / sub / f"{prefix}_{k}.npy", np.asarray(store.vectors[part]), allow_pickle=False)
                if kind == "image" or not (kinds == "image").any():
                    (tmp / "metadata").mkdir(exist_ok=True)
                    m = meta.iloc[part].reset_index(drop=True)
                    m = m.rename(columns={"source": "image_path" if kind == "image" else "caption"})
                    m.to_parquet(tmp / "metadata" / f"metadata_{k}.parquet", index=False)
        (tmp / SPEC_FILE).write_text(json.dumps({"model_spec": store.model_spec, "model_id": store.model_id}) + "\n",
                                     encoding="utf-8")
    return out


__all__ = ["ClipRetrievalStore", "ShardedRows", "export_clip_retrieval", "is_clip_retrieval_folder"]
