"""Maps of large stores (analyses/store_maps.py): streamed PCA at 10M x 512 in bounded memory, vs scikit-learn.

    .venv/bin/python benchmarks/store_maps.py --n 10000000 --n-compare 1000000 --umap-n 200000 --json out.json

Writes clustered synthetic float16 vectors (1000 gaussian clusters, as benchmarks/index.py) into temporary stores
and reports, each map fitted in a fresh subprocess so its peak memory (VmHWM) is its own:
  * --n rows: streamed exact PCA (fit + placing every row) seconds and peak RSS; the store's size for scale;
  * --n-compare rows, same run: map_store's PCA vs scikit-learn's PCA (covariance_eigh) on the rows loaded into
    memory (float32), seconds (ratio) and peak RSS of each, max |coordinate difference|;
  * --umap-n rows: UMAP fitted on --umap-sample rows, the rest transformed; seconds of each phase, peak RSS.
Needs about n x dim x 2 bytes of free disk.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_store(path: Path, n: int, d: int, seed: int = 0) -> None:
    from benchmarks.index import clustered
    from explorer.store import EmbeddingStore
    store = EmbeddingStore.create(path, "synthetic", "synthetic", d, "float16")
    meta = pd.DataFrame({"id": pd.RangeIndex(n).astype(str), "kind": "image", "source": ""})
    store._commit(clustered(n, d, seed), n, meta)


def in_subprocess(body: str, threads: int) -> dict:
    """Run `body` (which sets `result`) in a fresh interpreter; returns result plus its peak RSS in MB."""
    code = "import json, sys, time\nsys.path.insert(0, %r)\n" % str(REPO) + textwrap.dedent(body) + textwrap.dedent("""
        status = open("/proc/self/status").read()
        result["peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
        result["base_rss_mb"] = base / 1024
        print(json.dumps(result))
    """)
    env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


BASE = """
    import numpy as np
    from analyses.store_maps import MapConfig, map_store
    from explorer.store import EmbeddingStore
    base = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
"""


def ours(store: Path, cfg: str, cache: Path, threads: int) -> dict:
    return in_subprocess(BASE + f"""
    t0 = time.perf_counter()
    m = map_store(EmbeddingStore.open({str(store)!r}), config=MapConfig({cfg}), cache_dir={str(cache)!r},
                  progress=False)
    result = {{"seconds": time.perf_counter() - t0, "fit_seconds": m.record["fit_seconds"],
              "transform_seconds": m.record["transform_seconds"], "coords": str(m.path)}}
    """, threads)


def sklearn_pca(store: Path, threads: int) -> dict:
    return in_subprocess(BASE + f"""
    from sklearn.decomposition import PCA
    t0 = time.perf_counter()
    X = np.asarray(EmbeddingStore.open({str(store)!r}).vectors, dtype=np.float32)
    Y = PCA(n_components=2, svd_solver="covariance_eigh").fit_transform(X)
    result = {{"seconds": time.perf_counter() - t0}}
    np.save({str(store.parent / "sk.npy")!r}, Y.astype(np.float32))
    """, threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--n-compare", type=int, default=1_000_000)
    p.add_argument("--umap-n", type=int, default=200_000)
    p.add_argument("--umap-sample", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None, help="where the temporary stores go (default: the system temp)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    from benchmarks._common import machine_info, write_json_atomic
    report: dict = {"machine": machine_info(), "n": args.n, "dim": args.dim, "threads": args.threads}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        # same-run comparison with scikit-learn on rows it can hold in memory
        small = tmp / "compare" / "store"
        write_store(small, args.n_compare, args.dim)
        sk = sklearn_pca(small, args.threads)
        ou = ours(small, "method='pca'", tmp / "compare" / "maps", args.threads)
        diff = float(np.abs(np.load(ou["coords"]) - np.load(small.parent / "sk.npy")).max())
        report["compare"] = {"n": args.n_compare, "ours": ou, "sklearn": sk, "speedup": sk["seconds"] / ou["seconds"],
                             "max_abs_coord_diff": diff}
        print(f"{args.n_compare:,} x {args.dim}: ours {ou['seconds']:.1f} s, peak {ou['peak_rss_mb']:.0f} MB; "
              f"sklearn PCA {sk['seconds']:.1f} s, peak {sk['peak_rss_mb']:.0f} MB; ratio {sk['seconds'] / ou['seconds']:.2f}x;"
              f" max |coord diff| {diff:.2e}", flush=True)
        if args.umap_n:
            um = tmp / "umap" / "store"
            write_store(um, args.umap_n, args.dim, seed=2)
            res = ours(um, f"method='umap', umap_sample={args.umap_sample}", tmp / "umap" / "maps", args.threads)
            report["umap"] = {"n": args.umap_n, "sample": args.umap_sample, **res}
            print(f"UMAP {args.umap_n:,} rows (fit on {args.umap_sample:,}): fit {res['fit_seconds']:.1f} s, "
                  f"transform {res['transform_seconds']:.1f} s, peak {res['peak_rss_mb']:.0f} MB", flush=True)
            import shutil
            shutil.rmtree(tmp / "umap")
        shutil_free = tmp / "big" / "store"
        t0 = time.perf_counter()
        write_store(shutil_free, args.n, args.dim, seed=1)
        report["write_seconds"] = time.perf_counter() - t0
        big = ours(shutil_free, "method='pca'", tmp / "big" / "maps", args.threads)
        size_gb = args.n * args.dim * 2 / 1e9
        report["big"] = {**big, "store_gb": size_gb}
        print(f"{args.n:,} x {args.dim} float16 ({size_gb:.1f} GB): streamed PCA {big['seconds']:.0f} s "
              f"(fit {big['fit_seconds']:.0f} s, place {big['transform_seconds']:.0f} s), peak RSS "
              f"{big['peak_rss_mb']:.0f} MB (interpreter and imports {big['base_rss_mb']:.0f} MB)", flush=True)
    if args.json:
        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
