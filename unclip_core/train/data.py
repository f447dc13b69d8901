"""What a diffusion stage trains on: ShapesWorld drawn on the fly, or a user's data set behind `TrainingData`.

`DataConfig` names the data of a run (it travels inside `DiffusionTrainConfig.data`). The readers of image
folders, webdataset shards and embedding stores live in `explorer.training` (they reuse explorer.store); this
module holds what the trainer needs of them, so unclip_core imports nothing from above it:

- `TrainingData`: a data set of n items that hands out batches by item index (images at a requested size,
  captions, cached z_i, precomputed z_t).
- `epoch_indices`: which items a step draws, a pure function of (seed, step, micro-batch, rank), so a resumed
  run draws exactly what an uninterrupted one would, and the ranks of a DDP run draw disjoint items.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unclip_core.checks import check_choice, check_positive_int

DATA_KINDS = ("shapesworld", "auto", "folder", "webdataset", "embeddings")
ON_BAD = ("skip", "fail")


@dataclass(frozen=True)
class DataConfig:
    """The data of a run.

    kind: "shapesworld" (rendered on the fly, the recipes' default), "folder" (images + captions.jsonl, or
      images with same-name .txt captions), "webdataset" (.tar shards: a file, a folder of them or a
      'shards/{000..099}.tar' pattern), "embeddings" (prior only: an embedding store or a clip-retrieval output
      folder), or "auto" (picked from `path`). None (left out): "auto" with a path, else "shapesworld".
    path: where the data is (every kind but shapesworld).
    cache: the embedding store that caches the CLIP image embeddings z_i of `path` (None: RUN/embeddings); it
      records the CLIP and is refused by a run with another one.
    on_bad_image: "skip" leaves unreadable images out and counts them (RUN/data.json); "fail" stops before
      training and names them.
    embed_batch_size: images per CLIP batch while the cache is filled.
    """

    kind: str | None = None
    path: str | None = None
    cache: str | None = None
    on_bad_image: str = "skip"
    embed_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.kind is None:  # a [data] table that names only a path reads files
            object.__setattr__(self, "kind", "shapesworld" if self.path is None and self.cache is None else "auto")
        check_choice("data kind", self.kind, DATA_KINDS)
        check_choice("data on_bad_image", self.on_bad_image, ON_BAD)
        check_positive_int("data embed_batch_size", self.embed_batch_size)
        if self.kind == "shapesworld":
            if self.path is not None or self.cache is not None:
                raise ValueError(f"data kind='shapesworld' renders its scenes and reads no files, got path="
                                 f"{self.path!r} cache={self.cache!r}; set data kind to 'folder', 'webdataset', "
                                 "'embeddings' or 'auto' to train on files")
        elif not self.path:
            raise ValueError(f"data kind={self.kind!r} needs data path (an image folder, a captions.jsonl, "
                             "webdataset .tar shards or an embedding store); set [data] path = \"...\"")

    @property
    def is_shapesworld(self) -> bool:
        return self.kind == "shapesworld"


@dataclass
class DataBatch:
    """Items of a data set: images (one (B, 3, s, s) tensor in [-1, 1] per requested size), captions, z_i (B, d)
    unit-norm CLIP image embeddings, z_t (B, d) unit-norm text embeddings; None where the data set has none."""

    images: list[Tensor] | None = None
    captions: list[str] | None = None
    z_i: Tensor | None = None
    z_t: Tensor | None = None


class TrainingData(Protocol):
    """A data set a stage trains on (explorer.training builds them from folders, shards and stores)."""

    has_images: bool
    has_captions: bool
    has_z_i: bool
    has_z_t: bool
    clip_model_id: str | None  # the CLIP its z_i / z_t come from (None: not recorded)

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int], *, sizes: tuple[int, ...] = ()) -> DataBatch: ...


def epoch_indices(position: int, batch_size: int, n_items: int, seed: int,
                  cache: dict[int, np.ndarray] | None = None) -> list[int]:
    """Items [position, position + batch_size) of the endless stream that visits each of n_items once per epoch
    in a seeded random order (a new permutation each epoch)."""
    out = []
    for p in range(position, position + batch_size):
        epoch, k = divmod(p, n_items)
        perm = None if cache is None else cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([seed, epoch]).permutation(n_items)
            if cache is not None:
                cache.clear()  # one epoch at a time: memory stays O(n_items)
                cache[epoch] = perm
        out.append(int(perm[k]))
    return out


def square_image(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop a PIL image to a square and resize it (bicubic, antialiased) -> (size, size, 3) uint8."""
    image = image.convert("RGB") if image.mode != "RGB" else image
    w, h = image.size
    s = min(w, h)
    if w != h:
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    if s != size:
        image = image.resize((size, size), Image.BICUBIC, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def to_tensor(arrays: Sequence[np.ndarray]) -> Tensor:
    """(H, W, 3) uint8 arrays -> (B, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def describe_data(config: DataConfig, data: Any = None) -> str:
    """One line for model cards and progress: what a run trained on."""
    if config.is_shapesworld:
        return "ShapesWorld"
    n = f", {len(data):,} items" if data is not None else ""
    return f"{config.kind} `{config.path}`{n}"


__all__ = ["DATA_KINDS", "ON_BAD", "DataBatch", "DataConfig", "TrainingData", "describe_data", "epoch_indices",
           "square_image", "to_tensor"]
