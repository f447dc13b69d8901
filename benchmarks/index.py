"""faiss index of a store vs exact search and vs a plain faiss call, on clustered synthetic vectors.

    .venv/bin/python benchmarks/index.py --n 1000000 --dim 512

Writes n x dim clustered vectors (float16) into a temporary store, builds the default index (IVF{4 sqrt n},Flat,
nprobe nlist/16) with `build_index`, and reports: build seconds and peak RSS, recall@10 of the store's search
against the exact search (median of the query set), query latency of the store's search (index) vs exact, and
the wrapper overhead: store.search vs faiss' own search on the same index and queries, timed interleaved.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def clustered(n: int, d: int, seed: int, n_clusters: int = 1000, block: int = 250_000):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        yield (centres[rng.integers(n_clusters, size=m)] + 0.6 * rng.normal(size=(m, d))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    import faiss
    from benchmarks._common import machine_info, median, time_interleaved, write_json_atomic
    from explorer.store import EmbeddingStore
    from explorer.store.index import _unit, build_index
    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore.create(Path(tmp) / "s", "synthetic", "synthetic", args.dim)
        row = 0
        for block in clustered(args.n, args.dim, 0):
            store.append(block, [{"id": f"r{row + i}", "kind": "image", "source": ""} for i in range(len(block))])
            row += len(block)
        q = next(clustered(args.queries, args.dim, 1))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        build_index(store)
        build_s = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        store = EmbeddingStore.open(store.path)
        ann = store.ann_index()
        exact_r = store.search(q, k=10, exact=True)[1]
        ann_r = store.search(q, k=10)[1]
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ann_r, exact_r)]))
        qn = _unit(q)
        times = time_interleaved({
            "store (index)": lambda: store.search(q, k=10),
            "faiss": lambda: ann.index.search(qn, 10),
            "exact": lambda: store.search(q, k=10, exact=True),
        }, args.repeats, warmup=1, device="cpu")
    sec = {k: median(v) for k, v in times.items()}
    overhead = sec["store (index)"] / sec["faiss"] - 1
    print(f"n {args.n} x {args.dim}: index {ann.meta['key']} (nprobe {ann.meta['params'].get('nprobe')}) built in "
          f"{build_s:.1f} s, peak RSS +{(rss1 - rss0) / 2**20:.2f} GiB (total {rss1 / 2**20:.2f} GiB); recall@10 "
          f"{recall:.3f} over {args.queries} queries; {args.queries} queries: index {sec['store (index)']:.3f} s, "
          f"exact {sec['exact']:.3f} s ({sec['exact'] / sec['store (index)']:.0f}x), faiss alone {sec['faiss']:.3f} s "
          f"(wrapper overhead {100 * overhead:+.1f}%)")
    if args.json:
        write_json_atomic(Path(args.json), {"n": args.n, "dim": args.dim, "key": ann.meta["key"], "build_s": build_s,
                                            "recall_at_10": recall, "seconds": times, "overhead": overhead,
                                            "peak_rss_gib": rss1 / 2**20, "machine": machine_info("cpu")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
