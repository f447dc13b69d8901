"""Train the bundled small CLIP on ShapesWorld (CLIP's contrastive objective, Radford et al. 2021) and evaluate retrieval.

Run: python -m unclip_core.train.clip --out /work/runs/shapes-clip --export unclip_core/bundled/shapes-clip
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from safetensors.torch import save_file
from tqdm.auto import tqdm

from unclip_core.atomic import atomic_dir
from unclip_core.checks import check_choice, check_positive_int
from unclip_core.clip import ClipEncoder
from unclip_core.data.shapes import ShapesConfig, caption, render_array, sample_scene, vocabulary
from unclip_core.data.shapes_scene import CURRENT_WORLD, COLOURS, POSITIONS, SIZES, Scene, get_world, object_xy
from unclip_core.tokenizer import WordTokenizer
from unclip_core.atomic import publish_permissions, write_json
from unclip_core.train.common import (PRECISIONS, EMA, CsvLog, check_optimiser_fields, cosine_lr, load_state,
                                      resolve_precision, resume_run, save_state, set_lr,
                                      write_text_atomic)

STATE_FILE = "state.pt"
LOG_FIELDS = ("step", "loss", "batch_acc", "logit_scale", "lr", "seconds")


@dataclass(frozen=True)
class ClipTrainConfig:
    """Model and optimisation settings of a small CLIP trained on ShapesWorld 64px images."""
    # model (an open_clip custom config; the text tower uses the word-level tokenizer)
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 16  # 4x4 patches; the v2 recipe uses 8 (1.8x the step time) so outlines reach the tower
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 32
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    context_length: int = 24  # captions have <= 20 tokens ([SOT], [EOT] included) without labels
    # optimisation: AdamW, warm-up + cosine LR, learned temperature clamped at max_logit_scale
    batch_size: int = 128
    n_steps: int = 450
    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-6
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    precision: str = "auto"  # bf16 autocast where the CPU has native bf16, else fp32
    ema_decay: float | None = None
    # data: ShapesWorld split="train", item i of step s is i = s * batch_size + k
    seed: int = 0
    n_objects: tuple[int, ...] = (1, 2, 3)
    object_weights: tuple[float, ...] | None = None
    world: int = CURRENT_WORLD  # ShapesWorld version
    # hard negatives: this share of each batch comes as minimal pairs, a scene and its twin with one attribute
    # of one object changed (same pose), so the loss must tell exactly that attribute apart
    twin_fraction: float = 0.0
    twin_attributes: tuple[str, ...] = ("shape", "size", "colour")
    twin_weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    # auxiliary slot read-out: linear heads on z_i name the shape, colour and size of the object at each of the
    # five positions (or "none"), weighted by slot_weight beside the contrastive loss (0: off). Contrastive
    # training alone left two-object z_i reading the first object's shape / size at 0.94 / 0.87 (linear probes):
    # a batch rarely holds a negative that differs in one object only. The heads are not part of the export.
    slot_weight: float = 0.0
    # warm start: the weights of a CLIP folder of the same architecture (a bundled name or a path), loaded at step 0
    init_from: str | None = None
    # bookkeeping
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("embed_dim", "image_size", "patch_size", "vision_width", "vision_layers", "vision_head_width",
                     "text_width", "text_layers", "text_heads", "batch_size", "n_steps", "checkpoint_every",
                     "log_every"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("context_length", self.context_length, minimum=3)
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_int("warmup_steps", self.warmup_steps, minimum=0)
        check_choice("precision", self.precision, PRECISIONS)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.vision_width % self.vision_head_width:
            raise ValueError(f"vision_width={self.vision_width} is not divisible by "
                             f"vision_head_width={self.vision_head_width}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width={self.text_width} is not divisible by text_heads={self.text_heads}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for a contrastive loss, got {self.batch_size}")
        check_optimiser_fields(self, nonnegative=("lr", "weight_decay", "init_temperature", "max_logit_scale"))
        object.__setattr__(self, "n_objects", tuple(self.n_objects))
        if self.object_weights is not None:
            object.__setattr__(self, "object_weights", tuple(self.object_weights))
        ShapesConfig(self.seed, self.image_size, "train", self.n_objects, self.object_weights,
                     world=self.world)  # validates them
        if not (math.isfinite(float(self.slot_weight)) and float(self.slot_weight) >= 0):
            raise ValueError(f"slot_weight must be a finite weight >= 0 (0 turns the slot read-out off), "
                             f"got {self.slot_weight}")
        if not 0.0 <= float(self.twin_fraction) <= 1.0:
            raise ValueError(f"twin_fraction must be a share of the batch in [0, 1], got {self.twin_fraction}")
        object.__setattr__(self, "twin_attributes", tuple(self.twin_attributes))
        object.__setattr__(self, "twin_weights", tuple(float(w) for w in self.twin_weights))
        for a in self.twin_attributes:
            check_choice("twin_attributes entry", a, TWIN_ATTRIBUTES)
        if len(self.twin_weights) != len(self.twin_attributes) or min(self.twin_weights, default=0) < 0 \
                or sum(self.twin_weights) <= 0:
            raise ValueError(f"twin_weights must be {len(self.twin_attributes)} non-negative numbers (one per "
                             f"twin_attributes entry {self.twin_attributes}) with a positive sum, "
                             f"got {self.twin_weights}")

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> "ClipTrainConfig":
        """A named recipe ("shapes": bundled v1; "shapes-v2": ShapesWorld v2; "tiny": for tests) with overrides."""
        check_choice("recipe", name, RECIPES)
        return cls(**{**RECIPES[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipTrainConfig":
        """Inverse of dataclasses.asdict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ClipTrainConfig fields {sorted(unknown)}; accepted: {sorted(known)}")
        return cls(**d)


TWIN_ATTRIBUTES: tuple[str, ...] = ("shape", "size", "colour")

RECIPES: dict[str, dict[str, Any]] = {
    # the bundled v1 shapes-clip: 1500 steps with one-object scenes oversampled, since only they tell shapes apart
    # when nothing else differs (450 steps with uniform counts gave 64% top-1 on one-object training scenes)
    "shapes": dict(n_steps=1500, warmup_steps=50, object_weights=(0.45, 0.3, 0.25), world=1),
    # shapes-clip-v2 (ShapesWorld v2): patch 8 so 15-px objects span several patches, half of each batch as
    # minimal pairs (shape / size / colour twins); v1 (patch 16, no twins, world 1) put circle and hexagon at
    # z_i cosine 0.9987 and found 84% of one-object training scenes by text
    "shapes-v2": dict(n_steps=3000, warmup_steps=100, patch_size=8, object_weights=(0.5, 0.3, 0.2),
                      twin_fraction=0.5, world=2),
    # the bundled (v2) shapes-clip continued for two-object binding: the v2 decoder read the first object's shape / size of a
    # two-object z_i no better than a linear probe of it (0.94 / 0.87), so two-object scenes and size twins
    # get more of each batch, at a lower learning rate from the shipped weights
    "shapes-v2-binding": dict(n_steps=1000, warmup_steps=50, lr=3e-4, patch_size=8, object_weights=(0.2, 0.6, 0.2),
                              twin_fraction=0.5, twin_weights=(0.45, 0.35, 0.2), world=2, init_from="shapes-clip"),
    # the bundled (v2) shapes-clip continued with the slot read-out: the binding recipe's batches left the two-object
    # probes unchanged (0.930 / 0.875 / 0.976), so z_i is asked directly to carry each position's object
    "shapes-v2-slots": dict(n_steps=1000, warmup_steps=50, lr=3e-4, patch_size=8, object_weights=(0.3, 0.5, 0.2),
                            twin_fraction=0.5, slot_weight=1.0, world=2, init_from="shapes-clip"),
    "tiny": dict(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_head_width=16,
                 text_width=32, text_layers=1, text_heads=2, context_length=24, batch_size=8, n_steps=6,
                 warmup_steps=2, checkpoint_every=2, log_every=1),
}


def open_clip_config(config: ClipTrainConfig, vocab_size: int) -> dict[str, Any]:
    """The open_clip_config.json content ({'model_cfg', 'preprocess_cfg'}) of a model trained with `config`.

    preprocess mean = std = 0.5 maps [0, 1] pixels to [-1, 1], the range ShapesWorld tensors come in.
    """
    model_cfg = {
        "embed_dim": config.embed_dim,
        "vision_cfg": {"image_size": config.image_size, "layers": config.vision_layers, "width": config.vision_width,
                       "patch_size": config.patch_size, "head_width": config.vision_head_width},
        "text_cfg": {"context_length": config.context_length, "vocab_size": vocab_size, "width": config.text_width,
                     "heads": config.text_heads, "layers": config.text_layers, "pool_type": "argmax"},
    }
    preprocess_cfg = {"size": config.image_size, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                      "interpolation": "bicubic", "resize_mode": "shortest"}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def build_model(config: ClipTrainConfig, vocab_size: int, seed: int | None = None) -> CLIP:
    """A freshly initialised open_clip CLIP for `config`; the init is seeded locally (global RNG restored)."""
    cfg = open_clip_config(config, vocab_size)["model_cfg"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed if seed is None else seed)
        model = CLIP(**cfg, init_logit_scale=float(np.log(1.0 / config.init_temperature)))
    return model


def shapes_tokenizer(context_length: int, world: int = CURRENT_WORLD) -> WordTokenizer:
    """Word-level tokenizer over a ShapesWorld version's vocabulary."""
    return WordTokenizer(vocabulary(world), context_length=context_length)


def twin_scene(scene: Scene, rng: np.random.Generator, attribute: str, split: str = "train") -> Scene | None:
    """The scene with `attribute` of one object changed and everything else (pose, jitter) kept; None if no
    change keeps the scene valid (distinct colour-shape pairs, none held out under split="train")."""
    w = get_world(scene.world)
    objs = list(scene.objects)
    for j in rng.permutation(len(objs)):
        o = objs[j]
        values = {"shape": w.shapes, "size": SIZES, "colour": COLOURS}[attribute]
        taken = {(p.colour, p.shape) for k, p in enumerate(objs) if k != j}
        options = []
        for v in values:
            if v == getattr(o, attribute):
                continue
            t = replace(o, **{attribute: v})
            if (t.colour, t.shape) in taken or (split == "train" and (t.colour, t.shape) in w.held_out_pairs):
                continue
            options.append(t)
        if options:
            objs[j] = options[rng.integers(len(options))]
            return Scene(tuple(objs), scene.relation, scene.world)
    return None


def _batch(data: ShapesConfig, step: int, config: "ClipTrainConfig"
           ) -> tuple[torch.Tensor, list[str], list[str], list[Scene]]:
    """Batch `step`: item i = step * B + k; the first twin_fraction of it in (scene, twin) pairs."""
    B = config.batch_size
    n_twin_pairs = int(round(config.twin_fraction * B)) // 2
    p_attr = np.array(config.twin_weights) / sum(config.twin_weights)
    scenes, texts = [], []
    for k, i in enumerate(range(step * B, (step + 1) * B)):
        if k < 2 * n_twin_pairs and k % 2 == 1:
            rng = np.random.default_rng([data.seed, i, 1])  # the twin of item i - 1
            attribute = config.twin_attributes[rng.choice(len(p_attr), p=p_attr)]
            twin = twin_scene(scenes[-1], rng, attribute)
            if twin is not None:
                scenes.append(twin)
                texts.append(caption(twin, rng=rng))
                continue
        scene, text = data.scene_caption(i)
        scenes.append(scene)
        texts.append(text)
    images = [torch.from_numpy(render_array(s, data.size)) for s in scenes]
    keys = [caption(s, style="plain") for s in scenes]  # paraphrases of one scene share this key
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
    return x, texts, keys, scenes


SLOT_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size")


def slot_labels(scenes: list[Scene]) -> torch.Tensor:
    """(B, n_positions, 3) long: per position (POSITIONS order) the object's shape, colour, size index + 1, or 0
    where no object stands (the targets of the slot read-out)."""
    w = get_world(scenes[0].world)
    values = {"shape": w.shapes, "colour": COLOURS, "size": SIZES}
    out = torch.zeros(len(scenes), len(POSITIONS), len(SLOT_ATTRIBUTES), dtype=torch.long)
    for b, scene in enumerate(scenes):
        for o in scene.objects:
            p = POSITIONS.index(o.position)
            for a, attr in enumerate(SLOT_ATTRIBUTES):
                out[b, p, a] = values[attr].index(getattr(o, attr)) + 1
    return out


class SlotHeads(torch.nn.Module):
    """Linear read-out of every position's object (shape, colour, size, or none) from normalised z_i."""

    def __init__(self, embed_dim: int, n_shapes: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.sizes = (n_shapes + 1, len(COLOURS) + 1, len(SIZES) + 1)  # + "none"
        self.linear = torch.nn.Linear(embed_dim, len(POSITIONS) * sum(self.sizes))

    def forward(self, z_i: torch.Tensor) -> list[torch.Tensor]:
        """-> one (B, n_positions, n_classes) logit tensor per attribute."""
        h = self.linear(z_i.float() * math.sqrt(self.embed_dim)).view(len(z_i), len(POSITIONS), -1)
        return list(h.split(self.sizes, dim=-1))

    def loss(self, z_i: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over positions and attributes; -> (loss, share of slots read fully right)."""
        logits = self(z_i)
        loss = sum(F.cross_entropy(l.flatten(0, 1), labels[..., a].flatten()) for a, l in enumerate(logits))
        with torch.no_grad():
            right = torch.stack([l.argmax(-1) == labels[..., a] for a, l in enumerate(logits)], -1).all(-1)
        return loss / len(logits), right.float().mean()


def contrastive_loss(z_i: torch.Tensor, z_t: torch.Tensor, logit_scale: torch.Tensor,
                     keys: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, fig. 3) on normalised z_i, z_t (B, d); -> (loss, top-1 acc).

    With `keys`, pairs whose keys are equal (same scene description) are all positives (uniform soft targets),
    so near-duplicate captions in a batch are not pushed apart.
    """
    logits = logit_scale * z_i.float() @ z_t.float().T  # (B, B): image rows, text columns
    B = logits.shape[0]
    if keys is None:
        target = torch.eye(B, device=logits.device)
    else:
        codes = {k: n for n, k in enumerate(dict.fromkeys(keys))}
        c = torch.tensor([codes[k] for k in keys], device=logits.device)
        target = (c[:, None] == c[None, :]).float()
    target = target / target.sum(1, keepdim=True)  # symmetric, so the same targets serve both directions
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    with torch.no_grad():
        acc = target[torch.arange(B), logits.argmax(1)].gt(0).float().mean()
    return loss, acc


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def export_clip(model: CLIP, tokenizer: WordTokenizer, config: ClipTrainConfig, folder: str | os.PathLike,
                card: str | None = None) -> Path:
    """Write an open_clip model folder (open_clip_config.json, model.safetensors fp32, vocab.json, README.md) atomically."""
    folder = Path(folder)
    with atomic_dir(folder, overwrite=True) as tmp:
        cfg = open_clip_config(config, tokenizer.vocab_size)
        cfg["train_config"] = asdict(config)
        (tmp / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save(tmp / "vocab.json")
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        for f in (tmp, *tmp.iterdir()):
            publish_permissions(f)
    return folder


def _warm_start(model: CLIP, spec: str) -> None:
    """Load the weights of the CLIP folder `spec` into `model` (same architecture and vocabulary required)."""
    source = ClipEncoder.load(spec).model.state_dict()
    own = model.state_dict()
    wrong = sorted(k for k in set(own) | set(source) if k not in own or k not in source
                   or own[k].shape != source[k].shape)
    if wrong:
        raise ValueError(f"init_from={spec!r} does not fit this config's architecture ({len(wrong)} tensors differ, "
                         f"e.g. {wrong[:3]}); pass the patch size, widths and world it was trained with")
    model.load_state_dict(source)


def train_clip(config: ClipTrainConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True,
               callback: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Train a CLIP (Radford et al. 2021) on ShapesWorld; checkpoints to out_dir/state.pt, exports out_dir/model.

    resume=True continues from out_dir/state.pt when present (same config required); resume=False starts over.
    callback(step, metrics) runs after every step (an exception there stops training; the last checkpoint stays).
    Returns the exported model folder (loadable with ClipEncoder.load).
    """
    if not isinstance(config, ClipTrainConfig):
        raise TypeError(f"config must be a ClipTrainConfig (e.g. ClipTrainConfig.recipe('shapes')), "
                        f"got {type(config).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is a file; pass a folder for the training state")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = shapes_tokenizer(config.context_length, config.world)
    model = build_model(config, tokenizer.vocab_size)
    heads = None
    groups = _param_groups(model, config.weight_decay)
    if config.slot_weight > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            heads = SlotHeads(config.embed_dim, len(get_world(config.world).shapes))
        # the heads start from scratch beside a warm-started CLIP: 10x its learning rate
        groups.append({"params": list(heads.parameters()), "weight_decay": 0.0, "lr_scale": 10.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps)
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    state_path = out / STATE_FILE
    step, elapsed = (resume_run(state_path, asdict(config), model=model, optimizer=optimizer, ema=ema)
                     if resume else (0, 0.0))
    if heads is not None and step:
        heads.load_state_dict(load_state(state_path)["slot_heads"])
    if step == 0 and config.init_from is not None:
        _warm_start(model, config.init_from)
        if ema is not None:
            ema = EMA(model, config.ema_decay)
    log_fields = LOG_FIELDS + (("slot_loss", "slot_acc") if heads is not None else ())
    log = CsvLog(out / "loss.csv", log_fields, resume_step=step if step else None)
    write_text_atomic(out / "config.json", json.dumps(asdict(config), indent=2) + "\n")

    data = ShapesConfig(config.seed, config.image_size, "train", config.n_objects, config.object_weights,
                        world=config.world)
    max_log_scale = math.log(config.max_logit_scale)

    def checkpoint() -> None:
        save_state(state_path, {"config": asdict(config), "step": step, "seconds": elapsed,
                                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "ema": ema.state_dict() if ema is not None else None,
                                "slot_heads": heads.state_dict() if heads is not None else None})

    model.train()
    use_bf16 = resolve_precision(config.precision) == "bf16"  # once: "auto" reads /proc/cpuinfo
    bar = tqdm(total=config.n_steps, initial=step, desc="shapes-clip", disable=not progress)
    while step < config.n_steps:
        t0 = time.perf_counter()
        lr = cosine_lr(step, config.lr, config.n_steps, config.warmup_steps, config.min_lr_ratio)
        set_lr(optimizer, lr)
        x, texts, keys, scenes = _batch(data, step, config)
        ids = tokenizer(texts, context_length=config.context_length)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            z_i = model.encode_image(x, normalize=True)
            z_t = model.encode_text(ids, normalize=True)
        loss, acc = contrastive_loss(z_i, z_t, model.logit_scale.exp(), keys)
        slot_metrics = {}
        if heads is not None:
            slot_loss, slot_acc = heads.loss(z_i, slot_labels(scenes))
            slot_metrics = {"slot_loss": slot_loss.item(), "slot_acc": slot_acc.item()}
            loss = loss + config.slot_weight * slot_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        if ema is not None:
            ema.update(model)
        step += 1
        elapsed += time.perf_counter() - t0
        metrics = {"loss": loss.item(), "batch_acc": acc.item(), "logit_scale": model.logit_scale.detach().exp().item(),
                   "lr": lr, "seconds": elapsed, **slot_metrics}
        if step % config.log_every == 0 or step == config.n_steps:
            log.write(step=step, **metrics)
        if step % config.checkpoint_every == 0 or step == config.n_steps:
            checkpoint()
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['batch_acc']:.2f}")
        if callback is not None:
            callback(step, metrics)
    bar.close()
    model.eval()
    if ema is not None:
        ema.copy_to(model)
    return export_clip(model, tokenizer, config, out / "model")


def _distinct_scenes(split: str, n_objects: tuple[int, ...], n: int, seed: int,
                     world: int = CURRENT_WORLD) -> tuple[list, list[str]]:
    data = ShapesConfig(seed, 64, split, n_objects, world=world)
    scenes, texts, seen = [], [], set()
    for i in range(50 * n):  # one-object held-out sets have only 50 distinct descriptions
        scene, _ = data.scene_caption(i)
        text = caption(scene, style="plain")
        if text not in seen:
            seen.add(text)
            scenes.append(scene)
            texts.append(text)
            if len(texts) == n:
                break
    return scenes, texts


EVAL_GROUPS: dict[str, tuple[int, ...]] = {"1 object": (1,), "2-3 objects": (2, 3), "mixed": (1, 2, 3)}


def evaluate_retrieval(encoder: ClipEncoder, n: int = 300, seed: int = 10_000,
                       splits: tuple[str, ...] = ("held_out", "train"), *,
                       world: int = CURRENT_WORLD) -> list[dict[str, Any]]:
    """Zero-shot retrieval (CLIP, Radford et al. 2021): text->image and image->text top-1 among n distinct scenes.

    One plain caption per image; scenes are drawn until n distinct captions (fewer where the world has fewer,
    e.g. 50 one-object held-out scenes). Groups: "1 object", "2-3 objects", "mixed". Returns one dict per
    (split, group): {split, group, n, t2i_top1, i2t_top1} with accuracies in [0, 1].
    """
    if not isinstance(encoder, ClipEncoder):
        raise TypeError(f"encoder must be a ClipEncoder, got {type(encoder).__name__}")
    n = check_positive_int("n", n, minimum=2)
    for s in splits:
        check_choice("split", s, ("held_out", "train", "all"))
    rows = []
    for split in splits:
        for group, n_objects in EVAL_GROUPS.items():
            scenes, texts = _distinct_scenes(split, n_objects, n, seed, world)
            size = encoder.image_size
            x = torch.stack([torch.from_numpy(render_array(s, size)) for s in scenes])
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            z_i = encoder.encode_image(x)
            z_t = encoder.encode_text(texts)
            sim = z_t @ z_i.T  # (n texts, n images)
            target = torch.arange(len(texts))
            rows.append({"split": split, "group": group, "n": len(texts),
                         "t2i_top1": float((sim.argmax(1) == target).float().mean()),
                         "i2t_top1": float((sim.argmax(0) == target).float().mean())})
    return rows


def _one_object_poses(n: int, seed: int, world: int) -> list[Scene]:
    """n one-object scenes (split "all": any colour, size, position, jitter); item i from default_rng([seed, i])."""
    return [sample_scene(np.random.default_rng([seed, i]), 1, "all", world=world) for i in range(n)]


def minimal_pair_cosines(encoder: ClipEncoder, n_poses: int = 300, seed: int = 20_000, *,
                         world: int | None = None) -> list[dict[str, Any]]:
    """Mean z_i cosine of two shapes drawn in the same pose (colour, size, position, angle, jitter), per pair.

    A CLIP that carries shape puts different shapes apart: the issue's gate is <= 0.95 for every pair.
    Returns [{a, b, n, mean_cosine, max_cosine}] over `n_poses` poses (the same poses for every pair).
    """
    world = _world_of(encoder, world)
    shapes = get_world(world).shapes
    poses = _one_object_poses(check_positive_int("n_poses", n_poses), seed, world)
    z = {}
    for shape in shapes:
        scenes = [Scene((replace(p.objects[0], shape=shape),), world=world) for p in poses]
        z[shape] = encoder.encode_image([render_array(sc, encoder.image_size) for sc in scenes])
    rows = []
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            cos = (z[a] * z[b]).sum(-1)
            rows.append({"a": a, "b": b, "n": len(poses), "mean_cosine": float(cos.mean()),
                         "max_cosine": float(cos.max())})
    return rows


def shape_probes(encoder: ClipEncoder, n: int = 2400, seed: int = 30_000, *, world: int | None = None,
                 n_folds: int = 3) -> dict[str, float]:
    """Cross-validated linear and MLP probes of shape from one-object z_i (fresh scenes, split "all").

    Returns {n, linear, mlp, majority}: accuracies in [0, 1]. Gates: linear >= 0.95, MLP >= 0.97.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    world = _world_of(encoder, world)
    n = check_positive_int("n", n, minimum=20 * n_folds)
    shapes = get_world(world).shapes
    scenes = _one_object_poses(n, seed, world)
    z = encoder.encode_image([render_array(s, encoder.image_size) for s in scenes]).numpy()
    z = z * np.sqrt(z.shape[1])  # unit-variance components
    y = np.array([shapes.index(s.objects[0].shape) for s in scenes])
    cv = StratifiedKFold(n_folds, shuffle=True, random_state=0)
    with threadpool_limits(1):
        linear = cross_val_score(LogisticRegression(max_iter=3000, C=10.0), z, y, cv=cv).mean()
        mlp = cross_val_score(MLPClassifier((256,), max_iter=500, early_stopping=True, random_state=0), z, y,
                              cv=cv).mean()
    return {"n": n, "linear": float(linear), "mlp": float(mlp), "majority": float(np.bincount(y).max() / n)}


def two_object_probes(encoder: ClipEncoder, n: int = 3000, seed: int = 31_000, *, world: int | None = None,
                      n_folds: int = 3) -> dict[str, float]:
    """Cross-validated linear probes of the first object's shape, size and colour from two-object z_i (fresh
    scenes; the first object is the left / upper one). A decoder cannot draw, from z_i alone, an attribute that
    z_i does not carry: these bound what two-object reconstruction can reach. Returns {n, shape, size, colour}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from threadpoolctl import threadpool_limits

    world = _world_of(encoder, world)
    n = check_positive_int("n", n, minimum=20 * n_folds)
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 2, split="all", world=world) for _ in range(n)]
    z = encoder.encode_image([render_array(s, encoder.image_size) for s in scenes]).numpy()
    z = z * np.sqrt(z.shape[1])
    first = [min(s.objects, key=lambda o: sum(object_xy(o, world))) for s in scenes]
    out: dict[str, float] = {"n": n}
    cv = StratifiedKFold(n_folds, shuffle=True, random_state=0)
    with threadpool_limits(1):
        for attr in ("shape", "size", "colour"):
            y = np.array([str(getattr(o, attr)) for o in first])
            out[attr] = float(cross_val_score(LogisticRegression(max_iter=3000, C=10.0), z, y, cv=cv).mean())
    return out


def _world_of(encoder: ClipEncoder, world: int | None) -> int:
    if not isinstance(encoder, ClipEncoder):
        raise TypeError(f"encoder must be a ClipEncoder, got {type(encoder).__name__}")
    if world is None:
        world = encoder.world if encoder.world is not None else CURRENT_WORLD
    return get_world(world).version


def _format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| split | scenes | n | text->image top-1 | image->text top-1 |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['group']} | {r['n']} | {100 * r['t2i_top1']:.1f}% | "
                     f"{100 * r['i2t_top1']:.1f}% |")
    return "\n".join(lines)


def gate_report(encoder: ClipEncoder, retrieval: list[dict[str, Any]], *, n_poses: int = 300,
                n_probe: int = 2400) -> dict[str, Any]:
    """The shape-carrying gates of a ShapesWorld CLIP, measured on fresh seeds, with pass/fail per gate.

    Gates: every shape pair's mean minimal-pair z_i cosine <= 0.95; linear probe of shape >= 0.95 and MLP
    probe >= 0.97 on one-object z_i; text->image top-1 >= 0.97 on held-out compositions (mixed) and >= 0.95
    among one-object training scenes.
    """
    pairs = minimal_pair_cosines(encoder, n_poses)
    probes = shape_probes(encoder, n_probe)
    two = two_object_probes(encoder)
    t2i = {(r["split"], r["group"]): r["t2i_top1"] for r in retrieval}
    gates = {
        "max pair mean cosine <= 0.95": (max(r["mean_cosine"] for r in pairs), 0.95, "<="),
        "linear probe >= 0.95": (probes["linear"], 0.95, ">="),
        "MLP probe >= 0.97": (probes["mlp"], 0.97, ">="),
        "t2i held-out (mixed) >= 0.97": (t2i.get(("held_out", "mixed"), float("nan")), 0.97, ">="),
        "t2i one-object train >= 0.95": (t2i.get(("train", "1 object"), float("nan")), 0.95, ">="),
    }
    table = [{"gate": k, "value": v, "bar": bar, "pass": bool(v <= bar if op == "<=" else v >= bar)}
             for k, (v, bar, op) in gates.items()]
    return {"pairs": pairs, "probes": probes, "two_object_probes": two, "gates": table}


def _format_gates(report: dict[str, Any]) -> str:
    lines = ["| gate | measured | pass |", "|---|---|---|"]
    lines += [f"| {g['gate']} | {g['value']:.3f} | {'yes' if g['pass'] else 'NO'} |" for g in report["gates"]]
    lines += ["", f"Minimal pairs (n = {report['pairs'][0]['n']} poses each: same colour, size, position, angle, "
                  "jitter; only the shape differs):", "", "| shapes | mean z_i cosine | max |", "|---|---|---|"]
    lines += [f"| {r['a']} / {r['b']} | {r['mean_cosine']:.3f} | {r['max_cosine']:.3f} |" for r in report["pairs"]]
    p = report["probes"]
    lines += ["", f"Probes of shape from one-object z_i (n = {p['n']}, 3-fold): linear {p['linear']:.3f}, "
                  f"MLP {p['mlp']:.3f}, majority {p['majority']:.3f}."]
    two = report.get("two_object_probes")
    if two:
        lines += ["", f"Linear probes of the first object of two-object z_i (n = {two['n']}, 3-fold; what two-object "
                      f"reconstruction can reach): shape {two['shape']:.3f}, size {two['size']:.3f}, colour "
                      f"{two['colour']:.3f}."]
    return "\n".join(lines)


def model_card(config: ClipTrainConfig, rows: list[dict[str, Any]], seconds: float, n_params: int,
               model_id: str, eval_seed: int, gates: dict[str, Any] | None = None, *, recipe: str = "shapes",
               name: str = "shapes-clip") -> str:
    """README.md of the bundled model: recipe, training time, measured retrieval and shape gates."""
    c = config
    twins = (f"- Hard negatives: {c.twin_fraction:.0%} of each batch as minimal pairs, a scene and its twin with "
             f"one attribute of one object changed ({', '.join(f'{a} {w:g}' for a, w in zip(c.twin_attributes, c.twin_weights))}), "
             "same pose.\n" if c.twin_fraction else "")
    slots = (f"- Slot read-out: + {c.slot_weight:g} x the cross-entropy of linear heads on z_i that name the shape, "
             "colour and size (or none) of the object at each of the five positions (heads not exported).\n"
             if c.slot_weight else "")
    warm = f"- Warm start: the weights of `{c.init_from}`.\n" if c.init_from else ""
    again = f" --init-from {c.init_from}" if c.init_from else ""
    gate_text = "" if gates is None else f"\n## Shape gates (fresh seeds)\n{_format_gates(gates)}\n"
    return f"""# {name}

A small CLIP (Radford et al. 2021) trained from scratch on ShapesWorld v{c.world} (unclip_core.data.shapes), so
the unCLIP pipeline and the CLIP-latent analyses run offline in seconds. Load it with
`ClipEncoder.load("{name}")`. Model id (weights hash): `{model_id}`.

## Architecture (open_clip custom config, open_clip_config.json)
- Image tower: ViT, {c.image_size}px input, patch {c.patch_size}, width {c.vision_width}, {c.vision_layers} layers,
  head width {c.vision_head_width}; preprocessing maps pixels to [-1, 1] (mean = std = 0.5).
- Text tower: causal transformer, width {c.text_width}, {c.text_layers} layers, {c.text_heads} heads, context
  {c.context_length}, word-level vocabulary of ShapesWorld (vocab.json; [EOT] is the largest id, so open_clip's
  argmax pooling reads the [EOT] token). Prompts outside the vocabulary map to [UNK].
- Embedding dimension {c.embed_dim}; {n_params / 1e6:.2f} M parameters; weights in fp32 safetensors.

## Training recipe ("{recipe}", `unclip_core.train.clip`)
- World: ShapesWorld v{c.world} (docs/shapesworld.md).
- Data: ShapesWorld split="train" (the held-out colour-shape pairs never appear), {c.n_objects} objects
  (probabilities {c.object_weights or "uniform"}), captions drawn from all paraphrase styles, item i of step s is ShapesConfig(seed={c.seed}).item(s * {c.batch_size} + k).
{twins}- Loss: symmetric InfoNCE with learned temperature (init {c.init_temperature}, logit scale clamped at
  {c.max_logit_scale:g}); captions describing the same scene in a batch count as positives.
{slots}{warm}
- AdamW (lr {c.lr:g}, betas ({c.beta1}, {c.beta2}), eps {c.adam_eps:g}, weight decay {c.weight_decay} on matrices),
  {c.warmup_steps} warm-up steps then cosine decay to {c.min_lr_ratio} x lr; batch {c.batch_size}, {c.n_steps} steps
  ({c.n_steps * c.batch_size:,} image-caption pairs); {resolve_precision(c.precision)} on CPU; EMA: {c.ema_decay}.
- Training time: {seconds / 60:.1f} min of wall-clock on a shared 2-core CPU (1 torch thread).
- Reproduce: `python -m unclip_core.train.clip --recipe {recipe}{again} --out RUN --export DIR` (resumable).

## Measured retrieval (evaluate_retrieval, seed {eval_seed}; one plain caption per image, distinct captions)
{_format_rows(rows)}
{gate_text}
"held_out" scenes contain at least one colour-shape pair never seen in training (zero-shot composition).
Near-duplicate captions are excluded from each gallery, so these numbers are top-1 among distinct descriptions;
the one-object held-out world has only 50 distinct descriptions.

## Limits
Only ShapesWorld's words and scenes: it knows nothing of natural images or language.
"""


def main(argv: list[str] | None = None) -> None:
    """CLI: train the "shapes" recipe, evaluate, export with a model card."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/work/runs/shapes-clip", help="training state folder")
    p.add_argument("--export", default=None, help="folder to write the final model with its card")
    p.add_argument("--recipe", default="shapes", choices=sorted(RECIPES))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--precision", default=None, choices=PRECISIONS)
    p.add_argument("--init-from", default=None, metavar="CLIP",
                   help="warm start: a CLIP folder or bundled name of the same architecture (recipe shapes-v2-slots "
                        "continues the contrastive shapes-v2 CLIP: pass its export)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--eval-n", type=int, default=300)
    p.add_argument("--gates-n", type=int, default=300, help="poses per minimal pair (probes use 8x as many)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 was ~10x faster than 2 on a CPU shared with other jobs)")
    a = p.parse_args(argv)
    torch.set_num_threads(check_positive_int("threads", a.threads))
    overrides = {k: v for k, v in {"n_steps": a.steps, "batch_size": a.batch_size,
                                   "precision": a.precision, "init_from": a.init_from}.items() if v is not None}
    config = ClipTrainConfig.recipe(a.recipe, **overrides)
    folder = train_clip(config, a.out, resume=not a.fresh)
    seconds = float(load_state(Path(a.out) / STATE_FILE)["seconds"])
    encoder = ClipEncoder.load(str(folder))
    eval_seed = 10_000
    rows = evaluate_retrieval(encoder, n=a.eval_n, seed=eval_seed, world=config.world)
    print(_format_rows(rows))
    write_json(Path(a.out) / "retrieval.json", rows, sort_keys=False)
    gates = gate_report(encoder, rows, n_poses=a.gates_n, n_probe=8 * a.gates_n)
    print(_format_gates(gates))
    write_text_atomic(Path(a.out) / "gates.json", json.dumps(gates, indent=2) + "\n")
    if a.export:
        n_params = sum(p.numel() for p in encoder.model.parameters())
        card = model_card(config, rows, seconds, n_params, encoder.model_id, eval_seed, gates, recipe=a.recipe,
                          name=Path(a.export).name)
        export_clip(encoder.model, encoder.tokenizer, config, a.export, card=card)
        print(f"exported to {a.export}")


if __name__ == "__main__":
    main()
