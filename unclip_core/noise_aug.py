"""Noise augmentation of the image embedding (Stable unCLIP; Rombach et al. 2022's SD 2.1 unCLIP, after the
noise-conditioning augmentation of cascaded diffusion, Ho et al. 2021, sec. 4.1).

The decoder sees z_i through the forward process at a chosen `noise_level` in [0, T): z_i is standardised with the
stored CLIP statistics (mean, std), noised by q(z_level | z_0) of its own schedule (squaredcos over 1000 steps),
un-standardised, and concatenated with the sinusoidal embedding of the level. A higher level hides more of the
image from the decoder (more varied variations); 0 keeps it (up to the tiny noise of the schedule's first step).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .diffusion import Schedule
from .nn import timestep_embedding


def check_noise_level(noise_level: int, T: int = 1000) -> int:
    """A noise level: an int in [0, T)."""
    if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level < T:
        raise ValueError(f"noise_level must be an int in [0, {T - 1}] (the image embedding's noising step; 0 keeps "
                         f"the embedding), got {noise_level!r}")
    return noise_level


def augment_z_i(z_i: Tensor, noise_level: int, *, mean: Tensor, std: Tensor, schedule: Schedule,
                noise: Tensor) -> Tensor:
    """z_i (B, d) -> z_i_aug (B, 2d): [unscale(q_sample(scale(z_i), level, noise)), embedding(level)].

    mean, std: (d,) CLIP statistics; noise: (B, d) standard normal draws (the forward process' eps).
    """
    B, d = z_i.shape
    level = torch.full((B,), check_noise_level(noise_level, schedule.T), dtype=torch.long, device=z_i.device)
    z = (z_i - mean) / std
    z = schedule.q_sample(z, level, noise.to(z.dtype))
    z = z * std + mean
    return torch.cat([z, timestep_embedding(level, d).to(z.dtype)], dim=1)


__all__ = ["augment_z_i", "check_noise_level"]
