"""Benchmark our imported Kandinsky 2.2 against diffusers' KandinskyV22PriorPipeline + KandinskyV22Pipeline on the
same random weights.

    .venv/bin/python benchmarks/kandinsky.py --size reduced            # CPU
    .venv/bin/python benchmarks/kandinsky.py --size full --device cuda --dtype float16

Builds diffusers' Kandinsky 2.2 components (PriorTransformer, CLIP ViT text and image towers, UNet2DConditionModel
with image-embedding conditioning, MoVQ) at the chosen widths with random weights, saves them in the two folders
of the published layout, imports them with unclip_core.families.kandinsky.import_kandinsky, then times one
text-to-image (prior 25 steps, decoder 50 DDPM steps, guidance 4 / 4) of each, interleaved, from identical noise.
Prints seconds per image, the ratio ours / diffusers and the mean latent difference.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# "tiny" is diffusers' own fast-test configuration; "full" is kandinsky-community/kandinsky-2-2-{prior,decoder}
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d=32, clip_width=32, clip_layers=2, clip_heads=4, image_size=32, patch=8, prior_heads=2,
                 prior_head_dim=12, prior_layers=1, unet=(32, 64), unet_layers=1, head_dim=4, cross=32, latent=32,
                 movq=(32, 64), movq_layers=1, movq_groups=8),
    "reduced": dict(d=256, clip_width=256, clip_layers=4, clip_heads=4, image_size=64, patch=16, prior_heads=8,
                    prior_head_dim=64, prior_layers=6, unet=(64, 128, 192, 256), unet_layers=2, head_dim=32,
                    cross=256, latent=32, movq=(64, 128, 128, 256), movq_layers=1, movq_groups=32),
    "full": dict(d=1280, clip_width=1280, clip_layers=32, clip_heads=20, image_size=224, patch=14, prior_heads=32,
                 prior_head_dim=64, prior_layers=20, unet=(384, 768, 1152, 1536), unet_layers=3, head_dim=64,
                 cross=768, latent=64, movq=(128, 256, 256, 512), movq_layers=2, movq_groups=32),
}


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded noise in every parameter (norm scales near 1, weights ~ 1/sqrt(fan_in)): no zero layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / max(p[0].numel(), 1) ** 0.5)
    return model


def build_random_kandinsky(root: str | Path, size: str = "tiny", seed: int = 0) -> tuple[Path, Path, Any, Any]:
    """Random Kandinsky 2.2 folders (root/prior, root/decoder) -> (prior_dir, decoder_dir, diffusers prior pipeline,
    diffusers decoder pipeline)."""
    from diffusers import (DDPMScheduler, KandinskyV22Pipeline, KandinskyV22PriorPipeline, PriorTransformer,
                           UNet2DConditionModel, UnCLIPScheduler, VQModel)
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)
    from benchmarks import karlo as kb
    s = SIZES[size]
    root = Path(root)
    prior_dir, dec_dir = root / "prior", root / "decoder"
    tok = kb.write_tokenizer(prior_dir / "tokenizer")
    torch.manual_seed(seed)
    d = s["d"]
    text = randomize(CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=s["clip_width"], projection_dim=d, intermediate_size=4 * s["clip_width"],
        num_attention_heads=s["clip_heads"], num_hidden_layers=s["clip_layers"], max_position_embeddings=77,
        eos_token_id=tok.eos_token_id)), seed + 11).eval()
    vision = randomize(CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=s["clip_width"], image_size=s["image_size"], projection_dim=d, intermediate_size=4 * s["clip_width"],
        num_attention_heads=s["clip_heads"], num_hidden_layers=s["clip_layers"], patch_size=s["patch"])), seed + 12).eval()
    proc = CLIPImageProcessor(size={"shortest_edge": s["image_size"]},
                              crop_size={"height": s["image_size"], "width": s["image_size"]})
    prior = randomize(PriorTransformer(num_attention_heads=s["prior_heads"], attention_head_dim=s["prior_head_dim"],
                                       embedding_dim=d, num_layers=s["prior_layers"]), seed + 13).eval()
    prior_sched = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                  clip_sample=True, clip_sample_range=10.0)
    n = len(s["unet"])
    unet = randomize(UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (n - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=s["unet"], layers_per_block=s["unet_layers"],
        encoder_hid_dim=d, encoder_hid_dim_type="image_proj", cross_attention_dim=s["cross"],
        attention_head_dim=s["head_dim"], resnet_time_scale_shift="scale_shift", class_embed_type=None,
        sample_size=s["latent"]), seed + 14).eval()
    m = len(s["movq"])
    movq = randomize(VQModel(
        block_out_channels=list(s["movq"]), down_block_types=["DownEncoderBlock2D"] * (m - 1) + ["AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=s["movq_layers"], norm_num_groups=s["movq_groups"],
        norm_type="spatial", num_vq_embeddings=12, out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (m - 1), vq_embed_dim=4), seed + 15).eval()
    dec_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, steps_offset=1, prediction_type="epsilon", thresholding=False)
    for obj, folder in ((text, prior_dir / "text_encoder"), (vision, prior_dir / "image_encoder"),
                        (proc, prior_dir / "image_processor"), (prior, prior_dir / "prior"),
                        (prior_sched, prior_dir / "scheduler"), (unet, dec_dir / "unet"), (movq, dec_dir / "movq"),
                        (dec_sched, dec_dir / "scheduler")):
        obj.save_pretrained(folder)
    ref_prior = KandinskyV22PriorPipeline(prior=prior, image_encoder=vision, text_encoder=text, tokenizer=tok,
                                          scheduler=prior_sched, image_processor=proc)
    ref_dec = KandinskyV22Pipeline(unet=unet, scheduler=dec_sched, movq=movq)
    for pipe in (ref_prior, ref_dec):
        pipe.set_progress_bar_config(disable=True)
    return prior_dir, dec_dir, ref_prior, ref_dec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from benchmarks._common import add_family_args, report_ours_vs_diffusers, time_interleaved
    add_family_args(p, SIZES)
    p.add_argument("--decoder-steps", type=int, default=50)
    args = p.parse_args(argv)
    from unclip_core.families.kandinsky import import_kandinsky
    from unclip_core.pipeline import UnCLIP
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    prompts = ["a red cube on the left of a blue ball"]
    s = SIZES[args.size]
    px = s["latent"] * 2 ** (len(s["movq"]) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prior_dir, dec_dir, ref_prior, ref_dec = build_random_kandinsky(Path(tmp) / "k", args.size)
        import_kandinsky(prior_dir, dec_dir, Path(tmp) / "ours")
        ours = UnCLIP.load(Path(tmp) / "ours", device=args.device)
        for mod in (ref_prior, ref_dec):
            mod.to(args.device, dtype)
        for mod in (ours.prior, ours.decoder, ours.autoencoder, ours.clip.model):
            mod.to(dtype)
        n_params = {"prior": sum(q.numel() for q in ref_prior.prior.parameters()),
                    "decoder": sum(q.numel() for q in ref_dec.unet.parameters()),
                    "movq": sum(q.numel() for q in ref_dec.movq.parameters())}
        print(f"Kandinsky-2.2-{args.size}: built, imported, loaded in {time.perf_counter() - t0:.1f}s; parameters "
              + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in n_params.items()) + f"; {px}px; {args.device} {args.dtype}")
        g = torch.Generator().manual_seed(0)
        prior_lat = torch.randn(1, s["d"], generator=g).to(args.device, dtype)
        lat = torch.randn(1, 4, s["latent"], s["latent"], generator=g).to(args.device, dtype)
        out: dict[str, torch.Tensor] = {}
        sampling = ours.sampling.replace(decoder_steps=args.decoder_steps)

        def run_ours() -> None:
            with torch.inference_mode():
                o = ours.text_to_image(prompts, sampling=sampling, seed=torch.Generator(args.device).manual_seed(1),
                                       noise={"prior": prior_lat, "decoder": lat})
                out["ours"] = o.stages["decoder_latents"].float().cpu()

        def run_diffusers() -> None:
            with torch.inference_mode():
                gen = torch.Generator(args.device).manual_seed(1)
                pr = ref_prior(prompts, num_inference_steps=25, guidance_scale=4.0, latents=prior_lat, generator=gen,
                               output_type="pt")
                img = ref_dec(image_embeds=pr.image_embeds, negative_image_embeds=pr.negative_image_embeds,
                              height=px, width=px, num_inference_steps=args.decoder_steps, guidance_scale=4.0,
                              latents=lat, generator=gen, output_type="latent").images
                out["diffusers"] = img.float().cpu()

        times = time_interleaved({"ours": run_ours, "diffusers": run_diffusers}, args.repeats, warmup=1,
                                 device=args.device)
    diff = float((out["ours"] - out["diffusers"]).abs().mean() / out["diffusers"].abs().mean())
    report_ours_vs_diffusers(times, what=f"prior 25 + decoder {args.decoder_steps} steps, {px}px",
                             difference=f"mean relative latent difference {diff:.1e} (diffusers' float32 tables)",
                             json_path=args.json, device=args.device,
                             payload={"size": args.size, "dtype": args.dtype, "parameters": n_params,
                                      "mean_rel_latent_diff": diff})
    return 0


if __name__ == "__main__":
    sys.exit(main())
