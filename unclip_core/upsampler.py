"""Diffusion upsamplers of unCLIP: ADM super-resolution UNets without attention (Ramesh et al. 2022, sec. 2.1).

The network sees concat(x_t, up(low_res)) where up(.) is bicubic upsampling to x_t's size. Being fully
convolutional, it trains on random crops and samples at full size. `low_res` may be given either
  * at low resolution, (B, 3, H / factor, W / factor): it is upsampled here with `upsample_low_res`; or
  * already upsampled to x_t's size, (B, 3, H, W): it is used as is.
The second form is the one to train on crops: upsample the whole low-res image first, then crop x_0 and the
upsampled image at the same window (`data.degrade.random_crop_pair`), so crops see no border effects that the
full-size pass would not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import TimestepEmbedding, UNet, as_timesteps, as_tuple_field, check_tensor, check_unet_shape


def upsample_low_res(low_res: Tensor, size: tuple[int, int], antialias: bool = False) -> Tensor:
    """Bicubic upsampling (align_corners=False, unclamped) of the conditioning image.

    antialias=True is the kernel of diffusers' UnCLIPPipeline (Karlo): torch's antialiased bicubic uses a=-0.5
    (PIL's), the plain one a=-0.75, so the two differ even when upsampling.
    """
    return F.interpolate(low_res, size=size, mode="bicubic", align_corners=False, antialias=antialias)


@dataclass(frozen=True)
class UpsamplerConfig:
    """Upsampler sizes; `out_res // low_res` is the factor (2 or 4). Sampling works at any multiple of 2**levels."""

    low_res: int = 64
    out_res: int = 256
    in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    n_res_blocks: int = 2
    learn_sigma: bool = False
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    norm_groups: int = 32
    antialias: bool = False  # bicubic kernel of the low-res input; True for Karlo (see upsample_low_res)

    def __post_init__(self) -> None:
        as_tuple_field(self, "channel_mult")
        if not isinstance(self.antialias, bool):
            raise TypeError(f"antialias must be a bool, got {type(self.antialias).__name__} {self.antialias!r}")
        check_unet_shape(self.channel_mult, self.model_channels, self.norm_groups, self.n_res_blocks)
        if self.out_res % self.low_res or self.out_res // self.low_res not in (2, 4):
            raise ValueError(f"out_res={self.out_res} must be 2 or 4 times low_res={self.low_res}; "
                             "chain two upsamplers for larger factors")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.out_res % factor:
            raise ValueError(f"out_res={self.out_res} must be divisible by 2**(len(channel_mult)-1)={factor}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def factor(self) -> int:
        """Upsampling factor out_res / low_res."""
        return self.out_res // self.low_res

    @property
    def out_channels(self) -> int:
        """eps (and variance interpolation v when `learn_sigma`)."""
        return self.in_channels * (2 if self.learn_sigma else 1)


class Upsampler(nn.Module):
    """Super-resolution diffusion model (ADM, Dhariwal & Nichol 2021): (x_t, t, low_res) -> (B, out_channels, H, W)."""

    config_class = UpsamplerConfig

    def __init__(self, config: UpsamplerConfig) -> None:
        super().__init__()
        if not isinstance(config, UpsamplerConfig):
            raise TypeError(f"config must be an UpsamplerConfig, got {type(config).__name__}")
        self.config = c = config
        E = 4 * c.model_channels
        self.time_embedding = TimestepEmbedding(c.model_channels, E, E)
        self.unet = UNet(2 * c.in_channels, c.out_channels, c.model_channels, c.channel_mult, c.n_res_blocks, E,
                         dropout=c.dropout, use_scale_shift_norm=c.use_scale_shift_norm,
                         resblock_updown=c.resblock_updown, norm_groups=c.norm_groups)

    def forward(self, x_t: Tensor, t: Tensor | float, low_res: Tensor) -> Tensor:
        """Predict eps (B, out_channels, H, W) from x_t (B, C, H, W), t (B,) and low_res (B, C, H/f, W/f) or (B, C, H, W)."""
        c = self.config
        check_tensor("x_t", x_t, (None, c.in_channels, None, None))
        B, _, H, W = x_t.shape
        m = 2 ** (len(c.channel_mult) - 1)
        if H % m or W % m:
            raise ValueError(f"x_t is {H}x{W} but its sides must be multiples of {m} (2**(levels-1)); "
                             f"crop to a multiple of {m}")
        check_tensor("low_res", low_res, (B, c.in_channels, None, None))
        h, w = low_res.shape[-2:]
        if (h, w) == (H // c.factor, W // c.factor) and H % c.factor == 0 and W % c.factor == 0:
            low_res = upsample_low_res(low_res, (H, W), c.antialias)
        elif (h, w) != (H, W):
            raise ValueError(f"low_res is {h}x{w} but x_t is {H}x{W}: pass low_res at 1/{c.factor} of x_t's size "
                             f"({H // c.factor}x{W // c.factor}) or already upsampled to {H}x{W}")
        emb = self.time_embedding(as_timesteps(t, B, x_t.device))
        x = torch.cat([x_t, low_res.to(x_t.dtype)], dim=1)  # (B, 2C, H, W)
        return self.unet(x, emb)
