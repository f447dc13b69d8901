"""The `unclip-explorer` command line: one explicit table of commands, each defined in explorer/commands/.

To add a command, write its `add_parser(subparsers)` and `run(args)` in a module of explorer/commands, list it in
that module's COMMANDS, and (for a new module) add the module to TABLE below. Errors a user can fix print one line
(`error: ...`, exit code 2); `--debug` anywhere on the line shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from explorer.commands import (Command, analysis, binding, dashboard, demo, evaluate, generate, importers,
                               inspect, shapes, store, train)
from explorer.store.format import _tool_version
from explorer.threads import apply_default_threads

# errors a user can fix; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, FileExistsError)

# every command, in the order `unclip-explorer --help` lists them
TABLE: tuple[Command, ...] = (*store.COMMANDS, *shapes.COMMANDS, *analysis.COMMANDS, *generate.COMMANDS,
                              *inspect.COMMANDS, *demo.COMMANDS, *evaluate.COMMANDS, *binding.COMMANDS,
                              *train.COMMANDS, *importers.COMMANDS, *dashboard.COMMANDS)


# ----------------------------------------------------------------------------------------- main
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
    names = [c.name for c in TABLE]
    if len(set(names)) != len(names):
        raise RuntimeError(f"explorer/cli.py TABLE names a command twice: {sorted(n for n in names if names.count(n) > 1)}")
    for command in TABLE:
        command.add_parser(sub).set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `unclip-explorer`; returns the exit code (2 for a user error, printed on one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut]  # accepted anywhere on the line, before a "--"
    argv = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the error (or the help): pass its code on
        return int(exc.code or 0)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        apply_default_threads()  # the idle cores, or UNCLIP_THREADS (explorer/threads.py)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    show = warnings.formatwarning
    if not debug:  # a warning is a line for the user ("warning: ..."), not a source location
        warnings.formatwarning = lambda message, category, *_a, **_k: f"warning: {' '.join(str(message).split())}\n"
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted (rerun the same command to resume an embed)", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = show


if __name__ == "__main__":
    sys.exit(main())
