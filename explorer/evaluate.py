"""Quality bars of a ShapesWorld unCLIP family (Ramesh et al. 2022), scored GenEval-style by the read-out.

Six measures, each a function over a pipeline (duck-typed like unclip_core.pipeline.UnCLIP) and counts/seeds,
each returning a tidy DataFrame (one row per image and expected object): decoder reconstruction from the true
z_i, text -> image, held-out composition and two-object binding (prior vs true z_i), CMMD / FD in CLIP space
beside a real-vs-real noise floor, upsampler PSNR beside bicubic, and variations. `evaluate_family` runs them
all and writes per_image.csv, summary.json and evaluation.md. See docs/evaluation.md.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from analyses._pipe import check_pipe
from analyses.binding import model_world
from analyses.metrics import cmmd, frechet_distance
from explorer.records import now, versions
from unclip_core.atomic import atomic_write
from unclip_core.seeds import check_seed
from unclip_core.checks import check_choice, check_nonneg_float, check_positive_int
from unclip_core.data.readout import MIN_READ_SIZE, READ_SIZE, score_attributes
from unclip_core.data.shapes import (
    CAPTION_STYLES,
    CURRENT_WORLD,
    MAX_ANGLE,
    MAX_SIZE,
    MIN_SIZE,
    Scene,
    canonical,
    caption,
    foil_scenes,
    get_world,
    parse,
    render,
    sample_scene,
)
from unclip_core.imageio import pil_to_tensor
from unclip_core.sampling import SamplingConfig, check_sampling

# Bars of the ShapesWorld v2 family (issue 15): (measure, summary key, threshold); each is a rate in [0, 1] that
# must be >= threshold, reported with its 95% Wilson interval (summary key + "_lo" / "_hi", count key + "_n").
BARS: tuple[tuple[str, str, float], ...] = (
    ("reconstruction", "recon_one_object_all", 0.95),          # true z_i -> image, one object, every attribute
    ("reconstruction", "recon_two_object_per_object_all", 0.85),  # two objects, per object, every attribute
    ("text_to_image", "t2i_one_object_all_said", 0.90),         # one-object captions of training compositions
    ("variations", "variations_agreement_all", 0.90),           # every variation reads as its source, pixels differ
)
MEASURES: tuple[str, ...] = ("reconstruction", "text_to_image", "binding", "distribution", "upsamplers",
                             "variations")
BINDING_CATEGORIES: tuple[str, ...] = ("held_out", "colour_swap", "relation_order")
REAL_SIZE = 64          # side of the real renders whose CLIP z_i the decoder reconstructs
_PIPE_ATTRS = ("encode_images", "decode", "text_to_image", "upsample", "variations", "resolutions")


@dataclass(frozen=True)
class EvalSettings:
    """The counts of the costly measures, and `sampling`: a dict of SamplingConfig fields (or a whole one) over the
    pipeline's own settings (None: the pipeline's, which its pipeline.json sets: shapes-unclip samples 25 prior
    and 25 decoder DDIM steps). Variations start from pipe.variation_sampling() (DDIM eta 1)."""

    sampling: Any = None
    n_upsample: int = 16          # scenes per upsampler (the 256 -> 1024 stage is slow on a CPU)
    n_variation_images: int = 8   # source images of the variations measure
    n_variations: int = 4         # variations per source image
    min_pairwise_l1: float = 0.002  # mean |x_a - x_b| ([0, 1] units) above which variations "differ in pixels"
    caption_style: str = "plain"
    batch_size: int = 16
    n_two_object_t2i: int = 0     # two-object captions for the text -> image report (per object; 0 skips it)

    def __post_init__(self) -> None:
        for name in ("n_upsample", "n_variation_images", "batch_size"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("n_two_object_t2i", self.n_two_object_t2i, minimum=0)
        check_positive_int("n_variations", self.n_variations, minimum=2)
        check_nonneg_float("min_pairwise_l1", self.min_pairwise_l1)
        if self.sampling is not None and not isinstance(self.sampling, SamplingConfig):
            check_sampling(self.sampling, SamplingConfig())  # field names and values, before any work
            object.__setattr__(self, "sampling", dict(self.sampling))
        check_choice("caption_style", self.caption_style, CAPTION_STYLES)

    def resolve(self, pipe: Any) -> SamplingConfig:
        """The settings every measure samples with on `pipe` (sampling over pipe.sampling)."""
        return check_sampling(self.sampling, getattr(pipe, "sampling", None) or SamplingConfig())

    def resolve_variations(self, pipe: Any) -> SamplingConfig:
        """The settings of the variations measure (sampling over pipe.variation_sampling())."""
        base = pipe.variation_sampling() if hasattr(pipe, "variation_sampling") else SamplingConfig(eta=1.0)
        return check_sampling(self.sampling, base)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.sampling, SamplingConfig):
            d["sampling"] = self.sampling.to_dict()
        return d


@dataclass
class FamilyEvaluation:
    """Per-image tables of every measure, the summary (bars with pass/fail) and the model-card markdown."""

    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any]
    markdown: str


# ----------------------------------------------------------------------------------------------- helpers

def _check_pipe(pipe: Any) -> Any:
    return check_pipe(pipe, _PIPE_ATTRS)


def _check_seed(seed: int) -> int:
    return check_seed(seed)


def _settings(settings: EvalSettings | None) -> EvalSettings:
    if settings is None:
        return EvalSettings()
    if not isinstance(settings, EvalSettings):
        raise TypeError(f"settings must be an EvalSettings (or None for the defaults), got {type(settings).__name__}")
    return settings


def _streams(seed: int, measure: str) -> tuple[np.random.Generator, torch.Generator]:
    """Independent scene and noise streams per (seed, measure): every measure draws fresh scenes."""
    k = MEASURES.index(measure)
    ss = np.random.SeedSequence([seed, k])
    rng = np.random.default_rng(ss)
    g = torch.Generator().manual_seed(int(ss.spawn(1)[0].generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return rng, g


def render_at(scene: Scene, size: int) -> Image.Image:
    """The true render at any side: rendered directly within 32..1024, box-downsampled from 32+ below that."""
    if size >= MIN_SIZE:
        return render(scene, min(size, MAX_SIZE))
    k = math.ceil(MIN_SIZE / size)
    return render(scene, size * k).reduce(k)


def _readable(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, h) in [-1, 1] -> the same, bicubic-upscaled to READ_SIZE when below the read-out's minimum."""
    if x.shape[-1] >= MIN_READ_SIZE:
        return x
    return F.interpolate(x.float(), size=(READ_SIZE, READ_SIZE), mode="bicubic", align_corners=False).clamp(-1, 1)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, as the image would be saved."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Peak signal-to-noise ratio 10 log10(1 / MSE) of two uint8 images in [0, 1] units; inf when equal."""
    if x.shape != y.shape:
        raise ValueError(f"psnr compares images of one shape, got {x.shape} and {y.shape}; resize one first")
    mse = float(np.mean((x.astype(np.float64) / 255.0 - y.astype(np.float64) / 255.0) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _score(images: torch.Tensor, expected: Sequence[Scene], **columns: Any) -> pd.DataFrame:
    """score_attributes on images (B, 3, h, h) + shape_colour_correct; extra columns are scalars or per-image lists."""
    df = score_attributes(_readable(images), list(expected))
    df["shape_colour_correct"] = (df["shape_correct"].fillna(False) & df["colour_correct"].fillna(False)).astype(bool)
    for k, v in columns.items():
        df[k] = [v[i] for i in df["image"]] if isinstance(v, (list, tuple)) else v
    return df


def _renumber(frames: list[pd.DataFrame], offsets: list[int]) -> pd.DataFrame:
    for df, off in zip(frames, offsets):
        df["image"] = df["image"] + off
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# Reconstruction, text -> image, binding and variations all decode from fresh noise and leave clip_denoised to
# the pipeline's one rule (UnCLIP.clip_denoised_rule: clamped from fresh noise), so every measure scores images
# made the same way; each table records the value the pipeline reports in its settings.
def _decoded(out: Any) -> tuple[torch.Tensor, bool | None]:
    """(decoder-stage images, the clip_denoised the output records; None when the pipeline records none)."""
    return out.stages["decoder"], dict(getattr(out, "settings", None) or {}).get("clip_denoised")


def _decode(pipe: Any, z_i: torch.Tensor, s: EvalSettings, g: torch.Generator) -> tuple[torch.Tensor, bool | None]:
    return _decoded(pipe.decode(z_i, sampling=s.resolve(pipe), upsample=False, seed=g))


def _t2i(pipe: Any, captions: list[str], s: EvalSettings, g: torch.Generator) -> tuple[torch.Tensor, bool | None]:
    return _decoded(pipe.text_to_image(captions, n=1, sampling=s.resolve(pipe), upsample=False, seed=g))


def _object_all(df: pd.DataFrame) -> pd.Series:
    """Per expected object: shape, colour, size and position all read right."""
    cols = ["shape_correct", "colour_correct", "size_correct", "position_correct"]
    return df[cols].fillna(False).astype(bool).all(axis=1)


def _rate_ci(m: dict[str, Any], key: str, hits: pd.Series) -> None:
    """m[key] = mean of boolean `hits`, with m[key_lo], m[key_hi] (95% Wilson) and m[key_n]."""
    from analyses.binding_stats import wilson_interval
    hits = hits.astype(bool)
    n, k = int(len(hits)), int(hits.sum())
    m[key] = k / n if n else math.nan
    m[f"{key}_lo"], m[f"{key}_hi"] = wilson_interval(k, n, 0.95) if n else (math.nan, math.nan)
    m[f"{key}_n"] = n


def _image_hits(df: pd.DataFrame, ok: pd.Series) -> pd.Series:
    """Per image: every expected object `ok` and the count right."""
    per = df.assign(_ok=ok.to_numpy()).groupby("image").agg(ok=("_ok", "all"), count=("count_correct", "first"))
    return per["ok"] & per["count"].fillna(False).astype(bool)


def _image_rate(df: pd.DataFrame, col: str = "shape_colour_correct") -> float:
    """Fraction of images whose every expected object has `col` True (and the count is right)."""
    if df.empty:
        return math.nan
    return float(_image_hits(df, df[col]).mean())


# ----------------------------------------------------------------------------------------------- measures

def measure_reconstruction(pipe: Any, n: int = 100, seed: int = 0, settings: EvalSettings | None = None) -> pd.DataFrame:
    """Decoder reconstruction (sec. 2.1): real render -> CLIP z_i -> decoder (and upsampler1) -> read-out.

    n one-object and n two-object training scenes. Rows: one per image, stage and expected object, with
    n_objects, stage ("decoder" / "upsampler1": the first settings.n_upsample scenes) and the read-out columns
    of score_attributes.
    """
    _check_pipe(pipe)
    n, s = check_positive_int("n", n), _settings(settings)
    rng, g = _streams(_check_seed(seed), "reconstruction")
    w = model_world(pipe)
    scenes = [sample_scene(rng, 1, world=w) for _ in range(n)] + [sample_scene(rng, 2, world=w) for _ in range(n)]
    frames, offsets = [], []
    for b0, batch in zip(range(0, len(scenes), s.batch_size), _batches(scenes, s.batch_size)):
        z_i = pipe.encode_images([render_at(sc, REAL_SIZE) for sc in batch])
        low, clipped = _decode(pipe, z_i, s, g)
        n_obj = [len(sc.objects) for sc in batch]
        frames.append(_score(low, batch, stage="decoder", n_objects=n_obj, clip_denoised=clipped))
        offsets.append(b0)
        k = min(len(batch), s.n_upsample - b0)  # the read-out after upsampler1, on the first n_upsample scenes
        if len(pipe.resolutions) > 1 and k > 0:
            high = pipe.upsample(low[:k], 0, sampling=s.resolve(pipe), seed=g)
            frames.append(_score(high, batch[:k], stage="upsampler1", n_objects=n_obj[:k], clip_denoised=clipped))
            offsets.append(b0)
    df = _renumber(frames, offsets)
    df.insert(0, "measure", "reconstruction")
    df["source"] = "true_z_i"
    return df


def measure_text_to_image(pipe: Any, n: int = 100, seed: int = 0,
                          settings: EvalSettings | None = None) -> pd.DataFrame:
    """Text -> prior -> decoder (fig. 2) on n one-object captions of training compositions (the bar) and
    settings.n_two_object_t2i two-object captions (reported per object); scores what is said.

    The expected scene is parse(caption), so only the attributes a caption states are scored.
    """
    _check_pipe(pipe)
    n, s = check_positive_int("n", n), _settings(settings)
    rng, g = _streams(_check_seed(seed), "text_to_image")
    w = model_world(pipe)
    captions = [caption(sample_scene(rng, 1, world=w), style=s.caption_style) for _ in range(n)]
    captions += [caption(sample_scene(rng, 2, world=w), style=s.caption_style) for _ in range(s.n_two_object_t2i)]
    counts = [1] * n + [2] * s.n_two_object_t2i
    frames = []
    for batch in _batches(captions, s.batch_size):
        x, clipped = _t2i(pipe, list(batch), s, g)
        frames.append(_score(x, [parse(c, world=w) for c in batch], caption=list(batch), clip_denoised=clipped))
    df = _renumber(frames, list(range(0, len(captions), s.batch_size)))
    df.insert(0, "measure", "text_to_image")
    df["source"], df["stage"] = "prior", "decoder"
    df["n_objects"] = [counts[i] for i in df["image"]]
    return df


def binding_cases(n: int, seed: int, *, world: int = CURRENT_WORLD) -> list[tuple[str, Scene]]:
    """(category, scene) cases: n held-out one-object scenes, n colour-swap and n relation-order pairs.

    A pair is a training scene and its foil (foil_scenes), both of training compositions only, so binding
    is not confounded with held-out composition; pairs come as consecutive cases (original, then foil).
    """
    n = check_positive_int("n", n)
    rng = np.random.default_rng(np.random.SeedSequence([_check_seed(seed), MEASURES.index("binding")]))
    held_out = get_world(world).held_out_pairs
    cases: list[tuple[str, Scene]] = [("held_out", canonical(sample_scene(rng, 1, split="held_out", world=world)))
                                      for _ in range(n)]
    for cat in ("colour_swap", "relation_order"):
        made = 0
        while made < n:
            truth = canonical(sample_scene(rng, 2, world=world))
            foil = dict(foil_scenes(truth)).get(cat)
            if foil is None or any((o.colour, o.shape) in held_out for o in foil.objects):
                continue
            cases += [(cat, truth), (cat, foil)]
            made += 1
    return cases


def measure_binding(pipe: Any, n: int = 50, seed: int = 0, settings: EvalSettings | None = None) -> pd.DataFrame:
    """Held-out compositions and two-object binding (sec. 5.1 notes unCLIP binds weakly): prior vs true z_i.

    Every case is generated twice: from its caption through the prior ("prior") and by decoding the CLIP z_i
    of its true render ("true_z_i"). Columns add category, pair (colour-swap / relation-order pairs share it),
    binding_correct (every object's shape and colour right where the caption puts it, count and relation right).
    """
    _check_pipe(pipe)
    s = _settings(settings)
    _, g = _streams(_check_seed(seed), "binding")
    cases = binding_cases(n, seed, world=model_world(pipe))
    cats = [c for c, _ in cases]
    pair = list(range(n)) + [n + i // 2 for i in range(2 * n)] + [2 * n + i // 2 for i in range(2 * n)]
    frames, offsets = [], []
    idx = list(range(len(cases)))
    for source in ("prior", "true_z_i"):
        for bi in _batches(idx, s.batch_size):
            scenes = [cases[i][1] for i in bi]
            caps = [caption(sc, style=s.caption_style) for sc in scenes]
            if source == "prior":
                x, clipped = _t2i(pipe, caps, s, g)
            else:
                x, clipped = _decode(pipe, pipe.encode_images([render_at(sc, REAL_SIZE) for sc in scenes]), s, g)
            frames.append(_score(x, scenes, source=source, category=[cats[i] for i in bi],
                                 pair=[pair[i] for i in bi], caption=caps, n_objects=[len(sc.objects) for sc in scenes],
                                 clip_denoised=clipped))
            offsets.append(bi[0] + (len(cases) if source == "true_z_i" else 0))
    df = _renumber(frames, offsets)
    df.insert(0, "measure", "binding")
    df["stage"] = "decoder"
    per = df.groupby("image").agg(ok=("shape_colour_correct", "all"), count=("count_correct", "first"),
                                  rel=("relation_correct", "first"))
    ok = per["ok"] & per["count"].fillna(False).astype(bool) & per["rel"].fillna(True).astype(bool)
    df["binding_correct"] = df["image"].map(ok).astype(bool)
    return df


def _rejitter(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same described scene with fresh jitter: an independent real render of the same caption."""
    shift = get_world(scene.world).max_shift
    objs = tuple(replace(o, dx=float(rng.uniform(-shift, shift)), dy=float(rng.uniform(-shift, shift)),
                         angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))) for o in scene.objects)
    return Scene(objs, scene.relation, scene.world)


def measure_distribution(pipe: Any, n: int = 100, seed: int = 0,
                         settings: EvalSettings | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CMMD (Jayasumana et al. 2024) and FD in CLIP space: generated vs real renders of the same captions.

    Beside them the noise floor: the same numbers between two independent real render sets of those captions.
    Returns (per-image table with the CLIP cosine of each generated image to its real render, metric table
    with columns comparison, metric, value, n).
    """
    _check_pipe(pipe)
    n, s = check_positive_int("n", n, minimum=2), _settings(settings)
    rng, g = _streams(_check_seed(seed), "distribution")
    scenes = [sample_scene(rng, world=model_world(pipe)) for _ in range(n)]
    caps = [caption(sc, style=s.caption_style) for sc in scenes]
    res = pipe.resolutions[0]
    made = [(_t2i(pipe, list(b), s, g), len(b)) for b in _batches(caps, s.batch_size)]
    gen = torch.cat([x for (x, _), _ in made])
    clipped = [c for (_, c), k in made for _ in range(k)]
    z_gen = pipe.encode_images([Image.fromarray(a) for a in _to_uint8(gen)])
    z_a = pipe.encode_images([render_at(sc, res) for sc in scenes])
    z_b = pipe.encode_images([render_at(_rejitter(sc, rng), res) for sc in scenes])
    rows = []
    for comp, x in (("generated_vs_real", z_gen), ("real_vs_real", z_b)):
        rows += [{"comparison": comp, "metric": "cmmd", "value": cmmd(x, z_a), "n": n},
                 {"comparison": comp, "metric": "fd", "value": frechet_distance(x, z_a), "n": n}]
    cos = F.cosine_similarity(torch.as_tensor(z_gen).float(), torch.as_tensor(z_a).float(), dim=-1)
    per = pd.DataFrame({"measure": "distribution", "image": range(n), "caption": caps, "source": "prior",
                        "stage": "decoder", "n_objects": [len(sc.objects) for sc in scenes],
                        "clip_cos_to_real": cos.numpy().astype(float), "clip_denoised": clipped})
    return per, pd.DataFrame(rows)


def measure_upsamplers(pipe: Any, n: int = 16, seed: int = 0, settings: EvalSettings | None = None) -> pd.DataFrame:
    """Super-resolution (sec. 2.1 cascade): PSNR of upsample(true low-res render) and of bicubic vs the true render.

    One row per scene and upsampler: stage, low_res, out_res, psnr_model, psnr_bicubic (dB; inf when exact).
    """
    _check_pipe(pipe)
    n, s = check_positive_int("n", n), _settings(settings)
    rng, g = _streams(_check_seed(seed), "upsamplers")
    scenes = [sample_scene(rng, world=model_world(pipe)) for _ in range(n)]
    res = list(pipe.resolutions)
    rows = []
    for k in range(len(res) - 1):
        lo, hi = res[k], res[k + 1]
        for b0, batch in zip(range(0, n, s.batch_size), _batches(scenes, s.batch_size)):
            lows = [render_at(sc, lo) for sc in batch]
            up = _to_uint8(pipe.upsample(pil_to_tensor(lows), k, sampling=s.resolve(pipe), seed=g))
            for j, (sc, low, u) in enumerate(zip(batch, lows, up)):
                true = np.asarray(render_at(sc, hi))
                bic = np.asarray(low.resize((hi, hi), Image.BICUBIC))
                rows.append({"measure": "upsamplers", "image": b0 + j, "stage": f"upsampler{k + 1}",
                             "n_objects": len(sc.objects), "low_res": lo, "out_res": hi,
                             "psnr_model": psnr(u, true), "psnr_bicubic": psnr(bic, true)})
    return pd.DataFrame(rows, columns=["measure", "image", "stage", "n_objects", "low_res", "out_res",
                                       "psnr_model", "psnr_bicubic"])


def measure_variations(pipe: Any, n: int = 8, n_variations: int = 4, seed: int = 0,
                       settings: EvalSettings | None = None) -> pd.DataFrame:
    """Variations (sec. 3.1): n_variations decodings of one image's z_i keep its attributes yet differ in pixels.

    Rows: one per variation and expected object, scored against the source's true scene, with
    mean_pairwise_l1 (mean |x_a - x_b| in [0, 1] units over the source's pairs of variations) repeated.
    """
    _check_pipe(pipe)
    n, s = check_positive_int("n", n), _settings(settings)
    m = check_positive_int("n_variations", n_variations, minimum=2)
    rng, g = _streams(_check_seed(seed), "variations")
    scenes = [sample_scene(rng, int(rng.integers(1, 3)), world=model_world(pipe)) for _ in range(n)]
    frames = []
    for i, sc in enumerate(scenes):
        x, clipped = _decoded(pipe.variations(render_at(sc, REAL_SIZE), n=m, sampling=s.resolve_variations(pipe),
                                              seed=g, upsample=False))
        u = torch.from_numpy(_to_uint8(x)).double() / 255.0                           # (m, H, W, 3)
        l1 = float(np.mean([(u[a] - u[b]).abs().mean().item() for a in range(m) for b in range(a + 1, m)]))
        df = _score(x, [sc] * m, source=i, variation=list(range(m)), mean_pairwise_l1=l1,
                    n_objects=len(sc.objects), clip_denoised=clipped)
        df["image"] = df["image"] + i * m
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df.insert(0, "measure", "variations")
    df["stage"] = "decoder"
    df = df.rename(columns={"source": "source_image"})
    return df


# ----------------------------------------------------------------------------------------------- summary

def _mean(series: pd.Series) -> float:
    return float(series.mean()) if len(series) else math.nan


def summarize(tables: dict[str, pd.DataFrame], settings: EvalSettings | None = None) -> dict[str, Any]:
    """Numbers of every measure present in `tables` and the bars with pass/fail (a missing measure is skipped)."""
    s = _settings(settings)
    m: dict[str, Any] = {}
    if "reconstruction" in tables:
        df = tables["reconstruction"]
        for stage in sorted(df["stage"].unique()):
            d = df[df["stage"] == stage]
            one, two = d[d["n_objects"] == 1], d[d["n_objects"] == 2]
            pre = "recon" if stage == "decoder" else f"recon_{stage}"
            if len(one):
                _rate_ci(m, f"{pre}_one_object_all", _image_hits(one, _object_all(one)))
            if len(two):
                _rate_ci(m, f"{pre}_two_object_per_object_all", _object_all(two))
            m[f"{pre}_one_object_shape_colour"] = _image_rate(one)
            m[f"{pre}_two_object_per_object"] = _mean(two["shape_colour_correct"])
            m[f"{pre}_two_object_all_objects"] = _image_rate(two)
            for f in ("shape", "colour", "size", "position"):
                m[f"{pre}_{f}"] = _mean(d[f"{f}_correct"].dropna().astype(float))
    if "text_to_image" in tables:
        df = tables["text_to_image"]
        one = df[df["n_objects"] == 1]
        _rate_ci(m, "t2i_one_object_all_said", one.drop_duplicates("image")["all_correct"].fillna(False))
        m["t2i_one_object_shape_colour"] = _image_rate(one)
        two = df[df["n_objects"] == 2]
        if len(two):  # report, not a bar: what the caption says of each object, read per object
            said = two[["shape_correct", "colour_correct", "size_correct", "position_correct"]]
            _rate_ci(m, "t2i_two_object_per_object_all_said",
                     (said.isna() | said.fillna(False).astype(bool)).all(axis=1))
            _rate_ci(m, "t2i_two_object_images_all_said", two.drop_duplicates("image")["all_correct"].fillna(False))
    if "binding" in tables:
        df = tables["binding"].drop_duplicates("image")
        for (cat, src), d in df.groupby(["category", "source"]):
            m[f"binding_{cat}_{src}"] = _mean(d["binding_correct"].astype(float))
            if cat != "held_out":
                m[f"binding_{cat}_{src}_pair"] = _mean(d.groupby("pair")["binding_correct"].all().astype(float))
    if "distribution_metrics" in tables:
        for r in tables["distribution_metrics"].itertuples():
            m[f"{r.metric}_{r.comparison}"] = float(r.value)
    if "upsamplers" in tables:
        for stage, d in tables["upsamplers"].groupby("stage"):
            m[f"{stage}_psnr_model"] = _mean(d["psnr_model"])
            m[f"{stage}_psnr_bicubic"] = _mean(d["psnr_bicubic"])
    if "variations" in tables:
        df = tables["variations"]
        m["variations_agreement"] = _image_rate(df)
        _rate_ci(m, "variations_agreement_all", _image_hits(df, _object_all(df)))
        l1 = _mean(df.drop_duplicates("source_image")["mean_pairwise_l1"])
        m["variations_mean_pairwise_l1"] = l1
        m["variations_differ"] = bool(l1 > s.min_pairwise_l1)
    bars = [{"name": key, "measure": meas, "value": m[key], "bar": thr, "lo": m.get(f"{key}_lo"),
             "hi": m.get(f"{key}_hi"), "n": m.get(f"{key}_n"),
             "pass": bool(not math.isnan(m[key]) and m[key] >= thr)} for meas, key, thr in BARS if key in m]
    return {"metrics": m, "bars": bars, "passed": bool(bars) and all(b["pass"] for b in bars)}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.3f}")
    return str(v)


def to_markdown(summary: dict[str, Any]) -> str:
    """The model-card section: bars with pass/fail, then every measured number."""
    head = (f"Model `{summary.get('model', {}).get('model', '?')}`, seed {summary.get('seed')}, n {summary.get('n')}, "
            f"{summary.get('elapsed_s', '?')} s. ShapesWorld v{summary.get('world', '?')}, judged by the bundled "
            "read-out of that world.")
    lines = ["## Evaluation", "", head, "",
             "| bar | value [95% Wilson] | n | threshold | pass |", "| --- | --- | --- | --- | --- |"]
    for b in summary["bars"]:
        ci = f" [{_fmt(b['lo'])}, {_fmt(b['hi'])}]" if b.get("lo") is not None else ""
        lines.append(f"| {b['name']} | {_fmt(b['value'])}{ci} | {b.get('n', '')} | >= {b['bar']:.2f} | "
                     f"{_fmt(b['pass'])} |")
    m = summary["metrics"]
    cats = [c for c in BINDING_CATEGORIES if f"binding_{c}_prior" in m]
    if cats:
        lines += ["", "| binding case | via prior | via true z_i |", "| --- | --- | --- |"]
        lines += [f"| {c} | {_fmt(m[f'binding_{c}_prior'])} | {_fmt(m.get(f'binding_{c}_true_z_i'))} |" for c in cats]
    if "cmmd_generated_vs_real" in m:
        lines += ["", "| CLIP-space distance | generated vs real | real vs real (floor) |", "| --- | --- | --- |",
                  f"| CMMD | {_fmt(m['cmmd_generated_vs_real'])} | {_fmt(m['cmmd_real_vs_real'])} |",
                  f"| FD | {_fmt(m['fd_generated_vs_real'])} | {_fmt(m['fd_real_vs_real'])} |"]
    ups = sorted({k.split("_psnr")[0] for k in m if "_psnr_" in k})
    if ups:
        lines += ["", "| upsampler | PSNR model (dB) | PSNR bicubic (dB) |", "| --- | --- | --- |"]
        lines += [f"| {u} | {_fmt(m[f'{u}_psnr_model'])} | {_fmt(m[f'{u}_psnr_bicubic'])} |" for u in ups]
    lines += ["", "<details><summary>all numbers</summary>", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in m.items()]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) else ("inf" if obj == math.inf else "-inf" if obj == -math.inf else obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _json_safe(obj.item())
    return obj


def write_results(result: FamilyEvaluation, out: str | Path) -> dict[str, Path]:
    """Write per_image.csv (every measure, tidy), one CSV per table, summary.json and evaluation.md, atomically."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"out={str(folder)!r} is a file; pass a folder to write the evaluation into")
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    per_image = pd.concat([df for k, df in result.tables.items() if k != "distribution_metrics"], ignore_index=True)
    for name, df in {"per_image": per_image, **result.tables}.items():
        paths[name] = atomic_write(folder / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
    text = json.dumps(_json_safe(result.summary), indent=2, default=str) + "\n"
    paths["summary"] = atomic_write(folder / "summary.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    paths["markdown"] = atomic_write(folder / "evaluation.md",
                                     lambda tmp: tmp.write_text(result.markdown, encoding="utf-8"))
    return paths


def evaluate_family(pipe: Any, n: int = 100, seed: int = 0, out: str | Path | None = None, progress: bool = True,
                    settings: EvalSettings | None = None, measures: Sequence[str] = MEASURES) -> FamilyEvaluation:
    """Run every measure of the ShapesWorld quality bars on fresh seeds; write the files when `out` is given.

    n: scenes per measure (binding: n per category; upsamplers and variations use at most n_upsample /
    n_variation_images of the settings). Prints the elapsed time of each measure and in total.
    """
    _check_pipe(pipe)
    n, seed, s = check_positive_int("n", n), _check_seed(seed), _settings(settings)
    measures = list(measures)
    for name in measures:
        check_choice("measures entry", name, MEASURES)
    if "distribution" in measures and n < 2:
        raise ValueError("n must be >= 2 for the distribution measure (FD needs a covariance); pass n >= 2 "
                         "or leave 'distribution' out of measures")
    from tqdm.auto import tqdm
    runs: dict[str, Callable[[], Any]] = {
        "reconstruction": lambda: measure_reconstruction(pipe, n, seed, s),
        "text_to_image": lambda: measure_text_to_image(pipe, n, seed, s),
        "binding": lambda: measure_binding(pipe, n, seed, s),
        "distribution": lambda: measure_distribution(pipe, n, seed, s),
        "upsamplers": lambda: measure_upsamplers(pipe, min(n, s.n_upsample), seed, s),
        "variations": lambda: measure_variations(pipe, min(n, s.n_variation_images), s.n_variations, seed, s),
    }
    tables: dict[str, pd.DataFrame] = {}
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    bar = tqdm(measures, desc="evaluate", unit="measure", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        got = runs[name]()
        if name == "distribution":
            tables["distribution"], tables["distribution_metrics"] = got
        else:
            tables[name] = got
        timings[name] = round(time.perf_counter() - t0, 2)
        if progress:
            tqdm.write(f"{name}: {timings[name]:.1f} s")
    elapsed = round(time.perf_counter() - t_all, 2)
    summary = summarize(tables, s)
    describe = getattr(pipe, "describe", None)
    summary.update({"model": describe() if callable(describe) else {}, "world": model_world(pipe),
                    "seed": seed, "n": n, "settings": s.to_dict(),
                    "sampling": s.resolve(pipe).to_dict() if hasattr(pipe, "sampling") else None, "measures": measures, "elapsed_s": elapsed, "seconds": timings,
                    "command": "evaluate", "versions": versions(), "created": now()})
    print(f"evaluation finished in {elapsed:.1f} s ({'all bars pass' if summary['passed'] else 'bars missed'})")
    result = FamilyEvaluation(tables, summary, to_markdown(summary))
    if out is not None:
        write_results(result, out)
    return result


__all__ = [
    "BARS",
    "BINDING_CATEGORIES",
    "MEASURES",
    "EvalSettings",
    "FamilyEvaluation",
    "binding_cases",
    "evaluate_family",
    "measure_binding",
    "measure_distribution",
    "measure_reconstruction",
    "measure_text_to_image",
    "measure_upsamplers",
    "measure_variations",
    "psnr",
    "render_at",
    "summarize",
    "to_markdown",
    "write_results",
]
