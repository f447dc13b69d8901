"""Image variations across noise levels (DALL·E 2 sec. 3.1, fig. 3; Stable unCLIP's noise augmentation of z_i):
one image's z_i decoded n times at each noise_level, the same noises in every row, so a row differs from the next
only in how much of the image the decoder is shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from PIL import Image

from analyses._pipe import as_image, check_pipe, encode_images, generator, sampling_of
from analyses.tiling import make_grid
from unclip_core.checks import check_positive_int

FRAME_COLUMNS = ["noise_level", "index", "sim_original"]


@dataclass
class NoiseLevelSweepResult:
    """The grid (rows = noise levels; columns = the input, then n variations), the images and their numbers.

    frame: one row per variation: noise_level, index (column), sim_original (CLIP cosine of the variation's image
    embedding to the input's)."""

    image: Image.Image
    rows: list[list[Image.Image]]
    frame: pd.DataFrame
    levels: list[int]
    settings: dict[str, Any] = field(default_factory=dict)


def check_levels(levels: Sequence[int]) -> list[int]:
    """Noise levels: a non-empty list of ints in [0, 999]."""
    if isinstance(levels, (str, bytes, int)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"levels must be a non-empty list of noise levels in [0, 999], e.g. [0, 250, 500], "
                         f"got {levels!r}")
    bad = [v for v in levels if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 999]
    if bad:
        raise ValueError(f"levels {bad} are not noise levels: each must be an int in [0, 999]")
    return list(levels)


def noise_level_sweep(pipe: Any, image: Any, levels: Sequence[int] = (0, 250, 500, 750), *, n: int = 3,
                      sampling: Any = None, prompt: str | None = None, seed: int | torch.Generator = 0,
                      upsample: bool | int | None = False) -> NoiseLevelSweepResult:
    """Variations of `image` at each noise level (rows) from the same seed (columns: the same x_T and z_i noise at
    every level). sampling: over pipe.variation_sampling() (noise_level is set per row); prompt: the decoder's
    second condition, where it reads text. Needs a noise-augmented decoder (Stable unCLIP)."""
    check_pipe(pipe)
    if not getattr(pipe.decoder.config, "noise_augmented", False):
        raise ValueError(f"{getattr(pipe, 'name', 'this pipeline')}'s decoder reads z_i as it is (no noise "
                         "augmentation): a noise-level sweep needs a Stable unCLIP pipeline")
    levels = check_levels(levels)
    n = check_positive_int("n", n)
    img = as_image("image", image)
    sc = sampling_of(pipe, sampling) if sampling is not None else pipe.variation_sampling()
    _, seed_int = generator(seed)
    row_seed = seed_int if seed_int is not None else int(torch.randint(0, 2**31 - 1, (1,), generator=seed).item())
    z0 = encode_images(pipe, [img])
    rows, records = [], []
    for level in levels:
        out = pipe.variations(img, n=n, sampling=sc.replace(noise_level=level), seed=row_seed, upsample=upsample,
                              prompt=prompt)
        sims = encode_images(pipe, out.images) @ z0[0]
        rows.append([img.resize(out.images[0].size)] + list(out.images))
        records += [{"noise_level": level, "index": k, "sim_original": float(s)} for k, s in enumerate(sims)]
    grid = make_grid(rows, row_labels=[f"level {v}" for v in levels],
                     col_labels=["input"] + [f"#{k}" for k in range(n)])
    settings = {"analysis": "noise_level_sweep", "levels": levels, "n": n, "seed": row_seed, "prompt": prompt,
                "sampling": sc.to_dict(), **pipe.describe()}
    return NoiseLevelSweepResult(grid, rows, pd.DataFrame.from_records(records, columns=FRAME_COLUMNS), levels,
                                 settings)


__all__ = ["NoiseLevelSweepResult", "check_levels", "noise_level_sweep"]
