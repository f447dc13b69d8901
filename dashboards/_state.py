"""Display glue shared by the dashboard pages: settings from the command line, cached loaders, error display.

Nothing here computes a number a page shows: the helpers load models and stores (behind st.cache_resource),
turn uploads and chart selections into library inputs, and show user errors as messages in the page.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from explorer import analysis_api

ENV_STORE = "UNCLIP_EXPLORER_STORE"
ENV_MODEL = "UNCLIP_EXPLORER_MODEL"
DEFAULT_GENERATOR = "shapes-unclip"
DEFAULT_CLIP = "shapes-clip"
# errors a user can fix (explorer.cli.USER_ERRORS): shown in the page; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError)
MAX_THUMBNAILS = 24


# ------------------------------------------------------------------------------------------- settings
def default_model() -> str | None:
    """The generator spec: --model (env UNCLIP_EXPLORER_MODEL), else 'shapes-unclip' when bundled, else None."""
    spec = os.environ.get(ENV_MODEL, "").strip()
    if spec:
        return spec
    from unclip_core.checkpoint import list_bundled
    return DEFAULT_GENERATOR if DEFAULT_GENERATOR in list_bundled() else None


def default_store() -> str:
    """The store folder given with --store (env UNCLIP_EXPLORER_STORE), or ''."""
    return os.environ.get(ENV_STORE, "").strip()


def show_error(exc: BaseException) -> None:
    """A user error as one st.error line (no traceback)."""
    st.error(" ".join(str(exc).split()) or type(exc).__name__)


def attempt(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """fn(*args, **kw), or None after showing a user error (ValueError, TypeError, missing file) with st.error."""
    try:
        return fn(*args, **kw)
    except USER_ERRORS as exc:
        show_error(exc)
        return None


# ------------------------------------------------------------------------------------------- cached loaders
@st.cache_resource(show_spinner="Loading the unCLIP pipeline…", max_entries=4)
def load_pipe(spec: str) -> Any:
    """An UnCLIP for a pipeline folder or bundled name, loaded once per process."""
    from explorer import load_pipeline
    return load_pipeline(spec)


@st.cache_resource(show_spinner="Loading CLIP…", max_entries=4)
def load_clip(spec: str) -> Any:
    """A CLIP encoder for a spec (explorer.load_encoder), loaded once per process."""
    from explorer import load_encoder
    return load_encoder(spec)


def _store_stamp(path: Path) -> float:
    manifest = path / "store.json"
    return manifest.stat().st_mtime_ns if manifest.is_file() else 0.0


@st.cache_resource(max_entries=8)
def _open_store(path: str, stamp: float) -> Any:
    from explorer import open_store
    store = open_store(path)
    store.metadata  # read the parquet once per version of the store
    return store


def open_store(path: str | Path) -> Any:
    """An EmbeddingStore, cached until its store.json changes (an append reloads it)."""
    path = Path(str(path).strip()).expanduser()
    if not str(path) or str(path) == ".":
        raise ValueError("no store folder given; type the folder of an embedding store (made with "
                         "`unclip-explorer embed`) or embed captions on the spot")
    return _open_store(str(path.resolve()), _store_stamp(path))


@st.cache_resource(show_spinner="Projecting…", max_entries=16)
def project_store(path: str, stamp: float, method: str, kind: str | None, seed: int) -> Any:
    """explorer.project of a store (cached per store version, method, kind and seed)."""
    from explorer import project
    return project(open_store(path), method=method, kind=kind, seed=seed)


# stores above this many rows get the large-map view: a streamed map (analyses.store_maps) drawn as a density with
# a sample of markers, selections resolved against every point
LARGE_MAP_ROWS = 200_000
MAP_SAMPLE = 20_000


@st.cache_resource(show_spinner="Mapping the store (streamed; cached beside it)…", max_entries=8)
def map_large_store(path: str, stamp: float, method: str, kind: str | None, seed: int) -> Any:
    """analyses.store_maps.map_store of a store (cached per store version, method, kind and seed)."""
    from analyses.store_maps import MapConfig, map_store
    return map_store(open_store(path), config=MapConfig(method=method, seed=seed), kind=kind, progress=False)


@st.cache_resource(max_entries=8)
def large_map_overview(path: str, stamp: float, method: str, kind: str | None, seed: int,
                       color: str | None) -> tuple[Any, pd.DataFrame]:
    """(figure, sample frame) of a large map: density of every point plus MAP_SAMPLE markers."""
    from analyses.store_maps import overview_figure, sample_positions
    m = map_large_store(path, stamp, method, kind, seed)
    store = open_store(path)
    pos = sample_positions(len(m.coords), MAP_SAMPLE, seed)
    rows = pos if m.rows is None else m.rows[pos]
    meta = store.metadata
    cols = [c for c in ("id", "caption", color) if c is not None and c in meta.columns]
    sample = meta.iloc[rows][list(dict.fromkeys(cols))].reset_index(drop=True)
    sample.insert(0, "row", rows)
    xy = np.asarray(m.coords[pos])
    sample["x"], sample["y"] = xy[:, 0], xy[:, 1]
    fig = overview_figure(m, sample, color=color)
    return fig, sample


def region_of(event: Any) -> dict[str, Any] | None:
    """The box or lasso of a plotly selection event, as rows_in_region's keyword (box= / polygon=), or None."""
    if event is None:
        return None
    selection = event.get("selection", {}) if isinstance(event, Mapping) else getattr(event, "selection", {})
    get = selection.get if isinstance(selection, Mapping) else (lambda k, d=None: getattr(selection, k, d))
    for box in get("box", []) or []:
        if box.get("x") and box.get("y"):
            return {"box": (tuple(box["x"][:2]), tuple(box["y"][:2]))}
    for lasso in get("lasso", []) or []:
        if lasso.get("x") and len(lasso["x"]) >= 3:
            return {"polygon": np.column_stack([lasso["x"], lasso["y"]])}
    return None


# ------------------------------------------------------------------------------------------- inputs
def read_upload(uploaded: Any, name: str = "upload") -> Image.Image:
    """An RGB PIL image from a Streamlit UploadedFile (or bytes); ValueError naming the file when it is no image."""
    data = uploaded.getvalue() if hasattr(uploaded, "getvalue") else bytes(uploaded)
    label = getattr(uploaded, "name", name)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception:  # PIL raises several types for non-images
        raise ValueError(f"{label!r} is not an image PIL can read ({len(data)} bytes); "
                         "upload a PNG, JPEG or WebP file") from None


def prompt_problem(encoder: Any, prompt: str) -> str | None:
    """Why a prompt cannot be used as typed (empty, or longer than the CLIP context), else None."""
    if not isinstance(prompt, str) or not prompt.strip():
        return "the prompt is empty; type a caption such as 'a red circle left of a blue square'"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder.tokenize([prompt])  # warns when the prompt is truncated to the context length
    for w in caught:
        text = str(w.message)
        if "context length" in text or "truncated" in text:
            return (f"the prompt is too long for {getattr(encoder, 'spec', 'this CLIP model')}: {text}. "
                    "Shorten it; the model would only read its beginning")
    return None


def png_bytes(image: Image.Image, meta: Mapping[str, Any]) -> bytes:
    """PNG bytes with `meta` embedded as provenance (explorer.records.save_png, read back)."""
    from explorer.records import save_png
    with tempfile.TemporaryDirectory(prefix="unclip-png-") as tmp:
        path = save_png(image, Path(tmp) / "image.png", dict(meta))
        return path.read_bytes()


def session_dir(name: str) -> Path:
    """A temporary folder private to this browser session (embedding stores made on the spot, live runs)."""
    key = f"_dir_{name}"
    if key not in st.session_state:
        st.session_state[key] = tempfile.mkdtemp(prefix=f"unclip-dash-{name}-")
    return Path(st.session_state[key])


def add_to_gallery(image: Image.Image, label: str, meta: Mapping[str, Any]) -> None:
    """Keep an image and its settings in this session's gallery."""
    st.session_state.setdefault("gallery", []).append({"image": image, "label": label, "meta": dict(meta)})


def image_result(image: Image.Image, label: str, meta: Mapping[str, Any], key: str) -> None:
    """Buttons under a result: download as PNG with its settings embedded, add to the session gallery."""
    c1, c2 = st.columns(2)
    c1.download_button("Download PNG", png_bytes(image, meta), file_name=f"{key}.png", mime="image/png",
                       key=f"dl_{key}", help="The PNG carries its model, seed and settings in a text chunk "
                                             "(read it with explorer.records.read_png_meta).")
    if c2.button("Add to gallery", key=f"gal_{key}"):
        add_to_gallery(image, label, meta)
        st.toast(f"added {label!r} to the gallery")


# ------------------------------------------------------------------------------------------- display
# legend entries named after a colour are drawn in that colour (ShapesWorld colours, or any CSS colour name)
NAMED_COLOURS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4", "yellow": "#e6c200", "purple": "#9467bd",
                 "orange": "#ff7f0e", "black": "#222222", "white": "#bbbbbb", "grey": "#7f7f7f", "gray": "#7f7f7f",
                 "pink": "#e377c2", "brown": "#8c564b", "cyan": "#17becf"}


def name_colour(trace: Any) -> None:
    """Draw a trace named after a colour ('red') in that colour."""
    colour = NAMED_COLOURS.get(str(getattr(trace, "name", "")).strip().lower())
    if colour is not None:
        trace.update(marker_color=colour)


def name_colours(fig: Any) -> Any:
    """name_colour on every trace of a figure; returns the figure."""
    fig.for_each_trace(name_colour)
    return fig


def few_valued(meta: pd.DataFrame, columns: Sequence[str], max_values: int = 20) -> str | None:
    """The first column with 2..max_values distinct values (a sensible default to colour a map by), or None."""
    for c in columns:
        try:
            n = meta[c].nunique(dropna=True)
        except TypeError:  # unhashable cells (lists): not a colouring column
            continue
        if 2 <= n <= max_values:
            return c
    return None


def image_width(image: Image.Image, target: int = 160) -> int:
    """Display width: small images scaled up by a whole factor to about `target` px, large ones kept."""
    w = image.size[0]
    return w if w >= target else w * max(1, target // w)


# ------------------------------------------------------------------------------------------- projections
def selected_rows(event: Any, frame: pd.DataFrame) -> list[int]:
    """Rows of `frame` picked in a plotly selection event (st.plotly_chart on_select): via the 'row' customdata.

    The chart must be drawn from a frame with a 'row' column passed first in hover (customdata[0]).
    """
    if event is None:
        return []
    selection = event.get("selection", {}) if isinstance(event, Mapping) else getattr(event, "selection", {})
    points = selection.get("points", []) if isinstance(selection, Mapping) else getattr(selection, "points", [])
    rows = []
    for p in points or []:
        custom = p.get("customdata") if isinstance(p, Mapping) else None
        if custom is not None and len(custom):
            rows.append(int(custom[0]))
    valid = set(range(len(frame)))
    return sorted({r for r in rows if r in valid})


def chart_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The projection frame with a 'row' column (its position), so a selection maps back to rows."""
    return frame.assign(row=np.arange(len(frame)))


def project_rows(store: Any, rows: Sequence[int], method: str, kind: str | None, seed: int) -> Any:
    return analysis_api.project_rows(store, rows, method=method, kind=kind, seed=seed)


def custom_axes(store: Any, encoder: Any, x_pair: tuple[str, str], y_pair: tuple[str, str],
                kind: str | None) -> pd.DataFrame:
    return analysis_api.custom_axes(store, encoder, x_pair, y_pair, kind=kind)


def thumbnail_paths(meta: pd.DataFrame, store_path: Path, limit: int = MAX_THUMBNAILS) -> list[tuple[Path, str]]:
    """(image file, caption) for the image rows of a metadata table whose source file exists."""
    out = []
    if "source" not in meta.columns:
        return out
    for _, r in meta.iterrows():
        if r.get("kind", "image") != "image":
            continue
        src = Path(str(r["source"]))
        for cand in (src, store_path / src, store_path.parent / src):
            if cand.is_file():
                out.append((cand, str(r.get("caption", r.get("id", "")))))
                break
        if len(out) >= limit:
            break
    return out




def sampling_widget(pipe: Any, key: str = "sampling") -> Any:
    """The sidebar's sampling controls, each starting at the pipeline's own setting (pipe.sampling, from its
    pipeline.json) -> the SamplingConfig every tool of the page uses. The one dashboard builder of one."""
    from unclip_core.samplers import get_sampler, sampler_names

    base = pipe.sampling
    names = list(sampler_names())
    st.header("Sampling")
    st.caption(f"Defaults: {getattr(pipe, 'name', 'the pipeline')}'s pipeline.json")
    dec_sampler = st.selectbox("decoder sampler", names, index=names.index(base.decoder_sampler),
                               key=f"{key}_decoder_sampler")
    steps = st.slider("decoder steps", 1, 100, base.decoder_steps, key=f"{key}_decoder_steps")
    guidance = st.number_input("decoder guidance scale", 0.0, 20.0, float(base.decoder_guidance), 0.5,
                               key=f"{key}_decoder_guidance",
                               help="Classifier-free guidance; 1 = none. The paper uses ~1.25 for FID, Karlo 8.")
    eta = 0.0
    if get_sampler(dec_sampler).honours_eta:
        eta = st.slider("eta (text → image)", 0.0, 1.0, float(base.eta), 0.1, key=f"{key}_eta",
                        help="DDIM's eta: 0 deterministic (invertible); variations use 1 unless set below.")
    with st.expander("prior"):
        prior_sampler = st.selectbox("prior sampler", names, index=names.index(base.prior_sampler),
                                     key=f"{key}_prior_sampler")
        prior_steps = st.slider("prior steps", 1, 100, base.prior_steps, key=f"{key}_prior_steps",
                                help="The paper samples the prior with 64 steps and keeps the best of 2 by z_i·z_t.")
        prior_guidance = st.number_input("prior guidance", 0.0, 20.0, float(base.prior_guidance), 0.5,
                                         key=f"{key}_prior_guidance")
        best_of = int(st.number_input("best of", 1, 8, base.best_of, key=f"{key}_best_of"))
    noise_level = base.noise_level
    if getattr(pipe.decoder.config, "noise_augmented", False):  # Stable unCLIP: how much of z_i the decoder sees
        noise_level = st.slider("noise level (z_i)", 0, 999, int(base.noise_level), 25, key=f"{key}_noise_level",
                                help="The forward-process step the image embedding is noised to before the decoder "
                                     "reads it: 0 keeps the image, higher levels give more varied images.")
    precision = st.selectbox("precision", ["fp32", "bf16", "fp16"], index=["fp32", "bf16", "fp16"].index(base.precision),
                             key=f"{key}_precision", help="bf16 autocast runs ~1.5x faster on CPUs with native bf16")
    with st.expander("inversion"):
        invert_guidance = st.number_input("inversion guidance", 0.0, 20.0, float(base.invert_guidance), 0.5,
                                          key=f"{key}_invert_guidance",
                                          help="Guidance of DDIM inversion and of frames decoded from an inverted "
                                               "x_T; at 1 they reconstruct the input.")
        refine = int(st.number_input("fixed-point iterations per step", 0, 8, base.invert_refine,
                                     key=f"{key}_refine"))
    return attempt(base.replace, decoder_sampler=dec_sampler, decoder_steps=steps, decoder_guidance=guidance,
                   eta=eta, prior_sampler=prior_sampler, prior_steps=prior_steps, prior_guidance=prior_guidance,
                   best_of=best_of, invert_guidance=invert_guidance, invert_refine=refine, precision=precision,
                   noise_level=noise_level)
