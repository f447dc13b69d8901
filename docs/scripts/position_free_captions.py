"""How a ShapesWorld pipeline draws one-object captions that say no position ("a large red circle").

    python docs/scripts/position_free_captions.py [--model shapes-unclip] [--n 30] [--seed 7]

Training captions always say where each object is, so these captions are outside the grammar the prior learned.
Prints how many of n such captions (random size, colour and shape of the pipeline's world) the read-out finds drawn
as exactly one object, and as one object with every stated attribute right. Cited by the shapes-unclip card.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-unclip", help="ShapesWorld pipeline folder or bundled name")
    p.add_argument("--n", type=int, default=30, help="captions (default 30)")
    p.add_argument("--seed", type=int, default=7, help="draws the captions; images use seed 123 + batch start")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    from unclip_core.data.readout import read_objects_batch
    from unclip_core.data.shapes_scene import WORLDS
    from unclip_core.pipeline import UnCLIP
    pipe = UnCLIP.load(args.model)
    world = WORLDS[int(getattr(pipe.clip, "world", None) or 2)]
    from unclip_core.data.shapes_text import vocabulary
    colours = [c for c in ("red", "green", "blue", "yellow", "purple", "orange") if c in vocabulary(world=world.version)]
    rng = np.random.default_rng(args.seed)
    caps = [(str(rng.choice(["small", "large"])), str(rng.choice(colours)), str(rng.choice(world.shapes)))
            for _ in range(args.n)]
    one = right = 0
    for b in range(0, len(caps), 10):
        batch = caps[b:b + 10]
        out = pipe.text_to_image([f"a {s} {c} {sh}" for s, c, sh in batch], n=1, upsample=False, seed=123 + b)
        for (size, colour, shape), reading in zip(batch, read_objects_batch(out.images, world=world.version)):
            objs = reading.objects
            one += len(objs) == 1
            right += len(objs) == 1 and (objs[0].obj.shape, objs[0].obj.colour, objs[0].obj.size) == (shape, colour, size)
    print(f"{args.model}: {args.n} position-free one-object captions: one object drawn {one}/{args.n}, "
          f"one object with every stated attribute {right}/{args.n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
