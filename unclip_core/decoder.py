"""unCLIP decoder: a GLIDE UNet conditioned on the CLIP image embedding z_i (Ramesh et al. 2022, sec. 2.1).

z_i is projected and added to the timestep embedding, and projected into `n_clip_tokens` extra context tokens
that are concatenated before the (projected, layer-normed) caption tokens; attention blocks attend over the
image tokens plus these context tokens as extra keys/values (GLIDE, Nichol et al. 2021). The same structure as
Karlo's diffusers `UNet2DConditionModel` + `UnCLIPTextProjModel` (which lays out its 4 clip tokens as
(dim, n_tokens) where we use (n_tokens, dim): an importer permutes `clip_to_context_tokens` rows).

Optionally (`clip_map_channels` > 0, not in the paper) z_i is also decoded by a linear layer into a coarse
spatial map (clip_map_channels x clip_map_size^2), upsampled to the image size and concatenated to x_t as extra
input channels. The paper's pathways are global (a bias on every ResBlock and tokens seen only by attention at
low resolution), so a small decoder learns where an object is from them slowly; the map gives z_i a direct,
position-dependent route into the first convolution. Its input is z_i scaled to unit-variance components
(x sqrt(clip_dim)), since a unit-norm 128-d z_i has components of ~0.09.

Stable unCLIP (Stable Diffusion 2.1 unCLIP) is the same class with `attention_kind="cross"` and
`noise_augmented=True`: latent diffusion's spatial transformers cross-attend to the text tower's hidden states
(unprojected, text_width wide), and z_i enters only through the time embedding, as `z_i_aug` (B, 2 clip_dim): z_i
noised to a level by the forward process (the pipeline does that, unclip_core.noise_aug) concatenated with the
sinusoidal embedding of the level, through a two-layer MLP (diffusers' class_embed_type "projection"). The stored
mean / std of CLIP image embeddings that the noising standardises with are `z_i_mean` / `z_i_std`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checks import check_positive_int
from .checks import check_choice
from .nn import ATTENTION_KINDS, TimestepEmbedding, UNet, as_timesteps, as_tuple_field, check_tensor, check_unet_shape


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder UNet sizes. `attention_resolutions` are feature-map sizes (e.g. (16, 8) for a 64x64 model)."""

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    n_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    head_channels: int = 64
    clip_dim: int = 768
    n_clip_tokens: int = 4
    text_width: int = 0
    context_dim: int = 0
    use_z_t: bool = False
    learn_sigma: bool = True
    dropout: float = 0.1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    norm_groups: int = 32
    clip_map_channels: int = 0
    clip_map_size: int = 16
    # LayerNorms after the z_i projections (Kandinsky 2.2's ImageTimeEmbedding / ImageProjection: the time-
    # embedding term and the clip tokens are layer-normed); off in the paper and Karlo
    clip_time_norm: bool = False
    clip_tokens_norm: bool = False
    # "added_kv": GLIDE attention over image tokens + context tokens (the paper, Karlo, Kandinsky); "cross": latent
    # diffusion's spatial transformers, cross-attending to raw caption tokens (text_width wide; Stable unCLIP)
    attention_kind: str = "added_kv"
    # z_i enters as z_i_aug (noised z_i + the embedding of its noise level) through an MLP (Stable unCLIP)
    noise_augmented: bool = False

    # fields a warm start may change: the network grows new, zero-initialised inputs (see Decoder.load_grown)
    GROWABLE = ("clip_map_channels", "clip_map_size")

    def __post_init__(self) -> None:
        as_tuple_field(self, "channel_mult")
        as_tuple_field(self, "attention_resolutions")
        if not isinstance(self.attention_resolutions, tuple):
            raise ValueError(f"attention_resolutions must be a tuple of ints, got {self.attention_resolutions!r}")
        check_unet_shape(self.channel_mult, self.model_channels, self.norm_groups, self.n_res_blocks)
        for name in ("image_size", "in_channels", "head_channels", "clip_dim"):
            check_positive_int(name, getattr(self, name))
        for name in ("n_clip_tokens", "text_width", "context_dim", "clip_map_channels"):
            check_positive_int(name, getattr(self, name), minimum=0)
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**(len(channel_mult)-1)={factor}")
        check_positive_int("clip_map_size", self.clip_map_size)
        if self.image_size % self.clip_map_size:
            raise ValueError(f"clip_map_size={self.clip_map_size} must divide image_size={self.image_size}")
        levels = self.level_resolutions
        unknown = [r for r in self.attention_resolutions if r not in levels]
        if unknown:
            raise ValueError(f"attention_resolutions {unknown} match no UNet level; the levels of a "
                             f"{self.image_size}px model with {len(self.channel_mult)} levels are {list(levels)}")
        widths = {self.model_channels * m for r, m in zip(levels, self.channel_mult) if r in self.attention_resolutions}
        widths.add(self.model_channels * self.channel_mult[-1])  # the middle block always attends
        bad = sorted(w for w in widths if w > self.head_channels and w % self.head_channels)
        if bad:
            raise ValueError(f"head_channels={self.head_channels} must divide the channels of every attention "
                             f"level, but not {bad}; choose head_channels dividing them")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_choice("attention_kind", self.attention_kind, ATTENTION_KINDS)
        if self.attention_kind == "cross":
            if self.n_clip_tokens or not self.text_width or self.context_dim not in (0, self.text_width):
                raise ValueError(f"attention_kind='cross' attends to caption tokens only: it needs text_width > 0, "
                                 f"n_clip_tokens=0 and context_dim 0 or text_width, got text_width={self.text_width}, "
                                 f"n_clip_tokens={self.n_clip_tokens}, context_dim={self.context_dim}")
        if self.noise_augmented and (self.n_clip_tokens or self.use_z_t or self.clip_map_channels):
            raise ValueError("noise_augmented=True: z_i enters through the time embedding only; set n_clip_tokens=0, "
                             "use_z_t=False and clip_map_channels=0")

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each UNet level."""
        return tuple(self.image_size // 2 ** i for i in range(len(self.channel_mult)))

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding, 4 x model_channels as in ADM."""
        return 4 * self.model_channels

    @property
    def context_width(self) -> int:
        """Width of the context tokens (clip tokens and projected caption tokens; raw caption tokens for "cross")."""
        if self.attention_kind == "cross":
            return self.text_width
        return self.context_dim or self.time_embed_dim

    @property
    def out_channels(self) -> int:
        """eps (and variance interpolation v when `learn_sigma`, Nichol & Dhariwal 2021)."""
        return self.in_channels * (2 if self.learn_sigma else 1)


class Decoder(nn.Module):
    """unCLIP decoder (Ramesh et al. 2022, sec. 2.1): (x_t, t, z_i, caption tokens) -> (B, out_channels, H, W)."""

    config_class = DecoderConfig

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(config).__name__}")
        self.config = c = config
        E, D = c.time_embed_dim, c.context_width
        self.time_embedding = TimestepEmbedding(c.model_channels, E, E)
        if c.noise_augmented:
            self.clip_to_time = None
            self.z_i_aug_to_time = nn.Module()
            self.z_i_aug_to_time.linear_1 = nn.Linear(2 * c.clip_dim, E)
            self.z_i_aug_to_time.linear_2 = nn.Linear(E, E)
            # CLIP image-embedding statistics the noising standardises with (Stable unCLIP's image_normalizer)
            self.z_i_mean = nn.Parameter(torch.zeros(c.clip_dim))
            self.z_i_std = nn.Parameter(torch.ones(c.clip_dim))
        else:
            self.clip_to_time = nn.Linear(c.clip_dim, E)
            self.z_i_aug_to_time = None
        self.z_t_to_time = nn.Linear(c.clip_dim, E) if c.use_z_t else None
        self.clip_to_context_tokens = nn.Linear(c.clip_dim, c.n_clip_tokens * D) if c.n_clip_tokens else None
        self.clip_time_norm = nn.LayerNorm(E) if c.clip_time_norm else None
        self.clip_tokens_norm = nn.LayerNorm(D) if c.clip_tokens_norm and c.n_clip_tokens else None
        if c.text_width and c.attention_kind == "added_kv":
            self.text_proj = nn.Linear(c.text_width, D)
            self.text_norm = nn.LayerNorm(D)
        else:
            self.text_proj = self.text_norm = None
        # learned null z_i for classifier-free guidance (Karlo: learned_classifier_free_guidance_embeddings)
        self.null_z_i = nn.Parameter(torch.randn(c.clip_dim) * 0.02)
        m = c.clip_map_channels
        self.clip_to_map = nn.Linear(c.clip_dim, m * c.clip_map_size ** 2) if m else None
        has_context = bool(c.n_clip_tokens or c.text_width)
        attention_levels = [i for i, r in enumerate(c.level_resolutions) if r in c.attention_resolutions]
        self.unet = UNet(c.in_channels + m, c.out_channels, c.model_channels, c.channel_mult, c.n_res_blocks, E,
                         attention_levels=attention_levels, mid_attention=True, head_channels=c.head_channels,
                         context_dim=D if has_context else 0, dropout=c.dropout,
                         use_scale_shift_norm=c.use_scale_shift_norm, resblock_updown=c.resblock_updown,
                         norm_groups=c.norm_groups, attention_kind=c.attention_kind)

    def load_grown(self, state: dict[str, Tensor], config: "DecoderConfig") -> None:
        """Load the weights of a decoder with `config`, which may lack this one's clip map (a warm start that
        adds it): the map's layer keeps its initialisation and the first convolution's new input channels are
        zero, so the grown network computes exactly what the old one did until training moves them."""
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(config).__name__}")
        fixed = {k: v for k, v in vars(config).items() if k not in config.GROWABLE}
        mine = {k: v for k, v in vars(self.config).items() if k not in config.GROWABLE}
        diff = sorted(k for k in fixed if fixed[k] != mine[k])
        if diff:
            raise ValueError(f"only {list(config.GROWABLE)} may differ in a grown warm start, but {diff} do too")
        if config.clip_map_channels and (config.clip_map_channels, config.clip_map_size) != (
                self.config.clip_map_channels, self.config.clip_map_size):
            raise ValueError("a warm start can add a clip map to a decoder without one, not resize an existing one; "
                             f"the checkpoint has {config.clip_map_channels}x{config.clip_map_size}^2")
        own = self.state_dict()
        state = dict(state)
        w = state.get("unet.conv_in.weight")
        if w is not None and w.shape != own["unet.conv_in.weight"].shape:
            grown = torch.zeros_like(own["unet.conv_in.weight"])
            grown[:, :w.shape[1]] = w
            state["unet.conv_in.weight"] = grown
        missing, unexpected = self.load_state_dict(state, strict=False)
        new = [k for k in missing if not k.startswith("clip_to_map.")]
        if new or unexpected:
            raise ValueError(f"the checkpoint does not fit this decoder: missing {new}, unexpected {unexpected}")

    def clip_map(self, z_i: Tensor) -> Tensor:
        """The spatial z_i map (B, clip_map_channels, image_size, image_size) that joins x_t at the input."""
        c = self.config
        if self.clip_to_map is None:
            raise ValueError("this decoder has clip_map_channels=0 (no spatial z_i map)")
        m = self.clip_to_map(z_i * c.clip_dim ** 0.5)
        m = m.reshape(z_i.shape[0], c.clip_map_channels, c.clip_map_size, c.clip_map_size)
        return nn.functional.interpolate(m, size=(c.image_size, c.image_size), mode="bilinear", align_corners=False)

    def drop_condition(self, z_i: Tensor, text_tokens: Tensor | None = None, text_mask: Tensor | None = None,
                       p_z_i: float = 0.1, p_text: float = 0.5, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Independently replace z_i by the learned null (rate p_z_i) and drop captions (rate p_text) for CFG.

        Defaults are the paper's rates (Ramesh et al. 2022, sec. 2.1). Returns (z_i, text_tokens, text_mask).
        """
        for name, p in (("p_z_i", p_z_i), ("p_text", p_text)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        check_tensor("z_i", z_i, (None, self.config.clip_dim))
        B = z_i.shape[0]
        dev = generator.device if generator is not None else z_i.device
        u = torch.rand(2, B, generator=generator, device=dev).to(z_i.device)
        drop_z, drop_text = u[0] < p_z_i, u[1] < p_text
        z_i = torch.where(drop_z[:, None], self.null_z_i[None].to(z_i.dtype), z_i)
        if text_tokens is not None:
            text_tokens = text_tokens.masked_fill(drop_text[:, None, None], 0.0)
            if text_mask is None:
                text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
            text_mask = text_mask.bool() & ~drop_text[:, None]
        return z_i, text_tokens, text_mask

    def _context(self, z_i: Tensor, text_tokens: Tensor | None, text_mask: Tensor | None
                 ) -> tuple[Tensor | None, Tensor | None]:
        c, B = self.config, z_i.shape[0]
        parts, masks = [], []
        if self.clip_to_context_tokens is not None:
            tokens = self.clip_to_context_tokens(z_i).reshape(B, c.n_clip_tokens, c.context_width)
            parts.append(tokens if self.clip_tokens_norm is None else self.clip_tokens_norm(tokens))
            masks.append(torch.ones(B, c.n_clip_tokens, dtype=torch.bool, device=z_i.device))
        if text_tokens is not None and self.config.attention_kind == "cross":
            check_tensor("text_tokens", text_tokens, (B, None, c.text_width))
            return text_tokens, text_mask  # raw caption tokens; mask None: every token, as Stable Diffusion
        if text_tokens is not None:
            if self.text_proj is None:
                raise ValueError("text_tokens were given but this decoder has text_width=0 (no caption pathway); "
                                 "pass text_tokens=None or build it with text_width > 0")
            check_tensor("text_tokens", text_tokens, (B, None, c.text_width))
            L = text_tokens.shape[1]
            if text_mask is None:
                text_mask = torch.ones(B, L, dtype=torch.bool, device=z_i.device)
            if not isinstance(text_mask, Tensor) or tuple(text_mask.shape) != (B, L):
                got = tuple(text_mask.shape) if isinstance(text_mask, Tensor) else type(text_mask).__name__
                raise ValueError(f"text_mask must be a bool tensor of shape ({B}, {L}) (True = real token), "
                                 f"got {got}")
            parts.append(self.text_norm(self.text_proj(text_tokens)))
            masks.append(text_mask.bool())
        if not parts:
            return None, None
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)  # (B, n_ctx, D), (B, n_ctx)

    def encode_condition(self, z_i: Tensor | None = None, text_tokens: Tensor | None = None,
                         text_mask: Tensor | None = None, z_t: Tensor | None = None, z_i_aug: Tensor | None = None, *,
                         batch: int | None = None, keys_values: bool = True) -> "DecoderCondition":
        """Everything a step computes from the condition alone, computed once for every step of a sampling call:
        the condition's terms of the time embedding, the context tokens and mask, the clip map and (keys_values)
        each attention block's keys and values of the context. Inputs as `forward`'s; batch: B when z_i and z_i_aug
        are None (the learned null)."""
        c = self.config
        B = batch if batch is not None else next((a.shape[0] for a in (z_i, z_i_aug) if isinstance(a, Tensor)), None)
        if B is None:
            raise ValueError("pass z_i (B, clip_dim) or, for the learned null, batch=B")
        if self.z_i_aug_to_time is not None:
            if z_i_aug is None:
                raise ValueError("this decoder is noise-augmented (Stable unCLIP): pass z_i_aug (B, 2 clip_dim), the "
                                 "noised z_i and its level's embedding (unclip_core.noise_aug.augment_z_i)")
            check_tensor("z_i_aug", z_i_aug, (B, 2 * c.clip_dim))
            m = self.z_i_aug_to_time
            h = torch.nn.functional.silu(m.linear_1(z_i_aug.to(m.linear_1.weight.dtype)))
            terms, clip_map = (m.linear_2(h),), None
            context, context_mask = self._context(z_i_aug, text_tokens, text_mask)
        else:
            if z_i_aug is not None:
                raise ValueError("z_i_aug is for noise-augmented decoders (Stable unCLIP); this one reads z_i")
            if z_i is None:
                z_i = self.null_z_i[None].expand(B, -1)
            check_tensor("z_i", z_i, (B, c.clip_dim), hint="pass one CLIP image embedding per image, or None")
            clip_time = self.clip_to_time(z_i)
            terms = (clip_time if self.clip_time_norm is None else self.clip_time_norm(clip_time),)
            if self.z_t_to_time is not None:
                if z_t is None:
                    raise ValueError("this decoder has use_z_t=True and needs z_t (B, clip_dim), the text embedding")
                terms += (self.z_t_to_time(check_tensor("z_t", z_t, (B, c.clip_dim))),)
            context, context_mask = self._context(z_i, text_tokens, text_mask)
            clip_map = self.clip_map(z_i) if self.clip_to_map is not None else None
        kv = self.unet.context_keys_values(context) if keys_values else None
        return DecoderCondition(terms, context, context_mask, clip_map, kv)

    def prepare_condition(self, z_i: Tensor | None = None, text_tokens: Tensor | None = None,
                          text_mask: Tensor | None = None, z_t: Tensor | None = None,
                          z_i_aug: Tensor | None = None) -> dict[str, "DecoderCondition"]:
        """The keyword arguments of `forward` for a condition that every step reads unchanged (encode_condition)."""
        return {"condition": self.encode_condition(z_i, text_tokens, text_mask, z_t, z_i_aug)}

    def forward(self, x_t: Tensor, t: Tensor | float, z_i: Tensor | None = None, text_tokens: Tensor | None = None,
                text_mask: Tensor | None = None, z_t: Tensor | None = None, z_i_aug: Tensor | None = None, *,
                condition: "DecoderCondition | None" = None) -> Tensor:
        """Predict eps (and v) (B, out_channels, H, W) from x_t (B, C, H, W), t (B,), z_i (B, clip_dim) unit-norm,
        caption features text_tokens (B, L, text_width) with text_mask (B, L) bool.

        z_i=None is the unconditional pass (learned null); z_t is used only when the config has use_z_t. A
        noise-augmented decoder reads z_i_aug (B, 2 clip_dim) instead of z_i (zeros: the unconditional pass).
        condition: the condition encoded once (encode_condition) in place of z_i / text / z_t / z_i_aug.
        """
        c = self.config
        s = c.image_size
        check_tensor("x_t", x_t, (None, c.in_channels, s, s), hint=f"this decoder was built for {s}x{s} images")
        B = x_t.shape[0]
        t = as_timesteps(t, B, x_t.device)
        if condition is None:
            condition = self.encode_condition(z_i, text_tokens, text_mask, z_t, z_i_aug, batch=B, keys_values=False)
        elif any(a is not None for a in (z_i, text_tokens, text_mask, z_t, z_i_aug)):
            raise ValueError("pass either condition (an encoded condition) or z_i / text_tokens / text_mask / z_t / "
                             "z_i_aug, not both")
        elif not isinstance(condition, DecoderCondition) or condition.terms[0].shape[0] != B:
            got = condition.terms[0].shape[0] if isinstance(condition, DecoderCondition) else type(condition).__name__
            raise ValueError(f"condition must be a DecoderCondition of batch {B} (encode_condition), got {got}")
        emb = self.time_embedding(t)
        for term in condition.terms:
            emb = emb + term
        if condition.clip_map is not None:
            x_t = torch.cat([x_t, condition.clip_map.to(x_t.dtype)], dim=1)
        return self.unet(x_t, emb, condition.context, condition.context_mask, context_kv=condition.context_kv)


@dataclass(frozen=True)
class DecoderCondition:
    """A decoder's condition encoded once (Decoder.encode_condition): the terms added to the time embedding (B, E)
    in order, the context tokens (B, L, D) and mask (B, L), the clip map, and each attention block's keys and values
    of the context (UNet.context_keys_values; None: computed at each call)."""

    terms: tuple[Tensor, ...]
    context: Tensor | None
    context_mask: Tensor | None
    clip_map: Tensor | None
    context_kv: tuple | None = None
