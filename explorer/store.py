"""Embedding store: CLIP vectors on disk (one memory-mapped .npy) with parquet metadata and a JSON manifest.

A store is a folder. `store.json` is the commit point: it names the live vectors file and metadata file,
so replacing it (temp file, then rename) publishes an append atomically; a reader never sees a half write.
`embed_items` fills a store in chunks that survive a kill and are resumed by rerunning the same call.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from unclip_core.atomic import atomic_write, write_json
from unclip_core.checks import check_choice, check_embeddings, check_positive_int

FORMAT_NAME = "unclip-explorer-store"
FORMAT_VERSION = 1
MANIFEST = "store.json"
PARTIAL_DIR = ".partial"
DTYPES = ("float16", "float32")
KINDS = ("image", "text")
INPUT_KINDS = ("image", "text", "both")
REQUIRED_COLUMNS = ("id", "kind", "source")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
NEIGHBOR_BLOCK_ROWS = 16384


def _tool_version() -> str:
    try:
        from importlib.metadata import version
        return version("unclip-explorer")
    except Exception:  # not installed (a source checkout): fall back to the pyproject version
        return "0.1.0"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------- atomic writes
def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    write_json(path, obj)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
    atomic_write(path, write)


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns mixing Python types (parquet needs one type per column) become strings."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            values = df[col].dropna()
            if len({type(v) for v in values}) > 1:
                df[col] = df[col].map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v))
                                      else str(v))
    return df


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    df = _parquet_safe(df)
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


# ----------------------------------------------------------------------------------------- the store
def _as_numpy(z: Any) -> np.ndarray:
    """Encoder output (torch tensor or array) -> float32 numpy array, without importing torch here."""
    if hasattr(z, "detach"):
        z = z.detach().cpu().float().numpy()
    return np.asarray(z)


def _check_dtype(dtype: str | np.dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    check_choice("dtype", name, DTYPES)
    return name


def _check_metadata(metadata: pd.DataFrame | Sequence[Mapping[str, Any]], n_rows: int) -> pd.DataFrame:
    if isinstance(metadata, pd.DataFrame):
        df = metadata.reset_index(drop=True).copy()
    elif isinstance(metadata, Sequence) and not isinstance(metadata, (str, bytes)):
        df = pd.DataFrame(list(metadata))
    else:
        raise TypeError(f"metadata must be a DataFrame or a list of dicts with columns {list(REQUIRED_COLUMNS)}, "
                        f"got {type(metadata).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metadata lacks the columns {missing}; every row needs id, kind ('image'/'text') "
                         "and source (a path or the caption)")
    if len(df) != n_rows:
        raise ValueError(f"metadata has {len(df)} rows but vectors has {n_rows}; pass one row per vector")
    df["id"] = df["id"].astype(str)
    df["source"] = df["source"].astype(str)
    bad_kind = sorted(set(df["kind"]) - set(KINDS))
    if bad_kind:
        raise ValueError(f"metadata column 'kind' has {bad_kind!r}; accepted: {list(KINDS)}")
    dup = df["id"][df["id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"metadata has duplicate ids {dup[:5]}; ids must be unique within a store")
    return df


def check_rows(block: np.ndarray, dtype: str, ids: Sequence[Any], what: str = "vectors") -> None:
    """Refuse rows a store cannot hold faithfully, naming them: NaN or inf values, finite values beyond the store
    dtype's range (float16: 65504; they would be stored as inf) and all-zero rows (no direction: cosine 0 with
    everything)."""
    block = np.asarray(block)
    if block.size == 0:
        return
    f64 = block.astype(np.float64, copy=False)

    def named(mask: np.ndarray) -> str:
        rows = np.flatnonzero(mask)
        shown = [f"{int(r)} ({ids[int(r)]!r})" if int(r) < len(ids) else str(int(r)) for r in rows[:5]]
        return f"rows {', '.join(shown)}{' ...' if len(rows) > 5 else ''} ({len(rows)} in all)"

    bad = ~np.isfinite(f64).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} {named(bad)} hold NaN or inf values; the store keeps only finite embeddings: "
                         "check the encoder output or the file they were read from")
    limit = float(np.finfo(np.dtype(dtype)).max)
    over = (np.abs(f64) > limit).any(axis=1)
    if over.any():
        raise ValueError(f"{what} {named(over)} hold values beyond {dtype}'s range (|x| > {limit:g}), which would be "
                         f"stored as inf; embed into a float32 store (dtype='float32', --dtype float32) or scale the "
                         "vectors (cosine search reads only directions)")
    zero = ~(f64 != 0).any(axis=1)
    if zero.any():
        raise ValueError(f"{what} {named(zero)} are all zeros: an embedding needs a direction (a zero vector has "
                         "cosine 0 with everything); drop those rows or check where they came from")


def _check_file_name(path: Path, manifest: Mapping[str, Any], key: str) -> str:
    """A manifest's file reference must name a file inside the store folder (a plain file name)."""
    name = manifest.get(key)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", "..") \
            or "/" in name or "\\" in name:
        raise ValueError(f"{path / MANIFEST} names {key}={name!r}, which is not a file inside the store folder; a "
                         "store's files live in its folder (store.json was edited or damaged): restore store.json "
                         "or re-embed the store")
    return name


def _npy_size_problem(vpath: Path, count: int, dim: int, dtype: str) -> str | None:
    """Why a .npy file cannot hold a (count, dim) array of dtype, read from its header and size; None if it can."""
    try:
        with open(vpath, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, file_dtype = read(f, max_header_size=10_000)
            header = f.tell()
    except (ValueError, OSError, EOFError):
        return None  # not an .npy header: np.load's own error path names it
    need = header + int(np.prod(shape, dtype=np.int64)) * np.dtype(file_dtype).itemsize
    have = vpath.stat().st_size
    if have < need:
        return (f"its vectors file {vpath.name} is truncated: {have} bytes, where its header's {file_dtype} "
                f"{tuple(shape)} array needs {need}; the file was cut short (an interrupted copy?): restore it "
                "from the original or re-embed the store")
    return None


class EmbeddingStore:
    """A folder of CLIP embeddings: `vectors` (n, dim) memmap, `metadata` DataFrame, `store.json` manifest."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self._manifest = manifest
        self._vectors: np.ndarray | None = None
        self._metadata: pd.DataFrame | None = None
        self._row_of_id: dict[str, int] | None = None
        self._inv_norm: np.ndarray | None = None

    # -- creation and opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, model_spec: str, model_id: str, dim: int,
               dtype: str = "float16") -> "EmbeddingStore":
        """Create an empty store at `path` (a new or empty folder) for vectors of one model."""
        path = Path(path)
        dim = check_positive_int("dim", dim)
        dtype = _check_dtype(dtype)
        for name, value in (("model_spec", model_spec), ("model_id", model_id)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty string, got {value!r}")
        if (path / MANIFEST).exists():
            raise ValueError(f"an embedding store already exists at {path}; open it with "
                             "EmbeddingStore.open(path) or choose another folder")
        if path.exists() and not path.is_dir():
            raise ValueError(f"out={str(path)!r} is a file; pass a folder for the store")
        if path.exists() and any(p.name != PARTIAL_DIR for p in path.iterdir()):
            raise ValueError(f"folder {path} is not empty and holds no store.json; pass a new or empty folder")
        path.mkdir(parents=True, exist_ok=True)
        vectors_file, metadata_file = cls._file_names(0)
        _save_npy(path / vectors_file, np.zeros((0, dim), dtype=dtype))
        empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in REQUIRED_COLUMNS})
        _write_parquet(path / metadata_file, empty)
        now = _now()
        manifest = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_spec": model_spec,
            "model_id": model_id, "dim": dim, "dtype": dtype, "count": 0, "created": now, "updated": now,
            "tool_version": _tool_version(), "generation": 0, "vectors_file": vectors_file,
            "metadata_file": metadata_file, "jobs": [],
        }
        _write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | Path) -> "EmbeddingStore":
        """Open the store at `path`, checking its format version and that its files agree with store.json."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{path} is a file, not an embedding store (a store is a folder holding "
                                     "store.json); pass the store's folder, or create one with `unclip-explorer "
                                     "embed INPUT --model SPEC --out STORE`")
        if not path.is_dir():
            raise FileNotFoundError(f"no embedding store at {path}: the folder does not exist; create one with "
                                    "`unclip-explorer embed INPUT --model SPEC --out STORE`")
        mpath = path / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"no embedding store at {path}: {MANIFEST} is missing; create one with "
                                    "`unclip-explorer embed INPUT --model SPEC --out STORE`")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{mpath} is not valid JSON ({exc.msg}, line {exc.lineno}); "
                             "the store is damaged, re-embed it") from None
        if manifest.get("format") != FORMAT_NAME:
            raise ValueError(f"{mpath} is not an {FORMAT_NAME} manifest (format={manifest.get('format')!r})")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"store at {path} has format version {version!r}, this unclip-explorer "
                             f"({_tool_version()}) reads version {FORMAT_VERSION}; use the matching "
                             "unclip-explorer version or re-embed the store")
        for key in ("vectors_file", "metadata_file"):
            _check_file_name(path, manifest, key)
        store = cls(path, manifest)
        vec = store.vectors
        if vec.shape != (store.count, store.dim) or vec.dtype.name != store.dtype:
            raise ValueError(f"store at {path} is inconsistent: {manifest['vectors_file']} holds "
                             f"{vec.dtype.name} {vec.shape}, store.json says {store.dtype} "
                             f"({store.count}, {store.dim}); re-embed the store")
        return store

    @staticmethod
    def _file_names(generation: int) -> tuple[str, str]:
        return f"vectors-{generation:06d}.npy", f"metadata-{generation:06d}.parquet"

    # -- properties ---------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._manifest)

    @property
    def model_spec(self) -> str:
        return self._manifest["model_spec"]

    @property
    def model_id(self) -> str:
        return self._manifest["model_id"]

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def dtype(self) -> str:
        return self._manifest["dtype"]

    @property
    def count(self) -> int:
        return int(self._manifest["count"])

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (f"EmbeddingStore({str(self.path)!r}, n={self.count}, dim={self.dim}, dtype={self.dtype}, "
                f"model={self.model_spec!r})")

    @property
    def vectors(self) -> np.ndarray:
        """The (count, dim) vectors, memory-mapped read-only (an empty array for an empty store)."""
        if self._vectors is None:
            vpath = self.path / self._manifest["vectors_file"]
            if not vpath.exists():
                raise FileNotFoundError(f"store at {self.path} lacks its vectors file {vpath.name}; "
                                        "the store is damaged, re-embed it")
            problem = _npy_size_problem(vpath, self.count, self.dim, self.dtype)
            if problem is not None:
                raise ValueError(f"store at {self.path}: {problem}")
            try:
                if self.count == 0:  # a zero-length region cannot be memory-mapped
                    vectors = np.load(vpath, allow_pickle=False)
                else:
                    vectors = np.load(vpath, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:  # garbage, object arrays (pickles), truncation
                raise ValueError(f"store at {self.path}: its vectors file {vpath.name} is not a plain numeric .npy "
                                 f"array ({'it holds Python objects' if 'object' in str(e) or 'pickle' in str(e) else type(e).__name__}); "
                                 "the store is damaged or was edited: "
                                 "re-embed it (pickled arrays are never loaded)") from None
            want = (self.count, self.dim)
            if vectors.ndim != 2 or tuple(vectors.shape) != want or vectors.dtype.name != self.dtype:
                raise ValueError(f"store at {self.path}: {vpath.name} holds a {vectors.dtype} array of shape "
                                 f"{tuple(vectors.shape)}, but store.json says {self.dtype} {want}; the store is "
                                 "damaged or was edited: re-embed it")
            self._vectors = vectors
        return self._vectors

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per vector: id, kind, source and any extra columns (e.g. flattened scene fields)."""
        if self._metadata is None:
            mpath = self.path / self._manifest["metadata_file"]
            if not mpath.exists():
                raise FileNotFoundError(f"store at {self.path} lacks its metadata file {mpath.name}; "
                                        "the store is damaged, re-embed it")
            df = pd.read_parquet(mpath)
            if len(df) != self.count:
                raise ValueError(f"store at {self.path} is inconsistent: metadata has {len(df)} rows, "
                                 f"store.json says {self.count}; re-embed the store")
            self._metadata = df
        return self._metadata

    def select(self, kind: str | None = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """(float32 vectors, row indices, metadata) of the rows of `kind` ("image", "text"), in store order; every
        row for kind=None or a store without a kind column. ValueError names the kinds there are when none match."""
        rows = np.arange(len(self))
        meta = self.metadata
        if kind is not None and len(self) and "kind" in meta.columns:
            rows = np.flatnonzero((meta["kind"] == kind).to_numpy())
            if rows.size == 0:
                kinds = sorted(meta["kind"].astype(str).unique().tolist())
                raise ValueError(f"the store at {self.path} has no rows of kind {kind!r} (its kinds: {kinds}); embed "
                                 "such items into it, or pass kind=None to use every row")
            return np.asarray(self.vectors[rows], np.float32), rows, meta.iloc[rows].reset_index(drop=True)
        return np.asarray(self.vectors, np.float32), rows, meta.reset_index(drop=True)

    def row_of(self, id: str) -> int:
        """Row index of the vector with this id."""
        if self._row_of_id is None:
            self._row_of_id = {v: i for i, v in enumerate(self.metadata["id"].tolist())}
        if id not in self._row_of_id:
            examples = list(self._row_of_id)[:3]
            raise ValueError(f"id {id!r} is not in the store at {self.path} ({self.count} rows, "
                             f"e.g. {examples}); list ids with store.metadata['id']")
        return self._row_of_id[id]

    # -- writing --------------------------------------------------------------------------------------
    def check_model(self, model_id: str, model_spec: str | None = None) -> None:
        """Raise when vectors of model `model_id` would be mixed into this store of another model."""
        if model_id != self.model_id:
            other = f"{model_spec!r} (model_id {model_id!r})" if model_spec else f"model_id {model_id!r}"
            raise ValueError(f"cannot mix models: the store at {self.path} holds vectors of "
                             f"{self.model_spec!r} (model_id {self.model_id!r}), the new vectors come from "
                             f"{other}; embed into a new store")

    def append(self, vectors: np.ndarray, metadata: pd.DataFrame | Sequence[Mapping[str, Any]],
               model_id: str | None = None) -> "EmbeddingStore":
        """Append (n, dim) vectors with one metadata row each, atomically; returns self, reloaded."""
        if model_id is not None:
            self.check_model(model_id)
        vectors = _as_numpy(vectors)
        check_embeddings("vectors", vectors, dim=self.dim)
        df = _check_metadata(metadata, len(vectors))
        check_rows(vectors, self.dtype, df["id"].tolist())  # before anything is written
        self._commit([vectors], len(vectors), df)
        return self

    def _commit(self, blocks: Iterable[np.ndarray], n_new: int, new_meta: pd.DataFrame,
                job: str | None = None, skipped: Sequence[Mapping[str, Any]] = ()) -> None:
        """Write new vectors/metadata files of the next generation, then publish them via store.json."""
        old_meta = self.metadata
        clash = sorted(set(old_meta["id"]).intersection(new_meta["id"]))
        if clash:
            raise ValueError(f"{len(clash)} ids are already in the store at {self.path}, e.g. {clash[:3]}; "
                             "pass distinct ids (ids=...) or embed into another store")
        generation = int(self._manifest["generation"]) + 1
        vectors_file, metadata_file = self._file_names(generation)
        n_old, total = self.count, self.count + n_new
        old_vec = self.vectors

        def write_vectors(tmp: Path) -> None:
            if total == 0:
                np.save(tmp, np.zeros((0, self.dim), dtype=self.dtype), allow_pickle=False)
                return
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(total, self.dim))
            for start in range(0, n_old, NEIGHBOR_BLOCK_ROWS):  # stream: never hold the whole store in RAM
                stop = min(start + NEIGHBOR_BLOCK_ROWS, n_old)
                out[start:stop] = old_vec[start:stop]
            row = n_old
            new_ids = new_meta["id"].tolist()
            for block in blocks:
                block = np.asarray(block)
                # encoders' output too: a bad row fails the write (the temporary file is removed)
                check_rows(block, self.dtype, new_ids[row - n_old:row - n_old + len(block)])
                out[row:row + len(block)] = block.astype(self.dtype, copy=False)
                row += len(block)
            if row != total:
                raise RuntimeError(f"internal: wrote {row} rows, expected {total}")
            out.flush()
            del out

        atomic_write(self.path / vectors_file, write_vectors)
        merged = pd.concat([old_meta, new_meta], ignore_index=True) if n_old else new_meta.reset_index(drop=True)
        _write_parquet(self.path / metadata_file, merged)
        manifest = dict(self._manifest)
        manifest.update(count=total, generation=generation, vectors_file=vectors_file,
                        metadata_file=metadata_file, updated=_now(), tool_version=_tool_version())
        if job is not None:
            manifest["jobs"] = list(manifest.get("jobs", [])) + [job]
        if skipped:
            manifest["skipped"] = list(manifest.get("skipped", [])) + [dict(s) for s in skipped]
        _write_json(self.path / MANIFEST, manifest)  # the commit point
        self._manifest = manifest
        self._vectors = self._metadata = self._row_of_id = self._inv_norm = None
        live = {vectors_file, metadata_file}
        for p in self.path.iterdir():  # old generation, and files of a write that was killed mid-way
            stale_data = p.name.startswith(("vectors-", "metadata-")) and p.name not in live
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()
            if stale_data or stale_tmp:
                p.unlink(missing_ok=True)

    # -- nearest neighbours -------------------------------------------------------------------------
    def _inverse_norms(self, block_rows: int = NEIGHBOR_BLOCK_ROWS) -> np.ndarray:
        """1 / |z| per row (float32, cached on this object: 4 bytes a row)."""
        if self._inv_norm is None:
            out = np.empty(self.count, dtype=np.float32)
            vec = self.vectors
            for start in range(0, self.count, block_rows):
                block = np.asarray(vec[start:start + block_rows], dtype=np.float32)
                out[start:start + len(block)] = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", block, block)),
                                                                 1e-12)
            self._inv_norm = out
        return self._inv_norm

    def search(self, query_vectors: np.ndarray, k: int = 10,
               block_rows: int = NEIGHBOR_BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k cosine similarity by a blocked matmul over the memmap: (scores (q, k), rows (q, k)).

        Ties are broken by the lower row. k larger than the store returns every row.
        """
        k = check_positive_int("k", k)
        block_rows = check_positive_int("block_rows", block_rows)
        q = _as_numpy(query_vectors)
        check_embeddings("query_vectors", q, dim=self.dim, allow_1d=True)
        q = np.atleast_2d(q).astype(np.float32)
        if self.count == 0:
            raise ValueError(f"the store at {self.path} is empty; embed items into it first")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = min(k, self.count)
        n_q = len(q)
        best_s = np.full((n_q, 0), -np.inf, dtype=np.float32)
        best_r = np.zeros((n_q, 0), dtype=np.int64)
        vec = self.vectors
        inv_norm = self._inverse_norms(block_rows)
        for start in range(0, self.count, block_rows):
            block = np.asarray(vec[start:start + block_rows], dtype=np.float32)
            with np.errstate(invalid="ignore", over="ignore"):
                s = (block @ q.T).T * inv_norm[start:start + len(block)]  # (q, b) cosine
            if not np.isfinite(s).all():  # inf / NaN rows of a store written before append refused them
                bad_rows = np.flatnonzero(~np.isfinite(s).all(axis=0)) + start
                warnings.warn(f"store at {self.path}: rows {bad_rows[:5].tolist()} hold inf or NaN values and rank "
                              "last (score -inf); re-embed those items", RuntimeWarning, stacklevel=2)
                s = np.where(np.isfinite(s), s, -np.inf).astype(np.float32)
            if s.shape[1] > k:
                kth = np.partition(s, s.shape[1] - k, axis=1)[:, s.shape[1] - k]
            else:
                kth = np.full(n_q, -np.inf, dtype=np.float32)
            cand_s, cand_r = [], []
            for i in range(n_q):
                cols = np.flatnonzero(s[i] >= kth[i])
                rows = np.concatenate([best_r[i], cols + start])
                scores = np.concatenate([best_s[i], s[i, cols]])
                order = np.lexsort((rows, -scores))[:k]  # score descending, then row ascending
                cand_s.append(scores[order])
                cand_r.append(rows[order])
            best_s, best_r = np.stack(cand_s), np.stack(cand_r)
        return best_s, best_r

    def neighbors(self, query_vectors: np.ndarray, k: int = 10) -> pd.DataFrame:
        """Exact cosine nearest neighbours as a tidy DataFrame: query, rank, score, row, id, kind, source."""
        scores, rows = self.search(query_vectors, k=k)
        meta = self.metadata
        n_q, k_eff = rows.shape
        flat = rows.ravel()
        return pd.DataFrame({
            "query": np.repeat(np.arange(n_q), k_eff),
            "rank": np.tile(np.arange(1, k_eff + 1), n_q),
            "score": scores.ravel().astype(np.float64),
            "row": flat,
            "id": meta["id"].to_numpy()[flat],
            "kind": meta["kind"].to_numpy()[flat],
            "source": meta["source"].to_numpy()[flat],
        })


# ----------------------------------------------------------------------------------------- embedding jobs
class Encoder(Protocol):
    """What `embed_items` needs from a CLIP encoder (unclip_core.clip.ClipEncoder satisfies it)."""

    embed_dim: int
    spec: str
    model_id: str

    def encode_text(self, texts: list[str]) -> Any: ...

    def encode_image(self, images: list[Any]) -> Any: ...


@dataclass(frozen=True)
class Record:
    """One row to embed: its id, kind, source (path or caption), payload (image or caption) and extras."""

    id: str
    kind: str
    source: str
    payload: Any
    extra: dict[str, Any] = field(default_factory=dict)


def flatten(obj: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts/lists -> flat {"prefix.a.0.b": value} columns (pandas.json_normalize naming)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}"))
    elif isinstance(obj, (list, tuple)):
        out[f"{prefix}.n"] = len(obj)
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = obj
    return out


def _records_from_folder(folder: Path, kind: str) -> list[Record]:
    if kind != "image":
        raise ValueError(f"kind={kind!r} does not fit a folder of images ({folder}); use kind='image', "
                         "or pass a captions.jsonl / .txt file for text")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and PARTIAL_DIR not in p.parts)
    if not files:
        raise ValueError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                         "pass a folder with images, a captions.jsonl or a .txt of captions")
    return [Record(f"image:{p.relative_to(folder).as_posix()}", "image", str(p), p) for p in files]


def _records_from_jsonl(path: Path, kind: str) -> list[Record]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno} is not JSON ({exc.msg}); each line must be an object "
                                 '{"file": ..., "caption": ..., "scene": ...}') from None
    if not rows:
        raise ValueError(f"{path} is empty; it needs one JSON object per line with 'file' and 'caption'")
    images, texts = [], []
    for lineno, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "file" not in row or "caption" not in row:
            raise ValueError(f"{path} row {lineno} lacks 'file' or 'caption' (got {str(row)[:80]}); "
                             "use the captions.jsonl written by `unclip-explorer shapes export`")
        file = str(row["file"])
        img = path.parent / file
        if not img.exists() and (path.parent / "images" / file).exists():
            img = path.parent / "images" / file
        extra: dict[str, Any] = {"file": file, "caption": str(row["caption"])}
        for key, value in row.items():
            if key in ("file", "caption"):
                continue
            if key in REQUIRED_COLUMNS:  # the store writes these itself; keep the input's under another name
                key = f"input_{key}"
            if isinstance(value, (dict, list, tuple)):
                extra[key] = json.dumps(value, sort_keys=True)  # keeps the exact structure
                extra.update(flatten(value, key))
            else:
                extra[key] = value
        if kind in ("image", "both"):
            if not img.exists():
                raise FileNotFoundError(f"{path} row {lineno} names image {file!r}, not found at {img}")
            images.append(Record(f"image:{file}", "image", str(img), img, extra))
        if kind in ("text", "both"):
            texts.append(Record(f"text:{file}", "text", str(row["caption"]), str(row["caption"]), extra))
    return images + texts


def _records_from_txt(path: Path, kind: str) -> list[Record]:
    if kind != "text":
        raise ValueError(f"kind={kind!r} does not fit a .txt of captions ({path}); use kind='text'")
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            caption = line.strip()
            if caption:
                out.append(Record(f"text:{path.name}:{lineno}", "text", caption, caption))
    if not out:
        raise ValueError(f"{path} holds no captions; write one caption per line")
    return out


def _records_from_list(items: Sequence[Any], kind: str | None) -> list[Record]:
    out = []
    for i, item in enumerate(items):
        is_image_obj = hasattr(item, "convert") and hasattr(item, "size")  # a PIL image
        if isinstance(item, Path) or is_image_obj or (isinstance(item, str) and kind == "image"):
            if kind == "text":
                raise TypeError(f"items[{i}] is an image ({type(item).__name__}) but kind='text'; "
                                "pass captions as str, or kind='image'")
            if is_image_obj:
                out.append(Record(f"image:{i}", "image", f"<{type(item).__name__} {i}>", item))
            else:
                out.append(Record(f"image:{Path(item).as_posix()}", "image", str(item), Path(item)))
        elif isinstance(item, str):
            if kind == "both":
                raise ValueError("kind='both' needs a captions.jsonl (image and caption pairs), "
                                 "not a list; use kind='image' or 'text'")
            out.append(Record(f"text:{i}", "text", item, item))
        else:
            raise TypeError(f"items[{i}] must be a caption (str), an image path or a PIL image, "
                            f"got {type(item).__name__}")
    return out


def resolve_items(items: str | Path | Sequence[Any], kind: str | None = None) -> list[Record]:
    """Turn an input (image folder, captions.jsonl, .txt, or a list) into records with stable ids.

    kind None picks: folder -> image, .txt / list of str -> text, captions.jsonl -> both.
    """
    if kind is not None:
        check_choice("kind", kind, INPUT_KINDS)
    if isinstance(items, (str, Path)):
        path = Path(items)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}; pass an image folder, a captions.jsonl "
                                    "or a .txt with one caption per line")
        if path.is_dir():
            if (path / "captions.jsonl").exists():  # a ShapesWorld export folder
                return _records_from_jsonl(path / "captions.jsonl", kind or "both")
            return _records_from_folder(path, kind or "image")
        if path.suffix == ".jsonl":
            return _records_from_jsonl(path, kind or "both")
        if path.suffix == ".txt":
            return _records_from_txt(path, kind or "text")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _records_from_list([path], kind or "image")
        raise ValueError(f"input {path} has an unknown suffix {path.suffix!r}; accepted: a folder of images, "
                         "'.jsonl' (captions.jsonl), '.txt' (one caption per line) or an image file")
    if isinstance(items, Sequence) and not isinstance(items, (bytes, bytearray)):
        if len(items) == 0:
            raise ValueError("items is empty; pass at least one caption or image")
        if kind is None:
            kind = "text" if all(isinstance(x, str) for x in items) else "image"
        return _records_from_list(items, kind)
    raise TypeError(f"items must be a path (folder, .jsonl, .txt) or a list of captions/images, "
                    f"got {type(items).__name__}")


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
        z = encoder.encode_image([load_image(p) for p in payloads])
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


def embed_items(encoder: Encoder, items: str | Path | Sequence[Any], out: str | Path,
                kind: str | None = None, batch_size: int = 64, chunk_size: int = 1024,
                extra_metadata: Mapping[str, Any] | pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
                progress: bool = True, dtype: str = "float16",
                on_chunk: Callable[[int, int], None] | None = None, skip_bad: bool = False) -> EmbeddingStore:
    """Embed items with a CLIP encoder into the store at `out`, in resumable chunks; returns the store.

    Every image file is checked before any work: an unreadable one is an error naming it (nothing is written),
    or with skip_bad=True it is left out and recorded in store.json under "skipped" (file and reason).

    items: an image folder, a captions.jsonl (ShapesWorld export; scene columns are carried), a .txt with
    one caption per line, or a list of captions / image paths / PIL images. Each chunk of `chunk_size` rows
    is saved atomically under out/.partial; a rerun of a killed call with the same arguments skips finished
    chunks and yields the same store bit for bit. A finished call rerun is a no-op. `on_chunk(i, n_chunks)`
    is called after chunk i is saved (for progress reporting and tests).
    """
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
    bad = _unreadable_images(records, progress)
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
    dim = int(encoder.embed_dim)

    out = Path(out)
    if (out / MANIFEST).exists():
        store = EmbeddingStore.open(out)
        store.check_model(encoder.model_id, encoder.spec)
        if store.dim != dim:
            raise ValueError(f"dim mismatch: the store at {out} holds {store.dim}-d vectors, the encoder "
                             f"{encoder.spec!r} makes {dim}-d ones; embed into a new store")
        if store.dtype != dtype:
            raise ValueError(f"dtype={dtype!r} but the store at {out} holds {store.dtype}; "
                             f"pass dtype={store.dtype!r} or embed into a new store")
    else:
        store = EmbeddingStore.create(out, encoder.spec, encoder.model_id, dim, dtype)

    key = _job_key(records, meta, encoder.model_id, dtype, batch_size, chunk_size)
    partial = out / PARTIAL_DIR
    if key in store._manifest.get("jobs", []):
        shutil.rmtree(partial, ignore_errors=True)
        return store
    clash = sorted(set(store.metadata["id"]).intersection(meta["id"]))
    if clash:
        raise ValueError(f"{len(clash)} ids are already in the store at {out}, e.g. {clash[:3]}, from an "
                         "earlier call with other items or settings; embed into another store")

    job_file = partial / "job.json"
    if partial.exists():
        old = json.loads(job_file.read_text()) if job_file.exists() else {}
        if old.get("key") != key:
            warnings.warn(f"discarding unfinished chunks in {partial}: they belong to another embed call "
                          "(other items or settings)", stacklevel=2)
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not job_file.exists():
        _write_json(job_file, {"key": key, "n_rows": len(records), "chunk_size": chunk_size})

    # chunks never straddle kinds, so every batch (and its floating-point result) is the same on each run
    chunks: list[tuple[str, list[int]]] = []
    for k in KINDS:
        idx = [i for i, r in enumerate(records) if r.kind == k]
        chunks += [(k, idx[s:s + chunk_size]) for s in range(0, len(idx), chunk_size)]

    from tqdm.auto import tqdm
    bar = tqdm(total=len(records), desc=f"embed -> {out.name}", unit="item", disable=not progress)
    try:
        for ci, (k, idx) in enumerate(chunks):
            path = _chunk_path(partial, ci)
            if path.exists() and _load_chunk(path, len(idx), dim, dtype) is not None:
                bar.update(len(idx))
                continue
            parts = []
            for s in range(0, len(idx), batch_size):
                batch = [records[i].payload for i in idx[s:s + batch_size]]
                z = _encode(encoder, k, batch)
                check_embeddings(f"encoder output ({k})", z, dim=dim)
                if len(z) != len(batch):
                    raise ValueError(f"encoder returned {len(z)} embeddings for {len(batch)} {k} inputs")
                parts.append(z.astype(dtype))
                bar.update(len(batch))
            _save_npy(path, np.concatenate(parts))
            if on_chunk is not None:
                on_chunk(ci, len(chunks))
    finally:
        bar.close()

    order = [i for _, idx in chunks for i in idx]
    blocks: Iterator[np.ndarray] = (np.load(_chunk_path(partial, ci), allow_pickle=False)
                                    for ci in range(len(chunks)))
    store._commit(blocks, len(records), meta.iloc[order].reset_index(drop=True), job=key, skipped=skipped)
    shutil.rmtree(partial, ignore_errors=True)
    return store


def _unreadable_images(records: Sequence[Record], progress: bool = False) -> list[dict[str, Any]]:
    """Image records whose file PIL cannot read (row, id, source, error); in-memory images are trusted."""
    from PIL import Image
    from tqdm.auto import tqdm
    bad = []
    rows = [i for i, r in enumerate(records) if r.kind == "image" and isinstance(r.payload, (str, Path))]
    for i in tqdm(rows, desc="checking images", unit="file", disable=not progress or len(rows) < 2000):
        r = records[i]
        try:
            with Image.open(r.payload) as im:
                im.verify()
        except Exception as e:  # UnidentifiedImageError, truncated data, bad CRC, unreadable file
            bad.append({"row": i, "id": r.id, "source": str(r.source), "error": type(e).__name__})
    return bad


def open_store(store: "EmbeddingStore | str | Path", what: str = "store") -> EmbeddingStore:
    """The one store loader: an EmbeddingStore as it is, or the store folder at a path (EmbeddingStore.open);
    `what` names the argument in the TypeError for anything else."""
    if isinstance(store, EmbeddingStore):
        return store
    if not isinstance(store, (str, Path)):
        raise TypeError(f"{what} must be an EmbeddingStore or a store folder, got {type(store).__name__}")
    return EmbeddingStore.open(store)
