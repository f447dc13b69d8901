"""Diffusion maths: schedules, forward process, conversions, posterior, hybrid loss."""
import dataclasses
import math

import pytest
import torch

from unclip_core.diffusion import (Schedule, cosine_schedule, diffusion_loss, discretized_gaussian_log_likelihood,
                                   linear_schedule, min_snr_weight, normal_kl)


@pytest.fixture(scope="module")
def sch():
    return cosine_schedule(1000)


def _batch(seed=0, shape=(6, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 17, 500, 998, 999])[: shape[0]]
    return x0, eps, t


# ---- schedules ----------------------------------------------------------------------------------
def test_cosine_schedule_closed_form(sch):
    def f(u):
        return math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    assert sch.T == 1000 and sch.betas.dtype == torch.float64
    for t in (0, 1, 10, 500, 900, 990):
        assert sch.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert sch.betas.max().item() == pytest.approx(0.999)  # clipped
    assert sch.betas[-1].item() == pytest.approx(0.999)
    assert sch.betas[0].item() == pytest.approx(1 - f(1) / f(0), rel=1e-12)
    assert bool((sch.betas[1:] >= sch.betas[:-1]).all())


def test_cosine_schedule_matches_diffusers(sch):
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

    ref = betas_for_alpha_bar(1000).double()
    torch.testing.assert_close(sch.betas, ref, rtol=1e-6, atol=1e-9)


def test_linear_schedule_values():
    s = linear_schedule(1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    s100 = linear_schedule(100)
    assert s100.betas[0].item() == pytest.approx(1e-3) and s100.betas[-1].item() == pytest.approx(0.2)
    assert s.alphas_cumprod[-1].item() == pytest.approx(math.prod(1 - b for b in s.betas.tolist()), rel=1e-10)


def test_from_betas_and_derived(sch):
    s = Schedule.from_betas([0.1, 0.2, 0.5])
    torch.testing.assert_close(s.alphas_cumprod, torch.tensor([0.9, 0.72, 0.36], dtype=torch.float64))
    # posterior variance beta_t (1 - abar_{t-1}) / (1 - abar_t)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_variance[2].item() == pytest.approx(0.5 * 0.28 / 0.64)
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(0.2 * 0.1 / 0.28))
    assert len(s) == 3 and "T=3" in repr(s)


def test_schedule_is_frozen(sch):
    with pytest.raises(dataclasses.FrozenInstanceError):
        sch.betas = torch.zeros(3)


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        Schedule.from_betas([0.1, 0.0])
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        Schedule.from_betas([0.1, 1.5])
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        Schedule.from_betas([[0.1, 0.2]])
    with pytest.raises(TypeError, match="Schedule.from_betas"):
        Schedule([0.1, 0.2])
    with pytest.raises(ValueError, match="T must be >= 1"):
        cosine_schedule(0)
    with pytest.raises(ValueError, match="max_beta must lie"):
        cosine_schedule(10, max_beta=1.5)
    with pytest.raises(ValueError, match="pass them explicitly"):
        linear_schedule(10)


def test_respaced_subchain(sch):
    same = sch.respaced(torch.arange(1000))
    torch.testing.assert_close(same.betas, sch.betas, rtol=1e-9, atol=1e-12)
    ts = torch.tensor([0, 250, 500, 999])
    sub = sch.respaced(ts)
    torch.testing.assert_close(sub.alphas_cumprod, sch.alphas_cumprod[ts], rtol=1e-8, atol=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        sch.respaced(torch.tensor([5, 3]))


# ---- forward process and conversions -------------------------------------------------------------
def test_q_sample_closed_form(sch):
    x0, eps, t = _batch()
    x_t = sch.q_sample(x0, t, eps)
    a = sch.alphas_cumprod[500].item()
    torch.testing.assert_close(x_t[3], math.sqrt(a) * x0[3] + math.sqrt(1 - a) * eps[3])
    # scalar t broadcasts over the batch
    torch.testing.assert_close(sch.q_sample(x0, 500, eps)[3], x_t[3])


def test_round_trips_exact(sch):
    x0, eps, t = _batch(1)
    x_t = sch.q_sample(x0, t, eps)
    torch.testing.assert_close(sch.x0_from_eps(x_t, t, eps), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(sch.eps_from_x0(x_t, t, x0), eps, atol=1e-6, rtol=0)
    v = sch.v_target(x0, eps, t)
    torch.testing.assert_close(sch.x0_from_v(x_t, t, v), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(sch.eps_from_v(x_t, t, v), eps, atol=1e-6, rtol=0)
    for kind, want in (("eps", eps), ("x0", x0), ("v", v)):
        target = sch.training_target(kind, x0, eps, t)
        torch.testing.assert_close(target, want)
        torch.testing.assert_close(sch.predict_x0(kind, x_t, t, target), x0, atol=1e-6, rtol=0)


def test_round_trips_float32(sch):
    x0, eps, t = _batch(2)
    x0, eps = x0.float(), eps.float()
    t = t.clamp(max=990)  # abar_999 ~ 2e-9: x0 from eps is ill-conditioned there in float32
    x_t = sch.q_sample(x0, t, eps)
    assert x_t.dtype == torch.float32
    torch.testing.assert_close(sch.x0_from_v(x_t, t, sch.v_target(x0, eps, t)), x0, atol=1e-5, rtol=0)


def test_v_closed_form(sch):
    # Salimans & Ho: v = alpha eps - sigma x0, with alpha^2 + sigma^2 = 1
    x0, eps = torch.ones(1, 1), torch.zeros(1, 1)
    t = 400
    sigma = math.sqrt(1 - sch.alphas_cumprod[t].item())
    assert sch.v_target(x0, eps, t).item() == pytest.approx(-sigma, rel=1e-6)


def test_conversion_errors(sch):
    x0, eps, t = _batch()
    with pytest.raises(ValueError, match=r"kind='score' is not known; accepted: 'eps', 'x0', 'v'"):
        sch.training_target("score", x0, eps, t)
    with pytest.raises(TypeError, match="integer timestep"):
        sch.q_sample(x0, t.float(), eps)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1000\)"):
        sch.q_sample(x0, t + 1, eps)
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(6,\)"):
        sch.q_sample(x0, t[:3], eps)
    with pytest.raises(ValueError, match="eps has shape"):
        sch.q_sample(x0, t, eps[:, :2])
    with pytest.raises(TypeError, match="x0 must be a torch tensor"):
        sch.q_sample(x0.numpy(), t, eps)


# ---- posterior -----------------------------------------------------------------------------------
def test_posterior_marginalises_to_forward(sch):
    # If x_t ~ q(x_t|x0) and x_{t-1} ~ q(x_{t-1}|x_t,x0), then x_{t-1} ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}).
    for t in (1, 10, 500, 999):
        a_t, a_p = sch.alphas_cumprod[t].item(), sch.alphas_cumprod[t - 1].item()
        c1, c2 = sch.posterior_mean_coef1[t].item(), sch.posterior_mean_coef2[t].item()
        var = sch.posterior_variance[t].item()
        assert c1 + c2 * math.sqrt(a_t) == pytest.approx(math.sqrt(a_p), rel=1e-10)
        assert c2 ** 2 * (1 - a_t) + var == pytest.approx(1 - a_p, rel=1e-9)
    x0, eps, t = _batch()
    mean, var, log_var = sch.q_posterior(x0, sch.q_sample(x0, t, eps), t)
    assert mean.shape == x0.shape and var.shape == (6, 1, 1, 1)
    torch.testing.assert_close(mean[0], x0[0])  # at t=0 the posterior mean is x0


def test_learned_log_variance_endpoints(sch):
    t = torch.tensor([5, 700])
    lo = sch.learned_log_variance(-torch.ones(2, 3), t)
    hi = sch.learned_log_variance(torch.ones(2, 3), t)
    torch.testing.assert_close(hi[:, 0].double(), sch.betas[t].log(), rtol=1e-6, atol=0)
    torch.testing.assert_close(lo[:, 0].double(), sch.posterior_variance[t].log(), rtol=1e-6, atol=0)


def test_normal_kl_closed_form():
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))
    # KL(N(0,1)||N(1,4)) = log 2 + (1 + 1) / 8 - 1/2
    assert kl.item() == pytest.approx(math.log(2) + 2 / 8 - 0.5, rel=1e-6)


def test_discretized_likelihood_sums_to_one():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, math.log(0.05)), (-0.9, math.log(0.3))):
        ll = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


# ---- loss ----------------------------------------------------------------------------------------
def test_simple_loss_is_mse(sch):
    x0, eps, t = _batch()
    x_t = sch.q_sample(x0, t, eps)
    out = eps + 0.1
    assert diffusion_loss(out, x0, x_t, t, eps, "eps", schedule=sch).item() == pytest.approx(0.01, rel=1e-9)
    v = sch.v_target(x0, eps, t)
    assert diffusion_loss(v - 0.2, x0, x_t, t, eps, "v", schedule=sch).item() == pytest.approx(0.04, rel=1e-9)
    # default schedule is cosine(1000)
    assert diffusion_loss(x0 + 0.3, x0, x_t, t, eps, "x0").item() == pytest.approx(0.09, rel=1e-9)


def test_hybrid_loss_exact_at_true_posterior(sch):
    x0, eps, t = _batch(3)
    t = torch.tensor([3, 17, 200, 500, 998, 999])
    x_t = sch.q_sample(x0, t, eps)
    # exact eps and v = -1 (log variance = log beta~_t): KL = 0 and the MSE is 0
    out = torch.cat([eps, -torch.ones_like(eps)], 1)
    assert diffusion_loss(out, x0, x_t, t, eps, learn_sigma=True, schedule=sch).item() == pytest.approx(0, abs=1e-9)
    # v = +1 (log beta_t): KL per element = 0.5 (log(b/b~) + b~/b - 1), times vlb_weight * T / log 2
    out = torch.cat([eps, torch.ones_like(eps)], 1)
    b, bt = sch.betas[t], sch.posterior_variance[t]
    kl = (0.5 * (torch.log(b / bt) + bt / b - 1)).mean() / math.log(2)
    got = diffusion_loss(out, x0, x_t, t, eps, learn_sigma=True, vlb_weight=0.001, schedule=sch)
    assert got.item() == pytest.approx(kl.item(), rel=1e-9)


def test_hybrid_loss_gradients(sch):
    x0, eps, t = _batch(4)
    x0 = x0.float()
    eps = eps.float()
    x_t = sch.q_sample(x0, t, eps)  # t includes 0: the decoder NLL branch
    g = torch.Generator().manual_seed(9)
    out = torch.cat([eps + 0.1 * torch.randn(eps.shape, generator=g),
                     torch.rand(eps.shape, generator=g) * 2 - 1], 1).requires_grad_(True)
    loss = diffusion_loss(out, x0, x_t, t, eps, "eps", learn_sigma=True, schedule=sch)
    assert torch.isfinite(loss)
    loss.backward()
    mse_grad = 2 * (out[:, :3].detach() - eps) / eps.numel()
    # the mean channels see only the MSE (stop-gradient on the mean inside L_vlb)
    torch.testing.assert_close(out.grad[:, :3], mse_grad, rtol=1e-5, atol=1e-8)
    assert out.grad[:, 3:].abs().sum().item() > 0
    assert torch.isfinite(out.grad).all()


def test_min_snr_weighting_is_the_same_x0_loss_for_every_target(sch):
    """Hang et al. 2023: whatever the network predicts, the weighted loss is mean_i min(SNR_i, gamma) |dx0_i|^2."""
    x0, eps, t = _batch(5)
    x_t = sch.q_sample(x0, t, eps)
    g = torch.Generator().manual_seed(3)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_hat = sch.eps_from_x0(x_t, t, x0_hat)
    outs = {"x0": x0_hat, "eps": eps_hat, "v": sch.v_target(x0_hat, eps_hat, t)}
    ac = sch.alphas_cumprod[t]
    snr = ac / (1 - ac)
    want = (snr.clamp(max=5.0) * ((x0_hat - x0) ** 2).flatten(1).mean(1)).mean().item()
    for kind, out in outs.items():
        got = diffusion_loss(out, x0, x_t, t, eps, kind, schedule=sch, min_snr_gamma=5.0).item()
        assert got == pytest.approx(want, rel=1e-6), kind
    # the clamp: at t = 0 (SNR ~ 1.6e5) the v weight is 5 / (SNR + 1); at t = 999 (SNR ~ 0) eps keeps weight 1
    w_v = min_snr_weight(sch, torch.tensor([0, 999]), "v", 5.0)
    assert w_v[0].item() == pytest.approx(5.0 / (snr[0].item() + 1), rel=1e-5)
    assert min_snr_weight(sch, torch.tensor([999]), "eps", 5.0).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        min_snr_weight(sch, t, "v", 0.0)


def test_loss_errors(sch):
    x0, eps, t = _batch()
    x_t = sch.q_sample(x0, t, eps)
    with pytest.raises(ValueError, match="with learn_sigma=True the model must output 2C"):
        diffusion_loss(eps, x0, x_t, t, eps, learn_sigma=True, schedule=sch)
    with pytest.raises(ValueError, match="pass learn_sigma=True"):
        diffusion_loss(torch.cat([eps, eps], 1), x0, x_t, t, eps, schedule=sch)
    with pytest.raises(ValueError, match=r"prediction='score' is not known; accepted: 'eps', 'x0', 'v'"):
        diffusion_loss(eps, x0, x_t, t, eps, "score", schedule=sch)
    with pytest.raises(ValueError, match="vlb_weight must be >= 0"):
        diffusion_loss(eps, x0, x_t, t, eps, vlb_weight=-1.0, schedule=sch)
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        diffusion_loss(eps, x0, x_t, t, eps, schedule="cosine")
