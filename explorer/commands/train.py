"""`unclip-explorer train STAGE (--config RUN.toml | --recipe NAME) [--resume]`: train one stage (the autoencoder
too), on ShapesWorld or on your own data (image folders, webdataset shards, precomputed embeddings); `train
assemble`: stages -> a pipeline."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from explorer.commands import Command, _args

if TYPE_CHECKING:
    from unclip_core.train.autoencoder import AutoencoderTrainConfig
    from unclip_core.train.diffusion import DiffusionTrainConfig

STAGES = ("clip", "autoencoder", "prior", "decoder", "upsampler1", "upsampler2")
FAMILY_STAGES = ("prior", "decoder", "upsampler1", "upsampler2")


def default_runs_dir() -> Path:
    """Where training state lives unless --out says otherwise: $UNCLIP_RUNS or ~/.cache/unclip-explorer/runs."""
    return Path(os.environ.get("UNCLIP_RUNS", Path.home() / ".cache" / "unclip-explorer" / "runs"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one stage (clip, autoencoder, prior, decoder, upsampler1, upsampler2)",
                       description="Train a stage of the unCLIP family on ShapesWorld. State is checkpointed "
                                   "atomically; rerun with --resume to continue a killed run (--steps may "
                                   "lengthen or shorten it). Also runs under torchrun --nproc_per_node=N -m "
                                   "unclip_core.train.diffusion for DDP. `train assemble --out PIPE` puts the "
                                   "trained stages of RUNS/RECIPE-{prior,decoder,upsampler1,upsampler2} together "
                                   "into a pipeline folder that UnCLIP.load and --model accept.")
    p.add_argument("stage", choices=STAGES + ("assemble",))
    p.add_argument("--config", default=None, metavar="RUN.toml",
                   help="a run config file (TOML or JSON): DiffusionTrainConfig fields, [model] and [data] tables, "
                        "optionally recipe = NAME and preset = tiny|small|base|paper; the flags below override it "
                        "(docs/training.md, \"Your own data\")")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="train on files: an image folder (captions.jsonl or same-name .txt captions), webdataset "
                        ".tar shards ('shards/{000..009}.tar'), or (prior) an embedding store / clip-retrieval folder")
    p.add_argument("--data-kind", default=None, choices=("auto", "folder", "webdataset", "embeddings"),
                   help="the layout of --data (default: auto, from the path)")
    p.add_argument("--cache", default=None, metavar="STORE",
                   help="the embedding store caching the CLIP image embeddings of --data (default: OUT/embeddings)")
    bad = p.add_mutually_exclusive_group()
    bad.add_argument("--skip-bad-images", action="store_true", help="leave unreadable images out (the default)")
    bad.add_argument("--fail-on-bad-images", action="store_true", help="stop before training on an unreadable image")
    p.add_argument("--preset", default=None, choices=("tiny", "small", "base", "paper"),
                   help="the network's size (replaces the recipe's or file's [model] sizes)")
    p.add_argument("--grad-accum", type=_args.positive_int, default=None, metavar="N",
                   help="micro-batches of --batch-size per optimiser step")
    p.add_argument("--sample-every", type=_args.positive_int, default=None, metavar="N",
                   help="write a sample grid (OUT/samples/step-N.png) every N steps, from fixed seeds")
    p.add_argument("--log-every", type=_args.positive_int, default=None, metavar="N")
    p.add_argument("--checkpoint-every", type=_args.positive_int, default=None, metavar="N")
    p.add_argument("--no-tensorboard", action="store_true", help="log to loss.csv only (no OUT/tensorboard)")
    p.add_argument("--stage-dir", action="append", default=[], metavar="STAGE=PATH",
                   help="assemble: a stage from any checkpoint folder or bundled NAME/STAGE (trained here or "
                        "imported), e.g. prior=shapes-unclip/prior decoder=RUNS/my-decoder/model; repeat per stage; "
                        "overrides the stage found under --runs")
    p.add_argument("--runs", default=None, help="assemble: folder holding RECIPE-STAGE runs (default: "
                                                "$UNCLIP_RUNS or ~/.cache/unclip-explorer/runs)")
    p.add_argument("--name", default=None, help="assemble: the pipeline's name (default: RECIPE-unclip)")
    p.add_argument("--fp16", action="store_true", help="assemble: store the weights as float16 (half the size)")
    p.add_argument("--recipe", default=None, help="a shipped run config (default: shapes; see "
                                                  "unclip_core/train/configs)")
    p.add_argument("--out", default=None, help="training state folder (default: $UNCLIP_RUNS/RECIPE-STAGE or "
                                               "$UNCLIP_RUNS/CONFIG_NAME, $UNCLIP_RUNS being "
                                               "~/.cache/unclip-explorer/runs unless set)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    group.add_argument("--fresh", action="store_true", help="discard the state in --out and start over")
    p.add_argument("--steps", type=_args.positive_int, default=None, help="override the recipe's number of steps")
    p.add_argument("--batch-size", type=_args.positive_int, default=None)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="auto (default): bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX), else fp32")
    p.add_argument("--clip", default=None, help="CLIP spec for the prior/decoder (default: the recipe's); assemble: the "
                   "pipeline's CLIP (default: the one the decoder was trained with)")
    p.add_argument("--autoencoder", default=None, metavar="PATH",
                   help="decoder: an autoencoder checkpoint (folder or bundled NAME/STAGE, from `python -m "
                        "unclip_core.train.autoencoder`); the decoder then samples its latents, its image_size and "
                        "in_channels set to the latent shape. assemble: the autoencoder stage (default: the one the "
                        "decoder was trained with)")
    p.add_argument("--world", type=int, default=None, metavar="N",
                   help="ShapesWorld version of the training data (default: the recipe's, or the CLIP's)")
    p.add_argument("--lr", type=_args.positive_float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="warm start a diffusion stage from a checkpoint folder or a bundled stage such as "
                        "shapes-unclip/decoder (same network; new optimiser and LR schedule)")
    p.add_argument("--init-partial", action="store_true",
                   help="with --init-from: load the weights whose name and shape fit and start the rest fresh (e.g. "
                        "a decoder fine-tuned for another CLIP's embeddings: its z_i projections start fresh)")
    p.add_argument("--object-weights", type=float, nargs="+", default=None, metavar="W",
                   help="how often scenes of 1, 2, 3 objects are drawn, e.g. 0.4 0.4 0.2 (default: uniform)")
    p.add_argument("--min-snr-gamma", type=_args.positive_float, default=None,
                   help="Min-SNR-gamma loss weighting of a diffusion stage (default: the recipe's)")
    p.add_argument("--high-t-fraction", type=_args.fraction, default=None, metavar="P",
                   help="share of each batch with t drawn from the top of the schedule (see --high-t-from), "
                        "where the decoder must draw the scene from z_i (default: the recipe's)")
    p.add_argument("--high-t-from", type=_args.fraction, default=None, metavar="F",
                   help="where the top of the schedule starts, as a fraction of T (default: the recipe's, 0.8)")
    p.add_argument("--crop-content-fraction", type=_args.fraction, default=None, metavar="P",
                   help="upsamplers: share of training crops drawn to hold an object rather than anywhere "
                        "(default: the recipe's)")
    p.add_argument("--threads", type=_args.positive_int, default=None,
                   help="torch CPU threads (default: torch's; 1 is fastest when other jobs share the cores)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.config is not None and args.recipe is not None:
        raise ValueError("--config and --recipe both name a run; put recipe = NAME in the run file (its fields "
                         "override the recipe's), or drop one")
    if args.stage == "assemble":
        args.recipe = args.recipe or "shapes"
        return _assemble(args)
    if args.stage == "clip" and args.config is not None:
        raise ValueError("--config runs the autoencoder and the diffusion stages (prior, decoder, upsampler1, "
                         "upsampler2); train the CLIP with --recipe")
    args.recipe = args.recipe if args.recipe is not None or args.config is not None else "shapes"
    name = f"{args.recipe}-{args.stage}" if args.config is None else Path(args.config).stem
    out = Path(args.out) if args.out else default_runs_dir() / name
    if (out / "state.pt").is_file() and not (args.resume or args.fresh):
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it or --fresh to "
                         "start over")
    if args.resume and not (out / "state.pt").is_file():
        raise FileNotFoundError(f"--resume: {out} holds no training state (no state.pt); drop --resume to start a "
                                "new run there, or pass the --out of the run to continue")
    if args.resume:
        from unclip_core.train.common import load_state
        load_state(out / "state.pt")  # a state this tool did not write fails here, before any model is built
    if args.stage == "clip":
        unused = [f for f, v in (("--min-snr-gamma", args.min_snr_gamma), ("--data", args.data),
                                 ("--preset", args.preset), ("--grad-accum", args.grad_accum),
                                 ("--sample-every", args.sample_every),
                                 ("--autoencoder", args.autoencoder),
                                 ("--lr", args.lr), ("--object-weights", args.object_weights),
                                 ("--high-t-fraction", args.high_t_fraction),
                                 ("--high-t-from", args.high_t_from),
                                 ("--crop-content-fraction", args.crop_content_fraction)) if v is not None]
        if unused:
            raise ValueError(f"options for the diffusion stages only, not clip: {', '.join(unused)}; drop them")
        from unclip_core.train.clip import ClipTrainConfig, train_clip
        overrides = {k: v for k, v in {"n_steps": args.steps, "batch_size": args.batch_size,
                                       "precision": args.precision, "world": args.world,
                                       "init_from": args.init_from}.items() if v is not None}
        folder = train_clip(ClipTrainConfig.recipe(args.recipe, **overrides), out, resume=args.resume,
                            progress=not args.no_progress)
    else:
        from explorer.training import train_run
        config = autoencoder_config(args) if args.stage == "autoencoder" else diffusion_config(args)
        folder = train_run(config, out, resume=args.resume, progress=not args.no_progress)
    print(f"trained {args.stage}: {folder}")
    return 0


def _data_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The [data] fields the flags set (--data, --data-kind, --cache, --skip/--fail-on-bad-images)."""
    data = {k: v for k, v in {"path": args.data, "kind": args.data_kind, "cache": args.cache}.items() if v is not None}
    if args.skip_bad_images or args.fail_on_bad_images:
        data["on_bad_image"] = "fail" if args.fail_on_bad_images else "skip"
    if data and args.data is not None and "kind" not in data:
        data["kind"] = "auto"
    return data


def autoencoder_config(args: argparse.Namespace) -> "AutoencoderTrainConfig":
    """The autoencoder's run config: the run file (--config) or the recipe, with the flags as overrides."""
    from unclip_core.train.autoencoder import RECIPES, load_run_config, recipe
    unused = [f for f, v in (("--clip", args.clip), ("--cache", args.cache), ("--autoencoder", args.autoencoder),
                             ("--init-from", args.init_from), ("--grad-accum", args.grad_accum),
                             ("--sample-every", args.sample_every), ("--min-snr-gamma", args.min_snr_gamma),
                             ("--object-weights", args.object_weights), ("--high-t-fraction", args.high_t_fraction),
                             ("--high-t-from", args.high_t_from),
                             ("--crop-content-fraction", args.crop_content_fraction)) if v is not None]
    unused += [f for f, v in (("--init-partial", args.init_partial), ("--no-tensorboard", args.no_tensorboard)) if v]
    if unused:
        raise ValueError(f"options the autoencoder does not take: {', '.join(unused)}; drop them")
    if args.preset is not None and args.preset not in RECIPES:
        raise ValueError(f"--preset {args.preset} is not an autoencoder network; accepted: {sorted(RECIPES)}")
    overrides: dict[str, object] = {k: v for k, v in {
        "n_steps": args.steps, "batch_size": args.batch_size, "precision": args.precision, "world": args.world,
        "lr": args.lr, "log_every": args.log_every, "checkpoint_every": args.checkpoint_every}.items() if v is not None}
    if args.preset is not None:
        overrides["model"] = dict(RECIPES[args.preset]["model"])
    data = _data_overrides(args)
    if data:
        overrides["data"] = data
    if args.config is not None:
        return load_run_config(args.config, overrides=overrides)
    return recipe(args.recipe, **overrides)


def diffusion_config(args: argparse.Namespace) -> "DiffusionTrainConfig":
    """The run config of a diffusion stage: the run file (--config) or the recipe, with the flags as overrides."""
    from unclip_core.train.diffusion import MODEL_PRESETS, load_run_config, recipe
    overrides = {k: v for k, v in {"n_steps": args.steps, "batch_size": args.batch_size,
                                   "precision": args.precision, "clip": args.clip, "lr": args.lr,
                                   "init_from": args.init_from,
                                   "min_snr_gamma": args.min_snr_gamma,
                                   "object_weights": args.object_weights,
                                   "high_t_fraction": args.high_t_fraction,
                                   "high_t_from": args.high_t_from,
                                   "crop_content_fraction": args.crop_content_fraction,
                                   "autoencoder": args.autoencoder, "world": args.world,
                                   "grad_accum": args.grad_accum, "sample_every": args.sample_every,
                                   "log_every": args.log_every, "checkpoint_every": args.checkpoint_every,
                                   }.items() if v is not None}
    if args.no_tensorboard:
        overrides["tensorboard"] = False
    if args.init_partial:
        overrides["init_strict"] = False
    data = _data_overrides(args)
    if data:
        overrides["data"] = data
    if args.config is not None:
        if args.preset is not None:
            overrides["model"] = dict(MODEL_PRESETS[args.stage][args.preset])
        return load_run_config(args.config, args.stage, overrides=overrides)
    base = recipe(args.recipe, args.stage)
    if "data" in overrides:
        overrides["data"] = {**base.to_dict()["data"], **overrides["data"]}
    if args.preset is not None:
        overrides["model"] = dict(MODEL_PRESETS[args.stage][args.preset])
    return recipe(args.recipe, args.stage, **overrides)


def _assemble(args: argparse.Namespace) -> int:
    import json

    import torch

    from unclip_core.checkpoint import list_bundled
    from unclip_core.sampling import SamplingConfig
    from unclip_core.train.diffusion import RECIPE_SAMPLING, assemble_pipeline
    if not args.out:
        raise ValueError("train assemble needs --out PIPELINE_FOLDER (where the pipeline is written)")
    if args.world is not None:
        raise ValueError("--world sets the training data; train assemble takes the stages as trained, drop it")
    from unclip_core.checkpoint import resolve
    named = {}
    for item in args.stage_dir:
        stage, sep, path = item.partition("=")
        if not sep or not path or stage not in FAMILY_STAGES + ("autoencoder",):
            raise ValueError(f"--stage-dir {item!r}: expected STAGE=PATH with STAGE one of "
                             f"{', '.join(FAMILY_STAGES + ('autoencoder',))}, e.g. decoder=RUNS/my-decoder/model")
        named[stage] = resolve(path)  # a folder or a bundled NAME/STAGE; a missing one fails here, by name
    stage_dirs: dict[str, Path] = {}
    if args.runs or not named:  # the finished RECIPE-STAGE runs under --runs, overridden by --stage-dir
        runs = Path(args.runs) if args.runs else default_runs_dir()
        stage_dirs = {s: runs / f"{args.recipe}-{s}" / "model" for s in FAMILY_STAGES
                      if (runs / f"{args.recipe}-{s}" / "model" / "config.json").is_file()}
    stage_dirs.update(named)
    if "decoder" not in stage_dirs:
        where = (f"no finished decoder at {runs / f'{args.recipe}-decoder' / 'model'}" if not named
                 else "no decoder among the --stage-dir stages")
        raise ValueError(f"{where}; train it first (unclip-explorer train decoder --recipe {args.recipe}), pass "
                         "--runs, or name one with --stage-dir decoder=PATH")
    meta = json.loads((stage_dirs["decoder"] / "config.json").read_text()).get("metadata", {})
    clip = args.clip or str(meta.get("train", {}).get("clip", "shapes-clip"))  # --clip: e.g. a CLIP since renamed
    name = args.name or f"{args.recipe}-unclip"
    if args.autoencoder is not None:  # else the one the decoder recorded (assemble_pipeline)
        stage_dirs["autoencoder"] = resolve(args.autoencoder)
    folder = assemble_pipeline(args.out, stage_dirs, clip, name, copy_clip=clip not in list_bundled(),
                               overwrite=True, dtype=torch.float16 if args.fp16 else None,
                               sampling=SamplingConfig.from_dict(RECIPE_SAMPLING.get(args.recipe, {})))
    written = [k for k in json.loads((folder / "pipeline.json").read_text())["stages"] if k != "clip"]
    print(f"assembled {name} ({', '.join(written)}; CLIP {clip}): {folder}")
    return 0


COMMANDS = [Command("train", add_parser, run)]
