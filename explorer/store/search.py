"""Exact cosine search over a store's memory-mapped vectors (blocked matmul; bounded memory)."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from unclip_core.checks import check_embeddings, check_positive_int

NEIGHBOR_BLOCK_ROWS = 16384


def _as_numpy(z: Any) -> np.ndarray:
    """Encoder output (torch tensor or array) -> float32 numpy array, without importing torch here."""
    if hasattr(z, "detach"):
        z = z.detach().cpu().float().numpy()
    return np.asarray(z)


class SearchMixin:
    """search / neighbors of EmbeddingStore: needs .vectors, .count, .dim, .metadata, .path and _inv_norm."""

    _inv_norm: np.ndarray | None

    # -- nearest neighbours -------------------------------------------------------------------------
    def ann_index(self):  # noqa: ANN201 (explorer.store.index.LoadedIndex | None)
        """The store's saved faiss index when fresh (loaded once per store object), else None."""
        if not hasattr(self, "_ann"):
            from explorer.store.index import load_index
            self._ann = load_index(self)
        return self._ann

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
               block_rows: int = NEIGHBOR_BLOCK_ROWS, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine similarity: (scores (q, k), rows (q, k)).

        exact=None uses the store's faiss index when one is saved and fresh (explorer.store.index; a stale one
        warns), else the exact search; True always the exact one: a blocked matmul over the memmap, ties broken by
        the lower row. k larger than the store returns every row.
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
        if not exact:
            ann = self.ann_index()
            if ann is not None:
                return ann.search(q, k)
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

    def neighbors(self, query_vectors: np.ndarray, k: int = 10, *, exact: bool | None = None) -> pd.DataFrame:
        """Cosine nearest neighbours as a tidy DataFrame: query, rank, score, row, id, kind, source (exact: as
        `search`; the faiss index when one is saved and fresh)."""
        scores, rows = self.search(query_vectors, k=k, exact=exact)
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
