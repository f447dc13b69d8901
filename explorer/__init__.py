"""What a user touches: the Python facade, the command line and the embedding store."""
from explorer.api import (embed, export_shapes, list_models, load_encoder, neighbors, open_store,
                          query_vectors, register_encoder, unregister_encoder)
from explorer.analysis_api import interpolate, load_pipeline, metrics, pca_reconstructions, project, text_diff
from explorer.binding import compare_runs, run_suite
from explorer.evaluate import evaluate_family
from explorer.store import FORMAT_VERSION, EmbeddingStore, embed_items, resolve_items

__all__ = [
    "EmbeddingStore", "FORMAT_VERSION", "embed", "embed_items", "export_shapes", "list_models",
    "load_encoder", "neighbors", "open_store", "query_vectors", "register_encoder", "resolve_items",
    "unregister_encoder", "interpolate", "text_diff", "project", "pca_reconstructions", "metrics",
    "load_pipeline", "run_suite", "compare_runs", "evaluate_family",
]
