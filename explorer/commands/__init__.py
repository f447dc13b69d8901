"""The subcommands of `unclip-explorer`, one module per family of commands.

Each module lists its commands in `COMMANDS` (a list of `Command`); explorer/cli.py joins those lists in one explicit
table, so adding a command is: write its `add_parser(subparsers) -> ArgumentParser` and `run(args) -> int`, add a
`Command` to its module's COMMANDS, and (for a new module) one line in cli.py's table. Shared argument types live in
`_args.py`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    """A subcommand: `add_parser(subparsers)` builds its parser, `run(args)` does the work, returns an exit code."""

    name: str
    add_parser: Callable[[argparse._SubParsersAction], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]
