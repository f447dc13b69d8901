"""Embedding store: CLIP vectors on disk (one memory-mapped .npy) with parquet metadata and a JSON manifest.

A store is a folder. `store.json` is the commit point: it names the live vectors file and metadata file,
so replacing it (temp file, then rename) publishes an append atomically; a reader never sees a half write.
`embed_items` fills a store in chunks that survive a kill and are resumed by rerunning the same call.

Parts: format.py (the folder, store.json, EmbeddingStore), search.py (exact cosine search), inputs.py (what can be
embedded), jobs.py (resumable embedding),
distributed.py (ranks embed shards that merge into one store), index.py (faiss), clip_retrieval.py (interop).
"""
from __future__ import annotations

from pathlib import Path

from unclip_core.atomic import atomic_write
from explorer.store.format import (DTYPES, FORMAT_NAME, FORMAT_VERSION, IMAGE_SUFFIXES, INPUT_KINDS, KINDS,
                                   MANIFEST, PARTIAL_DIR, REQUIRED_COLUMNS, SHARDS_DIR, EmbeddingStore,
                                   check_rows)
from explorer.store.clip_retrieval import ClipRetrievalStore, export_clip_retrieval, is_clip_retrieval_folder
from explorer.store.inputs import Encoder, Record, flatten, resolve_items
from explorer.store.jobs import embed_items
from explorer.store.search import NEIGHBOR_BLOCK_ROWS


def open_store(store: "EmbeddingStore | ClipRetrievalStore | str | Path", what: str = "store"
               ) -> "EmbeddingStore | ClipRetrievalStore":
    """The one store loader: a store as it is, a store folder of ours (EmbeddingStore.open), or a clip-retrieval
    output folder opened in place, read-only, for its image embeddings (ClipRetrievalStore; open it yourself for
    its text embeddings or to name its model); `what` names the argument in the TypeError for anything else."""
    if isinstance(store, (EmbeddingStore, ClipRetrievalStore)):
        return store
    if not isinstance(store, (str, Path)):
        raise TypeError(f"{what} must be an EmbeddingStore or a store folder, got {type(store).__name__}")
    if not (Path(store) / MANIFEST).is_file() and is_clip_retrieval_folder(store):
        return ClipRetrievalStore(store, "image")
    return EmbeddingStore.open(store)


__all__ = ["DTYPES", "FORMAT_NAME", "FORMAT_VERSION", "IMAGE_SUFFIXES", "INPUT_KINDS", "KINDS", "MANIFEST",
           "NEIGHBOR_BLOCK_ROWS", "PARTIAL_DIR", "REQUIRED_COLUMNS", "SHARDS_DIR", "ClipRetrievalStore", "EmbeddingStore", "Encoder",
           "Record", "export_clip_retrieval", "is_clip_retrieval_folder",
           "atomic_write", "check_rows", "embed_items", "flatten", "open_store", "resolve_items"]
