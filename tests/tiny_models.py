"""Tiny random models shared by tests: a CLIP folder in open_clip's layout, and random-weight initialisation."""
import json
from pathlib import Path

import torch
from open_clip.model import CLIP
from safetensors.torch import save_file

CLIP_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                            "head_width": 16},
            "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A seeded tiny open_clip CLIP saved as a folder (open_clip_config.json + open_clip_model.safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG, "preprocess_cfg": {}}))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clip = CLIP(**CLIP_CFG)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def randomize(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised output layers would make every test trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def write_tiny_pipeline(root: Path) -> Path:
    """A tiny random UnCLIP (prior, 16px decoder, 16->32 upsampler, tiny CLIP) saved as a pipeline folder."""
    from unclip_core.checkpoint import save_pipeline
    from unclip_core.decoder import Decoder, DecoderConfig
    from unclip_core.prior import DiffusionPrior, PriorConfig
    from unclip_core.upsampler import Upsampler, UpsamplerConfig

    clip_dir = write_tiny_clip(root / "clip")
    prior = randomize(DiffusionPrior(PriorConfig(clip_dim=16, text_width=32, width=32, n_layers=2, n_heads=2,
                                                 n_text_tokens=12)), 1)
    dec = randomize(Decoder(DecoderConfig(image_size=16, model_channels=16, channel_mult=(1, 2), n_res_blocks=1,
                                          attention_resolutions=(8,), head_channels=8, clip_dim=16,
                                          norm_groups=8, dropout=0.0)), 2)
    up = randomize(Upsampler(UpsamplerConfig(low_res=16, out_res=32, model_channels=16, channel_mult=(1, 2),
                                             n_res_blocks=1, norm_groups=8)), 3)
    return save_pipeline(root / "tiny-unclip", {"prior": prior, "decoder": dec, "upsampler1": up, "clip": clip_dir},
                         metadata={"clip": "clip", "name": "tiny-unclip"})


def write_tiny_latent_stages(root: Path) -> dict[str, Path]:
    """Checkpoint folders of a tiny random latent-decoder family, as trainers export them.

    autoencoder: 16px RGB <-> (4, 8, 8) latents (f = 2, default torch init); decoder: a latent Decoder with
    image_size 8 and in_channels 4 whose metadata records its autoencoder (as train_stage does); prior and a
    16->32 upsampler as in write_tiny_pipeline; clip: the tiny CLIP folder.
    """
    from unclip_core.autoencoder import Autoencoder, AutoencoderConfig
    from unclip_core.checkpoint import save_checkpoint
    from unclip_core.decoder import Decoder, DecoderConfig
    from unclip_core.prior import DiffusionPrior, PriorConfig
    from unclip_core.upsampler import Upsampler, UpsamplerConfig

    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(4)
        ae = Autoencoder(AutoencoderConfig(image_size=16, latent_channels=4, channels=8, channel_mult=(1, 2),
                                           n_res_blocks=1, norm_groups=4)).eval()
    prior = randomize(DiffusionPrior(PriorConfig(clip_dim=16, text_width=32, width=32, n_layers=2, n_heads=2,
                                                 n_text_tokens=12)), 1)
    dec = randomize(Decoder(DecoderConfig(image_size=8, in_channels=4, model_channels=16, channel_mult=(1, 2),
                                          n_res_blocks=1, attention_resolutions=(4,), head_channels=8, clip_dim=16,
                                          norm_groups=8, dropout=0.0, clip_map_size=8)), 2)
    up = randomize(Upsampler(UpsamplerConfig(low_res=16, out_res=32, model_channels=16, channel_mult=(1, 2),
                                             n_res_blocks=1, norm_groups=8)), 3)
    ae_dir = save_checkpoint(root / "autoencoder", ae)
    return {"clip": write_tiny_clip(root / "clip"),
            "prior": save_checkpoint(root / "prior", prior, metadata={"stage": "prior", "prediction": "x0"}),
            "decoder": save_checkpoint(root / "decoder", dec, metadata={"stage": "decoder", "prediction": "v",
                                                                        "autoencoder": str(ae_dir)}),
            "upsampler1": save_checkpoint(root / "upsampler1", up, metadata={"stage": "upsampler1",
                                                                             "prediction": "eps"}),
            "autoencoder": ae_dir}


def write_tiny_latent_pipeline(root: Path) -> Path:
    """A tiny random UnCLIP with a latent decoder, assembled as `train assemble` does (the autoencoder stage comes
    from the decoder's metadata)."""
    from unclip_core.train.diffusion import assemble_pipeline

    dirs = write_tiny_latent_stages(root / "stages")
    return assemble_pipeline(root / "tiny-latent-unclip", {k: dirs[k] for k in ("prior", "decoder", "upsampler1")},
                             dirs["clip"], "tiny-latent-unclip")
