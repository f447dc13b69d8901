"""`unclip-explorer generate PROMPT... --model SPEC --out DIR`: text -> prior -> decoder -> upsamplers."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_MODEL = "shapes-unclip"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="text-to-image with the unCLIP cascade",
                       description="Generate N images per prompt; each PNG records the model, seed and settings "
                                   "in its text chunks (read them back with `unclip-explorer inspect PNG`).")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help="pipeline folder or bundled name")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--steps", type=int, default=50, help="decoder DDIM steps")
    p.add_argument("--guidance", type=float, default=3.0, help="decoder classifier-free guidance scale")
    p.add_argument("--prior-steps", type=int, default=64)
    p.add_argument("--prior-guidance", type=float, default=4.0)
    p.add_argument("--best-of", type=int, default=2, help="prior candidates per image, ranked by z_i . z_t")
    p.add_argument("--sampler", choices=("ddim", "ddpm", "dpmpp_2m"), default="ddim")
    p.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signature", action="store_true", help="add a visible signature in a corner")
    return p


def run(args: argparse.Namespace) -> int:
    from unclip_core.pipeline import UnCLIP
    from unclip_core.provenance import save_png, tensor_hash

    pipe = UnCLIP.load(args.model)
    out = pipe.text_to_image(args.prompts, n=args.n, steps=args.steps, guidance=args.guidance,
                             prior_steps=args.prior_steps, prior_guidance=args.prior_guidance,
                             best_of=args.best_of, sampler=args.sampler, upsample=not args.no_upsample,
                             seed=args.seed, progress=True)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(out.images):
        prompt = args.prompts[k // args.n]
        meta = {**out.settings, "prompt": prompt, "index": k, "z_i_hash": tensor_hash(out.z_i[k])}
        save_png(image, folder / f"{k:03d}.png", meta, signature=args.signature)
    (folder / "settings.json").write_text(json.dumps(out.settings, indent=2, default=str))
    print(f"wrote {len(out.images)} images to {folder}")
    return 0
