"""Geometry of CLIP latents on the unit sphere: normalise, slerp, weighted sums, directions, text diffs.

Every function accepts numpy arrays or torch tensors and returns the same kind (torch keeps its device
and dtype). Arithmetic runs in float64 (float32 on devices without float64) and is cast back at the end.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from unclip_core.checks import check_embeddings, check_positive_int, check_same_dim

Array = np.ndarray | torch.Tensor

# Above this cosine, slerp falls back to lerp. There omega < 1.42e-3 rad (0.08 degrees) and lerp differs
# from slerp by at most omega**2 / 8 < 2.5e-7 of the norm, below float32 resolution, so the switch is
# continuous in practice; below it sin(omega) is far from 0 and the float64 arccos is accurate.
PARALLEL_COS = 1.0 - 1e-6
# Below this cosine the two points are (nearly) antipodal: every great circle through one passes through
# the other, so the slerp path is undefined (and sin(omega) -> 0 in the denominator).
ANTIPODAL_COS = -1.0 + 1e-6


def _work(z: Array) -> Array:
    """Upcast for the arithmetic: float64 for numpy and torch (float32 where the device lacks float64)."""
    if isinstance(z, torch.Tensor):
        return z.to(torch.float32 if z.device.type == "mps" else torch.float64)
    return np.asarray(z, dtype=np.float64)


def _back(out: Array, like: Array) -> Array:
    """Cast a result back to the dtype (and kind) of `like`."""
    if isinstance(like, torch.Tensor):
        return out.to(like.dtype)
    return out.astype(like.dtype, copy=False)


def _as_kind(x: Array, like: Array) -> Array:
    """Convert `x` to the array kind of `like` (same device for torch), keeping the work precision."""
    if isinstance(like, torch.Tensor):
        if isinstance(x, torch.Tensor):
            return x.to(device=like.device, dtype=_work(like).dtype)
        return torch.as_tensor(np.asarray(x), device=like.device, dtype=_work(like).dtype)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _norm(z: Array) -> Array:
    """L2 norm over the last axis, keeping it (…, 1)."""
    if isinstance(z, torch.Tensor):
        return torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return np.linalg.norm(z, axis=-1, keepdims=True)


def _dot(a: Array, b: Array) -> Array:
    """Dot product over the last axis, keeping it (…, 1)."""
    if isinstance(a, torch.Tensor):
        return (a * b).sum(dim=-1, keepdim=True)
    return (a * b).sum(axis=-1, keepdims=True)


def _unit(name: str, z: Array) -> Array:
    """Work-precision unit vectors; ValueError naming the rows whose norm is zero."""
    n = _norm(z)
    zero = (n[..., 0] == 0)
    if bool(zero.any()):
        rows = np.flatnonzero(np.asarray(zero.cpu() if isinstance(zero, torch.Tensor) else zero).reshape(-1))
        raise ValueError(f"{name} has zero norm at row(s) {rows[:10].tolist()}; a zero vector has no "
                         "direction to normalise: drop those rows or check how they were computed")
    return z / n


def normalize(z: Array) -> Array:
    """L2-normalise embeddings along the last axis; z (dim,) or (n, dim) -> same shape, unit norm."""
    check_embeddings("z", z, allow_1d=True)
    return _back(_unit("z", _work(z)), z)


def _cos_omega(a_u: Array, b_u: Array) -> Array:
    """Cosine of the angle between unit vectors: the DOT PRODUCT, clipped to [-1, 1], shape (…, 1)."""
    c = _dot(a_u, b_u)
    return c.clamp(-1.0, 1.0) if isinstance(c, torch.Tensor) else np.clip(c, -1.0, 1.0)


def _slerp_work(a: Array, b: Array, t: Array, a_name: str = "a", b_name: str = "b") -> Array:
    """Slerp in work precision; a, b broadcast to (..., d); t (n_t,) -> (n_t, ..., d)."""
    cos = _cos_omega(_unit(a_name, a), _unit(b_name, b))  # (..., 1)
    if bool((cos < ANTIPODAL_COS).any()):
        worst = float(cos.min())
        raise ValueError(f"{a_name} and {b_name} are (nearly) antipodal (cos = {worst:.8f}): every great circle "
                         f"through {a_name} also passes through {b_name}, so the slerp path between them is "
                         "undefined; pass points that are not opposite, or slerp via an intermediate point")
    is_torch = isinstance(cos, torch.Tensor)
    omega = torch.arccos(cos) if is_torch else np.arccos(cos)
    sin = torch.sin if is_torch else np.sin
    where = torch.where if is_torch else np.where
    parallel = cos > PARALLEL_COS
    safe_omega = where(parallel, torch.ones_like(omega) if is_torch else np.ones_like(omega), omega)
    tt = t.reshape((-1,) + (1,) * a.ndim)  # (n_t, 1.., 1)
    w_a = where(parallel, 1.0 - tt, sin((1.0 - tt) * safe_omega) / sin(safe_omega))
    w_b = where(parallel, tt, sin(tt * safe_omega) / sin(safe_omega))
    return w_a * a + w_b * b  # (n_t, ..., d)


def _check_t(t: float | Sequence[float] | Array, like: Array) -> tuple[Array, bool]:
    """Return t as a 1-D work-precision array and whether it was a scalar."""
    if isinstance(t, bool):
        raise TypeError(f"t must be a float or a 1-D array of floats, got bool {t!r}")
    scalar = isinstance(t, (int, float, np.integer, np.floating)) or (
        isinstance(t, (np.ndarray, torch.Tensor)) and t.ndim == 0)
    try:
        arr = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"t must be a float or a 1-D array of floats, got {type(t).__name__}") from None
    if arr.ndim > 1:
        raise ValueError(f"t must be a float or a 1-D array, got shape {arr.shape}; flatten it")
    if arr.size == 0:
        raise ValueError("t is empty; pass at least one interpolation weight, e.g. t=0.5")
    if not np.isfinite(arr).all():
        raise ValueError(f"t must be finite, got {arr.tolist()}")
    return _as_kind(arr.reshape(-1), like), scalar


def slerp(a: Array, b: Array, t: float | Sequence[float] | Array) -> Array:
    """Spherical interpolation (Shoemake 1985) used by unCLIP for z_i (Ramesh et al. 2022, sec. 3.1).

    The angle is omega = arccos(<a/|a|, b/|b|>), from the dot product of the normalised vectors (not
    element-wise, as some unCLIP pipelines do), and out = sin((1-t) omega)/sin omega a + sin(t omega)/sin omega b.
    Falls back to lerp when cos omega > PARALLEL_COS (1 - 1e-6); antipodal points raise ValueError.
    a, b: (dim,) or (n, dim), broadcast against each other; unit inputs give unit outputs, and t=0 / t=1
    return a / b exactly. t: a float -> output of the broadcast shape of a, b; a 1-D array of n_t values
    -> (n_t, dim) for 1-D a, b, (n_t, n, dim) for batched ones. t outside [0, 1] extrapolates on the circle.
    """
    check_embeddings("a", a, allow_1d=True)
    check_embeddings("b", b, allow_1d=True)
    check_same_dim("a", a, "b", b)
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        raise TypeError(f"a and b must be the same kind of array, got {type(a).__name__} and "
                        f"{type(b).__name__}; convert one with torch.as_tensor or .numpy()")
    if a.ndim == 2 and b.ndim == 2 and a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"a has {a.shape[0]} rows but b has {b.shape[0]}; pass equal batches, or one row "
                         "to interpolate against every row of the other")
    aw, bw = _work(a), _as_kind(b, a)
    if isinstance(aw, torch.Tensor):
        aw, bw = torch.broadcast_tensors(aw, bw)
    else:
        aw, bw = np.broadcast_arrays(aw, bw)
    tw, scalar = _check_t(t, a)
    out = _slerp_work(aw, bw, tw)
    return _back(out[0] if scalar else out, a)


def weighted_sum(z: Array, weights: Sequence[float] | Array) -> Array:
    """Renormalised weighted sum normalize(sum_i w_i z_i) of embeddings (concept mixing in CLIP space).

    z: (n, dim); weights: (n,) -> (dim,), or (m, n) for m mixtures at once -> (m, dim).
    """
    check_embeddings("z", z)
    w = np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != z.shape[0]:
        raise ValueError(f"weights must have shape ({z.shape[0]},) or (m, {z.shape[0]}) to match the "
                         f"{z.shape[0]} rows of z, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weights contain NaN or infinite values")
    s = _as_kind(w, z) @ _work(z)
    return _back(_unit("weighted_sum (the weights cancel the embeddings)", s), z)


def project_onto(z: Array, direction: Array) -> Array:
    """Component of z along a direction, (z . u) u with u = direction/|direction|; z (dim,) or (n, dim)."""
    check_embeddings("z", z, allow_1d=True)
    check_embeddings("direction", direction, allow_1d=True)
    check_same_dim("z", z, "direction", direction)
    if direction.ndim == 2 and direction.shape[0] != 1:
        raise ValueError(f"direction must be one vector, shape ({direction.shape[-1]},), got shape "
                         f"{tuple(direction.shape)}")
    zw = _work(z)
    u = _unit("direction", _as_kind(direction, z).reshape(-1))
    return _back(_dot(zw, u) * u, z)


def remove_direction(z: Array, direction: Array, renormalize: bool = True) -> Array:
    """z minus its component along a direction (z - (z . u) u), renormalised to the sphere by default."""
    proj = project_onto(z, direction)
    out = _work(z) - _work(proj)
    if renormalize:
        out = _unit("z with the direction removed (z is parallel to direction)", out)
    return _back(out, z)


def text_diff_direction(z_t: Array, z_t0: Array | None = None) -> Array:
    """Text-diff vector of DALL·E 2 (Ramesh et al. 2022, sec. 3.3): normalize(z_t - z_t0), or normalize(z_t)."""
    check_embeddings("z_t", z_t, allow_1d=True)
    if z_t0 is None:
        return normalize(z_t)
    check_embeddings("z_t0", z_t0, allow_1d=True)
    check_same_dim("z_t", z_t, "z_t0", z_t0)
    d = _work(z_t) - _as_kind(z_t0, z_t)
    return _back(_unit("z_t - z_t0 (z_t equals z_t0: the captions embed identically)", d), z_t)


def _check_theta(theta_max: float, n_steps: int) -> np.ndarray:
    """Validate theta_max in [0, 1] and n_steps >= 2; return linspace(0, theta_max, n_steps)."""
    if isinstance(theta_max, bool) or not isinstance(theta_max, (int, float, np.integer, np.floating)):
        raise TypeError(f"theta_max must be a float in [0, 1], got {type(theta_max).__name__}")
    if not 0.0 <= float(theta_max) <= 1.0:
        raise ValueError(f"theta_max must lie in [0, 1] (a fraction of the angle from z_i to the text diff; "
                         f"the paper uses 0.25-0.5), got {theta_max}")
    n_steps = check_positive_int("n_steps", n_steps, minimum=2)
    return np.linspace(0.0, float(theta_max), n_steps)


def text_diff_path(z_i: Array, z_t: Array, z_t0: Array | None = None, theta_max: float = 0.5,
                   n_steps: int = 8) -> Array:
    """Text diffs (Ramesh et al. 2022, sec. 3.3): z_theta = slerp(z_i, normalize(z_t - z_t0), theta).

    theta runs over linspace(0, theta_max, n_steps), theta_max in [0, 1]. z_i (dim,) -> (n_steps, dim);
    z_i (n, dim) -> (n_steps, n, dim). Row 0 is z_i itself.
    """
    thetas = _check_theta(theta_max, n_steps)
    check_embeddings("z_i", z_i, allow_1d=True)
    d = text_diff_direction(z_t, z_t0)
    check_same_dim("z_i", z_i, "z_t", z_t)
    if d.ndim == 2 and d.shape[0] != 1:
        raise ValueError(f"z_t must be one caption embedding, shape ({d.shape[-1]},), got shape "
                         f"{tuple(d.shape)}")
    zw = _work(z_i)
    dw = _as_kind(d, z_i).reshape(-1)
    if zw.ndim == 2:
        dw = dw.expand_as(zw) if isinstance(dw, torch.Tensor) else np.broadcast_to(dw, zw.shape)
    out = _slerp_work(zw, dw, _as_kind(thetas, z_i), a_name="z_i", b_name="the text diff direction")
    return _back(out, z_i)


def text_diff_frame(z_i: Array, z_t: Array, z_t0: Array | None = None, theta_max: float = 0.5,
                    n_steps: int = 8) -> pd.DataFrame:
    """Tidy summary of a text-diff path: one row per step with theta, norm and cosines to z_i, z_t, d.

    z_i (dim,). Columns: step, theta, norm, cos_z_i, cos_z_t, cos_d (d = normalize(z_t - z_t0)).
    """
    check_embeddings("z_i", z_i, allow_1d=True)
    if z_i.ndim == 2 and z_i.shape[0] != 1:
        raise ValueError(f"z_i must be one image embedding for text_diff_frame, got shape {tuple(z_i.shape)}; "
                         "call text_diff_path for batches")
    path = _as_kind(text_diff_path(z_i, z_t, z_t0, theta_max, n_steps), np.empty(0)).reshape(n_steps, -1)
    unit = path / np.linalg.norm(path, axis=1, keepdims=True)

    def cos_to(v: Array) -> np.ndarray:
        v = _as_kind(v, np.empty(0)).reshape(-1)
        return unit @ (v / np.linalg.norm(v))

    return pd.DataFrame({
        "step": np.arange(n_steps),
        "theta": _check_theta(theta_max, n_steps),
        "norm": np.linalg.norm(path, axis=1),
        "cos_z_i": cos_to(z_i),
        "cos_z_t": cos_to(z_t),
        "cos_d": cos_to(text_diff_direction(z_t, z_t0)),
    })
