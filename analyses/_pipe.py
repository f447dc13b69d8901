"""Helpers shared by the analyses that drive an unCLIP pipeline: input checks, seeds, CLIP similarities, decoding."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from unclip_core import seeds
from unclip_core.checks import check_guidance as _check_guidance, check_positive_int
from unclip_core.imageio import load_image, pil_to_tensor
from unclip_core.sampling import SamplingConfig, check_sampling

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_PIPE_ATTRS = ("clip", "decoder", "decode", "invert", "encode_images", "sample_prior", "upsample", "describe")


def check_pipe(pipe: Any, attrs: Sequence[str] = _PIPE_ATTRS) -> Any:
    """Raise TypeError unless `pipe` looks like an unclip_core.pipeline.UnCLIP (has every name in `attrs`)."""
    missing = [a for a in attrs if not hasattr(pipe, a)]
    if missing:
        raise TypeError(f"pipe must be an unclip_core.pipeline.UnCLIP (load one with UnCLIP.load(spec)), got "
                        f"{type(pipe).__name__} without {', '.join(missing)}")
    return pipe


def generator(seed: int | torch.Generator | None) -> tuple[torch.Generator, int | None]:
    """A torch.Generator for `seed` and the int seed to record (drawn when None; None for a caller's generator)."""
    try:
        return seeds.generator(seed)
    except TypeError:
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__} {seed!r}") from None


def check_guidance(guidance: float) -> float:
    return _check_guidance("guidance", guidance)


def check_refine(refine: int) -> int:
    return check_positive_int("refine", refine, minimum=0)


def as_image(name: str, item: Any) -> Image.Image:
    """An RGB PIL image from a PIL image / path / array, with errors naming the argument."""
    try:
        return load_image(item)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: image file not found: {item}; check the path") from None
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def end_kind(name: str, end: Any) -> tuple[str, Image.Image | str, str]:
    """Classify an interpolation end: ("image", PIL, label) or ("text", caption, caption).

    A str is a caption unless it ends in an image suffix (.png, .jpg, ...) or names an existing file, then it is
    an image path that must be readable; Path objects, PIL images, uint8 arrays and tensors are images.
    """
    if isinstance(end, str):
        if not end.strip():
            raise ValueError(f"{name} is an empty string; pass a caption, an image path or a PIL image")
        if not end.lower().endswith(IMAGE_SUFFIXES) and not Path(end).expanduser().is_file():
            return "text", end, end
        return "image", as_image(name, end), Path(end).name
    label = Path(end).name if isinstance(end, Path) else "image"
    return "image", as_image(name, end), label


def unit_rows(z: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, d) float64 numpy rows scaled to unit norm."""
    arr = z.detach().cpu().double().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, np.float64)
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr[None]
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)


def encode_images(pipe: Any, images: Sequence[Image.Image]) -> np.ndarray:
    """CLIP image embeddings (n, d), unit rows, float64."""
    return unit_rows(pipe.clip.encode_image(list(images)))


def encode_texts(pipe: Any, texts: Sequence[str]) -> np.ndarray:
    """CLIP text embeddings (n, d), unit rows, float64."""
    return unit_rows(pipe.clip.encode_text(list(texts)))


def decoder_size(pipe: Any) -> int:
    """Pixel side of the decoder stage's images (after the autoencoder, for a latent decoder)."""
    return int(pipe.resolutions[0])


def to_decoder_tensor(pipe: Any, image: Image.Image) -> torch.Tensor:
    """(1, 3, s, s) pixels in [-1, 1] at the decoder stage's pixel size, as pipe.invert sees the image."""
    return pil_to_tensor([image], size=decoder_size(pipe))


def noise(pipe: Any, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of the decoder's x_T from `generator`: (n, *pipe.x_T_shape(n)[1:]), pixels or latents."""
    return torch.randn(pipe.x_T_shape(check_positive_int("n", n)), generator=generator)


def sampling_of(pipe: Any, sampling: Any) -> SamplingConfig:
    """An analysis' sampling settings: `sampling` (a SamplingConfig or a dict of its fields) over pipe.sampling."""
    return check_sampling(sampling, getattr(pipe, "sampling", None) or SamplingConfig())


def decode(pipe: Any, z_i: torch.Tensor, x_T: torch.Tensor, *, sampling: SamplingConfig,
           upsample: bool | int | None, g: torch.Generator,
           batch_size: int = 16) -> tuple[list[Image.Image], torch.Tensor]:
    """Decode z_i (n, d) from x_T of pipe.x_T_shape(n) in batches -> (final images, decoder-stage pixels (n, 3, s, s)).

    With `sampling` from analyses._inversion.frame_sampling (DDIM at eta 0) a frame depends only on its z_i and
    x_T. When upsampling, every frame gets the same upsampler noise (one seed drawn from g), so frames differ only
    through z_i and x_T.
    """
    up_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g).item())
    decoded = []
    for s in range(0, z_i.shape[0], batch_size):
        out = pipe.decode(z_i[s:s + batch_size], x_T=x_T[s:s + batch_size], sampling=sampling, upsample=False,
                          seed=0)
        decoded.append(out.stages["decoder"])
    x = torch.cat(decoded)
    final = x
    n_up = pipe.upsample_stages(upsample)  # True: all, False: none, k: the first k
    if n_up:
        frames = []
        for j in range(x.shape[0]):
            y = x[j:j + 1]
            for k in range(n_up):
                y = pipe.upsample(y, k, sampling=sampling, seed=up_seed + k).cpu()
            frames.append(y)
        final = torch.cat(frames)
    from unclip_core.imageio import tensor_to_pil
    return tensor_to_pil(final), x

