"""Input checks at public boundaries: one place, messages that say expected / got / fix."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch


def check_choice(name: str, value: object, accepted: Iterable[object]) -> None:
    """Raise ValueError listing the accepted options when `value` is not one of them."""
    accepted = list(accepted)
    if value not in accepted:
        listed = ", ".join(repr(a) for a in accepted)
        raise ValueError(f"{name}={value!r} is not known; accepted: {listed}")


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Return `value` as int, or raise when it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_embeddings(name: str, z: np.ndarray | torch.Tensor, dim: int | None = None,
                     allow_1d: bool = False) -> np.ndarray | torch.Tensor:
    """Check an embedding batch: 2-D (n, dim) float, finite, non-empty; 1-D allowed when `allow_1d`."""
    if not isinstance(z, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy array or torch tensor of shape (n, dim), "
                        f"got {type(z).__name__}")
    ndim = z.ndim
    if ndim == 1 and allow_1d:
        pass
    elif ndim != 2:
        want = "(dim,) or (n, dim)" if allow_1d else "(n, dim)"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(z.shape)}")
    if z.shape[0] == 0 or (ndim == 2 and z.shape[1] == 0):
        raise ValueError(f"{name} is empty (shape {tuple(z.shape)}); pass at least one embedding")
    is_float = z.dtype.is_floating_point if isinstance(z, torch.Tensor) else np.issubdtype(z.dtype, np.floating)
    if not is_float:
        raise TypeError(f"{name} must be a float array, got dtype {z.dtype}")
    if dim is not None and z.shape[-1] != dim:
        raise ValueError(f"{name} has embedding dimension {z.shape[-1]}, expected {dim}: "
                         "were these embeddings made with another CLIP model?")
    # a sum is finite exactly when every term is (NaN and inf propagate; float64 cannot overflow here),
    # so the common all-finite case costs one pass and no full-size temporary
    if isinstance(z, torch.Tensor):
        finite = bool(torch.isfinite(z.sum(dtype=torch.float64)))
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            finite = bool(np.isfinite(z.sum(dtype=np.float64)))
    if not finite:
        arr = z.detach().cpu().double().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = sorted({int(i) for i in np.argwhere(bad)[:, 0]})[:5] if arr.ndim == 2 else []
            where = f" (rows {rows})" if rows else ""
            raise ValueError(f"{name} contains NaN or infinite values{where}; check the encoder output or the file "
                             "it was read from")
        raise ValueError(f"{name} holds finite values as large as {np.abs(arr).max():.3g}, beyond what float32 "
                         "(max 3.4e38) and a sum over them can hold; CLIP embeddings are unit-scale: check the file "
                         "it was read from")
    return z


def check_nonzero_rows(name: str, z: torch.Tensor) -> None:
    """Refuse (n, dim) rows of norm 0: an embedding without a direction (it normalises to nothing)."""
    zero = torch.nonzero(torch.linalg.vector_norm(z.double(), dim=-1) == 0).flatten().tolist()
    if zero:
        raise ValueError(f"{name} rows {zero[:5]} are all zeros; an embedding needs a direction (decoders and "
                         "cosine read only directions): drop those rows or check where they came from")


def check_same_dim(name_a: str, a: Sequence | np.ndarray | torch.Tensor,
                   name_b: str, b: Sequence | np.ndarray | torch.Tensor) -> None:
    """Raise when two embedding batches disagree in their last dimension."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{name_a} has dimension {a.shape[-1]} but {name_b} has {b.shape[-1]}; "
                         "embed both with the same CLIP model")


MAX_GUIDANCE = 100.0  # classifier-free guidance past this saturates every pixel; published models use 1-10


def check_guidance(name: str, scale: object) -> float:
    """A classifier-free guidance scale in [0, MAX_GUIDANCE] (1 = no guidance, 0 = unconditional) as float."""
    import math
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, {MAX_GUIDANCE:g}] (1 = no guidance, 0 = unconditional), "
                        f"got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale) or not 0 <= scale <= MAX_GUIDANCE:
        raise ValueError(f"{name} must lie in [0, {MAX_GUIDANCE:g}] (1 = no guidance, 0 = unconditional; "
                         f"published models use 1-10), got {scale!r}")
    return float(scale)


def check_nonneg_float(name: str, value: object) -> float:
    """A finite number >= 0 as float (eta, weights, thresholds), else ValueError naming `name`."""
    import math
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
