"""How well does a CLIP's image embedding z_i determine each object's shape? (the shapes-unclip card's probes)

Cross-validated linear (weakly regularised) and MLP probes of shape from z_i on fresh one-object ShapesWorld
training scenes. Prints the accuracies and the majority baseline. About 2 minutes on 1 CPU thread:

    python docs/scripts/shape_probe.py --n 2400 --clip shapes-clip
"""
import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.neural_network import MLPClassifier

from unclip_core.clip import ClipEncoder
from unclip_core.data.shapes import SHAPES, render, sample_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2400, help="number of one-object scenes")
    ap.add_argument("--clip", default="shapes-clip", help="CLIP spec (bundled name or folder)")
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()
    if args.n < 60:
        ap.error(f"--n must be >= 60 (3 folds of five shapes need a few scenes each), got {args.n}")
    torch.set_num_threads(1)
    try:
        enc = ClipEncoder.load(args.clip)
    except (FileNotFoundError, ValueError, KeyError) as e:
        ap.error(f"--clip {args.clip}: {e}")
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng, 1) for _ in range(args.n)]
    images = [render(s, enc.image_size) for s in scenes]
    with torch.no_grad():
        z = enc.encode_image(images, batch_size=250).numpy()  # L2-normalised
    z = z * np.sqrt(z.shape[1])  # unit-variance components
    y = np.array([SHAPES.index(s.objects[0].shape) for s in scenes])
    linear = cross_val_score(LogisticRegression(max_iter=3000, C=10.0), z, y, cv=3).mean()
    mlp = cross_val_score(MLPClassifier((256,), max_iter=300, early_stopping=True, random_state=0), z, y, cv=3).mean()
    print(f"shape from z_i ({args.n} one-object scenes, 3-fold): linear {linear:.3f}, MLP {mlp:.3f}, "
          f"majority {np.bincount(y).max() / len(y):.3f}")


if __name__ == "__main__":
    main()
