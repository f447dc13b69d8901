"""Distribution and alignment metrics in CLIP space: CLIP score, CMMD, Frechet distance, PRDC.

Inputs are embedding batches (n, dim), numpy or torch; arithmetic runs in float64 on the CPU and in
row blocks, so memory stays O(block * n) rather than O(n^2).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unclip_core.checks import check_embeddings, check_positive_int, check_same_dim

Array = np.ndarray | torch.Tensor

_BLOCK = 2048  # rows per block of pairwise computations: 2048 x 50k float64 = 800 MB at most


def _f64(name: str, z: Array, min_rows: int = 1) -> np.ndarray:
    """Checked (n, dim) float64 numpy copy of an embedding batch."""
    check_embeddings(name, z)
    if z.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {z.shape[0]}")
    if isinstance(z, torch.Tensor):
        return z.detach().cpu().double().numpy()
    return np.asarray(z, dtype=np.float64)


def _unit_rows(name: str, z: np.ndarray) -> np.ndarray:
    """L2-normalise rows; ValueError for zero rows."""
    n = np.linalg.norm(z, axis=1, keepdims=True)
    if (n == 0).any():
        raise ValueError(f"{name} has zero-norm rows {np.flatnonzero(n[:, 0] == 0)[:10].tolist()}; "
                         "they have no direction: drop them")
    return z / n


def clip_score_per_pair(image_emb: Array, text_emb: Array) -> np.ndarray:
    """CLIP score per pair, max(100 cos(E_I, E_C), 0) (Hessel et al. 2021, w = 100 as in torchmetrics); (n,)."""
    x = _f64("image_emb", image_emb)
    y = _f64("text_emb", text_emb)
    check_same_dim("image_emb", x, "text_emb", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"image_emb has {x.shape[0]} rows but text_emb has {y.shape[0]}; CLIP score "
                         "compares row i of one with row i of the other: pass aligned pairs")
    cos = (_unit_rows("image_emb", x) * _unit_rows("text_emb", y)).sum(axis=1)
    return np.maximum(100.0 * cos, 0.0)


def clip_score(image_emb: Array, text_emb: Array) -> float:
    """Mean CLIP score over aligned pairs (Hessel et al. 2021, w = 100): mean of max(100 cos, 0)."""
    return float(clip_score_per_pair(image_emb, text_emb).mean())


def _mean_gaussian_kernel(x: np.ndarray, y: np.ndarray, gamma: float) -> float:
    """mean_{i,j} exp(-gamma |x_i - y_j|^2), in row blocks of x."""
    y_sq = (y * y).sum(axis=1)
    total = 0.0
    for s in range(0, x.shape[0], _BLOCK):
        xb = x[s:s + _BLOCK]
        d2 = (xb * xb).sum(axis=1)[:, None] + y_sq[None, :] - 2.0 * xb @ y.T
        total += np.exp(-gamma * np.maximum(d2, 0.0)).sum()
    return total / (x.shape[0] * y.shape[0])


def cmmd(x: Array, y: Array, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD (Jayasumana et al. 2024): scale * MMD^2 with kernel exp(-|a-b|^2 / (2 sigma^2)) on unit embeddings.

    The biased (V-statistic) estimator of the reference code: the k(x_i, x_i) = 1 diagonal terms are kept,
    so the value is >= 0 and exactly 0 for identical sets, but exceeds the unbiased estimate by about
    scale * ((1 - mean_{i!=j} k(x_i, x_j)) / n + (1 - mean_{i!=j} k(y_i, y_j)) / m): compare only values
    computed at the same, large sample sizes.
    x: (n, dim), y: (m, dim).
    """
    xf = _unit_rows("x", _f64("x", x))
    yf = _unit_rows("y", _f64("y", y))
    check_same_dim("x", xf, "y", yf)
    for name, v in (("sigma", sigma), ("scale", scale)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    gamma = 1.0 / (2.0 * float(sigma) ** 2)
    k_xx = _mean_gaussian_kernel(xf, xf, gamma)
    k_yy = _mean_gaussian_kernel(yf, yf, gamma)
    k_xy = _mean_gaussian_kernel(xf, yf, gamma)
    return float(scale) * max(k_xx + k_yy - 2.0 * k_xy, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix by eigendecomposition (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                                sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; FID, Heusel et al. 2017).

    |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), with Tr (S1 S2)^{1/2} = sum sqrt(eig(S1^{1/2} S2 S1^{1/2})):
    the symmetric PSD form, so no complex sqrtm output or eps jitter is needed.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[-1] if mu1.ndim == 1 else -1
    for name, m in (("mu1", mu1), ("mu2", mu2)):
        if m.ndim != 1 or m.shape[0] != d:
            raise ValueError(f"{name} must be a vector of shape ({d},), got shape {m.shape}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be a covariance of shape ({d}, {d}), got shape {s.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2.0), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def frechet_distance(x: Array, y: Array) -> float:
    """Frechet distance in CLIP space (FD of Heusel et al. 2017 on CLIP embeddings, as given): x (n, d), y (m, d).

    Uses the sample mean and the unbiased (ddof=1) covariance of each set; needs n, m >= 2.
    """
    xf, yf = _f64("x", x, min_rows=2), _f64("y", y, min_rows=2)
    check_same_dim("x", xf, "y", yf)
    return frechet_distance_from_stats(xf.mean(axis=0), np.cov(xf, rowvar=False),
                                       yf.mean(axis=0), np.cov(yf, rowvar=False))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)), clipped at 0."""
    d2 = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def _kth_radius_sq(z: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (self excluded)."""
    out = np.empty(z.shape[0])
    for s in range(0, z.shape[0], _BLOCK):
        d2 = _sq_dists(z[s:s + _BLOCK], z)
        d2[np.arange(d2.shape[0]), np.arange(s, s + d2.shape[0])] = -1.0  # self sorts first
        out[s:s + _BLOCK] = np.partition(d2, k, axis=1)[:, k]
    return out


def prdc(real: Array, fake: Array, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020), Euclidean k-NN balls; self excluded.

    real: (n, dim), fake: (m, dim), both with more than k rows. Returns a dict with the four values;
    precision / recall / coverage lie in [0, 1], density is unbounded (about 1 when fake matches real).
    """
    k = check_positive_int("k", k)
    r = _f64("real", real, min_rows=k + 1)
    f = _f64("fake", fake, min_rows=k + 1)
    check_same_dim("real", r, "fake", f)
    rad_r = _kth_radius_sq(r, k)  # (n,)
    rad_f = _kth_radius_sq(f, k)  # (m,)
    in_real_ball = np.zeros(f.shape[0])  # per fake: number of real balls containing it
    recalled = np.zeros(r.shape[0], dtype=bool)
    nearest_fake = np.full(r.shape[0], np.inf)
    for s in range(0, f.shape[0], _BLOCK):
        d2 = _sq_dists(r, f[s:s + _BLOCK])  # (n, block)
        inside = d2 < rad_r[:, None]
        in_real_ball[s:s + _BLOCK] = inside.sum(axis=0)
        recalled |= (d2 < rad_f[None, s:s + _BLOCK]).any(axis=1)
        nearest_fake = np.minimum(nearest_fake, d2.min(axis=1))
    return {
        "precision": float((in_real_ball > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(in_real_ball.mean() / k),
        "coverage": float((nearest_fake < rad_r).mean()),
    }


def check_metric_rows(real: Array, fake: Array, k: int = 5, names: tuple[str, str] = ("real", "fake")) -> None:
    """Both sides need k + 1 rows (PRDC's k nearest neighbours within a set) and 2 (FD's covariance)."""
    need = max(2, int(k) + 1)
    for name, z in zip(names, (real, fake)):
        n = int(z.shape[0])
        if n < need:
            raise ValueError(f"{name} has {n} embedding row(s); the metric table needs at least {need} per side "
                             f"(FD estimates a covariance, PRDC uses each point's k={k} nearest neighbours): "
                             "embed more items, or lower k (-k)")


def metric_table(real: Array, fake: Array, text_emb: Array | None = None, k: int = 5,
                 sigma: float = 10.0, scale: float = 1000.0) -> pd.DataFrame:
    """All distribution metrics of fake against real in one tidy frame: columns metric, value.

    Rows: fd, cmmd, precision, recall, density, coverage, and clip_score (fake vs text_emb) when
    text_emb (aligned with fake) is given.
    """
    check_metric_rows(real, fake, k)
    rows = [("fd", frechet_distance(real, fake)), ("cmmd", cmmd(real, fake, sigma=sigma, scale=scale))]
    rows += list(prdc(real, fake, k=k).items())
    if text_emb is not None:
        rows.append(("clip_score", clip_score(fake, text_emb)))
    df = pd.DataFrame(rows, columns=["metric", "value"])
    df["n_real"], df["n_fake"] = int(real.shape[0]), int(fake.shape[0])
    return df
