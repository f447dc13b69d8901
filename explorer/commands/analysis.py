"""Analysis commands: `interpolate`, `text-diff`, `project`, `pca-recon`, `metrics` (also as `analysis <command>`).

Each writes a folder (PNGs with provenance, CSV, HTML, settings.json recording model, seeds and settings)
through explorer.analysis_api. The five are registered as top-level commands when explorer/cli.py
discovers this module; `add_parser`/`run` below add the same commands grouped under `analysis`.
"""
from __future__ import annotations

import argparse


from explorer.commands import Command, _args

DEFAULT_MODEL = "shapes-unclip"


def _model_args(p: argparse.ArgumentParser, x_T_default: str, *, prior: bool = False) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                   help=f"pipeline folder or bundled name (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files replaced atomically)")
    p.add_argument("--x-T", dest="x_T", choices=("fixed", "inverted"), default=x_T_default,
                   help="x_T shared by all frames: one noise (decoded under --guidance), or DDIM-inverted from the "
                        f"images (inverted and decoded under --invert-guidance, 1: they reconstruct) (default "
                        f"{x_T_default})")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")
    # frames are DDIM at eta 0 (a frame depends only on z_i and x_T): no --sampler / --eta
    _args.add_sampling_args(p, prior=prior, decoder_sampler=False, invert=True)


# ----------------------------------------------------------------------------------------- interpolate
def _interpolate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("interpolate", help="slerp z_i between two images or captions and decode each frame",
                       description="A and B are image files (.png/.jpg/...) or captions. Writes frame-KKK.png, "
                                   "grid.png, frames.csv (CLIP similarity of each frame to both ends), "
                                   "index.html and settings.json to DIR.")
    p.add_argument("a", metavar="A", help="image file or caption")
    p.add_argument("b", metavar="B", help="image file or caption")
    p.add_argument("--n-steps", type=_args.positive_int, default=8, help="number of frames (default 8)")
    p.add_argument("--text-as", choices=("prior", "z_t"), default="prior",
                   help="a caption end's z_i: the prior's sample, or its CLIP text embedding (default prior)")
    _model_args(p, "fixed", prior=True)
    return p


def _interpolate_run(args: argparse.Namespace) -> int:
    from explorer import analysis_api
    r = analysis_api.interpolate(args.model, args.a, args.b, n_steps=args.n_steps, x_T_mode=args.x_T,
                                 text_as=args.text_as, seed=args.seed, sampling=_args.sampling_overrides(args),
                                 upsample=False if args.no_upsample else None, out=args.out)
    print(r.frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {len(r.images)} frames, grid.png, frames.csv, index.html and settings.json to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- variations
def _variations_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("variations", help="decode an image's z_i from fresh noise n times (with --noise-levels: "
                                          "a Stable unCLIP noise-level sweep grid)",
                       description="Writes variation-KKK.png, grid.png (input, then the variations; one row per "
                                   "noise level with --noise-levels), variations.csv (CLIP cosine of each variation "
                                   "to the input), index.html and settings.json to DIR.")
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("--n", type=_args.positive_int, default=4, help="variations (per noise level) (default 4)")
    p.add_argument("--noise-levels", type=_args.noise_levels, default=None, metavar="L1,L2,...",
                   help="Stable unCLIP: one row per noise level, from the same noises, e.g. 0,250,500,750")
    p.add_argument("--prompt", default=None, help="a second condition for decoders that read text (Stable unCLIP)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC",
                   help=f"pipeline folder or bundled name (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files replaced atomically)")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")
    _args.add_sampling_args(p, prior=False)
    return p


def _variations_run(args: argparse.Namespace) -> int:
    from explorer import analysis_api
    r = analysis_api.variations(args.model, args.image, n=args.n, noise_levels=args.noise_levels, prompt=args.prompt,
                                seed=args.seed, sampling=_args.sampling_overrides(args),
                                upsample=False if args.no_upsample else None, out=args.out)
    print(r.frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {len(r.images)} variations, grid.png, variations.csv, index.html and settings.json to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- text-diff
def _text_diff_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("text-diff", help="edit an image along normalize(z_t(NEW) - z_t(OLD)) (DALL·E 2 text diffs)",
                       description="Decodes slerp(z_i, normalize(z_t - z_t0), theta) for theta in [0, theta_max] "
                                   "with x_T held fixed. frames.csv has each frame's CLIP similarity to OLD and NEW.")
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("old", metavar="OLD", help="caption describing the image now")
    p.add_argument("new", metavar="NEW", help="caption describing the edit")
    p.add_argument("--theta-max", type=_args.fraction, default=0.5, help="largest theta in [0, 1] (default 0.5)")
    p.add_argument("--n-steps", type=_args.positive_int, default=6, help="number of frames (default 6)")
    p.add_argument("--baseline", choices=("caption", "neutral", "none"), default="caption",
                   help="z_t0: OLD's embedding, a neutral caption's, or none (default caption)")
    p.add_argument("--neutral", default="a picture", help="neutral caption for --baseline neutral")
    _model_args(p, "inverted")
    return p


def _text_diff_run(args: argparse.Namespace) -> int:
    from explorer import analysis_api
    r = analysis_api.text_diff(args.model, args.image, args.old, args.new, theta_max=args.theta_max,
                               n_steps=args.n_steps, baseline=args.baseline, neutral_caption=args.neutral,
                               x_T_mode=args.x_T, seed=args.seed, sampling=_args.sampling_overrides(args),
                               upsample=False if args.no_upsample else None, out=args.out)
    print(r.frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {len(r.images)} frames, grid.png, frames.csv, index.html and settings.json to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- project
def _project_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("project", help="2-D projection (PCA, UMAP, t-SNE) of an embedding store, as HTML + CSV")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--method", choices=("pca", "umap", "tsne"), default="umap")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--color", metavar="COLUMN", default=None, help="metadata column for colours")
    p.add_argument("--kind", choices=("image", "text"), default=None, help="keep only rows of this kind")
    p.add_argument("--seed", type=_args.seed, default=0)
    return p


def _project_run(args: argparse.Namespace) -> int:
    from explorer import analysis_api
    r = analysis_api.project(args.store, method=args.method, seed=args.seed, color=args.color, kind=args.kind,
                             out=args.out)
    print(f"projected {len(r.frame)} points with {args.method}; wrote scatter.html, points.csv and "
          f"settings.json to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- map
def _map_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("map", help="a 2-D map of a store of any size (streamed exact PCA, or UMAP on a sample), "
                                   "cached in STORE/maps",
                       description="Maps every row of STORE in bounded memory (block by block) and caches the "
                                   "coordinates beside it. With --out writes map.html (a density of every point with "
                                   "a sample drawn as markers), sample.csv and settings.json.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--method", choices=("pca", "pca-incremental", "umap"), default="pca")
    p.add_argument("--kind", choices=("image", "text"), default=None, help="map only rows of this kind")
    p.add_argument("--color", metavar="COLUMN", default=None, help="metadata column for the markers' colours")
    p.add_argument("--umap-sample", type=_args.positive_int, default=50_000, help="rows UMAP is fitted on")
    p.add_argument("--block-rows", type=_args.positive_int, default=65_536, help="rows read at a time (memory)")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--out", default=None, metavar="DIR")
    return p


def _map_run(args: argparse.Namespace) -> int:
    from analyses.store_maps import MapConfig
    from explorer import analysis_api
    cfg = MapConfig(method=args.method, umap_sample=max(10, args.umap_sample), block_rows=args.block_rows,
                    seed=args.seed)
    m = analysis_api.store_map(args.store, config=cfg, kind=args.kind, color=args.color, out=args.out)
    rec = m.record
    how = "loaded from the cache" if m.from_cache else f"fitted in {rec['fit_seconds']:.1f} s, placed in " \
                                                       f"{rec['transform_seconds']:.1f} s"
    print(f"{args.method} map of {rec['n']:,} rows ({how}): {m.path}")
    if rec.get("explained_variance_ratio"):
        print("explained variance: " + ", ".join(f"{v:.1%}" for v in rec["explained_variance_ratio"]))
    if args.out:
        print(f"wrote map.html, sample.csv and settings.json to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- pca-recon
def _ks(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks must be comma-separated integers such as 20,40,80, got {text!r}")


def _pca_recon_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("pca-recon", help="decode images' z_i truncated to k principal components (DALL·E 2 fig. 7)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC")
    p.add_argument("--fit-store", required=True, metavar="STORE", help="store of image embeddings to fit the PCA on")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--ks", type=_ks, default=None, help="comma-separated k list (default: 20,30,...,320 below dim)")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--no-upsample", action="store_true")
    _args.add_sampling_args(p, prior=False, decoder_sampler=False)  # DDIM at eta 0 from one x_T per image
    return p


def _pca_recon_run(args: argparse.Namespace) -> int:
    from explorer import analysis_api
    r = analysis_api.pca_reconstructions(args.model, args.images, fit_store=args.fit_store, ks=args.ks,
                                         seed=args.seed, sampling=_args.sampling_overrides(args),
                                         upsample=False if args.no_upsample else None, out=args.out)
    print(r.frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote grid.png, recon.csv, index.html and settings.json to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- metrics
def _metrics_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("metrics", help="FD, CMMD, precision/recall/density/coverage between two stores")
    p.add_argument("real", metavar="REAL_STORE")
    p.add_argument("fake", metavar="FAKE_STORE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("-k", type=_args.positive_int, default=5, help="neighbours for PRDC (default 5)")
    p.add_argument("--kind", choices=("image", "text", "all"), default="image", help="rows used (default image)")
    return p


def _metrics_run(args: argparse.Namespace) -> int:
    from explorer import analysis_api
    df = analysis_api.metrics(args.real, args.fake, k=args.k, kind=None if args.kind == "all" else args.kind,
                              out=args.out)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote metrics.csv and settings.json to {args.out}")
    return 0


COMMANDS = [
    Command("interpolate", _interpolate_parser, _interpolate_run),
    Command("variations", _variations_parser, _variations_run),
    Command("text-diff", _text_diff_parser, _text_diff_run),
    Command("project", _project_parser, _project_run),
    Command("map", _map_parser, _map_run),
    Command("pca-recon", _pca_recon_parser, _pca_recon_run),
    Command("metrics", _metrics_parser, _metrics_run),
]
