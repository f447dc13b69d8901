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

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..atomic import atomic_dir
from ..checkpoint import FORMAT, PIPELINE_FILE, _write_checkpoint, _write_json, read_json_object
from ..checks import check_choice
from ..conventions import Conventions
from ..decoder import Decoder, DecoderConfig
from ..hf_clip import load_hf_clip
from ..movq import MoVQ, config_from_diffusers
from ..pipeline import StageInfo
from ..prior import DiffusionPrior
from ..sampling import SamplingConfig
from .diffusers_unet import (UNET_FIXED, check_values, load_mapped, read_diffusers_weights, rename_unet,
                             unet_decoder_geometry, unet_levels)
from .karlo import DTYPES, map_prior_state, prior_config_from_karlo, scheduler_settings

PRIOR_FOLDERS = ("prior", "text_encoder", "tokenizer", "image_encoder", "scheduler")
DECODER_FOLDERS = ("unet", "movq", "scheduler")
# Kandinsky 2.2's prior reads raw text embeddings with the empty prompt as its unconditional text; its decoder reads
# raw image embeddings with the zero-image embedding as its null (stored as the decoder's null_z_i)
KANDINSKY_CONVENTIONS = Conventions(text="empty_prompt", normalize_embeddings=False)
# diffusers' defaults: prior 25 steps of UnCLIPScheduler at guidance 4, one sample per image; decoder 100 DDPM steps
# at guidance 4 (KandinskyV22Pipeline)
KANDINSKY_SAMPLING = SamplingConfig(prior_sampler="unclip", prior_steps=25, prior_guidance=4.0, best_of=1,
                                    decoder_sampler="ddpm", decoder_steps=100, decoder_guidance=4.0)

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
    geometry = unet_decoder_geometry(unet, where, attends, default_out_channels=8, default_size=64)
    return DecoderConfig(**geometry, clip_dim=int(unet["encoder_hid_dim"]), n_clip_tokens=N_IMAGE_TOKENS, text_width=0,
                         context_dim=int(unet["cross_attention_dim"]), use_z_t=False, dropout=0.0,
                         use_scale_shift_norm=True, resblock_updown=True, clip_time_norm=True, clip_tokens_norm=True)


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


def _config(folder: Path, expected_class: str, name: str = "config.json") -> dict[str, Any]:
    path = folder / name
    cfg = read_json_object(path, f"{path} not found: is {folder.parent} a Kandinsky 2.2 folder in diffusers layout?")
    cls = cfg.get("_class_name")
    if cls is not None and cls != expected_class:
        raise ValueError(f"{path} describes a {cls}, expected {expected_class}")
    return cfg


def decoder_stage_info(cfg: Mapping[str, Any], where: str) -> StageInfo:
    """The decoder's DDPMScheduler config -> StageInfo: eps, no x0 clamp (latents), its betas, spacing and offset."""
    check_values(cfg, {"num_train_timesteps": 1000, "prediction_type": "epsilon", "clip_sample": False,
                       "thresholding": False, "beta_schedule": "linear"}, where)
    variance = cfg.get("variance_type") or "fixed_small"
    check_choice(f"{where} variance_type", variance, ("fixed_small", "fixed_large", "learned_range"))
    return StageInfo("eps", None, variance={"learned_range": "learned"}.get(variance, variance), schedule="linear",
                     beta_start=float(cfg.get("beta_start", 0.0001)), beta_end=float(cfg.get("beta_end", 0.02)),
                     steps_offset=int(cfg.get("steps_offset", 0)), spacing=cfg.get("timestep_spacing", "leading"))


def _write_stage(root: Path, stage: str, model: nn.Module, dtype: str, src: Path) -> None:
    (root / stage).mkdir()
    card = f"# {stage}\n\nImported from the Kandinsky 2.2 folder {src} by unclip_core.families.kandinsky.\n"
    _write_checkpoint(root / stage, model.to(DTYPES[dtype]), card, {"imported_from": str(src)})


def import_kandinsky(prior_src: str | Path, decoder_src: str | Path, out: str | Path, *, overwrite: bool = False,
                     dtype: str = "float32") -> Path:
    """Convert Kandinsky 2.2's prior and decoder folders (diffusers layout) into our pipeline folder; returns `out`.

    Stages: prior (PriorTransformer), decoder (the UNet; null z_i = the zero-image embedding), autoencoder (MoVQ);
    clip/ holds the text and image towers (ViT-bigG/14) as they are. Every tensor is mapped by name and shape.
    """
    prior_src, decoder_src = Path(prior_src).expanduser(), Path(decoder_src).expanduser()
    check_choice("dtype", dtype, tuple(DTYPES))
    for src, need in ((prior_src, PRIOR_FOLDERS), (decoder_src, DECODER_FOLDERS)):
        if not src.is_dir():
            raise FileNotFoundError(f"Kandinsky 2.2 folder {src} does not exist")
        missing = [d for d in need if not (src / d).is_dir()]
        if missing:
            raise FileNotFoundError(f"{src} is not a Kandinsky 2.2 {'prior' if need is PRIOR_FOLDERS else 'decoder'} "
                                    f"folder in diffusers layout: missing subfolders {missing}")
    prior_info = scheduler_settings(_config(prior_src / "scheduler", "UnCLIPScheduler", "scheduler_config.json"),
                                    "prior scheduler/scheduler_config.json")
    dec_info = decoder_stage_info(_config(decoder_src / "scheduler", "DDPMScheduler", "scheduler_config.json"),
                                  "decoder scheduler/scheduler_config.json")
    clip = load_hf_clip(prior_src)
    out = Path(out).expanduser()
    with atomic_dir(out, overwrite) as tmp:
        prior = DiffusionPrior(prior_config_from_karlo(_config(prior_src / "prior", "PriorTransformer")))
        state = map_prior_state(read_diffusers_weights(prior_src / "prior"))
        state["null_z_t"] = clip.encode_text([""], normalize=False)[0]  # unused: the empty prompt is encoded live
        _write_stage(tmp, "prior", load_mapped(prior, state, str(prior_src / "prior")), dtype, prior_src)
        del prior, state
        size = clip.model.visual.image_size
        with torch.inference_mode():  # diffusers' get_zero_embed: zeros in normalised pixel space, no processor
            zero = clip.model.visual(torch.zeros(1, 3, size, size)).float()[0]
        dcfg = decoder_config_from_kandinsky(_config(decoder_src / "unet", "UNet2DConditionModel"))
        state = map_decoder_state(read_diffusers_weights(decoder_src / "unet"), zero)
        _write_stage(tmp, "decoder", load_mapped(Decoder(dcfg), state, str(decoder_src / "unet")), dtype, decoder_src)
        del state
        mcfg = config_from_diffusers(_config(decoder_src / "movq", "VQModel"))
        mcfg = type(mcfg)(**{**asdict(mcfg), "image_size": dcfg.image_size * mcfg.factor})
        movq = load_mapped(MoVQ(mcfg), read_diffusers_weights(decoder_src / "movq"), str(decoder_src / "movq"))
        _write_stage(tmp, "autoencoder", movq, dtype, decoder_src)
        for sub in ("text_encoder", "tokenizer", "image_encoder", "image_processor"):
            if (prior_src / sub).is_dir():
                shutil.copytree(prior_src / sub, tmp / "clip" / sub)
        stages = {s: s for s in ("prior", "decoder", "autoencoder")}
        meta = {"family": "kandinsky2.2", "name": f"kandinsky2.2:{decoder_src.name}", "clip": "clip",
                "source": [str(prior_src), str(decoder_src)],
                "stage_info": {"prior": asdict(prior_info), "decoder": asdict(dec_info)},
                "conventions": KANDINSKY_CONVENTIONS.to_dict(), "sampling": KANDINSKY_SAMPLING.to_dict()}
        _write_json(tmp / PIPELINE_FILE, {"format": FORMAT, "stages": stages, "metadata": meta})
        (tmp / "README.md").write_text(f"# Kandinsky 2.2 (imported)\n\nConverted from {prior_src} and {decoder_src} by "
                                       "unclip_core.families.kandinsky.import_kandinsky. Load with "
                                       "`UnCLIP.load(path)`.\n", encoding="utf-8")
    return out


__all__ = ["DECODER_FIXED", "KANDINSKY_CONVENTIONS", "KANDINSKY_SAMPLING", "decoder_config_from_kandinsky",
           "decoder_stage_info", "import_kandinsky", "map_decoder_state"]
