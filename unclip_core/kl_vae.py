"""The KL autoencoder of Stable Diffusion (Rombach et al. 2022, sec. 3): a VAE whose latents a latent diffusion
decoder samples (Stable unCLIP decodes through it).

The module mirrors diffusers' `AutoencoderKL` tensor for tensor (the same parameter names: encoder / decoder with
DownEncoderBlock2D / UpDecoderBlock2D levels and a mid block with one single-head attention, quant_conv and
post_quant_conv), so an imported VAE loads with `load_state_dict` and every tensor is checked by name and shape.
Its building blocks are MoVQ's (unclip_core.movq) with plain GroupNorms in the decoder instead of spatial norms.

`encode` returns the posterior mean times `scaling_factor` and `decode` divides by it first, as Stable Diffusion's
pipelines scale latents (0.18215 for SD 1.x / 2.x); a latent decoder of a pipeline uses it exactly as it uses our
small KL autoencoder or MoVQ: `encode`, `decode`, and `config.{in_channels, latent_channels, latent_size,
image_size, factor, scaling_factor}`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from .movq import LevelsConfig, _Block, _Mid
from .nn import check_tensor


@dataclass(frozen=True)
class KLAutoencoderConfig(LevelsConfig):
    """diffusers AutoencoderKL settings; `attention[i]`: level i's blocks carry self-attention (Attn*Block2D).
    image_size is nominal (it sets latent_size); any multiple of `factor` encodes."""

    image_size: int = 512
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    attention: tuple[bool, ...] = (False, False, False, False)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def __post_init__(self) -> None:
        self._check_levels()
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every level's channels, not {bad}")
        if not (isinstance(self.scaling_factor, (int, float)) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a number > 0, got {self.scaling_factor!r}")
        self._check_image_size()


class _MidNoAttention(nn.Module):
    """A mid block without attention (mid_block_add_attention=False): two resnets."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.resnets = _Mid(c, groups, None).resnets

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.resnets[0](x))


def _mid(c: int, groups: int, attention: bool) -> nn.Module:
    return _Mid(c, groups, None) if attention else _MidNoAttention(c, groups)


class _Encoder(nn.Module):
    def __init__(self, c: KLAutoencoderConfig) -> None:
        super().__init__()
        ch, g = c.block_out_channels, c.norm_num_groups
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            _Block(ch[max(i - 1, 0)], ch[i], c.layers_per_block, c.attention[i], g, None,
                   "down" if i < len(ch) - 1 else None) for i in range(len(ch))])
        self.mid_block = _mid(ch[-1], g, c.mid_attention)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * c.latent_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class _Decoder(nn.Module):
    def __init__(self, c: KLAutoencoderConfig) -> None:
        super().__init__()
        ch, g = tuple(reversed(c.block_out_channels)), c.norm_num_groups
        att = tuple(reversed(c.attention))
        self.conv_in = nn.Conv2d(c.latent_channels, ch[0], 3, padding=1)
        self.mid_block = _mid(ch[0], g, c.mid_attention)
        self.up_blocks = nn.ModuleList([
            _Block(ch[max(i - 1, 0)], ch[i], c.layers_per_block + 1, att[i], g, None,
                   "up" if i < len(ch) - 1 else None) for i in range(len(ch))])
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], c.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class KLAutoencoder(nn.Module):
    """Stable Diffusion's VAE: images (B, 3, H, W) in [-1, 1] <-> scaled latents (B, C, H/f, W/f)."""

    config_class = KLAutoencoderConfig

    def __init__(self, config: KLAutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, KLAutoencoderConfig):
            raise TypeError(f"config must be a KLAutoencoderConfig, got {type(config).__name__}")
        self.config = c = config
        self.encoder = _Encoder(c)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1) if c.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None
        self.decoder = _Decoder(c)

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels (B, 3, H, W), H and W multiples of config.factor -> posterior (mean, logvar), unscaled latents."""
        c = self.config
        check_tensor("x", x, (None, c.in_channels, None, None))
        if x.shape[-1] % c.factor or x.shape[-2] % c.factor:
            raise ValueError(f"x is {x.shape[-2]}x{x.shape[-1]}; this VAE encodes sides that are multiples of "
                             f"{c.factor}")
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: Tensor) -> Tensor:
        """Pixels in [-1, 1] -> scaled latents (B, C, H/f, W/f): the posterior mean times scaling_factor."""
        return self.moments(x)[0] * self.config.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, C, h, w) -> pixels (B, 3, h*f, w*f), about [-1, 1] (unclamped)."""
        check_tensor("z", z, (None, self.config.latent_channels, None, None), "latents as KLAutoencoder.encode gives")
        z = z / self.config.scaling_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def kl_config_from_diffusers(cfg: Mapping[str, Any], *, image_size: int | None = None) -> KLAutoencoderConfig:
    """A diffusers AutoencoderKL config.json -> KLAutoencoderConfig; what KLAutoencoder cannot express is named.

    image_size: the nominal pixel size (default: the config's sample_size)."""
    want = {"act_fn": "silu", "shift_factor": None, "latents_mean": None, "latents_std": None}
    bad = {k: cfg.get(k) for k, v in want.items() if k in cfg and cfg.get(k) != v}
    if bad:
        raise ValueError(f"AutoencoderKL config {bad} differs from what KLAutoencoder supports "
                         f"({ {k: want[k] for k in bad} }); it reads Stable Diffusion's VAE")
    downs = list(cfg.get("down_block_types", ["DownEncoderBlock2D"]))
    ups = list(cfg.get("up_block_types", ["UpDecoderBlock2D"]))
    known = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
    known_up = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
    if any(b not in known for b in downs) or any(b not in known_up for b in ups) or len(downs) != len(ups):
        raise ValueError(f"AutoencoderKL block types {downs} / {ups}: KLAutoencoder takes (Attn)DownEncoderBlock2D "
                         "and the mirrored (Attn)UpDecoderBlock2D, as many of each")
    attention = tuple(known[b] for b in downs)
    if attention != tuple(reversed([known_up[b] for b in ups])):
        raise ValueError(f"AutoencoderKL up blocks {ups} do not mirror the down blocks {downs}")
    ch = tuple(int(c) for c in cfg.get("block_out_channels", (64,)))
    if len(ch) != len(downs):
        raise ValueError(f"AutoencoderKL has {len(ch)} block_out_channels for {len(downs)} down blocks")
    return KLAutoencoderConfig(
        image_size=int(image_size or cfg.get("sample_size", 32)), in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)), latent_channels=int(cfg.get("latent_channels", 4)),
        block_out_channels=ch, attention=attention, layers_per_block=int(cfg.get("layers_per_block", 1)),
        norm_num_groups=int(cfg.get("norm_num_groups", 32)), scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
        use_quant_conv=bool(cfg.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)))


__all__ = ["KLAutoencoder", "KLAutoencoderConfig", "kl_config_from_diffusers"]
