"""Subcommands of `unclip-explorer` added without editing explorer/cli.py.

Each module here defines `add_parser(subparsers) -> ArgumentParser` and `run(args) -> int`; the command's
name is the module's name with "_" read as "-" (grid_report.py -> `unclip-explorer grid-report`).
"""
