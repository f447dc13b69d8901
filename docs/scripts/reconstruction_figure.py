"""The model card's reconstruction picture: fresh ShapesWorld renders and the bundled decoder's images of their z_i.

Row pairs: the true 64 px render (caption as the row label), then the decoder's reconstruction from the render's
CLIP z_i, with a green (read-out finds every attribute of every object) or red frame. One-object scenes in the
first pair of rows, two-object scenes in the second. About 20 s on 1 CPU thread:

    python docs/scripts/reconstruction_figure.py --out docs/img/shapes-unclip-reconstructions.png
"""
import argparse

import numpy as np
import torch
from PIL import Image, ImageOps

from analyses.tiling import make_grid
from explorer.api import load_pipeline
from unclip_core.data.readout import score_attributes
from unclip_core.data.shapes import render, sample_scene


def _frame(im: Image.Image, ok: bool) -> Image.Image:
    return ImageOps.expand(im.resize((60, 60)), border=2, fill=(40, 200, 60) if ok else (220, 40, 40))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-unclip")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--n", type=int, default=8, help="scenes per row")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model)
    world = pipe.clip.world or 2
    rng = np.random.default_rng(args.seed)
    rows, labels = [], []
    for n_obj in (1, 2):
        scenes = [sample_scene(rng, n_obj, world=world) for _ in range(args.n)]
        renders = [render(s, 64) for s in scenes]
        out = pipe.decode(pipe.encode_images(renders), sampling=pipe.sampling.replace(decoder_steps=args.steps),
                          upsample=False, seed=args.seed + n_obj)
        df = score_attributes(out.images, scenes)
        ok = df.groupby("image")["all_correct"].all()
        rows.append([ImageOps.expand(r.resize((60, 60)), border=2, fill=(90, 90, 90)) for r in renders])
        rows.append([_frame(im, bool(ok[i])) for i, im in enumerate(out.images)])
        labels += [f"{n_obj}-object renders", f"decoded from z_i ({int(ok.sum())}/{len(ok)} read right)"]
    grid = make_grid(rows, labels, None)
    grid.save(args.out)
    print(f"wrote {args.out}: " + "; ".join(labels[1::2]))


if __name__ == "__main__":
    main()
