"""`unclip-explorer evaluate MODEL --out DIR`: the ShapesWorld quality bars (docs/evaluation.md)."""
from __future__ import annotations

import argparse
from explorer.commands import Command, _args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="measure an unCLIP family against the ShapesWorld quality bars",
                       description="Decoder reconstruction, text-to-image, binding (prior vs true z_i), CMMD/FD "
                                   "with a real-vs-real floor, upsampler PSNR vs bicubic and variations, scored "
                                   "by the bundled read-out. Writes per_image.csv, one CSV per measure, "
                                   "summary.json and evaluation.md (the model-card section) into DIR.")
    p.add_argument("model", metavar="MODEL", help="pipeline folder or bundled name, e.g. shapes-unclip")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n", type=_args.positive_int, default=100, help="scenes per measure (binding: per category; default 100)")
    p.add_argument("--seed", type=_args.seed, default=0, help="evaluation seed; pick one unused in training")
    p.add_argument("--n-upsample", type=_args.positive_int, default=16, help="scenes per upsampler (at most --n)")
    p.add_argument("--n-variation-images", type=_args.positive_int, default=8,
                   help="source images of variations (at most --n; the bar wants 100)")
    p.add_argument("--n-two-object-t2i", type=_args.nonnegative_int, default=50,
                   help="two-object captions whose text -> image is reported per object (default 50; 0 skips)")
    p.add_argument("--n-variations", type=_args.at_least_two, default=4, help="variations per source image")
    p.add_argument("--batch-size", type=_args.positive_int, default=16)
    p.add_argument("--measures", nargs="+", default=None, metavar="NAME",
                   help="subset of: reconstruction text_to_image binding distribution upsamplers variations")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _args.add_sampling_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from explorer.evaluate import MEASURES, EvalSettings, evaluate_family
    from explorer.api import load_pipeline

    settings = EvalSettings(sampling=_args.sampling_overrides(args) or None, n_upsample=args.n_upsample,
                            n_variation_images=args.n_variation_images, n_variations=args.n_variations,
                            batch_size=args.batch_size, n_two_object_t2i=args.n_two_object_t2i)
    pipe = load_pipeline(args.model)
    result = evaluate_family(pipe, n=args.n, seed=args.seed, out=args.out, progress=not args.no_progress,
                             settings=settings, measures=args.measures or MEASURES)
    for b in result.summary["bars"]:
        print(f"{b['name']}: {b['value']:.3f} (bar >= {b['bar']:.2f}) {'pass' if b['pass'] else 'MISS'}")
    print(f"wrote per_image.csv, summary.json and evaluation.md to {args.out}")
    return 0


COMMANDS = [Command("evaluate", add_parser, run)]
