"""Metrics against independent numpy/scipy references on fixed random data, and their limits."""
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

import analyses.metrics as M
from analyses.metrics import (clip_score, clip_score_per_pair, cmmd, frechet_distance, frechet_distance_from_stats,
                              metric_table, prdc)


def _data(n, d, seed, shift=0.0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_clip_score_closed_form():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    txt = np.array([[1.0, 1.0], [0.0, 3.0], [-1.0, 0.2]])  # cos = 1/sqrt2, 0, negative -> clipped to 0
    np.testing.assert_allclose(clip_score_per_pair(img, txt), [100 / np.sqrt(2), 0.0, 0.0], atol=1e-12)
    assert clip_score(img, txt) == pytest.approx(100 / np.sqrt(2) / 3, rel=1e-14)
    assert clip_score(torch.tensor(img), torch.tensor(txt)) == pytest.approx(100 / np.sqrt(2) / 3, rel=1e-14)


def test_clip_score_errors():
    with pytest.raises(ValueError, match="image_emb has 2 rows but text_emb has 3"):
        clip_score(np.ones((2, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="image_emb has dimension 4 but text_emb has 5"):
        clip_score(np.ones((2, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="text_emb has zero-norm rows \\[1\\]"):
        clip_score(np.ones((2, 4)), np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]))


def _cmmd_reference(x, y, sigma=10.0, scale=1000.0):
    """Reference: full kernel matrices with scipy cdist, as in google-research/cmmd (biased MMD)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma ** 2)).mean()  # noqa: E731
    return scale * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_cmmd_matches_reference_and_limits(monkeypatch):
    x, y = _data(300, 16, 0), _data(250, 16, 1, shift=0.3)
    ref = _cmmd_reference(x, y)
    assert cmmd(x, y) == pytest.approx(ref, rel=1e-9)
    assert cmmd(x, y, sigma=1.0, scale=1.0) == pytest.approx(_cmmd_reference(x, y, 1.0, 1.0), rel=1e-9)
    monkeypatch.setattr(M, "_BLOCK", 64)  # the blocked sum equals the one-shot sum
    assert cmmd(x, y) == pytest.approx(ref, rel=1e-9)
    assert cmmd(x, x.copy()) == 0.0
    assert cmmd(x, 5.0 * x) == pytest.approx(0.0, abs=1e-9)  # scale-free: embeddings are L2-normalised
    # the biased estimator is positive between two samples of one distribution, shrinking like 1/n
    small = cmmd(_data(20, 16, 2), _data(20, 16, 3))
    large = cmmd(_data(400, 16, 2), _data(400, 16, 3))
    assert small > 0 and large > 0 and small > 10 * large


def test_cmmd_errors():
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        cmmd(np.ones((3, 2)), np.ones((3, 2)), sigma=0)
    with pytest.raises(ValueError, match="x has dimension 2 but y has 3"):
        cmmd(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(TypeError, match="y must be a numpy array or torch tensor"):
        cmmd(np.ones((3, 2)), [[1.0, 2.0]])


def _fd_reference(x, y):
    """Reference: the pytorch-fid formula with scipy.linalg.sqrtm and the usual eps / imaginary handling."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_distance_matches_sqrtm_reference():
    x = _data(400, 12, 4) @ np.random.default_rng(5).normal(size=(12, 12))
    y = _data(300, 12, 6, shift=0.5)
    assert frechet_distance(x, y) == pytest.approx(_fd_reference(x, y), rel=1e-8)
    assert frechet_distance(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)) == \
        pytest.approx(_fd_reference(x, y), rel=1e-4)


def test_frechet_distance_limits():
    x = _data(200, 8, 7)
    assert frechet_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-9)
    delta = np.arange(8) / 4.0
    # shifted copy: equal covariances, so FD = |delta mu|^2 exactly
    assert frechet_distance(x, x + delta) == pytest.approx(delta @ delta, rel=1e-10)
    # singular covariances (n < dim) stay finite and non-negative
    assert frechet_distance(x[:5], x[:5] + delta) == pytest.approx(delta @ delta, rel=1e-8)


def test_frechet_distance_from_stats_gaussians_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # diagonal covariances commute
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(8).normal(size=(3, 3)))  # same in a rotated basis
    assert frechet_distance_from_stats(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T) == \
        pytest.approx(expected, rel=1e-10)


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match="x needs at least 2 rows, got 1"):
        frechet_distance(np.ones((1, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"sigma2 must be a covariance of shape \(2, 2\)"):
        frechet_distance_from_stats(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match=r"mu2 must be a vector of shape \(2,\)"):
        frechet_distance_from_stats(np.zeros(2), np.eye(2), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="sigma1 contains NaN"):
        frechet_distance_from_stats(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


def _prdc_reference(real, fake, k):
    """Reference: the official prdc package's formulas, with full cdist matrices and np.sort."""
    rr = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the point itself
    ff = np.sort(cdist(fake, fake), axis=1)[:, k]
    rf = cdist(real, fake)
    return {
        "precision": (rf < rr[:, None]).any(axis=0).mean(),
        "recall": (rf < ff[None, :]).any(axis=1).mean(),
        "density": (rf < rr[:, None]).sum(axis=0).mean() / k,
        "coverage": (rf.min(axis=1) < rr).mean(),
    }


def test_prdc_matches_reference(monkeypatch):
    real, fake = _data(300, 10, 9), _data(200, 10, 10, shift=0.4) * 1.2
    ref = _prdc_reference(real, fake, 5)
    out = prdc(real, fake, k=5)
    for key in ref:
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 0 < out["precision"] < 1 and 0 < out["coverage"] < 1
    monkeypatch.setattr(M, "_BLOCK", 37)
    assert prdc(real, fake, k=3) == pytest.approx(_prdc_reference(real, fake, 3), abs=1e-12)


def test_prdc_identical_sets():
    real = _data(150, 6, 11)
    out = prdc(real, real.copy(), k=5)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    # each point lies in its own ball plus those of the real points within their radii
    assert out["density"] == pytest.approx(_prdc_reference(real, real, 5)["density"], abs=1e-12)


def test_prdc_errors():
    with pytest.raises(ValueError, match="real needs at least 6 rows, got 5"):
        prdc(np.ones((5, 3)), np.ones((10, 3)), k=5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        prdc(np.ones((5, 3)), np.ones((10, 3)), k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        prdc(np.ones((5, 3)), np.ones((10, 3)), k=2.5)


def test_metric_table():
    real, fake = _data(120, 8, 12), _data(100, 8, 13, shift=0.2)
    text = _data(100, 8, 14)
    df = metric_table(real, fake, text_emb=text)
    assert isinstance(df, pd.DataFrame)
    assert df["metric"].tolist() == ["fd", "cmmd", "precision", "recall", "density", "coverage", "clip_score"]
    v = df.set_index("metric")["value"]
    assert v["fd"] == pytest.approx(frechet_distance(real, fake), rel=1e-12)
    assert v["cmmd"] == pytest.approx(cmmd(real, fake), rel=1e-12)
    assert v["coverage"] == prdc(real, fake)["coverage"]
    assert v["clip_score"] == pytest.approx(clip_score(fake, text), rel=1e-12)
    assert (df["n_real"] == 120).all() and (df["n_fake"] == 100).all()
    assert len(metric_table(real, fake)) == 6
