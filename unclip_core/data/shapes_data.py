"""ShapesWorld as torch datasets (streamed, rendered on the fly) and as an exported image folder."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from unclip_core.atomic import atomic_dir
from unclip_core.checks import check_choice, check_positive_int
from unclip_core.data.shapes_render import check_size, render_array
from unclip_core.data.shapes_scene import CURRENT_WORLD, SPLITS, Scene, get_world, sample_scene
from unclip_core.data.shapes_text import CAPTION_STYLES, caption

Item = tuple[torch.Tensor, str, dict[str, Any]]


@dataclass(frozen=True)
class ShapesConfig:
    """What defines a ShapesWorld stream: item i depends only on (seed, i) and these fields."""
    seed: int
    size: int = 64
    split: str = "train"
    n_objects: tuple[int, ...] = (1, 2, 3)
    weights: tuple[float, ...] | None = None  # probabilities over n_objects; None is uniform
    label_prob: float = 0.0
    caption_style: str | None = None  # None draws a paraphrase per item
    world: int = CURRENT_WORLD  # ShapesWorld version

    def __post_init__(self) -> None:
        check_positive_int("seed", self.seed, minimum=0)
        get_world(self.world)
        check_size(self.size)
        check_choice("split", self.split, SPLITS)
        n_objects = tuple(self.n_objects) if isinstance(self.n_objects, (list, tuple)) else (self.n_objects,)
        object.__setattr__(self, "n_objects", n_objects)
        if not n_objects:
            raise ValueError("n_objects is empty; pass counts from (1, 2, 3), e.g. n_objects=(1, 2, 3)")
        for k in n_objects:
            check_choice("n_objects entry", k, (1, 2, 3))
        if self.weights is not None:
            w = tuple(float(x) for x in self.weights)
            if len(w) != len(n_objects) or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"weights must be {len(n_objects)} non-negative numbers (one per n_objects "
                                 f"entry {n_objects}) with a positive sum, got {self.weights}")
            object.__setattr__(self, "weights", tuple(x / sum(w) for x in w))
        if not 0.0 <= float(self.label_prob) <= 1.0:
            raise ValueError(f"label_prob must be a probability in [0, 1], got {self.label_prob}")
        if self.caption_style is not None:
            check_choice("caption_style", self.caption_style, CAPTION_STYLES)

    def scene_caption(self, i: int) -> tuple[Scene, str]:
        """Scene and caption of item i, from rng = default_rng([seed, i]) (any worker gets the same)."""
        rng = np.random.default_rng([self.seed, int(i)])
        k = self.n_objects[rng.choice(len(self.n_objects), p=self.weights)]
        scene = sample_scene(rng, k, self.split, self.label_prob, world=self.world)
        return scene, caption(scene, rng=rng, style=self.caption_style)

    def item(self, i: int) -> Item:
        """(image (3, size, size) float in [-1, 1], caption, scene dict) of item i."""
        scene, text = self.scene_caption(i)
        x = torch.from_numpy(render_array(scene, self.size)).permute(2, 0, 1).float() / 127.5 - 1.0
        return x, text, scene.to_dict()


class ShapesDataset(IterableDataset):
    """Endless (n=None) or n-item ShapesWorld stream rendered on the fly; no disk.

    Item i is the same whatever the number of DataLoader workers or DDP ranks: shard s of S takes
    i = s, s + S, ..., with S = world_size * num_workers. Batch with collate_fn=collate_shapes.
    """

    def __init__(self, seed: int, size: int = 64, split: str = "train", n: int | None = None,
                 n_objects: tuple[int, ...] = (1, 2, 3), weights: tuple[float, ...] | None = None,
                 label_prob: float = 0.0, caption_style: str | None = None, rank: int = 0,
                 world_size: int = 1, *, world: int = CURRENT_WORLD) -> None:
        super().__init__()
        self.config = ShapesConfig(seed, size, split, n_objects, weights, label_prob, caption_style, world)
        self.n = None if n is None else check_positive_int("n", n)
        self.world_size = check_positive_int("world_size", world_size)
        self.rank = check_positive_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in 0..world_size-1 = 0..{self.world_size - 1}, got {self.rank}")

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("ShapesDataset(n=None) is endless and has no length; pass n for a finite stream")
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        n_workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        step = self.world_size * n_workers
        i = self.rank * n_workers + worker
        while self.n is None or i < self.n:
            yield self.config.item(i)
            i += step


class ShapesFixedSet(Dataset):
    """Map-style evaluation set: item i equals item i of ShapesDataset with the same arguments."""

    def __init__(self, seed: int, n: int, size: int = 64, split: str = "train",
                 n_objects: tuple[int, ...] = (1, 2, 3), weights: tuple[float, ...] | None = None,
                 label_prob: float = 0.0, caption_style: str | None = None, *,
                 world: int = CURRENT_WORLD) -> None:
        self.config = ShapesConfig(seed, size, split, n_objects, weights, label_prob, caption_style, world)
        self.n = check_positive_int("n", n)
        pairs = [self.config.scene_caption(i) for i in range(self.n)]
        self.scenes: list[Scene] = [s for s, _ in pairs]
        self.captions: list[str] = [c for _, c in pairs]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Item:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} is out of range for a ShapesFixedSet of {self.n} items")
        return self.config.item(int(i) % self.n)


def collate_shapes(batch: list[Item]) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    """DataLoader collate_fn: images stacked (B, 3, H, W); captions and scene dicts as lists."""
    images, captions, scenes = zip(*batch)
    return torch.stack(images), list(captions), list(scenes)


def export(out_dir: str | Path, n: int, seed: int, size: int = 64, split: str = "train",
           n_objects: tuple[int, ...] = (1, 2, 3), weights: tuple[float, ...] | None = None,
           label_prob: float = 0.0, overwrite: bool = False, progress: bool = True, *,
           world: int = CURRENT_WORLD) -> Path:
    """Write images/000000.png ..., captions.jsonl ({file, caption, scene}) and meta.json, atomically.

    The folder is built in a temporary sibling and renamed into place; item i equals ShapesDataset item i.
    """
    config = ShapesConfig(seed, size, split, n_objects, weights, label_prob, world=world)
    n = check_positive_int("n", n)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is a file; pass a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"out_dir={str(out)!r} already exists and is not empty; pass overwrite=True "
                         "or choose a new folder")
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "captions.jsonl", "w", encoding="utf-8") as f:
            for i in tqdm(range(n), desc="ShapesWorld export", disable=not progress):
                scene, text = config.scene_caption(i)
                name = f"images/{i:06d}.png"
                Image.fromarray(render_array(scene, config.size)).save(tmp / name)
                f.write(json.dumps({"file": name, "caption": text, "scene": scene.to_dict()}) + "\n")
        meta = {"generator": "unclip_core.data.shapes", "n": n, **asdict(config),
                "held_out_pairs": sorted(map(list, get_world(config.world).held_out_pairs))}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


__all__ = ["ShapesConfig", "ShapesDataset", "ShapesFixedSet", "collate_shapes", "export"]
