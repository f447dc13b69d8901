"""`unclip-explorer binding {make-suite,convert,run,compare}`: variable-binding suites (docs/binding.md)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from explorer.commands import Command, _args

FORMATS = ("aro", "winoground", "sugarcrepe", "geneval")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("binding", help="variable-binding suites: make, convert, run, compare",
                       description="Variable-binding probes: CLIP-level (true caption vs foils, Winoground), "
                                   "representation-level (linear probes) and generation-level (judged images).")
    bsub = p.add_subparsers(dest="binding_command", metavar="{make-suite,convert,run,compare}", required=True)

    m = bsub.add_parser("make-suite", help="write the built-in ShapesWorld suite (every category, train and "
                                           "held-out compositions)")
    m.add_argument("--n", type=_args.positive_int, default=500, help="number of cases (default 500)")
    m.add_argument("--seed", type=_args.seed, default=0)
    m.add_argument("--world", type=int, default=None, metavar="VERSION",
                   help="ShapesWorld version of the scenes (default: the one the bundled shapes-clip was "
                        "trained on)")
    m.add_argument("--kinds", default="caption_pair,winoground,generation",
                   help="comma-separated case kinds (default all three)")
    m.add_argument("--out", required=True, metavar="SUITE.jsonl")

    c = bsub.add_parser("convert", help="convert a public benchmark on disk (ARO, Winoground, SugarCrepe, "
                                        "GenEval) into a suite")
    c.add_argument("format", choices=FORMATS)
    c.add_argument("source", metavar="SOURCE", help="the benchmark's JSON/JSONL file (Winoground: its folder)")
    c.add_argument("--images", metavar="DIR", default=None, help="image folder (ARO, SugarCrepe)")
    c.add_argument("--out", required=True, metavar="SUITE.jsonl")

    r = bsub.add_parser("run", help="run a suite; rerun the same command to resume a killed run")
    r.add_argument("suite", metavar="SUITE")
    r.add_argument("--model", required=True, metavar="SPEC",
                   help="CLIP model (e.g. shapes-clip) or pipeline (e.g. shapes-unclip; needed for --generate)")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--generate", action="store_true", help="also run the generation-level cases")
    r.add_argument("--n-images", type=_args.positive_int, default=2, help="images per generation case and path (default 2)")
    r.add_argument("--seed", type=_args.seed, default=0)
    r.add_argument("--image-size", type=_args.positive_int, default=64, help="render size of ShapesWorld scenes (default 64)")
    r.add_argument("--probe-n", type=_args.nonnegative_int, default=600, help="scenes for the linear probes (0: skip)")
    r.add_argument("--batch-size", type=_args.positive_int, default=32, help="cases per resumable CLIP-level batch")
    r.add_argument("--upsample", action="store_true", help="--generate: also run the upsamplers (slow on a CPU; "
                                                          "the judge reads the decoder's images by default)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _args.add_sampling_args(r)  # --generate's sampling

    k = bsub.add_parser("compare", help="per-category differences of two runs with McNemar / paired bootstrap")
    k.add_argument("run_a", metavar="RUN_A")
    k.add_argument("run_b", metavar="RUN_B")
    k.add_argument("--out", metavar="CSV", default=None, help="also write the table as CSV")
    k.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    k.add_argument("--shared-cases", action="store_true",
                   help="compare runs of different suites on the case ids both hold (refused otherwise)")
    return p


def _make_suite(args: argparse.Namespace) -> int:
    from analyses.binding_suite import make_suite
    from explorer.binding import write_suite
    kinds = [s.strip() for s in args.kinds.split(",") if s.strip()]
    from unclip_core.clip import bundled_world
    world = bundled_world() if args.world is None else args.world
    cases = make_suite(args.n, args.seed, kinds=kinds, world=world)
    path = write_suite(cases, args.out)
    print(f"wrote {len(cases)} ShapesWorld v{world} cases (seed {args.seed}) to {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from analyses import binding_formats as bf
    from explorer.binding import write_suite
    if args.format in ("aro", "sugarcrepe") and args.images is None:
        raise ValueError(f"{args.format} needs --images DIR, the folder its image paths are relative to")
    if args.format == "aro":
        cases = bf.load_aro(args.source, args.images)
    elif args.format == "sugarcrepe":
        cases = bf.load_sugarcrepe(args.source, args.images)
    elif args.format == "winoground":
        cases = bf.load_winoground(args.source)
    else:
        cases = bf.load_geneval(args.source)
    path = write_suite(cases, args.out)
    print(f"wrote {len(cases)} {args.format} cases to {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from explorer.binding import run_suite
    # the ShapesWorld judge reads the decoder's output; the upsamplers cost minutes per image on a CPU
    folder = run_suite(args.suite, args.model, args.out, generate=args.generate, n_images=args.n_images,
                       seed=args.seed, probes=args.probe_n > 0, probe_n=max(args.probe_n, 0),
                       image_size=args.image_size, batch_size=args.batch_size,
                       sampling=_args.sampling_overrides(args), upsample=args.upsample, progress=not args.no_progress)
    summary = folder / "summary.csv"
    if summary.is_file():
        import pandas as pd
        df = pd.read_csv(summary)
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"report: {folder / 'index.html'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from explorer.binding import compare_runs
    df = compare_runs(args.run_a, args.run_b, shared_cases=args.shared_cases)
    if args.out:
        from unclip_core.atomic import atomic_write
        atomic_write(Path(args.out), lambda tmp: df.to_csv(tmp, index=False))
    if args.json:
        print(json.dumps(json.loads(df.to_json(orient="records")), indent=1))
    else:
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def run(args: argparse.Namespace) -> int:
    return {"make-suite": _make_suite, "convert": _convert, "run": _run,
            "compare": _compare}[args.binding_command](args)


COMMANDS = [Command("binding", add_parser, run)]
