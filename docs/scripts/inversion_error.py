"""Do inverted-x_T frames reconstruct their input? (docs/analyses.md's table)

For each seed in --seeds, renders `render(sample_scene(default_rng(seed), n_objects=1 + seed % 2), 64)` in the
pipeline's world, runs a text diff with x_T DDIM-inverted (explorer.analysis_api.text_diff, 2 frames) and prints the
mean |pixel error| (pixels in [0, 1], decoder stage) of the theta = 0 frame against its input. About 10-20 s a
render on 1 CPU thread at 50 steps:

    python docs/scripts/inversion_error.py --model shapes-unclip --seeds 5000 5020 --steps 25
"""
import argparse
import warnings

import numpy as np
import torch

from explorer import analysis_api
from explorer.api import load_pipeline
from unclip_core.data.shapes import render, sample_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-unclip")
    ap.add_argument("--seeds", type=int, nargs=2, default=[5000, 5020], metavar=("FIRST", "STOP"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="the inversion's guidance (SamplingConfig.invert_guidance; default 1)")
    args = ap.parse_args()
    if args.seeds[1] <= args.seeds[0] or args.steps < 1:
        ap.error("--seeds FIRST STOP needs STOP > FIRST, --steps >= 1")
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model)
    world = pipe.clip.world or 2
    errors = []
    for seed in range(*args.seeds):
        image = render(sample_scene(np.random.default_rng(seed), n_objects=1 + seed % 2, world=world), 64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an explicit guidance other than 1 warns; the table measures it too
            td = analysis_api.text_diff(pipe, image, "a red circle", "a blue square", n_steps=2, upsample=False,
                                        sampling={"decoder_steps": args.steps, "invert_guidance": args.guidance})
        errors.append(float(td.frame["l1_input"].iloc[0]) / 2)  # l1 in [-1, 1] units -> pixels in [0, 1]
        print(f"seed {seed}: {errors[-1]:.4f}", flush=True)
    e = np.array(errors)
    print(f"n {len(e)}, steps {args.steps}, guidance {td.settings['guidance']}: mean {e.mean():.4f}, max {e.max():.4f}, "
          f"above 0.02: {int((e > 0.02).sum())}")


if __name__ == "__main__":
    main()
