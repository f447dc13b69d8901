"""`unclip-explorer import karlo PATH --out DIR`, `import kandinsky PRIOR DECODER --out DIR`, `import stable-unclip
PATH [--prior KARLO] --out DIR` and `import eclipse PRIOR --onto PIPELINE --out DIR`: convert a family's local folders
(diffusers layout) into our pipeline format (unclip_core.families)."""
from __future__ import annotations

import argparse
from pathlib import Path

from explorer.commands import Command


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", required=True, metavar="DIR", help="our pipeline folder to write (load it with "
                                                               "UnCLIP.load or --model DIR)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="storage dtype of the converted stages (default float32; models load as float32)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR when it exists")
    return p


def _report(what: str, out: Path) -> int:
    from unclip_core.checkpoint import read_pipeline
    dirs, _ = read_pipeline(out)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    print(f"imported {what} -> {out}: stages {', '.join(dirs)} + clip/ ({size / 2**30:.2f} GiB); "
          f"load it with UnCLIP.load({str(out)!r})")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.import_kind == "karlo":
        from unclip_core.families.karlo import import_karlo
        return _report(f"Karlo {args.path}", import_karlo(args.path, args.out, overwrite=args.overwrite,
                                                          dtype=args.dtype))
    if args.import_kind == "stable-unclip":
        from unclip_core.families.stable_unclip import import_stable_unclip
        out = import_stable_unclip(args.path, args.out, prior=args.prior, overwrite=args.overwrite, dtype=args.dtype)
        return _report(f"Stable unCLIP {args.path}" + (f" + the prior of {args.prior}" if args.prior else ""), out)
    if args.import_kind == "eclipse":
        from unclip_core.families.eclipse import import_eclipse
        out = import_eclipse(args.prior, args.onto, args.out, overwrite=args.overwrite, dtype=args.dtype)
        return _report(f"the ECLIPSE prior {args.prior} onto {args.onto}", out)
    from unclip_core.families.kandinsky import import_kandinsky
    out = import_kandinsky(args.prior, args.decoder, args.out, overwrite=args.overwrite, dtype=args.dtype)
    return _report(f"Kandinsky 2.2 {args.prior} + {args.decoder}", out)


def _import_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("import", help="convert third-party checkpoints into our format")
    isub = p.add_subparsers(dest="import_kind", metavar="{karlo,kandinsky,stable-unclip,eclipse}", required=True)
    k = isub.add_parser("karlo", help="Karlo (kakaobrain/karlo-v1-alpha) in diffusers layout",
                        description="Map every tensor of a local Karlo folder onto our prior, decoder and upsamplers; "
                                    "copy its CLIP text encoder; write DIR atomically.")
    k.add_argument("path", metavar="PATH", help="local Karlo folder (prior/, decoder/, text_proj/, super_res_first/, "
                                                "super_res_last/, text_encoder/, tokenizer/, *_scheduler/)")
    _common(k)
    d = isub.add_parser("kandinsky", help="Kandinsky 2.2 (kandinsky-2-2-prior + kandinsky-2-2-decoder) in diffusers "
                                          "layout",
                        description="Map every tensor of Kandinsky 2.2's prior and decoder folders onto our prior, "
                                    "decoder and MoVQ; copy its CLIP towers (ViT-bigG/14); write DIR atomically.")
    d.add_argument("prior", metavar="PRIOR_DIR", help="kandinsky-2-2-prior (prior/, text_encoder/, tokenizer/, "
                                                      "image_encoder/, image_processor/, scheduler/)")
    d.add_argument("decoder", metavar="DECODER_DIR", help="kandinsky-2-2-decoder (unet/, movq/, scheduler/)")
    _common(d)
    su = isub.add_parser("stable-unclip", help="Stable Diffusion 2.1 unCLIP (ViT-H or the ViT-L 'small') in diffusers "
                                               "layout, optionally with Karlo's prior for text-to-image",
                         description="Map every tensor of a Stable unCLIP folder (StableUnCLIPImg2ImgPipeline or "
                                     "StableUnCLIPPipeline layout) onto our decoder, KL autoencoder (and prior); copy "
                                     "its CLIP towers; write DIR atomically.")
    su.add_argument("path", metavar="PATH", help="the Stable unCLIP folder (unet/, vae/, text_encoder/, tokenizer/, "
                                                 "image_normalizer/, image_noising_scheduler/, scheduler/, and "
                                                 "image_encoder/ + feature_extractor/ or prior*/)")
    su.add_argument("--prior", metavar="KARLO_DIR", help="a Karlo folder (prior/, prior_scheduler/, text_encoder/, "
                                                         "tokenizer/) whose prior makes the image embeddings: the "
                                                         "official text-to-image pairing of the ViT-L/14 small model")
    _common(su)
    e = isub.add_parser("eclipse", help="an ECLIPSE prior onto an imported Kandinsky 2.2 or Karlo pipeline",
                        description="Put a one-pass ECLIPSE prior (ECLIPSE_KandinskyV22_Prior, ECLIPSE_Karlo_Prior) in "
                                    "place of the prior of an imported pipeline folder, copied to DIR.")
    e.add_argument("prior", metavar="PRIOR_DIR", help="the ECLIPSE prior folder (config.json + weights)")
    e.add_argument("--onto", required=True, metavar="PIPELINE_DIR",
                   help="an imported Kandinsky 2.2 (import kandinsky) or Karlo (import karlo) pipeline folder")
    _common(e)
    return p


COMMANDS = [Command("import", _import_parser, _run)]
