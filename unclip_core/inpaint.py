"""Inpainting by resampling (RePaint, Lugmayr et al. 2022) over any Denoiser, on DDIM-spaced steps."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import check_positive_int
from .diffusion import Schedule
from .samplers import (Callback, Denoiser, abar, as_generator, call_denoiser, check_eta, check_schedule, check_x,
                       ddim_update, gaussian_like, progress_steps, timesteps)


def sample_repaint(denoise: Denoiser, x_T: Tensor, schedule: Schedule, steps: int | Tensor, x0_known: Tensor,
                   mask: Tensor, n_resample: int = 4, eta: float = 1.0,
                   generator: torch.Generator | int | None = None, spacing: str = "trailing",
                   progress: bool = False, *, label: str | None = None, callback: Callback | None = None) -> Tensor:
    """RePaint (Lugmayr et al. 2022, alg. 1) with DDIM steps: known pixels from q(x_s|x0), `n_resample` jumps per step.

    x0_known (B, C, H, W) is the image; mask (B or 1, 1, H, W) is 1 where pixels are regenerated, 0 where kept.
    steps: a number of DDIM steps (respaced with `spacing`) or the timesteps. callback(j, t, x) after each step.
    Returns x0 (B, C, H, W) with the kept region equal to x0_known.
    """
    schedule = check_schedule(schedule)
    x = check_x("x_T", x_T)
    n_resample = check_positive_int("n_resample", n_resample)
    if x0_known.shape != x.shape:
        raise ValueError(f"x0_known has shape {tuple(x0_known.shape)} but x_T has {tuple(x.shape)}; they must match")
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask must have shape (B or 1, 1, {x.shape[2]}, {x.shape[3]}), got {tuple(mask.shape)}")
    eta = check_eta(eta)
    g = as_generator(generator, x.device)
    mask = mask.to(x.dtype)
    ts = timesteps(schedule, steps, spacing)
    for j in progress_steps(range(len(ts)), progress, "RePaint", label):
        t, s = ts[j], (ts[j + 1] if j + 1 < len(ts) else -1)
        a_t, a_s = abar(schedule, t), abar(schedule, s)
        n_inner = n_resample if s >= 0 else 1  # the last step lands on x0: nothing to resample
        for r in range(n_inner):
            x_s = ddim_update(x, call_denoiser(denoise, x, t), a_t, a_s, eta, g)
            known = math.sqrt(a_s) * x0_known + (math.sqrt(1.0 - a_s) * gaussian_like(x, g) if s >= 0 else 0.0)
            x_s = mask * x_s + (1.0 - mask) * known
            if r + 1 < n_inner:
                # jump back s -> t with q(x_t | x_s) so the two regions harmonise (RePaint's resampling)
                x = math.sqrt(a_t / a_s) * x_s + math.sqrt(1.0 - a_t / a_s) * gaussian_like(x, g)
            else:
                x = x_s
        if callback is not None:
            callback(j, t, x)
    return x
