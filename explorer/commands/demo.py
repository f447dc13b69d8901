"""`unclip-explorer demo --out DIR`: the main job on the bundled models, one index.html to open."""
from __future__ import annotations

import argparse
from explorer.commands import Command, _args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="run the demo on the bundled models and write an index.html",
                       description="Export a ShapesWorld sample, embed it with the bundled CLIP, answer text "
                                   "queries by nearest neighbours and map the embeddings with PCA; with a "
                                   "generator pipeline, also write unCLIP pictures (text-to-image, variations, "
                                   "interpolation, text diff) with the settings that made them.")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    p.add_argument("--n", type=_args.positive_int, default=300, help="ShapesWorld scenes to embed")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--model", default="shapes-clip", metavar="SPEC", help="CLIP model (default: shapes-clip)")
    p.add_argument("--pipeline", default="auto", metavar="SPEC",
                   help="unCLIP pipeline folder or bundled name (default 'auto': shapes-unclip when bundled; "
                        "'none' skips the pictures)")
    g = p.add_argument_group("unCLIP pictures")
    g.add_argument("--captions", nargs="+", metavar="CAPTION", default=None,
                   help="text-to-image captions (rows of the grid)")
    g.add_argument("--n-seeds", type=_args.positive_int, default=2, help="text-to-image seeds (columns of the grid)")
    g.add_argument("--n-variations", type=_args.positive_int, default=3)
    g.add_argument("--n-frames", type=_args.at_least_two, default=5, help="interpolation frames")
    g.add_argument("--n-theta", type=_args.at_least_two, default=4, help="text-diff frames")
    g.add_argument("--theta-max", type=_args.fraction, default=0.5)
    c = g.add_mutually_exclusive_group()
    c.add_argument("--full-cascade", action="store_true",
                   help="run both upsamplers on one text-to-image cell (default: the first only)")
    c.add_argument("--no-upsample", action="store_true", help="stay at the decoder's resolution")
    p.add_argument("--no-progress", action="store_true")
    _args.add_sampling_args(p, invert=True)
    return p


def run(args: argparse.Namespace) -> int:
    from explorer.demo import DEMO_CAPTIONS, GeneratorSettings, run_demo
    generator = GeneratorSettings(
        captions=tuple(args.captions) if args.captions else DEMO_CAPTIONS, n_seeds=args.n_seeds,
        n_variations=args.n_variations, n_frames=args.n_frames, n_theta=args.n_theta, theta_max=args.theta_max,
        sampling=_args.sampling_overrides(args) or None,
        cascade_stages=2 if args.full_cascade else 0 if args.no_upsample else None)
    index = run_demo(args.out, n=args.n, seed=args.seed, model=args.model, progress=not args.no_progress,
                     pipeline=args.pipeline, generator=generator)
    print(f"demo written: open {index}")
    return 0


COMMANDS = [Command("demo", add_parser, run)]
