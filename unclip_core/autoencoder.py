"""A small KL autoencoder for latent decoders (Rombach et al. 2022, sec. 3; Kandinsky 2.2 decodes with MoVQ).

The image (B, 3, s, s) in [-1, 1] is encoded to a latent (B, latent_channels, s/f, s/f), f = 2**(len(channel_mult)
- 1); a latent diffusion decoder samples in that space and `decode` maps its x0 back to pixels. The latent is
the encoder's mean times `scaling_factor` (set after training so latents have unit variance, as Stable
Diffusion's 0.18215), so the diffusion schedule sees data of the scale it was designed for.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_positive_int
from .nn import as_tuple_field, check_tensor


@dataclass(frozen=True)
class AutoencoderConfig:
    """Autoencoder sizes: `channel_mult` levels of `channels * m` (one 2x downsampling between levels)."""

    image_size: int = 64
    in_channels: int = 3
    latent_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    n_res_blocks: int = 1
    norm_groups: int = 8
    scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        as_tuple_field(self, "channel_mult")
        for name in ("image_size", "in_channels", "latent_channels", "channels", "n_res_blocks", "norm_groups"):
            check_positive_int(name, getattr(self, name))
        if not self.channel_mult or not all(isinstance(m, int) and m > 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult!r}")
        for m in self.channel_mult:
            if (self.channels * m) % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} must divide every level's channels "
                                 f"({[self.channels * m for m in self.channel_mult]})")
        if self.image_size % self.factor:
            raise ValueError(f"image_size={self.image_size} must be divisible by the downsampling factor "
                             f"{self.factor} (2**(len(channel_mult) - 1))")
        if not (isinstance(self.scaling_factor, (int, float)) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a number > 0, got {self.scaling_factor!r}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor


class _Res(nn.Module):
    """Residual block without a timestep: GroupNorm, SiLU, conv, twice."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Autoencoder(nn.Module):
    """Encoder to a diagonal Gaussian over latents (mean, log-variance) and a decoder back to pixels."""

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = c = config
        widths = [c.channels * m for m in c.channel_mult]
        enc: list[nn.Module] = [nn.Conv2d(c.in_channels, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            prev = widths[max(i - 1, 0)]
            for k in range(c.n_res_blocks):
                enc.append(_Res(prev if k == 0 else w, w, c.norm_groups))
            if i < len(widths) - 1:
                enc.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        enc += [_Res(widths[-1], widths[-1], c.norm_groups), nn.GroupNorm(c.norm_groups, widths[-1]), nn.SiLU(),
                nn.Conv2d(widths[-1], 2 * c.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(c.latent_channels, widths[-1], 3, padding=1),
                                _Res(widths[-1], widths[-1], c.norm_groups)]
        for i, w in reversed(list(enumerate(widths))):
            nxt = widths[max(i - 1, 0)]
            for k in range(c.n_res_blocks):
                dec.append(_Res(w, w if k < c.n_res_blocks - 1 else nxt, c.norm_groups))
            if i > 0:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(nxt, nxt, 3, padding=1)]
        dec += [nn.GroupNorm(c.norm_groups, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], c.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check_image(self, x: Tensor) -> Tensor:
        c = self.config
        return check_tensor("x", x, (None, c.in_channels, c.image_size, c.image_size),
                            "images (B, C, s, s) in [-1, 1] at the autoencoder's resolution")

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output (mean, logvar), each (B, latent_channels, s/f, s/f), in unscaled latent units."""
        mean, logvar = self.encoder(self._check_image(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, s, s) in [-1, 1] -> scaled latents (B, latent_channels, s/f, s/f) (the posterior mean)."""
        return self.moments(x)[0] * self.config.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, latent_channels, s/f, s/f) -> images (B, C, s, s), unclamped."""
        c = self.config
        z = check_tensor("z", z, (None, c.latent_channels, c.latent_size, c.latent_size),
                         "latents as Autoencoder.encode returns them")
        return self.decoder(z / c.scaling_factor)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Training pass: -> (reconstruction from a posterior sample, KL to N(0, I) per element, mean)."""
        mean, logvar = self.moments(x)
        std = torch.exp(0.5 * logvar)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + std * noise
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return self.decoder(z), kl


__all__ = ["AutoencoderConfig", "Autoencoder"]
