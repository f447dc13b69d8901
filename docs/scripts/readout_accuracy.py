"""Per-attribute accuracy of a ShapesWorld read-out on fresh scenes, clean and degraded (docs/readout.md's table).

Scene i is sample_scene(default_rng([seed, i]), world=...) with 1-3 objects, rendered at --size px, then
degraded per condition with rng [seed, i, size, 7] and re-quantised to uint8. Prints k/n, percent and the 95%
Wilson interval per attribute (objects) and for count, relation and all_correct (images). About 10 s per
condition for 1,000 scenes at 64 px on 1 CPU thread:

    python docs/scripts/readout_accuracy.py --world 2 --n 1000 --seed 8675309 --size 64
"""
import argparse

import numpy as np
import torch

from analyses.binding_stats import wilson_interval
from unclip_core.data.degrade import bsr_degrade
from unclip_core.data.readout import ATTRIBUTES, load_readout, score_attributes
from unclip_core.data.shapes import render_array, sample_scene
from unclip_core.train.readout import corrupt

CONDITIONS = ("clean", "degraded", "degraded_colour", "harsh", "bsr", "labels")


def degrade(x: np.ndarray, condition: str, rng: np.random.Generator, bsr_seed: int) -> np.ndarray:
    """One (H, W, 3) uint8 render -> the condition's uint8 image."""
    if condition in ("clean", "labels"):
        return x
    if condition == "degraded":           # blur sigma 1 px + noise std 0.05, as docs/readout.md's v1 table
        y = corrupt(x, 1.0, 0.05, rng)
    elif condition == "degraded_colour":  # ... with a slight colour shift (gain 1 +- 0.05, offset +- 0.02)
        y = corrupt(x, 1.0, 0.05, rng, gain=rng.uniform(0.95, 1.05, 3), offset=rng.uniform(-0.02, 0.02, 3))
    elif condition == "harsh":            # the extremes of the read-out's training corruption
        y = corrupt(x, 1.5, 0.08, rng, gain=rng.uniform(0.9, 1.1, 3), offset=rng.uniform(-0.033, 0.033, 3))
    else:                                 # bsr: blur, down/up resize, noise, JPEG (the upsamplers' corruption)
        t = torch.from_numpy(x).permute(2, 0, 1).float() / 127.5 - 1
        y = ((bsr_degrade(t, torch.Generator().manual_seed(bsr_seed)).clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return (y * 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2, help="ShapesWorld version (its bundled read-out)")
    ap.add_argument("--model", default=None, help="read-out folder or bundled name (default: the world's)")
    ap.add_argument("--n", type=int, default=1000, help="number of scenes")
    ap.add_argument("--seed", type=int, default=8675309)
    ap.add_argument("--size", type=int, default=64, help="render size in px")
    ap.add_argument("--conditions", default=",".join(CONDITIONS[:3]), help=f"comma-separated, of {CONDITIONS}")
    args = ap.parse_args()
    conditions = args.conditions.split(",")
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        ap.error(f"--conditions {unknown} not known; accepted: {', '.join(CONDITIONS)}")
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    torch.set_num_threads(1)
    try:
        net = load_readout(args.model, world=args.world)
    except (FileNotFoundError, ValueError, TypeError) as e:
        ap.error(f"--model {args.model} --world {args.world}: {e}")
    for cond in conditions:
        lp = 1.0 if cond == "labels" else 0.0
        scenes = [sample_scene(np.random.default_rng([args.seed, i]), split="all", label_prob=lp, world=args.world)
                  for i in range(args.n)]
        images = [degrade(render_array(s, args.size), cond, np.random.default_rng([args.seed, i, args.size, 7]),
                          args.seed * 100003 + i) for i, s in enumerate(scenes)]
        df = score_attributes(images, scenes, model=net)
        per_image = df.drop_duplicates("image")
        print(f"{cond} ({args.size} px, ShapesWorld v{args.world}, {args.n} scenes, seed {args.seed})")
        cols = [(a, df[f"{a}_correct"]) for a in ATTRIBUTES] + \
               [(m, per_image[c]) for m, c in (("count", "count_correct"), ("relation", "relation_correct"),
                                               ("all", "all_correct"))]
        for name, col in cols:
            col = col.dropna()
            k, n = int(col.sum()), len(col)
            lo, hi = wilson_interval(k, n)
            print(f"  {name:9s} {k}/{n} = {100 * k / max(n, 1):.2f}%  [{100 * lo:.2f}, {100 * hi:.2f}]")


if __name__ == "__main__":
    main()
