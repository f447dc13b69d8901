"""Run records and output files, the one home for them: every command's settings.json and every PNG it saves.

A run record says exactly how an output was made: the command, the model (spec, id, hashes), the seed(s), every
setting, the files written, the tool, Python and library versions, the platform and the time. PNGs carry their
own record in a text chunk (read it back with `unclip-explorer inspect PNG`). All writes are atomic
(unclip_core.atomic) and published with the usual file permissions.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, PngImagePlugin

from unclip_core.atomic import atomic_write, write_json
from unclip_core.provenance import add_signature

META_KEY = "unclip-explorer"
SETTINGS_FILE = "settings.json"


def tool_version() -> str:
    """This package's version (the pyproject's in a source checkout that is not installed)."""
    try:
        from importlib.metadata import version
        return version("unclip-explorer")
    except Exception:
        return "0.1.0"


def versions() -> dict[str, str]:
    """Versions of this tool, Python and the libraries that shape the numbers."""
    import numpy as np
    import pandas as pd
    import torch
    out = {"unclip_explorer": tool_version(), "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "pandas": pd.__version__}
    for name, mod in (("open_clip", "open_clip"), ("pillow", "PIL"), ("sklearn", "sklearn")):
        try:
            out[name] = str(__import__(mod).__version__)
        except Exception:  # a missing optional library only drops its line
            pass
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_record(command: str, *, settings: Mapping[str, Any], model: Mapping[str, Any] | None = None,
               seed: Any = None, files: Sequence[str] = ()) -> dict[str, Any]:
    """The record a command writes as settings.json: {command, model, seed, settings, files, versions, platform,
    created}. `seed` is the seed (or seeds) actually used, never None for a seeded computation."""
    return {"command": command, "model": dict(model) if model is not None else None, "seed": seed,
            "settings": dict(settings), "files": sorted(files), "versions": versions(),
            "platform": platform.platform(), "created": now()}


def write_record(folder: str | Path, record: Mapping[str, Any], name: str = SETTINGS_FILE) -> Path:
    """folder/settings.json (atomic, sorted keys, non-JSON values as str)."""
    return write_json(Path(folder) / name, dict(record))


def save_png(image: Image.Image, path: str | Path, meta: Mapping[str, Any], signature: bool = False) -> Path:
    """Write `image` as PNG with `meta` (JSON) in a text chunk, atomically; `signature` adds the visible mark."""
    path = Path(path)
    if signature:
        image = add_signature(image)
    info = PngImagePlugin.PngInfo()
    info.add_text(META_KEY, json.dumps(dict(meta), sort_keys=True, default=str))
    for key in ("model", "seed", "prompt"):
        if key in meta:
            info.add_text(key, str(meta[key]))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), fsync=False)


def read_png_meta(path: str | Path) -> dict[str, Any]:
    """The record saved by `save_png`, or {} when the PNG has none."""
    with Image.open(path) as im:
        raw = im.text.get(META_KEY) if hasattr(im, "text") else None
    return json.loads(raw) if raw else {}
