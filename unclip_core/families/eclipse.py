"""ECLIPSE priors (Patel et al. 2024; ECLIPSE-Community/ECLIPSE_KandinskyV22_Prior, ECLIPSE_Karlo_Prior): a small prior
(~33M parameters, 10 layers) that is not a diffusion model: one pass maps N(0, I) noise, the text embedding and the
text tokens to the image embedding. It is diffusers' PriorTransformer without the timestep token (sequence
[text tokens, z_t, noise, final query], positional embedding 77 + 3), trained to be used raw: no CLIP statistics
are applied to its output and no classifier-free guidance is run.

`import_eclipse(prior_dir, base, out)` puts it in place of the prior of an imported Kandinsky 2.2 or Karlo pipeline
folder (`base`), which it copies: the text tower, decoder, autoencoder / upsamplers and conventions stay the family's.
Sampling: the "single_pass" sampler, 1 step, guidance 1.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch

from ..atomic import atomic_dir
from ..checkpoint import PIPELINE_FILE, _write_checkpoint, read_json_object, read_pipeline
from ..checks import check_choice
from ..pipeline import StageInfo
from ..prior import DiffusionPrior, PriorConfig
from ..sampling import SamplingConfig
from .diffusers_unet import check_values, load_mapped, read_diffusers_weights
from .karlo import DTYPES, map_prior_state

ECLIPSE_PRIOR_SAMPLING = {"prior_sampler": "single_pass", "prior_steps": 1, "prior_guidance": 1.0, "best_of": 1}


def prior_config_from_eclipse(cfg: Mapping[str, Any], where: str = "prior/config.json") -> PriorConfig:
    """An ECLIPSE prior's config.json (diffusers PriorTransformer keys, no time embedding) -> PriorConfig."""
    check_values(cfg, {"additional_embeddings": 3, "embedding_proj_norm_type": None, "encoder_hid_proj_type": "linear",
                       "added_emb_type": "prd", "norm_in_type": None}, where)
    heads, head_dim = int(cfg.get("num_attention_heads", 16)), int(cfg.get("attention_head_dim", 32))
    d = int(cfg.get("embedding_dim", 1280))
    for key in ("embedding_proj_dim", "clip_embed_dim"):
        if cfg.get(key) not in (None, d):
            raise ValueError(f"{where} has {key}={cfg[key]}; an ECLIPSE prior needs it unset or {d}")
    return PriorConfig(clip_dim=d, text_width=d, width=heads * head_dim, n_layers=int(cfg.get("num_layers", 10)),
                       n_heads=heads, n_text_tokens=int(cfg.get("num_embeddings", 77)), clip_scale=1.0,
                       dropout=float(cfg.get("dropout", 0.0)), use_clip_stats=False, time_token=False)


def import_eclipse(prior_src: str | Path, base: str | Path, out: str | Path, *, overwrite: bool = False,
                   dtype: str = "float32") -> Path:
    """An ECLIPSE prior folder (config.json + weights) in place of the prior of the imported pipeline `base`."""
    prior_src, base = Path(prior_src).expanduser(), Path(base).expanduser()
    check_choice("dtype", dtype, tuple(DTYPES))
    folder = prior_src / "prior" if (prior_src / "prior" / "config.json").is_file() else prior_src
    cfg = read_json_object(folder / "config.json", f"{folder / 'config.json'} not found: pass an ECLIPSE prior folder "
                                                   "(config.json and diffusion_pytorch_model.safetensors)")
    pcfg = prior_config_from_eclipse(cfg, str(folder / "config.json"))
    dirs, meta = read_pipeline(base)
    if "decoder" not in dirs:
        raise ValueError(f"{base} has no decoder stage: pass an imported Kandinsky 2.2 or Karlo pipeline folder")
    clip_dim = json.loads((dirs["decoder"] / "config.json").read_text())["config"]["clip_dim"]
    if clip_dim != pcfg.clip_dim:
        raise ValueError(f"the ECLIPSE prior makes {pcfg.clip_dim}-d image embeddings but {base}'s decoder reads "
                         f"{clip_dim}-d ones: pair ECLIPSE_KandinskyV22_Prior with Kandinsky 2.2, ECLIPSE_Karlo_Prior "
                         "with Karlo")
    state = map_prior_state(read_diffusers_weights(folder))
    state["null_z_t"] = torch.zeros(pcfg.clip_dim)  # never used: an ECLIPSE prior runs without guidance
    prior = load_mapped(DiffusionPrior(pcfg), state, str(folder))
    out = Path(out).expanduser()
    with atomic_dir(out, overwrite) as tmp:
        for item in base.iterdir():
            if item.name in (PIPELINE_FILE, "prior"):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        (tmp / "prior").mkdir()
        _write_checkpoint(tmp / "prior", prior.to(DTYPES[dtype]), f"# prior\n\nECLIPSE prior imported from {folder}.\n",
                          {"imported_from": str(folder)})
        manifest = read_json_object(base / PIPELINE_FILE, f"{base / PIPELINE_FILE} not found")
        m = manifest["metadata"]
        m["stage_info"] = {**m.get("stage_info", {}), "prior": asdict(StageInfo("x0", None))}
        m["sampling"] = SamplingConfig.from_dict({**m.get("sampling", {}), **ECLIPSE_PRIOR_SAMPLING}).to_dict()
        m["name"] = f"eclipse+{m.get('name', base.name)}"
        m["prior_source"] = str(folder)
        manifest["stages"]["prior"] = "prior"
        (tmp / PIPELINE_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


__all__ = ["ECLIPSE_PRIOR_SAMPLING", "import_eclipse", "prior_config_from_eclipse"]
