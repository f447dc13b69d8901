"""bf16 autocast vs float32 for the bundled generator's decoder: speed ratio in one run, and the image error.

    .venv/bin/python benchmarks/precision.py --n 16 --repeats 3

Decodes the CLIP z_i of n fresh ShapesWorld renders with the bundled shapes-unclip (its default sampling: 25 DDIM
steps, latent decoder + autoencoder) in float32 and under bfloat16 autocast (SamplingConfig.precision), from the
same seed, interleaved. Prints seconds per batch for each, the ratio, the mean |pixel difference| between the two
(pixels in [0, 1]) and how often the read-out finds every attribute in each.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-unclip")
    p.add_argument("--n", type=int, default=16, help="renders (one batch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=7000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    from benchmarks._common import machine_info, median, time_interleaved, write_json_atomic
    from explorer.api import load_pipeline
    from unclip_core.data.readout import score_attributes
    from unclip_core.data.shapes import render, sample_scene
    from unclip_core.imageio import tensor_to_pil
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng, 1 + k % 2, world=pipe.clip.world or 2) for k in range(args.n)]
    z = pipe.encode_images([render(sc, 64) for sc in scenes])
    out: dict[str, torch.Tensor] = {}

    def run(precision: str):
        def fn() -> None:
            o = pipe.decode(z, sampling=pipe.sampling.replace(precision=precision), upsample=False, seed=0)
            out[precision] = o.stages["decoder"].float()
        return fn

    times = time_interleaved({"fp32": run("fp32"), "bf16": run("bf16")}, args.repeats, warmup=1, device="cpu")
    sec = {k: median(v) for k, v in times.items()}
    diff = float(((out["fp32"] - out["bf16"]).abs() / 2).mean())
    agree = {}
    for k, x in out.items():
        df = score_attributes(tensor_to_pil(x), scenes)
        ok = df[["shape_correct", "colour_correct", "size_correct", "position_correct"]].fillna(False).all(axis=1)
        agree[k] = float(ok.groupby(df["image"]).all().mean())
    print(f"{args.model}: decoder on {args.n} z_i, {pipe.sampling.decoder_steps} steps: fp32 {sec['fp32']:.2f} s, bf16 "
          f"{sec['bf16']:.2f} s, bf16 {sec['fp32'] / sec['bf16']:.2f}x as fast; mean |pixel difference| {diff:.4f} "
          f"([0, 1] pixels); read-out finds every attribute: fp32 {agree['fp32']:.3f}, bf16 {agree['bf16']:.3f} "
          f"(n {args.n})")
    if args.json:
        write_json_atomic(Path(args.json), {"seconds": times, "speedup": sec["fp32"] / sec["bf16"],
                                            "mean_abs_pixel_diff": diff, "readout_all": agree, "n": args.n,
                                            "machine": machine_info("cpu")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
