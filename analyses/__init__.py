"""Pure analyses over CLIP embeddings: arrays in, numbers, tidy DataFrames and plotly figures out."""
from analyses.latent_math import (normalize, project_onto, remove_direction, slerp, text_diff_direction,
                                  text_diff_frame, text_diff_path, weighted_sum)
from analyses.metrics import (clip_score, clip_score_per_pair, cmmd, frechet_distance,
                              frechet_distance_from_stats, metric_table, prdc)
from analyses.interpolation import InterpolationResult, interpolate, interpolation_grid
from analyses.recon import pca_reconstructions
from analyses.text_diff import text_diff
from analyses.variations import NoiseLevelSweepResult, noise_level_sweep
from analyses.projection import (PAPER_KS, Projection, explained_variance_figure, fit_projection, pca_ks,
                                 pca_truncate, projection_frame, scatter, warm_umap)

__all__ = [
    "normalize", "slerp", "weighted_sum", "project_onto", "remove_direction", "text_diff_direction",
    "text_diff_path", "text_diff_frame",
    "clip_score", "clip_score_per_pair", "cmmd", "frechet_distance", "frechet_distance_from_stats", "prdc",
    "metric_table",
    "Projection", "fit_projection", "projection_frame", "scatter", "explained_variance_figure",
    "pca_truncate", "pca_ks", "PAPER_KS", "warm_umap",
    "interpolate", "interpolation_grid", "InterpolationResult", "text_diff", "pca_reconstructions",
    "noise_level_sweep", "NoiseLevelSweepResult",
]
# variable-binding suites and probes: `from analyses import binding` (kept out of this namespace: many names)
