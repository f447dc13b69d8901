"""`unclip-explorer import karlo PATH --out DIR`: convert a local Karlo folder (diffusers layout) into our format."""
from __future__ import annotations

import argparse
from pathlib import Path

from explorer.commands import Command


def _karlo_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("path", metavar="PATH", help="local Karlo folder (prior/, decoder/, text_proj/, super_res_first/, "
                                                "super_res_last/, text_encoder/, tokenizer/, *_scheduler/)")
    p.add_argument("--out", required=True, metavar="DIR", help="our pipeline folder to write (load it with "
                                                               "UnCLIP.load or --model DIR)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="storage dtype of the converted stages (default float32; models load as float32)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR when it exists")
    return p


def _run_karlo(args: argparse.Namespace) -> int:
    from unclip_core.families.karlo import import_karlo
    from unclip_core.checkpoint import read_pipeline
    out = import_karlo(args.path, args.out, overwrite=args.overwrite, dtype=args.dtype)
    dirs, _ = read_pipeline(out)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    print(f"imported Karlo {args.path} -> {out}: stages {', '.join(dirs)} + clip/ ({size / 2**30:.2f} GiB); "
          f"load it with UnCLIP.load({str(out)!r})")
    return 0


def _import_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("import", help="convert third-party checkpoints into our format")
    isub = p.add_subparsers(dest="import_kind", metavar="{karlo}", required=True)
    _karlo_args(isub.add_parser("karlo", help="Karlo (kakaobrain/karlo-v1-alpha) in diffusers layout",
                                description="Map every tensor of a local Karlo folder onto our prior, decoder "
                                            "and upsamplers; copy its CLIP text encoder; write DIR atomically."))
    return p


COMMANDS = [Command("import", _import_parser, _run_karlo)]
