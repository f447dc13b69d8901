"""`unclip-explorer shapes export OUT`: write ShapesWorld scenes (images/*.png + captions.jsonl + meta.json)."""
from __future__ import annotations

import argparse
import json

from explorer.commands import Command, _args


# ----------------------------------------------------------------------------------------- shapes
def _shapes_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("shapes", help="ShapesWorld data")
    ssub = p.add_subparsers(dest="shapes_command", metavar="{export}", required=True)
    e = ssub.add_parser("export", help="write images/*.png + captions.jsonl of random scenes")
    e.add_argument("out", metavar="OUT")
    e.add_argument("--n", type=_args.positive_int, default=200, help="number of scenes (default 200)")
    e.add_argument("--seed", type=_args.seed, default=0)
    e.add_argument("--size", type=_args.positive_int, default=64, help="image side in pixels (default 64)")
    e.add_argument("--split", default="train", help="train, held_out or all (default train)")
    e.add_argument("--world", type=int, default=None, metavar="VERSION",
                   help="ShapesWorld version (default: the one the bundled models were trained on)")
    e.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _shapes_run(args: argparse.Namespace) -> int:
    from explorer import api
    out = api.export_shapes(args.out, n=args.n, seed=args.seed, size=args.size, split=args.split,
                            overwrite=args.overwrite, progress=not args.no_progress, world=args.world)
    world = json.loads((out / "meta.json").read_text(encoding="utf-8"))["world"]
    print(f"wrote {args.n} ShapesWorld v{world} scenes ({args.split}, seed {args.seed}, {args.size}px) to {out}")
    return 0


COMMANDS = [Command("shapes", _shapes_parser, _shapes_run)]
