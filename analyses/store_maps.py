"""2-D maps of stores too large for memory: PCA streamed from the memory map, UMAP fitted on a sample.

`map_store(store, config=MapConfig(...))` never holds the store in RAM. It reads `block_rows` rows at a time
(re-mapping the vectors file for each block, so the pages read are dropped from the process again) and writes the
coordinates to a float32 .npy beside the store (STORE/maps/), keyed by the store's fingerprint and the fit
settings, with a JSON record of how they were made; a second call with the same settings loads them.

  * "pca": exact PCA from streamed first and second moments (one pass: the mean and the d x d scatter matrix
    accumulated in float64 around a shift, then an eigendecomposition; components signed as scikit-learn's PCA
    signs them), then a second pass projecting every row. Memory: O(block_rows x d + d^2), whatever n is.
  * "pca-incremental": scikit-learn's IncrementalPCA, `partial_fit` block by block (Ross et al. 2008); for
    comparison and for users who expect it (slower: an SVD per block; approximate).
  * "umap": umap-learn fitted on `umap_sample` rows drawn with `seed`; every other row placed with `transform`,
    block by block (McInnes et al. 2018, sec. 2.3: new points are embedded against the fitted graph).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unclip_core.atomic import atomic_write, write_json

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
from unclip_core.checks import check_choice, check_positive_int

MAP_METHODS = ("pca", "pca-incremental", "umap")
MAPS_DIR = "maps"
_FORMAT = "store-map-v1"


@dataclass(frozen=True)
class MapConfig:
    """How a store map is fitted. block_rows bounds memory (block_rows x dim float32 per block)."""

    method: str = "pca"
    n_components: int = 2
    block_rows: int = 65_536
    seed: int = 0
    umap_sample: int = 50_000  # rows UMAP is fitted on; the rest are transformed
    n_neighbors: int = 15
    min_dist: float = 0.1

    def __post_init__(self) -> None:
        check_choice("method", self.method, MAP_METHODS)
        check_positive_int("n_components", self.n_components)
        check_positive_int("block_rows", self.block_rows)
        check_positive_int("umap_sample", self.umap_sample, minimum=10)
        check_positive_int("n_neighbors", self.n_neighbors, minimum=2)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__} {self.seed!r}")
        if not 0.0 <= float(self.min_dist) <= 1.0:
            raise ValueError(f"min_dist={self.min_dist} must lie in [0, 1] (UMAP's usual range 0.0-0.99)")

    def fit_settings(self) -> dict[str, Any]:
        """The settings that change the result (block_rows changes only memory for 'pca' and the seeds' use)."""
        s = asdict(self)
        if self.method == "pca":
            s.pop("block_rows")
        if self.method != "umap":
            for k in ("umap_sample", "n_neighbors", "min_dist", "seed"):
                s.pop(k)
        return s


@dataclass
class StoreMap:
    """Coordinates of a store's rows (a memory-mapped (n, n_components) float32 array) and how they were made."""

    coords: np.ndarray
    rows: np.ndarray | None  # store rows mapped (None: all, in order)
    config: MapConfig
    record: dict[str, Any]
    path: Path  # the .npy of coords; its .json record beside it
    from_cache: bool = False
    components: np.ndarray | None = field(default=None, repr=False)  # PCA (k, d)
    mean: np.ndarray | None = field(default=None, repr=False)

    @property
    def explained_variance_ratio(self) -> np.ndarray | None:
        evr = self.record.get("explained_variance_ratio")
        return None if evr is None else np.asarray(evr)

    def transform(self, Z: np.ndarray) -> np.ndarray:
        """PCA coordinates of new vectors (a caption's z_t, say) on this map."""
        if self.components is None:
            raise ValueError(f"transform() places new vectors on PCA maps; this map is {self.config.method!r}")
        return (np.asarray(Z, np.float64) - self.mean) @ self.components.T


# ------------------------------------------------------------------------------------------------ reading
def _blocks(store: Any, rows: np.ndarray | None, block_rows: int) -> Any:
    from explorer.store.format import iter_blocks  # the store's reader, one block resident at a time
    return iter_blocks(store, rows, block_rows)


def _check_finite(block: np.ndarray, offset: int, store: Any) -> None:
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + offset).tolist()
        raise ValueError(f"store {store.path} has non-finite rows (e.g. rows {rows}); a map needs finite vectors: "
                         "re-embed those rows or map a store without them")


# ------------------------------------------------------------------------------------------------ fitting
def _svd_flip_rows(components: np.ndarray) -> np.ndarray:
    """scikit-learn's sign convention for PCA components: the largest-|.| entry of each component is positive."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1
    return components * signs[:, None]


def _fit_pca(store: Any, rows: np.ndarray | None, cfg: MapConfig, bar: Any) -> dict[str, Any]:
    d = store.dim
    shift = None
    total = np.zeros(d, np.float64)
    scatter = np.zeros((d, d), np.float64)
    n = 0
    for a, blk in _blocks(store, rows, cfg.block_rows):
        _check_finite(blk, a, store)
        if shift is None:
            shift = blk.mean(axis=0, dtype=np.float64).astype(np.float32)  # centring near the mean keeps float32
        blk -= shift                                                     # products accurate
        total += blk.sum(axis=0, dtype=np.float64)
        scatter += (blk.T @ blk).astype(np.float64)
        n += len(blk)
        bar.update(len(blk))
    if n < 2:
        raise ValueError(f"PCA needs at least 2 rows, the store selection has {n}")
    mu_s = total / n
    cov = (scatter - n * np.outer(mu_s, mu_s)) / (n - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0, None), evecs[:, order]
    k = cfg.n_components
    comps = _svd_flip_rows(evecs[:, :k].T)
    return {"components": comps, "mean": mu_s + shift.astype(np.float64),
            "explained_variance_ratio": (evals[:k] / evals.sum()).tolist(), "n_fit": n}


def _fit_incremental(store: Any, rows: np.ndarray | None, cfg: MapConfig, bar: Any) -> dict[str, Any]:
    from sklearn.decomposition import IncrementalPCA
    est = IncrementalPCA(n_components=cfg.n_components)
    carry = None
    for a, blk in _blocks(store, rows, cfg.block_rows):
        _check_finite(blk, a, store)
        if carry is not None:  # partial_fit needs >= n_components rows per call: a short last block joins the next
            blk, carry = np.concatenate([carry, blk]), None
        if len(blk) < cfg.n_components:
            carry = blk
            continue
        est.partial_fit(blk)
        bar.update(len(blk))
    if carry is not None:
        raise ValueError(f"pca-incremental needs at least n_components={cfg.n_components} rows")
    return {"components": est.components_.astype(np.float64), "mean": est.mean_.astype(np.float64),
            "explained_variance_ratio": est.explained_variance_ratio_.tolist(), "n_fit": int(est.n_samples_seen_)}


def _fit_umap(store: Any, rows: np.ndarray | None, cfg: MapConfig, n: int) -> tuple[Any, np.ndarray, np.ndarray]:
    import umap
    rng = np.random.default_rng(cfg.seed)
    m = min(cfg.umap_sample, n)
    sample = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    take = sample if rows is None else rows[sample]
    _, X = next(_blocks(store, take, len(take)))
    _check_finite(X, 0, store)
    est = umap.UMAP(n_components=cfg.n_components, n_neighbors=min(cfg.n_neighbors, m - 1), min_dist=cfg.min_dist,
                    random_state=cfg.seed, n_jobs=1)
    emb = est.fit_transform(X)
    return est, sample, np.asarray(emb, np.float32)


# ------------------------------------------------------------------------------------------------ cache
def _fingerprint(store: Any) -> str:
    from explorer.store.index import fingerprint
    return fingerprint(store)


def _cache_name(store: Any, cfg: MapConfig, kind: str | None) -> str:
    import sklearn
    versions = {"sklearn": sklearn.__version__}
    if cfg.method == "umap":
        import umap
        versions["umap"] = getattr(umap, "__version__", "?")
    key = json.dumps({"format": _FORMAT, "store": _fingerprint(store), "kind": kind, "fit": cfg.fit_settings(),
                      "versions": versions}, sort_keys=True)
    return f"{cfg.method}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def default_cache_dir(store: Any) -> Path:
    """STORE/maps for our stores; for a read-only store (a clip-retrieval folder) a per-folder cache under
    $XDG_CACHE_HOME/unclip-explorer/maps."""
    if not getattr(store, "read_only", False):
        return Path(store.path) / MAPS_DIR
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unclip-explorer" / MAPS_DIR
    return base / hashlib.sha256(str(Path(store.path).resolve()).encode()).hexdigest()[:16]


def _load(path: Path, cfg: MapConfig) -> StoreMap | None:
    try:
        record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if record.get("format") != _FORMAT:
            return None
        coords = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = comps = mean = None
        extra = path.with_name(path.stem + ".fit.npz")
        if extra.exists():
            with np.load(extra, allow_pickle=False) as z:
                rows = z["rows"] if "rows" in z.files else None
                comps = z["components"] if "components" in z.files else None
                mean = z["mean"] if "mean" in z.files else None
        if coords.shape != (record["n"], cfg.n_components):
            return None
        return StoreMap(coords, rows, cfg, record, path, from_cache=True, components=comps, mean=mean)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # absent or damaged: fit again


# ------------------------------------------------------------------------------------------------ entry
def map_store(store: Any, *, config: MapConfig | None = None, kind: str | None = None,
              cache_dir: str | os.PathLike | None = None, progress: bool = True) -> StoreMap:
    """Fit (or load from the cache) a 2-D (n_components-D) map of the store's rows in bounded memory.

    kind: map only rows of that kind ("image" / "text"), read from the metadata; None maps every row without
    reading the metadata (what a 10M-row store wants). cache_dir: default STORE/maps (see default_cache_dir).
    """
    from tqdm.auto import tqdm

    from explorer.store import open_store
    store = open_store(store, "store")
    cfg = config if config is not None else MapConfig()
    if not isinstance(cfg, MapConfig):
        raise TypeError(f"config must be a MapConfig, got {type(cfg).__name__}")
    rows = None
    if kind is not None:
        check_choice("kind", kind, ("image", "text"))
        kinds = store.metadata["kind"].to_numpy()
        rows = np.flatnonzero(kinds == kind)
        if len(rows) == 0:
            raise ValueError(f"the store {store.path} has no {kind!r} rows; kinds there: {sorted(set(kinds))}")
    n = len(store) if rows is None else len(rows)
    if n == 0:
        raise ValueError(f"the store {store.path} is empty; embed something first")
    if cfg.n_components > store.dim:
        raise ValueError(f"n_components={cfg.n_components} exceeds the store's dim {store.dim}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(store)
    path = folder / f"{_cache_name(store, cfg, kind)}.npy"
    cached = _load(path, cfg)
    if cached is not None:
        return cached

    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"format": _FORMAT, "method": cfg.method, "settings": cfg.fit_settings(),
                              "store": str(store.path), "store_fingerprint": _fingerprint(store), "kind": kind, "n": n,
                              "dim": store.dim, "model": store.model_spec}
    extra: dict[str, np.ndarray] = {} if rows is None else {"rows": rows}
    comps = mean = None
    t0 = time.perf_counter()
    est = sample = emb = None
    if cfg.method == "umap":
        est, sample, emb = _fit_umap(store, rows, cfg, n)
        record["umap_sample"] = int(len(sample))
    else:
        with tqdm(total=n, desc=f"{cfg.method}: fit", unit="row", disable=not progress) as bar:
            fit = (_fit_pca if cfg.method == "pca" else _fit_incremental)(store, rows, cfg, bar)
        comps, mean = fit["components"], fit["mean"]
        record["explained_variance_ratio"] = fit["explained_variance_ratio"]
        extra.update(components=comps, mean=mean)
    record["fit_seconds"] = round(time.perf_counter() - t0, 3)

    t1 = time.perf_counter()

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, cfg.n_components))
        with tqdm(total=n, desc=f"{cfg.method}: place rows", unit="row", disable=not progress) as bar:
            in_sample = None
            if sample is not None:
                in_sample = np.zeros(n, bool)
                in_sample[sample] = True
                out[sample] = emb
            for a, blk in _blocks(store, rows, cfg.block_rows):
                if comps is not None:
                    blk -= mean.astype(np.float32)
                    out[a:a + len(blk)] = blk @ comps.T.astype(np.float32)
                else:
                    todo = np.flatnonzero(~in_sample[a:a + len(blk)])
                    if len(todo):
                        _check_finite(blk[todo], a, store)
                        out[a + todo] = est.transform(blk[todo])
                bar.update(len(blk))
        out.flush()
        del out
    atomic_write(path, write, fsync=False)
    if sample is not None:
        extra["sample"] = sample
    if extra:
        npz = path.with_name(path.stem + ".fit.npz")

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **extra)
        atomic_write(npz, write_npz, fsync=False)
    record["transform_seconds"] = round(time.perf_counter() - t1, 3)
    write_json(path.with_suffix(".json"), record, fsync=False)  # written last: the cache entry exists once it does
    return StoreMap(np.load(path, mmap_mode="r", allow_pickle=False), rows, cfg, record, path,
                    components=comps, mean=mean)


# ------------------------------------------------------------------------------------------------ drawing
def density_grid(coords: np.ndarray, bins: int = 400, block_rows: int = 1 << 20
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts (bins_y, bins_x), x edges, y edges) of a map's points, accumulated block by block."""
    bins = check_positive_int("bins", bins, minimum=2)
    lo = np.full(2, np.inf)
    hi = np.full(2, -np.inf)
    for a in range(0, len(coords), block_rows):
        c = np.asarray(coords[a:a + block_rows, :2], np.float64)
        lo, hi = np.minimum(lo, c.min(0)), np.maximum(hi, c.max(0))
    pad = np.where(hi > lo, (hi - lo) * 1e-6, 1.0)
    xe = np.linspace(lo[0] - pad[0], hi[0] + pad[0], bins + 1)
    ye = np.linspace(lo[1] - pad[1], hi[1] + pad[1], bins + 1)
    counts = np.zeros((bins, bins), np.int64)
    for a in range(0, len(coords), block_rows):
        c = np.asarray(coords[a:a + block_rows, :2], np.float64)
        h, _, _ = np.histogram2d(c[:, 1], c[:, 0], bins=(ye, xe))
        counts += h.astype(np.int64)
    return counts, xe, ye


def rows_in_region(coords: np.ndarray, *, box: tuple[tuple[float, float], tuple[float, float]] | None = None,
                   polygon: np.ndarray | None = None, block_rows: int = 1 << 20) -> np.ndarray:
    """Positions (into the map) of every point inside a box ((x0, x1), (y0, y1)) or a polygon ((m, 2) vertices):
    a selection at full resolution, whatever was drawn."""
    if (box is None) == (polygon is None):
        raise ValueError("pass box=((x0, x1), (y0, y1)) or polygon=(m, 2) vertices, exactly one")
    poly = None
    if polygon is not None:
        poly = np.asarray(polygon, np.float64)
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise ValueError(f"polygon must be (m >= 3, 2) vertices, got shape {poly.shape}")
        (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
    else:
        (x0, x1), (y0, y1) = (sorted(map(float, box[0])), sorted(map(float, box[1])))
    out = []
    for a in range(0, len(coords), block_rows):
        c = np.asarray(coords[a:a + block_rows, :2])
        inside = (c[:, 0] >= x0) & (c[:, 0] <= x1) & (c[:, 1] >= y0) & (c[:, 1] <= y1)
        if poly is not None and inside.any():
            idx = np.flatnonzero(inside)
            inside[idx] = _in_polygon(c[idx], poly)
        out.append(np.flatnonzero(inside) + a)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule (a horizontal ray from each point crosses the boundary an odd number of times), vectorised
    over the points, one polygon edge at a time."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    inside = np.zeros(len(points), bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = xi + (y - yi) * (xj - xi) / (yj - yi)
        inside ^= crosses & (x < x_at)
        xj, yj = xi, yi
    return inside


def overview_figure(store_map: StoreMap, sample: "pd.DataFrame", *, color: str | None = None, bins: int = 400,
                    title: str | None = None) -> "go.Figure":
    """Every point as a density image (log counts per cell, so a million points draw as one picture), with a
    sample of them drawn on top as WebGL markers (hover, colour, and something to drag a selection over).

    sample: rows with x, y (and `color`, hover columns) from `sample_frame`."""
    import plotly.graph_objects as go
    counts, xe, ye = density_grid(store_map.coords, bins=bins)
    fig = go.Figure(go.Heatmap(z=np.where(counts > 0, np.log10(np.maximum(counts, 1)) + 0.3, np.nan),
                               x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2, colorscale="Greys",
                               showscale=True, hoverinfo="skip", zsmooth=False,
                               colorbar={"title": {"text": "points per cell"}, "tickvals": [0.3, 1.3, 2.3, 3.3, 4.3],
                                         "ticktext": ["1", "10", "100", "1k", "10k"]}))
    _add_markers(fig, sample, color, size=3)
    n = len(store_map.coords)
    fig.update_layout(title=title or f"{store_map.config.method.upper()} of {n:,} points "
                                     f"(density; {len(sample):,} drawn as markers)",
                      plot_bgcolor="white", legend={"itemsizing": "constant", "orientation": "h", "y": -0.15})
    return fig


def _natural(value: str) -> tuple:
    import re
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", value))


def category_colours(values: Any) -> dict[str, str]:
    """One colour per category, in natural order (c2 before c10), the same in every figure of a map."""
    import plotly.express as px
    palette = px.colors.qualitative.Plotly + px.colors.qualitative.D3
    names = sorted({str(v) for v in values}, key=_natural)
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _add_markers(fig: "go.Figure", frame: "pd.DataFrame", color: str | None, size: int) -> None:
    import plotly.graph_objects as go
    hover_cols = [c for c in ("row", "id", "caption") if c in frame.columns]
    template = "<br>".join(f"{c}=%{{customdata[{j}]}}" for j, c in enumerate(hover_cols)) + "<extra></extra>"
    if color is None:
        fig.add_trace(go.Scattergl(x=frame["x"], y=frame["y"], mode="markers", name="points", showlegend=False,
                                   marker={"size": size, "opacity": 0.6, "color": "#1f77b4"},
                                   customdata=frame[hover_cols].to_numpy(), hovertemplate=template))
        return
    labels = frame[color].astype(str)
    colours = category_colours(labels)
    for name, hue in colours.items():
        part = frame[labels == name]
        fig.add_trace(go.Scattergl(x=part["x"], y=part["y"], mode="markers", name=name,
                                   marker={"size": size, "opacity": 0.6, "color": hue},
                                   customdata=part[hover_cols].to_numpy(), hovertemplate=template))


def region_figure(frame: "pd.DataFrame", *, color: str | None = None, title: str | None = None,
                  axis_titles: tuple[str, str] = ("x", "y")) -> "go.Figure":
    """A selected region drawn point by point (frame: x, y, and `color` / hover columns), coloured as the
    overview colours it."""
    import plotly.graph_objects as go
    fig = go.Figure()
    _add_markers(fig, frame, color, size=4)
    fig.update_layout(title=title, plot_bgcolor="white", xaxis_title=axis_titles[0], yaxis_title=axis_titles[1],
                      legend={"itemsizing": "constant", "orientation": "h", "y": -0.2})
    return fig


def sample_positions(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed, sorted sample of map positions (the markers drawn over the density)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


__all__ = ["MAP_METHODS", "MapConfig", "StoreMap", "default_cache_dir", "density_grid", "map_store",
           "overview_figure", "region_figure", "rows_in_region", "sample_positions", "category_colours"]
