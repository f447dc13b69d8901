"""Conversions between PIL images, files and model tensors in [-1, 1]."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

ImageLike = Image.Image | str | Path | torch.Tensor | np.ndarray


def load_image(item: ImageLike) -> Image.Image:
    """Return an RGB PIL image from a PIL image, a path, an HWC uint8 array or a CHW tensor in [-1, 1]."""
    if isinstance(item, Image.Image):
        return item.convert("RGB") if item.mode != "RGB" else item
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as exc:  # PIL raises several types for non-images
            raise ValueError(f"{path} is not an image PIL can read ({exc.__class__.__name__}); "
                             "pass a PNG/JPEG/WebP file") from None
    if isinstance(item, torch.Tensor):
        return tensor_to_pil(item)
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.repeat(item[..., None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] not in (1, 3, 4):
            raise ValueError(f"an image array must be HxW or HxWxC with C in (1, 3, 4), got shape {item.shape}")
        if item.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 in [0, 255], got dtype {item.dtype}")
        return Image.fromarray(item).convert("RGB")
    raise TypeError(f"expected a PIL image, a path, a uint8 array or a tensor, got {type(item).__name__}")


def pil_to_tensor(images: Sequence[Image.Image] | Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL image(s) -> (B, 3, H, W) float tensor in [-1, 1], resized (bicubic) to `size` when given."""
    if isinstance(images, Image.Image):
        images = [images]
    out = []
    for im in images:
        im = load_image(im)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out)


def tensor_to_pil(x: torch.Tensor) -> Image.Image | list[Image.Image]:
    """(3, H, W) or (B, 3, H, W) tensor in [-1, 1] -> PIL image or list of them."""
    if x.ndim == 3:
        return tensor_to_pil(x[None])[0]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) or (3, H, W) tensor, got shape {tuple(x.shape)}")
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
