"""PCA-truncated reconstructions of DALL·E 2 (Ramesh et al. 2022, sec. 5.1, fig. 7): decode z_i kept to k PCs.

A PCA is fitted on a collection of image embeddings Z_fit; each image's z_i is projected onto the first k
principal components and back (analyses.projection.pca_truncate, renormalised), then decoded with one
fixed x_T per image, so a row shows what k dimensions of CLIP space keep of that image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from analyses._inversion import frame_sampling
from analyses._pipe import as_image, check_pipe, decode, encode_images, generator, noise, sampling_of, unit_rows
from unclip_core.sampling import SamplingConfig
from analyses.projection import PAPER_KS, fit_projection, pca_truncate
from analyses.tiling import make_grid
from unclip_core.checks import check_embeddings, check_positive_int

Judge = Callable[[Image.Image], Mapping[str, float]]
FRAME_COLUMNS = ["image", "k", "explained_variance", "z_cos", "sim_original"]


@dataclass
class PCAReconResult:
    """The grid (rows = images; columns = original, then one per k), the reconstructions and their numbers.

    frame: one row per (image, k): image (index), k, explained_variance (fraction of Z_fit's variance in the
    first k PCs; 1 at k = dim), z_cos (cosine of the truncated z_i to z_i), sim_original (CLIP cosine of the
    reconstruction to the original image), then judge_<key> columns when a judge is given.
    """

    image: Image.Image
    rows: list[list[Image.Image]]
    frame: pd.DataFrame
    ks: list[int]
    settings: dict[str, Any] = field(default_factory=dict)


def default_ks(dim: int, n_components: int) -> list[int]:
    """The paper's k list (20 ... 320) below min(dim, n_components), then dim; powers of two for small PCAs."""
    cap = min(dim, n_components + 1)
    ks = [k for k in PAPER_KS if k < cap]
    if len(ks) < 3:  # tiny embeddings or few fit rows: 1, 2, 4, ... below the cap
        ks = [2**j for j in range(int(np.log2(max(cap - 1, 1))) + 1) if 2**j < cap]
    return ks + [dim]


def check_ks(ks: Sequence[int], dim: int, n_components: int) -> list[int]:
    """Sorted unique ks, each 1 <= k <= n_components or k == dim, else ValueError."""
    if isinstance(ks, (str, bytes, int)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty list of ints, e.g. [20, 40, 80], got {ks!r}")
    out = sorted({check_positive_int("k", k) for k in ks})
    for k in out:
        if k > dim:
            raise ValueError(f"k={k} exceeds the embedding dimension {dim}; use 1 <= k <= {dim}")
        if k > n_components and k != dim:
            raise ValueError(f"k={k} exceeds the {n_components} principal components a PCA of Z_fit can have "
                             f"(min(rows, dim)); pass more rows in Z_fit, or k <= {n_components} (or k = {dim}, "
                             "the untruncated z_i)")
    return out


def _judge_scores(judge: Judge, image: Image.Image) -> dict[str, float]:
    scores = judge(image)
    if not isinstance(scores, Mapping):
        raise TypeError(f"judge must return a dict of scores {{name: number}}, got {type(scores).__name__}")
    out = {}
    for key, value in scores.items():
        try:
            out[f"judge_{key}"] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"judge returned {key!r}: {value!r}; scores must be numbers") from None
    return out


def pca_reconstructions(pipe: Any, images: Sequence[Any], Z_fit: np.ndarray | torch.Tensor,
                        ks: Sequence[int] | None = None, *, seed: int | torch.Generator = 0,
                        sampling: SamplingConfig | None = None, judge: Judge | None = None,
                        upsample: bool | int | None = None) -> PCAReconResult:
    """PCA reconstructions (Ramesh et al. 2022, fig. 7): decode each image's z_i truncated to k PCs of Z_fit.

    images: image-likes (n_images). Z_fit: (n_fit, dim) image embeddings from the pipeline's CLIP model
    (n_fit >= 2). ks: default `default_ks`; k = dim decodes the untruncated z_i. judge: optional callable
    image -> {name: score} (e.g. a ShapesWorld read-out), added as judge_<name> columns. sampling (None:
    pipe.sampling): the decoder's steps and guidance; every reconstruction is DDIM at eta 0 from one x_T per
    image, so the k columns of an image differ only through z_i.
    """
    check_pipe(pipe)
    if isinstance(images, (str, bytes, Image.Image)) or not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a non-empty list of images (PIL images or paths), "
                         f"got {type(images).__name__}")
    dim = int(pipe.decoder.config.clip_dim)
    check_embeddings("Z_fit", Z_fit, dim=dim)
    if Z_fit.shape[0] < 2:
        raise ValueError(f"Z_fit needs at least 2 rows to fit a PCA, got {Z_fit.shape[0]}")
    if judge is not None and not callable(judge):
        raise TypeError(f"judge must be a callable image -> dict of scores, got {type(judge).__name__}")
    frames_sc = frame_sampling(sampling_of(pipe, sampling), "fixed")
    g, seed_int = generator(seed)
    pics = [as_image(f"images[{i}]", im) for i, im in enumerate(images)]

    proj = fit_projection(Z_fit, "pca", n_components=min(Z_fit.shape[0], dim), seed=0)
    n_comp = proj.n_components
    ks = default_ks(dim, n_comp) if ks is None else check_ks(ks, dim, n_comp)
    cum = np.concatenate([[0.0], np.cumsum(proj.explained_variance_ratio_)])

    z_i = torch.as_tensor(encode_images(pipe, pics))  # (n_images, dim) float64
    z_k = torch.stack([z_i if k == dim else pca_truncate(z_i, proj, k, renormalize=True) for k in ks], dim=1)
    n_img, n_k = len(pics), len(ks)
    x_T = noise(pipe, n_img, g)  # one x_T per image, shared by its k columns
    x_T = x_T.repeat_interleave(n_k, dim=0)
    recons, _ = decode(pipe, z_k.reshape(n_img * n_k, dim).float(), x_T, sampling=frames_sc, upsample=upsample, g=g)
    emb = encode_images(pipe, recons).reshape(n_img, n_k, -1)
    zi = z_i.numpy()
    zk = unit_rows(z_k.reshape(n_img * n_k, dim)).reshape(n_img, n_k, dim)

    records, rows = [], []
    for i in range(n_img):
        row = [pics[i]]
        for j, k in enumerate(ks):
            im = recons[i * n_k + j]
            row.append(im)
            rec = {"image": i, "k": k, "explained_variance": 1.0 if k == dim else float(min(cum[k], 1.0)),
                   "z_cos": float(zk[i, j] @ zi[i]), "sim_original": float(emb[i, j] @ zi[i])}
            if judge is not None:
                rec.update(_judge_scores(judge, im))
            records.append(rec)
        rows.append(row)
    frame = pd.DataFrame(records)
    labels = [Path(x).name if isinstance(x, (str, Path)) else f"image {i}" for i, x in enumerate(images)]
    grid = make_grid(rows, labels, ["original"] + [f"k={k}" for k in ks],
                     cell_size=max(64, max(im.size[0] for im in recons)))
    settings = {"analysis": "pca_reconstructions", "ks": ks, "dim": dim, "n_fit": int(Z_fit.shape[0]),
                "n_components": n_comp, "n_images": n_img, "seed": seed_int,
                "guidance": frames_sc.decoder_guidance, "upsample": upsample, "sampling": frames_sc.to_dict(),
                "judge": None if judge is None else getattr(judge, "__name__", type(judge).__name__)}
    return PCAReconResult(grid, rows, frame, ks, settings)
