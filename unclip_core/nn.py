"""Shared layers of the unCLIP models: timestep embeddings, ADM ResBlocks, GLIDE attention, a UNet, transformer blocks.

Parameter names follow diffusers where a counterpart exists (`time_emb_proj`, `conv_shortcut`, `to_q`,
`add_k_proj`, `proj_to_clip_embeddings`, ...) so that an importer for Karlo checkpoints maps them one to one.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_positive_int


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps (Vaswani et al. 2017; ADM ordering).

    t: (B,) int or float -> (B, dim) float32. Same as diffusers `Timesteps(dim, flip_sin_to_cos=True, 0)`.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters so a residual branch starts as the identity (ADM, Dhariwal & Nichol 2021)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def as_timesteps(t: Tensor | float | int, batch: int, device: torch.device) -> Tensor:
    """Broadcast a scalar or (B,) timestep to a (B,) tensor on `device`; reject other shapes."""
    if not isinstance(t, Tensor):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"t must be a tensor of shape (B,) or a number, got {type(t).__name__}")
        t = torch.tensor(float(t))
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"t must have shape ({batch},) (one timestep per batch item) or be a scalar, "
                         f"got shape {tuple(t.shape)}")
    return t.to(device)


def check_tensor(name: str, x: object, shape: Sequence[int | None], hint: str = "") -> Tensor:
    """Check a model input: a floating tensor whose shape matches `shape` (None = any size)."""
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}" + (f"; {hint}" if hint else ""))
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {x.dtype}; convert it with .float()")
    return x


def as_tuple_field(config: object, name: str) -> None:
    """Let configs take lists (JSON, CLI) for tuple fields; frozen dataclasses still hold tuples."""
    value = getattr(config, name)
    if isinstance(value, list):
        object.__setattr__(config, name, tuple(value))


def check_unet_shape(channel_mult: tuple, model_channels: int, norm_groups: int, n_res_blocks: int) -> None:
    """Validate the UNet sizes shared by DecoderConfig and UpsamplerConfig."""
    if not isinstance(channel_mult, tuple) or not channel_mult:
        raise ValueError(f"channel_mult must be a non-empty tuple of ints, got {channel_mult!r}")
    for m in channel_mult:
        check_positive_int("channel_mult entries", m)
    check_positive_int("model_channels", model_channels)
    check_positive_int("n_res_blocks", n_res_blocks)
    check_positive_int("norm_groups", norm_groups)
    bad = [model_channels * m for m in channel_mult if (model_channels * m) % norm_groups]
    if bad:
        raise ValueError(f"norm_groups={norm_groups} must divide every level's channels, but it does not divide "
                         f"{bad}; choose model_channels a multiple of norm_groups")


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal embedding (ADM `time_embed`; diffusers `TimestepEmbedding`)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.in_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class Downsample(nn.Module):
    """2x downsampling: strided 3x3 conv, or average pooling when `use_conv` is False."""

    def __init__(self, channels: int, use_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """2x nearest-neighbour upsampling followed by a 3x3 conv when `use_conv`."""

    def __init__(self, channels: int, use_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """ADM residual block with timestep embedding and scale-shift norm (Dhariwal & Nichol 2021, sec. 3)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False,
                 norm_groups: int = 32) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm1(x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        e = self.time_emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(self.norm2(h) * (1 + scale) + shift)
        else:
            h = F.silu(self.norm2(h + e))
        h = self.conv2(self.dropout(h))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Self-attention over image tokens with context tokens as extra keys/values (GLIDE `encoder_kv`, Nichol et al. 2021).

    Matches diffusers `AttnAddedKVProcessor`: keys = [context, image], mask over the context tokens.
    """

    def __init__(self, channels: int, n_heads: int, context_dim: int = 0, norm_groups: int = 32) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.group_norm = nn.GroupNorm(norm_groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        if context_dim:
            self.add_k_proj = nn.Linear(context_dim, channels)
            self.add_v_proj = nn.Linear(context_dim, channels)
        else:
            self.add_k_proj = self.add_v_proj = None
        self.to_out = zero_module(nn.Linear(channels, channels))

    def context_keys_values(self, context: Tensor) -> tuple[Tensor, Tensor] | None:
        """The context tokens' keys and values (B, L_ctx, C), which every step reads unchanged (None: no context)."""
        if self.add_k_proj is None:
            return None
        return self.add_k_proj(context), self.add_v_proj(context)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """context_kv: context_keys_values(context), computed once (then context is not read again)."""
        B, C, H, W = x.shape
        h = self.group_norm(x).reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        mask = None
        if context is not None and self.add_k_proj is not None:
            if context_kv is None:
                context_kv = self.context_keys_values(context.to(h.dtype))
            k = torch.cat([context_kv[0].to(k.dtype), k], dim=1)
            v = torch.cat([context_kv[1].to(v.dtype), v], dim=1)
            if context_mask is not None:
                img = torch.ones(B, H * W, dtype=torch.bool, device=x.device)
                mask = torch.cat([context_mask.bool(), img], dim=1)[:, None, None, :]  # (B, 1, 1, L)

        def heads(a: Tensor) -> Tensor:
            return a.reshape(B, a.shape[1], self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, L, hd)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
        out = out.transpose(1, 2).reshape(B, H * W, C)
        out = self.to_out(out).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class CrossAttention(nn.Module):
    """Multi-head attention of x over itself or over a context (diffusers `Attention`: bias-free q/k/v, biased out)."""

    def __init__(self, width: int, n_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_dim or width, width, bias=False)
        self.to_v = nn.Linear(context_dim or width, width, bias=False)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """context_kv: (to_k(context), to_v(context)) computed once, in place of context."""
        B, L, D = x.shape

        def heads(a: Tensor) -> Tensor:
            return a.reshape(B, a.shape[1], self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, nh, L, hd)

        if context_kv is None:
            ctx = x if context is None else context.to(x.dtype)
            context_kv = self.to_k(ctx), self.to_v(ctx)
        k, v = (heads(a.to(x.dtype)) for a in context_kv)
        out = F.scaled_dot_product_attention(heads(self.to_q(x)), k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(B, L, D))


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): proj -> (h, gate), h * gelu(gate) (diffusers `GEGLU`)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 2 * hidden)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class CrossTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention over the context, GEGLU MLP (diffusers `BasicTransformerBlock`
    with layer norms, as Stable Diffusion's)."""

    def __init__(self, width: int, n_heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(width), CrossAttention(width, n_heads)
        self.norm2, self.attn2 = nn.LayerNorm(width), CrossAttention(width, n_heads, context_dim)
        self.norm3 = nn.LayerNorm(width)
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([GEGLU(width, 4 * width), nn.Identity(), nn.Linear(4 * width, width)])

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask, context_kv)
        return x + self.ff.net[2](self.ff.net[0](self.norm3(x)))


class SpatialTransformer(nn.Module):
    """Latent diffusion's cross-attention block over a feature map (Rombach et al. 2022, sec. 3.3; diffusers
    `Transformer2DModel` with use_linear_projection): GroupNorm, linear proj_in, one CrossTransformerBlock over the
    H*W tokens with the context as keys/values, linear proj_out, residual."""

    def __init__(self, channels: int, n_heads: int, context_dim: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([CrossTransformerBlock(channels, n_heads, context_dim)])
        self.proj_out = nn.Linear(channels, channels)

    def context_keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """The cross-attention's keys and values of the context (B, L_ctx, C), which every step reads unchanged."""
        attn = self.transformer_blocks[0].attn2
        return attn.to_k(context), attn.to_v(context)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if context is None:
            raise ValueError("this UNet's attention blocks cross-attend to text: pass its token features as context")
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).reshape(B, C, H * W).transpose(1, 2))  # (B, HW, C)
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        for block in self.transformer_blocks:
            h = block(h, context, mask, context_kv)
        return x + self.proj_out(h).transpose(1, 2).reshape(B, C, H, W)


ATTENTION_KINDS = ("added_kv", "cross")


class _Level(nn.Module):
    """One UNet resolution level: ResBlocks, optional attention after each, optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.resample: nn.Module | None = None


class UNet(nn.Module):
    """ADM/GLIDE UNet body (Dhariwal & Nichol 2021): x (B, C_in, H, W) + emb (B, E) [+ context] -> (B, C_out, H, W).

    `attention_levels` are level indices (0 = full resolution) that get an attention block after each ResBlock;
    with `mid_attention` the middle block has one too. attention_kind "added_kv": GLIDE's AttentionBlock (context
    tokens as extra keys / values); "cross": latent diffusion's SpatialTransformer (cross-attention to the context).
    H and W must be divisible by 2**(len(channel_mult)-1).
    """

    def __init__(self, in_channels: int, out_channels: int, model_channels: int, channel_mult: Sequence[int],
                 n_res_blocks: int, emb_dim: int, attention_levels: Sequence[int] = (), mid_attention: bool = False,
                 head_channels: int = 64, context_dim: int = 0, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, resblock_updown: bool = True, norm_groups: int = 32,
                 attention_kind: str = "added_kv") -> None:
        super().__init__()
        self.n_levels = len(channel_mult)

        def res(cin: int, cout: int, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, use_scale_shift_norm, up=up, down=down,
                            norm_groups=norm_groups)

        def attn(ch: int) -> nn.Module:
            if attention_kind == "cross":
                return SpatialTransformer(ch, max(1, ch // head_channels), context_dim, norm_groups)
            return AttentionBlock(ch, max(1, ch // head_channels), context_dim, norm_groups)

        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        ch, skips = model_channels, [model_channels]
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blk = _Level()
            for _ in range(n_res_blocks):
                blk.resnets.append(res(ch, model_channels * mult))
                ch = model_channels * mult
                if level in attention_levels:
                    blk.attentions.append(attn(ch))
                skips.append(ch)
            if level != self.n_levels - 1:
                blk.resample = res(ch, ch, down=True) if resblock_updown else Downsample(ch)
                skips.append(ch)
            self.down_blocks.append(blk)
        self.mid_block = _Level()
        self.mid_block.resnets.extend([res(ch, ch), res(ch, ch)])
        if mid_attention:
            self.mid_block.attentions.append(attn(ch))
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            blk = _Level()
            for _ in range(n_res_blocks + 1):
                blk.resnets.append(res(ch + skips.pop(), model_channels * mult))
                ch = model_channels * mult
                if level in attention_levels:
                    blk.attentions.append(attn(ch))
            if level != 0:
                blk.resample = res(ch, ch, up=True) if resblock_updown else Upsample(ch)
            self.up_blocks.append(blk)
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))

    def attention_blocks(self) -> list[nn.Module]:
        """The attention blocks in the order `forward` calls them."""
        return [a for blk in [*self.down_blocks, self.mid_block, *self.up_blocks] for a in blk.attentions]

    def context_keys_values(self, context: Tensor | None) -> tuple | None:
        """Every attention block's keys and values of the context, in call order: what each step would recompute
        from an unchanged context (pass them to forward as context_kv). None without a context."""
        if context is None:
            return None
        return tuple(a.context_keys_values(context) for a in self.attention_blocks())

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, context_kv: Sequence | None = None) -> Tensor:
        """context_kv: context_keys_values(context), computed once for many calls with the same context."""
        kv = iter(context_kv if context_kv is not None else [None] * len(self.attention_blocks()))

        def attend(attn: nn.Module, h: Tensor) -> Tensor:
            return attn(h, context, context_mask, next(kv))

        h = self.conv_in(x)
        hs = [h]
        for blk in self.down_blocks:
            for i, resnet in enumerate(blk.resnets):
                h = resnet(h, emb)
                if len(blk.attentions):
                    h = attend(blk.attentions[i], h)
                hs.append(h)
            if blk.resample is not None:
                h = blk.resample(h, emb)
                hs.append(h)
        h = self.mid_block.resnets[0](h, emb)
        if len(self.mid_block.attentions):
            h = attend(self.mid_block.attentions[0], h)
        h = self.mid_block.resnets[1](h, emb)
        for blk in self.up_blocks:
            for i, resnet in enumerate(blk.resnets):
                h = resnet(torch.cat([h, hs.pop().to(h.dtype)], dim=1), emb)
                if len(blk.attentions):
                    h = attend(blk.attentions[i], h)
            if blk.resample is not None:
                h = blk.resample(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a boolean mask (True = may attend); diffusers `Attention` names."""

    def __init__(self, width: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.to_out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, a: Tensor) -> Tensor:
        B, L, D = a.shape
        return a.reshape(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, nh, L, hd)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, nh, L, hd) of tokens x (B, L, D): what later tokens attend to (a prefix cache)."""
        return self._heads(self.to_k(x)), self._heads(self.to_v(x))

    def forward(self, x: Tensor, mask: Tensor | None = None,
                past: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, L, D) attends to itself, after `past` keys and values (B, nh, P, hd) of earlier tokens when given
        (then mask is (B, 1, L, P + L))."""
        B, L, D = x.shape
        k, v = self.keys_values(x)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(self._heads(self.to_q(x)), k, v, attn_mask=mask)
        return self.dropout(self.to_out(out.transpose(1, 2).reshape(B, L, D)))


class FeedForward(nn.Module):
    """Transformer MLP: Linear -> GELU -> Linear with a 4x hidden width."""

    def __init__(self, width: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj_in = nn.Linear(width, width * mult)
        self.proj_out = nn.Linear(width * mult, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(self.dropout(F.gelu(self.proj_in(x))))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (diffusers `BasicTransformerBlock` without cross-attention)."""

    def __init__(self, width: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn1 = SelfAttention(width, n_heads, dropout)
        self.norm3 = nn.LayerNorm(width)
        self.ff = FeedForward(width, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, past: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x), mask, past)
        return x + self.ff(self.norm3(x))
