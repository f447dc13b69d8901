"""Trainer of the ShapesWorld read-out's shape classifier: coverage crops of corrupted renders -> a world's shapes.

Crops come from the read-out's own segmentation (unclip_core.data.readout), so training and reading see the
same inputs. Renders are corrupted with gaussian blur, gaussian noise and per-channel colour jitter, carry
printed labels half the time, and are rotated anywhere 30% of the time (generated images need not keep the
+-20 degree range). The scenes are of the ShapesWorld version in `model.world`. Single-threaded CPU; the bundled
v1 read-out ("shapes-readout-v1") took about 2 minutes (53 s data, 75 s training).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from unclip_core.checks import check_positive_int
from unclip_core.data.readout import (MIN_AREA, ReadoutConfig, ShapeClassifier, _crops, _register, _segment,
                                      load_readout, readout_name, to_working)
from unclip_core.data.shapes_render import check_size, render_array
from unclip_core.data.shapes_scene import CURRENT_WORLD, Scene, World, get_world, object_xy, sample_scene


@dataclass(frozen=True)
class ReadoutTrainConfig:
    """Data and optimisation of the shape classifier; item i of the crop set depends only on (seed, i)."""
    seed: int = 0
    n_scenes: int = 12000
    sizes: tuple[int, ...] = (32, 32, 40, 48, 64, 64, 96, 128, 256)   # render sizes, drawn uniformly
    label_prob: float = 0.5
    p_corrupt: float = 0.7          # probability that a render is blurred / noised / colour-jittered
    max_blur: float = 1.5           # gaussian blur sigma in pixels of the render, ~ U[0, max_blur]
    max_noise: float = 0.08         # noise std in [0, 1] intensity units, ~ U[0, max_noise]
    colour_jitter: float = 0.1      # per-channel gain in 1 +- jitter, offset in +- jitter / 3
    p_any_angle: float = 0.3        # probability that objects are rotated anywhere, not within +-MAX_ANGLE
    scale_jitter: float = 0.25      # crop window radius x U[1 - s, 1 + s]; covers v2's other size (x0.81, x1.24)
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    model: ReadoutConfig = ReadoutConfig(world=CURRENT_WORLD)   # model.world: the ShapesWorld version to train on

    def __post_init__(self) -> None:
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_int("n_scenes", self.n_scenes)
        object.__setattr__(self, "sizes", tuple(self.sizes))
        if not self.sizes:
            raise ValueError("sizes is empty; pass render sizes in 32..1024, e.g. (32, 64, 128)")
        for s in self.sizes:
            check_size(s)
        for name in ("label_prob", "p_corrupt", "p_any_angle"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        for name in ("max_blur", "max_noise", "colour_jitter"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= float(self.scale_jitter) < 0.5:
            raise ValueError(f"scale_jitter must be in [0, 0.5), got {self.scale_jitter}")
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ReadoutConfig(**self.model))
        if not isinstance(self.model, ReadoutConfig):
            raise TypeError(f"model must be a ReadoutConfig, got {type(self.model).__name__}")


def corrupt(x: np.ndarray, blur_sigma: float = 0.0, noise_std: float = 0.0,
            rng: np.random.Generator | int | None = None, gain: np.ndarray | None = None,
            offset: np.ndarray | None = None) -> np.ndarray:
    """Blur (gaussian, sigma in pixels), colour jitter (x * gain + offset) and gaussian noise of an (H, W, 3) image.

    x: float in [0, 1] or uint8; returns float (H, W, 3) in [0, 1]. noise_std is in [0, 1] intensity units
    (0.05 = 12.75 / 255). Noise draws from rng (a Generator or int seed); rng is needed when noise_std > 0.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"x must be an (H, W, 3) numpy image, got {type(x).__name__} "
                         f"{getattr(x, 'shape', '')}")
    out = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if blur_sigma < 0 or noise_std < 0:
        raise ValueError(f"blur_sigma and noise_std must be >= 0, got {blur_sigma}, {noise_std}")
    if blur_sigma > 0:
        out = ndimage.gaussian_filter(out, sigma=(blur_sigma, blur_sigma, 0), mode="nearest", truncate=3.0)
    if gain is not None:
        out = out * np.asarray(gain, dtype=np.float64)
    if offset is not None:
        out = out + np.asarray(offset, dtype=np.float64)
    if noise_std > 0:
        if rng is None:
            raise ValueError("noise_std > 0 needs rng (a numpy Generator or an int seed) for the noise")
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        out = out + rng.normal(0.0, noise_std, size=out.shape)
    return out.clip(0.0, 1.0)


def _scene_crops(config: ReadoutTrainConfig, i: int) -> tuple[list[torch.Tensor], list[float], list[int]]:
    rng = np.random.default_rng([config.seed, i])
    world = get_world(config.model.world)
    scene = sample_scene(rng, split="all", label_prob=config.label_prob, world=world)
    if rng.random() < config.p_any_angle:
        scene = Scene(tuple(replace(o, angle=float(rng.uniform(-180, 180))) for o in scene.objects), scene.relation,
                      scene.world)
    size = int(config.sizes[rng.integers(len(config.sizes))])
    x = render_array(scene, size)
    if rng.random() < config.p_corrupt:
        j = config.colour_jitter
        x = corrupt(x, float(rng.uniform(0, config.max_blur)), float(rng.uniform(0, config.max_noise)), rng,
                    gain=rng.uniform(1 - j, 1 + j, 3), offset=rng.uniform(-j / 3, j / 3, 3))
    else:
        x = x.astype(np.float64) / 255.0
    blobs = _segment(to_working(x), MIN_AREA, world.version)
    crops, log_r, labels = [], [], []
    for o in scene.objects:
        ox, oy = object_xy(o, world)
        near = [b for b in blobs if math.hypot(b.xy[0] - ox, b.xy[1] - oy) < 0.06]
        if len(near) != 1:
            continue
        r = world.radii[o.size] * float(rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter))
        c, lr = _crops(near, [r], config.model)
        crops.append(c[0])
        log_r.append(float(lr[0]))
        labels.append(world.shapes.index(o.shape))
    return crops, log_r, labels


def shape_crops(config: ReadoutTrainConfig, start: int = 0,
                n_scenes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops (M, 1, crop, crop), log radii (M,) and shape labels (M,) of scenes start..start+n_scenes-1."""
    n_scenes = config.n_scenes if n_scenes is None else check_positive_int("n_scenes", n_scenes)
    crops, log_r, labels = [], [], []
    for i in range(start, start + n_scenes):
        c, lr, lab = _scene_crops(config, i)
        crops += c
        log_r += lr
        labels += lab
    return torch.stack(crops), torch.tensor(log_r), torch.tensor(labels)


def train_readout(config: ReadoutTrainConfig, out_dir: str | Path | None = None, log: bool = True,
                  overwrite: bool = False) -> ShapeClassifier:
    """Train the shape classifier single-threaded (Adam, cosine LR); write a checkpoint folder when out_dir is given."""
    if not isinstance(config, ReadoutTrainConfig):
        raise TypeError(f"config must be a ReadoutTrainConfig, got {type(config).__name__}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the CPU is shared with other training runs
    try:
        t0 = time.time()
        crops, log_r, labels = shape_crops(config)
        t_data = time.time() - t0
        g = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng():
            torch.random.manual_seed(config.seed)
            model = ShapeClassifier(config.model)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        n = len(labels)
        steps_per_epoch = math.ceil(n / config.batch_size)
        total = config.epochs * steps_per_epoch
        step = 0
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=g)
            model.train()
            loss_sum, correct = 0.0, 0
            for k in range(steps_per_epoch):
                idx = perm[k * config.batch_size:(k + 1) * config.batch_size]
                lr = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                for group in opt.param_groups:
                    group["lr"] = lr
                logits = model(crops[idx], log_r[idx])
                loss = F.cross_entropy(logits, labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == labels[idx]).sum())
            if log:
                print(f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / n:.4f} train acc {correct / n:.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
        model.eval()
        if out_dir is not None:
            from unclip_core.checkpoint import save_checkpoint
            _register()
            meta = {"train_config": _jsonable(asdict(config)), "n_crops": n, "data_seconds": round(t_data, 1),
                    "total_seconds": round(time.time() - t0, 1)}
            save_checkpoint(out_dir, model, card=_card(config, n), metadata=meta, overwrite=overwrite)
        return model
    finally:
        torch.set_num_threads(threads)


def _jsonable(d: object) -> object:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    return d


def _card(config: ReadoutTrainConfig, n_crops: int) -> str:
    w = get_world(config.model.world)
    return f"""# {readout_name(w)}: ShapesWorld v{w.version} shape classifier

The shape head of the ShapesWorld v{w.version} attribute read-out (`unclip_core.data.readout`). Input: the coverage map
of one segmented object (colour-agnostic, values in [0, 1]) sampled on a {config.model.crop}x{config.model.crop}
grid spanning +-{config.model.window} circumradii around its centroid, plus log(circumradius in pixels).
Output: logits over {list(w.shapes)}. Colour, size and position are read without learned weights.

- Training data: {config.n_scenes} ShapesWorld v{w.version} scenes (split "all", seed {config.seed}), {n_crops} object crops;
  render sizes {list(config.sizes)} (above 128 px area-downsampled to <= 128 as at read time); labels printed
  with probability {config.label_prob}; with probability {config.p_corrupt} gaussian blur sigma ~ U[0, {config.max_blur}] px,
  noise std ~ U[0, {config.max_noise}] and colour jitter {config.colour_jitter}; any rotation with probability
  {config.p_any_angle}; window scale jitter +-{config.scale_jitter}.
- Optimiser: Adam lr {config.lr}, cosine decay, batch {config.batch_size}, {config.epochs} epochs, one CPU thread.
- Trainer: `unclip_core.train.readout.train_readout(ReadoutTrainConfig(...), out_dir)`.
- Accuracy: see docs/readout.md (fresh seeds, 32 / 64 / 128 / 512 px, clean and degraded).
- Limits: trained on ShapesWorld renders only; generated images far from them (other backgrounds, textures,
  overlapping objects) read with low confidence or wrongly.
"""


def evaluate_readout(model: str | Path | ShapeClassifier | None = None, *, world: int | World | None = None,
                     n_scenes: int = 1000, sizes: tuple[int, ...] = (32, 64, 128), seed: int = 20250101,
                     blur_sigma: float = 0.0, noise_std: float = 0.0, label_prob: float = 0.0,
                     split: str = "all") -> pd.DataFrame:
    """Accuracy of the read-out on fresh renders: one row per size (summarize_scores metrics as columns) + images/s.

    Scene i is sample_scene(default_rng([seed, i]), world=world) with 1-3 objects; the same scenes at every size.
    world None: the model's (CURRENT_WORLD for model=None). Degraded renders use corrupt(blur_sigma in pixels of
    that size, noise_std in [0, 1] units, rng [seed, i, size]).
    """
    from unclip_core.data.readout import score_attributes, summarize_scores
    check_positive_int("n_scenes", n_scenes)
    net = load_readout(model, world=world)
    w = get_world(net.config.world)
    scenes = [sample_scene(np.random.default_rng([seed, i]), split=split, label_prob=label_prob, world=w)
              for i in range(n_scenes)]
    rows = []
    for size in sizes:
        size = check_size(size)
        images = []
        for i, s in enumerate(scenes):
            x = render_array(s, size)
            if blur_sigma > 0 or noise_std > 0:
                x = (corrupt(x, blur_sigma, noise_std, np.random.default_rng([seed, i, size])) * 255).round()
                x = x.astype(np.uint8)
            images.append(x)
        t0 = time.perf_counter()
        df = score_attributes(images, scenes, model=net)
        dt = time.perf_counter() - t0
        summary = summarize_scores(df).set_index("metric")["accuracy"].to_dict()
        rows.append({"world": w.version, "resolution": size, "blur_sigma": blur_sigma, "noise_std": noise_std,
                     "label_prob": label_prob, **summary, "n_scenes": n_scenes, "n_objects": len(df),
                     "images_per_s": n_scenes / dt})
    return pd.DataFrame(rows)


__all__ = ["ReadoutTrainConfig", "corrupt", "shape_crops", "train_readout", "evaluate_readout"]
