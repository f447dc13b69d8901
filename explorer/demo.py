"""The demo job of README command 1: a ShapesWorld sample embedded with the bundled CLIP, neighbour queries,
a PCA map of the embeddings and, when the bundled generator is present, unCLIP pictures; one index.html.
"""
from __future__ import annotations

import base64
import html
import io
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from explorer import api
from explorer.store import atomic_write

QUERIES = ("a red circle left of a blue square", "a small yellow star at the top",
           "a green hexagon above a purple triangle")


def _thumb(path: Path, size: int = 64) -> str:
    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _neighbour_table(store_dir: Path, export_dir: Path, query: str, k: int) -> tuple[pd.DataFrame, str]:
    df = api.neighbors(store_dir, text=query, k=k)
    cells = []
    for _, row in df.iterrows():
        src = Path(str(row["source"]))
        img = src if src.is_absolute() else export_dir / src
        pic = f'<img src="{_thumb(img)}" width="64">' if row["kind"] == "image" and img.is_file() else ""
        cells.append(f"<td>{pic}<br><small>{row['score']:.3f}</small></td>")
    return df, f"<h3>{html.escape(query)}</h3><table><tr>{''.join(cells)}</tr></table>"


def run_demo(out: str | Path, n: int = 300, seed: int = 0, model: str = "shapes-clip", k: int = 6,
             progress: bool = True) -> Path:
    """Write the demo folder `out` (index.html, the export, the store, neighbours.csv, pca.html, settings.json)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_dir = out / "shapes"
    if not (export_dir / "captions.jsonl").is_file():
        api.export_shapes(export_dir, n=n, seed=seed, size=64, progress=progress)
    store_dir = out / "store"
    store = api.embed(export_dir, model, store_dir, kind="image", progress=progress)
    sections, tables = [], []
    for query in QUERIES:
        df, block = _neighbour_table(store_dir, export_dir, query, k)
        tables.append(df.assign(query=query))
        sections.append(block)
    atomic_write(out / "neighbours.csv", lambda p: pd.concat(tables).to_csv(p, index=False))

    from analyses.projection import fit_projection, projection_frame, scatter
    meta = store.metadata
    proj = fit_projection(store.vectors, method="pca", n_components=2, seed=seed)
    frame = projection_frame(proj, meta)
    colour = next((c for c in ("scene.objects.0.colour", "caption") if c in frame.columns), None)
    fig = scatter(frame, color=colour, hover=[c for c in ("source", "caption") if c in frame.columns] or None)
    fig.update_layout(title=f"PCA of {len(store)} image embeddings ({model}), coloured by the first object's colour")
    atomic_write(out / "pca.html", lambda p: fig.write_html(p, include_plotlyjs=True))
    settings = {"n": n, "seed": seed, "model": model, "model_id": store.model_id, "k": k, "queries": list(QUERIES),
                "seconds": round(time.perf_counter() - t0, 1), "python": platform.python_version()}
    atomic_write(out / "settings.json", lambda p: Path(p).write_text(json.dumps(settings, indent=2)))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>unclip-explorer demo</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}} td{{text-align:center;padding:4px}}
img{{image-rendering:pixelated;border:1px solid #ccc}}</style></head><body>
<h1>unclip-explorer demo</h1>
<p>{n} ShapesWorld scenes (seed {seed}) embedded with <code>{html.escape(model)}</code>
(model id <code>{store.model_id}</code>); text queries answered by exact cosine nearest neighbours
among the image embeddings. Scores are cosine similarities.</p>
{''.join(sections)}
<h2>Projection</h2><p><a href="pca.html">Interactive PCA map of the embeddings</a>
(explained variance of the two axes: {', '.join(f'{v:.1%}' for v in proj.explained_variance_ratio_)}).</p>
<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre></body></html>"""
    atomic_write(out / "index.html", lambda p: Path(p).write_text(page, encoding="utf-8"))
    return out / "index.html"
