"""Benchmark our imported Stable unCLIP against diffusers' StableUnCLIPImg2ImgPipeline on the same random weights.

    .venv/bin/python benchmarks/stable_unclip.py --size reduced            # CPU
    .venv/bin/python benchmarks/stable_unclip.py --size full --device cuda --dtype float16

Builds diffusers' Stable unCLIP components (SD 2.1's UNet2DConditionModel with class_embed_type "projection",
AutoencoderKL, a CLIPTextModel, a CLIPVisionModelWithProjection, StableUnCLIPImageNormalizer, the noising and DDIM
schedulers) at the chosen widths with random weights, saves them in the published folder layout, imports them with
unclip_core.families.stable_unclip.import_stable_unclip, then times one image variation (decoder 20 DDIM steps at
guidance 10, VAE decode) of each, interleaved, from identical noise. Prints seconds per image, the ratio
ours / diffusers and the mean pixel difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# "tiny" is diffusers' own fast-test configuration (with a 2-level VAE); "full" is
# stabilityai/stable-diffusion-2-1-unclip (ViT-H/14: d 1024; the -small model has d 768)
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d=32, text_width=32, text_layers=2, text_heads=4, image_size=32, vision_width=32, vision_layers=2,
                 vision_heads=4, patch=8, unet=(32, 64), attends=(True, False), heads=(2, 4), unet_layers=1,
                 unet_groups=32, latent=16, vae=(32, 64), vae_layers=1, vae_groups=8, prior_heads=2,
                 prior_head_dim=12, prior_layers=1),
    "reduced": dict(d=256, text_width=256, text_layers=4, text_heads=4, image_size=64, vision_width=256,
                    vision_layers=4, vision_heads=4, patch=16, unet=(64, 128, 192, 192),
                    attends=(True, True, True, False), heads=(2, 4, 6, 6), unet_layers=2, unet_groups=32, latent=32,
                    vae=(32, 64, 128, 128), vae_layers=1, vae_groups=32, prior_heads=8, prior_head_dim=32,
                    prior_layers=4),
    "full": dict(d=1024, text_width=1024, text_layers=23, text_heads=16, image_size=224, vision_width=1280,
                 vision_layers=32, vision_heads=16, patch=14, unet=(320, 640, 1280, 1280),
                 attends=(True, True, True, False), heads=(5, 10, 20, 20), unet_layers=2, unet_groups=32, latent=96,
                 vae=(128, 256, 512, 512), vae_layers=2, vae_groups=32, prior_heads=32, prior_head_dim=64,
                 prior_layers=20),
}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded noise in every parameter (norm scales near 1, weights ~ 1/sqrt(fan_in)): no zero layers."""
    from benchmarks.kandinsky import randomize as _randomize
    return _randomize(model, seed)


def build_random_stable_unclip(root: str | Path, size: str = "tiny", variant: str = "img2img",
                               seed: int = 0) -> tuple[Path, Any]:
    """A random Stable unCLIP folder (root, diffusers layout) -> (folder, diffusers pipeline).

    variant "img2img": StableUnCLIPImg2ImgPipeline (image_encoder/, feature_extractor/); "text":
    StableUnCLIPPipeline (prior/, prior_scheduler/, prior_text_encoder/, prior_tokenizer/)."""
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, PriorTransformer, StableUnCLIPImg2ImgPipeline,
                           StableUnCLIPPipeline, UNet2DConditionModel)
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)
    from benchmarks import karlo as kb
    s = SIZES[size]
    root = Path(root)
    d = s["d"]
    tok = kb.write_tokenizer(root / "tokenizer")
    torch.manual_seed(seed)
    text = randomize(CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=s["text_width"], intermediate_size=4 * s["text_width"],
        num_attention_heads=s["text_heads"], num_hidden_layers=s["text_layers"], max_position_embeddings=77,
        hidden_act="gelu", eos_token_id=tok.eos_token_id)), seed + 1).eval()
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=d)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        normalizer.mean.copy_(torch.randn(1, d, generator=g) * 0.3)
        normalizer.std.copy_(0.5 + torch.rand(1, d, generator=g))
    noising = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    n = len(s["unet"])
    unet = randomize(UNet2DConditionModel(
        sample_size=s["latent"], in_channels=4, out_channels=4,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s["attends"]),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s["attends"])),
        block_out_channels=s["unet"], attention_head_dim=s["heads"], class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * d, cross_attention_dim=s["text_width"],
        layers_per_block=s["unet_layers"], upcast_attention=True, use_linear_projection=True,
        norm_num_groups=s["unet_groups"]), seed + 3).eval()
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    m = len(s["vae"])
    vae = randomize(AutoencoderKL(
        block_out_channels=list(s["vae"]), down_block_types=["DownEncoderBlock2D"] * m,
        up_block_types=["UpDecoderBlock2D"] * m, latent_channels=4, layers_per_block=s["vae_layers"],
        norm_num_groups=s["vae_groups"], sample_size=s["latent"] * 2 ** (m - 1)), seed + 4).eval()
    for obj, sub in ((text, "text_encoder"), (normalizer, "image_normalizer"), (noising, "image_noising_scheduler"),
                     (unet, "unet"), (sched, "scheduler"), (vae, "vae")):
        obj.save_pretrained(root / sub)
    common = dict(image_normalizer=normalizer, image_noising_scheduler=noising, tokenizer=tok, text_encoder=text,
                  unet=unet, scheduler=sched, vae=vae)
    if variant == "img2img":
        vision = randomize(CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=s["vision_width"], image_size=s["image_size"], projection_dim=d,
            intermediate_size=4 * s["vision_width"], num_attention_heads=s["vision_heads"],
            num_hidden_layers=s["vision_layers"], patch_size=s["patch"])), seed + 5).eval()
        proc = CLIPImageProcessor(size={"shortest_edge": s["image_size"]},
                                  crop_size={"height": s["image_size"], "width": s["image_size"]})
        vision.save_pretrained(root / "image_encoder")
        proc.save_pretrained(root / "feature_extractor")
        ref = StableUnCLIPImg2ImgPipeline(feature_extractor=proc, image_encoder=vision, **common)
    else:
        ptok = kb.write_tokenizer(root / "prior_tokenizer")
        ptext = randomize(CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(ptok), hidden_size=d, projection_dim=d, intermediate_size=4 * d, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, eos_token_id=ptok.eos_token_id)), seed + 6).eval()
        prior = randomize(PriorTransformer(num_attention_heads=s["prior_heads"], attention_head_dim=s["prior_head_dim"],
                                           embedding_dim=d, num_layers=s["prior_layers"]), seed + 7).eval()
        with torch.no_grad():
            prior.clip_std.copy_(0.5 + torch.rand(prior.clip_std.shape, generator=g))
        prior_sched = DDPMScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                    clip_sample=True, clip_sample_range=5.0, beta_schedule="squaredcos_cap_v2")
        for obj, sub in ((ptext, "prior_text_encoder"), (prior, "prior"), (prior_sched, "prior_scheduler")):
            obj.save_pretrained(root / sub)
        ref = StableUnCLIPPipeline(prior_tokenizer=ptok, prior_text_encoder=ptext, prior=prior,
                                   prior_scheduler=prior_sched, **common)
    (root / "model_index.json").write_text(json.dumps({"_class_name": type(ref).__name__}), encoding="utf-8")
    ref.set_progress_bar_config(disable=True)
    return root, ref


def float64_tables(scheduler: Any, schedule: Any) -> None:
    """Our float64 tables in a diffusers DDIM / DDPM scheduler: compares the algorithms, not float32 table rounding."""
    scheduler.betas, scheduler.alphas = schedule.betas, schedule.alphas
    scheduler.alphas_cumprod = schedule.alphas_cumprod
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(schedule.final_abar, dtype=torch.float64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from benchmarks._common import add_family_args, report_ours_vs_diffusers, time_interleaved
    add_family_args(p, SIZES)
    p.add_argument("--decoder-steps", type=int, default=20)
    p.add_argument("--noise-level", type=int, default=100)
    args = p.parse_args(argv)
    from PIL import Image
    import numpy as np
    from unclip_core.families.stable_unclip import import_stable_unclip
    from unclip_core.pipeline import UnCLIP
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    s = SIZES[args.size]
    px = s["latent"] * 2 ** (len(s["vae"]) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        src, ref = build_random_stable_unclip(Path(tmp) / "su", args.size)
        ours = UnCLIP.load(import_stable_unclip(src, Path(tmp) / "ours"), device=args.device)
        ref.to(args.device, dtype)
        for mod in (ours.decoder, ours.autoencoder, ours.clip.model, ours.decoder_text.model):
            mod.to(dtype)
        n_params = {"unet": sum(q.numel() for q in ref.unet.parameters()),
                    "vae": sum(q.numel() for q in ref.vae.parameters())}
        print(f"StableUnCLIP-{args.size}: built, imported, loaded in {time.perf_counter() - t0:.1f}s; parameters "
              + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in n_params.items()) + f"; {px}px; {args.device} {args.dtype}")
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (px, px, 3), dtype=np.uint8))
        z_i = ours.encode_images([image])
        eps = torch.randn(1, s["d"], generator=torch.Generator().manual_seed(7))  # diffusers' first draw of seed 7
        lat = torch.randn(1, 4, s["latent"], s["latent"], generator=torch.Generator().manual_seed(0))
        out: dict[str, torch.Tensor] = {}
        sampling = ours.sampling.replace(decoder_steps=args.decoder_steps, noise_level=args.noise_level)

        def run_ours() -> None:
            with torch.inference_mode():
                o = ours.decode(z_i, x_T=lat.to(args.device, dtype), sampling=sampling, seed=1, noise={"z_i": eps})
                out["ours"] = (o.stages["decoder"].float().cpu() + 1) / 2

        def run_diffusers() -> None:
            with torch.inference_mode():
                img = ref(image_embeds=z_i.to(args.device, dtype), latents=lat.to(args.device, dtype),
                          num_inference_steps=args.decoder_steps, guidance_scale=10.0, noise_level=args.noise_level,
                          generator=torch.Generator(args.device).manual_seed(7), output_type="pt").images
                out["diffusers"] = img.float().cpu()

        times = time_interleaved({"ours": run_ours, "diffusers": run_diffusers}, args.repeats, warmup=1,
                                 device=args.device)
    diff = float((out["ours"] - out["diffusers"]).abs().mean())
    report_ours_vs_diffusers(times, what=f"variation: decoder {args.decoder_steps} DDIM steps + VAE, {px}px",
                             difference=f"mean |pixel difference| {diff:.1e} (in [0, 1]; diffusers' float32 tables)",
                             json_path=args.json, device=args.device,
                             payload={"size": args.size, "dtype": args.dtype, "parameters": n_params,
                                      "mean_abs_pixel_diff": diff})
    return 0


if __name__ == "__main__":
    sys.exit(main())
