"""`unclip-explorer dashboard [--store DIR] [--model SPEC] [--port N]`: the Streamlit dashboards on localhost."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from explorer.commands import Command, _args

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("dashboard", help="open the Streamlit dashboards (latent lab, projections, binding)",
                       description="Start the dashboards with Streamlit on localhost and print their address. "
                                   "Without --model the latent lab uses the bundled 'shapes-unclip' when present.")
    p.add_argument("--store", metavar="DIR", default=None, help="embedding store opened on the Projections page "
                                                                "and used to fit PCA reconstructions")
    p.add_argument("--model", metavar="SPEC", default=None, help="unCLIP pipeline folder or bundled name for the "
                                                                 "latent lab (default: shapes-unclip when bundled)")
    p.add_argument("--port", type=_args.port, default=8501, help="port on localhost (default 8501)")
    p.add_argument("--address", default="localhost", help="address to listen on (default localhost)")
    return p


def command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The streamlit command line and environment for `args`, after checking them (ValueError on bad input)."""
    if isinstance(args.port, bool) or not isinstance(args.port, int) or not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be an integer in 1..65535, got {args.port!r}; e.g. --port 8501")
    env = dict(os.environ)
    if args.store is not None:
        from explorer.store import EmbeddingStore
        store = EmbeddingStore.open(args.store)  # FileNotFoundError / ValueError say how to make one
        env["UNCLIP_EXPLORER_STORE"] = str(store.path.resolve())
    if args.model is not None:
        from unclip_core.checkpoint import PIPELINE_FILE, resolve
        folder = resolve(args.model)
        if not (folder / PIPELINE_FILE).is_file():
            raise ValueError(f"--model {args.model!r} is not an unCLIP pipeline ({folder} has no {PIPELINE_FILE}); "
                             "pass a pipeline folder (prior + decoder + CLIP), e.g. from `unclip-explorer train`")
        env["UNCLIP_EXPLORER_MODEL"] = str(folder.resolve())
    if not APP.is_file():
        raise FileNotFoundError(f"the dashboard app {APP} is missing; reinstall unclip-explorer")
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(args.port),
           "--server.address", args.address, "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--global.developmentMode", "false", "--client.toolbarMode", "minimal"]
    return cmd, env


def run(args: argparse.Namespace) -> int:
    cmd, env = command(args)
    print(f"unclip-explorer dashboard: http://{args.address}:{args.port} (Ctrl-C to stop; server PID {os.getpid()})",
          flush=True)
    # this process becomes the Streamlit server (exec, same PID): no wrapper is left whose death, even by SIGKILL,
    # could leave a server running, and the printed PID is the server's
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


COMMANDS = [Command("dashboard", add_parser, run)]
