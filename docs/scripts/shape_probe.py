"""How well does a CLIP's image embedding z_i determine each object's shape? (the model cards' probes)

Cross-validated linear (weakly regularised) and MLP probes of shape from z_i on fresh one-object ShapesWorld
scenes of the CLIP's own world (unclip_core.train.clip.shape_probes). Prints the accuracies and the majority
baseline. About 2 minutes on 1 CPU thread:

    python docs/scripts/shape_probe.py --n 2400 --clip shapes-clip
"""
import argparse

import torch

from unclip_core.clip import ClipEncoder
from unclip_core.train.clip import shape_probes


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
    r = shape_probes(enc, args.n, args.seed)
    print(f"shape from z_i ({r['n']} one-object ShapesWorld v{enc.world} scenes, 3-fold): linear {r['linear']:.3f}, "
          f"MLP {r['mlp']:.3f}, majority {r['majority']:.3f}")


if __name__ == "__main__":
    main()
