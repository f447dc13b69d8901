"""Maps of large stores: streamed exact PCA equals scikit-learn's, bounded memory, UMAP on a sample, the cache."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyses.projection import fit_projection
from analyses.store_maps import MapConfig, map_store
from explorer.store import EmbeddingStore

REPO = Path(__file__).resolve().parents[1]


def _clustered(n: int, d: int, seed: int = 0, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 3 * rng.normal(size=(k, d)).astype(np.float32)
    labels = rng.integers(k, size=n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def _store(path: Path, X: np.ndarray, kinds: list[str] | None = None) -> EmbeddingStore:
    store = EmbeddingStore.create(path, "synthetic", "synthetic", X.shape[1], "float32")
    kinds = kinds or ["image"] * len(X)
    store.append(X, [{"id": f"r{i}", "kind": k, "source": ""} for i, k in enumerate(kinds)])
    return store


def test_streamed_pca_equals_sklearn_pca_for_any_block_size(tmp_path):
    X, _ = _clustered(3000, 24)
    store = _store(tmp_path / "s", X)
    ref = fit_projection(X, "pca", n_components=3)
    for block in (37, 4096):
        m = map_store(store, config=MapConfig(method="pca", n_components=3, block_rows=block), progress=False,
                      cache_dir=tmp_path / f"c{block}")
        np.testing.assert_allclose(np.asarray(m.coords), ref.embedding_, atol=2e-4)
        np.testing.assert_allclose(m.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-5)
        np.testing.assert_allclose(m.transform(X[:5]), ref.embedding_[:5], atol=2e-4)
    inc = map_store(store, config=MapConfig(method="pca-incremental", n_components=3, block_rows=500),
                    progress=False)
    # incremental PCA spans the same leading subspace: each coordinate agrees up to sign
    for j in range(3):
        assert abs(np.corrcoef(inc.coords[:, j], ref.embedding_[:, j])[0, 1]) > 0.999


def test_map_cache_by_fingerprint_and_settings(tmp_path):
    X, _ = _clustered(500, 8)
    store = _store(tmp_path / "s", X, kinds=["image"] * 300 + ["text"] * 200)
    m1 = map_store(store, config=MapConfig(n_components=2), kind="image", progress=False)
    assert not m1.from_cache and m1.coords.shape == (300, 2) and m1.path.parent == store.path / "maps"
    record = json.loads(m1.path.with_suffix(".json").read_text())
    assert record["settings"] == {"method": "pca", "n_components": 2} and record["n"] == 300
    m2 = map_store(store, config=MapConfig(n_components=2, block_rows=7), kind="image", progress=False)
    assert m2.from_cache and m2.path == m1.path  # block size changes memory, not the exact PCA
    np.testing.assert_array_equal(m2.rows, np.arange(300))
    np.testing.assert_array_equal(np.asarray(m2.coords), np.asarray(m1.coords))
    assert not map_store(store, config=MapConfig(n_components=2), progress=False).from_cache  # another kind
    store.append(X[:1], [{"id": "new", "kind": "image", "source": ""}])
    m3 = map_store(EmbeddingStore.open(store.path), config=MapConfig(n_components=2), kind="image", progress=False)
    assert not m3.from_cache and m3.coords.shape == (301, 2)  # appended since: fitted again


def test_umap_fitted_on_a_sample_places_the_rest(tmp_path):
    X, labels = _clustered(900, 16, k=4)
    store = _store(tmp_path / "s", X)
    cfg = MapConfig(method="umap", umap_sample=300, n_neighbors=10, seed=3)
    m = map_store(store, config=cfg, progress=False)
    assert m.coords.shape == (900, 2) and np.isfinite(m.coords).all() and m.record["umap_sample"] == 300
    # transformed rows land with their cluster: nearest sample neighbour in the map has the same label
    with np.load(m.path.with_name(m.path.stem + ".fit.npz")) as z:
        sample = z["sample"]
    rest = np.setdiff1d(np.arange(900), sample)
    C = np.asarray(m.coords)
    d = ((C[rest, None, :] - C[None, sample, :]) ** 2).sum(-1)
    agree = (labels[sample[d.argmin(1)]] == labels[rest]).mean()
    assert agree > 0.95, agree
    again = map_store(store, config=cfg, progress=False)
    assert again.from_cache
    np.testing.assert_array_equal(np.asarray(again.coords), C)


def test_map_errors_name_the_fix(tmp_path):
    X, _ = _clustered(50, 8)
    store = _store(tmp_path / "s", X)
    with pytest.raises(ValueError, match="method='tsne' is not known; accepted: 'pca'"):
        MapConfig(method="tsne")
    with pytest.raises(ValueError, match="has no 'text' rows"):
        map_store(store, kind="text", progress=False)
    with pytest.raises(ValueError, match="n_components=9 exceeds the store's dim 8"):
        map_store(store, config=MapConfig(n_components=9), progress=False)
    with pytest.raises(TypeError, match="config must be a MapConfig"):
        map_store(store, config={"method": "pca"}, progress=False)  # type: ignore[arg-type]


def test_streamed_pca_memory_is_bounded(tmp_path):
    """400k x 256 float32 (410 MB) mapped with 8192-row blocks: the process grows by far less than the data."""
    n, d = 400_000, 256
    store = EmbeddingStore.create(tmp_path / "big", "synthetic", "synthetic", d, "float32")
    rng = np.random.default_rng(0)
    blocks = (rng.normal(size=(50_000, d)).astype(np.float32) for _ in range(n // 50_000))
    import pandas as pd
    meta = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "kind": "image", "source": ""})
    store._commit(blocks, n, meta)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from analyses.store_maps import MapConfig, map_store
        from explorer.store import EmbeddingStore
        store = EmbeddingStore.open({str(tmp_path / 'big')!r})
        status = open("/proc/self/status").read()
        before = int(status.split("VmRSS:")[1].split()[0])  # resident now (kB), not the import-time peak
        m = map_store(store, config=MapConfig(block_rows=8192), progress=False)
        # VmHWM: this process's peak (ru_maxrss would carry the forking parent's peak across exec)
        after = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
        print((after - before) / 1024, float(np.abs(np.asarray(m.coords)).max()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    grew_mb, coord_max = map(float, out.stdout.split())
    assert grew_mb < 120, f"peak RSS grew {grew_mb:.0f} MB for a 410 MB store"
    assert 0 < coord_max < 20


def test_map_command_writes_html_and_reuses_the_cache(tmp_path, capsys):
    from explorer.cli import main
    X, labels = _clustered(2000, 8, k=3)
    store = EmbeddingStore.create(tmp_path / "s", "synthetic", "synthetic", 8, "float32")
    store.append(X, [{"id": f"r{i}", "kind": "image", "source": "", "cluster": f"c{c}"} for i, c in enumerate(labels)])
    assert main(["map", str(store.path), "--color", "cluster", "--out", str(tmp_path / "m")]) == 0
    first = capsys.readouterr().out
    assert "pca map of 2,000 rows (fitted in" in first and "explained variance:" in first
    sample = pd.read_csv(tmp_path / "m" / "sample.csv")
    assert len(sample) == 2000 and set(sample["cluster"]) == {"c0", "c1", "c2"}
    settings = json.loads((tmp_path / "m" / "settings.json").read_text())
    coords = np.load(settings["settings"]["coords_file"])
    np.testing.assert_allclose(coords[sample["row"].to_numpy()], sample[["x", "y"]].to_numpy(), atol=1e-5)
    html = (tmp_path / "m" / "map.html").read_text()
    assert "points per cell" in html and len(html) > 1_000_000  # plotly.js inlined: opens offline
    assert main(["map", str(store.path)]) == 0
    assert "loaded from the cache" in capsys.readouterr().out
    assert main(["map", str(store.path), "--color", "nope"]) == 2
    assert "color='nope' is not a metadata column" in capsys.readouterr().err


def test_region_selection_is_every_point_inside(tmp_path):
    from analyses.store_maps import rows_in_region
    C = np.random.default_rng(0).uniform(-1, 1, size=(10_000, 2)).astype(np.float32)
    box = rows_in_region(C, box=((0.5, -0.5), (-1, 0)), block_rows=777)
    want = np.flatnonzero((C[:, 0] >= -0.5) & (C[:, 0] <= 0.5) & (C[:, 1] <= 0))
    np.testing.assert_array_equal(box, want)
    tri = rows_in_region(C, polygon=np.array([[0, 0], [1, 0], [0, 1]]))
    inside = (C[:, 0] > 0) & (C[:, 1] > 0) & (C[:, 0] + C[:, 1] < 1)
    assert abs(len(tri) - inside.sum()) <= 2 and inside[tri].mean() > 0.999
    with pytest.raises(ValueError, match="exactly one"):
        rows_in_region(C)


def test_a_clip_retrieval_folder_maps_in_place_with_its_cache_outside(tmp_path, monkeypatch):
    from explorer.store import ClipRetrievalStore, export_clip_retrieval
    X, _ = _clustered(1200, 8)
    store = _store(tmp_path / "s", X)
    export_clip_retrieval(store, tmp_path / "cr")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cr = ClipRetrievalStore(tmp_path / "cr")
    m = map_store(cr, config=MapConfig(block_rows=500), progress=False)
    assert str(m.path).startswith(str(tmp_path / "cache")) and not (tmp_path / "cr" / "maps").exists()
    ours = map_store(store, config=MapConfig(), progress=False)
    np.testing.assert_allclose(np.asarray(m.coords), np.asarray(ours.coords), atol=1e-4)
    assert map_store(ClipRetrievalStore(tmp_path / "cr"), config=MapConfig(block_rows=500), progress=False).from_cache
