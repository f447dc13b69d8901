"""The store's on-disk format: a folder with store.json (the commit point), one memory-mapped vectors .npy and
one parquet metadata file per generation; appends publish atomically by replacing store.json."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from unclip_core.atomic import atomic_write, write_json
from unclip_core.checks import check_choice, check_embeddings, check_positive_int

from explorer.store.search import NEIGHBOR_BLOCK_ROWS, SearchMixin, _as_numpy

FORMAT_NAME = "unclip-explorer-store"
FORMAT_VERSION = 1
MANIFEST = "store.json"
PARTIAL_DIR = ".partial"
# distributed embedding: one store per rank, merged into the store and removed (explorer/store/distributed.py)
SHARDS_DIR = ".shards"
DTYPES = ("float16", "float32")
KINDS = ("image", "text")
INPUT_KINDS = ("image", "text", "both")
REQUIRED_COLUMNS = ("id", "kind", "source")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


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


def _vectors_file(store: Any) -> Path | None:
    m = getattr(store, "manifest", None)
    if isinstance(m, dict) and m.get("vectors_file"):
        return Path(store.path) / m["vectors_file"]
    return None


def iter_blocks(store: Any, rows: np.ndarray | None, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, float32 block) over the store's rows (or `rows`), each block read from a fresh memory map that
    is dropped afterwards, so resident memory stays at one block (a long-lived map keeps every page read resident).
    Stores without one vectors file (a clip-retrieval folder) are read through their own `vectors`."""
    n = len(store) if rows is None else len(rows)
    vfile = _vectors_file(store)
    for a in range(0, n, block_rows):
        b = min(a + block_rows, n)
        mm = np.load(vfile, mmap_mode="r", allow_pickle=False) if vfile is not None else store.vectors
        blk = mm[a:b] if rows is None else mm[rows[a:b]]
        out = np.array(blk, dtype=np.float32)
        del mm, blk
        yield a, out


class EmbeddingStore(SearchMixin):
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
        if path.exists() and any(p.name not in (PARTIAL_DIR, SHARDS_DIR) for p in path.iterdir()):
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
        self.__dict__.pop("_ann", None)  # a saved faiss index is stale now (load_index says so)
        live = {vectors_file, metadata_file}
        for p in self.path.iterdir():  # old generation, and files of a write that was killed mid-way
            stale_data = p.name.startswith(("vectors-", "metadata-")) and p.name not in live
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()
            if stale_data or stale_tmp:
                p.unlink(missing_ok=True)
