#!/usr/bin/env bash
# Set up unclip-explorer in ./.venv: the pinned torch pair, then the package with its test extras.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements-torch.txt
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, open_clip, unclip_core, explorer; print('unclip-explorer ready: torch', torch.__version__)"
