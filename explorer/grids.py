"""Grids and reports on disk: labelled PNG grids with provenance, and an index.html showing PNGs with settings."""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from analyses.tiling import grid_geometry, make_grid
from unclip_core.atomic import write_text
from explorer.records import read_png_meta, save_png

__all__ = ["make_grid", "grid_geometry", "save_grid", "write_report", "write_text"]


def save_grid(image: Image.Image, path: str | Path, settings: Mapping[str, Any]) -> Path:
    """Save a grid (or any image) as PNG with `settings` in its provenance text chunk, atomically."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image (e.g. from make_grid), got {type(image).__name__}")
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a dict of what made the image, got {type(settings).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (grids are saved as PNG with provenance), got {path.name!r}")
    return save_png(image, path, dict(settings))


def _settings_table(settings: Mapping[str, Any]) -> str:
    rows = []
    for key in sorted(settings, key=str):
        value = settings[key]
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>" if rows else ""


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}figure{margin:0 0 2.5em 0}"
        "img{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}"
        "table{border-collapse:collapse;font-size:12px;margin-top:.5em}"
        "th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4}")


def write_report(folder: str | Path, title: str, items: Sequence[Mapping[str, Any]]) -> Path:
    """Write folder/index.html showing each item's PNG with its title, caption and settings table.

    items: dicts with "image" (a PNG path, absolute or relative to folder, or a PIL image, which is saved as
    folder/<name or item-K>.png with its settings), optional "title", "caption", "settings" (dict; default:
    the PNG's provenance record) and "name". Returns the path of index.html.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"folder {folder} exists and is not a directory; pass a folder path")
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a list of dicts with an 'image' key, got {type(items).__name__}")
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for k, item in enumerate(items):
        if not isinstance(item, Mapping) or "image" not in item:
            raise ValueError(f"items[{k}] must be a dict with an 'image' key (PNG path or PIL image), got {item!r:.80}")
        image, settings = item["image"], item.get("settings")
        if settings is not None and not isinstance(settings, Mapping):
            raise TypeError(f"items[{k}]['settings'] must be a dict, got {type(settings).__name__}")
        if isinstance(image, Image.Image):
            name = str(item.get("name") or f"item-{k:03d}")
            path = save_png(image, folder / f"{name}.png", dict(settings or {}))
        elif isinstance(image, (str, Path)):
            path = Path(image) if Path(image).is_absolute() else folder / image
            if not path.is_file():
                raise FileNotFoundError(f"items[{k}]['image']: no such file {path}; write the PNG first")
            if settings is None:
                settings = read_png_meta(path) if path.suffix.lower() == ".png" else {}
        else:
            raise TypeError(f"items[{k}]['image'] must be a PNG path or a PIL image, got {type(image).__name__}")
        src = Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
        parts.append("<figure>")
        if item.get("title"):
            parts.append(f"<h2>{html.escape(str(item['title']))}</h2>")
        parts.append(f"<img src='{html.escape(src, quote=True)}' alt='{html.escape(str(item.get('title', src)))}'>")
        if item.get("caption"):
            parts.append(f"<figcaption>{html.escape(str(item['caption']))}</figcaption>")
        parts.append(_settings_table(settings or {}))
        parts.append("</figure>")
    parts.append("</body></html>\n")
    return write_text(folder / "index.html", "\n".join(parts))
