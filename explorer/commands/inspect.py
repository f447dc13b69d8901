"""`unclip-explorer inspect PNG`: print the provenance record a generated PNG carries."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from explorer.commands import Command


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("inspect", help="show how a generated PNG was made (model, seed, settings)")
    p.add_argument("png", metavar="PNG")
    return p


def run(args: argparse.Namespace) -> int:
    from explorer.records import read_png_meta
    path = Path(args.png)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    from PIL import UnidentifiedImageError
    try:
        meta = read_png_meta(path)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL raises SyntaxError on some broken headers
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}); pass a PNG written by "
                         "`unclip-explorer generate` (or any command that saves PNGs)") from None
    except json.JSONDecodeError:
        raise ValueError(f"{path} has an unclip-explorer text chunk that is not valid JSON; the file was "
                         "edited or truncated after it was written") from None
    if not meta:
        raise ValueError(f"{path} carries no unclip-explorer provenance record (it was not saved by this tool)")
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


COMMANDS = [Command("inspect", add_parser, run)]
