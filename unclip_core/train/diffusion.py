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
from typing import TYPE_CHECKING, Any, Callable

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
from unclip_core.train.common import (PRECISIONS, EMA, CsvLog, cosine_lr, load_state, network_config, resolve_precision,
                                      save_state, set_lr, write_text_atomic)
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
    log_every: int = 10
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        check_choice("stage", self.stage, STAGES)
        check_choice("precision", self.precision, PRECISIONS)
        if self.prediction is None:
            object.__setattr__(self, "prediction", _PREDICTION[self.stage])
        check_choice("prediction", self.prediction, ("eps", "x0", "v"))
        for name in ("n_steps", "batch_size", "log_every", "checkpoint_every"):
            check_positive_int(name, getattr(self, name))
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
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # ShapesWorld v1 (the family bundled until the v2 one replaced it): its prior and decoder need a v1 CLIP, which
    # is no longer bundled; train one with `train clip --recipe shapes` and pass it with --clip
    "shapes": {
        "prior": dict(model=dict(clip_dim=128, text_width=128, width=256, n_layers=6, n_heads=4, n_text_tokens=24,
                                 clip_scale=6.1, dropout=0.0),
                      n_steps=1000, batch_size=128, lr=3e-4, p_drop_text=0.1, world=1),
        # clip_map_channels (a spatial z_i map at the input, see decoder.py) and high_t_fraction (half of each batch
        # from the top fifth of the schedule, where the scene is drawn from z_i): without them the v0 decoder barely
        # used z_i (x0-MSE at t=990: 0.0363 with the true z_i, 0.0379 with another image's); docs/training.md
        # conv up/downsampling instead of ResBlock up/down: 2.1 vs 3.1 CPU s/step at batch 32 (bf16, 1 thread)
        "decoder": dict(model=dict(image_size=64, model_channels=32, channel_mult=(1, 2, 4, 4), n_res_blocks=1,
                                   attention_resolutions=(16, 8), head_channels=32, clip_dim=128, n_clip_tokens=4,
                                   text_width=0, learn_sigma=True, dropout=0.0, norm_groups=16,
                                   resblock_updown=False, clip_map_channels=4, clip_map_size=16),
                        prediction="v", n_steps=3000, batch_size=32, lr=2e-4, high_t_fraction=0.5, world=1),
        "upsampler1": dict(model=dict(low_res=64, out_res=256, model_channels=32, channel_mult=(1, 2, 2),
                                      n_res_blocks=1, norm_groups=16),
                           prediction="v", n_steps=1000, batch_size=16, lr=3e-4, crop=64),
        "upsampler2": dict(model=dict(low_res=256, out_res=1024, model_channels=16, channel_mult=(1, 2, 2),
                                      n_res_blocks=1, norm_groups=8),
                           prediction="v", n_steps=500, batch_size=8, lr=3e-4, crop=128, crop_content_fraction=0.5),
    },
    # ShapesWorld v2 with the bundled v2 shapes-clip: the prior as v1's on the v2 CLIP, and a LATENT decoder (pass
    # --autoencoder: a python -m unclip_core.train.autoencoder export, 64 px -> 16x16x4) that samples 16x16 latents,
    # 8.3 M parameters, ~2 s a step of 32 on a shared CPU core where the 64 px pixel decoder took 4.4 s
    "shapes-v2": {
        "prior": dict(model=dict(clip_dim=128, text_width=128, width=256, n_layers=6, n_heads=4, n_text_tokens=24,
                                 clip_scale=6.1, dropout=0.0),
                      clip="shapes-clip", world=2, n_steps=2000, batch_size=128, lr=3e-4, p_drop_text=0.1),
        "decoder": dict(model=dict(image_size=16, in_channels=4, model_channels=64, channel_mult=(1, 2, 2),
                                   n_res_blocks=2, attention_resolutions=(8, 4), head_channels=32, clip_dim=128,
                                   n_clip_tokens=4, text_width=0, learn_sigma=False, dropout=0.0, norm_groups=16,
                                   resblock_updown=False, clip_map_channels=4, clip_map_size=16),
                        clip="shapes-clip", world=2, prediction="v", n_steps=8000, batch_size=32, lr=3e-4,
                        high_t_fraction=0.3, object_weights=(0.4, 0.4, 0.2)),
    },
    # the v2 family continued on the slot-trained CLIP (train clip --recipe shapes-v2-slots; pass it with --clip):
    # the v2 prior and decoder warm-started (pass --init-from), at the v2 networks' configs
    "shapes-v2-slots": {
        "prior": dict(model=dict(clip_dim=128, text_width=128, width=256, n_layers=6, n_heads=4, n_text_tokens=24,
                                 clip_scale=6.1, dropout=0.0),
                      world=2, n_steps=700, warmup_steps=50, batch_size=128, lr=2e-4, p_drop_text=0.1),
        "decoder": dict(model=dict(image_size=16, in_channels=4, model_channels=64, channel_mult=(1, 2, 2),
                                   n_res_blocks=2, attention_resolutions=(8, 4), head_channels=32, clip_dim=128,
                                   n_clip_tokens=4, text_width=0, learn_sigma=False, dropout=0.0, norm_groups=16,
                                   resblock_updown=False, clip_map_channels=4, clip_map_size=16),
                        world=2, prediction="v", n_steps=3000, warmup_steps=100, batch_size=32, lr=2e-4,
                        high_t_fraction=0.3, object_weights=(0.3, 0.5, 0.2)),
    },
    # for tests: seconds per step
    "tiny": {
        "prior": dict(model=dict(clip_dim=64, text_width=128, width=32, n_layers=1, n_heads=2, n_text_tokens=24,
                                 clip_scale=8.0), n_steps=4, batch_size=4, warmup_steps=1),
        "decoder": dict(model=dict(image_size=32, model_channels=16, channel_mult=(1, 2), n_res_blocks=1,
                                   attention_resolutions=(16,), head_channels=8, clip_dim=64, norm_groups=8,
                                   dropout=0.0), n_steps=4, batch_size=4, warmup_steps=1),
        "upsampler1": dict(model=dict(low_res=32, out_res=128, model_channels=8, channel_mult=(1, 2),
                                      n_res_blocks=1, norm_groups=8),
                           n_steps=4, batch_size=2, crop=32, warmup_steps=1),
        "upsampler2": dict(model=dict(low_res=128, out_res=512, model_channels=8, channel_mult=(1, 2),
                                      n_res_blocks=1, norm_groups=8),
                           n_steps=4, batch_size=2, crop=32, warmup_steps=1),
    },
}


# the sampling settings a recipe's family is evaluated with (its card's numbers), written into the pipeline.json of
# `train assemble`: 25 prior and 25 decoder DDIM steps (the shapes-unclip evaluation's)
RECIPE_SAMPLING: dict[str, dict[str, Any]] = {"shapes-v2": {"prior_steps": 25, "decoder_steps": 25},
                                              "shapes-v2-slots": {"prior_steps": 25, "decoder_steps": 25}}


def recipe(name: str, stage: str, **overrides: Any) -> DiffusionTrainConfig:
    """The training config of `stage` in recipe `name` ("shapes" or "tiny"), with field overrides."""
    check_choice("recipe", name, sorted(RECIPES))
    check_choice("stage", stage, STAGES)
    return DiffusionTrainConfig(stage=stage, **{**RECIPES[name][stage], **overrides})


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
    """Builds a stage's training batch (inputs to the network + x0) deterministically from (seed, step, rank)."""

    def __init__(self, config: DiffusionTrainConfig, model_config: Any, clip: "ClipEncoder | None",
                 rank: int, world: int, autoencoder: Autoencoder | None = None) -> None:
        self.c, self.mc, self.clip, self.autoencoder = config, model_config, clip, autoencoder
        self.rank, self.world = rank, world
        self.data = ShapesConfig(config.seed, 64, "train", config.n_objects, config.object_weights,
                                 world=data_world(config, clip))

    def indices(self, step: int) -> list[int]:
        B = self.c.batch_size
        start = (step * self.world + self.rank) * B
        return list(range(start, start + B))

    def __call__(self, step: int, g: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        """-> (x0, conditioning kwargs for the network)."""
        c, mc = self.c, self.mc
        idx = self.indices(step)
        if c.stage in ("prior", "decoder"):
            size = self.clip.image_size
            if c.stage == "prior":  # a PriorConfig has no image size
                sizes: tuple[int, ...] = (size,)
            else:
                sizes = (size, mc.image_size if self.autoencoder is None else self.autoencoder.config.image_size)
            images, captions = _render_batch(self.data, idx, sizes)
            z_i = self.clip.encode_image(images[0])
            if c.stage == "prior":
                z_t = self.clip.encode_text(captions)
                tokens, mask = self.clip.text_tokens(captions)
                return z_i, {"z_t": z_t, "text_tokens": tokens[:, :mc.n_text_tokens],
                             "text_mask": mask[:, :mc.n_text_tokens]}
            cond: dict[str, Any] = {"z_i": z_i}
            if mc.text_width:
                cond["text_tokens"], cond["text_mask"] = self.clip.text_tokens(captions)
            if self.autoencoder is not None:
                with torch.no_grad():
                    return self.autoencoder.encode(images[1]), cond
            return images[1], cond
        (lo, hi), _ = _render_batch(self.data, idx, (mc.low_res, mc.out_res))
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


def train_stage(config: DiffusionTrainConfig, out_dir: str | os.PathLike, resume: bool = True,
                progress: bool = True, clip: "ClipEncoder | None" = None,
                callback: Callable[[int, dict[str, float]], None] | None = None,
                on_end: Callable[[torch.nn.Module], None] | None = None) -> Path:
    """Train one stage; checkpoint to out_dir/state.pt every `checkpoint_every` steps; export out_dir/model.

    resume=True continues from out_dir/state.pt (the same config is required). callback(step, metrics) runs
    after each step; an exception there stops training with the last checkpoint intact; on_end(model) sees the
    trained (non-EMA) weights of this rank. Returns the exported
    checkpoint folder (config.json + model.safetensors with the EMA weights).
    """
    if not isinstance(config, DiffusionTrainConfig):
        raise TypeError(f"config must be a DiffusionTrainConfig (e.g. recipe('shapes', 'decoder')), "
                        f"got {type(config).__name__}")
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
    if needs_clip and config.world is not None and clip.world is not None and clip.world != config.world:
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
        warm_start(model, config.init_from)
    ema = EMA(model, config.ema_decay)
    step, elapsed = 0, 0.0
    if resume and state_path.is_file():
        state = load_state(state_path)
        # n_steps may change on resume (lengthen or shorten a run): the cosine LR schedule is recomputed for
        # the new total from the current step on; every other field must match
        diff = sorted(k for k in state["config"] if k != "n_steps" and state["config"][k] != config.to_dict().get(k))
        if diff:
            raise ValueError(f"out_dir={str(out)!r} holds a run with another config (differs in {diff}); pass "
                             "the same config, resume=False to start over, or a new out_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step, elapsed = int(state["step"]), float(state["seconds"])
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    log = CsvLog(out / "loss.csv", LOG_FIELDS, resume_step=step if step else None) if rank == 0 else None
    if rank == 0:
        write_text_atomic(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    schedule = cosine_schedule(1000)
    batcher = _Batcher(config, mc, clip, rank, world, autoencoder)

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
        # every random draw of a step depends on (seed, step, rank) only, so a resumed run continues exactly
        g = torch.Generator().manual_seed(hash((config.seed, step, rank)) % (2**63))
        lr = cosine_lr(step, config.lr, config.n_steps, config.warmup_steps, 0.1)
        set_lr(optimizer, lr)
        with torch.no_grad():
            x0, cond = batcher(step, g)
            x0, cond = _prepare(config.stage, model, x0, cond, config, g)
            t = sample_timesteps(x0.shape[0], schedule.T, g, config.high_t_fraction, config.high_t_from)
            eps = torch.randn(x0.shape, generator=g)
            x_t = schedule.q_sample(x0, t, eps).float()
        with autocast:
            model_out = net(x_t, t, **cond)
        loss = diffusion_loss(model_out.float(), x0, x_t, t, eps, config.prediction,
                              learn_sigma=getattr(mc, "learn_sigma", False), schedule=schedule,
                              min_snr_gamma=config.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        ema.update(model)
        step += 1
        elapsed += time.perf_counter() - t0
        metrics = {"loss": loss.item(), "lr": lr, "seconds": elapsed}
        if log is not None and (step % config.log_every == 0 or step == config.n_steps):
            log.write(step=step, **metrics)
        if step % config.checkpoint_every == 0 or step == config.n_steps:
            checkpoint()
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if callback is not None:
            callback(step, metrics)
    bar.close()
    if on_end is not None:
        on_end(model)
    if rank != 0:
        return out / "model"
    export = replace_weights(model_cls(mc), ema)
    card = stage_card(config, elapsed, step, sum(p.numel() for p in model.parameters()))
    return save_checkpoint(out / "model", export, card=card,
                           metadata={"stage": config.stage, "prediction": config.prediction,
                                     "autoencoder": config.autoencoder,
                                     "train": config.to_dict(), "steps": step, "seconds": round(elapsed, 1)},
                           overwrite=True)


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


def warm_start(model: torch.nn.Module, spec: str) -> None:
    """Load the weights of checkpoint `spec` (a folder or bundled "NAME/STAGE") into `model`, which must have
    the same class and config: a run that continues an exported stage with a new optimiser and schedule. A
    decoder may also grow a spatial z_i map (`DecoderConfig.GROWABLE`), which starts at zero influence."""
    from unclip_core.checkpoint import resolve
    folder = resolve(spec)
    cls, cfg, _ = read_checkpoint_config(folder)
    if cls is type(model) and cfg == model.config:
        model.load_state_dict(load_checkpoint(folder).state_dict())  # copied into this model's float32 weights
        return
    if cls is type(model) and hasattr(model, "load_grown"):  # e.g. a decoder that gains a clip map
        try:
            model.load_grown(load_checkpoint(folder).state_dict(), cfg)  # checks which config fields differ
        except ValueError as e:
            raise ValueError(f"init_from={spec!r}: {e} (compare {folder}/config.json with the recipe's model "
                             "settings)") from None
        return
    raise ValueError(f"init_from={spec!r} holds a {cls.__name__} with another config than this run's "
                     f"{type(model).__name__}; warm starts need the same network (compare {folder}/config.json "
                     "with the recipe's model settings)")


def replace_weights(model: torch.nn.Module, ema: EMA) -> torch.nn.Module:
    """`model` with the EMA weights, in eval mode."""
    ema.copy_to(model)
    return model.eval()


def stage_card(config: DiffusionTrainConfig, seconds: float, steps: int, n_params: int) -> str:
    """A short model card for one trained stage (quality numbers are added by the evaluation)."""
    return (f"# ShapesWorld unCLIP {config.stage}\n\n"
            f"- parameters: {n_params:,}\n- predicts: {config.prediction}\n"
            f"- data: ShapesWorld v{data_world(config)}\n"
            f"- trained: {steps} steps x batch {config.batch_size}, {seconds / 60:.1f} min on CPU "
            f"({resolve_precision(config.precision)}), seed {config.seed}\n"
            + (f"- warm start: the weights of `{config.init_from}` (its own card tells how they were trained)\n"
               if config.init_from else "")
            + (f"- latent decoder: samples the latents of the autoencoder `{config.autoencoder}`\n"
               if config.autoencoder else "")
            + f"- recipe: `unclip-explorer train {config.stage} --recipe shapes`\n\n"
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
