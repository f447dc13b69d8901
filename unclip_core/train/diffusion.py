"""Train the diffusion stages of unCLIP (prior, decoder, upsamplers) on ShapesWorld, resumable and DDP-ready.

One loop serves every stage; a stage differs only in how a batch is built and which network it trains:
  prior       z_i from (z_t, caption tokens), predicts x0 (Ramesh et al. 2022, sec. 2.2)
  decoder     image from z_i (+ optional caption tokens), predicts eps, learned sigma (sec. 2.1)
  upsampler1  x4 super-resolution on blurred inputs (k=3, sigma=0.6), random crops
  upsampler2  x4 super-resolution on BSR-degraded inputs, random crops

Run single-process:  python -m unclip_core.train.diffusion decoder --recipe shapes --out /work/runs/decoder
Run with DDP:        torchrun --nproc_per_node=2 -m unclip_core.train.diffusion decoder --recipe shapes ...
(gloo on CPUs, NCCL on GPUs; each rank draws disjoint ShapesWorld items, rank 0 writes checkpoints and logs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from unclip_core.autoencoder import Autoencoder
from unclip_core.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint, save_pipeline
from unclip_core.checks import check_choice, check_positive_int
from unclip_core.data.degrade import blur_corrupt, bsr_degrade, random_crop_pair
from unclip_core.data.shapes import CURRENT_WORLD, ShapesConfig, get_world, render_array
from unclip_core.decoder import Decoder, DecoderConfig
from unclip_core.diffusion import cosine_schedule, diffusion_loss
from unclip_core.prior import DiffusionPrior, PriorConfig
from unclip_core.sampling import SamplingConfig
from unclip_core.train.data import DataBatch, DataConfig, TrainingData, describe_data, epoch_indices
from unclip_core.train.common import (PRECISIONS, EMA, CsvLog, cosine_lr, load_state, merge_run_fields, network_config,
                                      resolve_precision, save_state, set_lr, write_text_atomic)
from unclip_core.upsampler import Upsampler, UpsamplerConfig, upsample_low_res

if TYPE_CHECKING:  # open_clip is slow to import; only the prior and decoder stages need it
    from unclip_core.clip import ClipEncoder

STAGES = ("prior", "decoder", "upsampler1", "upsampler2")
STATE_FILE = "state.pt"
LOG_FIELDS = ("step", "loss", "lr", "seconds")
_MODEL = {"prior": (DiffusionPrior, PriorConfig), "decoder": (Decoder, DecoderConfig),
          "upsampler1": (Upsampler, UpsamplerConfig), "upsampler2": (Upsampler, UpsamplerConfig)}
# the paper's targets; the shapes recipe trains its image stages on v instead (see RECIPES)
_PREDICTION = {"prior": "x0", "decoder": "eps", "upsampler1": "eps", "upsampler2": "eps"}


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """A training run of one stage: the network's config, the data and the optimisation."""

    stage: str
    model: dict[str, Any]
    prediction: str | None = None  # network target: eps, x0 or v; None = the paper's for the stage
    clip: str = "shapes-clip"
    n_steps: int = 4000
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"  # bf16 autocast where the CPU has native bf16, else fp32 (resolve_precision)
    seed: int = 0
    p_drop_z_i: float = 0.1       # decoder: z_i dropped for CFG (paper: 10%)
    p_drop_text: float = 0.5      # decoder: caption dropped (paper: 50%); prior: 10%
    crop: int | None = None       # upsamplers: side of the high-resolution training crop
    crop_content_fraction: float = 0.0  # upsamplers: share of crops drawn to hold an object (random_crop_pair)
    n_objects: tuple[int, ...] = (1, 2, 3)
    object_weights: tuple[float, ...] | None = None
    world: int | None = None  # ShapesWorld version of the data; None: the CLIP's (data_world)
    # decoder: an autoencoder checkpoint (folder or bundled NAME/STAGE) makes it a latent decoder, trained on
    # autoencoder.encode(render) (Rombach et al. 2022; Kandinsky 2.2's MoVQ plays this part)
    autoencoder: str | None = None
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023); None: plain MSE
    # a share of each batch draws t from the top of the schedule [high_t_from * T, T), where a decoder must draw
    # the scene from z_i alone; the per-t optimum is unchanged, only where the gradient is spent
    high_t_fraction: float = 0.0
    high_t_from: float = 0.8
    init_from: str | None = None  # warm start: a checkpoint folder or bundled "NAME/STAGE" with the same config
    # False: a warm start from another config of the same network class loads every weight whose name and shape
    # agree and leaves the rest at their initial values (a decoder for another CLIP: its z_i projections start fresh)
    init_strict: bool = True
    data: DataConfig = DataConfig()  # what the stage trains on (a [data] table in a run file); ShapesWorld by default
    grad_accum: int = 1  # micro-batches of batch_size per optimiser step (per rank)
    log_every: int = 10
    checkpoint_every: int = 200
    tensorboard: bool = True  # RUN/tensorboard event files beside loss.csv
    sample_every: int = 0  # a sample grid (RUN/samples/step-N.png; the prior: sample cosines) every N steps; 0: off
    n_samples: int = 8  # items of the fixed sample set (the first n of the data), drawn from fixed seeds
    sample_steps: int = 25  # DDIM steps of the sample grid

    def __post_init__(self) -> None:
        check_choice("stage", self.stage, STAGES)
        check_choice("precision", self.precision, PRECISIONS)
        if self.prediction is None:
            object.__setattr__(self, "prediction", _PREDICTION[self.stage])
        check_choice("prediction", self.prediction, ("eps", "x0", "v"))
        for name in ("n_steps", "batch_size", "log_every", "checkpoint_every", "grad_accum", "n_samples",
                     "sample_steps"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("sample_every", self.sample_every, minimum=0)
        if isinstance(self.data, Mapping):
            from unclip_core.checkpoint import config_from_dict
            object.__setattr__(self, "data", config_from_dict(DataConfig, self.data,
                                                              fix="Remove them from the run's [data] table"))
        if not isinstance(self.data, DataConfig):
            raise TypeError(f"data must be a DataConfig or a dict of its fields, got {type(self.data).__name__}")
        if self.data.kind == "embeddings" and self.stage != "prior":
            raise ValueError(f"data kind='embeddings' (precomputed CLIP embeddings) trains the prior only; the "
                             f"{self.stage} needs images: pass an image folder or webdataset shards as data path")
        check_positive_int("warmup_steps", self.warmup_steps, minimum=0)
        for name in ("p_drop_z_i", "p_drop_text"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("crop_content_fraction", "high_t_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.high_t_from < 1.0:
            raise ValueError(f"high_t_from must be in [0, 1) (a fraction of the schedule), got {self.high_t_from}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0 (Hang et al. use 5) or None, got {self.min_snr_gamma}")
        object.__setattr__(self, "n_objects", tuple(self.n_objects))
        if self.object_weights is not None:
            object.__setattr__(self, "object_weights", tuple(self.object_weights))
        if self.world is not None:
            object.__setattr__(self, "world", get_world(self.world).version)
        if self.autoencoder is not None and self.stage != "decoder":
            raise ValueError(f"autoencoder is a decoder setting (a latent decoder); the {self.stage} stage takes none")
        self.model_config()  # validates the network config now, not at step 0

    def model_config(self) -> Any:
        """The network's frozen config dataclass."""
        return network_config(_MODEL[self.stage][1], self.model)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_objects"] = list(self.n_objects)
        d["object_weights"] = None if self.object_weights is None else list(self.object_weights)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiffusionTrainConfig":
        from unclip_core.checkpoint import config_from_dict
        return config_from_dict(cls, d, fix="Remove them from the run config")


# The image stages predict v (Salimans & Ho 2022) rather than the paper's eps: with the cosine schedule, eps
# prediction makes x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) amplify eps errors by up to 1/sqrt(abar_999)
# ~ 2e4, and a decoder trained 600 steps on eps reconstructed renders from t = 839 (mean |err| 0.09) but
# drew noise from t = 999; v makes the x0 estimate well conditioned at every t.
# The bundled ShapesWorld family keeps the paper's resolutions: a 64px base decoder and x4 upsamplers
# (64 -> 256 -> 1024). At 32px, small stars and hexagons are a few pixels wide and cannot be told apart, so
# the base is 64px with a thin top level (32 channels at 64x64), which costs ~1.5x a 32px UNet, not 7x.
# clip_scale 6.1 = 17.2 * sqrt(128 / 1024) keeps the paper's per-component scale for 128-d embeddings.
# The recipes are the shipped run configs unclip_core/train/configs/RECIPE-STAGE.toml (`--recipe NAME` runs them).
CONFIG_DIR = Path(__file__).parent / "configs"


def _load_recipes() -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for f in sorted(CONFIG_DIR.glob("*.toml")):
        name, stage = f.stem.rsplit("-", 1)
        fields = read_run_file(f)
        fields.pop("stage", None)
        out.setdefault(name, {})[stage] = fields
    return out


# the sampling settings a recipe's family is evaluated with (its card's numbers), written into the pipeline.json of
# `train assemble`: 25 prior and 25 decoder DDIM steps (the shapes-unclip evaluation's)
RECIPE_SAMPLING: dict[str, dict[str, Any]] = {"shapes-v2": {"prior_steps": 25, "decoder_steps": 25},
                                              "shapes-v2-slots": {"prior_steps": 25, "decoder_steps": 25}}


def recipe(name: str, stage: str, **overrides: Any) -> DiffusionTrainConfig:
    """The training config of `stage` in recipe `name` (a shipped config, e.g. "shapes-v2" or "tiny"), with field
    overrides."""
    check_choice("recipe", name, sorted(RECIPES))
    check_choice("stage", stage, STAGES)
    if stage not in RECIPES[name]:
        raise ValueError(f"recipe {name!r} has no {stage} stage (it has {sorted(RECIPES[name])}); pick one of "
                         f"those or another recipe: {sorted(n for n, st in RECIPES.items() if stage in st)}")
    return DiffusionTrainConfig(stage=stage, **{**RECIPES[name][stage], **overrides})


# ---- run files -----------------------------------------------------------------------------------
# Network sizes by name, for runs on a user's data. The CLIP-dependent fields (clip_dim; the prior's text_width
# and clip_scale) are filled from the run's CLIP by `fit_to_clip`. "small" is the ShapesWorld family's size,
# "paper" the widths of the paper's stages as the open releases have them (Karlo's 20-layer, 2048-wide prior;
# GLIDE's 64 px decoder; the ADM-style upsamplers).
MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "prior": {
        "tiny": dict(width=64, n_layers=2, n_heads=2, n_text_tokens=16, dropout=0.0),
        "small": dict(width=256, n_layers=6, n_heads=4, n_text_tokens=24, dropout=0.0),
        "base": dict(width=768, n_layers=12, n_heads=12, n_text_tokens=77, dropout=0.0),
        "paper": dict(width=2048, n_layers=20, n_heads=32, n_text_tokens=77, dropout=0.0),
    },
    "decoder": {
        # the spatial z_i map: without it a decoder this small learns the unconditional picture and ignores z_i for
        # hundreds of steps (measured: 600 steps x 16 on 512 one-object scenes, read-out colour 0.02 -> 0.62 with it)
        "tiny": dict(image_size=32, model_channels=32, channel_mult=(1, 2), n_res_blocks=1, attention_resolutions=(16,),
                     head_channels=16, norm_groups=8, dropout=0.0, resblock_updown=False, clip_map_channels=4,
                     clip_map_size=16),
        "small": dict(image_size=64, model_channels=32, channel_mult=(1, 2, 4, 4), n_res_blocks=1,
                      attention_resolutions=(16, 8), head_channels=32, norm_groups=16, dropout=0.0,
                      resblock_updown=False, clip_map_channels=4, clip_map_size=16),
        "base": dict(image_size=64, model_channels=128, channel_mult=(1, 2, 3, 4), n_res_blocks=2,
                     attention_resolutions=(32, 16, 8), head_channels=64, dropout=0.1),
        "paper": dict(image_size=64, model_channels=512, channel_mult=(1, 2, 3, 4), n_res_blocks=3,
                      attention_resolutions=(32, 16, 8), head_channels=64, dropout=0.1),
    },
    "upsampler1": {
        "tiny": dict(low_res=32, out_res=128, model_channels=16, channel_mult=(1, 2), n_res_blocks=1, norm_groups=8),
        "small": dict(low_res=64, out_res=256, model_channels=32, channel_mult=(1, 2, 2), n_res_blocks=1,
                      norm_groups=16),
        "base": dict(low_res=64, out_res=256, model_channels=128, channel_mult=(1, 1, 2, 2, 4), n_res_blocks=2),
        "paper": dict(low_res=64, out_res=256, model_channels=320, channel_mult=(1, 2, 3, 4), n_res_blocks=3),
    },
    "upsampler2": {
        "tiny": dict(low_res=64, out_res=256, model_channels=8, channel_mult=(1, 2), n_res_blocks=1, norm_groups=8),
        "small": dict(low_res=256, out_res=1024, model_channels=16, channel_mult=(1, 2, 2), n_res_blocks=1,
                      norm_groups=8),
        "base": dict(low_res=256, out_res=1024, model_channels=64, channel_mult=(1, 1, 2, 2, 4), n_res_blocks=2),
        "paper": dict(low_res=256, out_res=1024, model_channels=192, channel_mult=(1, 1, 2, 2, 4, 4),
                      n_res_blocks=2),
    },
}
RUN_FILE_KEYS = ("recipe", "preset")  # a run file's keys beside DiffusionTrainConfig's fields


def read_run_file(path: str | os.PathLike) -> dict[str, Any]:
    """The fields of a run file: TOML (.toml) or JSON (.json) -> dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run config not found: {path}; pass a .toml or .json file (examples: "
                                f"{CONFIG_DIR}/*.toml, docs/training.md)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML ({e}); fix the line it names") from None
    if path.suffix == ".json":
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); fix that line") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{path} must hold a JSON object of run fields, got {type(fields).__name__}")
        return fields
    raise ValueError(f"run config {path} has suffix {path.suffix!r}; accepted: '.toml', '.json'")


RECIPES: dict[str, dict[str, dict[str, Any]]] = _load_recipes()


def load_run_config(path: str | os.PathLike, stage: str | None = None, *,
                    overrides: Mapping[str, Any] | None = None) -> DiffusionTrainConfig:
    """A run's config from a run file (TOML or JSON), validated by DiffusionTrainConfig.

    The file holds DiffusionTrainConfig's fields, its [model] and [data] tables, and optionally `recipe = NAME` (start
    from that shipped config) and `preset = tiny|small|base|paper` (the model's sizes, MODEL_PRESETS; [model] keys
    override them). `stage` (the command line's) must agree with the file's. `overrides` (e.g. command-line flags)
    replace fields; their "model" and "data" dicts are merged key by key into the file's.
    """
    fields = dict(read_run_file(path))
    accepted = sorted(set(DiffusionTrainConfig.__dataclass_fields__) | set(RUN_FILE_KEYS))
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; accepted keys: {accepted}")
    file_stage = fields.pop("stage", None)
    if stage is not None and file_stage is not None and stage != file_stage:
        raise ValueError(f"{path} configures the {file_stage} stage, not the {stage}; pass `train {file_stage}` or "
                         "another run file")
    stage = stage or file_stage
    if stage is None:
        raise ValueError(f"{path} names no stage; add stage = \"decoder\" (or prior, upsampler1, upsampler2)")
    check_choice("stage", stage, STAGES)
    base: dict[str, Any] = {}
    name = fields.pop("recipe", None)
    if name is not None:
        base = recipe(name, stage).to_dict()
        base.pop("stage")
    preset = fields.pop("preset", None)
    model = dict(base.get("model", {}))
    if preset is not None:
        check_choice("preset", preset, sorted(MODEL_PRESETS[stage]))
        model = dict(MODEL_PRESETS[stage][preset])
    merge_run_fields(base, model, fields, overrides)
    if not model:
        raise ValueError(f"{path} sets no network: add preset = \"tiny\" (or small, base, paper), a [model] table, "
                         "or recipe = NAME")
    unknown = sorted(set(base) - set(DiffusionTrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown run fields {unknown}; accepted keys: {accepted}")
    return DiffusionTrainConfig(stage=stage, **{**base, "model": model})


def fit_to_clip(config: DiffusionTrainConfig, *, embed_dim: int, text_width: int, context_length: int
                ) -> DiffusionTrainConfig:
    """`config` with the CLIP-dependent network fields its run file left out filled from its CLIP: clip_dim; for
    the prior also text_width, n_text_tokens (capped at the CLIP's context) and clip_scale (the paper's 17.2 for
    1024-d, per component: 17.2 sqrt(d / 1024)). Fields the file sets are kept (a mismatch is refused later)."""
    from dataclasses import replace
    if config.stage not in ("prior", "decoder"):
        return config
    model = dict(config.model)
    model.setdefault("clip_dim", embed_dim)
    if config.stage == "prior":
        model.setdefault("clip_scale", round(17.2 * (model["clip_dim"] / 1024) ** 0.5, 3))
        if model.get("n_text_tokens", 1):
            model.setdefault("text_width", text_width)
            # a prior sees at most the CLIP's context: the pipeline's null tokens have the prior's length
            model["n_text_tokens"] = min(int(model.get("n_text_tokens", PriorConfig.n_text_tokens)), context_length)
    if model == dict(config.model):
        return config
    return replace(config, model=model)


# ---- distributed --------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    """(rank, world_size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---- batches ------------------------------------------------------------------------------------
def _render_batch(data: ShapesConfig, indices: list[int], sizes: tuple[int, ...]) -> tuple[list[Tensor], list[str]]:
    """Render items `indices` at every size in `sizes` -> ([(B, 3, s, s) in [-1, 1] per size], captions)."""
    per_size: list[list[np.ndarray]] = [[] for _ in sizes]
    captions = []
    for i in indices:
        scene, text = data.scene_caption(i)
        captions.append(text)
        for k, s in enumerate(sizes):
            per_size[k].append(render_array(scene, s))
    tensors = [torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for a in per_size]
    return tensors, captions


def data_world(config: DiffusionTrainConfig, clip: "ClipEncoder | None" = None) -> int:
    """The ShapesWorld version a stage trains on: config.world, else its CLIP's (loaded, or read from the CLIP
    folder that config.clip names), else the current world."""
    if config.world is not None:
        return config.world
    if clip is not None and clip.world is not None:
        return clip.world
    from unclip_core.clip import _folder_world, _resolve_bundled, bundled_names
    folder = _resolve_bundled(config.clip) if config.clip in bundled_names() else Path(config.clip)
    world = _folder_world(folder) if (folder / "open_clip_config.json").is_file() else None
    return CURRENT_WORLD if world is None else world


class _Batcher:
    """Builds a stage's training batch (inputs to the network + x0) deterministically from (seed, step, micro-batch,
    rank): ShapesWorld scenes rendered on the fly, or the items of a `TrainingData` in a seeded per-epoch order."""

    def __init__(self, config: DiffusionTrainConfig, model_config: Any, clip: "ClipEncoder | None",
                 rank: int, world: int, autoencoder: Autoencoder | None = None,
                 data: TrainingData | None = None) -> None:
        self.c, self.mc, self.clip, self.autoencoder = config, model_config, clip, autoencoder
        self.rank, self.world = rank, world
        self.dataset = data
        self._epoch: dict[int, np.ndarray] = {}
        if data is None:
            self.data = ShapesConfig(config.seed, 64, "train", config.n_objects, config.object_weights,
                                     world=data_world(config, clip))

    def indices(self, step: int, micro: int = 0) -> list[int]:
        B = self.c.batch_size
        start = ((step * self.c.grad_accum + micro) * self.world + self.rank) * B
        if self.dataset is None:
            return list(range(start, start + B))
        return epoch_indices(start, B, len(self.dataset), self.c.seed, self._epoch)

    def __call__(self, step: int, g: torch.Generator, micro: int = 0) -> tuple[Tensor, dict[str, Any]]:
        """-> (x0, conditioning kwargs for the network)."""
        return self.items(self.indices(step, micro), g)

    def _images(self, idx: list[int], sizes: tuple[int, ...]) -> tuple[list[Tensor], list[str] | None, Tensor | None,
                                                                        Tensor | None]:
        """(images per size, captions, z_i, z_t) of items idx; z_i / z_t None where they must be encoded here."""
        if self.dataset is None:
            images, captions = _render_batch(self.data, idx, sizes)
            return images, captions, None, None
        b: DataBatch = self.dataset.batch(idx, sizes=sizes)
        return b.images or [], b.captions, b.z_i, b.z_t

    def items(self, idx: list[int], g: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        c, mc = self.c, self.mc
        if c.stage in ("prior", "decoder"):
            if c.stage == "prior":  # a PriorConfig has no image size
                sizes: tuple[int, ...] = (self.clip.image_size,) if self.dataset is None else ()
            else:
                out_size = mc.image_size if self.autoencoder is None else self.autoencoder.config.image_size
                sizes = (self.clip.image_size, out_size) if self.dataset is None else (out_size,)
            images, captions, z_i, z_t = self._images(idx, sizes)
            if z_i is None:
                z_i = self.clip.encode_image(images[0])
            if c.stage == "prior":
                if z_t is None:
                    z_t = self.clip.encode_text(captions)
                cond = {"z_t": z_t}
                if mc.n_text_tokens:
                    tokens, mask = self.clip.text_tokens(captions)
                    cond.update(text_tokens=tokens[:, :mc.n_text_tokens], text_mask=mask[:, :mc.n_text_tokens])
                else:
                    cond.update(text_tokens=None, text_mask=None)
                return z_i, cond
            cond: dict[str, Any] = {"z_i": z_i}
            if mc.text_width:
                cond["text_tokens"], cond["text_mask"] = self.clip.text_tokens(captions)
            x0 = images[-1]
            if self.autoencoder is not None:
                with torch.no_grad():
                    return self.autoencoder.encode(x0), cond
            return x0, cond
        (lo, hi), _, _, _ = self._images(idx, (mc.low_res, mc.out_res))
        lo = blur_corrupt(lo) if c.stage == "upsampler1" else torch.cat(
            [bsr_degrade(x[None], generator=g) for x in lo])
        lo = upsample_low_res(lo, hi.shape[-2:])  # upsample the whole image, then crop: no border effects
        if c.crop is not None and c.crop < mc.out_res:
            pairs = [random_crop_pair(h[None], l[None], c.crop, generator=g, content_fraction=c.crop_content_fraction)
                     for h, l in zip(hi, lo)]
            hi = torch.cat([p[0] for p in pairs])
            lo = torch.cat([p[1] for p in pairs])
        return hi, {"low_res": lo}


def fit_to_autoencoder(config: DiffusionTrainConfig) -> DiffusionTrainConfig:
    """`config` with its decoder's image_size and in_channels set to its autoencoder's latent shape (a latent
    decoder, Rombach et al. 2022); unchanged without an autoencoder. The other network settings are the recipe's."""
    if config.autoencoder is None:
        return config
    from dataclasses import replace

    from unclip_core.checkpoint import resolve
    cls, ac, _ = read_checkpoint_config(resolve(config.autoencoder))
    if cls is not Autoencoder:
        raise ValueError(f"autoencoder={config.autoencoder!r} is a {cls.__name__} checkpoint, not an Autoencoder")
    return replace(config, model={**config.model, "image_size": ac.latent_size, "in_channels": ac.latent_channels})


def load_autoencoder_for(config: DiffusionTrainConfig, model_config: Any) -> Autoencoder | None:
    """The autoencoder of a latent decoder run (None for pixel stages), checked against the decoder's shape."""
    if config.autoencoder is None:
        return None
    from unclip_core.checkpoint import resolve
    ae = load_checkpoint(resolve(config.autoencoder)).eval()
    if not isinstance(ae, Autoencoder):
        raise ValueError(f"autoencoder={config.autoencoder!r} is a {type(ae).__name__} checkpoint, not an Autoencoder")
    want = (ae.config.latent_size, ae.config.latent_channels)
    if (model_config.image_size, model_config.in_channels) != want:
        raise ValueError(f"a latent decoder over {config.autoencoder!r} needs model image_size={want[0]} and "
                         f"in_channels={want[1]} (its latents), got {model_config.image_size} and "
                         f"{model_config.in_channels}")
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae


def _prepare(stage: str, model: torch.nn.Module, x0: Tensor, cond: dict[str, Any], config: DiffusionTrainConfig,
             g: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
    """Scale embeddings and apply the CFG condition dropout of the stage."""
    if stage == "prior":
        z_t, tok, mask = model.drop_condition(model.scale_cond(cond["z_t"]), cond["text_tokens"], cond["text_mask"],
                                              config.p_drop_text, generator=g)
        return model.scale_in(x0), {"z_t": z_t, "text_tokens": tok, "text_mask": mask}
    if stage == "decoder":
        z_i, tok, mask = model.drop_condition(cond["z_i"], cond.get("text_tokens"), cond.get("text_mask"),
                                              config.p_drop_z_i, config.p_drop_text, generator=g)
        out = {"z_i": z_i}
        if tok is not None:
            out.update(text_tokens=tok, text_mask=mask)
        return x0, out
    return x0, cond


# fields a resumed run may change: they schedule logging, checkpoints and samples, not the weights
RESUME_EXEMPT = ("n_steps", "log_every", "checkpoint_every", "tensorboard", "sample_every", "n_samples",
                 "sample_steps")


def train_stage(config: DiffusionTrainConfig, out_dir: str | os.PathLike, resume: bool = True,
                progress: bool = True, clip: "ClipEncoder | None" = None,
                callback: Callable[[int, dict[str, float]], None] | None = None,
                on_end: Callable[[torch.nn.Module], None] | None = None, *,
                data: TrainingData | None = None) -> Path:
    """Train one stage; checkpoint to out_dir/state.pt every `checkpoint_every` steps; export out_dir/model.

    resume=True continues from out_dir/state.pt (the same config is required). callback(step, metrics) runs
    after each step; an exception there stops training with the last checkpoint intact; on_end(model) sees the
    trained (non-EMA) weights of this rank. data: the items of a run whose config.data is not ShapesWorld (open
    them with explorer.training.open_training_data, or run `unclip-explorer train STAGE --config RUN.toml`).
    Returns the exported checkpoint folder (config.json + model.safetensors with the EMA weights).
    """
    if not isinstance(config, DiffusionTrainConfig):
        raise TypeError(f"config must be a DiffusionTrainConfig (e.g. recipe('shapes', 'decoder')), "
                        f"got {type(config).__name__}")
    if config.data.is_shapesworld and data is not None:
        raise ValueError("data was passed but config.data is ShapesWorld; set config.data to the data's "
                         "DataConfig (kind and path) so the run records what it trained on")
    if not config.data.is_shapesworld and data is None:
        raise ValueError(f"config.data is {config.data.kind} {config.data.path!r}: pass its items as data= "
                         "(explorer.training.open_training_data(config, ...)), or run `unclip-explorer train "
                         f"{config.stage} --config RUN.toml`, which opens them")
    if data is not None and len(data) == 0:
        raise ValueError(f"the data set {config.data.path!r} is empty; nothing to train on")
    if config.init_from is not None:
        from unclip_core.checkpoint import resolve
        resolve(config.init_from)  # a missing warm-start checkpoint fails before anything is written
    rank, world = _dist_info()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is a file; pass a folder for the training state")
    out.mkdir(parents=True, exist_ok=True)
    mc = config.model_config()
    needs_clip = config.stage in ("prior", "decoder")
    if needs_clip and clip is None:
        from unclip_core.clip import ClipEncoder
        clip = ClipEncoder.load(config.clip)
    if needs_clip and clip.embed_dim != mc.clip_dim:
        raise ValueError(f"the {config.stage} config has clip_dim={mc.clip_dim} but CLIP {config.clip!r} makes "
                         f"{clip.embed_dim}-d embeddings; set model clip_dim={clip.embed_dim}")
    if needs_clip and data is not None and data.clip_model_id is not None and data.clip_model_id != clip.model_id:
        raise ValueError(f"the embeddings of {config.data.path!r} come from CLIP model_id {data.clip_model_id!r}, "
                         f"this run's CLIP {config.clip!r} is {clip.model_id!r}; pass the CLIP they were made with, "
                         "or another data cache folder")
    if (needs_clip and data is None and config.world is not None and clip.world is not None
            and clip.world != config.world):
        raise ValueError(f"the {config.stage} trains on ShapesWorld v{config.world} but CLIP {config.clip!r} was "
                         f"trained on v{clip.world}; pass --clip with a v{config.world} CLIP (train one with "
                         f"`unclip-explorer train clip --recipe {'shapes' if config.world == 1 else 'shapes-v2'}`) "
                         f"or --world {clip.world}")
    autoencoder = load_autoencoder_for(config, mc)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model_cls = _MODEL[config.stage][0]
    model = model_cls(mc)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state_path = out / STATE_FILE
    if config.init_from is not None and not (resume and state_path.is_file()):
        fresh = warm_start(model, config.init_from, strict=config.init_strict)
        if fresh and rank == 0:
            import sys
            print(f"init_from={config.init_from!r}: {len(fresh)} weights of another shape start fresh, e.g. "
                  f"{fresh[:4]}", file=sys.stderr)
    ema = EMA(model, config.ema_decay)
    step, elapsed = 0, 0.0
    if resume and state_path.is_file():
        state = load_state(state_path)
        # n_steps may change on resume (lengthen or shorten a run): the cosine LR schedule is recomputed for
        # the new total from the current step on; every other field that shapes the weights must match
        diff = sorted(k for k in state["config"] if k not in RESUME_EXEMPT
                      and state["config"][k] != config.to_dict().get(k))
        if diff:
            raise ValueError(f"out_dir={str(out)!r} holds a run with another config (differs in {diff}); pass "
                             "the same config, resume=False to start over, or a new out_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step, elapsed = int(state["step"]), float(state["seconds"])
    # the prior's and decoder's learned null embeddings get no gradient in a batch where no condition was dropped
    net = (torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=needs_clip) if world > 1
           else model)
    log = CsvLog(out / "loss.csv", LOG_FIELDS, resume_step=step if step else None) if rank == 0 else None
    board = _tensorboard(out, step) if rank == 0 and config.tensorboard else None
    if rank == 0:
        write_text_atomic(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    schedule = cosine_schedule(1000)
    batcher = _Batcher(config, mc, clip, rank, world, autoencoder, data)

    def checkpoint() -> None:
        if rank == 0:
            save_state(state_path, {"config": config.to_dict(), "step": step, "seconds": elapsed,
                                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "ema": ema.state_dict()})

    model.train()
    bar = tqdm(total=config.n_steps, initial=step, desc=config.stage, disable=not progress or rank != 0)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if resolve_precision(config.precision) == "bf16"
                else contextlib.nullcontext())
    while step < config.n_steps:
        t0 = time.perf_counter()
        lr = cosine_lr(step, config.lr, config.n_steps, config.warmup_steps, 0.1)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(config.grad_accum):
            # every random draw of a step depends on (seed, step, micro-batch, rank) only, so a resumed run
            # continues exactly (micro-batch 0 draws what runs without accumulation always drew)
            key = (config.seed, step, rank) if micro == 0 else (config.seed, step, rank, micro)
            g = torch.Generator().manual_seed(hash(key) % (2**63))
            with torch.no_grad():
                x0, cond = batcher(step, g, micro)
                x0, cond = _prepare(config.stage, model, x0, cond, config, g)
                t = sample_timesteps(x0.shape[0], schedule.T, g, config.high_t_fraction, config.high_t_from)
                eps = torch.randn(x0.shape, generator=g)
                x_t = schedule.q_sample(x0, t, eps).float()
            sync = (contextlib.nullcontext() if world == 1 or micro == config.grad_accum - 1 else net.no_sync())
            with sync:
                with autocast:
                    model_out = net(x_t, t, **cond)
                loss = diffusion_loss(model_out.float(), x0, x_t, t, eps, config.prediction,
                                      learn_sigma=getattr(mc, "learn_sigma", False), schedule=schedule,
                                      min_snr_gamma=config.min_snr_gamma)
                (loss / config.grad_accum if config.grad_accum > 1 else loss).backward()
            total += loss.item()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        ema.update(model)
        step += 1
        elapsed += time.perf_counter() - t0
        metrics = {"loss": total / config.grad_accum, "lr": lr, "seconds": elapsed}
        if log is not None and (step % config.log_every == 0 or step == config.n_steps):
            log.write(step=step, **metrics)
            if board is not None:
                board.add_scalar("loss", metrics["loss"], step)
                board.add_scalar("lr", lr, step)
                board.flush()
        if step % config.checkpoint_every == 0 or step == config.n_steps:
            checkpoint()
        if rank == 0 and config.sample_every and (step % config.sample_every == 0 or step == config.n_steps):
            write_samples(config, mc, ema, batcher, out, step, autoencoder=autoencoder, board=board)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if callback is not None:
            callback(step, metrics)
    bar.close()
    if board is not None:
        board.close()
    if on_end is not None:
        on_end(model)
    if rank != 0:
        return out / "model"
    export = replace_weights(model_cls(mc), ema)
    card = stage_card(config, elapsed, step, sum(p.numel() for p in model.parameters()), data=data)
    return save_checkpoint(out / "model", export, card=card,
                           metadata={"stage": config.stage, "prediction": config.prediction,
                                     "autoencoder": config.autoencoder,
                                     "train": config.to_dict(), "steps": step, "seconds": round(elapsed, 1)},
                           overwrite=True)


def _tensorboard(out: Path, step: int) -> Any:
    """A TensorBoard writer on out/tensorboard; a resumed run purges the events logged after its checkpoint."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; an environment without it still trains, with loss.csv
        import warnings
        warnings.warn("tensorboard is not installed (pip install tensorboard): this run logs to loss.csv only; "
                      "set tensorboard = false to silence this", stacklevel=3)
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=step if step else None)


@torch.no_grad()
def write_samples(config: DiffusionTrainConfig, model_config: Any, ema: EMA, batcher: "_Batcher", out: Path,
                  step: int, *, autoencoder: Autoencoder | None = None, board: Any = None) -> Path:
    """Sample the EMA weights on the run's fixed sample set (its first n_samples items, noise from seed + 1):
    image stages write out/samples/step-N.png (top row the data, bottom row the samples); the prior writes
    out/samples/step-N.json with the cosine between sampled and true z_i of each item's caption."""
    from unclip_core.samplers import model_to_denoiser, sample_ddim
    n = config.n_samples
    g = torch.Generator().manual_seed(config.seed + 1)
    x0, cond = batcher.items([i % len(batcher.dataset) if batcher.dataset is not None else i for i in range(n)], g)
    model = replace_weights(_MODEL[config.stage][0](model_config), ema)
    if config.stage == "prior":
        cond = {"z_t": model.scale_cond(cond["z_t"]), "text_tokens": cond["text_tokens"],
                "text_mask": cond["text_mask"]}
    schedule = cosine_schedule(1000)
    latent = autoencoder is not None
    clip_x0 = None if config.stage == "prior" or latent else 1.0
    denoise = model_to_denoiser(lambda x, t: model(x, t, **cond), schedule, config.prediction, clip_x0=clip_x0)
    x_T = torch.randn(x0.shape, generator=g)
    sample = sample_ddim(denoise, x_T, schedule, config.sample_steps)
    folder = out / "samples"
    folder.mkdir(exist_ok=True)
    if config.stage == "prior":
        z = torch.nn.functional.normalize(model.scale_out(sample), dim=-1)
        cos = (z * torch.nn.functional.normalize(x0, dim=-1)).sum(-1)
        if board is not None:
            board.add_scalar("samples/prior_cosine", float(cos.mean()), step)
        return write_text_atomic(folder / f"step-{step:07d}.json",
                                 json.dumps({"step": step, "cosine_mean": round(float(cos.mean()), 6),
                                             "cosine": [round(float(c), 6) for c in cos], "seed": config.seed + 1,
                                             "sample_steps": config.sample_steps}, indent=2) + "\n")
    if latent:
        x0, sample = autoencoder.decode(x0), autoencoder.decode(sample)
    grid = torch.cat([torch.cat(list(row), dim=-1) for row in (x0, sample)], dim=-2).clamp(-1, 1)  # (3, 2H, nW)
    if board is not None:
        board.add_image("samples", (grid + 1) / 2, step)
    from unclip_core.atomic import atomic_write
    from unclip_core.imageio import tensor_to_pil
    image = tensor_to_pil(grid)
    return atomic_write(folder / f"step-{step:07d}.png", lambda tmp: image.save(tmp, format="PNG"), fsync=False)


def sample_timesteps(n: int, T: int, generator: torch.Generator, high_fraction: float = 0.0,
                     high_from: float = 0.8) -> Tensor:
    """n training timesteps: uniform on [0, T), except that a share `high_fraction` (drawn per sample) is uniform
    on [high_from * T, T), the noise levels at which a conditional model must draw the scene from its condition."""
    t = torch.randint(0, T, (n,), generator=generator)
    if high_fraction > 0:
        lo = int(high_from * T)
        high = torch.randint(lo, T, (n,), generator=generator)
        t = torch.where(torch.rand(n, generator=generator) < high_fraction, high, t)
    return t


def warm_start(model: torch.nn.Module, spec: str, *, strict: bool = True) -> list[str]:
    """Load the weights of checkpoint `spec` (a folder or bundled "NAME/STAGE") into `model`, which must have
    the same class and config: a run that continues an exported stage with a new optimiser and schedule. A
    decoder may also grow a spatial z_i map (`DecoderConfig.GROWABLE`), which starts at zero influence.
    strict=False: another config of the same class; the weights whose name and shape agree are loaded, the rest
    keep their initial values. Returns the names of the weights that start fresh."""
    from unclip_core.checkpoint import resolve
    folder = resolve(spec)
    cls, cfg, _ = read_checkpoint_config(folder)
    if cls is type(model) and cfg == model.config:
        model.load_state_dict(load_checkpoint(folder).state_dict())  # copied into this model's float32 weights
        return []
    if cls is type(model) and not strict:
        own = model.state_dict()
        theirs = load_checkpoint(folder).state_dict()
        same = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
        if not same:
            raise ValueError(f"init_from={spec!r}: no weight of its {cls.__name__} has this run's name and shape; "
                             "it is a different network (compare its config.json with the run's model settings)")
        model.load_state_dict(same, strict=False)
        return sorted(set(own) - set(same))
    if cls is type(model) and hasattr(model, "load_grown"):  # e.g. a decoder that gains a clip map
        try:
            model.load_grown(load_checkpoint(folder).state_dict(), cfg)  # checks which config fields differ
        except ValueError as e:
            raise ValueError(f"init_from={spec!r}: {e} (compare {folder}/config.json with the recipe's model "
                             "settings, or set init_strict = false (--init-partial) to load the weights that fit)") from None
        return []
    raise ValueError(f"init_from={spec!r} holds a {cls.__name__} with another config than this run's "
                     f"{type(model).__name__}; warm starts need the same network (compare {folder}/config.json "
                     "with the recipe's model settings)" + ("; init_strict = false loads the weights that fit (e.g. "
                                                            "a decoder for another CLIP)" if cls is type(model) else ""))


def replace_weights(model: torch.nn.Module, ema: EMA) -> torch.nn.Module:
    """`model` with the EMA weights, in eval mode."""
    ema.copy_to(model)
    return model.eval()


def stage_card(config: DiffusionTrainConfig, seconds: float, steps: int, n_params: int, *,
               data: TrainingData | None = None) -> str:
    """A short model card for one trained stage (quality numbers are added by the evaluation)."""
    what = f"ShapesWorld v{data_world(config)}" if config.data.is_shapesworld else describe_data(config.data, data)
    accum = f" x {config.grad_accum} accumulated" if config.grad_accum > 1 else ""
    return (f"# {'ShapesWorld ' if config.data.is_shapesworld else ''}unCLIP {config.stage}\n\n"
            f"- parameters: {n_params:,}\n- predicts: {config.prediction}\n"
            f"- data: {what}\n"
            f"- trained: {steps} steps x batch {config.batch_size}{accum}, {seconds / 60:.1f} min on CPU "
            f"({resolve_precision(config.precision)}), seed {config.seed}\n"
            + (f"- warm start: the weights of `{config.init_from}` (its own card tells how they were trained)\n"
               if config.init_from else "")
            + (f"- latent decoder: samples the latents of the autoencoder `{config.autoencoder}`\n"
               if config.autoencoder else "")
            + f"- run: `unclip-explorer train {config.stage} --config RUN.toml` with the config below\n\n"
            f"```json\n{json.dumps(config.to_dict(), indent=2)}\n```\n")


def assemble_pipeline(out: str | os.PathLike, stage_dirs: dict[str, str | os.PathLike], clip: str | os.PathLike,
                      name: str, card: str | None = None, overwrite: bool = False, copy_clip: bool = True,
                      dtype: torch.dtype | None = None, sampling: SamplingConfig | None = None) -> Path:
    """Write a pipeline folder (pipeline.json + stage folders + a copy of the CLIP) loadable by UnCLIP.load.

    sampling: the pipeline's default sampling settings (pipeline.json "sampling"; None: UnCLIP's defaults).
    Each stage's prediction target is read from the metadata its trainer wrote into its config.json.
    A latent decoder's autoencoder (the "autoencoder" its metadata records) becomes the stage "autoencoder"
    unless stage_dirs names one; its decoder clamps no x0 (clip_x0 None: latents have no [-1, 1] range).
    copy_clip=False records `clip` by name instead of copying it (for a bundled CLIP such as "shapes-clip").
    dtype=torch.float16 stores the stages' weights at half size (what the bundled family ships).
    """
    from unclip_core.checkpoint import resolve
    stages: dict[str, Any] = {k: resolve(v) for k, v in stage_dirs.items()}
    metas = {k: json.loads((folder / "config.json").read_text()).get("metadata", {}) for k, folder in stages.items()}
    recorded = metas.get("decoder", {}).get("autoencoder")
    if recorded is not None and "autoencoder" not in stages:
        try:
            stages["autoencoder"] = resolve(recorded)
        except (FileNotFoundError, ValueError):
            raise FileNotFoundError(f"the decoder at {stage_dirs['decoder']} samples the latents of autoencoder "
                                    f"{recorded!r} (its config.json metadata), which is not found from here; pass "
                                    "that checkpoint folder as stage 'autoencoder' (train assemble --autoencoder "
                                    "PATH)") from None
    latent = "autoencoder" in stages
    info = {}
    for k in stage_dirs:
        if k not in _PREDICTION:  # not a diffusion stage (the autoencoder)
            continue
        info[k] = {"prediction": metas[k].get("prediction", _PREDICTION[k]),
                   "clip_x0": None if k == "prior" or (k == "decoder" and latent) else 1.0}
    metadata = {"clip": "clip" if copy_clip else str(clip), "name": name, "stage_info": info}
    if sampling is not None:
        metadata["sampling"] = sampling.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        if dtype is not None:  # re-save each stage (card and metadata kept) with its weights in dtype
            for k, folder in list(stages.items()):
                _, _, doc = read_checkpoint_config(folder)
                card_path = folder / "README.md"
                stages[k] = save_checkpoint(Path(tmp) / k, load_checkpoint(folder), metadata=doc.get("metadata"),
                                            dtype=dtype,
                                            card=card_path.read_text(encoding="utf-8") if card_path.is_file()
                                            else None)
        if copy_clip:
            stages["clip"] = Path(clip)
        return save_pipeline(out, stages, card=card, metadata=metadata, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m unclip_core.train.diffusion STAGE --recipe shapes --out DIR [--steps N] [--autoencoder PATH]
    [--world N] [--fresh]. --autoencoder makes the decoder a latent decoder (fit_to_autoencoder)."""
    p = argparse.ArgumentParser(prog="python -m unclip_core.train.diffusion", description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--recipe", default="shapes", choices=sorted(RECIPES))
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument("--clip", default=None)
    p.add_argument("--autoencoder", default=None, metavar="PATH",
                   help="decoder: an autoencoder checkpoint (folder or bundled NAME/STAGE); the decoder then samples "
                        "its latents (a latent decoder)")
    p.add_argument("--world", type=int, default=None, help="ShapesWorld version of the data (default: the CLIP's)")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="warm start: the weights of a checkpoint folder or bundled NAME/STAGE of the same network")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest when other jobs share the cores)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = {k: v for k, v in {"n_steps": a.steps, "batch_size": a.batch_size, "precision": a.precision,
                                   "clip": a.clip, "autoencoder": a.autoencoder, "world": a.world,
                                   "init_from": a.init_from}.items()
                 if v is not None}
    try:
        config = fit_to_autoencoder(recipe(a.recipe, a.stage, **overrides))
    except (ValueError, FileNotFoundError) as e:  # a user's mistake (e.g. --autoencoder on a prior): one line
        p.exit(2, f"{p.prog}: error: {e}\n")
    folder = train_stage(config, a.out, resume=not a.fresh)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"exported {folder}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
