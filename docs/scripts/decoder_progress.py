"""How well does a decoder that is still training reconstruct? (the numbers docs/training.md gives per step)

Loads the EMA weights of a decoder training run (RUN/state.pt), its CLIP and, for a latent decoder, its
autoencoder (both named in the run's config), and measures reconstruction from the true z_i of fresh renders
of the CLIP's ShapesWorld version with explorer.evaluate.measure_reconstruction, judged by the read-out:

    python docs/scripts/decoder_progress.py --run /work/runs/shapes-v2-decoder --n 48
"""
import argparse

import torch

from analyses.binding_stats import wilson_interval
from explorer.evaluate import EvalSettings, measure_reconstruction
from unclip_core.checkpoint import load_checkpoint, resolve
from unclip_core.clip import ClipEncoder
from unclip_core.decoder import Decoder
from unclip_core.pipeline import StageInfo, UnCLIP
from unclip_core.train.common import load_state
from unclip_core.train.diffusion import DiffusionTrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a decoder training run folder (holding state.pt)")
    ap.add_argument("--n", type=int, default=48, help="one-object and two-object scenes each")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        state = load_state(f"{args.run}/state.pt")
    except FileNotFoundError as e:
        ap.error(f"--run {args.run}: {e}; pass a decoder run folder that has checkpointed")
    config = DiffusionTrainConfig.from_dict(state["config"])
    if config.stage != "decoder":
        ap.error(f"--run {args.run} trains the {config.stage} stage, not a decoder")
    decoder = Decoder(config.model_config())
    weights = decoder.state_dict()
    for k, v in state["ema"]["shadow"].items():
        weights[k].copy_(v)
    autoencoder = load_checkpoint(resolve(config.autoencoder)) if config.autoencoder else None
    clip_x0 = None if autoencoder is not None else 1.0
    pipe = UnCLIP(ClipEncoder.load(config.clip), decoder, stage_info={"decoder": StageInfo(config.prediction, clip_x0)},
                  autoencoder=autoencoder, name=f"{args.run} at step {state['step']}")
    df = measure_reconstruction(pipe, n=args.n, seed=args.seed,
                                settings=EvalSettings(sampling={"decoder_steps": args.steps,
                                                                "decoder_guidance": args.guidance}))
    d = df[df["stage"] == "decoder"]
    cols = [c for c in d.columns if c.endswith("_correct")]
    print(f"step {state['step']}, n {args.n} + {args.n} scenes, {args.steps} DDIM steps, guidance {args.guidance}")
    print(d.groupby("n_objects")[cols].mean().round(3).to_string())
    one = d[d["n_objects"] == 1].groupby("image")["all_correct"].all()
    lo, hi = wilson_interval(int(one.sum()), len(one), 0.95)
    print(f"one-object reconstruction, every attribute right: {one.mean():.3f} [{lo:.3f}, {hi:.3f}] (n {len(one)})")


if __name__ == "__main__":
    main()
