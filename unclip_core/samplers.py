"""Samplers as plain functions over a denoiser (x_t, t) -> predicted x0; classifier-free guidance wraps the network.

Every sampler walks a decreasing sequence of timesteps on the training grid (see `respace`) and ends at the
clean sample (abar = 1). Models always receive the original integer index t of the training grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from . import seeds
from .checks import check_choice, check_guidance, check_positive_int
from .diffusion import PREDICTIONS, Schedule

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""(x_t (B, ...), t (B,) long) -> predicted x0 (B, ...)."""

SPACINGS = ("leading", "trailing", "linspace")
VARIANCES = ("fixed_small", "fixed_large", "learned")


# ---- helpers ------------------------------------------------------------------------------------
def check_schedule(schedule: object) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a unclip_core.diffusion.Schedule (e.g. cosine_schedule()), "
                        f"got {type(schedule).__name__}")
    return schedule


def check_x(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch tensor of shape (B, ...), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, C, ...) with B >= 1, got {tuple(x.shape)}")
    return x


def as_generator(generator: torch.Generator | int | None, device: torch.device) -> torch.Generator | None:
    """A caller's generator or int seed -> the generator; None stays None (the sampler's caller owns seeding)."""
    if generator is None:
        return None
    try:
        return seeds.generator(generator, device)[0]
    except TypeError:
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}") from None


def gaussian_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def progress_steps(it: Iterable, progress: bool, desc: str, label: str | None = None) -> Iterable:
    """`it` behind a tqdm bar when progress is on; `label` names the stage ("decoder: DDIM")."""
    if not progress:
        return it
    from tqdm.auto import tqdm
    desc = desc if label is None else f"{label}: {desc}"
    return tqdm(it, desc=desc, total=len(it) if hasattr(it, "__len__") else None)


def call_denoiser(denoise: Denoiser, x: Tensor, t: int, want_variance: bool = False):
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    out = denoise(x, tt)
    if isinstance(out, tuple):
        if not want_variance:
            raise ValueError("the denoiser returned (x0, var_interp) but this sampler uses no learned variance; "
                             "build it with model_to_denoiser(..., with_variance=False) or pass variance='learned'")
        x0, v = out
        if not isinstance(v, Tensor) or v.shape != x.shape:
            raise ValueError(f"the denoiser's var_interp must have shape {tuple(x.shape)}, got "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    else:
        if want_variance:
            raise ValueError("variance='learned' needs a denoiser returning (x0, var_interp); build it with "
                             "model_to_denoiser(net, schedule, prediction, with_variance=True)")
        x0, v = out, None
    if not isinstance(x0, Tensor) or x0.shape != x.shape:
        raise ValueError(f"the denoiser must return predicted x0 of shape {tuple(x.shape)} like x_t, got "
                         f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}")
    return (x0, v) if want_variance else x0


def abar(schedule: Schedule, t: int) -> float:
    """abar_t on the training grid; t = -1 is the clean end (schedule.final_abar, 1 unless the stage says)."""
    return float(schedule.final_abar) if t < 0 else float(schedule.alphas_cumprod[t])


# ---- timesteps and denoisers --------------------------------------------------------------------
def respace(schedule: Schedule, n_steps: int, spacing: str = "leading") -> Tensor:
    """Decreasing integer timesteps (n_steps,) on the training grid (spacings of Lin et al. 2024, table 2).

    "leading": k * (T // n) as diffusers' DDIMScheduler; "trailing": round(T - k T / n) - 1, starts at T - 1;
    "linspace": round(linspace(0, T - 1, n)), as guided-diffusion's space_timesteps and Karlo's UnCLIPScheduler.
    """
    T = check_schedule(schedule).T
    n_steps = check_positive_int("n_steps", n_steps)
    if n_steps > T:
        raise ValueError(f"n_steps must be <= T={T} (the training steps of the schedule), got {n_steps}")
    check_choice("spacing", spacing, SPACINGS)
    k = np.arange(n_steps)
    if spacing == "leading":
        ts = k * (T // n_steps)
    elif spacing == "trailing":
        ts = np.round(T - k * (T / n_steps)) - 1
    else:
        ts = np.round(k * ((T - 1) / (n_steps - 1))) if n_steps > 1 else np.zeros(1)
    return torch.from_numpy(np.sort(ts.astype(np.int64))[::-1].copy())


def model_to_denoiser(net_fn: Callable[[Tensor, Tensor], Tensor], schedule: Schedule, prediction: str = "eps",
                      clip_x0: float | None = None, with_variance: bool = False) -> Callable:
    """Adapt a network (x_t, t) -> eps | x0 | v (optionally followed by C variance channels) into a Denoiser.

    Returns (x_t, t) -> x0, or (x_t, t) -> (x0, var_interp) with `with_variance` (Nichol & Dhariwal 2021, eq. 15).
    `clip_x0` clamps predicted x0 to [-clip_x0, clip_x0] (GLIDE uses 1 for images).
    """
    check_schedule(schedule)
    check_choice("prediction", prediction, PREDICTIONS)
    if not callable(net_fn):
        raise TypeError(f"net_fn must be callable as net_fn(x_t, t), got {type(net_fn).__name__}")
    if clip_x0 is not None and not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be None or > 0, got {clip_x0}")

    def denoise(x_t: Tensor, t: Tensor):
        out = net_fn(x_t, t)
        if not isinstance(out, Tensor):
            raise TypeError(f"the network must return a tensor, got {type(out).__name__}")
        C = x_t.shape[1]
        if out.shape[0] != x_t.shape[0] or out.shape[2:] != x_t.shape[2:] or out.shape[1] not in (C, 2 * C):
            raise ValueError(f"the network output has shape {tuple(out.shape)}; expected {C} or {2 * C} channels "
                             f"and otherwise the shape of x_t {tuple(x_t.shape)}")
        if with_variance and out.shape[1] != 2 * C:
            raise ValueError(f"with_variance=True needs a network with 2C = {2 * C} output channels "
                             f"(target, variance interpolation), got {out.shape[1]}")
        x0 = schedule.predict_x0(prediction, x_t, t, out[:, :C])
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        return (x0, out[:, C:]) if with_variance else x0

    return denoise


def classifier_free_guidance(net: Callable[..., Tensor], cond: Mapping[str, Tensor | None],
                             uncond: Mapping[str, Tensor | None], scale: float, *,
                             prepare: Callable[..., Mapping[str, object]] | None = None
                             ) -> Callable[[Tensor, Tensor], Tensor]:
    """Guided network output uncond + s (cond - uncond) from one batched forward (Ho & Salimans 2022; GLIDE).

    net(x, t, **cond) is the network. Cond and uncond are concatenated along the batch; guidance applies to the
    first C = x.shape[1] channels, the cond pass's extra channels (learned variance) are kept. scale = 1 runs
    only the cond pass. prepare(**condition) -> net's keyword arguments, when given, encodes the (joint)
    condition once for every step (a prior's prefix states, a decoder's context: DiffusionPrior / Decoder
    .prepare_condition); net(x, t, **prepared) must equal net(x, t, **condition).
    """
    if not callable(net):
        raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
    if not isinstance(cond, Mapping) or not isinstance(uncond, Mapping):
        raise TypeError(f"cond and uncond must be dicts of keyword -> tensor or None, got "
                        f"{type(cond).__name__} and {type(uncond).__name__}")
    check_guidance("guidance scale", scale)
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
    for k in cond:
        c, u = cond[k], uncond[k]
        if (c is None) != (u is None):
            raise ValueError(f"cond[{k!r}] and uncond[{k!r}] must both be tensors or both None, got "
                             f"{type(c).__name__} and {type(u).__name__}; pass a null tensor (e.g. zeros) for "
                             "the unconditional pass")
        if c is not None:
            if not isinstance(c, Tensor) or not isinstance(u, Tensor):
                raise TypeError(f"cond[{k!r}] and uncond[{k!r}] must be tensors, got "
                                f"{type(c).__name__} and {type(u).__name__}")
            if c.shape != u.shape:
                raise ValueError(f"cond[{k!r}] has shape {tuple(c.shape)} but uncond[{k!r}] has {tuple(u.shape)}")
    if prepare is not None and not callable(prepare):
        raise TypeError(f"prepare must be None or callable as prepare(**cond), got {type(prepare).__name__}")
    scale = float(scale)
    if scale == 1.0:
        joint = None
        kwargs = dict(cond) if prepare is None else dict(prepare(**cond))
    else:
        joint = {k: None if cond[k] is None else torch.cat([cond[k], uncond[k]]) for k in cond}
        kwargs = joint if prepare is None else dict(prepare(**joint))

    def guided(x: Tensor, t: Tensor) -> Tensor:
        B = x.shape[0]
        for k, c in cond.items():
            if c is not None and c.shape[0] != B:
                raise ValueError(f"cond[{k!r}] has batch {c.shape[0]} but x has batch {B}; they must match")
        if joint is None:
            return net(x, t, **kwargs)
        tt = t.expand(B) if t.ndim == 0 else t
        out = net(torch.cat([x, x]), torch.cat([tt, tt]), **kwargs)
        out_c, out_u = out[:B], out[B:]
        C = x.shape[1]
        mixed = out_u[:, :C] + scale * (out_c[:, :C] - out_u[:, :C])
        return torch.cat([mixed, out_c[:, C:]], dim=1)

    return guided


cfg_denoiser = classifier_free_guidance  # name used in docs/INTERFACES.md


# ---- samplers -----------------------------------------------------------------------------------
Callback = Callable[[int, int, Tensor], None]
"""callback(j, t, x): after sampler step j (0-based) from training timestep t, with the new x."""

def timesteps(schedule: Schedule, steps: int | Tensor | Sequence[int], spacing: str = "leading") -> list[int]:
    """A sampler's timesteps: an int n -> respace(schedule, n, spacing); a given sequence is checked (strictly
    decreasing integers on the training grid [0, T)) and used as it is, whatever `spacing` says."""
    schedule = check_schedule(schedule)
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        return respace(schedule, int(steps), spacing).tolist()
    if isinstance(steps, bool) or not isinstance(steps, (Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"steps must be a number of steps or a decreasing sequence of timesteps, got "
                        f"{type(steps).__name__} {steps!r}")
    ts = torch.as_tensor(steps)
    if ts.ndim != 1 or len(ts) == 0 or ts.dtype.is_floating_point or ts.dtype == torch.bool:
        raise ValueError(f"timesteps must be a non-empty 1-d sequence of integers, got {steps!r}")
    ts_list = [int(t) for t in ts]
    if any(b >= a for a, b in zip(ts_list, ts_list[1:])) or ts_list[0] >= schedule.T or ts_list[-1] < 0:
        raise ValueError(f"timesteps must decrease strictly within [0, {schedule.T}) (the training grid), got "
                         f"{ts_list[:6]}{'...' if len(ts_list) > 6 else ''}")
    return ts_list


def _report(callback: Callback | None, j: int, t: int, x: Tensor) -> None:
    if callback is not None:
        callback(j, t, x)


def sample_ddpm(denoise: Denoiser, x_T: Tensor, schedule: Schedule, steps: int | Tensor | None = None,
                variance: str = "fixed_small", generator: torch.Generator | int | None = None,
                progress: bool = False, spacing: str = "linspace", *, label: str | None = None,
                callback: Callback | None = None) -> Tensor:
    """Ancestral sampling of p(x_{t-1}|x_t) (Ho et al. 2020), respaced as Nichol & Dhariwal 2021, sec. 4.

    variance: "fixed_small" (beta~), "fixed_large" (beta) or "learned" (eq. 15; the denoiser returns
    (x0, var_interp), see model_to_denoiser(with_variance=True)). steps: a number (None: all T) or the timesteps.
    """
    schedule = check_schedule(schedule)
    x = check_x("x_T", x_T)
    check_choice("variance", variance, VARIANCES)
    ts = torch.tensor(timesteps(schedule, schedule.T if steps is None else steps, spacing))
    sub = schedule.respaced(ts.flip(0))  # index i of `sub` is original timestep ts_up[i]
    n = len(ts)
    g = as_generator(generator, x.device)
    learned = variance == "learned"
    for j in progress_steps(range(n), progress, "DDPM", label):
        t, i = int(ts[j]), n - 1 - j
        out = call_denoiser(denoise, x, t, learned)
        x0, v = out if learned else (out, None)
        ii = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        mean, _, _ = sub.q_posterior(x0, x, ii)
        if i == 0:
            x = mean
        else:
            if variance == "fixed_small":
                log_var = torch.log(sub.posterior_variance[i]).to(x.dtype)
            elif variance == "fixed_large":
                log_var = torch.log(sub.betas[i]).to(x.dtype)
            else:
                log_var = sub.learned_log_variance(v, ii)
            x = mean + torch.exp(0.5 * log_var) * gaussian_like(x, g)
        _report(callback, j, t, x)
    return x


def sample_unclip(denoise: Denoiser, x_T: Tensor, schedule: Schedule, steps: int | Tensor = 25,
                  variance: str = "learned_range", generator: torch.Generator | int | None = None,
                  progress: bool = False, *, label: str | None = None, callback: Callback | None = None) -> Tensor:
    """Karlo's unCLIP sampler (diffusers' UnCLIPScheduler): sample_ddpm on "linspace" steps.

    variance: "learned_range" (the denoiser returns (x0, var_interp)) or "fixed_small_log" (beta~).
    """
    check_choice("variance", variance, ("learned_range", "fixed_small_log"))
    mapped = "learned" if variance == "learned_range" else "fixed_small"
    return sample_ddpm(denoise, x_T, schedule, steps, mapped, generator, progress, spacing="linspace", label=label,
                       callback=callback)


def check_eta(eta: float) -> float:
    """eta of DDIM: a number in [0, 1]."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
    return float(eta)


def ddim_update(x_t: Tensor, x0: Tensor, a_t: float, a_s: float, eta: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
    """One DDIM step x_t -> x_s given predicted x0 and abar at t and s (Song et al. 2021, eq. 12)."""
    eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
    sigma = eta * math.sqrt((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s))
    x_s = math.sqrt(a_s) * x0 + math.sqrt(max(1.0 - a_s - sigma ** 2, 0.0)) * eps
    return x_s + sigma * gaussian_like(x_s, generator) if sigma > 0 else x_s


def sample_ddim(denoise: Denoiser, x_T: Tensor, schedule: Schedule, steps: int | Tensor, eta: float = 0.0,
                generator: torch.Generator | int | None = None, spacing: str = "leading",
                progress: bool = False, *, label: str | None = None, callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta=0 is deterministic and invertible, eta=1 matches DDPM's variance.

    steps: a number of steps (respaced with `spacing`) or the decreasing timesteps themselves. With eta > 0, one
    noise tensor is drawn per step except the last (whose sigma is 0).
    """
    schedule = check_schedule(schedule)
    x = check_x("x_T", x_T)
    eta = check_eta(eta)
    ts = timesteps(schedule, steps, spacing)
    g = as_generator(generator, x.device)
    for j in progress_steps(range(len(ts)), progress, "DDIM", label):
        t, s = ts[j], (ts[j + 1] if j + 1 < len(ts) else -1)
        a_t, a_s = abar(schedule, t), abar(schedule, s)
        x = ddim_update(x, call_denoiser(denoise, x, t), a_t, a_s, eta, g)
        _report(callback, j, t, x)
    return x


def invert_ddim(denoise: Denoiser, x0: Tensor, schedule: Schedule, steps: int | Tensor, spacing: str = "leading",
                n_fixed_point: int = 0, progress: bool = False, *, label: str | None = None,
                callback: Callback | None = None) -> Tensor:
    """Deterministic DDIM inversion x0 -> x_T, the eta=0 ODE run forwards (Song et al. 2021, sec. 4.3).

    steps: as sample_ddim's (the same decreasing timesteps; inversion walks them upwards). Each step s -> t
    evaluates the denoiser at (x_s, t). With `n_fixed_point` > 0, each step then solves ddim_step(x_t) = x_s for
    x_t by that many more evaluations (Richardson iteration with Barzilai-Borwein step sizes), so that sample_ddim
    with the same steps reconstructs x0 up to the solver's tolerance. callback(j, t, x_t) after each step.
    """
    schedule = check_schedule(schedule)
    x = check_x("x0", x0)
    n_fixed_point = check_positive_int("n_fixed_point", n_fixed_point, minimum=0)
    ts = timesteps(schedule, steps, spacing)[::-1]
    dims = tuple(range(1, x.ndim))
    for j in progress_steps(range(len(ts)), progress, "DDIM inversion", label):
        t, s = ts[j], (ts[j - 1] if j > 0 else -1)
        a_t, a_s = abar(schedule, t), abar(schedule, s)
        k = math.sqrt((1.0 - a_s) / (1.0 - a_t))
        r = math.sqrt(a_t / a_s)
        x_s = x

        def residual(x_t: Tensor) -> Tensor:
            # G(x_t) = ddim_step(x_t; t -> s) - x_s, with ddim_step = sqrt(a_s) x0 + k (x_t - sqrt(a_t) x0)
            x0_hat = call_denoiser(denoise, x_t, t)
            return math.sqrt(a_s) * x0_hat + k * (x_t - math.sqrt(a_t) * x0_hat) - x_s

        # x - r G(x) is the classic inversion step: eps(x_s, t) used in place of eps(x_t, t).
        x_t, G = x_s, residual(x_s)
        x_prev = G_prev = None
        for it in range(n_fixed_point + 1):
            step = torch.full((x.shape[0],) + (1,) * (x.ndim - 1), r, dtype=x.dtype, device=x.device)
            if x_prev is not None:
                dx, dG = x_t - x_prev, G - G_prev
                num, den = (dx * dG).sum(dims, keepdim=True), (dx * dx).sum(dims, keepdim=True)
                ok = (num > 0) & (den > 0)
                step = torch.where(ok, den / torch.where(ok, num, torch.ones_like(num)), step)
            x_prev, G_prev = x_t, G
            x_t = x_t - step * G
            if it < n_fixed_point:
                G = residual(x_t)
        x = x_t
        _report(callback, j, t, x)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x_T: Tensor, schedule: Schedule, steps: int | Tensor,
                    spacing: str = "trailing", progress: bool = False, *, label: str | None = None,
                    callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M), multistep data prediction on discrete-time lambda = log(alpha/sigma) (Lu et al. 2022, alg. 2).

    The first step and the last (to sigma = 0) are first order, as in diffusers' DPMSolverMultistepScheduler.
    """
    schedule = check_schedule(schedule)
    x = check_x("x_T", x_T)
    ts = timesteps(schedule, steps, spacing)
    x0_prev, h_prev = None, None
    for j in progress_steps(range(len(ts)), progress, "DPM-Solver++ 2M", label):
        t, s = ts[j], (ts[j + 1] if j + 1 < len(ts) else -1)
        x0 = call_denoiser(denoise, x, t)
        if s < 0:
            x = x0  # sigma_s = 0, alpha_s = 1: the first-order step lands on the denoised sample
        else:
            a_t, a_s = abar(schedule, t), abar(schedule, s)
            alpha_t, sigma_t = math.sqrt(a_t), math.sqrt(1.0 - a_t)
            alpha_s, sigma_s = math.sqrt(a_s), math.sqrt(1.0 - a_s)
            h = math.log(alpha_s / sigma_s) - math.log(alpha_t / sigma_t)
            if x0_prev is None:
                D = x0
            else:
                r = h_prev / h
                D = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
            x = (sigma_s / sigma_t) * x - alpha_s * math.expm1(-h) * D
            x0_prev, h_prev = x0, h
        _report(callback, j, t, x)
    return x


# ---- the registry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerSpec:
    """A sampler by name: how it walks the steps, and which settings it takes.

    run(denoise, x_T, schedule, timesteps, *, eta, variance, generator, progress, label, callback) -> x0.
    `honours_eta`: eta shapes its noise (DDIM); the others reject eta != 0 rather than ignore it.
    `variances`: the variance choices it takes (first = default), () when it has none. `learned`: the variance
    choice that needs a denoiser returning (x0, var_interp) (model_to_denoiser(with_variance=True)), or None.
    """

    name: str
    run: Callable[..., Tensor]
    spacing: str
    honours_eta: bool
    stochastic: bool
    description: str
    variances: tuple[str, ...] = ()
    learned: str | None = None
    clamps_x0: bool = False  # clamps predicted x0 whatever is asked (diffusers' UnCLIPScheduler)
    single_step: bool = False  # takes exactly one step (a non-diffusion network evaluated once)

    def needs_variance(self, variance: str | None) -> bool:
        return self.learned is not None and (variance or self.variances[0]) == self.learned


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler to the registry every pipeline, CLI and dashboard reads its choices from."""
    if not isinstance(spec, SamplerSpec):
        raise TypeError(f"register a SamplerSpec, got {type(spec).__name__}")
    check_choice("spacing", spec.spacing, SPACINGS)
    SAMPLERS[spec.name] = spec
    return spec


def sampler_names() -> tuple[str, ...]:
    """The registered sampler names, in registration order."""
    return tuple(SAMPLERS)


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler `name` (ValueError listing the choices otherwise)."""
    check_choice("sampler", name, sampler_names())
    return SAMPLERS[name]


def check_sampler_settings(name: str, *, eta: float = 0.0, variance: str | None = None) -> SamplerSpec:
    """The sampler, after checking that it takes `eta` and `variance` (an ignored setting is an error)."""
    spec = get_sampler(name)
    eta = check_eta(eta)
    if eta != 0.0 and not spec.honours_eta:
        raise ValueError(f"sampler {name!r} does not take eta (got eta={eta:g}); only "
                         f"{[s.name for s in SAMPLERS.values() if s.honours_eta]} do: pass eta=0 or another sampler")
    if variance is not None:
        if not spec.variances:
            raise ValueError(f"sampler {name!r} takes no variance setting (got {variance!r})")
        check_choice(f"variance of sampler {name!r}", variance, spec.variances)
    return spec


def run_sampler(name: str, denoise: Denoiser, x_T: Tensor, schedule: Schedule, steps: int | Tensor, *,
                eta: float = 0.0, variance: str | None = None, spacing: str | None = None,
                generator: torch.Generator | int | None = None, progress: bool = False, label: str | None = None,
                callback: Callback | None = None) -> Tensor:
    """Sample with the registered sampler `name`: steps is a number (respaced with `spacing`, default the
    sampler's own) or the timesteps themselves; eta and variance only where the sampler takes them."""
    spec = check_sampler_settings(name, eta=eta, variance=variance)
    ts = timesteps(schedule, steps, spacing or spec.spacing)
    if spec.single_step and len(ts) != 1:
        raise ValueError(f"sampler {name!r} evaluates its network once: pass 1 step, got {len(ts)}")
    return spec.run(denoise, x_T, schedule, ts, eta=eta, variance=variance, generator=generator, progress=progress,
                    label=label, callback=callback)


register_sampler(SamplerSpec(
    "ddim", lambda d, x, sch, ts, *, eta, variance, generator, progress, label, callback: sample_ddim(
        d, x, sch, ts, eta=eta, generator=generator, progress=progress, label=label, callback=callback),
    spacing="trailing", honours_eta=True, stochastic=False,
    description="DDIM (Song et al. 2021): deterministic at eta 0 (invertible), DDPM-like noise at eta 1"))
register_sampler(SamplerSpec(
    "ddpm", lambda d, x, sch, ts, *, eta, variance, generator, progress, label, callback: sample_ddpm(
        d, x, sch, ts, variance or "fixed_small", generator, progress, label=label, callback=callback),
    spacing="linspace", honours_eta=False, stochastic=True, variances=VARIANCES, learned="learned",
    description="ancestral DDPM (Ho et al. 2020), respaced (Nichol & Dhariwal 2021)"))
register_sampler(SamplerSpec(
    "dpmpp_2m", lambda d, x, sch, ts, *, eta, variance, generator, progress, label, callback: sample_dpmpp_2m(
        d, x, sch, ts, progress=progress, label=label, callback=callback),
    spacing="trailing", honours_eta=False, stochastic=False,
    description="DPM-Solver++(2M) (Lu et al. 2022): deterministic, good at 15-25 steps"))
register_sampler(SamplerSpec(
    "unclip", lambda d, x, sch, ts, *, eta, variance, generator, progress, label, callback: sample_unclip(
        d, x, sch, ts, variance or "fixed_small_log", generator, progress, label=label, callback=callback),
    spacing="linspace", honours_eta=False, stochastic=True, variances=("fixed_small_log", "learned_range"),
    learned="learned_range", clamps_x0=True,
    description="Karlo's UnCLIPScheduler: ancestral on linspace steps, learned-range or fixed-small variance"))


def sample_single_pass(denoise: Denoiser, x_T: Tensor, schedule: Schedule, steps: int | Tensor = 1, *,
                       progress: bool = False, label: str | None = None, callback: Callback | None = None) -> Tensor:
    """One evaluation of a network that maps noise to a sample in one pass (ECLIPSE priors, Patel et al. 2024):
    x0 = denoise(x_T, t) at the single timestep (which such a network does not read)."""
    schedule = check_schedule(schedule)
    x = check_x("x_T", x_T)
    ts = timesteps(schedule, steps, "trailing")
    if len(ts) != 1:
        raise ValueError(f"a single-pass sample takes 1 step, got {len(ts)}")
    for j in progress_steps(range(1), progress, "single pass", label):
        x = call_denoiser(denoise, x, ts[0])
        _report(callback, j, ts[0], x)
    return x


register_sampler(SamplerSpec(
    "single_pass", lambda d, x, sch, ts, *, eta, variance, generator, progress, label, callback: sample_single_pass(
        d, x, sch, ts, progress=progress, label=label, callback=callback),
    spacing="trailing", honours_eta=False, stochastic=False, single_step=True,
    description="one network evaluation from noise: non-diffusion priors (ECLIPSE)"))
