"""Diffusion prior of unCLIP: a decoder-only causal transformer predicting z_i from z_t (Ramesh et al. 2022, sec. 2.2).

Embedding space. `forward` works in the model's *scaled* space: callers map unit-norm CLIP embeddings in with
`scale_in` (noised image embedding, and x0 targets) and `scale_cond` (text embedding z_t), and map predictions
back with `scale_out`. With the defaults this is multiplication by `clip_scale` (17.2 in the paper); with
`use_clip_stats` the image embedding is first standardised by the `clip_mean`/`clip_std` buffers (Karlo).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checks import check_positive_int
from .nn import TimestepEmbedding, TransformerBlock, as_timesteps, check_tensor


@dataclass(frozen=True)
class PriorConfig:
    """Prior transformer sizes; token order is [text tokens, z_t, timestep, z_noisy, final query]."""

    clip_dim: int = 768
    text_width: int = 768
    width: int = 2048
    n_layers: int = 24
    n_heads: int = 32
    n_text_tokens: int = 77
    clip_scale: float = 17.2
    dropout: float = 0.0
    use_clip_stats: bool = False
    norm_in: bool = False
    # the timestep token; False for a prior that is not a diffusion model (ECLIPSE, Patel et al. 2024: one pass
    # from noise to z_i, trained without timesteps), whose sequence is [text tokens, z_t, z_noisy, final query]
    time_token: bool = True

    def __post_init__(self) -> None:
        for name in ("clip_dim", "width", "n_layers", "n_heads"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("text_width", self.text_width, minimum=0)
        check_positive_int("n_text_tokens", self.n_text_tokens, minimum=0)
        if self.n_text_tokens and not self.text_width:
            raise ValueError(f"text_width=0 but n_text_tokens={self.n_text_tokens}: caption tokens need a "
                             "feature width; set text_width to the CLIP text width, or n_text_tokens=0")
        if self.width % self.n_heads:
            raise ValueError(f"width={self.width} is not divisible by n_heads={self.n_heads}; "
                             "pick n_heads dividing width")
        if not (isinstance(self.clip_scale, (int, float)) and self.clip_scale > 0):
            raise ValueError(f"clip_scale must be a positive number, got {self.clip_scale!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def n_tokens(self) -> int:
        """Sequence length: text tokens + z_t + timestep (if any) + z_noisy + final query."""
        return self.n_text_tokens + (4 if self.time_token else 3)


class DiffusionPrior(nn.Module):
    """unCLIP diffusion prior (Ramesh et al. 2022, sec. 2.2): (z_noisy, t, z_t, caption tokens) -> x0 prediction of z_i.

    Parameter names mirror diffusers `PriorTransformer` (Karlo) so that weights map one to one.
    """

    config_class = PriorConfig

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        if not isinstance(config, PriorConfig):
            raise TypeError(f"config must be a PriorConfig, got {type(config).__name__}")
        self.config = c = config
        self.time_embedding = TimestepEmbedding(c.width, c.width, c.width) if c.time_token else None
        self.proj_in = nn.Linear(c.clip_dim, c.width)
        self.embedding_proj = nn.Linear(c.clip_dim, c.width)
        self.encoder_hidden_states_proj = nn.Linear(c.text_width, c.width) if c.n_text_tokens else None
        self.positional_embedding = nn.Parameter(torch.randn(1, c.n_tokens, c.width) * 0.02)
        self.prd_embedding = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.norm_in = nn.LayerNorm(c.width) if c.norm_in else None
        self.transformer_blocks = nn.ModuleList(TransformerBlock(c.width, c.n_heads, c.dropout)
                                                for _ in range(c.n_layers))
        self.norm_out = nn.LayerNorm(c.width)
        self.proj_to_clip_embeddings = nn.Linear(c.width, c.clip_dim)
        # learned null text embedding for classifier-free guidance (Ho & Salimans 2022)
        self.null_z_t = nn.Parameter(torch.randn(c.clip_dim) * 0.02)
        self.register_buffer("clip_mean", torch.zeros(c.clip_dim))
        self.register_buffer("clip_std", torch.ones(c.clip_dim))
        causal = torch.tril(torch.ones(c.n_tokens, c.n_tokens, dtype=torch.bool))
        self.register_buffer("causal_mask", causal, persistent=False)

    # --- embedding space -------------------------------------------------------------------------
    def scale_in(self, z_i: Tensor) -> Tensor:
        """Unit-norm image embedding (B, clip_dim) -> the model's space: ((z - mean) / std) * clip_scale."""
        if self.config.use_clip_stats:
            z_i = (z_i - self.clip_mean) / self.clip_std
        return z_i * self.config.clip_scale

    def scale_out(self, x: Tensor) -> Tensor:
        """Inverse of `scale_in`: model-space prediction (B, clip_dim) -> CLIP image-embedding space."""
        x = x / self.config.clip_scale
        if self.config.use_clip_stats:
            x = x * self.clip_std + self.clip_mean
        return x

    def scale_cond(self, z_t: Tensor) -> Tensor:
        """Unit-norm text embedding (B, clip_dim) -> the conditioning input of `forward` (z_t * clip_scale)."""
        return z_t * self.config.clip_scale

    # --- conditioning ---------------------------------------------------------------------------
    def null_condition(self, batch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The unconditional input (z_t, text_tokens, text_mask) for classifier-free guidance."""
        c = self.config
        z_t = self.null_z_t[None].expand(batch, -1)
        if not c.n_text_tokens:
            return z_t, None, None
        dev = self.null_z_t.device
        return (z_t, torch.zeros(batch, c.n_text_tokens, c.text_width, device=dev),
                torch.zeros(batch, c.n_text_tokens, dtype=torch.bool, device=dev))

    def drop_condition(self, z_t: Tensor, text_tokens: Tensor | None, text_mask: Tensor | None, p: float,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Replace a random fraction p of the batch by the null condition (CFG training, Ho & Salimans 2022).

        Dropped rows get the learned `null_z_t` and an all-False text mask. Returns (z_t, text_tokens, text_mask).
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        check_tensor("z_t", z_t, (None, self.config.clip_dim))
        B = z_t.shape[0]
        dev = generator.device if generator is not None else z_t.device
        drop = (torch.rand(B, generator=generator, device=dev) < p).to(z_t.device)
        z_t = torch.where(drop[:, None], self.null_z_t[None].to(z_t.dtype), z_t)
        if text_tokens is not None:
            text_tokens = text_tokens.masked_fill(drop[:, None, None], 0.0)
            if text_mask is None:
                text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
            text_mask = text_mask.bool() & ~drop[:, None]
        return z_t, text_tokens, text_mask

    # --- network ---------------------------------------------------------------------------------
    def _text_inputs(self, B: int, text_tokens: Tensor | None, text_mask: Tensor | None,
                     device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        c = self.config
        if text_tokens is None:
            return (torch.zeros(B, c.n_text_tokens, c.text_width, device=device, dtype=dtype),
                    torch.zeros(B, c.n_text_tokens, dtype=torch.bool, device=device))
        check_tensor("text_tokens", text_tokens, (B, None, c.text_width),
                     hint=f"expected (B, L<={c.n_text_tokens}, text_width={c.text_width}) caption token features")
        L = text_tokens.shape[1]
        if L > c.n_text_tokens:
            raise ValueError(f"text_tokens has {L} tokens but the prior was built for n_text_tokens="
                             f"{c.n_text_tokens}; truncate the caption features to {c.n_text_tokens}")
        if text_mask is None:
            text_mask = torch.ones(B, L, dtype=torch.bool, device=device)
        if not isinstance(text_mask, Tensor) or tuple(text_mask.shape) != (B, L):
            got = tuple(text_mask.shape) if isinstance(text_mask, Tensor) else type(text_mask).__name__
            raise ValueError(f"text_mask must be a bool tensor of shape ({B}, {L}) (True = real token), got {got}")
        pad = c.n_text_tokens - L
        if pad:
            text_tokens = torch.cat([text_tokens, text_tokens.new_zeros(B, pad, c.text_width)], dim=1)
            text_mask = torch.cat([text_mask.bool(), text_mask.new_zeros(B, pad, dtype=torch.bool)], dim=1)
        return text_tokens.to(device), text_mask.bool().to(device)

    def _prefix_tokens(self, B: int, z_t: Tensor | None, text_tokens: Tensor | None, text_mask: Tensor | None,
                       device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The tokens that do not change between steps, [text tokens, z_t] (B, P, width), and their mask (B, P)."""
        c = self.config
        if z_t is None:
            z_t = self.null_z_t[None].expand(B, -1)
        check_tensor("z_t", z_t, (B, c.clip_dim), hint="pass the text embedding (scaled with scale_cond)")
        tokens = []
        mask = torch.ones(B, self.n_prefix, dtype=torch.bool, device=device)
        if c.n_text_tokens:
            feats, text_mask = self._text_inputs(B, text_tokens, text_mask, device, dtype)
            tokens.append(self.encoder_hidden_states_proj(feats))
            mask[:, :c.n_text_tokens] = text_mask
        elif text_tokens is not None:
            raise ValueError("text_tokens were given but this prior has n_text_tokens=0 (no caption pathway); "
                             "pass text_tokens=None")
        tokens.append(self.embedding_proj(z_t)[:, None])
        return torch.cat(tokens, dim=1), mask

    def _step_tokens(self, z_noisy: Tensor, t: Tensor) -> Tensor:
        """The tokens of one step, [timestep (if any), z_noisy, final query] (B, S, width)."""
        tokens = [self.time_embedding(t)[:, None]] if self.time_embedding is not None else []
        tokens += [self.proj_in(z_noisy)[:, None], self.prd_embedding.expand(z_noisy.shape[0], -1, -1)]
        return torch.cat(tokens, dim=1)

    @property
    def n_prefix(self) -> int:
        """Tokens before the first one that changes between steps: the text tokens and z_t."""
        return self.config.n_text_tokens + 1

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        h = tokens + self.positional_embedding[:, start:start + tokens.shape[1]]
        return h if self.norm_in is None else self.norm_in(h)

    def hidden_states(self, z_noisy: Tensor, t: Tensor | float, z_t: Tensor | None = None,
                      text_tokens: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        """All token states after `norm_out`, (B, n_tokens, width); `forward` reads the last one."""
        c = self.config
        check_tensor("z_noisy", z_noisy, (None, c.clip_dim), hint="pass the noised image embedding in scaled space")
        B, dev = z_noisy.shape[0], z_noisy.device
        t = as_timesteps(t, B, dev)
        prefix, prefix_mask = self._prefix_tokens(B, z_t, text_tokens, text_mask, dev, z_noisy.dtype)
        h = self._embed(torch.cat([prefix, self._step_tokens(z_noisy, t)], dim=1), 0)  # (B, n_tokens, width)
        mask = torch.ones(B, c.n_tokens, dtype=torch.bool, device=dev)
        mask[:, :self.n_prefix] = prefix_mask
        attn_mask = self._attention_mask(mask, c.n_tokens)
        for block in self.transformer_blocks:
            h = block(h, attn_mask)
        return self.norm_out(h)

    def _attention_mask(self, mask: Tensor, n: int) -> Tensor:
        """Causal and padding mask (B, 1, n, n) of the first n tokens; every token may see itself, so that a fully
        masked row never yields NaN."""
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        return ((self.causal_mask[None, :n, :n] & mask[:, None, :]) | eye[None])[:, None]

    def encode_prefix(self, z_t: Tensor | None = None, text_tokens: Tensor | None = None,
                      text_mask: Tensor | None = None, *, batch: int | None = None) -> "PriorPrefix":
        """The keys and values of [text tokens, z_t] at every layer, encoded once for every step of a sampling call.

        The attention is causal and these tokens come first, so no step changes their states: `forward(...,
        prefix=)` computes only the timestep, z_noisy and final-query tokens against them (a KV cache), the same
        numbers as the full sequence. z_t None: the learned null (then `batch` gives B).
        """
        B = z_t.shape[0] if z_t is not None else check_positive_int("batch", batch or 0)
        dev, dtype = self.prd_embedding.device, self.prd_embedding.dtype
        tokens, mask = self._prefix_tokens(B, z_t, text_tokens, text_mask, dev, dtype)
        h = self._embed(tokens, 0)
        attn_mask = self._attention_mask(mask, self.n_prefix)
        keys_values = []
        for i, block in enumerate(self.transformer_blocks):
            keys_values.append(block.attn1.keys_values(block.norm1(h)))
            if i + 1 < len(self.transformer_blocks):  # the last layer's prefix states are never read
                h = block(h, attn_mask)
        return PriorPrefix(tuple(keys_values), mask)

    def prepare_condition(self, z_t: Tensor | None = None, text_tokens: Tensor | None = None,
                          text_mask: Tensor | None = None) -> dict[str, "PriorPrefix"]:
        """The keyword arguments of `forward` for a condition that every step reads unchanged (see encode_prefix)."""
        return {"prefix": self.encode_prefix(z_t, text_tokens, text_mask)}

    def forward(self, z_noisy: Tensor, t: Tensor | float, z_t: Tensor | None = None,
                text_tokens: Tensor | None = None, text_mask: Tensor | None = None, *,
                prefix: "PriorPrefix | None" = None) -> Tensor:
        """Predict x0 = scaled z_i, (B, clip_dim), from z_noisy (B, clip_dim), t (B,), z_t (B, clip_dim),
        text_tokens (B, L, text_width) and text_mask (B, L) bool (True = real token).

        z_t=None uses the learned null embedding; text_tokens=None (or an all-False mask) drops the caption. prefix:
        the condition encoded once (encode_prefix) in place of z_t / text_tokens / text_mask.
        """
        if prefix is None:
            return self.proj_to_clip_embeddings(self.hidden_states(z_noisy, t, z_t, text_tokens, text_mask)[:, -1])
        if z_t is not None or text_tokens is not None or text_mask is not None:
            raise ValueError("pass either prefix (an encoded condition) or z_t / text_tokens / text_mask, not both")
        c = self.config
        check_tensor("z_noisy", z_noisy, (None, c.clip_dim), hint="pass the noised image embedding in scaled space")
        B, P = z_noisy.shape[0], self.n_prefix
        if not isinstance(prefix, PriorPrefix) or prefix.mask.shape[0] != B:
            got = tuple(prefix.mask.shape) if isinstance(prefix, PriorPrefix) else type(prefix).__name__
            raise ValueError(f"prefix must be a PriorPrefix of batch {B} (encode_prefix), got {got}")
        h = self._embed(self._step_tokens(z_noisy, as_timesteps(t, B, z_noisy.device)), P)  # (B, S, width)
        S = h.shape[1]
        causal = self.causal_mask[None, P:P + S, P:P + S].expand(B, S, S)
        attn_mask = torch.cat([prefix.mask[:, None, :].expand(B, S, P), causal], dim=2)[:, None]  # (B, 1, S, P + S)
        for block, past in zip(self.transformer_blocks, prefix.keys_values):
            h = block(h, attn_mask, past)
        return self.proj_to_clip_embeddings(self.norm_out(h[:, -1]))


@dataclass(frozen=True)
class PriorPrefix:
    """A prior's step-independent tokens encoded once (DiffusionPrior.encode_prefix): per layer, the keys and values
    (B, n_heads, P, head_dim) of [text tokens, z_t], and their padding mask (B, P) bool."""

    keys_values: tuple[tuple[Tensor, Tensor], ...]
    mask: Tensor
