"""Text diffs of DALL·E 2 (Ramesh et al. 2022, sec. 3.3, fig. 5): edit an image by a caption change in CLIP space.

z_theta = slerp(z_i, normalize(z_t - z_t0), theta) for theta in linspace(0, theta_max, n_steps), decoded
with x_T held fixed across the row: the image's DDIM-inverted x_T (x_T_mode="inverted", the paper's choice,
so the first frame reconstructs the image, decoded under the inversion's guidance: 1 by default) or one noise
image (x_T_mode="fixed").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from analyses._inversion import frame_sampling
from analyses._pipe import (as_image, check_pipe, decode, sampling_of, encode_images, encode_texts, generator, noise,
                            to_decoder_tensor, unit_rows)
from analyses.latent_math import text_diff_path
from unclip_core.checks import check_choice, check_positive_int
from unclip_core.sampling import SamplingConfig

BASELINES = ("caption", "neutral", "none")
X_T_MODES = ("inverted", "fixed")
FRAME_COLUMNS = ["frame", "theta", "sim_old", "sim_new", "sim_input", "z_cos_input", "z_cos_new", "l1_input"]


@dataclass
class TextDiffResult:
    """One text-diff row: images, a tidy frame of numbers, the latents that made them, settings.

    frame columns: frame, theta, sim_old / sim_new (CLIP image-text cosine of each frame to the old / new
    caption; on a trained model they cross as theta grows), sim_input (image-image cosine to the input),
    z_cos_input / z_cos_new (cosine of z_theta to the input's z_i and to the new caption's z_t), l1_input
    (mean |pixel difference| in [-1, 1] to the input at the decoder's resolution).
    """

    images: list[Image.Image]
    frame: pd.DataFrame
    z_theta: torch.Tensor  # (n_steps, d)
    x_T: torch.Tensor  # (n_steps, *pipe.x_T_shape(1)[1:]), the same noise in every row
    decoded: torch.Tensor  # (n_steps, 3, s, s)
    settings: dict[str, Any] = field(default_factory=dict)


def check_theta_max(theta_max: float) -> float:
    """theta_max as float in [0, 1], else ValueError (the paper uses 0.25-0.5)."""
    if isinstance(theta_max, bool) or not isinstance(theta_max, (int, float, np.integer, np.floating)):
        raise TypeError(f"theta_max must be a float in [0, 1], got {type(theta_max).__name__} {theta_max!r}")
    if not 0.0 <= float(theta_max) <= 1.0:
        raise ValueError(f"theta_max must lie in [0, 1] (a fraction of the angle from z_i to the text diff; "
                         f"the paper uses 0.25-0.5), got {theta_max}")
    return float(theta_max)


def _caption(name: str, text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name} must be a non-empty caption string, got {text!r}")
    return text


def text_diff(pipe: Any, image: Any, old_caption: str, new_caption: str, *, theta_max: float = 0.5,
              n_steps: int = 6, baseline: str = "caption", neutral_caption: str = "a picture",
              x_T_mode: str = "inverted", seed: int | torch.Generator = 0,
              sampling: SamplingConfig | None = None, upsample: bool | int | None = None) -> TextDiffResult:
    """Text diff (Ramesh et al. 2022, sec. 3.3): decode slerp(z_i, normalize(z_t - z_t0), theta) with x_T fixed.

    z_t embeds new_caption; z_t0 embeds old_caption (baseline="caption"), neutral_caption ("neutral"), or
    is left out ("none": direction normalize(z_t)). theta_max in [0, 1]; n_steps >= 2 frames. sampling (None:
    pipe.sampling): frames decode with DDIM at eta 0; x_T_mode "inverted" inverts the image and decodes under
    invert_guidance, so frame 0 reconstructs it (another invert_guidance than 1 warns); "fixed" decodes one
    fresh noise under decoder_guidance. settings record guidance, invert_guidance and the frames' sampling.
    """
    check_pipe(pipe)
    theta_max = check_theta_max(theta_max)
    n_steps = check_positive_int("n_steps", n_steps, minimum=2)
    check_choice("baseline", baseline, BASELINES)
    check_choice("x_T_mode", x_T_mode, X_T_MODES)
    old_caption = _caption("old_caption", old_caption)
    new_caption = _caption("new_caption", new_caption)
    if baseline == "neutral":
        neutral_caption = _caption("neutral_caption", neutral_caption)
    sc = sampling_of(pipe, sampling)
    frames_sc = frame_sampling(sc, x_T_mode)
    g, seed_int = generator(seed)
    img = as_image("image", image)

    z_i = torch.as_tensor(encode_images(pipe, [img]))[0]  # (d,) float64
    texts = [old_caption, new_caption] + ([neutral_caption] if baseline == "neutral" else [])
    z_txt = torch.as_tensor(encode_texts(pipe, texts))
    z_t = z_txt[1]
    z_t0 = {"caption": z_txt[0], "neutral": z_txt[-1], "none": None}[baseline]
    # the path first: a caption pair that embeds identically fails here, before the inversion's cost
    z_theta = text_diff_path(z_i, z_t, z_t0, theta_max, n_steps).float()  # (n_steps, d)

    if x_T_mode == "inverted":
        _, x_T1 = pipe.invert([img], sampling=sc)
    else:
        x_T1 = noise(pipe, 1, g)
    x_T = x_T1.expand(n_steps, -1, -1, -1).contiguous()
    images, decoded = decode(pipe, z_theta, x_T, sampling=frames_sc, upsample=upsample, g=g)
    emb = encode_images(pipe, images)
    zu = unit_rows(z_theta)
    target = to_decoder_tensor(pipe, img)
    frame = pd.DataFrame({
        "frame": np.arange(n_steps),
        "theta": np.linspace(0.0, theta_max, n_steps),
        "sim_old": emb @ z_txt[0].numpy(),
        "sim_new": emb @ z_t.numpy(),
        "sim_input": emb @ z_i.numpy(),
        "z_cos_input": zu @ z_i.numpy(),
        "z_cos_new": zu @ z_t.numpy(),
        "l1_input": (decoded - target).abs().mean(dim=(1, 2, 3)).double().numpy(),
    }, columns=FRAME_COLUMNS)
    settings = {"analysis": "text_diff", "old_caption": old_caption, "new_caption": new_caption,
                "theta_max": theta_max, "n_steps": n_steps, "baseline": baseline,
                "neutral_caption": neutral_caption if baseline == "neutral" else None, "x_T_mode": x_T_mode,
                "seed": seed_int, "guidance": frames_sc.decoder_guidance,
                "invert_guidance": sc.invert_guidance if x_T_mode == "inverted" else None, "upsample": upsample,
                "sampling": frames_sc.to_dict()}
    return TextDiffResult(images, frame, z_theta, x_T, decoded, settings)
