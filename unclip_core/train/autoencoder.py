"""Train the KL autoencoder of a latent decoder on ShapesWorld renders or your images (Rombach et al. 2022, sec. 3).

Run: python -m unclip_core.train.autoencoder --out /work/runs/shapes-autoencoder --threads 1
Your images (a folder or webdataset shards, read by explorer.training):
     unclip-explorer train autoencoder --config RUN.toml --data FOLDER
Resumable: rerun the same command after a kill; the final weights are exported to OUT/model with a card.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unclip_core.autoencoder import Autoencoder, AutoencoderConfig
from unclip_core.checkpoint import save_checkpoint
from unclip_core.checks import check_choice, check_positive_int
from unclip_core.data.shapes import CURRENT_WORLD, ShapesConfig, get_world, render_array
from unclip_core.train.common import (PRECISIONS, EMA, CsvLog, check_optimiser_fields, cosine_lr, merge_run_fields,
                                      network_config, resolve_precision, resume_run, save_state, set_lr,
                                      write_text_atomic)
from unclip_core.train.data import DataConfig, TrainingData, describe_data, epoch_indices

STATE_FILE = "state.pt"
LOG_FIELDS = ("step", "loss", "l1", "mse", "kl", "lr", "seconds")


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """A training run of the autoencoder: its network, the data (ShapesWorld renders, or a user's images: `data`,
    images only, no captions or CLIP) and the optimisation."""

    stage: ClassVar[str] = "autoencoder"
    model: dict[str, Any]
    world: int = CURRENT_WORLD
    n_objects: tuple[int, ...] = (1, 2, 3)
    label_prob: float = 0.1
    n_steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    kl_weight: float = 1e-6     # per element, as Stable Diffusion's KL-f8 (a near-deterministic latent)
    ema_decay: float | None = 0.999
    precision: str = "auto"
    seed: int = 0
    n_calibrate: int = 512      # renders whose latent std sets scaling_factor at export
    log_every: int = 10
    checkpoint_every: int = 200
    data: DataConfig = DataConfig()  # a [data] table in a run file; ShapesWorld by default

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            from unclip_core.checkpoint import config_from_dict
            object.__setattr__(self, "data", config_from_dict(DataConfig, self.data,
                                                              fix="Remove them from the run's [data] table"))
        if not isinstance(self.data, DataConfig):
            raise TypeError(f"data must be a DataConfig or a dict of its fields, got {type(self.data).__name__}")
        if self.data.kind == "embeddings":
            raise ValueError("data kind='embeddings' (precomputed CLIP embeddings) trains the prior only; the "
                             "autoencoder needs images: pass an image folder or webdataset shards as data path")
        for name in ("n_steps", "batch_size", "log_every", "checkpoint_every", "n_calibrate"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("warmup_steps", self.warmup_steps, minimum=0)
        check_positive_int("seed", self.seed, minimum=0)
        check_choice("precision", self.precision, PRECISIONS)
        get_world(self.world)
        object.__setattr__(self, "n_objects", tuple(self.n_objects))
        check_optimiser_fields(self, nonnegative=("lr", "kl_weight"))
        self.model_config()
        ShapesConfig(self.seed, self.model_config().image_size, "all", self.n_objects, None, self.label_prob,
                     world=self.world)  # validates the data fields now, not at step 0

    def model_config(self) -> AutoencoderConfig:
        return network_config(AutoencoderConfig, self.model)

    def to_dict(self) -> dict[str, Any]:
        d = json.loads(json.dumps(asdict(self)))
        if self.data.is_shapesworld:  # as before `data` existed: those runs' states still resume
            del d["data"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AutoencoderTrainConfig":
        from unclip_core.checkpoint import config_from_dict
        return config_from_dict(cls, d, fix="Remove them from the run config")


RECIPES: dict[str, dict[str, Any]] = {
    # ShapesWorld v2 at 64 px -> 16 x 16 x 4 latents (f = 4): flat colours need few channels, edges need f <= 4;
    # 16 base channels (0.3 M parameters): ~1 s a step of 32 on a shared CPU core, 2.2x less than 24
    "shapes": dict(model=dict(image_size=64, latent_channels=4, channels=16, channel_mult=(1, 2, 4), n_res_blocks=1,
                              norm_groups=8), world=2, n_steps=2000),
    "tiny": dict(model=dict(image_size=32, latent_channels=2, channels=8, channel_mult=(1, 2), n_res_blocks=1,
                            norm_groups=4), n_steps=4, batch_size=4, warmup_steps=1, n_calibrate=8,
                 checkpoint_every=2, log_every=1),
}


def recipe(name: str, **overrides: Any) -> AutoencoderTrainConfig:
    """A named recipe ("shapes", "tiny") with overrides."""
    check_choice("recipe", name, sorted(RECIPES))
    return AutoencoderTrainConfig(**{**RECIPES[name], **overrides})


def load_run_config(path: str | os.PathLike, *, overrides: Mapping[str, Any] | None = None) -> AutoencoderTrainConfig:
    """An autoencoder run's config from a run file (TOML or JSON), validated by AutoencoderTrainConfig.

    The file holds AutoencoderTrainConfig's fields, its [model] and [data] tables, and optionally `recipe = NAME`
    (start from RECIPES[NAME]), `preset = NAME` (RECIPES[NAME]'s network; [model] keys override it) and
    `stage = "autoencoder"`. `overrides` (command-line flags) replace fields; "model" and "data" merge key by key.
    """
    from dataclasses import fields as dataclass_fields

    from unclip_core.train.diffusion import read_run_file
    fields = dict(read_run_file(path))
    names = {f.name for f in dataclass_fields(AutoencoderTrainConfig)}
    accepted = sorted(names | {"recipe", "preset", "stage"})
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; accepted keys: {accepted}")
    stage = fields.pop("stage", "autoencoder")
    if stage != "autoencoder":
        raise ValueError(f"{path} configures the {stage} stage, not the autoencoder; pass `train {stage}` or "
                         "another run file")
    name, preset = fields.pop("recipe", None), fields.pop("preset", None)
    if name is not None:
        check_choice("recipe", name, sorted(RECIPES))
    if preset is not None:
        check_choice("preset", preset, sorted(RECIPES))
    base: dict[str, Any] = dict(RECIPES[name]) if name is not None else {}
    model = dict(RECIPES[preset]["model"] if preset is not None else base.get("model", {}))
    merge_run_fields(base, model, fields, overrides)
    if not model:
        raise ValueError(f"{path} sets no network: add preset = \"tiny\" (or \"shapes\"), a [model] table, or "
                         "recipe = NAME")
    unknown = sorted(set(base) - names)
    if unknown:
        raise ValueError(f"unknown run fields {unknown}; accepted keys: {accepted}")
    return AutoencoderTrainConfig(**{**base, "model": model})


def _renders(data: ShapesConfig, indices: range) -> torch.Tensor:
    arrays = [render_array(data.scene_caption(i)[0], data.size) for i in indices]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _images(data: ShapesConfig | TrainingData, indices: range | list[int], size: int) -> torch.Tensor:
    """(B, 3, size, size) in [-1, 1]: ShapesWorld renders, or items of a user's data set."""
    if isinstance(data, ShapesConfig):
        return _renders(data, indices)
    return data.batch(list(indices), sizes=(size,)).images[0]


def calibrate(model: Autoencoder, data: ShapesConfig | TrainingData, n: int, start: int = 10**9) -> float:
    """1 / std of the unscaled latent means over n images (items start, start + 1, ...; a user's data set: its
    first min(n, len) items), for scaling_factor."""
    if not isinstance(data, ShapesConfig):
        start, n = 0, min(n, len(data))
    size = model.config.image_size
    with torch.no_grad():
        means = [model.moments(_images(data, range(s, min(s + 64, start + n)), size))[0]
                 for s in range(start, start + n, 64)]
    return float(1.0 / torch.cat(means).float().std().clamp_min(1e-6))


def train_autoencoder(config: AutoencoderTrainConfig, out_dir: str | os.PathLike, resume: bool = True,
                      progress: bool = True, callback: Callable[[int, dict[str, float]], None] | None = None, *,
                      data: TrainingData | None = None) -> Path:
    """Train (resumably) and export the autoencoder to out_dir/model (a checkpoint folder); returns that folder.

    resume=True continues from out_dir/state.pt when it holds a run with the same config. callback(step,
    metrics) runs after every step (an exception there stops training; the last checkpoint stays). data: the
    images of a run whose config.data is not ShapesWorld (explorer.training.open_training_data, or `unclip-explorer
    train autoencoder --config RUN.toml`), drawn in a seeded per-epoch order.
    """
    if not isinstance(config, AutoencoderTrainConfig):
        raise TypeError(f"config must be an AutoencoderTrainConfig (e.g. recipe('shapes')), got {type(config).__name__}")
    if config.data.is_shapesworld and data is not None:
        raise ValueError("data was passed but config.data is ShapesWorld; set config.data to the data's "
                         "DataConfig (kind and path) so the run records what it trained on")
    if not config.data.is_shapesworld and data is None:
        raise ValueError(f"config.data is {config.data.kind} {config.data.path!r}: pass its images as data= "
                         "(explorer.training.open_training_data(config, ...)), or run `unclip-explorer train "
                         "autoencoder --config RUN.toml`, which opens them")
    if data is not None and (len(data) == 0 or not data.has_images):
        raise ValueError(f"the data set {config.data.path!r} holds no images; nothing to train on")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is a file; pass a folder for the training state")
    out.mkdir(parents=True, exist_ok=True)
    mc = config.model_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Autoencoder(mc)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    state_path = out / STATE_FILE
    step, elapsed = (resume_run(state_path, config.to_dict(), model=model, optimizer=optimizer, ema=ema)
                     if resume else (0, 0.0))
    log = CsvLog(out / "loss.csv", LOG_FIELDS, resume_step=step if step else None)
    write_text_atomic(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    source: ShapesConfig | TrainingData = data if data is not None else ShapesConfig(
        config.seed, mc.image_size, "all", config.n_objects, None, config.label_prob, world=config.world)
    epoch: dict[int, np.ndarray] = {}
    use_bf16 = resolve_precision(config.precision) == "bf16"

    def checkpoint() -> None:
        save_state(state_path, {"config": config.to_dict(), "step": step, "seconds": elapsed,
                                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "ema": ema.state_dict() if ema is not None else None})

    model.train()
    bar = tqdm(total=config.n_steps, initial=step, desc="autoencoder", disable=not progress)
    while step < config.n_steps:
        t0 = time.perf_counter()
        lr = cosine_lr(step, config.lr, config.n_steps, config.warmup_steps, config.min_lr_ratio)
        set_lr(optimizer, lr)
        B = config.batch_size
        x = _images(source, range(step * B, (step + 1) * B) if data is None else
                    epoch_indices(step * B, B, len(data), config.seed, epoch), mc.image_size)
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)  # the posterior sample of this step
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            rec, kl = model(x, generator=g)
        rec = rec.float()
        l1, mse = (rec - x).abs().mean(), F.mse_loss(rec, x)
        loss = l1 + mse + config.kl_weight * kl.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        step += 1
        elapsed += time.perf_counter() - t0
        if step % config.log_every == 0 or step == config.n_steps:
            log.write(step=step, loss=loss.item(), l1=l1.item(), mse=mse.item(), kl=kl.item(), lr=lr, seconds=elapsed)
        if step % config.checkpoint_every == 0 or step == config.n_steps:
            checkpoint()
        bar.update(1)
        bar.set_postfix(l1=f"{l1.item():.4f}")
        if callback is not None:
            callback(step, {"loss": loss.item(), "l1": l1.item()})
    bar.close()
    model.eval()
    if ema is not None:
        ema.copy_to(model)
    scale = calibrate(model, source, config.n_calibrate)
    final = Autoencoder(AutoencoderConfig(**{**asdict(mc), "scaling_factor": scale}))
    final.load_state_dict(model.state_dict())
    card = autoencoder_card(config, final.config, elapsed, step, data=data)
    return save_checkpoint(out / "model", final.eval(), card=card, overwrite=True,
                           metadata={"world": config.world if data is None else None,
                                     "train_config": config.to_dict()})


def reconstruction_psnr(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of decode(encode(x)) against x, per image, on [0, 255] after rounding as a PNG would store it."""
    with torch.no_grad():
        rec = model.decode(model.encode(images)).clamp(-1, 1)
    to8 = lambda t: ((t + 1) * 127.5).round()  # noqa: E731
    mse = (to8(rec) - to8(images)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def autoencoder_card(config: AutoencoderTrainConfig, mc: AutoencoderConfig, seconds: float, steps: int, *,
                     data: TrainingData | None = None) -> str:
    """A model card for the trained autoencoder (quality numbers are added by its evaluation)."""
    what = (f"ShapesWorld v{config.world}, split all, {config.n_objects} objects, labels p {config.label_prob}"
            if config.data.is_shapesworld else describe_data(config.data, data))
    return (f"# {'ShapesWorld ' if config.data.is_shapesworld else ''}autoencoder (latent decoder stage)\n\n"
            f"- images {mc.image_size} px -> latents {mc.latent_channels} x {mc.latent_size} x {mc.latent_size} "
            f"(f = {mc.factor}); scaling_factor {mc.scaling_factor:.4f} (unit-variance latents)\n"
            f"- data: {what}\n"
            f"- loss: L1 + MSE + {config.kl_weight:g} x KL; AdamW lr {config.lr:g}, batch {config.batch_size}\n"
            f"- trained: {steps} steps, {seconds / 60:.1f} min on CPU ({resolve_precision(config.precision)}), "
            f"seed {config.seed}\n"
            + ("- recipe: `python -m unclip_core.train.autoencoder --recipe shapes`\n" if config.data.is_shapesworld
               else "- run: `unclip-explorer train autoencoder --config RUN.toml`\n"))


def main(argv: list[str] | None = None) -> None:
    """CLI: train a recipe (resumable), export OUT/model, print the reconstruction PSNR on fresh renders."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/work/runs/shapes-autoencoder", help="training state folder")
    p.add_argument("--recipe", default="shapes", choices=sorted(RECIPES))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(check_positive_int("threads", a.threads))
    config = recipe(a.recipe, **({"n_steps": a.steps} if a.steps is not None else {}))
    folder = train_autoencoder(config, a.out, resume=not a.fresh, progress=not a.no_progress)
    from unclip_core.checkpoint import load_checkpoint
    model = load_checkpoint(folder)
    data = ShapesConfig(12_345, model.config.image_size, "all", world=config.world)
    psnr = reconstruction_psnr(model, _renders(data, range(256)))
    print(f"exported {folder}; reconstruction PSNR on 256 fresh renders: mean {psnr.mean():.2f} dB, "
          f"min {psnr.min():.2f} dB")


if __name__ == "__main__":
    main()
