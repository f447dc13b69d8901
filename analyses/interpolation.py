"""Interpolations of DALL·E 2 (Ramesh et al. 2022, sec. 3.2, fig. 4): slerp z_i between two ends, decode each frame.

An end is an image (PIL image, Path, or a str ending in .png/.jpg/...) or a caption (any other str). An
image end uses its CLIP image embedding z_i; a caption end uses the prior's z_i for it (text_as="prior")
or its CLIP text embedding z_t directly (text_as="z_t"). x_T is either one noise image shared by every
frame (x_T_mode="fixed"), or the DDIM-inverted x_T of the two image ends, slerped like z_i, so that the
end frames reconstruct their inputs (x_T_mode="inverted"; both ends must be images, else ValueError). Frames
from an inverted x_T are decoded under the guidance the inversion used: 1 by default (analyses._inversion).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from analyses._inversion import frame_sampling
from analyses._pipe import (check_pipe, decode, sampling_of, encode_images, encode_texts, end_kind, generator,
                            noise, to_decoder_tensor, unit_rows)
from analyses.latent_math import slerp
from analyses.tiling import make_grid
from unclip_core.checks import check_choice, check_positive_int
from unclip_core.sampling import SamplingConfig

X_T_MODES = ("fixed", "inverted")
TEXT_AS = ("prior", "z_t")
FRAME_COLUMNS = ["frame", "t", "sim_a", "sim_b", "z_cos_a", "z_cos_b", "l1_a", "l1_b"]


@dataclass
class InterpolationResult:
    """Frames of one interpolation: images, a tidy frame of numbers, the latents that made them, settings.

    frame columns: frame, t (slerp weight of b), sim_a / sim_b (CLIP cosine of the frame's image to each end:
    image-image for image ends, image-text for caption ends), z_cos_a / z_cos_b (cosine of the frame's z_i
    to each end's z_i), l1_a / l1_b (mean |pixel difference| in [-1, 1] between the decoder output and an
    image end at the decoder's resolution; NaN for caption ends).
    """

    images: list[Image.Image]
    frame: pd.DataFrame
    z_i: torch.Tensor  # (n_steps, d)
    x_T: torch.Tensor  # (n_steps, *pipe.x_T_shape(1)[1:]): pixels, or a latent decoder's latents
    decoded: torch.Tensor  # (n_steps, 3, s, s) decoder stage in [-1, 1]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class InterpolationGrid:
    """Interpolations of several pairs: the labelled grid (rows = pairs, columns = frames) and all numbers."""

    image: Image.Image
    rows: list[list[Image.Image]]
    frame: pd.DataFrame  # FRAME_COLUMNS + pair, label_a, label_b
    results: list[InterpolationResult]
    settings: dict[str, Any] = field(default_factory=dict)


def _slerp_x_T(x_T: torch.Tensor, t: np.ndarray) -> torch.Tensor:
    """Slerp two noise tensors (2, C, h, h) as flat vectors, keeping their norms' interpolation -> (n, C, h, h)."""
    flat = x_T.reshape(2, -1).double()
    out = slerp(flat[0], flat[1], torch.as_tensor(t, dtype=torch.float64))  # (n, C*h*h)
    return out.float().reshape((len(t),) + tuple(x_T.shape[1:]))


def interpolate(pipe: Any, a: Any, b: Any, *, n_steps: int = 8, x_T_mode: str = "fixed", text_as: str = "prior",
                seed: int | torch.Generator = 0, sampling: SamplingConfig | None = None,
                upsample: bool | int | None = None) -> InterpolationResult:
    """Interpolate between two images or captions (Ramesh et al. 2022, fig. 4): z_i slerped, x_T fixed or inverted.

    pipe: an UnCLIP. a, b: images or captions (see module doc). n_steps: frames, t = linspace(0, 1, n_steps).
    sampling: a SamplingConfig (None: pipe.sampling). Frames decode with DDIM at eta 0 in decoder_steps: x_T_mode
    "fixed" under decoder_guidance; "inverted" inverts both ends (decoder_steps, invert_refine) and decodes
    every frame under invert_guidance, so the end frames reconstruct (an invert_guidance other than 1 warns
    that they may not). Captions go through the prior with the prior settings. Returns an InterpolationResult
    with n_steps images; settings record the frames' guidance, invert_guidance (None for fixed x_T) and the
    whole sampling config.
    """
    check_pipe(pipe)
    n_steps = check_positive_int("n_steps", n_steps, minimum=2)
    check_choice("x_T_mode", x_T_mode, X_T_MODES)
    check_choice("text_as", text_as, TEXT_AS)
    sc = sampling_of(pipe, sampling)
    ends = [end_kind("a", a), end_kind("b", b)]
    if x_T_mode == "inverted":
        texts = [n for n, (kind, _, _) in zip("ab", ends) if kind == "text"]
        if texts:
            raise ValueError(f"x_T_mode='inverted' needs images at both ends, but {' and '.join(texts)} "
                             f"{'is a caption' if len(texts) == 1 else 'are captions'}: a caption has no x_T to "
                             "invert; use x_T_mode='fixed' (one noise for every frame)")
    if any(kind == "text" for kind, _, _ in ends) and text_as == "prior" and getattr(pipe, "prior", 1) is None:
        raise ValueError("this pipeline has no prior to map a caption to z_i; pass text_as='z_t' to use the "
                         "caption's CLIP text embedding directly, or load a pipeline with a prior")
    frames_sc = frame_sampling(sc, x_T_mode)
    g, seed_int = generator(seed)

    z_ends, refs = [], []  # refs: the unit CLIP embedding each frame is compared with
    for kind, value, _ in ends:
        if kind == "image":
            z = torch.as_tensor(encode_images(pipe, [value]), dtype=torch.float32)
            refs.append(z[0].double().numpy())
        else:
            z_t = torch.as_tensor(encode_texts(pipe, [value]), dtype=torch.float32)
            refs.append(z_t[0].double().numpy())
            z = (pipe.sample_prior([value], n=1, sampling=sc, seed=g)
                 if text_as == "prior" else z_t)
        z_ends.append(z.reshape(1, -1).float())

    t = np.linspace(0.0, 1.0, n_steps)
    if x_T_mode == "inverted":
        # one inversion for both ends: z_i from CLIP, x_T from the decoder run backwards (sec. 3.1)
        z_inv, x_T_ends = pipe.invert([ends[0][1], ends[1][1]], sampling=sc)
        z_ends = [z_inv[0:1].float(), z_inv[1:2].float()]
        x_T = _slerp_x_T(x_T_ends, t)
    else:
        x_T = noise(pipe, 1, g).expand(n_steps, -1, -1, -1).contiguous()
    z_path = slerp(z_ends[0][0].double(), z_ends[1][0].double(), torch.as_tensor(t)).float()  # (n_steps, d)

    images, decoded = decode(pipe, z_path, x_T, sampling=frames_sc, upsample=upsample, g=g)
    emb = encode_images(pipe, images)
    zu = unit_rows(z_path)
    frame = {"frame": np.arange(n_steps), "t": t}
    for name, (kind, value, _), ref, z_end in zip("ab", ends, refs, z_ends):
        frame[f"sim_{name}"] = emb @ ref
        frame[f"z_cos_{name}"] = zu @ unit_rows(z_end)[0]
        if kind == "image":
            target = to_decoder_tensor(pipe, value)
            frame[f"l1_{name}"] = (decoded - target).abs().mean(dim=(1, 2, 3)).double().numpy()
        else:
            frame[f"l1_{name}"] = np.full(n_steps, np.nan)
    settings = {"analysis": "interpolate", "a": ends[0][2], "b": ends[1][2], "kind_a": ends[0][0],
                "kind_b": ends[1][0], "n_steps": n_steps, "x_T_mode": x_T_mode, "text_as": text_as,
                "seed": seed_int, "guidance": frames_sc.decoder_guidance,
                "invert_guidance": sc.invert_guidance if x_T_mode == "inverted" else None, "upsample": upsample,
                "sampling": frames_sc.to_dict()}
    return InterpolationResult(images, pd.DataFrame(frame, columns=FRAME_COLUMNS), z_path, x_T, decoded, settings)


def interpolation_grid(pipe: Any, pairs: Sequence[tuple[Any, Any]], n_steps: int = 8,
                       **kwargs: Any) -> InterpolationGrid:
    """Interpolations of several (a, b) pairs in one labelled grid: rows = pairs, columns = frames.

    kwargs go to `interpolate` (x_T_mode, seed, sampling, ...); every pair uses the same seed.
    """
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError("pairs must be a non-empty list of (a, b) pairs of images or captions, "
                         f"got {type(pairs).__name__}")
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"pairs[{i}] must be an (a, b) pair, got {pair!r:.80}")
    results = [interpolate(pipe, a, b, n_steps=n_steps, **kwargs) for a, b in pairs]
    rows = [r.images for r in results]
    row_labels = [f"{r.settings['a']} -> {r.settings['b']}" for r in results]
    col_labels = [f"t={t:.2f}" for t in results[0].frame["t"]]
    frames = []
    for i, r in enumerate(results):
        frames.append(r.frame.assign(pair=i, label_a=r.settings["a"], label_b=r.settings["b"]))
    settings = {k: v for k, v in results[0].settings.items() if k not in ("a", "b", "kind_a", "kind_b")}
    settings.update({"analysis": "interpolation_grid", "pairs": [[r.settings["a"], r.settings["b"]] for r in results]})
    return InterpolationGrid(make_grid(rows, row_labels, col_labels), rows, pd.concat(frames, ignore_index=True),
                             results, settings)
