"""Gaussian diffusion maths: noise schedules, q(x_t|x_0), training targets, losses (Ho et al. 2020).

Conventions: `T` training steps; timesteps `t` are integer indices in [0, T) on the training grid;
`alphas_cumprod[t]` is alpha-bar_t, the signal fraction of x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps.
Schedules hold float64 tensors; every method casts its coefficients to the dtype of the tensors it gets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor

from .checks import check_choice, check_positive_int

PREDICTIONS = ("eps", "x0", "v")


def _frozen_copy(x: Tensor) -> Tensor:
    return x.detach().to(torch.float64).clone()


@dataclass(frozen=True, eq=False, repr=False)
class Schedule:
    """A discrete noise schedule beta_1..beta_T and the coefficients derived from it (Ho et al. 2020, sec. 2)."""

    betas: Tensor
    # abar at the clean end (t = -1) where a DDIM step lands last: 1, or alphas_cumprod[0] (diffusers' DDIMScheduler
    # with set_alpha_to_one=False, as Stable Diffusion 2.x's)
    final_abar: float = 1.0
    alphas: Tensor = field(init=False)
    alphas_cumprod: Tensor = field(init=False)
    alphas_cumprod_prev: Tensor = field(init=False)
    posterior_variance: Tensor = field(init=False)
    posterior_log_variance_clipped: Tensor = field(init=False)
    posterior_mean_coef1: Tensor = field(init=False)
    posterior_mean_coef2: Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = self.betas
        if not isinstance(betas, Tensor):
            raise TypeError(f"betas must be a 1-D torch tensor, got {type(betas).__name__}; "
                            "use Schedule.from_betas(...) to build one from a list or array")
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor of shape (T,), got shape {tuple(betas.shape)}")
        betas = _frozen_copy(betas)
        if not bool(torch.isfinite(betas).all()) or bool((betas <= 0).any()) or bool((betas > 1).any()):
            raise ValueError(f"betas must lie in (0, 1], got min {betas.min().item():.3g} and max "
                             f"{betas.max().item():.3g}; clip them (e.g. to 0.999 as Nichol & Dhariwal 2021)")
        if not 0.0 < float(self.final_abar) <= 1.0:
            raise ValueError(f"final_abar must lie in (0, 1], got {self.final_abar}")
        object.__setattr__(self, "final_abar", float(self.final_abar))
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        # post_var[0] == 0: clip the log as improved-diffusion does (it is never used for noise at t=0).
        log_clip = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(betas) > 1 else torch.log(betas)
        s = object.__setattr__
        s(self, "betas", betas)
        s(self, "alphas", alphas)
        s(self, "alphas_cumprod", ac)
        s(self, "alphas_cumprod_prev", ac_prev)
        s(self, "posterior_variance", post_var)
        s(self, "posterior_log_variance_clipped", log_clip)
        s(self, "posterior_mean_coef1", betas * ac_prev.sqrt() / (1.0 - ac))
        s(self, "posterior_mean_coef2", (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac))

    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        """Build a schedule from any 1-D sequence of betas in (0, 1]."""
        return cls(torch.as_tensor(betas, dtype=torch.float64))

    @property
    def T(self) -> int:
        """Number of training steps."""
        return int(self.betas.shape[0])

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return (f"Schedule(T={self.T}, beta_0={self.betas[0].item():.3g}, beta_T={self.betas[-1].item():.3g}, "
                f"alpha_bar_T={self.alphas_cumprod[-1].item():.3g})")

    # ---- indexing ---------------------------------------------------------------------------------
    def _t(self, t: Tensor | int, x: Tensor, name: str = "t") -> Tensor:
        """Validate t (int or integer tensor (B,) / ()) and return it as a long tensor (B,) on x's device."""
        if isinstance(t, bool) or not isinstance(t, (int, Tensor)):
            raise TypeError(f"{name} must be an int or an integer tensor of shape (B,), got {type(t).__name__}")
        t = torch.as_tensor(t, device=x.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
            raise TypeError(f"{name} must hold integer timestep indices in [0, {self.T}), got dtype {t.dtype}; "
                            "pass t.long() (respaced samplers pass the original training index)")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"{name} must have shape (B,) = ({x.shape[0]},) matching the batch, got shape "
                             f"{tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"{name} must lie in [0, {self.T}), got values in [{int(t.min())}, {int(t.max())}]")
        return t.long()

    def _at(self, arr: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """arr[t] broadcast to x: (B, 1, 1, ...) in x's dtype."""
        out = arr.to(x.device)[t.to(x.device)]
        return out.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    @staticmethod
    def _same_shape(**tensors: Tensor) -> None:
        items = list(tensors.items())
        for name, v in items:
            if not isinstance(v, Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(v).__name__}")
        ref_name, ref = items[0]
        for name, v in items[1:]:
            if v.shape != ref.shape:
                raise ValueError(f"{name} has shape {tuple(v.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
                                 "they must match")

    # ---- forward process and conversions ----------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """Sample q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with the given noise (Ho et al. 2020, eq. 4)."""
        self._same_shape(x0=x0, eps=eps)
        t = self._t(t, x0)
        ac = self._at(self.alphas_cumprod, t, x0)
        return ac.sqrt() * x0 + (1.0 - ac).sqrt() * eps

    def x0_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (Ho et al. 2020, eq. 15)."""
        self._same_shape(x_t=x_t, eps=eps)
        ac = self._at(self.alphas_cumprod, self._t(t, x_t), x_t)
        return (x_t - (1.0 - ac).sqrt() * eps) / ac.sqrt()

    def eps_from_x0(self, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
        self._same_shape(x_t=x_t, x0=x0)
        ac = self._at(self.alphas_cumprod, self._t(t, x_t), x_t)
        return (x_t - ac.sqrt() * x0) / (1.0 - ac).sqrt()

    def v_target(self, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, sec. 4)."""
        self._same_shape(x0=x0, eps=eps)
        ac = self._at(self.alphas_cumprod, self._t(t, x0), x0)
        return ac.sqrt() * eps - (1.0 - ac).sqrt() * x0

    def x0_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (Salimans & Ho 2022)."""
        self._same_shape(x_t=x_t, v=v)
        ac = self._at(self.alphas_cumprod, self._t(t, x_t), x_t)
        return ac.sqrt() * x_t - (1.0 - ac).sqrt() * v

    def eps_from_v(self, x_t: Tensor, t: Tensor | int, v: Tensor) -> Tensor:
        """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v (Salimans & Ho 2022)."""
        self._same_shape(x_t=x_t, v=v)
        ac = self._at(self.alphas_cumprod, self._t(t, x_t), x_t)
        return (1.0 - ac).sqrt() * x_t + ac.sqrt() * v

    def predict_x0(self, prediction: str, x_t: Tensor, t: Tensor | int, out: Tensor) -> Tensor:
        """Convert a network output of kind `prediction` ("eps", "x0" or "v") into predicted x0."""
        check_choice("prediction", prediction, PREDICTIONS)
        if prediction == "eps":
            return self.x0_from_eps(x_t, t, out)
        if prediction == "v":
            return self.x0_from_v(x_t, t, out)
        self._same_shape(x_t=x_t, out=out)
        self._t(t, x_t)
        return out

    def training_target(self, kind: str, x0: Tensor, eps: Tensor, t: Tensor | int) -> Tensor:
        """Regression target for a network predicting `kind` in {"eps", "x0", "v"}."""
        check_choice("kind", kind, PREDICTIONS)
        if kind == "eps":
            self._same_shape(x0=x0, eps=eps)
            self._t(t, x0)
            return eps
        if kind == "x0":
            self._same_shape(x0=x0, eps=eps)
            self._t(t, x0)
            return x0
        return self.v_target(x0, eps, t)

    # ---- reverse process -------------------------------------------------------------------------
    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7)."""
        self._same_shape(x0=x0, x_t=x_t)
        t = self._t(t, x_t)
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        var = self._at(self.posterior_variance, t, x_t)
        log_var = self._at(self.posterior_log_variance_clipped, t, x_t)
        return mean, var, log_var

    def learned_log_variance(self, var_interp: Tensor, t: Tensor | int) -> Tensor:
        """log Sigma = f log beta_t + (1 - f) log beta~_t with f = (v + 1) / 2 (Nichol & Dhariwal 2021, eq. 15)."""
        if not isinstance(var_interp, Tensor):
            raise TypeError(f"var_interp must be a torch tensor, got {type(var_interp).__name__}")
        t = self._t(t, var_interp, "t")
        frac = (var_interp + 1.0) / 2.0
        max_log = self._at(torch.log(self.betas), t, var_interp)
        min_log = self._at(self.posterior_log_variance_clipped, t, var_interp)
        return frac * max_log + (1.0 - frac) * min_log

    def vlb_terms(self, x0_pred: Tensor, var_interp: Tensor, x0: Tensor, x_t: Tensor,
                  t: Tensor | int) -> Tensor:
        """Per-sample L_t in bits/dim, (B,): KL(q || p) for t > 0, decoder NLL at t = 0 (Nichol & Dhariwal 2021)."""
        self._same_shape(x0=x0, x_t=x_t, x0_pred=x0_pred, var_interp=var_interp)
        t = self._t(t, x_t)
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        model_mean, _, _ = self.q_posterior(x0_pred, x_t, t)
        model_log_var = self.learned_log_variance(var_interp, t)
        dims = tuple(range(1, x0.ndim))
        kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=dims) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
        nll = nll.mean(dim=dims) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def respaced(self, timesteps: Tensor) -> "Schedule":
        """Sub-chain on increasing timesteps: beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}} (Nichol & Dhariwal 2021, sec. 4)."""
        ts = torch.as_tensor(timesteps).long().flatten()
        if ts.numel() == 0 or bool((ts[1:] <= ts[:-1]).any()) or int(ts[0]) < 0 or int(ts[-1]) >= self.T:
            raise ValueError(f"timesteps must be strictly increasing integers in [0, {self.T}), got "
                             f"{ts.tolist()[:8]}{'...' if ts.numel() > 8 else ''}")
        ac = self.alphas_cumprod[ts]
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return Schedule(1.0 - ac / ac_prev)


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Cosine schedule abar(t) = cos^2((t/T + s)/(1 + s) pi/2), betas clipped (Nichol & Dhariwal 2021, eq. 17)."""
    T = check_positive_int("T", T)
    if not 0.0 < max_beta <= 1.0:
        raise ValueError(f"max_beta must lie in (0, 1], got {max_beta}")
    if s < 0:
        raise ValueError(f"s must be >= 0, got {s}")

    def abar(u: float) -> float:
        return math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

    betas = [min(1.0 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)]
    return Schedule.from_betas(betas)


def linear_schedule(T: int = 1000, beta_start: float | None = None, beta_end: float | None = None) -> Schedule:
    """Linear betas from 1e-4 to 0.02, scaled by 1000/T as in improved-diffusion (Ho et al. 2020, sec. 4)."""
    T = check_positive_int("T", T)
    scale = 1000.0 / T
    beta_start = scale * 1e-4 if beta_start is None else beta_start
    beta_end = scale * 0.02 if beta_end is None else beta_end
    if not (0.0 < beta_start <= 1.0 and 0.0 < beta_end <= 1.0):
        raise ValueError(f"beta_start and beta_end must lie in (0, 1], got {beta_start} and {beta_end}; "
                         f"for T={T} pass them explicitly")
    return Schedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def scaled_linear_schedule(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """Betas linear in their square root from beta_start to beta_end (latent diffusion's "scaled_linear";
    Rombach et al. 2022, as diffusers' beta_schedule="scaled_linear")."""
    T = check_positive_int("T", T)
    if not (0.0 < beta_start <= 1.0 and 0.0 < beta_end <= 1.0):
        raise ValueError(f"beta_start and beta_end must lie in (0, 1], got {beta_start} and {beta_end}")
    return Schedule(torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2)


@lru_cache(maxsize=1)
def _default_schedule() -> Schedule:
    return cosine_schedule(1000)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-likelihood of [-1, 1] data on 256 bins under N(means, e^{2 log_scales}) (Ho et al. 2020)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def min_snr_weight(schedule: Schedule, t: Tensor, prediction: str, gamma: float) -> Tensor:
    """Per-sample Min-SNR-gamma loss weights (Hang et al. 2023, eq. 11) for an MSE on `prediction`'s target.

    The weight on the x0 error is min(SNR_t, gamma); an MSE on eps already weighs it by SNR_t and one on v by
    SNR_t + 1, so those are rescaled by min(SNR_t, gamma) / SNR_t and min(SNR_t, gamma) / (SNR_t + 1). The
    clamp stops the nearly clean timesteps, which teach only fine detail, from dominating the gradient.
    Returns float32 (B,).
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0 (the paper uses 5), got {gamma!r}")
    ac = schedule.alphas_cumprod.to(t.device)[t.long()]
    snr = ac / (1.0 - ac)
    clamped = snr.clamp(max=float(gamma))
    if prediction == "eps":
        w = clamped / snr
    elif prediction == "v":
        w = clamped / (snr + 1.0)
    else:
        w = clamped
    return w.float()


def diffusion_loss(model_out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor, prediction: str = "eps",
                   learn_sigma: bool = False, vlb_weight: float = 0.001, *,
                   schedule: Schedule | None = None, min_snr_gamma: float | None = None) -> Tensor:
    """L_simple (MSE on the target), or the hybrid L_simple + lambda L_vlb (Nichol & Dhariwal 2021, sec. 3.1).

    model_out: (B, C, ...) or, with learn_sigma, (B, 2C, ...): the target then v in [-1, 1] of eq. 15.
    x0, x_t, eps: (B, C, ...); t: (B,) integer indices; schedule defaults to cosine_schedule(1000).
    L_vlb = T * E_t[L_t] uses a stop-gradient on the mean, so it trains only the variance channels.
    min_snr_gamma weighs each sample's MSE by `min_snr_weight` (None: the plain mean). Returns a scalar.
    """
    schedule = _default_schedule() if schedule is None else schedule
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (e.g. cosine_schedule()), got {type(schedule).__name__}")
    Schedule._same_shape(x0=x0, x_t=x_t, eps=eps)
    if not isinstance(model_out, Tensor):
        raise TypeError(f"model_out must be a torch tensor, got {type(model_out).__name__}")
    check_choice("prediction", prediction, PREDICTIONS)
    if vlb_weight < 0:
        raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
    C = x0.shape[1]
    want = (x0.shape[0], 2 * C if learn_sigma else C, *x0.shape[2:])
    if tuple(model_out.shape) != want:
        hint = ("with learn_sigma=True the model must output 2C channels (target, variance interpolation)"
                if learn_sigma else "pass learn_sigma=True if the model also outputs variance channels")
        raise ValueError(f"model_out must have shape {want}, got {tuple(model_out.shape)}; {hint}")
    target = schedule.training_target(prediction, x0, eps, t)
    mean_out = model_out[:, :C]
    if min_snr_gamma is None:
        mse = ((mean_out - target) ** 2).mean()
    else:
        per_sample = ((mean_out - target) ** 2).flatten(1).mean(1)
        mse = (min_snr_weight(schedule, t, prediction, min_snr_gamma).to(per_sample.device) * per_sample).mean()
    if not learn_sigma:
        return mse
    var_interp = model_out[:, C:]
    x0_pred = schedule.predict_x0(prediction, x_t, t, mean_out.detach())
    vb = schedule.vlb_terms(x0_pred, var_interp, x0, x_t, t)
    return mse + vlb_weight * schedule.T * vb.mean()
