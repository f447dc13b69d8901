"""Benchmark fit_projection against plain sklearn / umap-learn calls on a mixture of gaussians.

    .venv/bin/python benchmarks/projection.py --n 100000 --umap-n 20000,50000

Prints the best-of-repeats seconds for each call (interleaved ours / baseline) and the ratio ours / baseline, measured in the same process. umap-learn's
numba compilation is timed separately (warm_umap) before any UMAP fit, so the fits compare warm code.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.projection import _cache_key, fit_projection, warm_umap  # noqa: E402


def mixture(n: int, dim: int, n_clusters: int = 16, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit rows: gaussian clusters around random centres, CLIP-like after normalising."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    labels = rng.integers(0, n_clusters, size=n)
    X = centres[labels] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def timed_pair(ours, base, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` wall times of two calls, interleaved so shared-CPU load hits both alike."""
    t_ours, t_base = [], []
    for _ in range(repeats):
        for fn, out in ((ours, t_ours), (base, t_base)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(t_ours), min(t_base)


def row(name: str, ours: float, base: float) -> None:
    print(f"{name:<28} ours {ours:9.3f} s   baseline {base:9.3f} s   ratio {ours / base:6.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="rows for the PCA timings")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--umap-n", default="20000", help="comma-separated row counts for UMAP; 0 skips UMAP")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats for PCA timings (best of)")
    ap.add_argument("--incremental", action="store_true", help="also time pca-incremental (slow)")
    args = ap.parse_args()

    from sklearn.decomposition import PCA
    X = mixture(args.n, args.dim)
    print(f"data: {X.shape} {X.dtype}, mixture of 16 gaussians, unit rows", flush=True)

    from sklearn.decomposition import IncrementalPCA
    row("pca (exact)", *timed_pair(lambda: fit_projection(X, "pca", n_components=2),
                                   lambda: PCA(n_components=2).fit_transform(X), args.repeats))
    row("pca-randomized", *timed_pair(
        lambda: fit_projection(X, "pca-randomized", n_components=2, seed=0),
        lambda: PCA(n_components=2, svd_solver="randomized", random_state=0).fit_transform(X), args.repeats))
    row(f"pca full rank ({args.dim})", *timed_pair(lambda: fit_projection(X, "pca", n_components=args.dim),
                                                   lambda: PCA(n_components=args.dim).fit_transform(X), 1))

    if args.incremental:  # slow: one SVD per batch of 5 * dim rows
        row("pca-incremental", *timed_pair(lambda: fit_projection(X, "pca-incremental", n_components=2),
                                           lambda: IncrementalPCA(n_components=2).fit_transform(X), 1))

    umap_ns = [int(s) for s in args.umap_n.split(",") if int(s) > 0]
    if not umap_ns:
        return
    t0 = time.perf_counter()
    import umap
    print(f"umap-learn import: {time.perf_counter() - t0:.2f} s", flush=True)
    print(f"numba compilation (warm_umap): {warm_umap():.2f} s", flush=True)
    for n in umap_ns:
        Xu = X[:n] if n <= len(X) else mixture(n, args.dim, seed=1)
        t0 = time.perf_counter()
        _cache_key(Xu, "umap", 2, 0, {})
        hash_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            fit_projection(Xu, "umap", n_components=2, seed=0, cache_dir=cache)
            ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            umap.UMAP(n_components=2, random_state=0, n_jobs=1).fit_transform(Xu)
            base = time.perf_counter() - t0
            row(f"umap n={n} (seeded, 1 thread)", ours, base)
            t0 = time.perf_counter()
            hit = fit_projection(Xu, "umap", n_components=2, seed=0, cache_dir=cache)
            hit_s = time.perf_counter() - t0
            if not hit.from_cache:
                raise RuntimeError("the second identical UMAP fit did not come from the cache")
            print(f"{'':<28} cache key hash {hash_s:.3f} s; cache hit {hit_s:.3f} s "
                  f"({base / hit_s:.0f}x faster than refitting)", flush=True)


if __name__ == "__main__":
    main()
