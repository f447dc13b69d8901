"""Benchmark our DDIM loop and CFG wrapper against diffusers' DDIMScheduler on one unCLIP decoder.

    .venv/bin/python benchmarks/sampling.py                          # shapes decoder, CPU, 1 thread (~1-2 min)
    .venv/bin/python benchmarks/sampling.py --config paper --steps 25 --batch 2
    .venv/bin/python benchmarks/sampling.py --device cuda --dtype bfloat16 --batch 16 --steps 50 --threads 8

1. seconds/image of sample_ddim (through model_to_denoiser + classifier_free_guidance) vs the same UNet stepped by
   diffusers' DDIMScheduler (squaredcos_cap_v2, same steps and spacing, guidance on eps from a batched forward of
   cond + uncond); both must give the same images (max |diff| printed, checked against --atol).
2. CFG as one batched forward of 2B (our wrapper) vs two passes of B (a naive loop), both in sample_ddim.
3. the samplers' own work per step (UNet replaced by a linear map), ours vs diffusers.
Candidates run round-robin, rotated each round (shared-CPU load hits all alike); the verification run is the first warm-up;
times are medians of --repeats. Random decoder weights, seeded; ratios are what matter.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, median, time_interleaved, write_json_atomic  # noqa: E402
from unclip_core.checks import check_choice, check_guidance, check_positive_int  # noqa: E402
from unclip_core.decoder import Decoder, DecoderConfig  # noqa: E402
from unclip_core.diffusion import Schedule, cosine_schedule  # noqa: E402
from unclip_core.samplers import classifier_free_guidance, model_to_denoiser, sample_ddim  # noqa: E402
from unclip_core.train.diffusion import RECIPES  # noqa: E402

CONFIGS = ("tiny", "shapes", "paper")
DEVICES = ("cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SPACINGS = ("leading", "trailing")
T_TRAIN = 1000
CLIP_X0 = 1.0  # the pipeline's decoder clamps predicted x0 (GLIDE); diffusers' clip_sample does the same
# At t = 999, x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies eps's rounding (~1e-7 in float32, more after
# guidance s = 3) by 1 / sqrt(abar_999) ~ 2e4: pixels whose x0 is not clipped can differ by ~1e-3 between two
# correct float32 paths (batched vs unbatched convolutions). A wrong sampler differs by ~1.
DEFAULT_ATOL = {"float32": 1e-2, "bfloat16": 0.25}
FLOOR_FACTOR = 4.0  # differences up to this many noise floors (see run) are rounding

# GLIDE / unCLIP decoder layout at 64px (Ramesh et al. 2022, app. C: 3 res blocks, attention at 32/16/8,
# a caption pathway) with model_channels 512 -> 64 so it runs on a CPU.
PAPER_DECODER: dict[str, Any] = dict(image_size=64, model_channels=64, channel_mult=(1, 2, 3, 4), n_res_blocks=3,
                                     attention_resolutions=(32, 16, 8), head_channels=32, clip_dim=768,
                                     n_clip_tokens=4, text_width=512, learn_sigma=True, dropout=0.0, norm_groups=32)
PAPER_TEXT_TOKENS = 77
OVERHEAD_REPEATS = 50


@dataclass(frozen=True)
class SamplingBenchConfig:
    """Settings of one benchmark run; validated here so a bad flag fails before any model is built."""

    config: str = "shapes"
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 2
    steps: int = 10
    repeats: int = 3
    warmup: int = 1
    guidance: float = 3.0
    spacing: str = "trailing"
    threads: int = 1
    seed: int = 0
    atol: float | None = None

    def __post_init__(self) -> None:
        check_choice("config", self.config, CONFIGS)
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, list(DTYPES))
        check_choice("spacing", self.spacing, SPACINGS)
        for name in ("batch", "steps", "repeats", "warmup", "threads"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("seed", self.seed, minimum=0)
        if self.steps > T_TRAIN:
            raise ValueError(f"steps must be <= {T_TRAIN} (the training steps), got {self.steps}")
        if self.spacing == "trailing" and T_TRAIN % self.steps:
            # diffusers' DDIMScheduler.step goes to t - T // steps, which is not the next trailing timestep
            divisors = [d for d in (5, 10, 20, 25, 50, 100) if d != self.steps]
            raise ValueError(f"steps={self.steps} does not divide T={T_TRAIN}; with spacing='trailing' diffusers' "
                             f"DDIMScheduler steps to t - T // steps, off the trailing grid, so the images cannot "
                             f"match. Pick steps dividing {T_TRAIN} (e.g. {divisors}) or spacing='leading'")
        check_guidance("guidance", self.guidance)
        if self.atol is not None and not self.atol > 0:
            raise ValueError(f"atol must be > 0 (or None for the dtype's default), got {self.atol!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False on this machine; "
                             "pass --device cpu or run where a GPU is visible")

    @property
    def tolerance(self) -> float:
        """Largest max |ours - diffusers| accepted as the same images."""
        return DEFAULT_ATOL[self.dtype] if self.atol is None else float(self.atol)


def decoder_config(name: str) -> DecoderConfig:
    """The decoder of recipe "tiny" or "shapes" (unclip_core.train.diffusion.RECIPES), or the reduced "paper" one."""
    check_choice("config", name, CONFIGS)
    if name == "paper":
        return DecoderConfig(**PAPER_DECODER)
    return DecoderConfig(**RECIPES[name]["decoder"]["model"])


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights in place: fan-in scaled matrices, norms near 1, small biases.

    The decoder zero-initialises its output layers (ADM), which would make every prediction eps = 0.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith("weight") and bool((p == 1).all()):
                p.copy_(1.0 + 0.02 * noise)
            else:
                p.copy_(0.02 * noise)
    return model


def make_inputs(config: DecoderConfig, batch: int, seed: int, device: str, dtype: torch.dtype,
                null_z_i: Tensor) -> tuple[Tensor, dict[str, Tensor | None], dict[str, Tensor | None]]:
    """x_T (B, 3, s, s), cond and uncond keyword dicts for Decoder.forward, as the pipeline builds them.

    cond: unit-norm z_i (B, clip_dim) and, with a caption pathway, features (B, L, text_width) + mask;
    uncond: the learned null z_i and zeroed caption features with an all-False mask.
    """
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    x_T = torch.randn(batch, config.in_channels, s, s, generator=g)
    z_i = torch.nn.functional.normalize(torch.randn(batch, config.clip_dim, generator=g), dim=-1)
    cond: dict[str, Tensor | None] = {"z_i": z_i, "text_tokens": None, "text_mask": None}
    uncond: dict[str, Tensor | None] = {"z_i": null_z_i.detach().float()[None].expand(batch, -1).clone(),
                                        "text_tokens": None, "text_mask": None}
    if config.text_width:
        L = PAPER_TEXT_TOKENS
        feats = torch.randn(batch, L, config.text_width, generator=g)
        lengths = torch.randint(4, L + 1, (batch,), generator=g)
        mask = torch.arange(L)[None] < lengths[:, None]
        cond["text_tokens"], cond["text_mask"] = feats, mask
        uncond["text_tokens"], uncond["text_mask"] = torch.zeros_like(feats), torch.zeros_like(mask)

    def move(d: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
        return {k: None if v is None else v.to(device, dtype if v.is_floating_point() else v.dtype)
                for k, v in d.items()}

    return x_T.to(device, dtype), move(cond), move(uncond)


def two_pass_guidance(net: Callable[..., Tensor], cond: Mapping[str, Tensor | None],
                      uncond: Mapping[str, Tensor | None], scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The naive baseline of classifier-free guidance (Ho & Salimans 2022): two forwards of B, cond then uncond."""
    def guided(x: Tensor, t: Tensor) -> Tensor:
        out_c, out_u = net(x, t, **cond), net(x, t, **uncond)
        C = x.shape[1]
        mixed = out_u[:, :C] + scale * (out_c[:, :C] - out_u[:, :C])
        return torch.cat([mixed, out_c[:, C:]], dim=1)

    return guided


def sample_ours(decoder: Decoder, x_T: Tensor, cond: Mapping[str, Tensor | None], uncond: Mapping[str, Tensor | None],
                schedule: Schedule, steps: int, guidance: float, spacing: str, batched: bool = True) -> Tensor:
    """DDIM eta=0 with our wrapper (one forward of 2B), or with `batched=False` the two-pass baseline."""
    guide = classifier_free_guidance if batched else two_pass_guidance
    denoise = model_to_denoiser(guide(decoder, cond, uncond, guidance), schedule, "eps", clip_x0=CLIP_X0)
    return sample_ddim(denoise, x_T, schedule, steps, eta=0.0, spacing=spacing)


def diffusers_scheduler(spacing: str):
    """diffusers' DDIMScheduler on the cosine schedule of GLIDE, eps prediction, x0 clipped to [-1, 1]."""
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=T_TRAIN, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                         clip_sample=True, clip_sample_range=CLIP_X0, set_alpha_to_one=True,
                         timestep_spacing=spacing)


def sample_diffusers(decoder: Decoder, x_T: Tensor, cond: Mapping[str, Tensor | None],
                     uncond: Mapping[str, Tensor | None], scheduler: Any, steps: int, guidance: float) -> Tensor:
    """The diffusers way: batched forward of cond + uncond, eps_u + s (eps_c - eps_u), scheduler.step (eta 0).

    use_clipped_model_output=True: with clip_sample, eps is re-derived from the clipped x0 as in GLIDE.
    """
    scheduler.set_timesteps(steps, device=x_T.device)
    joint = {k: None if cond[k] is None else torch.cat([cond[k], uncond[k]]) for k in cond}
    x = x_T * scheduler.init_noise_sigma
    B, C = x.shape[:2]
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
        out = decoder(model_input, t.expand(2 * B), **joint)
        eps_c, eps_u = out[:B, :C], out[B:, :C]
        eps = eps_u + guidance * (eps_c - eps_u)
        # eps re-derived from the clipped x0, as GLIDE and our sample_ddim do (diffusers' default keeps raw eps)
        x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _mean_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


class LinearEps(torch.nn.Module):
    """A fixed network eps = x_t / 2 with zero variance channels, to time the samplers' own per-step work."""

    def forward(self, x_t: Tensor, t: Tensor, **_: Any) -> Tensor:
        return torch.cat([0.5 * x_t, torch.zeros_like(x_t)], dim=1)


def run(cfg: SamplingBenchConfig) -> dict[str, Any]:
    """Build the decoder, verify ours == diffusers and batched == two-pass, time them and the samplers alone."""
    if not isinstance(cfg, SamplingBenchConfig):
        raise TypeError(f"cfg must be a SamplingBenchConfig, got {type(cfg).__name__}")
    dtype = DTYPES[cfg.dtype]
    dc = decoder_config(cfg.config)
    decoder = randomize_(Decoder(dc), cfg.seed).eval().to(cfg.device, dtype)
    x_T, cond, uncond = make_inputs(dc, cfg.batch, cfg.seed + 1, cfg.device, dtype, decoder.null_z_i)
    schedule = cosine_schedule(T_TRAIN)
    scheduler = diffusers_scheduler(cfg.spacing)
    args = (decoder, x_T, cond, uncond)
    candidates = {
        "ours": lambda: sample_ours(*args, schedule, cfg.steps, cfg.guidance, cfg.spacing, batched=True),
        "diffusers": lambda: sample_diffusers(*args, scheduler, cfg.steps, cfg.guidance),
        "two_pass": lambda: sample_ours(*args, schedule, cfg.steps, cfg.guidance, cfg.spacing, batched=False),
    }
    with torch.inference_mode():
        images = {name: fn() for name, fn in candidates.items()}  # also the first warm-up round
        times = time_interleaved(candidates, cfg.repeats, warmup=cfg.warmup - 1, device=cfg.device)
    # 3. the samplers' own cost per step, the UNet replaced by a linear map
    lin = LinearEps()
    overhead = {
        "ours": lambda: sample_ours(lin, x_T, cond, uncond, schedule, cfg.steps, cfg.guidance, cfg.spacing),
        "diffusers": lambda: sample_diffusers(lin, x_T, cond, uncond, scheduler, cfg.steps, cfg.guidance),
    }
    with torch.inference_mode():
        diff_lin = _max_abs_diff(overhead["ours"](), overhead["diffusers"]())
        # each run takes milliseconds: many repeats keep the median clear of one preemption
        t_lin = time_interleaved(overhead, max(cfg.repeats, OVERHEAD_REPEATS), warmup=1, device=cfg.device)
    per_step_ms = {name: 1e3 * median(ts) / cfg.steps for name, ts in t_lin.items()}
    diff = _max_abs_diff(images["ours"], images["diffusers"])
    diff_cfg = _max_abs_diff(images["ours"], images["two_pass"])
    # the noise floor: how far the same sampler ends when x_T moves by float rounding (a relative 2**-20); batched
    # vs two-pass kernels differ by that much per step, and 50 DDIM steps amplify it. A difference within a few
    # floors is rounding, never a failure.
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 2)
    bump = (torch.randn(x_T.shape, generator=g) * 2.0 ** -20).to(x_T.device, x_T.dtype)
    with torch.inference_mode():
        nudged = sample_ours(decoder, x_T * (1 + bump), cond, uncond, schedule, cfg.steps, cfg.guidance, cfg.spacing,
                             batched=True)
    floor = _max_abs_diff(images["ours"], nudged)
    tolerance = max(cfg.tolerance, FLOOR_FACTOR * floor)
    results = {}
    for name, ts in times.items():
        m = median(ts)
        results[name] = {"median_s": m, "s_per_image": m / cfg.batch, "images_per_s": cfg.batch / m, "times_s": ts}
    return {
        "settings": {**asdict(cfg), "tolerance": cfg.tolerance},
        "noise_floor": floor,
        "tolerance_used": tolerance,
        "machine": machine_info(cfg.device),
        "decoder": {"image_size": dc.image_size, "model_channels": dc.model_channels,
                    "n_params": sum(p.numel() for p in decoder.parameters()), "text_width": dc.text_width},
        "timesteps": scheduler.timesteps.tolist(),
        "results": results,
        "max_abs_diff_ours_diffusers": diff,
        "max_abs_diff_batched_two_pass": diff_cfg,
        "mean_abs_diff_ours_diffusers": _mean_abs_diff(images["ours"], images["diffusers"]),
        "mean_abs_diff_batched_two_pass": _mean_abs_diff(images["ours"], images["two_pass"]),
        "max_abs_diff_linear_eps": diff_lin,
        "sampler_ms_per_step": per_step_ms,
        "ratio_sampler_overhead": per_step_ms["ours"] / per_step_ms["diffusers"],
        "agree": max(diff, diff_cfg, diff_lin) <= tolerance,
        "ratio_ours_diffusers": results["ours"]["median_s"] / results["diffusers"]["median_s"],
        "ratio_batched_two_pass": results["ours"]["median_s"] / results["two_pass"]["median_s"],
    }


def format_report(r: Mapping[str, Any]) -> str:
    """The plain-text table printed by the command line."""
    s, m, d, res = r["settings"], r["machine"], r["decoder"], r["results"]
    load = f" load(1min)={m['load_avg_1min']}" if "load_avg_1min" in m else ""
    gpu = f" gpu={m['gpu']}" if "gpu" in m else ""
    lines = [
        "unCLIP decoder sampling benchmark",
        f"machine : cpu_count={m['cpu_count']} torch={m['torch']} threads={m['torch_threads']} "
        f"device={m['device']}{gpu}{load}",
        f"decoder : config={s['config']} {d['image_size']}px model_channels={d['model_channels']} "
        f"params={d['n_params'] / 1e6:.2f}M caption_pathway={'yes' if d['text_width'] else 'no'} (random weights)",
        f"settings: dtype={s['dtype']} batch={s['batch']} steps={s['steps']} guidance={s['guidance']:g} "
        f"spacing={s['spacing']} repeats={s['repeats']} warmup={s['warmup']} seed={s['seed']}",
        f"timesteps: {r['timesteps']}",
        "",
        f"{'sampler':<44}{'median s':>10}{'s/image':>10}{'images/s':>10}",
    ]

    def row(label: str, key: str) -> str:
        x = res[key]
        return f"{label:<44}{x['median_s']:>10.4f}{x['s_per_image']:>10.4f}{x['images_per_s']:>10.3f}"

    ok = "yes" if r["agree"] else "NO"
    lines += [
        "1. DDIM eta=0, CFG on eps, same UNet",
        row("   ours: sample_ddim + CFG wrapper (2B)", "ours"),
        row("   diffusers: DDIMScheduler.step (2B)", "diffusers"),
        f"   |ours - diffusers|: max {r['max_abs_diff_ours_diffusers']:.3e}  "
        f"mean {r['mean_abs_diff_ours_diffusers']:.3e}",
        f"   ratio ours/diffusers (s/image) = {r['ratio_ours_diffusers']:.3f}",
        "2. classifier-free guidance, both in sample_ddim",
        row("   batched: one forward of 2B (= ours above)", "ours"),
        row("   two passes: B + B (naive loop)", "two_pass"),
        f"   |batched - two passes|: max {r['max_abs_diff_batched_two_pass']:.3e}  "
        f"mean {r['mean_abs_diff_batched_two_pass']:.3e}",
        f"   ratio batched/two-pass (s/image) = {r['ratio_batched_two_pass']:.3f}",
        "3. sampler work per step, UNet replaced by eps = x_t / 2",
        f"   ours {r['sampler_ms_per_step']['ours']:.3f} ms   diffusers {r['sampler_ms_per_step']['diffusers']:.3f} ms"
        f"   max |ours - diffusers| = {r['max_abs_diff_linear_eps']:.3e}",
        f"   ratio ours/diffusers (sampler only) = {r['ratio_sampler_overhead']:.3f}",
        f"images agree within max(atol={s['tolerance']:g}, {FLOOR_FACTOR:g} x noise floor {r['noise_floor']:.2e}) = "
        f"{r['tolerance_used']:.3g}: {ok}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> tuple[SamplingBenchConfig, str | None]:
    """Command-line flags -> (SamplingBenchConfig, --json path); bad values exit with argparse's usage and the reason."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="shapes", choices=CONFIGS,
                   help="decoder: tiny / shapes recipe, or paper (64px GLIDE layout at reduced width)")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=2, help="images per sampling call (B; CFG forwards 2B)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (must divide 1000 with trailing spacing)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each candidate; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds, the verification run included")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--spacing", default="trailing", choices=SPACINGS, help="timestep spacing (pipeline: trailing)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 1 by default to reduce noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=None,
                   help=f"max |ours - diffusers| accepted; default {DEFAULT_ATOL}")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON (atomic)")
    a = p.parse_args(argv)
    try:
        cfg = SamplingBenchConfig(config=a.config, device=a.device, dtype=a.dtype, batch=a.batch, steps=a.steps,
                                  repeats=a.repeats, warmup=a.warmup, guidance=a.guidance, spacing=a.spacing,
                                  threads=a.threads, seed=a.seed, atol=a.atol)
    except (TypeError, ValueError) as e:
        p.error(str(e))
    return cfg, a.json


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when the samplers' images disagree beyond the tolerance."""
    cfg, json_path = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    r = run(cfg)
    print(format_report(r), flush=True)
    if json_path:
        print(f"wrote {write_json_atomic(json_path, r)}")
    return 0 if r["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
