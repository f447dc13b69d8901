"""Kandinsky 2.2 (kandinsky-community/kandinsky-2-2-prior + kandinsky-2-2-decoder, diffusers layout) -> our stages.

Facts this importer builds on (diffusers' KandinskyV22Pipeline and KandinskyV22PriorPipeline):
  * decoder: a UNet2DConditionModel conditioned only on the CLIP image embedding (ViT-bigG/14, 1280-d, raw): it is
    added to the timestep embedding through Linear + LayerNorm ("image" addition embedding) and becomes 32 context
    tokens through Linear + LayerNorm ("image_proj"); out_channels 8 (eps and a learned variance that the shipped
    DDPM scheduler, "fixed_small", does not use). Our Decoder expresses it with n_clip_tokens 32, text_width 0,
    clip_time_norm and clip_tokens_norm. Its classifier-free-guidance negative is the embedding of an all-zero
    (normalised) image, stored as the decoder's null z_i.
  * the decoder samples MoVQ latents (unclip_core.movq), with linear betas 0.00085 -> 0.012 and diffusers'
    "leading" timesteps + steps_offset 1 (StageInfo.schedule / steps_offset).
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from ..decoder import DecoderConfig
from .diffusers_unet import UNET_FIXED, check_values, rename_unet, unet_levels, unet_widths

DECODER_FIXED = {**UNET_FIXED, "class_embed_type": None, "addition_embed_type": "image",
                 "encoder_hid_dim_type": "image_proj"}
N_IMAGE_TOKENS = 32  # diffusers' ImageProjection: num_image_text_embeds, fixed (no config key sets it)
_NAMES = {"add_embedding.image_proj.": "clip_to_time.", "add_embedding.image_norm.": "clip_time_norm.",
          "encoder_hid_proj.image_embeds.": "clip_to_context_tokens.", "encoder_hid_proj.norm.": "clip_tokens_norm."}


def decoder_config_from_kandinsky(unet: Mapping[str, Any], where: str = "unet/config.json") -> DecoderConfig:
    """diffusers UNet2DConditionModel config of a Kandinsky 2.2 decoder -> DecoderConfig (what ours cannot express
    is named)."""
    check_values({k: v for k, v in unet.items() if k != "encoder_hid_dim"}, DECODER_FIXED, where)
    attends = unet_levels(unet, where, "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnUpBlock2D")
    mc, mult = unet_widths(unet, where)
    size = int(unet.get("sample_size") or 64)
    head = unet.get("attention_head_dim", 8)
    if not isinstance(head, int):
        raise ValueError(f"{where}: attention_head_dim must be one int, got {head!r}")
    in_ch, out_ch = int(unet.get("in_channels", 4)), int(unet.get("out_channels", 8))
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"{where}: out_channels={out_ch} must be in_channels={in_ch} or twice it (learned variance)")
    return DecoderConfig(image_size=size, in_channels=in_ch, model_channels=mc, channel_mult=mult,
                         n_res_blocks=int(unet.get("layers_per_block", 2)),
                         attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attends) if a),
                         head_channels=head, clip_dim=int(unet["encoder_hid_dim"]), n_clip_tokens=N_IMAGE_TOKENS,
                         text_width=0, context_dim=int(unet["cross_attention_dim"]), use_z_t=False,
                         learn_sigma=out_ch == 2 * in_ch, dropout=0.0, use_scale_shift_norm=True,
                         resblock_updown=True, norm_groups=int(unet.get("norm_num_groups", 32)),
                         clip_time_norm=True, clip_tokens_norm=True)


def map_decoder_state(unet: Mapping[str, Tensor], null_z_i: Tensor) -> dict[str, Tensor]:
    """A Kandinsky 2.2 decoder UNet's tensors -> Decoder names; `null_z_i` is the zero-image embedding (the
    negative of its classifier-free guidance)."""
    out = {}
    for k, v in unet.items():
        for src, dst in _NAMES.items():
            if k.startswith(src):
                k = dst + k[len(src):]
                break
        else:
            k = rename_unet(k)
        out[k] = v
    out["null_z_i"] = null_z_i
    return out


__all__ = ["DECODER_FIXED", "decoder_config_from_kandinsky", "map_decoder_state"]
