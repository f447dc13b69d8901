"""The `unclip-explorer` command line: one small module-level command per capability, registered in COMMANDS.

To add a command, put a module in explorer/commands/ defining `add_parser(subparsers) -> ArgumentParser`
and `run(args) -> int` (it is found by name, no edit here), or call `register(Command(name, add_parser, run))`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from explorer.store import DTYPES, INPUT_KINDS, MANIFEST, _tool_version
from explorer.commands import _args

# errors a user can fix; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError)


@dataclass(frozen=True)
class Command:
    """A subcommand: `add_parser(subparsers)` builds its parser, `run(args)` does the work, returns an exit code."""

    name: str
    add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = []


def register(command: Command) -> Command:
    """Add a subcommand (replacing one of the same name)."""
    COMMANDS[:] = [c for c in COMMANDS if c.name != command.name] + [command]
    return command


def _truncate(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


# ----------------------------------------------------------------------------------------- embed
def _embed_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("embed", help="embed images and/or captions into an embedding store",
                       description="Embed an image folder, a captions.jsonl (ShapesWorld export), a .txt "
                                   "(one caption per line) into STORE. Rerun a killed call to resume.")
    p.add_argument("input", metavar="INPUT", help="image folder, captions.jsonl, export folder or .txt")
    p.add_argument("--model", required=True, metavar="SPEC", help="CLIP model, e.g. shapes-clip")
    p.add_argument("--out", required=True, metavar="STORE", help="store folder (created or appended to)")
    p.add_argument("--kind", choices=INPUT_KINDS, default=None,
                   help="what to embed (default: folder->image, .txt->text, captions.jsonl->both)")
    p.add_argument("--batch-size", type=_args.positive_int, default=64)
    p.add_argument("--chunk-size", type=_args.positive_int, default=1024, help="rows per resumable chunk")
    p.add_argument("--dtype", choices=DTYPES, default="float16")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable image files and record them in store.json (default: refuse them)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _embed_run(args: argparse.Namespace) -> int:
    from explorer import api
    before = 0
    try:
        before = len(api.open_store(args.out))
    except FileNotFoundError:
        pass
    store = api.embed(args.input, args.model, args.out, kind=args.kind, batch_size=args.batch_size,
                      chunk_size=args.chunk_size, dtype=args.dtype, progress=not args.no_progress,
                      skip_bad=args.skip_bad)
    print(f"{store.path}: {len(store)} vectors ({len(store) - before} new), dim {store.dim}, {store.dtype}, "
          f"model {store.model_spec}")
    skipped = store._manifest.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s), listed in {store.path / MANIFEST}: "
              + ", ".join(s["source"] for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return 0


# ----------------------------------------------------------------------------------------- neighbors
def _neighbors_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("neighbors", help="nearest neighbours (exact cosine) in an embedding store")
    p.add_argument("store", metavar="STORE")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="query caption")
    q.add_argument("--image", metavar="PATH", help="query image file")
    q.add_argument("--id", help="id of a row of the store")
    p.add_argument("-k", type=_args.positive_int, default=10, help="number of neighbours (default 10)")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help="encoder for --text/--image (default: the store's model)")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    return p


def _neighbors_run(args: argparse.Namespace) -> int:
    from explorer import api
    store = api.open_store(args.store)
    df = api.neighbors(store, text=args.text, image=args.image, id=args.id, k=args.k, model=args.model)
    cols = ["rank", "score", "id", "kind", "source"]
    if args.json:
        print(json.dumps(df[cols].to_dict(orient="records"), indent=1))
        return 0
    id_w = min(max(len("id"), *(len(str(i)) for i in df["id"])), 40)
    print(f"{'rank':>4}  {'score':>7}  {'id':<{id_w}}  source")
    for r in df.itertuples():
        print(f"{r.rank:>4}  {r.score:>7.4f}  {_truncate(r.id, id_w):<{id_w}}  {_truncate(r.source, 70)}")
    return 0


# ----------------------------------------------------------------------------------------- models
def _models_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the bundled models")
    p.add_argument("--json", action="store_true")
    return p


def _models_run(args: argparse.Namespace) -> int:
    from explorer import api
    df = api.list_models()
    if args.json:
        print(json.dumps(df.to_dict(orient="records"), indent=1))
    elif df.empty:
        print(f"no bundled models in {api.bundled_dir()}")
    else:
        print(df.to_string(index=False))
    return 0


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


for _command in (Command("embed", _embed_parser, _embed_run),
                 Command("neighbors", _neighbors_parser, _neighbors_run),
                 Command("models", _models_parser, _models_run),
                 Command("shapes", _shapes_parser, _shapes_run)):
    register(_command)


# ----------------------------------------------------------------------------------------- main
def discover_commands() -> list[Command]:
    """Commands defined by the modules of explorer/commands (module name, "_" -> "-")."""
    import explorer.commands as package
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if not (callable(getattr(module, "add_parser", None)) and callable(getattr(module, "run", None))):
            raise TypeError(f"explorer/commands/{info.name}.py must define add_parser(subparsers) and run(args)")
        found.append(Command(info.name.replace("_", "-"), module.add_parser, module.run))
    return found


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: `error: argument --steps: must be an integer >= 1, got '0'`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered command."""
    parser = _Parser(prog="unclip-explorer",
                                     description="unCLIP (DALL·E 2) in torch, with a workbench for CLIP latents")
    parser.add_argument("--version", action="version", version=f"unclip-explorer {_tool_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    discovered = discover_commands()  # importing a command module may register() more commands
    builtin = {c.name for c in COMMANDS}
    for command in COMMANDS + [c for c in discovered if c.name not in builtin]:
        command.add_parser(sub).set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `unclip-explorer`; returns the exit code (2 for a user error, printed on one line)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the error (or the help): pass its code on
        return int(exc.code or 0)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    show = warnings.formatwarning
    if not args.debug:  # a warning is a line for the user ("warning: ..."), not a source location
        warnings.formatwarning = lambda message, category, *_a, **_k: f"warning: {' '.join(str(message).split())}\n"
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted (rerun the same command to resume an embed)", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = show


if __name__ == "__main__":
    sys.exit(main())
