"""`torchrun --nproc_per_node=N -m explorer.embed INPUT --model SPEC --out STORE [embed options]`.

Distributed embedding: the `unclip-explorer embed` command with --distributed (explorer/store/distributed.py).
"""
from __future__ import annotations

import sys

from explorer.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:], "--distributed"]))
