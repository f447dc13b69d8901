"""What every diffusers-layout importer shares: safetensors / .bin weights read without pickle, config checks, the
diffusers UNet2D(Condition)Model block layout and tensor names onto our UNet (unclip_core.nn.UNet), and a strict
load that lists unmapped, missing and mismatched tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..checkpoint import check_state_dict, read_json_object

def read_diffusers_weights(folder: str | Path) -> dict[str, Tensor]:
    """All tensors of a diffusers/transformers model folder: *.safetensors (sharded or not) or *.bin (weights only)."""
    folder = Path(folder)
    names = ("diffusion_pytorch_model", "model")
    for stem in names:
        single = folder / f"{stem}.safetensors"
        index = folder / f"{stem}.safetensors.index.json"
        if single.is_file():
            from safetensors.torch import load_file
            return load_file(str(single))
        if index.is_file():
            from safetensors.torch import load_file
            shards = sorted(set(read_json_object(index, f"{index} not found").get("weight_map", {}).values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_file(str(folder / shard)))
            return state
    for stem in ("diffusion_pytorch_model", "pytorch_model"):
        binary = folder / f"{stem}.bin"
        if binary.is_file():
            return torch.load(binary, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights in {folder}: expected diffusion_pytorch_model.safetensors (or its "
                            ".index.json shards), model.safetensors or a pytorch_model.bin / "
                            "diffusion_pytorch_model.bin")


def check_values(cfg: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise listing every config value our modules cannot express (absent keys take diffusers' defaults)."""
    bad = [f"{k}={cfg[k]!r} (supported: {v!r})" for k, v in expected.items() if k in cfg and cfg[k] != v]
    if bad:
        raise ValueError(f"{where} uses settings that this importer does not support: {'; '.join(bad)}. "
                         "It reads the family's published architecture (its diffusers pipeline components)")


# --- configs --------------------------------------------------------------------------------------
# a Karlo-style decoder UNet (class_embed_type "identity": the z_i term comes in as class labels); other families
# override the keys they differ in
UNET_FIXED = {"act_fn": "silu", "center_input_sample": False, "class_embed_type": "identity",
              "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
              "resnet_time_scale_shift": "scale_shift", "norm_eps": 1e-5, "conv_in_kernel": 3,
              "conv_out_kernel": 3, "time_embedding_type": "positional", "time_embedding_dim": None,
              "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
              "addition_embed_type": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
              "only_cross_attention": False, "dual_cross_attention": False, "upcast_attention": False,
              "use_linear_projection": False, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
              "mid_block_only_cross_attention": None, "cross_attention_norm": None, "dropout": 0.0,
              "mid_block_scale_factor": 1, "num_class_embeds": None, "attention_type": "default",
              "transformer_layers_per_block": 1, "reverse_transformer_layers_per_block": None,
              "class_embeddings_concat": False, "projection_class_embeddings_input_dim": None,
              "num_attention_heads": None}


def unet_levels(cfg: Mapping[str, Any], where: str, attn_down: str | None, attn_up: str | None, *,
                plain_down: str = "ResnetDownsampleBlock2D", plain_up: str = "ResnetUpsampleBlock2D") -> list[bool]:
    """Which UNet levels attend, from the block types; the down and up lists must mirror each other."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    ok_down, ok_up = {plain_down, attn_down} - {None}, {plain_up, attn_up} - {None}
    bad = [b for b in down if b not in ok_down] + [b for b in up if b not in ok_up]
    if bad or len(down) != len(up):
        raise ValueError(f"{where}: block types {bad or (down, up)} are not this family's; supported down blocks "
                         f"{sorted(ok_down)}, up blocks {sorted(ok_up)}, as many up as down")
    attends = [b == attn_down for b in down]
    if attends != [b == attn_up for b in reversed(up)]:
        raise ValueError(f"{where}: down_block_types {down} and up_block_types {up} must mirror each other")
    return attends


def unet_widths(cfg: Mapping[str, Any], where: str) -> tuple[int, tuple[int, ...]]:
    widths = [int(w) for w in cfg["block_out_channels"]]
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"{where}: block_out_channels {widths} must be multiples of the first")
    return base, tuple(w // base for w in widths)


_UNET_RENAMES = ((".downsamplers.0.", ".resample."), (".upsamplers.0.", ".resample."), (".to_out.0.", ".to_out."))


def rename_unet(key: str) -> str:
    if key.startswith("time_embedding."):
        return key
    if key.startswith("conv_norm_out."):
        key = "norm_out." + key[len("conv_norm_out."):]
    for a, b in _UNET_RENAMES:
        key = key.replace(a, b)
    return "unet." + key


def load_mapped(model: nn.Module, state: Mapping[str, Tensor], source: str) -> nn.Module:
    check_state_dict(model, state, source=f"{source} (after mapping Karlo's names to ours)")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


# --- Karlo's text encoder as our ClipEncoder -----------------------------------------------------
# --- importer -------------------------------------------------------------------------------------


def unet_decoder_geometry(unet: Mapping[str, Any], where: str, attends: list[bool], default_out_channels: int,
                          default_size: int | None = None) -> dict[str, Any]:
    """The DecoderConfig fields every diffusers decoder UNet gives the same way: size, widths, blocks, attention
    levels and head width, channels and learned variance (out_channels twice in_channels)."""
    mc, mult = unet_widths(unet, where)
    size = int(unet["sample_size"] if default_size is None else (unet.get("sample_size") or default_size))
    head = unet.get("attention_head_dim", 8)
    if not isinstance(head, int):
        raise ValueError(f"{where}: attention_head_dim must be one int, got {head!r}")
    in_ch, out_ch = int(unet.get("in_channels", 4)), int(unet.get("out_channels", default_out_channels))
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"{where}: out_channels={out_ch} must be in_channels={in_ch} or twice it (learned variance)")
    return dict(image_size=size, in_channels=in_ch, model_channels=mc, channel_mult=mult,
                n_res_blocks=int(unet.get("layers_per_block", 2)),
                attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attends) if a), head_channels=head,
                learn_sigma=out_ch == 2 * in_ch, norm_groups=int(unet.get("norm_num_groups", 32)))
