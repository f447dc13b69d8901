"""MoVQ (Zheng et al. 2022), the autoencoder of Kandinsky 2.2: a VQGAN whose decoder normalises every feature map
with the latent it decodes ("spatial norm": GroupNorm(h) * conv_y(z_q) + conv_b(z_q), z_q resized to h).

The module mirrors diffusers' `VQModel(norm_type="spatial")` tensor for tensor (the same parameter names), so an
imported MoVQ loads with `load_state_dict` and every tensor is checked by name and shape. Kandinsky 2.2's pipelines
never quantise: `encode` returns the continuous latent (quant_conv of the encoder's output) and `decode` reads a
latent as it is (diffusers' `force_not_quantize=True`); `quantize` gives the nearest codebook entries for those who
want the VQ latent. No scaling factor is applied on either side, as Kandinsky 2.2 applies none.

The latent decoder of a pipeline (UnCLIP with an `autoencoder` stage) uses it exactly as it uses our small KL
autoencoder: `encode`, `decode`, and `config.{in_channels, latent_channels, latent_size, image_size, factor}`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_positive_int
from .nn import as_tuple_field, check_tensor


class LevelsConfig:
    """What diffusers' Encoder / Decoder configs share (MoVQConfig, kl_vae.KLAutoencoderConfig): the levels'
    channels and attention flags, the downsampling factor and the nominal latent size, and their checks."""

    image_size: int
    block_out_channels: tuple[int, ...]
    attention: tuple[bool, ...]

    def _check_levels(self, *more_positive: str) -> None:
        as_tuple_field(self, "block_out_channels")
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))
        for name in ("image_size", "in_channels", "out_channels", "latent_channels", "layers_per_block",
                     "norm_num_groups", *more_positive):
            check_positive_int(name, getattr(self, name))
        if not self.block_out_channels or len(self.attention) != len(self.block_out_channels):
            raise ValueError(f"attention has {len(self.attention)} entries for {len(self.block_out_channels)} levels "
                             "(block_out_channels); give one per level")

    def _check_image_size(self) -> None:
        if self.image_size % self.factor:
            raise ValueError(f"image_size={self.image_size} must be divisible by the factor {self.factor}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor


@dataclass(frozen=True)
class MoVQConfig(LevelsConfig):
    """diffusers VQModel settings (norm_type "spatial"); `attention[i]`: level i's blocks carry self-attention
    (AttnDownEncoderBlock2D / AttnUpDecoderBlock2D at the mirrored level). image_size is nominal: it sets
    latent_size; any multiple of `factor` encodes."""

    image_size: int = 512
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    attention: tuple[bool, ...] = (False, False, False, True)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    num_vq_embeddings: int = 16384
    scaling_factor: float = 1.0  # recorded only: Kandinsky 2.2 scales nothing

    def __post_init__(self) -> None:
        self._check_levels("num_vq_embeddings")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % 32:
                raise ValueError(f"every level's channels must be divisible by norm_num_groups="
                                 f"{self.norm_num_groups} and by 32 (the decoder's spatial norms use 32 groups), "
                                 f"got {self.block_out_channels}")
        self._check_image_size()


class SpatialNorm(nn.Module):
    """GroupNorm(32 groups) of f, scaled and shifted by 1x1 convolutions of z_q resized (nearest) to f."""

    def __init__(self, f_channels: int, zq_channels: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(32, f_channels, eps=1e-6, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, 1)

    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        B, C, H, W = f.shape
        h, w = zq.shape[-2:]
        if H % h or W % w:
            zq = F.interpolate(zq, size=(H, W), mode="nearest")
            return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)
        # a 1x1 convolution commutes with nearest upsampling: scale and shift at the latent's size, then broadcast
        # over each (H/h, W/w) block of f instead of resizing z_q to f and convolving (H/h)(W/w) times as many pixels
        y, b = self.conv_y(zq)[:, :, :, None, :, None], self.conv_b(zq)[:, :, :, None, :, None]
        n = self.norm_layer(f).view(B, C, h, H // h, w, W // w)
        return torch.addcmul(b, n, y).view(B, C, H, W)


class _Resnet(nn.Module):
    """Residual block without a timestep; norms are GroupNorms (encoder) or SpatialNorms of z_q (decoder)."""

    def __init__(self, c_in: int, c_out: int, groups: int, zq_channels: int | None) -> None:
        super().__init__()
        self.spatial = zq_channels is not None
        if self.spatial:
            self.norm1, self.norm2 = SpatialNorm(c_in, zq_channels), SpatialNorm(c_out, zq_channels)
        else:
            self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
            self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def _norm(self, norm: nn.Module, x: Tensor, zq: Tensor | None) -> Tensor:
        return norm(x, zq) if self.spatial else norm(x)

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, zq)))
        h = self.conv2(F.silu(self._norm(self.norm2, h, zq)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class _Attention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual; normed by GroupNorm or SpatialNorm."""

    def __init__(self, c: int, groups: int, zq_channels: int | None) -> None:
        super().__init__()
        if zq_channels is None:
            self.group_norm = nn.GroupNorm(groups, c, eps=1e-6)
        else:
            self.spatial_norm = SpatialNorm(c, zq_channels)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        h = self.spatial_norm(x, zq) if hasattr(self, "spatial_norm") else self.group_norm(x)
        h = h.reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        q, k, v = (f(h)[:, None] for f in (self.to_q, self.to_k, self.to_v))  # (B, 1 head, HW, C)
        h = self.to_out[0](F.scaled_dot_product_attention(q, k, v)[:, 0])  # softmax(q k^T / sqrt(C)) v, fused
        return h.transpose(1, 2).reshape(B, C, H, W) + x


class _Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, then stride 2 (VQGAN's)


class _Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Block(nn.Module):
    """One level: resnets, each followed by attention where the level has it, then a down/upsampler."""

    def __init__(self, c_in: int, c_out: int, n: int, attention: bool, groups: int, zq: int | None,
                 resample: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([_Resnet(c_in if i == 0 else c_out, c_out, groups, zq) for i in range(n)])
        self.attentions = nn.ModuleList([_Attention(c_out, groups, zq) for _ in range(n)]) if attention else None
        if resample == "down":
            self.downsamplers = nn.ModuleList([_Downsample(c_out)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([_Upsample(c_out)])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        for i, res in enumerate(self.resnets):
            x = res(x, zq)
            if self.attentions is not None:
                x = self.attentions[i](x, zq)
        for name in ("downsamplers", "upsamplers"):
            if hasattr(self, name):
                x = getattr(self, name)[0](x)
        return x


class _Mid(nn.Module):
    def __init__(self, c: int, groups: int, zq: int | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([_Resnet(c, c, groups, zq), _Resnet(c, c, groups, zq)])
        self.attentions = nn.ModuleList([_Attention(c, groups, zq)])

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        x = self.resnets[0](x, zq)
        return self.resnets[1](self.attentions[0](x, zq), zq)


class _Encoder(nn.Module):
    def __init__(self, c: MoVQConfig) -> None:
        super().__init__()
        ch, g = c.block_out_channels, c.norm_num_groups
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            _Block(ch[max(i - 1, 0)], ch[i], c.layers_per_block, c.attention[i], g, None,
                   "down" if i < len(ch) - 1 else None) for i in range(len(ch))])
        self.mid_block = _Mid(ch[-1], g, None)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], c.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class _Decoder(nn.Module):
    def __init__(self, c: MoVQConfig) -> None:
        super().__init__()
        ch, g, zq = tuple(reversed(c.block_out_channels)), c.norm_num_groups, c.latent_channels
        att = tuple(reversed(c.attention))
        self.conv_in = nn.Conv2d(c.latent_channels, ch[0], 3, padding=1)
        self.mid_block = _Mid(ch[0], g, zq)
        self.up_blocks = nn.ModuleList([
            _Block(ch[max(i - 1, 0)], ch[i], c.layers_per_block + 1, att[i], g, zq,
                   "up" if i < len(ch) - 1 else None) for i in range(len(ch))])
        self.conv_norm_out = SpatialNorm(ch[-1], zq)
        self.conv_out = nn.Conv2d(ch[-1], c.out_channels, 3, padding=1)

    def forward(self, z: Tensor, zq: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z), zq)
        for block in self.up_blocks:
            x = block(x, zq)
        return self.conv_out(F.silu(self.conv_norm_out(x, zq)))


class _Quantizer(nn.Module):
    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, dim)


class MoVQ(nn.Module):
    """Kandinsky 2.2's autoencoder: images (B, 3, H, W) in [-1, 1] <-> continuous latents (B, 4, H/f, W/f)."""

    config_class = MoVQConfig

    def __init__(self, config: MoVQConfig) -> None:
        super().__init__()
        if not isinstance(config, MoVQConfig):
            raise TypeError(f"config must be a MoVQConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = _Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.quantize = _Quantizer(config.num_vq_embeddings, config.latent_channels)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)
        self.decoder = _Decoder(config)

    def encode(self, x: Tensor) -> Tensor:
        """Pixels (B, 3, H, W) in [-1, 1], H and W multiples of config.factor -> latents (B, C, H/f, W/f)."""
        c = self.config
        check_tensor("x", x, (None, c.in_channels, None, None))
        if x.shape[-1] % c.factor or x.shape[-2] % c.factor:
            raise ValueError(f"x is {x.shape[-2]}x{x.shape[-1]}; MoVQ encodes sides that are multiples of {c.factor}")
        return self.quant_conv(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, C, h, w) read as they are (no quantisation) -> pixels (B, 3, h*f, w*f), about [-1, 1]."""
        check_tensor("z", z, (None, self.config.latent_channels, None, None))
        return self.decoder(self.post_quant_conv(z), z)

    def codebook_latents(self, z: Tensor) -> Tensor:
        """Each latent vector replaced by its nearest codebook entry (the VQ latent; Kandinsky never uses it)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = torch.cdist(flat, self.quantize.embedding.weight).argmin(dim=1)
        q = self.quantize.embedding(codes).view(z.shape[0], z.shape[2], z.shape[3], z.shape[1])
        return q.permute(0, 3, 1, 2).contiguous()


def config_from_diffusers(cfg: dict) -> MoVQConfig:
    """A diffusers VQModel config.json (norm_type "spatial") -> MoVQConfig; what MoVQ cannot express is named."""
    want = {"norm_type": "spatial", "act_fn": "silu", "lookup_from_codebook": False, "force_upcast": False,
            "mid_block_add_attention": True}
    bad = {k: cfg.get(k) for k, v in want.items() if k in cfg and cfg.get(k) != v}
    if bad:
        raise ValueError(f"VQModel config {bad} differs from MoVQ's {{{', '.join(f'{k}: {want[k]!r}' for k in bad)}}}")
    downs, ups = list(cfg.get("down_block_types", [])), list(cfg.get("up_block_types", []))
    known = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
    known_up = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
    if any(b not in known for b in downs) or any(b not in known_up for b in ups) or len(downs) != len(ups):
        raise ValueError(f"VQModel block types {downs} / {ups}: MoVQ takes (Attn)DownEncoderBlock2D and the mirrored "
                         "(Attn)UpDecoderBlock2D")
    attention = tuple(known[b] for b in downs)
    if attention != tuple(reversed([known_up[b] for b in ups])):
        raise ValueError(f"VQModel up blocks {ups} do not mirror the down blocks {downs}")
    latent = int(cfg.get("latent_channels", 3))
    if int(cfg.get("vq_embed_dim") or latent) != latent:
        raise ValueError(f"vq_embed_dim={cfg.get('vq_embed_dim')} differs from latent_channels={latent}")
    sample = int(cfg.get("sample_size", 32))
    ch = tuple(int(c) for c in cfg["block_out_channels"])
    return MoVQConfig(image_size=sample * 2 ** (len(ch) - 1) if sample < 64 else sample,
                      in_channels=int(cfg.get("in_channels", 3)), out_channels=int(cfg.get("out_channels", 3)),
                      latent_channels=latent, block_out_channels=ch, attention=attention,
                      layers_per_block=int(cfg.get("layers_per_block", 1)),
                      norm_num_groups=int(cfg.get("norm_num_groups", 32)),
                      num_vq_embeddings=int(cfg.get("num_vq_embeddings", 256)),
                      scaling_factor=float(cfg.get("scaling_factor", 1.0)))


__all__ = ["MoVQ", "MoVQConfig", "SpatialNorm", "config_from_diffusers"]
