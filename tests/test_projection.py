"""Projections: PCA identities against sklearn, truncation, frames, figures, the UMAP cache."""
import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from sklearn.decomposition import PCA

from analyses.projection import (PAPER_KS, Projection, explained_variance_figure, fit_projection, pca_ks,
                                 pca_truncate, projection_frame, scatter)


def _clusters(n_per, d, seed, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:3] * 5.0
    X = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    return X.astype(np.float32), np.repeat(np.arange(3), n_per)


def _anisotropic(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.linspace(3.0, 0.1, d) + np.linspace(-1, 1, d)


@pytest.mark.parametrize("method, kw", [("pca", {}), ("pca-randomized", {}),
                                        ("pca-incremental", {"batch_size": 200})])  # one batch: exact
def test_pca_methods_transform_training_points_equals_embedding(method, kw):
    X = _anisotropic(200, 12, 0)
    proj = fit_projection(X, method=method, n_components=3, seed=0, **kw)
    assert isinstance(proj, Projection) and proj.embedding_.shape == (200, 3)
    np.testing.assert_allclose(proj.transform(X), proj.embedding_, atol=1e-10)
    ref = PCA(n_components=3).fit(X)
    np.testing.assert_allclose(proj.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(np.abs(proj.embedding_), np.abs(ref.transform(X)), atol=1e-8)


def test_pca_full_rank_explained_variance_sums_to_one_and_float32_kept():
    X = _anisotropic(100, 8, 1).astype(np.float32)
    proj = fit_projection(torch.from_numpy(X), n_components=8)
    assert proj.embedding_.dtype == np.float32
    assert proj.explained_variance_ratio_.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(proj.explained_variance_ratio_) <= 0)


def test_pca_truncate_identity_at_full_rank_and_matches_sklearn():
    X = _anisotropic(150, 10, 2)
    full = fit_projection(X, n_components=10)
    np.testing.assert_allclose(pca_truncate(X, full, 10), X, atol=1e-12)
    pca4 = PCA(n_components=4).fit(X)
    expected = pca4.inverse_transform(pca4.transform(X))
    np.testing.assert_allclose(pca_truncate(X, full, 4), expected, atol=1e-10)
    np.testing.assert_allclose(pca_truncate(X, pca4, 4), expected, atol=1e-12)
    np.testing.assert_allclose(pca_truncate(X, (pca4.components_, pca4.mean_), 4), expected, atol=1e-12)
    # the mean is kept: truncating to k=1 leaves the mean of the data unchanged
    np.testing.assert_allclose(pca_truncate(X, full, 1).mean(0), X.mean(0), atol=1e-12)
    out = pca_truncate(torch.tensor(X, dtype=torch.float32), full, 4, renormalize=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out.numpy(), expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)


def test_pca_truncate_errors():
    X = _anisotropic(50, 6, 3)
    p3 = fit_projection(X, n_components=3)
    with pytest.raises(ValueError, match="k=7 exceeds the embedding dimension 6"):
        pca_truncate(X, fit_projection(X, n_components=6), 7)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        pca_truncate(X, p3, 0)
    with pytest.raises(ValueError, match="the PCA has only 3 components; refit with n_components >= 4"):
        pca_truncate(X, p3, 4)
    with pytest.raises(ValueError, match="fitted on dimension 6 but Z has dimension 5"):
        pca_truncate(X[:, :5], p3, 2)
    with pytest.raises(TypeError, match="pca_or_components must be a PCA Projection"):
        pca_truncate(X, np.eye(6), 2)
    with pytest.raises(ValueError, match="whiten=True"):
        pca_truncate(X, PCA(3, whiten=True).fit(X), 2)


def test_pca_ks():
    assert PAPER_KS == (20, 30, 40, 80, 120, 160, 200, 320)
    assert pca_ks(1024) == [20, 30, 40, 80, 120, 160, 200, 320, 1024]
    assert pca_ks(512, include_full=False) == [20, 30, 40, 80, 120, 160, 200, 320]
    assert pca_ks(64) == [20, 30, 40, 64]
    assert pca_ks(320) == [20, 30, 40, 80, 120, 160, 200, 320]
    with pytest.raises(ValueError, match="dim must be >= 1"):
        pca_ks(0)


def test_fit_projection_errors():
    X = _anisotropic(20, 5, 4)
    with pytest.raises(ValueError, match="method='svd' is not known; accepted: 'pca', 'pca-randomized'"):
        fit_projection(X, method="svd")
    with pytest.raises(ValueError, match=r"n_components=6 exceeds min\(n_samples, dim\) = min\(20, 5\)"):
        fit_projection(X, n_components=6)
    with pytest.raises(ValueError, match="'n_neighbours' is not a parameter of PCA.*accepted: .*svd_solver"):
        fit_projection(X, n_neighbours=5)
    with pytest.raises(ValueError, match="pass 'random_state' to fit_projection as seed"):
        fit_projection(X, method="pca-randomized", random_state=1)
    with pytest.raises(TypeError, match="seed must be an int or None"):
        fit_projection(X, seed=0.5)
    with pytest.raises(ValueError, match="contains NaN"):
        fit_projection(np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="needs more than 4 rows for method='tsne', got 4"):
        fit_projection(X[:4], method="tsne", n_components=3)


def test_tsne_has_no_transform():
    X, _ = _clusters(10, 4, 5)
    proj = fit_projection(X, method="tsne", seed=0, max_iter=250)
    assert proj.embedding_.shape == (30, 2) and proj.explained_variance_ratio_ is None
    with pytest.raises(ValueError, match="t-SNE only embeds the rows it was fitted on"):
        proj.transform(X)


def test_pca_cache_roundtrip(tmp_path):
    X = _anisotropic(60, 5, 6)
    a = fit_projection(X, n_components=2, cache_dir=tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[0].startswith("pca-")
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["json", "npz"]
    b = fit_projection(X, n_components=2, cache_dir=tmp_path)
    assert b.from_cache and not a.from_cache
    assert np.array_equal(a.embedding_, b.embedding_)
    assert np.array_equal(a.explained_variance_ratio_, b.explained_variance_ratio_)
    new = X[:7] + 0.5
    assert np.array_equal(b.transform(new), a.transform(new))  # the estimator itself is restored, exactly
    fit_projection(X, n_components=3, cache_dir=tmp_path)  # other params, other key
    fit_projection(X + 1e-3, n_components=2, cache_dir=tmp_path)  # other data, other key
    assert len(os.listdir(tmp_path)) == 6 and not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
    npz = next(f for f in files if f.endswith(".npz"))
    (tmp_path / npz).write_bytes(b"truncated")  # a broken cache file is refitted and overwritten
    c = fit_projection(X, n_components=2, cache_dir=tmp_path)
    assert not c.from_cache and np.array_equal(c.embedding_, a.embedding_)
    assert fit_projection(X, n_components=2, cache_dir=tmp_path).from_cache


def test_projection_cache_never_unpickles(tmp_path):
    """An npz holding a pickled object array (code can ride in pickles) is treated as a broken entry and refitted."""
    X = _anisotropic(40, 4, 3)
    fit_projection(X, n_components=2, cache_dir=tmp_path)
    npz = next(tmp_path.glob("*.npz"))
    np.savez(npz, embedding_=np.array([object()], dtype=object))
    with open(npz, "wb") as fh:
        np.savez(fh, embedding_=np.array([{"a": 1}], dtype=object), explained_variance_ratio_=np.zeros(2))
    c = fit_projection(X, n_components=2, cache_dir=tmp_path)
    assert not c.from_cache and c.embedding_.dtype != object


def test_projection_frame_and_scatter():
    X, labels = _clusters(20, 5, 7)
    proj = fit_projection(X, n_components=3)
    meta = pd.DataFrame({"label": labels.astype(str), "score": np.linspace(0, 1, 60)}, index=np.arange(60) + 100)
    df = projection_frame(proj, meta)
    assert list(df.columns) == ["x", "y", "z", "label", "score"]
    np.testing.assert_array_equal(df[["x", "y", "z"]].to_numpy(), proj.embedding_)
    assert df["label"].tolist() == labels.astype(str).tolist()  # joined by row, not by index
    assert list(projection_frame(np.zeros((4, 5), np.float32)).columns) == ["x", "y", "z", "c4", "c5"]

    fig = scatter(df, color="label", hover=["score"])
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["scatter"] * 3 and [t.name for t in fig.data] == ["0", "1", "2"]
    assert sum(len(t.x) for t in fig.data) == 60
    cont = scatter(df, color="score")
    assert len(cont.data) == 1
    np.testing.assert_allclose(cont.data[0].marker.color, df["score"])
    big = pd.DataFrame({"x": np.arange(6000.0), "y": np.zeros(6000), "flag": np.arange(6000) % 2 == 0})
    gl = scatter(big, color="flag")
    assert {t.type for t in gl.data} == {"scattergl"} and len(gl.data) == 2


def test_projection_frame_and_scatter_errors():
    df = projection_frame(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="metadata has 2 rows but the projection has 3"):
        projection_frame(np.zeros((3, 2), np.float32), {"a": [1, 2]})
    with pytest.raises(ValueError, match=r"metadata columns \['x'\] clash"):
        projection_frame(np.zeros((3, 2), np.float32), {"x": [1, 2, 3]})
    with pytest.raises(TypeError, match="metadata must be a pandas DataFrame or a dict"):
        projection_frame(np.zeros((3, 2), np.float32), [1, 2, 3])
    with pytest.raises(ValueError, match="color='label' is not a column of df; columns: x, y"):
        scatter(df, color="label")
    with pytest.raises(TypeError, match="df must be a pandas DataFrame"):
        scatter(np.zeros((3, 2)))


def test_explained_variance_figure():
    X = _anisotropic(200, 10, 8)
    proj = fit_projection(X, n_components=10)
    fig = explained_variance_figure(proj, threshold=0.9)
    bar, line = fig.data
    np.testing.assert_allclose(bar.y, proj.explained_variance_ratio_)
    np.testing.assert_allclose(line.y, np.cumsum(proj.explained_variance_ratio_))
    k_star = int(np.argmax(np.cumsum(proj.explained_variance_ratio_) >= 0.9)) + 1
    assert any(f"k={k_star} keeps 90%" in (a.text or "") for a in fig.layout.annotations)
    assert len(explained_variance_figure(np.array([0.5, 0.3])).data) == 2
    with pytest.raises(ValueError, match="method='tsne' has no explained variance"):
        tsne = Projection("tsne", 2, 0, {}, None, np.zeros((3, 2)), 4)
        explained_variance_figure(tsne)
    with pytest.raises(TypeError, match="pca must be a PCA Projection"):
        explained_variance_figure("pca")


@pytest.mark.slow  # umap-learn's numba compilation: 15-35 s per process on 2 shared cores
def test_umap_separates_clusters_transform_and_cache(tmp_path):
    """One UMAP fit: separability of 3 clusters, transform of new points, and the cache round-trip."""
    X, labels = _clusters(30, 8, 9)
    proj = fit_projection(X, method="umap", seed=0, cache_dir=tmp_path, n_neighbors=10, n_epochs=100)
    E = proj.embedding_
    assert E.shape == (90, 2) and proj.explained_variance_ratio_ is None
    centres = np.stack([E[labels == c].mean(0) for c in range(3)])
    nearest = np.argmin(((E[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).all()
    within = max(np.linalg.norm(E[labels == c] - centres[c], axis=1).max() for c in range(3))
    between = min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3))
    assert between > 2 * within
    new = X[::10] + 0.01
    moved = proj.transform(new)
    assert (np.argmin(((moved[:, None] - centres[None]) ** 2).sum(-1), axis=1) == labels[::10]).all()
    again = fit_projection(X, method="umap", seed=0, cache_dir=tmp_path, n_neighbors=10, n_epochs=100)
    assert again.from_cache and np.array_equal(again.embedding_, E)
    np.testing.assert_allclose(again.transform(new), moved, atol=1e-5)
