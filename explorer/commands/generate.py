"""`unclip-explorer generate PROMPT... --model SPEC --out DIR`: text -> prior -> decoder -> upsamplers."""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from explorer.commands import Command, _args

DEFAULT_MODEL = "shapes-unclip"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="text-to-image with the unCLIP cascade",
                       description="Generate N images per prompt; each PNG records the model, seed and settings "
                                   "in its text chunks (read them back with `unclip-explorer inspect PNG`).")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help="pipeline folder or bundled name")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n", type=_args.positive_int, default=4, help="images per prompt")
    p.add_argument("--size", type=_args.positive_int, default=None, metavar="PX",
                   help="output side in pixels, one of the pipeline's resolutions (default: 256 where the pipeline "
                        "reaches it). An upsampler its card leaves out of the default cascade (it does not beat "
                        "bicubic) is replaced by bicubic resizing, recorded in each PNG, unless --all-upsamplers")
    p.add_argument("--all-upsamplers", action="store_true",
                   help="run every upsampler up to --size, also those left out of the default cascade")
    p.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution (= --size of it)")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--signature", action="store_true", help="add a visible signature in a corner")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="the prior's unconditional text in place of the empty prompt, for every prompt (families "
                        "whose unconditional branch is a text: Karlo, Kandinsky 2.2, Stable unCLIP; Kandinsky's "
                        "decoder also steers away from its image embedding)")
    _args.add_sampling_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from explorer.api import load_pipeline
    from explorer.records import run_record, save_png, write_record
    from unclip_core.provenance import tensor_hash

    folder = Path(args.out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder; pass a folder (created if missing) for the "
                         "PNGs and settings.json")
    pipe = load_pipeline(args.model)
    sampling = _args.sampling_from_args(args, pipe)
    if args.no_upsample and args.size not in (None, pipe.resolutions[0]):
        raise ValueError(f"--no-upsample stops at {pipe.resolutions[0]} px but --size is {args.size}; drop one of them")
    size = pipe.resolutions[0] if args.no_upsample else args.size
    size, n_model, note = pipe.plan_size(size, all_upsamplers=args.all_upsamplers)
    out = pipe.text_to_image(args.prompts, n=args.n, sampling=sampling, upsample=n_model, seed=args.seed,
                             progress=True, negative_prompt=args.negative_prompt)
    if note is not None:
        out.images = [im.resize((size, size), Image.BICUBIC) for im in out.images]
        out.settings["resize"] = note
    out.settings["size"] = size
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(out.images):
        prompt = args.prompts[k // args.n]
        meta = {**out.settings, "prompt": prompt, "index": k, "z_i_hash": tensor_hash(out.z_i[k])}
        files.append(save_png(image, folder / f"{k:03d}.png", meta, signature=args.signature).name)
    write_record(folder, run_record("generate", settings=out.settings, model=pipe.describe(),
                                    seed=out.settings["seed"], files=files))
    print(f"wrote {len(out.images)} images to {folder}")
    return 0


COMMANDS = [Command("generate", add_parser, run)]
