"""Projections of embedding collections (PCA, UMAP, t-SNE), their figures, and PCA-truncated latents.

PCA truncation reproduces the reconstruction experiment of DALL·E 2 (Ramesh et al. 2022, sec. 5.1, fig. 7):
z_i projected onto its first k principal components and back, for k in 20 ... 320.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch

from unclip_core.atomic import atomic_write, write_json
from unclip_core.checks import check_choice, check_embeddings, check_positive_int

Array = np.ndarray | torch.Tensor

METHODS = ("pca", "pca-randomized", "pca-incremental", "umap", "tsne")
PAPER_KS = (20, 30, 40, 80, 120, 160, 200, 320)  # Ramesh et al. 2022, fig. 7
WEBGL_THRESHOLD = 5000  # above this many points scatter() draws with Scattergl
_CACHE_VERSION = "projection-cache-v2"  # v2: npz + json (v1 pickled)
_PCA_METHODS = ("pca", "pca-randomized", "pca-incremental")


def _to_numpy(name: str, X: Array, dim: int | None = None) -> np.ndarray:
    """Checked (n, dim) float numpy view (float32 stays float32, no copy when avoidable)."""
    check_embeddings(name, X, dim=dim)
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        X = X.float().numpy() if X.dtype in (torch.float16, torch.bfloat16) else X.numpy()
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    return X


@dataclass
class Projection:
    """A fitted projection: the estimator, its embedding of the training rows and how it was made."""

    method: str
    n_components: int
    seed: int | None
    params: dict[str, Any]
    estimator: Any
    embedding_: np.ndarray  # (n, n_components)
    n_features: int
    explained_variance_ratio_: np.ndarray | None = None  # (n_components,), PCA methods only
    fit_seconds: float = 0.0
    from_cache: bool = field(default=False, compare=False)
    # a cached UMAP stores its embedding, not its estimator: the first transform() refits it (same seed, same
    # embedding) through this callable
    refit: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def transform(self, X: Array) -> np.ndarray:
        """Project new rows X (n_new, n_features) -> (n_new, n_components); PCA and UMAP only."""
        if self.method == "tsne":
            raise ValueError("method='tsne' has no out-of-sample transform: t-SNE only embeds the rows it "
                             "was fitted on; refit with method='pca' or 'umap', or fit t-SNE on the union "
                             "of the old and new rows")
        X = _to_numpy("X", X, dim=self.n_features)
        if self.estimator is None and self.refit is not None:
            self.estimator = self.refit()
        return np.asarray(self.estimator.transform(X))


def _estimator_class(method: str) -> type:
    """The estimator class behind a method name (imported lazily: umap-learn is slow to import)."""
    if method in ("pca", "pca-randomized"):
        from sklearn.decomposition import PCA
        return PCA
    if method == "pca-incremental":
        from sklearn.decomposition import IncrementalPCA
        return IncrementalPCA
    if method == "umap":
        import umap
        return umap.UMAP
    from sklearn.manifold import TSNE
    return TSNE


def _check_kw(method: str, cls: type, kw: Mapping[str, Any]) -> None:
    """Reject keywords the estimator does not take, and those fit_projection sets itself."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    for key in kw:
        if key in ("n_components", "random_state"):
            raise ValueError(f"pass {key!r} to fit_projection as "
                             f"{'n_components' if key == 'n_components' else 'seed'}=..., not in **kw")
        if key not in accepted:
            listed = ", ".join(a for a in accepted if a not in ("n_components", "random_state"))
            raise ValueError(f"{key!r} is not a parameter of {cls.__name__} (method={method!r}); accepted: {listed}")


def _cache_key(X: np.ndarray, method: str, n_components: int, seed: int | None, kw: Mapping[str, Any]) -> str:
    """Hash of the data bytes, shape, dtype, method, parameters and library versions."""
    import sklearn
    versions = {"sklearn": sklearn.__version__}
    if method == "umap":
        import umap
        versions["umap"] = getattr(umap, "__version__", "?")
    meta = json.dumps({"v": _CACHE_VERSION, "method": method, "n_components": n_components, "seed": seed,
                       "kw": {k: repr(v) for k, v in sorted(kw.items())}, "shape": X.shape,
                       "dtype": str(X.dtype), "versions": versions}, sort_keys=True)
    h = hashlib.blake2b(meta.encode(), digest_size=20)
    h.update(memoryview(np.ascontiguousarray(X)).cast("B"))
    return h.hexdigest()


def _estimator_state(est: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A fitted PCA estimator's attributes as (JSON scalars, arrays), or None if one is neither."""
    scalars, arrays = {}, {}
    for k, v in vars(est).items():
        if isinstance(v, np.ndarray) and v.dtype != object:
            arrays[k] = v
        elif isinstance(v, (np.integer, np.floating, np.bool_)):
            scalars[k] = v.item()
        elif v is None or isinstance(v, (bool, int, float, str)):
            scalars[k] = v
        else:
            return None
    return scalars, arrays


def _save_cache(proj: Projection, path: Path) -> None:
    """Write PATH.npz (arrays) then PATH.json (the record, written last: a cache entry exists once it does).

    No pickle anywhere: a cache folder someone else wrote can at worst hold wrong numbers, never code.
    """
    arrays = {"embedding_": proj.embedding_}
    if proj.explained_variance_ratio_ is not None:
        arrays["explained_variance_ratio_"] = proj.explained_variance_ratio_
    state = None
    if proj.method in _PCA_METHODS:
        got = _estimator_state(proj.estimator)
        if got is None:
            return  # an attribute we cannot store without pickle: leave this fit uncached
        state, est_arrays = got
        arrays.update({f"estimator.{k}": v for k, v in est_arrays.items()})
    npz = path.with_suffix(".npz")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write(npz, write, fsync=False)
    write_json(path.with_suffix(".json"), {
        "format": _CACHE_VERSION, "method": proj.method, "n_components": proj.n_components, "seed": proj.seed,
        "params": {k: v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)
                   for k, v in proj.params.items()},
        "n_features": proj.n_features, "fit_seconds": proj.fit_seconds, "estimator_state": state,
        "arrays": sorted(arrays)}, fsync=False)


def _load_cache(path: Path, method: str, refit: Callable[[], Any]) -> Projection | None:
    """The Projection cached at PATH.{json,npz}, or None when absent or unreadable (then it is refitted)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        if meta.get("format") != _CACHE_VERSION or meta.get("method") != method:
            return None
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if sorted(arrays) != meta["arrays"]:
            return None
        estimator = None
        if method in _PCA_METHODS:
            estimator = _estimator_class(method).__new__(_estimator_class(method))
            vars(estimator).update(meta["estimator_state"])
            vars(estimator).update({k[len("estimator."):]: v for k, v in arrays.items() if k.startswith("estimator.")})
        return Projection(method=method, n_components=int(meta["n_components"]), seed=meta["seed"],
                          params=dict(meta["params"]), estimator=estimator, embedding_=arrays["embedding_"],
                          n_features=int(meta["n_features"]),
                          explained_variance_ratio_=arrays.get("explained_variance_ratio_"),
                          fit_seconds=float(meta["fit_seconds"]), from_cache=True,
                          refit=None if method in _PCA_METHODS else refit)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        return None  # missing, truncated, or from another version: refit and overwrite


def _pca_solver(n: int, d: int) -> str:
    """Exact solver: covariance eigendecomposition for tall data (sklearn's own rule), else full SVD."""
    return "covariance_eigh" if d <= 1000 and n >= 10 * d else "full"


def fit_projection(X: Array, method: str = "pca", n_components: int = 2, seed: int | None = 0,
                   cache_dir: str | os.PathLike | None = None, **kw: Any) -> Projection:
    """Fit PCA (exact, randomized, incremental), UMAP (McInnes et al. 2018) or t-SNE (van der Maaten 2008).

    X: (n, dim). seed: random_state of the estimator (None lets UMAP run in parallel, non-reproducibly).
    cache_dir: when given, the fitted Projection is stored there under a hash of the data and parameters (an
    .npz of arrays and a .json record, written atomically; nothing is pickled) and reused on the next identical
    call. A cached PCA restores its estimator exactly; a cached UMAP restores its embedding and refits its
    estimator (same seed, same embedding) on the first transform().
    **kw go to the estimator (e.g. n_neighbors, min_dist for UMAP; perplexity for t-SNE).
    """
    check_choice("method", method, METHODS)
    Xn = _to_numpy("X", X)
    n, d = Xn.shape
    n_components = check_positive_int("n_components", n_components)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    cls = _estimator_class(method)
    _check_kw(method, cls, kw)
    if method.startswith("pca") and n_components > min(n, d):
        raise ValueError(f"n_components={n_components} exceeds min(n_samples, dim) = min({n}, {d}); "
                         f"PCA has at most {min(n, d)} components: lower n_components")
    if method in ("umap", "tsne") and n_components >= n - 1:
        raise ValueError(f"n_components={n_components} needs more than {n_components + 1} rows for "
                         f"method={method!r}, got {n}: pass more points or fewer components")
    if method == "tsne" and n_components > 3 and kw.get("method", "barnes_hut") == "barnes_hut":
        raise ValueError(f"t-SNE's default barnes_hut solver supports n_components <= 3, got {n_components}; "
                         "pass method='exact' (slow) or fewer components")

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{method}-{_cache_key(Xn, method, n_components, seed, kw)}"
        cached = _load_cache(path, method, lambda: fit_projection(Xn, method, n_components, seed, **kw).estimator)
        if cached is not None:
            return cached

    params = dict(kw)
    if method == "pca":
        params.setdefault("svd_solver", _pca_solver(n, d))
    elif method == "pca-randomized":
        params.setdefault("svd_solver", "randomized")
    elif method == "tsne":
        params.setdefault("perplexity", float(min(30.0, (n - 1) / 3.0)))
        params.setdefault("init", "pca")
    if method == "umap" and seed is not None:
        params.setdefault("n_jobs", 1)  # umap-learn runs single-threaded when seeded; say so, quietly
    if method in ("pca-randomized", "umap", "tsne"):
        params["random_state"] = seed
    elif method == "pca" and params["svd_solver"] in ("randomized", "arpack"):
        params["random_state"] = seed
    t0 = time.perf_counter()
    est = cls(n_components=n_components, **params)
    embedding = est.fit_transform(Xn)
    seconds = time.perf_counter() - t0
    evr = np.asarray(est.explained_variance_ratio_) if method.startswith("pca") else None
    proj = Projection(method=method, n_components=n_components, seed=seed, params=params, estimator=est,
                      embedding_=np.asarray(embedding), n_features=d, explained_variance_ratio_=evr,
                      fit_seconds=seconds)
    if path is not None:
        _save_cache(proj, path)
    return proj


def warm_umap() -> float:
    """Trigger umap-learn's numba compilation on a tiny array (run in a background thread); returns seconds.

    Fits twice, with the exact k-NN path (n < 4096) and with NN-descent (pynndescent, used for larger n),
    and transforms, so a later fit of either size runs compiled code.
    """
    import umap
    t0 = time.perf_counter()
    X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    for approx in (False, True):
        umap.UMAP(n_neighbors=5, n_epochs=20, random_state=0, n_jobs=1,
                  force_approximation_algorithm=approx).fit(X).transform(X[:4])
    return time.perf_counter() - t0


def _coords(proj: Projection | Array) -> np.ndarray:
    """Embedding coordinates (n, k) of a Projection or an array."""
    if isinstance(proj, Projection):
        return proj.embedding_
    return _to_numpy("proj", proj)


def projection_frame(proj: Projection | Array, metadata: pd.DataFrame | Mapping[str, Sequence] | None = None
                     ) -> pd.DataFrame:
    """Tidy frame of projected points: columns x, y[, z] (then c4, c5, ...) joined to metadata by row."""
    E = _coords(proj)
    names = ["x", "y", "z"][:E.shape[1]] + [f"c{i + 1}" for i in range(3, E.shape[1])]
    df = pd.DataFrame(E, columns=names)
    if metadata is None:
        return df
    if not isinstance(metadata, pd.DataFrame):
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a pandas DataFrame or a dict of columns, got {type(metadata).__name__}")
        metadata = pd.DataFrame(dict(metadata))
    if len(metadata) != len(df):
        raise ValueError(f"metadata has {len(metadata)} rows but the projection has {len(df)}; "
                         "pass one metadata row per embedded point, in the same order")
    clash = sorted(set(names) & set(metadata.columns))
    if clash:
        raise ValueError(f"metadata columns {clash} clash with the coordinate columns {names}; rename them")
    return pd.concat([df, metadata.reset_index(drop=True)], axis=1)


def scatter(df: pd.DataFrame, color: str | None = None, hover: Sequence[str] | str | None = None,
            x: str = "x", y: str = "y", title: str | None = None,
            webgl_threshold: int = WEBGL_THRESHOLD) -> go.Figure:
    """Scatter plot of a projection frame; Scattergl above webgl_threshold points.

    color: a column; numeric columns get a continuous colour scale, others (strings, categories, bools)
    one discrete colour per value (cast integer labels to str for discrete colours). hover: column(s)
    shown on hover.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame (see projection_frame), got {type(df).__name__}")
    hover = [hover] if isinstance(hover, str) else list(hover or [])
    for arg, col in [("x", x), ("y", y), ("color", color)] + [("hover", h) for h in hover]:
        if col is not None and col not in df.columns:
            raise ValueError(f"{arg}={col!r} is not a column of df; columns: {', '.join(map(str, df.columns))}")
    webgl_threshold = check_positive_int("webgl_threshold", webgl_threshold, minimum=0)
    plot_df = df
    if color is not None and pd.api.types.is_bool_dtype(df[color]):
        plot_df = df.assign(**{color: df[color].astype(str)})
    fig = px.scatter(plot_df, x=x, y=y, color=color, hover_data=hover or None, title=title,
                     render_mode="webgl" if len(df) > webgl_threshold else "svg")
    fig.update_traces(marker={"size": 4 if len(df) > webgl_threshold else 6})
    return fig


def _components(pca_or_components: Any) -> tuple[np.ndarray, np.ndarray]:
    """(components (m, d), mean (d,)) from a Projection, a fitted sklearn PCA, or a (components, mean) pair."""
    obj = pca_or_components
    if isinstance(obj, Projection):
        if not obj.method.startswith("pca"):
            raise ValueError(f"pca_truncate needs a PCA projection, got method={obj.method!r}; "
                             "fit with method='pca'")
        obj = obj.estimator
    if hasattr(obj, "components_") and hasattr(obj, "mean_"):
        if getattr(obj, "whiten", False):
            raise ValueError("the PCA was fitted with whiten=True; refit without whitening so components "
                             "are orthonormal directions in embedding space")
        return np.asarray(obj.components_, np.float64), np.asarray(obj.mean_, np.float64)
    if isinstance(obj, tuple) and len(obj) == 2:
        C = np.asarray(obj[0], np.float64)
        mu = np.asarray(obj[1], np.float64)
        if C.ndim != 2 or mu.shape != (C.shape[1],):
            raise ValueError(f"(components, mean) must have shapes (m, dim) and (dim,), got {C.shape} and {mu.shape}")
        return C, mu
    raise TypeError("pca_or_components must be a PCA Projection, a fitted sklearn PCA, or a tuple "
                    f"(components (m, dim), mean (dim,)), got {type(pca_or_components).__name__}")


def pca_truncate(Z: Array, pca_or_components: Any, k: int, renormalize: bool = False) -> Array:
    """PCA reconstruction of DALL·E 2 (Ramesh et al. 2022, fig. 7): mean + (Z - mean) C_k^T C_k.

    Z: (n, dim) -> (n, dim), same array kind and dtype; C_k the first k principal components. The mean is
    kept. renormalize=True puts the result back on the unit sphere.
    """
    check_embeddings("Z", Z)
    C, mu = _components(pca_or_components)
    dim = Z.shape[1]
    if C.shape[1] != dim:
        raise ValueError(f"the PCA was fitted on dimension {C.shape[1]} but Z has dimension {dim}; "
                         "fit the PCA on embeddings from the same CLIP model")
    k = check_positive_int("k", k)
    if k > dim:
        raise ValueError(f"k={k} exceeds the embedding dimension {dim}; use 1 <= k <= {dim} (see pca_ks)")
    if k > C.shape[0]:
        raise ValueError(f"k={k} but the PCA has only {C.shape[0]} components; refit with n_components >= {k}")
    Zn = Z.detach().cpu().double().numpy() if isinstance(Z, torch.Tensor) else np.asarray(Z, np.float64)
    Ck = C[:k]  # (k, dim)
    out = mu + ((Zn - mu) @ Ck.T) @ Ck
    if renormalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("a truncated embedding is zero; cannot renormalise it: use a larger k")
        out = out / norms
    if isinstance(Z, torch.Tensor):
        return torch.from_numpy(out).to(device=Z.device, dtype=Z.dtype)
    return out.astype(Z.dtype, copy=False)


def pca_ks(dim: int, include_full: bool = True) -> list[int]:
    """The paper's k list [20, 30, 40, 80, 120, 160, 200, 320] below dim, then dim itself when include_full."""
    dim = check_positive_int("dim", dim)
    ks = [k for k in PAPER_KS if k < dim]
    return ks + [dim] if include_full else ks


def explained_variance_figure(pca: Projection | Any, threshold: float = 0.99) -> go.Figure:
    """Bar chart of explained variance ratio per component with its cumulative sum and the k reaching threshold.

    pca: a PCA Projection, a fitted sklearn PCA, or an array of ratios. The paper reports 319 of 1024 dims
    keeping > 99% of the variance (Ramesh et al. 2022, sec. 2.2).
    """
    if isinstance(pca, Projection):
        if pca.explained_variance_ratio_ is None:
            raise ValueError(f"method={pca.method!r} has no explained variance; fit with method='pca'")
        ratio = pca.explained_variance_ratio_
    elif hasattr(pca, "explained_variance_ratio_"):
        ratio = pca.explained_variance_ratio_
    elif isinstance(pca, (np.ndarray, list, tuple)):
        ratio = pca
    else:
        raise TypeError(f"pca must be a PCA Projection, a fitted sklearn PCA or an array of ratios, "
                        f"got {type(pca).__name__}")
    ratio = np.asarray(ratio, dtype=np.float64).reshape(-1)
    if ratio.size == 0 or not np.isfinite(ratio).all() or (ratio < 0).any():
        raise ValueError("explained variance ratios must be a non-empty array of finite values >= 0")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    ks = np.arange(1, ratio.size + 1)
    cum = np.cumsum(ratio)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=ks, y=ratio, name="per component"))
    fig.add_trace(go.Scatter(x=ks, y=cum, mode="lines", name="cumulative"))
    fig.add_hline(y=threshold, line_dash="dash", line_color="grey")
    reached = np.flatnonzero(cum >= threshold - 1e-12)
    if reached.size:
        k_star = int(reached[0]) + 1
        fig.add_vline(x=k_star, line_dash="dot", line_color="grey",
                      annotation_text=f"k={k_star} keeps {threshold:.0%}")
    fig.update_layout(xaxis_title="component", yaxis_title="explained variance ratio",
                      yaxis_range=[0, 1.02])
    return fig
