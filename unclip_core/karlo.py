"""Karlo (kakaobrain/karlo-v1-alpha, an unCLIP reproduction) in our format: importer, text encoder, sampling.

Karlo's published folder is in diffusers layout (prior/, decoder/, text_proj/, super_res_first/,
super_res_last/, text_encoder/, tokenizer/, *_scheduler/). `import_karlo(src, out)` converts it into a
pipeline folder of ours (pipeline.json + one checkpoint per stage), mapping every tensor by name and shape;
`UnCLIP.load(out)` then returns a `KarloUnCLIP` (once this module is imported; `explorer.load_pipeline(out)` always
knows it), which samples exactly as diffusers' UnCLIPPipeline does:

  * the unconditional branch of both guided stages is the CLIP encoding of the empty prompt "" (z_t, tokens
    and mask), not a learned null; the decoder's null z_i is Karlo's learned one;
  * z_t (the projected text embedding) and z_i (the prior's output, de-standardised with CLIP statistics) are
    *not* L2-normalised: Karlo's decoder consumes them raw;
  * the "unclip" sampler is Karlo's UnCLIPScheduler (samplers.sample_unclip): prior x0-prediction clipped to
    [-5, 5] with beta~ variance, decoder eps with learned variance, super-resolution eps with beta~;
  * the super-resolution stage has two networks: `super_res_first` for every step but the last, which uses
    `super_res_last`; the 64px image is upsampled with antialiased bicubic (diffusers' kernel).

Karlo's text encoder is Hugging Face's CLIPTextModelWithProjection (OpenAI ViT-L/14 text tower); it is copied
as is and wrapped so that our ClipEncoder reads it (`load_karlo_clip`). Karlo's folder has no image tower:
image variations and inversion need one (see docs/real_models.md).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import atomic_dir
from .checkpoint import (FORMAT, PIPELINE_FILE, _write_checkpoint, _write_json, check_state_dict,
                         load_checkpoint, read_pipeline, resolve)
from .checks import check_choice, check_embeddings, check_positive_int
from .clip import ClipEncoder
from .decoder import Decoder, DecoderConfig
from .pipeline import StageInfo, UnCLIP, UnCLIPOutput, _check_prompts, read_sampling, register_family
from .prior import DiffusionPrior, PriorConfig
from .provenance import tensor_hash
from .imageio import tensor_to_pil
from .seeds import generator
from .sampling import SamplingConfig, check_sampling
from .samplers import classifier_free_guidance, get_sampler, model_to_denoiser, run_sampler, timesteps
from .upsampler import Upsampler, UpsamplerConfig, upsample_low_res

# diffusers' UnCLIPPipeline defaults: 25 prior, 25 decoder and 7 super-resolution steps of UnCLIPScheduler,
# guidance 4 (prior) and 8 (decoder), one prior sample per image
KARLO_SAMPLING = SamplingConfig(prior_sampler="unclip", prior_steps=25, prior_guidance=4.0, best_of=1,
                                decoder_sampler="unclip", decoder_steps=25, decoder_guidance=8.0,
                                upsampler_sampler="unclip", upsampler_steps=(7,))
KARLO_FOLDERS = ("prior", "decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder", "tokenizer",
                 "prior_scheduler", "decoder_scheduler", "super_res_scheduler")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# OpenAI CLIP's image preprocessing; recorded for an image tower loaded beside Karlo's text tower
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# --- reading a diffusers folder -------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {path.parent.parent} a Karlo folder in diffusers layout "
                                f"(subfolders {', '.join(KARLO_FOLDERS)})?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_config(folder: Path, expected_class: str, name: str = "config.json") -> dict[str, Any]:
    cfg = _read_json(folder / name)
    cls = cfg.get("_class_name")
    if cls is not None and cls != expected_class:
        raise ValueError(f"{folder / name} describes a {cls}, expected {expected_class}: "
                         f"{folder.name}/ of a Karlo folder holds a {expected_class}")
    return cfg


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
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
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


def _check_values(cfg: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise listing every config value our modules cannot express (absent keys take diffusers' defaults)."""
    bad = [f"{k}={cfg[k]!r} (supported: {v!r})" for k, v in expected.items() if k in cfg and cfg[k] != v]
    if bad:
        raise ValueError(f"{where} uses settings that this importer does not support: {'; '.join(bad)}. "
                         "It reads Karlo's architecture (diffusers' UnCLIPPipeline components)")


# --- configs --------------------------------------------------------------------------------------
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


_DECODER_FIXED = {"act_fn": "silu", "center_input_sample": False, "class_embed_type": "identity",
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


def _levels(cfg: Mapping[str, Any], where: str, attn_down: str | None, attn_up: str | None) -> list[bool]:
    """Which UNet levels attend, from the block types; the down and up lists must mirror each other."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    plain_down, plain_up = "ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D"
    ok_down, ok_up = {plain_down, attn_down} - {None}, {plain_up, attn_up} - {None}
    bad = [b for b in down if b not in ok_down] + [b for b in up if b not in ok_up]
    if bad or len(down) != len(up):
        raise ValueError(f"{where}: block types {bad or (down, up)} are not Karlo's; supported down blocks "
                         f"{sorted(ok_down)}, up blocks {sorted(ok_up)}, as many up as down")
    attends = [b == attn_down for b in down]
    if attends != [b == attn_up for b in reversed(up)]:
        raise ValueError(f"{where}: down_block_types {down} and up_block_types {up} must mirror each other")
    return attends


def _unet_widths(cfg: Mapping[str, Any], where: str) -> tuple[int, tuple[int, ...]]:
    widths = [int(w) for w in cfg["block_out_channels"]]
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"{where}: block_out_channels {widths} must be multiples of the first")
    return base, tuple(w // base for w in widths)


def decoder_config_from_karlo(unet: Mapping[str, Any], proj: Mapping[str, Any]) -> DecoderConfig:
    """diffusers UNet2DConditionModel + UnCLIPTextProjModel configs -> DecoderConfig (use_z_t=True)."""
    _check_values(unet, _DECODER_FIXED, "decoder/config.json")
    attends = _levels(unet, "decoder/config.json", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnUpBlock2D")
    mc, mult = _unet_widths(unet, "decoder/config.json")
    size = int(unet["sample_size"])
    head = unet.get("attention_head_dim", 8)
    if not isinstance(head, int):
        raise ValueError(f"decoder/config.json: attention_head_dim must be one int, got {head!r}")
    E = 4 * mc
    if int(proj["time_embed_dim"]) != E:
        raise ValueError(f"text_proj time_embed_dim={proj['time_embed_dim']} != 4 x block_out_channels[0] = {E}")
    if int(proj["cross_attention_dim"]) != int(unet["cross_attention_dim"]):
        raise ValueError(f"text_proj cross_attention_dim={proj['cross_attention_dim']} differs from the "
                         f"decoder's {unet['cross_attention_dim']}")
    d = int(proj.get("clip_embeddings_dim", 768))
    in_ch, out_ch = int(unet.get("in_channels", 4)), int(unet.get("out_channels", 4))
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"decoder out_channels={out_ch} must be in_channels={in_ch} or twice it (learned variance)")
    return DecoderConfig(image_size=size, in_channels=in_ch, model_channels=mc, channel_mult=mult,
                         n_res_blocks=int(unet.get("layers_per_block", 2)),
                         attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attends) if a),
                         head_channels=head, clip_dim=d, n_clip_tokens=int(proj.get("clip_extra_context_tokens", 4)),
                         text_width=d, context_dim=int(unet["cross_attention_dim"]), use_z_t=True,
                         learn_sigma=out_ch == 2 * in_ch, dropout=0.0, use_scale_shift_norm=True,
                         resblock_updown=True, norm_groups=int(unet.get("norm_num_groups", 32)))


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


def scheduler_settings(cfg: Mapping[str, Any], where: str) -> tuple[StageInfo, str]:
    """UnCLIPScheduler config -> (StageInfo(prediction, clip_x0), variance for sample_unclip)."""
    _check_values(cfg, {"_class_name": "UnCLIPScheduler", "num_train_timesteps": 1000,
                        "beta_schedule": "squaredcos_cap_v2"}, where)
    pred = {"epsilon": "eps", "sample": "x0"}.get(cfg.get("prediction_type", "epsilon"))
    if pred is None:
        raise ValueError(f"{where}: prediction_type={cfg['prediction_type']!r}; supported: 'epsilon', 'sample'")
    variance = cfg.get("variance_type", "fixed_small_log")
    check_choice(f"{where} variance_type", variance, ("fixed_small_log", "learned_range"))
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else None
    return StageInfo(pred, clip), variance


# --- tensors --------------------------------------------------------------------------------------
_UNET_RENAMES = ((".downsamplers.0.", ".resample."), (".upsamplers.0.", ".resample."), (".to_out.0.", ".to_out."))


def _rename_unet(key: str) -> str:
    if key.startswith("time_embedding."):
        return key
    if key.startswith("conv_norm_out."):
        key = "norm_out." + key[len("conv_norm_out."):]
    for a, b in _UNET_RENAMES:
        key = key.replace(a, b)
    return "unet." + key


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


def _load_mapped(model: nn.Module, state: Mapping[str, Tensor], source: str) -> nn.Module:
    check_state_dict(model, state, source=f"{source} (after mapping Karlo's names to ours)")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


# --- Karlo's text encoder as our ClipEncoder -----------------------------------------------------
class HFTextTower(nn.Module):
    """HF CLIPTextModelWithProjection as an open_clip-like tower: z_t = text_embeds, tokens = last_hidden_state."""

    pool_type = "argmax"  # CLIP's [EOT] pooling; [EOT] is the largest id of CLIP's vocabulary

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.transformer = model
        self.output_tokens = False

    @property
    def text_projection(self) -> nn.Linear:
        return self.transformer.text_projection

    def forward(self, ids: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.transformer(input_ids=ids)
        return (out.text_embeds, out.last_hidden_state) if self.output_tokens else out.text_embeds


class _NoImageTower:
    """Placeholder for the missing vision tower: carries OpenAI CLIP's preprocessing so ClipEncoder can be built."""

    image_size = 224
    preprocess_cfg = {"size": 224, "mean": _OPENAI_MEAN, "std": _OPENAI_STD, "interpolation": "bicubic",
                      "resize_mode": "shortest"}


class KarloClipModel(nn.Module):
    """Karlo's CLIP text encoder behind the open_clip model interface that ClipEncoder uses (text only)."""

    def __init__(self, text_model: nn.Module, context_length: int) -> None:
        super().__init__()
        self.text = HFTextTower(text_model)
        self.visual = _NoImageTower()
        self.context_length = context_length

    def encode_text(self, ids: Tensor, normalize: bool = False) -> Tensor:
        z_t = self.text(ids)
        return F.normalize(z_t, dim=-1) if normalize else z_t

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        raise ValueError("Karlo's folder holds only CLIP's text tower (text_encoder/), so images cannot be "
                         "encoded; image variations need OpenAI's ViT-L/14 image tower (see docs/real_models.md)")


class HFTokenizer:
    """CLIPTokenizer called as open_clip tokenizers are: list of prompts -> (B, L) ids, padded to L."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        L = context_length or self.tokenizer.model_max_length
        return self.tokenizer(list([texts] if isinstance(texts, str) else texts), padding="max_length",
                              max_length=L, truncation=True, return_tensors="pt").input_ids


def load_karlo_clip(folder: str | Path, device: str = "cpu") -> ClipEncoder:
    """Karlo's text encoder folder (text_encoder/ + tokenizer/) -> our ClipEncoder (text only)."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    folder = Path(folder)
    for sub in ("text_encoder", "tokenizer"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder / sub} not found: a Karlo CLIP folder holds text_encoder/ and tokenizer/")
    model = CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder"), local_files_only=True,
                                                        torch_dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    L = int(min(tok.model_max_length, model.config.max_position_embeddings))
    return ClipEncoder(KarloClipModel(model, L), HFTokenizer(tok), spec=str(folder), device=device)


# --- importer -------------------------------------------------------------------------------------
def _stage_card(stage: str, src: Path) -> str:
    return f"# {stage}\n\nImported from the Karlo folder {src} by unclip_core.karlo.import_karlo.\n"


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
    infos, variances = {}, {}
    for stage, folder in (("prior", "prior_scheduler"), ("decoder", "decoder_scheduler"),
                          ("upsampler1", "super_res_scheduler")):
        infos[stage], variances[stage] = scheduler_settings(
            _read_config(src / folder, "UnCLIPScheduler", "scheduler_config.json"), f"{folder}/scheduler_config.json")
    clip = load_karlo_clip(src)
    out = Path(out).expanduser()
    with atomic_dir(out, overwrite) as tmp:
        # one stage at a time, so that the full-size models need memory for one stage only
        prior = DiffusionPrior(prior_config_from_karlo(_read_config(src / "prior", "PriorTransformer")))
        state = map_prior_state(read_diffusers_weights(src / "prior"))
        # Karlo's prior has no learned null text: its unconditional input is the encoding of "" (stored here
        # so that the checkpoint is complete; KarloUnCLIP encodes "" at run time, as diffusers does)
        state["null_z_t"] = clip.encode_text([""], normalize=False)[0]
        _write_stage(tmp, "prior", _load_mapped(prior, state, str(src / "prior")), dtype, src)
        del prior, state
        unet_cfg = _read_config(src / "decoder", "UNet2DConditionModel")
        proj_cfg = _read_config(src / "text_proj", "UnCLIPTextProjModel")
        dcfg = decoder_config_from_karlo(unet_cfg, proj_cfg)
        if (variances["decoder"] == "learned_range") != dcfg.learn_sigma:
            raise ValueError(f"decoder_scheduler variance_type={variances['decoder']!r} does not fit a decoder with "
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
                "stage_info": {k: asdict(v) for k, v in infos.items()}, "variance": variances,
                "sampling": KARLO_SAMPLING.to_dict()}
        _write_json(tmp / PIPELINE_FILE, {"format": FORMAT, "stages": stages, "metadata": meta})
        (tmp / "README.md").write_text(f"# Karlo (imported)\n\nConverted from {src} by unclip_core.karlo.import_karlo. "
                                       "Load with `UnCLIP.load(path)`.\n", encoding="utf-8")
    return out


def _write_stage(root: Path, stage: str, model: nn.Module, dtype: str, src: Path) -> None:
    (root / stage).mkdir()
    _write_checkpoint(root / stage, model.to(DTYPES[dtype]), _stage_card(stage, src), {"imported_from": str(src)})


# --- sampling as diffusers' UnCLIPPipeline --------------------------------------------------------
class KarloUnCLIP(UnCLIP):
    """unCLIP with Karlo's conventions (module doc): "" as the unconditional text, raw z_t and z_i, UnCLIPScheduler."""

    DEFAULT_SAMPLING = KARLO_SAMPLING

    def __init__(self, clip: ClipEncoder, decoder: Decoder, prior: DiffusionPrior | None = None,
                 upsamplers: Sequence[Upsampler] = (), upsamplers_last: Sequence[Upsampler | None] = (),
                 stage_info: Mapping[str, StageInfo] | None = None, variances: Mapping[str, str] | None = None,
                 name: str = "karlo", *, sampling: SamplingConfig | None = None) -> None:
        super().__init__(clip, decoder, prior, upsamplers, stage_info, name=name, sampling=sampling)
        last = list(upsamplers_last) + [None] * (len(self.upsamplers) - len(upsamplers_last))
        if len(last) != len(self.upsamplers):
            raise ValueError(f"upsamplers_last has {len(upsamplers_last)} entries for "
                             f"{len(self.upsamplers)} upsamplers; pass one (or None) per upsampler")
        for k, (u, v) in enumerate(zip(self.upsamplers, last)):
            if v is not None and (v.config.low_res, v.config.out_res) != (u.config.low_res, u.config.out_res):
                raise ValueError(f"upsampler{k + 1}_last maps {v.config.low_res}->{v.config.out_res}px but "
                                 f"upsampler{k + 1} maps {u.config.low_res}->{u.config.out_res}px")
        self.upsamplers_last = [v.eval() if v is not None else None for v in last]
        self.variances = {"prior": "fixed_small_log", "decoder": "learned_range" if decoder.config.learn_sigma
                          else "fixed_small_log", "upsampler1": "fixed_small_log", "upsampler2": "fixed_small_log"}
        self.variances.update(variances or {})
        self._null_text: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def load(cls, spec: str | Path, device: str = "cpu") -> "KarloUnCLIP":
        """Load a folder written by `import_karlo`."""
        folder = resolve(spec)
        dirs, meta = read_pipeline(folder)
        if meta.get("family") != "karlo":
            raise ValueError(f"{folder} is not an imported Karlo pipeline (pipeline.json metadata family="
                             f"{meta.get('family')!r}); load it with UnCLIP.load")
        clip = load_karlo_clip(folder / str(meta.get("clip", "clip")), device=device)
        models = {n: load_checkpoint(d, device=device) for n, d in dirs.items()}
        ups = [models[n] for n in ("upsampler1", "upsampler2") if n in models]
        last = [models.get(f"{n}_last") for n in ("upsampler1", "upsampler2") if n in models]
        info = {n: StageInfo(**v) for n, v in meta.get("stage_info", {}).items()}
        return cls(clip, models["decoder"], models.get("prior"), ups, last, info, meta.get("variance"),
                   name=str(meta.get("name", spec)), sampling=read_sampling(meta, folder, cls.DEFAULT_SAMPLING))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        for k, v in enumerate(self.upsamplers_last):
            if v is not None:
                d["parameters"][f"upsampler{k + 1}_last"] = sum(p.numel() for p in v.parameters())
        return d

    # ------------------------------------------------------------------ text
    def text_condition(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(z_t (B, d) unnormalised, token features (B, L, w), mask (B, L) bool) of CLIP's text tower."""
        ids = self.clip.tokenize(list(prompts)).to(self.clip.device)
        tower = self.clip.model.text
        tower.output_tokens = True  # one pass of the text tower gives both
        try:
            with torch.inference_mode():
                z_t, feats = tower(ids)
        finally:
            tower.output_tokens = False
        mask = self.clip.token_mask(ids)
        return z_t.float().to(self.device), feats.float().to(self.device), mask.to(self.device)

    def _null(self, B: int) -> tuple[Tensor, Tensor, Tensor]:
        if self._null_text is None:
            self._null_text = self.text_condition([""])
        return tuple(x.expand(B, *x.shape[1:]) for x in self._null_text)  # type: ignore[return-value]

    # ------------------------------------------------------------------ sampling
    def _sample(self, denoise: Callable, x_T: Tensor, *, steps: int, sampler: str, generator: torch.Generator,
                progress: bool, stage: str, eta: float = 0.0) -> Tensor:
        variance = self.variances[stage] if sampler == "unclip" else None
        return run_sampler(sampler, denoise, x_T, self.schedule, steps, eta=eta, variance=variance,
                           generator=generator, progress=progress, label=stage)

    def clip_denoised_rule(self, clip_denoised: bool | None, *, x_T_given: bool, sampler: str) -> bool:
        """UnCLIP's rule, except that the "unclip" sampler always clamps (diffusers' UnCLIPScheduler does)."""
        if clip_denoised is None and sampler == "unclip":
            return True
        return super().clip_denoised_rule(clip_denoised, x_T_given=x_T_given, sampler=sampler)

    def _learned(self, stage: str, sampler: str) -> bool:
        return sampler == "unclip" and self.variances[stage] == "learned_range"

    @staticmethod
    def _noise(x_T: Tensor | None, shape: tuple[int, ...], g: torch.Generator, name: str) -> Tensor:
        if x_T is None:
            return torch.randn(shape, generator=g)
        if not isinstance(x_T, Tensor) or tuple(x_T.shape) != shape or not x_T.dtype.is_floating_point:
            got = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
            raise ValueError(f"{name} must be a float tensor of shape {shape}, got {got}; pass None to draw it "
                             "from the seed")
        return x_T

    def sample_prior(self, prompts: str | Sequence[str], *, n: int = 1, sampling: SamplingConfig | None = None,
                     seed: int | torch.Generator | None = None, progress: bool = False,
                     x_T: Tensor | None = None) -> Tensor:
        """z_i ~ p(z_i | y) (Ramesh et al. 2022, sec. 2.2) as Karlo: raw (not unit-norm) image embeddings (len*n, d).

        x_T (len*n*best_of, d) fixes the prior's initial noise (diffusers' prior_latents).
        """
        if self.prior is None:
            raise ValueError("this pipeline has no prior; decode image embeddings with .decode(z_i) instead")
        prompts = _check_prompts(prompts)
        n = check_positive_int("n", n)
        sc = check_sampling(sampling, self.sampling)
        best_of, steps, guidance, sampler = sc.best_of, sc.prior_steps, sc.prior_guidance, sc.prior_sampler
        self._check_policy(prompts)
        g, seed = generator(seed)
        prior = self.prior
        expanded = [p for p in prompts for _ in range(n * best_of)]
        B = len(expanded)
        z_t, feats, mask = self.text_condition(expanded)
        n_tok = prior.config.n_text_tokens
        null_z, null_f, null_m = self._null(B)
        cond = {"z_t": prior.scale_cond(z_t), "text_tokens": feats[:, :n_tok], "text_mask": mask[:, :n_tok]}
        uncond = {"z_t": prior.scale_cond(null_z), "text_tokens": null_f[:, :n_tok], "text_mask": null_m[:, :n_tok]}
        x_T = self._noise(x_T, (B, prior.config.clip_dim), g, "x_T")
        with torch.inference_mode():
            net = classifier_free_guidance(prior, cond, uncond, guidance)
            info = self.stage_info["prior"]
            denoise = model_to_denoiser(net, self.schedule, info.prediction, info.clip_x0)
            x0 = self._sample(denoise, x_T.to(self.device), steps=steps, sampler=sampler, generator=g,
                              progress=progress, stage="prior")
            z_i = prior.scale_out(x0).float()
        z_i = z_i.view(len(prompts) * n, best_of, -1)
        scores = F.cosine_similarity(z_i, z_t.float().view(len(prompts) * n, best_of, -1), dim=-1)
        return z_i[torch.arange(z_i.shape[0]), scores.argmax(dim=1)].cpu()

    def _check_z_i(self, z_i: Tensor) -> Tensor:
        z_i = torch.as_tensor(check_embeddings("z_i", z_i, self.decoder.config.clip_dim, allow_1d=True))
        return (z_i[None] if z_i.ndim == 1 else z_i).float()  # Karlo's decoder reads raw embeddings

    def _decoder_denoiser(self, z_i: Tensor, prompts: list[str] | None, guidance: float, *,
                          clip_denoised: bool, with_variance: bool = False) -> Callable:
        dec = self.decoder
        B = z_i.shape[0]
        z_t, feats, mask = self.text_condition(prompts if prompts is not None else [""] * B)
        null_z, null_f, null_m = self._null(B)
        cond = {"z_i": z_i.to(self.device), "text_tokens": feats, "text_mask": mask, "z_t": z_t}
        uncond = {"z_i": dec.null_z_i[None].expand(B, -1), "text_tokens": null_f, "text_mask": null_m, "z_t": null_z}
        net = classifier_free_guidance(dec, cond, uncond, guidance)
        info = self.stage_info["decoder"]
        return model_to_denoiser(net, self.schedule, info.prediction, info.clip_x0 if clip_denoised else None,
                                 with_variance=with_variance)

    def decode(self, z_i: Tensor, *, sampling: SamplingConfig | None = None, x_T: Tensor | None = None,
               prompts: Sequence[str] | None = None, upsample: bool | int | None = None,
               seed: int | torch.Generator | None = None, progress: bool = False,
               super_res_x_T: Tensor | None = None) -> UnCLIPOutput:
        """Images from Karlo image embeddings z_i (B, d) and captions (default ""), as diffusers' UnCLIPPipeline.

        x_T / super_res_x_T fix the decoder's and the upsampler's initial noise (decoder_latents,
        super_res_latents). sampling.clip_denoised None follows clip_denoised_rule: with the "unclip" sampler
        predicted x0 is always clamped (UnCLIPScheduler); the value used is recorded in settings["clip_denoised"].
        """
        sc = check_sampling(sampling, self.sampling)
        z_i, prompt_list = self._check_decode_args(z_i, prompts)
        n_up = self.upsample_stages(upsample)
        g, seed = generator(seed)
        given = x_T is not None
        clip_denoised = self.clip_denoised_rule(sc.clip_denoised, x_T_given=given, sampler=sc.decoder_sampler)
        x_T = self._noise(x_T, self.x_T_shape(z_i.shape[0]), g, "x_T")
        with torch.inference_mode():
            learned = self._learned("decoder", sc.decoder_sampler)
            denoise = self._decoder_denoiser(z_i, prompt_list, sc.decoder_guidance, clip_denoised=clip_denoised,
                                             with_variance=learned)
            x = self._sample(denoise, x_T.to(self.device), steps=sc.decoder_steps, sampler=sc.decoder_sampler,
                             generator=g, progress=progress, stage="decoder", eta=sc.eta).clamp(-1, 1)
            stages = {"decoder": x.cpu()}
            for k in range(n_up):
                x = self.upsample(x, k, sampling=sc, seed=g, progress=progress,
                                  x_T=super_res_x_T if k == 0 else None)
                stages[f"upsampler{k + 1}"] = x.cpu()
        settings = {"sampling": sc.to_dict(), "clip_denoised": clip_denoised, "x_T_given": given,
                    "upsampler_steps": sc.upsampler_steps_for(n_up), "z_i_hash": tensor_hash(z_i), "seed": seed,
                    **self.describe()}
        out = UnCLIPOutput(tensor_to_pil(x.cpu()), z_i.cpu(), stages, settings)
        self._check_images(out)
        return out

    def upsample(self, low: Tensor, index: int, *, sampling: SamplingConfig | None = None,
                 seed: int | torch.Generator | None = None, progress: bool = False,
                 x_T: Tensor | None = None) -> Tensor:
        """Super-resolution stage `index` on (B, 3, h, h) images in [-1, 1]; the last step uses the `_last` net."""
        if not 0 <= index < len(self.upsamplers):
            raise ValueError(f"upsampler index {index} out of range; this pipeline has {len(self.upsamplers)}")
        sc = check_sampling(sampling, self.sampling)
        sampler, steps = sc.upsampler_sampler, sc.upsampler_steps_for(index + 1)[index]
        up = self.upsamplers[index]
        last = self.upsamplers_last[index] or up
        g, seed = generator(seed)
        B, _, h, w = low.shape
        if h != up.config.low_res:
            raise ValueError(f"upsampler{index + 1} takes {up.config.low_res}px images, got {h}px")
        f = up.config.factor
        low_up = upsample_low_res(low.to(self.device).float(), (h * f, w * f), up.config.antialias)
        ts = timesteps(self.schedule, steps, get_sampler(sampler).spacing)
        t_last = ts[-1]

        def net(x: Tensor, t: Tensor) -> Tensor:
            model = last if int(t.reshape(-1)[0]) == t_last else up
            return model(x, t, low_up)

        stage = f"upsampler{index + 1}"
        info = self.stage_info[stage]
        denoise = model_to_denoiser(net, self.schedule, info.prediction, info.clip_x0,
                                    with_variance=self._learned(stage, sampler))
        x_T = self._noise(x_T, (B, 3, h * f, w * f), g, "super_res_x_T")
        with torch.inference_mode():
            return self._sample(denoise, x_T.to(self.device), steps=torch.tensor(ts), sampler=sampler, generator=g,
                                progress=progress, stage=stage).clamp(-1, 1)

    def text_to_image(self, prompts: str | Sequence[str], *, n: int = 1, sampling: SamplingConfig | None = None,
                      upsample: bool | int | None = None, seed: int | torch.Generator | None = None,
                      progress: bool = False, prior_x_T: Tensor | None = None, decoder_x_T: Tensor | None = None,
                      super_res_x_T: Tensor | None = None) -> UnCLIPOutput:
        """Text -> prior -> z_i -> decoder -> super-resolution with Karlo's defaults (KARLO_SAMPLING).

        One generator draws every noise in diffusers' order (prior steps, decoder steps, upsampler steps);
        prior_x_T, decoder_x_T and super_res_x_T fix the initial noises as diffusers' *_latents arguments.
        """
        prompts = _check_prompts(prompts)
        sc = check_sampling(sampling, self.sampling)
        self.upsample_stages(upsample)
        g, seed = generator(seed)
        z_i = self.sample_prior(prompts, n=n, sampling=sc, seed=g, progress=progress, x_T=prior_x_T)
        expanded = [p for p in prompts for _ in range(n)]
        out = self.decode(z_i, sampling=sc, x_T=decoder_x_T, prompts=expanded, upsample=upsample, seed=g,
                          progress=progress, super_res_x_T=super_res_x_T)
        out.settings.update({"prompts": prompts, "n": n, "seed": seed})
        return out


register_family("karlo", KarloUnCLIP)
