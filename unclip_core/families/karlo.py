"""Karlo (kakaobrain/karlo-v1-alpha, an unCLIP reproduction) importer: its diffusers folder -> our pipeline folder.

Karlo's published folder is in diffusers layout (prior/, decoder/, text_proj/, super_res_first/,
super_res_last/, text_encoder/, tokenizer/, *_scheduler/). `import_karlo(src, out)` converts it into a
pipeline folder of ours (pipeline.json + one checkpoint per stage), mapping every tensor by name and shape;
`UnCLIP.load(out)` then samples exactly as diffusers' UnCLIPPipeline does, from data written here:

  * conventions "empty_prompt" with raw embeddings (unclip_core.conventions.KARLO_CONVENTIONS): the
    unconditional branch of both guided stages is the CLIP encoding of the empty prompt "" (z_t, tokens and
    mask), not a learned null; the decoder's null z_i is Karlo's learned one; z_t (the projected text embedding)
    and z_i (the prior's output, de-standardised with CLIP statistics) are *not* L2-normalised;
  * sampling KARLO_SAMPLING: the "unclip" sampler (samplers.sample_unclip, UnCLIPScheduler) with each stage's
    variance in its StageInfo: prior x0-prediction clipped to [-5, 5] with beta~ variance, decoder eps with
    learned variance, super-resolution eps with beta~;
  * the super-resolution stage has two networks: `upsampler1` (super_res_first) for every step but the last,
    which uses `upsampler1_last` (super_res_last); the 64px image is upsampled with antialiased bicubic.

Karlo's text encoder (Hugging Face's CLIPTextModelWithProjection, OpenAI ViT-L/14's text tower) and tokenizer
are copied as they are into clip/; ClipEncoder reads them through unclip_core.hf_clip. Karlo's folder has no
image tower: image variations and inversion need one (see docs/real_models.md).
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
from ..conventions import KARLO_CONVENTIONS, KARLO_SAMPLING
from ..decoder import Decoder, DecoderConfig
from ..hf_clip import load_hf_clip
from ..pipeline import StageInfo
from ..prior import DiffusionPrior, PriorConfig
from ..upsampler import Upsampler, UpsamplerConfig
from .diffusers_unet import (UNET_FIXED as _DECODER_FIXED, check_values as _check_values, load_mapped as _load_mapped,
                             read_diffusers_weights, rename_unet as _rename_unet, unet_levels as _levels,
                             unet_decoder_geometry, unet_widths as _unet_widths)

KARLO_FOLDERS = ("prior", "decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder", "tokenizer",
                 "prior_scheduler", "decoder_scheduler", "super_res_scheduler")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --- reading a diffusers folder -------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, f"{path} not found: is {path.parent.parent} a Karlo folder in diffusers layout "
                                  f"(subfolders {', '.join(KARLO_FOLDERS)})?")


def _read_config(folder: Path, expected_class: str, name: str = "config.json") -> dict[str, Any]:
    cfg = _read_json(folder / name)
    cls = cfg.get("_class_name")
    if cls is not None and cls != expected_class:
        raise ValueError(f"{folder / name} describes a {cls}, expected {expected_class}: "
                         f"{folder.name}/ of a Karlo folder holds a {expected_class}")
    return cfg


def prior_config_from_karlo(cfg: Mapping[str, Any]) -> PriorConfig:
    """diffusers PriorTransformer config -> PriorConfig (clip_scale 1, CLIP statistics, no text scaling)."""
    _check_values(cfg, {"additional_embeddings": 4, "time_embed_act_fn": "silu", "embedding_proj_norm_type": None,
                        "encoder_hid_proj_type": "linear", "added_emb_type": "prd"}, "prior/config.json")
    heads, head_dim = int(cfg.get("num_attention_heads", 32)), int(cfg.get("attention_head_dim", 64))
    width = heads * head_dim
    d = int(cfg.get("embedding_dim", 768))
    for key, want in (("time_embed_dim", width), ("embedding_proj_dim", d), ("clip_embed_dim", d)):
        if cfg.get(key) not in (None, want):
            raise ValueError(f"prior/config.json has {key}={cfg[key]}; this importer needs it unset or {want}")
    norm_in = cfg.get("norm_in_type")
    if norm_in not in (None, "layer"):
        raise ValueError(f"prior/config.json has norm_in_type={norm_in!r}; supported: None, 'layer'")
    return PriorConfig(clip_dim=d, text_width=d, width=width, n_layers=int(cfg.get("num_layers", 20)), n_heads=heads,
                       n_text_tokens=int(cfg.get("num_embeddings", 77)), clip_scale=1.0,
                       dropout=float(cfg.get("dropout", 0.0)), use_clip_stats=True, norm_in=norm_in == "layer")


def decoder_config_from_karlo(unet: Mapping[str, Any], proj: Mapping[str, Any]) -> DecoderConfig:
    """diffusers UNet2DConditionModel + UnCLIPTextProjModel configs -> DecoderConfig (use_z_t=True)."""
    _check_values(unet, _DECODER_FIXED, "decoder/config.json")
    attends = _levels(unet, "decoder/config.json", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnUpBlock2D")
    geometry = unet_decoder_geometry(unet, "decoder/config.json", attends, default_out_channels=4)
    E = 4 * geometry["model_channels"]
    if int(proj["time_embed_dim"]) != E:
        raise ValueError(f"text_proj time_embed_dim={proj['time_embed_dim']} != 4 x block_out_channels[0] = {E}")
    if int(proj["cross_attention_dim"]) != int(unet["cross_attention_dim"]):
        raise ValueError(f"text_proj cross_attention_dim={proj['cross_attention_dim']} differs from the "
                         f"decoder's {unet['cross_attention_dim']}")
    d = int(proj.get("clip_embeddings_dim", 768))
    return DecoderConfig(**geometry, clip_dim=d, n_clip_tokens=int(proj.get("clip_extra_context_tokens", 4)),
                         text_width=d, context_dim=int(unet["cross_attention_dim"]), use_z_t=True, dropout=0.0,
                         use_scale_shift_norm=True, resblock_updown=True)


def upsampler_config_from_karlo(cfg: Mapping[str, Any], low_res: int) -> UpsamplerConfig:
    """diffusers UNet2DModel (Karlo super-resolution) config -> UpsamplerConfig (antialiased bicubic input)."""
    _check_values(cfg, {"add_attention": False, "act_fn": "silu", "center_input_sample": False,
                        "flip_sin_to_cos": True, "freq_shift": 0, "norm_eps": 1e-5, "time_embedding_type": "positional",
                        "time_embedding_dim": None, "class_embed_type": None, "mid_block_scale_factor": 1,
                        "dropout": 0.0}, "super_res/config.json")
    _levels(cfg, "super_res/config.json", None, None)
    if cfg.get("mid_block_type", "UNetMidBlock2D") != "UNetMidBlock2D":
        raise ValueError(f"super_res/config.json: mid_block_type={cfg.get('mid_block_type')!r}; supported: "
                         "'UNetMidBlock2D' without attention")
    shift = cfg.get("resnet_time_scale_shift", "default")
    check_choice("super_res resnet_time_scale_shift", shift, ("default", "scale_shift"))
    mc, mult = _unet_widths(cfg, "super_res/config.json")
    in_ch, out_ch = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    if in_ch % 2 or out_ch not in (in_ch // 2, in_ch):
        raise ValueError(f"super_res in_channels={in_ch} must be 2C (noisy image + low-res image) and "
                         f"out_channels={out_ch} C or 2C")
    return UpsamplerConfig(low_res=low_res, out_res=int(cfg["sample_size"]), in_channels=in_ch // 2, model_channels=mc,
                           channel_mult=mult, n_res_blocks=int(cfg.get("layers_per_block", 2)),
                           learn_sigma=out_ch == in_ch, dropout=0.0, use_scale_shift_norm=shift == "scale_shift",
                           resblock_updown=True, norm_groups=int(cfg.get("norm_num_groups", 32)), antialias=True)


def scheduler_settings(cfg: Mapping[str, Any], where: str) -> StageInfo:
    """UnCLIPScheduler config -> StageInfo(prediction, clip_x0, variance of the "unclip" sampler)."""
    _check_values(cfg, {"_class_name": "UnCLIPScheduler", "num_train_timesteps": 1000,
                        "beta_schedule": "squaredcos_cap_v2"}, where)
    pred = {"epsilon": "eps", "sample": "x0"}.get(cfg.get("prediction_type", "epsilon"))
    if pred is None:
        raise ValueError(f"{where}: prediction_type={cfg['prediction_type']!r}; supported: 'epsilon', 'sample'")
    variance = cfg.get("variance_type", "fixed_small_log")
    check_choice(f"{where} variance_type", variance, ("fixed_small_log", "learned_range"))
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else None
    return StageInfo(pred, clip, variance)


# --- tensors --------------------------------------------------------------------------------------
def map_prior_state(src: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers PriorTransformer state dict -> DiffusionPrior names (null_z_t is not in Karlo; see import_karlo)."""
    out = {}
    for k, v in src.items():
        if k in ("clip_mean", "clip_std"):
            out[k] = v.reshape(-1)  # (1, d) -> (d,)
            continue
        k = k.replace(".attn1.to_out.0.", ".attn1.to_out.").replace(".ff.net.0.proj.", ".ff.proj_in.")
        out[k.replace(".ff.net.2.", ".ff.proj_out.")] = v
    return out


_TEXT_PROJ = {"clip_image_embeddings_project_to_time_embeddings": "clip_to_time", "embedding_proj": "z_t_to_time",
              "encoder_hidden_states_proj": "text_proj", "text_encoder_hidden_states_norm": "text_norm",
              "clip_extra_context_tokens_proj": "clip_to_context_tokens"}


def map_decoder_state(unet: Mapping[str, Tensor], text_proj: Mapping[str, Tensor], n_clip_tokens: int
                      ) -> dict[str, Tensor]:
    """diffusers decoder UNet + UnCLIPTextProjModel state dicts -> Decoder names.

    Karlo lays its clip tokens out as (dim, n_tokens) (reshape(B, -1, n) then permute); ours are (n_tokens, dim),
    so the rows of clip_to_context_tokens are reordered.
    """
    out = {_rename_unet(k): v for k, v in unet.items()}
    for k, v in text_proj.items():
        if k == "learned_classifier_free_guidance_embeddings":
            out["null_z_i"] = v
            continue
        head, _, leaf = k.partition(".")
        name = _TEXT_PROJ.get(head, "text_proj:" + head)  # unknown names stay visibly unmapped
        if head == "clip_extra_context_tokens_proj":
            n = n_clip_tokens
            v = v.reshape(-1, n, *v.shape[1:]).transpose(0, 1).reshape(v.shape)  # row d*n + k -> k*D + d
        out[f"{name}.{leaf}"] = v
    return out


def map_upsampler_state(src: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers UNet2DModel (super-resolution) state dict -> Upsampler names."""
    return {_rename_unet(k): v for k, v in src.items()}


def _stage_card(stage: str, src: Path) -> str:
    return f"# {stage}\n\nImported from the Karlo folder {src} by unclip_core.families.karlo.import_karlo.\n"


def import_karlo(src: str | Path, out: str | Path, overwrite: bool = False, dtype: str = "float32") -> Path:
    """Convert a local Karlo folder (diffusers layout) into our pipeline folder; returns `out`.

    Every tensor is mapped by name and shape; unmapped, missing or mismatched tensors raise ValueError listing
    them. Stages: prior, decoder (decoder + text_proj), upsampler1 (super_res_first), upsampler1_last
    (super_res_last); clip/ holds Karlo's text encoder and tokenizer as they are. `dtype` is the storage
    dtype of our stages (float16 halves the disk; models load as float32).
    """
    src = Path(src).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"Karlo folder {src} does not exist; download kakaobrain/karlo-v1-alpha and pass "
                                "its local folder")
    check_choice("dtype", dtype, tuple(DTYPES))
    missing = [d for d in KARLO_FOLDERS if not (src / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{src} is not a Karlo folder in diffusers layout: missing subfolders {missing}")
    infos = {}
    for stage, folder in (("prior", "prior_scheduler"), ("decoder", "decoder_scheduler"),
                          ("upsampler1", "super_res_scheduler")):
        infos[stage] = scheduler_settings(
            _read_config(src / folder, "UnCLIPScheduler", "scheduler_config.json"), f"{folder}/scheduler_config.json")
    clip = load_hf_clip(src)  # text_encoder/ + tokenizer/
    out = Path(out).expanduser()
    with atomic_dir(out, overwrite) as tmp:
        # one stage at a time, so that the full-size models need memory for one stage only
        prior = DiffusionPrior(prior_config_from_karlo(_read_config(src / "prior", "PriorTransformer")))
        state = map_prior_state(read_diffusers_weights(src / "prior"))
        # Karlo's prior has no learned null text: its unconditional input is the encoding of "" (stored here
        # so that the checkpoint is complete; "empty_prompt" conventions encode "" at run time, as diffusers does)
        state["null_z_t"] = clip.encode_text([""], normalize=False)[0]
        _write_stage(tmp, "prior", _load_mapped(prior, state, str(src / "prior")), dtype, src)
        del prior, state
        unet_cfg = _read_config(src / "decoder", "UNet2DConditionModel")
        proj_cfg = _read_config(src / "text_proj", "UnCLIPTextProjModel")
        dcfg = decoder_config_from_karlo(unet_cfg, proj_cfg)
        if (infos["decoder"].variance == "learned_range") != dcfg.learn_sigma:
            raise ValueError(f"decoder_scheduler variance_type={infos['decoder'].variance!r} does not fit a decoder with "
                             f"out_channels={unet_cfg.get('out_channels')}")
        state = map_decoder_state(read_diffusers_weights(src / "decoder"), read_diffusers_weights(src / "text_proj"),
                                  dcfg.n_clip_tokens)
        _write_stage(tmp, "decoder", _load_mapped(Decoder(dcfg), state, str(src / "decoder")), dtype, src)
        del state
        for stage, folder in (("upsampler1", "super_res_first"), ("upsampler1_last", "super_res_last")):
            ucfg = upsampler_config_from_karlo(_read_config(src / folder, "UNet2DModel"), dcfg.image_size)
            state = map_upsampler_state(read_diffusers_weights(src / folder))
            _write_stage(tmp, stage, _load_mapped(Upsampler(ucfg), state, str(src / folder)), dtype, src)
            del state
        shutil.copytree(src / "text_encoder", tmp / "clip" / "text_encoder")
        shutil.copytree(src / "tokenizer", tmp / "clip" / "tokenizer")
        stages = {s: s for s in ("prior", "decoder", "upsampler1", "upsampler1_last")}
        meta = {"family": "karlo", "name": f"karlo:{src.name}", "clip": "clip", "source": str(src),
                "stage_info": {k: asdict(v) for k, v in infos.items()},
                "conventions": KARLO_CONVENTIONS.to_dict(), "sampling": KARLO_SAMPLING.to_dict()}
        _write_json(tmp / PIPELINE_FILE, {"format": FORMAT, "stages": stages, "metadata": meta})
        (tmp / "README.md").write_text(f"# Karlo (imported)\n\nConverted from {src} by unclip_core.families.karlo.import_karlo. "
                                       "Load with `UnCLIP.load(path)`.\n", encoding="utf-8")
    return out


def _write_stage(root: Path, stage: str, model: nn.Module, dtype: str, src: Path) -> None:
    (root / stage).mkdir()
    _write_checkpoint(root / stage, model.to(DTYPES[dtype]), _stage_card(stage, src), {"imported_from": str(src)})


