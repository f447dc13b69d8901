"""The Python facade of the analyses: interpolate, text_diff, project, pca_reconstructions, metrics.

Each call takes a model spec (pipeline folder or bundled name) or a loaded UnCLIP, runs the pure function
of analyses/, and with `out=DIR` writes a folder: PNGs with provenance, a labelled grid, a CSV of the
numbers, an index.html report and settings.json (analysis, model, seeds, settings, library versions).
Every file is written atomically (temporary file, then rename).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from analyses.interpolation import InterpolationResult
from analyses.interpolation import interpolate as _interpolate
from analyses.metrics import metric_table
from analyses.projection import Projection, fit_projection, projection_frame, scatter
from analyses.recon import Judge, PCAReconResult
from analyses.recon import pca_reconstructions as _pca_reconstructions
from analyses.text_diff import TextDiffResult
from analyses.text_diff import text_diff as _text_diff
from explorer.grids import make_grid, save_grid, write_report
from unclip_core.atomic import write_text
from explorer.api import load_pipeline
from explorer.records import run_record, save_png, write_record
from explorer.store import ClipRetrievalStore, EmbeddingStore, open_store
from unclip_core.checks import check_choice, check_embeddings, check_same_dim
from unclip_core.sampling import SamplingConfig



# ------------------------------------------------------------------------------------------- helpers
def _out_folder(out: str | Path) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"out={str(folder)!r} exists and is not a folder; pass a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_settings(folder: Path, analysis: str, model: Mapping[str, Any] | None, settings: Mapping[str, Any],
                   files: Sequence[str]) -> Path:
    """folder/settings.json: the run record (explorer.records.run_record) with `analysis` naming the analysis."""
    record = run_record(analysis, settings=settings, model=model, seed=settings.get("seed"), files=files)
    record["analysis"] = analysis
    return write_record(folder, record)


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    return write_text(path, df.to_csv(index=False))


def _write_frames(folder: Path, result: InterpolationResult | TextDiffResult, meta: dict[str, Any],
                  col_labels: list[str], title: str, analysis: str) -> None:
    """frame-KKK.png for each frame, grid.png, frames.csv, index.html, settings.json."""
    files = []
    for k, image in enumerate(result.images):
        save_png(image, folder / f"frame-{k:03d}.png", {**meta, "frame": k})
        files.append(f"frame-{k:03d}.png")
    grid = make_grid([result.images], None, col_labels)
    save_grid(grid, folder / "grid.png", meta)
    _write_csv(folder / "frames.csv", result.frame)
    files += ["grid.png", "frames.csv", "index.html"]
    write_report(folder, title, [{"image": "grid.png", "title": title, "settings": result.settings}])
    write_settings(folder, analysis, meta.get("model_info"), result.settings, files)


# ------------------------------------------------------------------------------------------- generation analyses
@dataclass
class VariationsResult:
    """A variations grid (rows: noise levels for Stable unCLIP's sweep, else one row), its images and numbers."""

    image: Any
    images: list[Any]
    frame: pd.DataFrame
    settings: dict[str, Any]


def variations(model: Any, image: Any, *, n: int = 4, noise_levels: Sequence[int] | None = None,
               prompt: str | None = None, seed: int = 0, sampling: SamplingConfig | Mapping[str, Any] | None = None,
               upsample: bool | int | None = None, out: str | Path | None = None) -> VariationsResult:
    """Image variations (Ramesh et al. 2022, sec. 3.1): the image's z_i decoded n times from fresh noise. With
    noise_levels (Stable unCLIP): one row per level from the same noises (analyses.variations.noise_level_sweep).
    frame: one row per variation with its CLIP cosine to the input. With out=DIR writes variation-KKK.png
    (provenance), grid.png, variations.csv, index.html and settings.json."""
    from analyses.variations import noise_level_sweep
    from unclip_core.imageio import load_image
    pipe = load_pipeline(model)
    src = load_image(image)
    sc = pipe.variation_sampling()
    if sampling is not None:
        sc = sampling if isinstance(sampling, SamplingConfig) else sc.replace(**dict(sampling))
    if noise_levels is not None:
        sweep = noise_level_sweep(pipe, src, levels=noise_levels, n=n, sampling=sc, prompt=prompt, seed=seed,
                                  upsample=upsample)
        images = [im for row in sweep.rows for im in row[1:]]
        result = VariationsResult(sweep.image, images, sweep.frame, dict(sweep.settings))
    else:
        out_ = pipe.variations(src, n=n, sampling=sc, seed=seed, upsample=upsample, prompt=prompt)
        z0 = pipe.encode_images([src])[0]
        sims = (pipe.encode_images(out_.images) @ z0).tolist()
        frame = pd.DataFrame({"index": range(n), "sim_original": [float(v) for v in sims]})
        grid = make_grid([[src.resize(out_.images[0].size)] + list(out_.images)], None,
                         ["input"] + [f"#{k}" for k in range(n)])
        result = VariationsResult(grid, list(out_.images), frame,
                                  {"analysis": "variations", **out_.settings, **pipe.describe()})
    result.settings["image"] = str(image) if isinstance(image, (str, Path)) else "image"
    if out is not None:
        folder = _out_folder(out)
        info = pipe.describe()
        meta = {**result.settings, "model": info["model"]}
        files = []
        for k, im in enumerate(result.images):
            save_png(im, folder / f"variation-{k:03d}.png", {**meta, "index": k})
            files.append(f"variation-{k:03d}.png")
        save_grid(result.image, folder / "grid.png", meta)
        _write_csv(folder / "variations.csv", result.frame)
        title = "Variations" + (f" over noise levels {list(noise_levels)}" if noise_levels is not None else "")
        write_report(folder, title, [{"image": "grid.png", "title": title, "settings": result.settings}])
        write_settings(folder, "variations", info, result.settings,
                       files + ["grid.png", "variations.csv", "index.html"])
    return result


def interpolate(model: Any, a: Any, b: Any, *, n_steps: int = 8, x_T_mode: str = "fixed", text_as: str = "prior",
                seed: int = 0, sampling: SamplingConfig | Mapping[str, Any] | None = None,
                upsample: bool | int | None = None, out: str | Path | None = None) -> InterpolationResult:
    """Interpolate between two images or captions (Ramesh et al. 2022, fig. 4); see analyses.interpolation.

    sampling: a SamplingConfig, or a dict of its fields over the pipeline's own settings (None: the pipeline's).
    With out=DIR writes frame-KKK.png (provenance), grid.png, frames.csv, index.html and settings.json.
    """
    pipe = load_pipeline(model)
    result = _interpolate(pipe, a, b, n_steps=n_steps, x_T_mode=x_T_mode, text_as=text_as, seed=seed,
                          sampling=sampling, upsample=upsample)
    if out is not None:
        info = pipe.describe()
        meta = {**result.settings, "model": info["model"], "model_info": info}
        _write_frames(_out_folder(out), result, meta, [f"t={t:.2f}" for t in result.frame["t"]],
                      f"Interpolation: {result.settings['a']} -> {result.settings['b']}", "interpolate")
    return result


def text_diff(model: Any, image: Any, old_caption: str, new_caption: str, *, theta_max: float = 0.5,
              n_steps: int = 6, baseline: str = "caption", neutral_caption: str = "a picture",
              x_T_mode: str = "inverted", seed: int = 0, sampling: SamplingConfig | Mapping[str, Any] | None = None,
              upsample: bool | int | None = None, out: str | Path | None = None) -> TextDiffResult:
    """Text diff of an image from old_caption to new_caption (Ramesh et al. 2022, fig. 5); see analyses.text_diff.

    sampling: a SamplingConfig, or a dict of its fields over the pipeline's own settings (None: the pipeline's).
    With out=DIR writes frame-KKK.png (provenance), grid.png, frames.csv, index.html and settings.json.
    """
    pipe = load_pipeline(model)
    result = _text_diff(pipe, image, old_caption, new_caption, theta_max=theta_max, n_steps=n_steps,
                        baseline=baseline, neutral_caption=neutral_caption, x_T_mode=x_T_mode, seed=seed,
                        sampling=sampling, upsample=upsample)
    if out is not None:
        info = pipe.describe()
        settings = {**result.settings, "image": str(image) if isinstance(image, (str, Path)) else "image"}
        result.settings = settings
        meta = {**settings, "model": info["model"], "model_info": info}
        _write_frames(_out_folder(out), result, meta, [f"theta={t:.2f}" for t in result.frame["theta"]],
                      f"Text diff: {old_caption!r} -> {new_caption!r}", "text_diff")
    return result


def _fit_vectors(store: EmbeddingStore, kind: str | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, row indices) of a store, restricted to rows of `kind` when the store has a kind column."""
    try:
        Z, rows, _ = store.select(kind)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return Z, rows


def pca_reconstructions(model: Any, images: Sequence[Any], *, fit_store: EmbeddingStore | str | Path | None = None,
                        Z_fit: np.ndarray | None = None, ks: Sequence[int] | None = None, seed: int = 0,
                        sampling: SamplingConfig | Mapping[str, Any] | None = None, judge: Judge | None = None,
                        upsample: bool | int | None = None, kind: str | None = "image",
                        out: str | Path | None = None) -> PCAReconResult:
    """PCA-truncated reconstructions (Ramesh et al. 2022, fig. 7) with a PCA of fit_store's (or Z_fit's) vectors.

    fit_store: an embedding store made with the pipeline's CLIP model (its rows of `kind`, default images).
    With out=DIR writes grid.png, recon.csv, index.html and settings.json.
    """
    pipe = load_pipeline(model)
    if (fit_store is None) == (Z_fit is None):
        raise ValueError("pass exactly one of fit_store (an embedding store of images) or Z_fit (an (n, dim) array)")
    source = "Z_fit"
    if fit_store is not None:
        store = open_store(fit_store, "fit_store")
        store.check_model(pipe.clip.model_id, pipe.clip.spec)
        Z_fit, _ = _fit_vectors(store, kind, "fit_store")
        source = str(store.path)
    result = _pca_reconstructions(pipe, images, Z_fit, ks=ks, seed=seed, sampling=sampling, judge=judge,
                                  upsample=upsample)
    result.settings["fit"] = source
    if out is not None:
        folder = _out_folder(out)
        info = pipe.describe()
        save_grid(result.image, folder / "grid.png", {**result.settings, "model": info["model"], "model_info": info})
        _write_csv(folder / "recon.csv", result.frame)
        write_report(folder, "PCA reconstructions", [{"image": "grid.png", "title": "PCA reconstructions",
                                                      "settings": result.settings}])
        write_settings(folder, "pca_reconstructions", info, result.settings, ["grid.png", "recon.csv", "index.html"])
    return result


# ------------------------------------------------------------------------------------------- embedding analyses
@dataclass
class ProjectResult:
    """A projection of a store: the tidy frame (coordinates + metadata), its scatter figure, the fit."""

    frame: pd.DataFrame
    figure: go.Figure
    projection: Projection
    settings: dict[str, Any]


def store_map(store: EmbeddingStore | str | Path, *, config: Any = None, kind: str | None = None,
              color: str | None = None, sample: int = 20_000, out: str | Path | None = None) -> Any:
    """A map of a store of any size (analyses.store_maps.map_store: streamed PCA, or UMAP on a sample), cached in
    STORE/maps. With out=DIR writes map.html (every point as a density, `sample` of them as markers coloured by
    `color`; offline), sample.csv and settings.json (which names the cached coordinates file)."""
    from analyses.store_maps import MapConfig, map_store, overview_figure, sample_positions
    store = open_store(store, "store")
    meta_cols = None
    if color is not None:
        meta_cols = store.metadata.columns
        if color not in meta_cols:
            raise ValueError(f"color={color!r} is not a metadata column of the store; columns: "
                             f"{', '.join(map(str, meta_cols))}")
    m = map_store(store, config=config if config is not None else MapConfig(), kind=kind)
    if out is not None:
        folder = _out_folder(out)
        pos = sample_positions(len(m.coords), sample, m.config.seed)
        rows = pos if m.rows is None else m.rows[pos]
        meta = store.metadata
        frame = meta.iloc[rows][[c for c in ("id", "caption", color) if c is not None and c in meta.columns]]
        frame = frame.loc[:, ~frame.columns.duplicated()].reset_index(drop=True)
        frame.insert(0, "row", rows)
        xy = np.asarray(m.coords[pos])
        frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
        fig = overview_figure(m, frame, color=color)
        write_text(folder / "map.html", fig.to_html(include_plotlyjs=True, full_html=True))
        _write_csv(folder / "sample.csv", frame)
        write_settings(folder, "map", {"model": store.model_spec, "model_id": store.model_id},
                       {**m.record, "coords_file": str(m.path), "color": color, "sample": int(len(frame)),
                        "from_cache": m.from_cache}, ["map.html", "sample.csv"])
    return m


def project(store: EmbeddingStore | str | Path, method: str = "umap", n_components: int = 2, seed: int | None = 0,
            color: str | None = None, hover: Sequence[str] | None = None, kind: str | None = None,
            out: str | Path | None = None, **kw: Any) -> ProjectResult:
    """Project a store's vectors with PCA, UMAP or t-SNE (fit_projection), joined with its metadata.

    color: a metadata column for the scatter's colours; hover: columns shown on hover (default id, source).
    kind: keep only rows of that kind ("image" / "text"). With out=DIR writes scatter.html (interactive,
    plotly.js inlined so it opens offline), points.csv and settings.json. kw go to the estimator.
    """
    store = open_store(store, "store")
    check_choice("method", method, ("pca", "umap", "tsne"))
    meta = store.metadata
    if color is not None and color not in meta.columns:
        raise ValueError(f"color={color!r} is not a metadata column of the store; columns: "
                         f"{', '.join(map(str, meta.columns))}")
    hover = [c for c in ("id", "source") if c in meta.columns] if hover is None else list(hover)
    Z, rows = _fit_vectors(store, kind, "store")
    proj = fit_projection(Z, method=method, n_components=n_components, seed=seed, **kw)
    frame = projection_frame(proj, meta.iloc[rows].reset_index(drop=True))
    fig = scatter(frame, color=color, hover=hover, title=f"{method.upper()} of {store.path.name}")
    settings = {"method": method, "n_components": n_components, "seed": seed, "color": color, "kind": kind,
                "n_points": int(len(frame)), "store": str(store.path), "params": {k: repr(v) for k, v in
                                                                                   proj.params.items()}}
    if out is not None:
        folder = _out_folder(out)
        write_text(folder / "scatter.html", fig.to_html(include_plotlyjs=True, full_html=True))
        _write_csv(folder / "points.csv", frame)
        write_settings(folder, "project", {"model": store.model_spec, "model_id": store.model_id}, settings,
                       ["scatter.html", "points.csv"])
    return ProjectResult(frame, fig, proj, settings)


def _embeddings(name: str, x: Any, kind: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """(n, dim) float array and a description, from a store, a store folder or an array."""
    if isinstance(x, (EmbeddingStore, ClipRetrievalStore, str, Path)):
        store = open_store(x, name)
        Z, _ = _fit_vectors(store, kind, name)
        check_embeddings(name, Z)
        return Z, {"store": str(store.path), "model": store.model_spec, "model_id": store.model_id}
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    check_embeddings(name, x)
    return np.asarray(x), {"array": list(np.shape(x))}


def metrics(real: Any, fake: Any, text_emb: Any = None, k: int = 5, kind: str | None = "image",
            out: str | Path | None = None) -> pd.DataFrame:
    """FD, CMMD and PRDC of fake against real embeddings (stores or (n, dim) arrays); see analyses.metrics.

    kind: rows of stores kept (default images). With out=DIR writes metrics.csv and settings.json.
    """
    R, real_info = _embeddings("real", real, kind)
    F, fake_info = _embeddings("fake", fake, kind)
    check_same_dim("real", R, "fake", F)
    if "model_id" in real_info and "model_id" in fake_info and real_info["model_id"] != fake_info["model_id"]:
        raise ValueError(f"real was embedded with {real_info['model']!r} ({real_info['model_id']}) but fake with "
                         f"{fake_info['model']!r} ({fake_info['model_id']}); embed both with the same CLIP model")
    from analyses.metrics import check_metric_rows
    check_metric_rows(R, F, k, names=(f"real ({real_info.get('store', real_info.get('path', 'array'))}"
                                      f"{', kind ' + kind if kind else ''})",
                                      f"fake ({fake_info.get('store', fake_info.get('path', 'array'))}"
                                      f"{', kind ' + kind if kind else ''})"))
    T = None
    if text_emb is not None:
        T, _ = _embeddings("text_emb", text_emb, "text")
    df = metric_table(R, F, text_emb=T, k=k)
    if out is not None:
        folder = _out_folder(out)
        _write_csv(folder / "metrics.csv", df)
        model = {"model": real_info.get("model"), "model_id": real_info.get("model_id")}
        write_settings(folder, "metrics", model, {"k": k, "kind": kind, "real": real_info, "fake": fake_info,
                                                  "seed": None}, ["metrics.csv"])
    return df


# ------------------------------------------------------------------------------------------- projections of stores
def project_rows(store: EmbeddingStore | str | Path, rows: Sequence[int], *, method: str = "pca",
                 kind: str | None = "image", seed: int = 0) -> tuple[pd.DataFrame, Projection]:
    """Re-project a subset of a store's rows of `kind` (positions among those rows) -> (frame, projection)."""
    store = open_store(store, "store")
    Z, _, meta = store.select(kind)
    rows = np.asarray(sorted(set(int(r) for r in rows)), dtype=np.int64)
    if rows.size == 0:
        raise ValueError("the selection is empty; drag a box or lasso over some points first")
    if rows.min() < 0 or rows.max() >= len(Z):
        raise ValueError(f"rows must lie in [0, {len(Z)}) (the store's rows of kind {kind!r}), got "
                         f"{int(rows.min())}..{int(rows.max())}")
    proj = fit_projection(Z[rows], method=method, seed=seed)
    return projection_frame(proj, meta.iloc[rows].reset_index(drop=True)), proj


def custom_axes(store: EmbeddingStore | str | Path, encoder: Any, x_pair: tuple[str, str], y_pair: tuple[str, str],
                *, kind: str | None = "image") -> pd.DataFrame:
    """Embedding Projector's custom axes: x = cos(z, d1), y = cos(z, d2), d = text_diff_direction(z_t(a), z_t(b)).

    Returns the store's rows of `kind` with columns x, y and their metadata.
    """
    from analyses.latent_math import normalize, text_diff_direction
    store = open_store(store, "store")
    store.check_model(encoder.model_id, encoder.spec)
    captions = [*x_pair, *y_pair]
    if len(captions) != 4 or any(not isinstance(c, str) or not c.strip() for c in captions):
        raise ValueError("custom axes need four captions: x = (a, b) and y = (a, b); one of them is empty")
    z_t = np.asarray(encoder.encode_text(captions), dtype=np.float64)
    d1 = text_diff_direction(z_t[0], z_t[1])
    d2 = text_diff_direction(z_t[2], z_t[3])
    Z, _, meta = store.select(kind)
    Zu = normalize(Z.astype(np.float64))
    return projection_frame(np.stack([Zu @ d1, Zu @ d2], axis=1), meta)
