"""Stable Diffusion 2.1 unCLIP (stabilityai/stable-diffusion-2-1-unclip, ViT-H/14; -unclip-small, ViT-L/14), in
diffusers' layout, -> our stages.

Facts this importer builds on (diffusers' StableUnCLIPImg2ImgPipeline and StableUnCLIPPipeline):
  * decoder: SD 2.1's UNet2DConditionModel (CrossAttnDownBlock2D / Transformer2DModel blocks with linear proj_in /
    proj_out, cross-attending to the text encoder's last hidden states, every token, no mask; plain resnets with
    additive time embedding; conv down- / upsamplers), conditioned on the image embedding through
    class_embed_type "projection" (a 2-layer MLP from 2 x embedding_dim into the time embedding). Our Decoder
    expresses it with attention_kind "cross" and noise_augmented (unclip_core.decoder);
  * the image embedding (image_embeds, raw: 1024-d ViT-H/14 or 768-d ViT-L/14) is standardised with
    image_normalizer's mean / std, noised to `noise_level` by image_noising_scheduler (squaredcos, 1000 steps),
    un-standardised and concatenated with the sinusoidal embedding of the level (unclip_core.noise_aug); the
    classifier-free-guidance negative zeroes that whole vector, and the text's negative is the empty prompt;
  * latents decode through AutoencoderKL (unclip_core.kl_vae) divided by its scaling_factor;
  * the decoder's scheduler (DDIMScheduler: scaled_linear betas 0.00085 -> 0.012, v-prediction, "leading" steps +
    steps_offset 1, set_alpha_to_one False) becomes the decoder's StageInfo;
  * text-to-image (StableUnCLIPPipeline; the small model with Karlo's prior is the official pairing): a
    PriorTransformer over a CLIPTextModelWithProjection (prior_text_encoder, OpenAI ViT-L/14), sampled with a
    DDPMScheduler built from the prior's UnCLIPScheduler config ("leading" steps, x0 clipped to 5). The text encoder
    of the prior is the pipeline's CLIP text tower (z_t in z_i's space); SD's own text encoder (a CLIPTextModel,
    no projection) is the decoder's text tower, in decoder_text/.
"""
from __future__ import annotations

import json
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
from ..kl_vae import KLAutoencoder, kl_config_from_diffusers
from ..pipeline import StageInfo
from ..prior import DiffusionPrior
from ..sampling import SamplingConfig
from .diffusers_unet import (UNET_FIXED, check_values, load_mapped, read_diffusers_weights, rename_unet,
                             unet_decoder_geometry, unet_levels)
from .karlo import DTYPES, map_prior_state, prior_config_from_karlo

COMMON_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "image_normalizer", "image_noising_scheduler",
                  "scheduler")
IMG2IMG_FOLDERS = ("image_encoder",)  # + feature_extractor/ (optional: OpenAI CLIP's preprocessing without it)
TEXT_FOLDERS = ("prior", "prior_scheduler", "prior_text_encoder", "prior_tokenizer")
KARLO_PRIOR_FOLDERS = ("prior", "prior_scheduler", "text_encoder", "tokenizer")

# raw embeddings (as the image tower and the prior give them); the "noise_augmented" decoder conditioning
STABLE_UNCLIP_CONVENTIONS = Conventions(text="noise_augmented", normalize_embeddings=False)
# diffusers' defaults: decoder 20 DDIM steps at guidance 10, eta 0, noise_level 0; prior 25 steps at guidance 4, one
# sample per image
STABLE_UNCLIP_SAMPLING = SamplingConfig(prior_sampler="ddpm", prior_steps=25, prior_guidance=4.0, best_of=1,
                                        decoder_sampler="ddim", decoder_steps=20, decoder_guidance=10.0, eta=0.0,
                                        noise_level=0)

DECODER_FIXED = {**{k: v for k, v in UNET_FIXED.items()
                    if k not in ("use_linear_projection", "upcast_attention", "projection_class_embeddings_input_dim",
                                 "num_attention_heads")},
                 "class_embed_type": "projection", "mid_block_type": "UNetMidBlock2DCrossAttn",
                 "resnet_time_scale_shift": "default", "downsample_padding": 1, "mid_block_scale_factor": 1}


def _heads(unet: Mapping[str, Any], where: str, attends: list[bool]) -> int:
    """The one head width of every attending level (diffusers' num_attention_heads, or attention_head_dim as SD 2.x
    spells the head counts) and of the mid block."""
    widths = [int(w) for w in unet["block_out_channels"]]
    heads = unet.get("num_attention_heads") or unet.get("attention_head_dim", 8)
    heads = [int(heads)] * len(widths) if isinstance(heads, int) else [int(h) for h in heads]
    if len(heads) != len(widths):
        raise ValueError(f"{where}: {len(heads)} head counts for {len(widths)} levels")
    used = [(w, h) for w, h, a in zip(widths, heads, attends) if a] + [(widths[-1], heads[-1])]
    dims = {w // h for w, h in used}
    if len(dims) != 1 or any(w % h for w, h in used):
        raise ValueError(f"{where}: attention heads {heads} over widths {widths} give head widths "
                         f"{sorted(dims)}; our Decoder takes one head width for every level")
    return dims.pop()


def decoder_config_from_stable_unclip(unet: Mapping[str, Any], where: str = "unet/config.json") -> DecoderConfig:
    """SD 2.1 unCLIP's UNet2DConditionModel config -> DecoderConfig (what ours cannot express is named)."""
    check_values(unet, DECODER_FIXED, where)
    attends = unet_levels(unet, where, "CrossAttnDownBlock2D", "CrossAttnUpBlock2D", plain_down="DownBlock2D",
                          plain_up="UpBlock2D")
    head = _heads(unet, where, attends)
    geometry = unet_decoder_geometry({**unet, "attention_head_dim": head}, where, attends, default_out_channels=4)
    proj = unet.get("projection_class_embeddings_input_dim")
    if not proj or int(proj) % 2:
        raise ValueError(f"{where}: projection_class_embeddings_input_dim={proj!r}; Stable unCLIP's is twice the "
                         "image embedding's dimension (noised embedding + noise-level embedding)")
    return DecoderConfig(**geometry, clip_dim=int(proj) // 2, n_clip_tokens=0,
                         text_width=int(unet["cross_attention_dim"]), context_dim=0, use_z_t=False, dropout=0.0,
                         use_scale_shift_norm=False, resblock_updown=False, attention_kind="cross",
                         noise_augmented=True)


def map_decoder_state(unet: Mapping[str, Tensor], normalizer: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SD unCLIP UNet + StableUnCLIPImageNormalizer tensors -> Decoder names (null_z_i, unused, is zero)."""
    out = {}
    for k, v in unet.items():
        if k.startswith("class_embedding."):
            out["z_i_aug_to_time." + k[len("class_embedding."):]] = v
            continue
        if (".proj_in." in k or ".proj_out." in k) and v.ndim == 4:  # use_linear_projection=False: 1x1 convs
            v = v[:, :, 0, 0]
        out[rename_unet(k)] = v
    for k, v in normalizer.items():
        out[{"mean": "z_i_mean", "std": "z_i_std"}.get(k, "image_normalizer:" + k)] = v.reshape(-1)
    d = out.get("z_i_mean", torch.zeros(1)).numel()
    out["null_z_i"] = torch.zeros(d)
    return out


def decoder_stage_info(cfg: Mapping[str, Any], where: str) -> tuple[StageInfo, str]:
    """The decoder's DDIMScheduler / DDPMScheduler config -> (StageInfo, our sampler)."""
    cls = cfg.get("_class_name", "DDIMScheduler")
    check_choice(f"{where} _class_name", cls, ("DDIMScheduler", "DDPMScheduler"))
    check_values(cfg, {"num_train_timesteps": 1000, "clip_sample": False, "thresholding": False,
                       "rescale_betas_zero_snr": False, "trained_betas": None}, where)
    pred = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(cfg.get("prediction_type", "epsilon"))
    if pred is None:
        raise ValueError(f"{where}: prediction_type={cfg['prediction_type']!r}; supported: 'epsilon', "
                         "'v_prediction', 'sample'")
    schedule = cfg.get("beta_schedule", "linear")
    check_choice(f"{where} beta_schedule", schedule, ("linear", "scaled_linear"))
    spacing = cfg.get("timestep_spacing", "leading")
    check_choice(f"{where} timestep_spacing", spacing, ("leading", "trailing", "linspace"))
    info = StageInfo(pred, None, schedule=schedule, beta_start=float(cfg.get("beta_start", 0.0001)),
                     beta_end=float(cfg.get("beta_end", 0.02)), steps_offset=int(cfg.get("steps_offset", 0)),
                     spacing=spacing, set_alpha_to_one=bool(cfg.get("set_alpha_to_one", True)))
    return info, ("ddim" if cls == "DDIMScheduler" else "ddpm")


def noising_stage_info(cfg: Mapping[str, Any], where: str) -> StageInfo:
    """image_noising_scheduler (DDPMScheduler, squaredcos_cap_v2, 1000 steps) -> the z_i noising schedule."""
    check_values(cfg, {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "trained_betas": None},
                 where)
    return StageInfo("eps", None)


def prior_stage_info(cfg: Mapping[str, Any], where: str) -> StageInfo:
    """The prior's scheduler config (a DDPMScheduler, or Karlo's UnCLIPScheduler, which StableUnCLIPPipeline
    runs as a DDPMScheduler from its config) -> StageInfo of our "ddpm" sampler: x0 clipped, "leading" steps."""
    check_values(cfg, {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                       "variance_type": "fixed_small_log"}, where)
    pred = {"epsilon": "eps", "sample": "x0"}.get(cfg.get("prediction_type", "epsilon"))
    if pred is None:
        raise ValueError(f"{where}: prediction_type={cfg['prediction_type']!r}; supported: 'epsilon', 'sample'")
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else None
    spacing = cfg.get("timestep_spacing", "leading") if cfg.get("_class_name") == "DDPMScheduler" else "leading"
    return StageInfo(pred, clip, spacing=spacing, steps_offset=int(cfg.get("steps_offset", 0)))


def _config(folder: Path, expected: tuple[str, ...], name: str = "config.json") -> dict[str, Any]:
    path = folder / name
    cfg = read_json_object(path, f"{path} not found: is {folder.parent} a Stable unCLIP folder in diffusers layout?")
    cls = cfg.get("_class_name")
    if cls is not None and cls not in expected:
        raise ValueError(f"{path} describes a {cls}, expected {' or '.join(expected)}")
    return cfg


def _write_stage(root: Path, stage: str, model: nn.Module, dtype: str, src: Path) -> None:
    (root / stage).mkdir()
    card = f"# {stage}\n\nImported from the Stable unCLIP folder {src} by unclip_core.families.stable_unclip.\n"
    _write_checkpoint(root / stage, model.to(DTYPES[dtype]), card, {"imported_from": str(src)})


def _check_folder(src: Path, need: tuple[str, ...], what: str) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"{what} folder {src} does not exist")
    missing = [d for d in need if not (src / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{src} is not a {what} folder in diffusers layout: missing subfolders {missing}")


def stable_unclip_variant(src: str | Path) -> str:
    """"img2img" (StableUnCLIPImg2ImgPipeline: image_encoder/) or "text" (StableUnCLIPPipeline: prior/)."""
    src = Path(src)
    index = src / "model_index.json"
    if index.is_file():
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        if cls in ("StableUnCLIPImg2ImgPipeline", "StableUnCLIPPipeline"):
            return "img2img" if cls == "StableUnCLIPImg2ImgPipeline" else "text"
    if (src / "prior").is_dir():
        return "text"
    return "img2img"


def import_stable_unclip(src: str | Path, out: str | Path, *, prior: str | Path | None = None,
                         overwrite: bool = False, dtype: str = "float32") -> Path:
    """Convert a Stable unCLIP folder (diffusers layout, either variant) into our pipeline folder; returns `out`.

    Stages: decoder (the UNet + image normalizer), autoencoder (AutoencoderKL), prior (text variant, or from the
    Karlo folder `prior`: the official text-to-image pairing of the ViT-L/14 "small" model); clip/ holds the CLIP
    towers of z_i's space (the image encoder, and the prior's text encoder), decoder_text/ SD's text encoder and
    tokenizer. Every tensor is mapped by name and shape; `dtype` is the storage dtype of our stages.
    """
    src = Path(src).expanduser()
    check_choice("dtype", dtype, tuple(DTYPES))
    _check_folder(src, COMMON_FOLDERS, "Stable unCLIP")
    variant = stable_unclip_variant(src)
    layout = "StableUnCLIPImg2ImgPipeline" if variant == "img2img" else "StableUnCLIPPipeline"
    _check_folder(src, IMG2IMG_FOLDERS if variant == "img2img" else TEXT_FOLDERS, f"Stable unCLIP ({layout})")
    if prior is not None:
        prior = Path(prior).expanduser()
        if variant == "text":
            raise ValueError(f"{src} already has a prior (a StableUnCLIPPipeline folder); --prior adds one to the "
                             "image-variation folder (StableUnCLIPImg2ImgPipeline)")
        _check_folder(prior, KARLO_PRIOR_FOLDERS, "Karlo (prior)")
    dec_info, sampler = decoder_stage_info(_config(src / "scheduler", ("DDIMScheduler", "DDPMScheduler"),
                                                   "scheduler_config.json"), "scheduler/scheduler_config.json")
    noising = noising_stage_info(_config(src / "image_noising_scheduler", ("DDPMScheduler",), "scheduler_config.json"),
                                 "image_noising_scheduler/scheduler_config.json")
    dcfg = decoder_config_from_stable_unclip(_config(src / "unet", ("UNet2DConditionModel",)))
    norm_cfg = _config(src / "image_normalizer", ("StableUnCLIPImageNormalizer",))
    if int(norm_cfg.get("embedding_dim", 768)) != dcfg.clip_dim:
        raise ValueError(f"image_normalizer embedding_dim={norm_cfg.get('embedding_dim', 768)} but the UNet reads "
                         f"{dcfg.clip_dim}-d image embeddings")
    # the towers of z_i's space: the image encoder (img2img) or the prior's text encoder (text / --prior)
    prior_src = src if variant == "text" else prior
    prior_sub = ("prior_text_encoder", "prior_tokenizer") if variant == "text" else ("text_encoder", "tokenizer")
    out = Path(out).expanduser()
    with atomic_dir(out, overwrite) as tmp:
        clip_dir = tmp / "clip"
        clip_dir.mkdir()
        if variant == "img2img":
            shutil.copytree(src / "image_encoder", clip_dir / "image_encoder")
            if (src / "feature_extractor").is_dir():
                shutil.copytree(src / "feature_extractor", clip_dir / "feature_extractor")
        if prior_src is not None:
            shutil.copytree(prior_src / prior_sub[0], clip_dir / "text_encoder")
            shutil.copytree(prior_src / prior_sub[1], clip_dir / "tokenizer")
        shutil.copytree(src / "text_encoder", tmp / "decoder_text" / "text_encoder")
        shutil.copytree(src / "tokenizer", tmp / "decoder_text" / "tokenizer")
        clip = load_hf_clip(clip_dir)
        text = load_hf_clip(tmp / "decoder_text")
        if text.text_width != dcfg.text_width:
            raise ValueError(f"text_encoder/ has hidden size {text.text_width} but the UNet cross-attends to "
                             f"{dcfg.text_width}-wide tokens (cross_attention_dim)")
        stages = {"decoder": "decoder", "autoencoder": "autoencoder"}
        infos = {"decoder": asdict(dec_info), "z_i_noising": asdict(noising)}
        if prior_src is not None:
            pcfg = prior_config_from_karlo(_config(prior_src / "prior", ("PriorTransformer",)))
            if pcfg.clip_dim != dcfg.clip_dim:
                raise ValueError(f"the prior makes {pcfg.clip_dim}-d image embeddings but the UNet reads "
                                 f"{dcfg.clip_dim}-d ones: Karlo's prior (ViT-L/14, 768) pairs with the small model")
            p_info = prior_stage_info(_config(prior_src / "prior_scheduler", ("UnCLIPScheduler", "DDPMScheduler"),
                                              "scheduler_config.json"), "prior_scheduler/scheduler_config.json")
            state = map_prior_state(read_diffusers_weights(prior_src / "prior"))
            state["null_z_t"] = clip.encode_text([""], normalize=False)[0]  # unused: "" is encoded live
            _write_stage(tmp, "prior", load_mapped(DiffusionPrior(pcfg), state, str(prior_src / "prior")), dtype,
                         prior_src)
            del state
            stages = {"prior": "prior", **stages}
            infos["prior"] = asdict(p_info)
        state = map_decoder_state(read_diffusers_weights(src / "unet"),
                                  read_diffusers_weights(src / "image_normalizer"))
        _write_stage(tmp, "decoder", load_mapped(Decoder(dcfg), state, str(src / "unet")), dtype, src)
        del state
        vcfg = kl_config_from_diffusers(_config(src / "vae", ("AutoencoderKL",)))
        vcfg = type(vcfg)(**{**asdict(vcfg), "image_size": dcfg.image_size * vcfg.factor})
        vae = load_mapped(KLAutoencoder(vcfg), read_diffusers_weights(src / "vae"), str(src / "vae"))
        _write_stage(tmp, "autoencoder", vae, dtype, src)
        sampling = STABLE_UNCLIP_SAMPLING.replace(decoder_sampler=sampler)
        name = f"stable-unclip:{src.name}" + (f"+{prior.name}" if prior is not None else "")
        meta = {"family": "stable-unclip", "variant": variant if prior is None else "text", "name": name,
                "clip": "clip", "decoder_text": "decoder_text",
                "source": [str(src)] + ([str(prior)] if prior is not None else []), "stage_info": infos,
                "conventions": STABLE_UNCLIP_CONVENTIONS.to_dict(), "sampling": sampling.to_dict()}
        _write_json(tmp / PIPELINE_FILE, {"format": FORMAT, "stages": stages, "metadata": meta})
        (tmp / "README.md").write_text(f"# Stable unCLIP (imported)\n\nConverted from {src}"
                                       + (f" with the prior of {prior}" if prior is not None else "")
                                       + " by unclip_core.families.stable_unclip.import_stable_unclip. Load with "
                                       "`UnCLIP.load(path)`.\n", encoding="utf-8")
    return out


__all__ = ["DECODER_FIXED", "STABLE_UNCLIP_CONVENTIONS", "STABLE_UNCLIP_SAMPLING",
           "decoder_config_from_stable_unclip",
           "decoder_stage_info", "import_stable_unclip", "map_decoder_state", "noising_stage_info", "prior_stage_info",
           "stable_unclip_variant"]
