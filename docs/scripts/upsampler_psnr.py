"""PSNR of a pipeline's upsamplers against the true render, beside bicubic, on fresh ShapesWorld scenes (the card's
numbers). Each upsampler gets its own count, since the 256 -> 1024 stage takes minutes an image on a CPU:

    python docs/scripts/upsampler_psnr.py --model shapes-unclip --n 16 4 --json ups.json
"""
import argparse
import time

import numpy as np
import torch
from PIL import Image

from explorer.api import load_pipeline
from explorer.evaluate import psnr, render_at
from unclip_core.data.shapes import sample_scene
from unclip_core.imageio import pil_to_tensor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-unclip")
    ap.add_argument("--n", type=int, nargs="+", default=[16, 4], help="scenes per upsampler, in cascade order")
    ap.add_argument("--steps", type=int, nargs="+", default=[27, 15], help="DDIM steps per upsampler")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model)
    k_max = len(pipe.upsamplers)
    if k_max == 0:
        ap.error(f"--model {args.model} has no upsamplers")
    if any(n < 1 for n in args.n) or any(s < 1 for s in args.steps):
        ap.error("--n and --steps take integers >= 1")
    rng = np.random.default_rng(args.seed)
    world = pipe.clip.world or 2
    out = {}
    for k in range(min(k_max, len(args.n))):
        lo, hi = pipe.resolutions[k], pipe.resolutions[k + 1]
        steps = args.steps[k] if k < len(args.steps) else args.steps[-1]
        g = torch.Generator().manual_seed(k)  # noise stream per stage; scenes from --seed
        rows = []
        for _ in range(args.n[k]):
            sc = sample_scene(rng, world=world)
            low = render_at(sc, lo)
            t0 = time.perf_counter()
            up = pipe.upsample(pil_to_tensor([low]), k, sampling=pipe.sampling.replace(upsampler_steps=args.steps),
                               seed=g)
            u = ((up[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            true = np.asarray(render_at(sc, hi))
            rows.append((psnr(u, true), psnr(np.asarray(low.resize((hi, hi), Image.BICUBIC)), true),
                         time.perf_counter() - t0))
        a = np.array(rows)
        out[f"upsampler{k + 1}"] = {"low_res": lo, "out_res": hi, "n": len(rows), "steps": steps,
                                    "psnr_model": float(a[:, 0].mean()), "psnr_bicubic": float(a[:, 1].mean()),
                                    "seconds_per_image": float(a[:, 2].mean())}
        r = out[f"upsampler{k + 1}"]
        print(f"upsampler{k + 1} {lo}->{hi}: {r['psnr_model']:.2f} dB vs bicubic {r['psnr_bicubic']:.2f} dB "
              f"(n {r['n']}, {steps} steps, {r['seconds_per_image']:.1f} s an image)", flush=True)
    if args.json:
        from unclip_core.atomic import write_json
        write_json(args.json, out)


if __name__ == "__main__":
    main()
