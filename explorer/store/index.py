"""Approximate nearest neighbours over a store with faiss (Johnson et al. 2019), saved beside the store.

`build_index(store, key=None)` trains and fills a faiss index of the store's L2-normalised vectors (inner product =
cosine), from a key in faiss' factory syntax (what autofaiss writes: "IVF1024,Flat", "IVF4096,PQ64", "HNSW32,Flat",
...), and saves it as STORE/index/faiss.index with index.json (key, nprobe / efSearch, and the store's fingerprint).
`load_index(store)` returns it when it is there and fresh; a store appended since (another fingerprint) is reported
as stale and the search falls back to exact. IVF indexes load memory-mapped (faiss' IO_FLAG_MMAP).

The default key: exact "Flat" below 10,000 rows; "IVF{nlist},Flat" above (nlist = 4 sqrt(n), searched with
nprobe = nlist / 16, >= 16), whose recall@10 the tests and benchmarks/index.py measure.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from explorer.store.format import iter_blocks
from unclip_core.atomic import atomic_write
from unclip_core.checks import check_positive_int

INDEX_DIR = "index"
INDEX_FILE = "faiss.index"
INDEX_META = "index.json"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ImportError("approximate neighbours need faiss: pip install faiss-cpu (setup.sh installs it)") from None
    return faiss


def fingerprint(store: Any) -> str:
    """What identifies the store's rows: its count, dim and live vectors file (a new generation per append)."""
    m = getattr(store, "manifest", {}) or {}
    text = json.dumps([int(len(store)), int(store.dim), m.get("vectors_file"), m.get("generation")])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_key(n: int) -> str:
    return "Flat" if n < 10_000 else f"IVF{max(16, int(4 * math.sqrt(n)))},Flat"


def _unit(block: np.ndarray) -> np.ndarray:
    x = np.asarray(block, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build_index(store: Any, key: str | None = None, *, train_rows: int = 200_000, block_rows: int = 65_536,
                seed: int = 0, progress: bool = False) -> Path:
    """Train (on up to `train_rows` rows drawn with `seed`) and fill a faiss index of the store; save it beside the
    store atomically; returns the index folder."""
    faiss = _faiss()
    n, d = len(store), store.dim
    if n == 0:
        raise ValueError(f"the store at {store.path} is empty; embed items into it first")
    key = key or default_key(n)
    try:
        index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"key={key!r} is not a faiss factory key ({str(e).strip().splitlines()[-1]}); e.g. "
                         "'IVF1024,Flat', 'IVF4096,PQ64', 'HNSW32,Flat'") from None
    if hasattr(index, "hnsw"):
        index.hnsw.efConstruction = 100  # faiss' 40 left recall@10 at 0.75 on clustered 32-d data (tests)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, train_rows), replace=False))
        index.train(_unit(store.vectors[rows]))
    from tqdm.auto import tqdm
    for _, block in tqdm(iter_blocks(store, None, block_rows), total=-(-n // block_rows), desc="index",
                         disable=not progress):
        index.add(_unit(block))
    params = _search_params(index)
    folder = Path(store.path) / INDEX_DIR
    folder.mkdir(exist_ok=True)
    atomic_write(folder / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    meta = {"key": key, "n": n, "dim": d, "fingerprint": fingerprint(store), "params": params,
            "faiss_version": faiss.__version__}
    atomic_write(folder / INDEX_META, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return folder


def _search_params(index: Any) -> dict[str, int]:
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return {"nprobe": max(16, ivf.nlist // 16)}
    if hasattr(index, "hnsw"):
        return {"efSearch": 256}
    return {}


class LoadedIndex:
    """A fresh saved index with its search parameters set; search(q, k) -> (scores, rows) as the exact search."""

    def __init__(self, index: Any, meta: dict[str, Any]) -> None:
        self.index, self.meta = index, meta
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and "nprobe" in meta["params"]:
            ivf.nprobe = int(meta["params"]["nprobe"])
        if hasattr(index, "hnsw") and "efSearch" in meta["params"]:
            index.hnsw.efSearch = int(meta["params"]["efSearch"])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(_unit(q), check_positive_int("k", k))
        return scores.astype(np.float32), rows.astype(np.int64)


def load_index(store: Any) -> LoadedIndex | None:
    """The store's saved index when it is fresh; None when there is none; a stale one warns and is not used."""
    folder = Path(store.path) / INDEX_DIR
    if not (folder / INDEX_META).is_file():
        return None
    meta = json.loads((folder / INDEX_META).read_text())
    if meta.get("fingerprint") != fingerprint(store):
        warnings.warn(f"the faiss index of {store.path} is stale: built for {meta.get('n')} rows, the store has "
                      f"{len(store)} now (appended since); searching exactly. Rebuild it with `unclip-explorer index "
                      f"build {store.path}`", RuntimeWarning, stacklevel=3)
        return None
    faiss = _faiss()
    flags = faiss.IO_FLAG_MMAP if meta["key"].startswith("IVF") else 0
    return LoadedIndex(faiss.read_index(str(folder / INDEX_FILE), flags), meta)


__all__ = ["build_index", "default_key", "fingerprint", "load_index"]
