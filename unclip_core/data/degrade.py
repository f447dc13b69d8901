"""Training corruptions of the upsamplers' low-res inputs (Ramesh et al. 2022, sec. 2.1; BSR of Zhang et al. 2021).

Images are float tensors in [-1, 1], (B, C, H, W) or (C, H, W). All randomness comes from a torch.Generator.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..checks import check_positive_int


def _as_batch(name: str, x: object) -> tuple[Tensor, bool]:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a float tensor (B, C, H, W) or (C, H, W) in [-1, 1], got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {x.dtype}; "
                        "convert with imageio.pil_to_tensor")
    return (x[None], True) if x.ndim == 3 else (x, False)


def gaussian_kernel1d(kernel: int, sigma: float) -> Tensor:
    """Normalised 1-D gaussian taps exp(-k^2 / 2 sigma^2), k = -(kernel//2)..kernel//2."""
    k = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    w = torch.exp(-k ** 2 / (2 * sigma ** 2))
    return (w / w.sum()).float()


def _blur(x: Tensor, kernel: int, sigma: float) -> Tensor:
    C = x.shape[1]
    w = gaussian_kernel1d(kernel, sigma).to(x)
    pad = kernel // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect" if min(x.shape[-2:]) > pad else "replicate")
    x = F.conv2d(x, w.view(1, 1, 1, kernel).expand(C, 1, 1, kernel), groups=C)
    return F.conv2d(x, w.view(1, 1, kernel, 1).expand(C, 1, kernel, 1), groups=C)


def blur_corrupt(x: Tensor, kernel: int = 3, sigma: float = 0.6) -> Tensor:
    """Gaussian blur (reflect padding) of the first upsampler's input; paper: kernel 3, sigma 0.6."""
    xb, single = _as_batch("x", x)
    check_positive_int("kernel", kernel)
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd size, got {kernel}; use e.g. 3 or 5")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    out = _blur(xb, kernel, float(sigma))
    return out[0] if single else out


def _uniform(generator: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _jpeg(img: Tensor, quality: int) -> Tensor:
    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(out).permute(2, 0, 1).to(img)


def bsr_degrade(x: Tensor, generator: torch.Generator | None = None, out_size: int | None = None) -> Tensor:
    """BSR-style degradation (Zhang et al. 2021) for the second upsampler: blur, resize down/up, noise, JPEG.

    Per image: gaussian blur (sigma ~ U[0.2, 2]), and resize down to a random 25-100% of the side and back
    (random bilinear/bicubic/area), in random order; then gaussian noise (std ~ U[1, 25] / 255 of the
    [0, 255] range) and JPEG at quality ~ U{30..95}. The result is resized (bicubic) to `out_size`
    (default: the input size) and clamped to [-1, 1]. x: (B, C, H, W) or (C, H, W).
    """
    xb, single = _as_batch("x", x)
    if out_size is not None:
        check_positive_int("out_size", out_size)
    if xb.shape[1] != 3:
        raise ValueError(f"x must have 3 (RGB) channels for JPEG compression, got {xb.shape[1]}")
    H, W = xb.shape[-2:]
    size = (out_size, out_size) if out_size is not None else (H, W)
    modes = ("bilinear", "bicubic", "area")
    out = []
    for img in xb:
        img = img[None].float()
        for step in torch.randperm(2, generator=generator).tolist():
            if step == 0:
                sigma = _uniform(generator, 0.2, 2.0)
                img = _blur(img, 2 * math.ceil(3 * sigma) + 1, sigma)
            else:
                s = _uniform(generator, 0.25, 1.0)
                small = (max(1, round(H * s)), max(1, round(W * s)))
                down = modes[int(torch.randint(3, (), generator=generator))]
                img = F.interpolate(img, size=small, mode=down, **({} if down == "area" else {"align_corners": False}))
                img = F.interpolate(img, size=(H, W), mode="bilinear", align_corners=False)
        std = _uniform(generator, 1.0, 25.0) / 127.5
        dev = generator.device if generator is not None else img.device
        img = img + std * torch.randn(img.shape, generator=generator, device=dev).to(img.device)
        img = _jpeg(img[0], int(torch.randint(30, 96, (), generator=generator)))[None]
        if size != (H, W):
            img = F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True)
        out.append(img.clamp(-1, 1).to(xb.dtype))
    res = torch.cat(out)
    return res[0] if single else res


def random_crop_pair(hi: Tensor, lo: Tensor, crop: int, generator: torch.Generator | None = None,
                     content_fraction: float = 0.0) -> tuple[Tensor, Tensor]:
    """Crop aligned patches: a crop x crop window of `hi` and the same region of `lo`.

    `lo` is either the same size as `hi` (e.g. already upsampled: same window) or smaller by an integer factor f
    (window of crop / f at the aligned position; the corner is drawn on a grid of f). One window per batch item.
    Shapes (B, C, H, W) or (C, H, W). Returns (hi_crop, lo_crop).

    content_fraction: the share of windows drawn to contain a pixel of content, one that differs from the
    image's top-left pixel (the background of a ShapesWorld render) by more than 0.1 in some channel; the
    window's offset around that pixel is uniform. A 128 px window of a 1024 px render is otherwise mostly flat
    background, where an upsampler learns nothing about its conditioning image. Items without content fall
    back to a uniform window.
    """
    if not 0.0 <= float(content_fraction) <= 1.0:
        raise ValueError(f"content_fraction must be a share in [0, 1], got {content_fraction}")
    hb, single = _as_batch("hi", hi)
    lb, _ = _as_batch("lo", lo)
    check_positive_int("crop", crop)
    B, _, H, W = hb.shape
    if lb.shape[0] != B:
        raise ValueError(f"hi and lo must have the same batch size, got {B} and {lb.shape[0]}")
    h, w = lb.shape[-2:]
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"lo ({h}x{w}) must be hi ({H}x{W}) downscaled by one integer factor")
    f = H // h
    if crop > min(H, W) or crop % f:
        raise ValueError(f"crop={crop} must be <= {min(H, W)} (the size of hi) and a multiple of the factor {f}")
    his, los = [], []
    for b in range(B):
        i = int(torch.randint((H - crop) // f + 1, (), generator=generator)) * f
        j = int(torch.randint((W - crop) // f + 1, (), generator=generator)) * f
        if content_fraction > 0 and float(torch.rand((), generator=generator)) < content_fraction:
            i, j = _content_corner(hb[b], crop, f, generator, (i, j))
        his.append(hb[b, :, i:i + crop, j:j + crop])
        los.append(lb[b, :, i // f:(i + crop) // f, j // f:(j + crop) // f])
    hc, lc = torch.stack(his), torch.stack(los)
    return (hc[0], lc[0]) if single else (hc, lc)


def _content_corner(img: Tensor, crop: int, f: int, generator: torch.Generator | None,
                    default: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner (on the grid of f) of a crop window holding a random content pixel of img (C, H, W)."""
    _, H, W = img.shape
    ys, xs = torch.nonzero(((img - img[:, :1, :1]).abs() > 0.1).any(0), as_tuple=True)
    if len(ys) == 0:
        return default
    k = int(torch.randint(len(ys), (), generator=generator))
    y, x = int(ys[k]), int(xs[k])

    def corner(p: int, size: int) -> int:
        lo, hi = max(0, p - crop + 1), min(p, size - crop)  # windows [c, c + crop) that hold p
        lo, hi = -(-lo // f), hi // f  # corners on the grid of f; crop and size are multiples of f, so lo <= hi
        return (lo + int(torch.randint(hi - lo + 1, (), generator=generator))) * f

    return corner(y, H), corner(x, W)
