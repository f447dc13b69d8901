"""Benchmark our imported Karlo pipeline against diffusers' UnCLIPPipeline on the same random Karlo weights.

    .venv/bin/python benchmarks/karlo.py --size reduced            # CPU
    .venv/bin/python benchmarks/karlo.py --size full --device cuda --dtype float16

Builds diffusers' Karlo components (Karlo's architecture: PriorTransformer, UnCLIPTextProjModel,
UNet2DConditionModel decoder, two UNet2DModel super-resolution nets, CLIPTextModelWithProjection, a
CLIPTokenizer over a small vocabulary written here) with random weights, saves them in Karlo's folder layout,
imports them with unclip_core.families.karlo.import_karlo, then times one text-to-image (prior 25, decoder 25,
super-resolution 7 steps) of each, interleaved, from identical noise. Prints seconds per image and the
ratio ours / diffusers, and the largest pixel difference between the two images.
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

# Karlo's architecture at three widths. "full" is kakaobrain/karlo-v1-alpha (prior 1B, decoder 900M, SR 2 x 700M).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(clip=32, clip_layers=2, clip_heads=4, context=77, prior_heads=2, prior_head_dim=16, prior_layers=2,
                 dec_size=16, dec_channels=(16, 32, 48), dec_layers=1, head_dim=16, cross_dim=48,
                 sr_size=32, sr_channels=(16, 32), sr_layers=1, groups=8),
    "reduced": dict(clip=256, clip_layers=4, clip_heads=4, context=77, prior_heads=8, prior_head_dim=64,
                    prior_layers=6, dec_size=64, dec_channels=(32, 64, 96, 128), dec_layers=2, head_dim=32,
                    cross_dim=192, sr_size=256, sr_channels=(16, 32, 48, 64), sr_layers=1, groups=16),
    "full": dict(clip=768, clip_layers=12, clip_heads=12, context=77, prior_heads=32, prior_head_dim=64,
                 prior_layers=20, dec_size=64, dec_channels=(320, 640, 960, 1280), dec_layers=3, head_dim=64,
                 cross_dim=1536, sr_size=256, sr_channels=(320, 640, 960, 1280), sr_layers=3, groups=32),
}
WORDS = ("a", "red", "blue", "green", "cube", "ball", "cat", "dog", "on", "the", "left", "of", "photo", "small")


def write_tokenizer(folder: Path, context: int = 77) -> Any:
    """A CLIPTokenizer over byte-level characters plus a few merged words; <|endoftext|> has the largest id."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = []
    for w in WORDS:  # merge each word left to right: "r e", "re d</w>"
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    merges = list(dict.fromkeys(merges))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                        model_max_length=context)
    tok.save_pretrained(str(folder))
    return tok


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (norm scales near 1, weights ~ 1/sqrt(fan_in)): no zero layers."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.ndim == 1 and ("norm" in name or name.endswith("ln.weight")) and name.endswith("weight"):
            p.copy_(1.0 + 0.1 * noise)
        elif p.ndim == 1:
            p.copy_(0.1 * noise)
        else:
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(noise / max(fan_in, 1) ** 0.5)
    return model


def build_random_karlo(out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a Karlo folder (diffusers layout) with Karlo's architecture at `size` and random weights; -> out."""
    from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    s = SIZES[size]
    out = Path(out)
    tok = write_tokenizer(out / "tokenizer", s["context"])
    d = s["clip"]
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=d, projection_dim=d, intermediate_size=4 * d,
        num_hidden_layers=s["clip_layers"], num_attention_heads=s["clip_heads"],
        max_position_embeddings=s["context"], hidden_act="quick_gelu", bos_token_id=len(tok) - 2,
        eos_token_id=2, pad_token_id=len(tok) - 1))
    randomize(text, seed).save_pretrained(str(out / "text_encoder"))
    prior = randomize(PriorTransformer(num_attention_heads=s["prior_heads"], attention_head_dim=s["prior_head_dim"],
                                       num_layers=s["prior_layers"], embedding_dim=d,
                                       num_embeddings=s["context"]), seed + 1)
    with torch.no_grad():
        prior.clip_std.copy_(0.5 + torch.rand(prior.clip_std.shape, generator=torch.Generator().manual_seed(seed)))
    prior.save_pretrained(str(out / "prior"))
    ch = s["dec_channels"]
    E = 4 * ch[0]
    randomize(UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=d, time_embed_dim=E,
                                  cross_attention_dim=s["cross_dim"]), seed + 2).save_pretrained(str(out / "text_proj"))
    n = len(ch)
    randomize(UNet2DConditionModel(
        sample_size=s["dec_size"], in_channels=3, out_channels=6, layers_per_block=s["dec_layers"],
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (n - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=ch, cross_attention_dim=s["cross_dim"],
        class_embed_type="identity", attention_head_dim=s["head_dim"], resnet_time_scale_shift="scale_shift",
        norm_num_groups=s["groups"]), seed + 3).save_pretrained(str(out / "decoder"))
    m = len(s["sr_channels"])
    for k, name in enumerate(("super_res_first", "super_res_last")):
        randomize(UNet2DModel(
            sample_size=s["sr_size"], layers_per_block=s["sr_layers"], in_channels=6, out_channels=3,
            down_block_types=("ResnetDownsampleBlock2D",) * m, up_block_types=("ResnetUpsampleBlock2D",) * m,
            block_out_channels=s["sr_channels"], add_attention=False, norm_num_groups=s["groups"]),
            seed + 4 + k).save_pretrained(str(out / name))
    UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                    clip_sample_range=5.0).save_pretrained(str(out / "prior_scheduler"))
    UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon",
                    num_train_timesteps=1000).save_pretrained(str(out / "decoder_scheduler"))
    UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                    num_train_timesteps=1000).save_pretrained(str(out / "super_res_scheduler"))
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "UnCLIPPipeline", "decoder": ["diffusers", "UNet2DConditionModel"],
        "decoder_scheduler": ["diffusers", "UnCLIPScheduler"], "prior": ["diffusers", "PriorTransformer"],
        "prior_scheduler": ["diffusers", "UnCLIPScheduler"], "super_res_first": ["diffusers", "UNet2DModel"],
        "super_res_last": ["diffusers", "UNet2DModel"], "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "text_proj": ["unclip", "UnCLIPTextProjModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"]}, indent=1), encoding="utf-8")
    return out


def diffusers_pipeline(folder: str | Path) -> Any:
    """diffusers' UnCLIPPipeline over a Karlo folder written by build_random_karlo (local files only)."""
    import warnings

    from diffusers import PriorTransformer, UnCLIPPipeline, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    f = Path(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = UnCLIPPipeline(
            prior=PriorTransformer.from_pretrained(f / "prior"),
            decoder=UNet2DConditionModel.from_pretrained(f / "decoder"),
            text_encoder=CLIPTextModelWithProjection.from_pretrained(f / "text_encoder", local_files_only=True),
            tokenizer=CLIPTokenizer.from_pretrained(f / "tokenizer", local_files_only=True),
            text_proj=UnCLIPTextProjModel.from_pretrained(f / "text_proj"),
            super_res_first=UNet2DModel.from_pretrained(f / "super_res_first"),
            super_res_last=UNet2DModel.from_pretrained(f / "super_res_last"),
            prior_scheduler=UnCLIPScheduler.from_pretrained(f / "prior_scheduler"),
            decoder_scheduler=UnCLIPScheduler.from_pretrained(f / "decoder_scheduler"),
            super_res_scheduler=UnCLIPScheduler.from_pretrained(f / "super_res_scheduler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial_noise(pipe: Any, batch: int, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32
                  ) -> dict[str, torch.Tensor]:
    """The three initial noises (prior, decoder, super-resolution) shared by both pipelines."""
    g = torch.Generator().manual_seed(seed)
    d = pipe.prior.config.embedding_dim
    s, S = pipe.decoder.config.sample_size, pipe.super_res_first.config.sample_size
    return {"prior_latents": torch.randn(batch, d, generator=g).to(device, dtype),
            "decoder_latents": torch.randn(batch, 3, s, s, generator=g).to(device, dtype),
            "super_res_latents": torch.randn(batch, 3, S, S, generator=g).to(device, dtype)}


def run_diffusers(pipe: Any, prompts: list[str], noise: dict[str, torch.Tensor], seed: int,
                  device: str = "cpu") -> torch.Tensor:
    """diffusers' text-to-image (25, 25, 7 steps) -> (B, 3, H, W) in [-1, 1]."""
    out = pipe(prompts, generator=torch.Generator(device).manual_seed(seed), output_type="np", **noise).images
    return torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1


def run_ours(ours: Any, prompts: list[str], noise: dict[str, torch.Tensor], seed: int,
             device: str = "cpu") -> torch.Tensor:
    """Our UnCLIP text-to-image on the imported Karlo with the same steps and noise -> (B, 3, H, W) in [-1, 1]."""
    out = ours.text_to_image(prompts, seed=torch.Generator(device).manual_seed(seed),
                             noise={"prior": noise["prior_latents"], "decoder": noise["decoder_latents"],
                                    "upsampler1": noise["super_res_latents"]})
    return out.stages["upsampler1"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from benchmarks._common import add_family_args, report_ours_vs_diffusers, time_interleaved
    add_family_args(p, SIZES)
    args = p.parse_args(argv)
    from unclip_core.families.karlo import import_karlo
    from unclip_core.pipeline import UnCLIP
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    prompts = ["a red cube on the left of a blue ball"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        src = build_random_karlo(Path(tmp) / "karlo", args.size)
        import_karlo(src, Path(tmp) / "ours")
        ref = diffusers_pipeline(src).to(args.device, dtype)
        ours = UnCLIP.load(Path(tmp) / "ours", device=args.device)
        for m in [ours.prior, ours.decoder, *ours.upsamplers, *[u for u in ours.upsamplers_last if u is not None]]:
            m.to(dtype)
        ours.clip.model.to(dtype)
        n_params = {k: sum(q.numel() for q in getattr(ref, k).parameters())
                    for k in ("prior", "decoder", "super_res_first")}
        print(f"Karlo-{args.size}: built, imported, loaded in {time.perf_counter() - t0:.1f}s; parameters "
              + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in n_params.items()) + f"; {args.device} {args.dtype}")
        noise = initial_noise(ref, len(prompts), 0, args.device, dtype)
        images: dict[str, torch.Tensor] = {}

        def timed(name: str):
            def fn() -> None:
                with torch.inference_mode():
                    run = run_ours if name == "ours" else run_diffusers
                    images[name] = run(ours if name == "ours" else ref, prompts, noise, 0, args.device).float().cpu()
            return fn

        times = time_interleaved({"ours": timed("ours"), "diffusers": timed("diffusers")}, args.repeats,
                                 warmup=1, device=args.device)
    diff = float((images["ours"] - images["diffusers"]).abs().mean())
    report_ours_vs_diffusers(times, what="prior 25 + decoder 25 + super-res 7 steps",
                             difference=f"mean |image difference| {diff:.1e} (diffusers' float32 scheduler tables)",
                             json_path=args.json, device=args.device,
                             payload={"size": args.size, "dtype": args.dtype, "parameters": n_params,
                                      "mean_abs_diff": diff})
    return 0


if __name__ == "__main__":
    sys.exit(main())
