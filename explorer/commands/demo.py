"""`unclip-explorer demo --out DIR`: the main job on the bundled models, one index.html to open."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="run the demo on the bundled models and write an index.html",
                       description="Export a ShapesWorld sample, embed it with the bundled CLIP, answer text "
                                   "queries by nearest neighbours and map the embeddings with PCA.")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    p.add_argument("--n", type=int, default=300, help="ShapesWorld scenes to embed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="shapes-clip", metavar="SPEC", help="CLIP model (default: shapes-clip)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from explorer.demo import run_demo
    index = run_demo(args.out, n=args.n, seed=args.seed, model=args.model, progress=not args.no_progress)
    print(f"demo written: open {index}")
    return 0
