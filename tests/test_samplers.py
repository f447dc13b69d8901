"""Samplers: exact Gaussian denoiser, DDIM inversion, agreement with diffusers' schedulers, guidance."""

import pytest
import torch

from unclip_core.diffusion import cosine_schedule
from unclip_core.samplers import (cfg_denoiser, classifier_free_guidance, invert_ddim, model_to_denoiser, respace,
                                  sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_unclip)

MU, S = 0.5, 0.5  # data x0 ~ N(MU, S^2 I)
N_SAMPLES = 20_000


@pytest.fixture(scope="module")
def sch():
    return cosine_schedule(1000)


def _abar(sch, t, x):
    return sch.alphas_cumprod[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def gaussian_denoiser(sch, mu=MU, s=S):
    """Ideal x0-denoiser for x0 ~ N(mu, s^2): E[x0|x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu)."""
    def denoise(x, t):
        a = _abar(sch, t, x).sqrt()
        return mu + a * s ** 2 / (a ** 2 * s ** 2 + 1 - a ** 2) * (x - a * mu)
    return denoise


def gaussian_eps_net(sch, wobble=0.05, C=3):
    """An eps-network: the ideal Gaussian eps plus sqrt(abar_t) times a fixed random tanh-MLP (so x0 stays bounded)."""
    g = torch.Generator().manual_seed(42)
    W1, W2 = torch.randn(C + 1, 16, generator=g), torch.randn(16, C, generator=g) / 4
    ideal = gaussian_denoiser(sch)

    def net(x, t):
        x0 = ideal(x, t)
        a = _abar(sch, t, x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        h = torch.cat([x, (t.to(x.dtype) / 1000)[:, None]], 1)
        return eps + wobble * a.sqrt() * (torch.tanh(h @ W1.to(x.dtype)) @ W2.to(x.dtype))
    return net


def _x_T(shape=(N_SAMPLES, 2), seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_gaussian(x, mean_tol, std_rel_tol):
    assert abs(x.mean().item() - MU) < mean_tol, x.mean().item()
    assert abs(x.std().item() / S - 1) < std_rel_tol, x.std().item()


# ---- timesteps -----------------------------------------------------------------------------------
def test_respace_values(sch):
    assert respace(sch, 7, "leading").tolist() == [852, 710, 568, 426, 284, 142, 0]
    assert respace(sch, 7, "trailing").tolist() == [999, 856, 713, 570, 428, 285, 142]
    assert respace(sch, 7, "linspace").tolist() == [999, 832, 666, 500, 333, 166, 0]
    for spacing in ("leading", "trailing", "linspace"):
        assert respace(sch, 1000, spacing).tolist() == list(range(999, -1, -1))
        for n in (1, 3, 50, 333):
            ts = respace(sch, n, spacing)
            assert len(ts) == n and len(set(ts.tolist())) == n and ts.dtype == torch.long


def test_respace_matches_diffusers(sch):
    from diffusers import DDIMScheduler, UnCLIPScheduler

    for spacing in ("leading", "trailing", "linspace"):
        ref = DDIMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing)
        ref.set_timesteps(50)
        assert respace(sch, 50, spacing).tolist() == ref.timesteps.tolist()
    ref = UnCLIPScheduler()
    ref.set_timesteps(25)
    assert respace(sch, 25, "linspace").tolist() == ref.timesteps.tolist()


def test_respace_errors(sch):
    with pytest.raises(ValueError, match="n_steps must be >= 1, got 0"):
        respace(sch, 0)
    with pytest.raises(ValueError, match="n_steps must be <= T=1000"):
        respace(sch, 1001)
    with pytest.raises(ValueError, match=r"spacing='even' is not known; accepted: 'leading', 'trailing', 'linspace'"):
        respace(sch, 10, "even")
    with pytest.raises(TypeError, match="n_steps must be an integer"):
        respace(sch, 10.0)
    with pytest.raises(TypeError, match="schedule must be a unclip_core.diffusion.Schedule"):
        respace("cosine", 10)


# ---- exact Gaussian denoiser: samplers reproduce N(mu, s^2) -----------------------------------------
# Tolerances: Monte-Carlo error on 40k draws is ~0.003 (mean) and ~0.4% (std); the rest is each sampler's
# discretisation error, which shrinks with the number of steps (see test_ddim_error_shrinks_with_steps).
def test_ddpm_1000_steps_gaussian(sch):
    x = sample_ddpm(gaussian_denoiser(sch), _x_T((N_SAMPLES, 1), dtype=torch.float32), sch, generator=1)
    _assert_gaussian(x, mean_tol=0.01, std_rel_tol=0.015)


def test_ddpm_100_respaced_gaussian(sch):
    x = sample_ddpm(gaussian_denoiser(sch), _x_T(), sch, steps=100, generator=1)
    _assert_gaussian(x, mean_tol=0.01, std_rel_tol=0.05)
    x_large = sample_ddpm(gaussian_denoiser(sch), _x_T(), sch, steps=100, variance="fixed_large", generator=1)
    _assert_gaussian(x_large, mean_tol=0.01, std_rel_tol=0.05)


@pytest.mark.parametrize("eta,std_tol", [(0.0, 0.035), (1.0, 0.09)])
def test_ddim_50_gaussian(sch, eta, std_tol):
    x = sample_ddim(gaussian_denoiser(sch), _x_T(), sch, 50, eta=eta, generator=1)
    # leading spacing starts at t=980 where abar = 8.8e-4: x_T ~ N(0, 1) misses the true mean sqrt(abar) mu
    _assert_gaussian(x, mean_tol=0.02, std_rel_tol=std_tol)


def test_ddim_error_shrinks_with_steps(sch):
    errs = [abs(sample_ddim(gaussian_denoiser(sch), _x_T(), sch, n, spacing="trailing").std().item() / S - 1)
            for n in (25, 200)]
    assert errs[1] < errs[0] / 4


def test_dpmpp_2m_20_gaussian(sch):
    x = sample_dpmpp_2m(gaussian_denoiser(sch), _x_T(), sch, 20)
    _assert_gaussian(x, mean_tol=0.01, std_rel_tol=0.015)


def test_learned_variance_endpoints_match_fixed(sch):
    # var_interp = -1 is beta~ (fixed_small), +1 is beta (fixed_large)
    den = gaussian_denoiser(sch)
    x_T = _x_T((64, 2))
    for v, kind in ((-1.0, "fixed_small"), (1.0, "fixed_large")):
        learned = sample_ddpm(lambda x, t: (den(x, t), torch.full_like(x, v)), x_T, sch, 40, "learned", generator=3)
        fixed = sample_ddpm(den, x_T, sch, 40, kind, generator=3)
        torch.testing.assert_close(learned, fixed, rtol=1e-10, atol=1e-10)


def test_seeded_and_progress(sch):
    den = gaussian_denoiser(sch)
    x_T = _x_T((8, 2))
    a = sample_ddpm(den, x_T, sch, 20, generator=torch.Generator().manual_seed(7))
    b = sample_ddpm(den, x_T, sch, 20, generator=7, progress=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = sample_ddpm(den, x_T, sch, 20, generator=8)
    assert (a - c).abs().max() > 1e-3
    torch.testing.assert_close(sample_ddim(den, x_T, sch, 10, progress=True), sample_ddim(den, x_T, sch, 10))


# ---- DDIM inversion ------------------------------------------------------------------------------
def test_invert_ddim_round_trip_gaussian(sch):
    den = gaussian_denoiser(sch)
    x0 = MU + S * _x_T((1000, 2), seed=5)
    x_T = invert_ddim(den, x0, sch, 50)
    assert abs(x_T.std().item() - 1) < 0.1  # lands near N(0, 1)
    err = (sample_ddim(den, x_T, sch, 50) - x0).abs()
    assert err.mean() < 0.04 and err.max() < 0.15
    x_T_fp = invert_ddim(den, x0, sch, 50, n_fixed_point=3)
    assert (sample_ddim(den, x_T_fp, sch, 50) - x0).abs().max() < 1e-6


def test_invert_ddim_round_trip_mlp(sch):
    # eps-network: the ideal Gaussian eps plus a fixed random tanh-MLP of comparable size
    den = model_to_denoiser(gaussian_eps_net(sch, wobble=0.3), sch, "eps")
    x0 = MU + S * _x_T((64, 3), seed=6)
    for spacing in ("leading", "trailing", "linspace"):
        plain = invert_ddim(den, x0, sch, 25, spacing=spacing)
        assert (sample_ddim(den, plain, sch, 25, spacing=spacing) - x0).abs().max() < 0.25  # O(step) error
        x_T = invert_ddim(den, x0, sch, 25, spacing=spacing, n_fixed_point=8)
        torch.testing.assert_close(sample_ddim(den, x_T, sch, 25, spacing=spacing), x0, rtol=0, atol=1e-9)


# ---- agreement with diffusers ---------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(sch, eta):
    from diffusers import DDIMScheduler

    net = gaussian_eps_net(sch)
    x_T = _x_T((16, 3), seed=2, dtype=torch.float32)
    n = 50
    den = model_to_denoiser(net, sch, "eps")
    ours = sample_ddim(den, x_T, sch, n, eta=eta, generator=torch.Generator().manual_seed(3))
    ref = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=True,
                        prediction_type="epsilon", timestep_spacing="leading")
    ref.set_timesteps(n)
    g = torch.Generator().manual_seed(3)  # same draws in the same order: one per step but the last
    x = x_T.clone()
    for i, t in enumerate(ref.timesteps):
        noise = torch.randn(x.shape, generator=g) if i < n - 1 else torch.zeros_like(x)
        x = ref.step(net(x, t.expand(len(x))), t, x, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
    assert x.abs().max() > 0.5


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_dpmpp_2m_matches_diffusers(sch, spacing):
    from diffusers import DPMSolverMultistepScheduler

    net = gaussian_eps_net(sch)
    n = 20
    ts = respace(sch, n, spacing)

    def reference(x, float64):
        ref = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", algorithm_type="dpmsolver++",
                                          solver_order=2, solver_type="midpoint", prediction_type="epsilon",
                                          final_sigmas_type="zero")
        ref.set_timesteps(timesteps=ts.tolist())
        if float64:  # the same sigmas in float64: checks the algorithm step for step
            ac = sch.alphas_cumprod[ts]
            ref.sigmas = torch.cat([((1 - ac) / ac).sqrt(), torch.zeros(1, dtype=torch.float64)])
        for t in ref.timesteps:
            x = ref.step(net(x, t.expand(len(x))), t, x).prev_sample
        return x

    x_T = _x_T((16, 3), seed=4)
    ours = sample_dpmpp_2m(model_to_denoiser(net, sch, "eps"), x_T, sch, n, spacing=spacing)
    # diffusers' step computes in float32 whatever the input dtype
    torch.testing.assert_close(ours, reference(x_T.clone(), True), rtol=1e-5, atol=1e-5)
    # float32 tables: x0 = (x - sigma eps) / alpha with alpha_999 = 5e-5 amplifies rounding
    ours32 = sample_dpmpp_2m(model_to_denoiser(net, sch, "eps"), x_T.float(), sch, n, spacing=spacing)
    torch.testing.assert_close(ours32, reference(x_T.float(), False), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("variance", ["learned_range", "fixed_small_log"])
def test_unclip_matches_diffusers_step_for_step(sch, variance):
    from diffusers import UnCLIPScheduler

    eps_net = gaussian_eps_net(sch)
    learned = variance == "learned_range"
    g = torch.Generator().manual_seed(8)
    Wv = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def net(x, t):  # eps, then (for learned_range) a var_interp in [-1, 1]
        eps = eps_net(x, t)
        return torch.cat([eps, torch.tanh(x @ Wv.to(x.dtype))], 1) if learned else eps

    x_T = _x_T((16, 3), seed=9)
    n = 25
    den = model_to_denoiser(net, sch, "eps", clip_x0=1.0, with_variance=learned)
    ours = sample_unclip(den, x_T, sch, n, variance=variance, generator=torch.Generator().manual_seed(5))

    def reference(float64: bool):
        ref = UnCLIPScheduler(variance_type=variance, clip_sample=True, clip_sample_range=1.0,
                              prediction_type="epsilon")
        x = x_T.clone() if float64 else x_T.float()
        if float64:  # same coefficients in float64: checks the algorithm step for step
            ref.betas, ref.alphas, ref.alphas_cumprod = sch.betas, sch.alphas, sch.alphas_cumprod
            ref.one = torch.tensor(1.0, dtype=torch.float64)
        ref.set_timesteps(n)
        gen = torch.Generator().manual_seed(5)
        ts = ref.timesteps
        for i, t in enumerate(ts):
            prev = None if i == len(ts) - 1 else ts[i + 1]
            out = net(x, t.expand(len(x)))
            x = ref.step(out, t, x, prev_timestep=prev, generator=gen).prev_sample
        return x

    torch.testing.assert_close(ours, reference(True), rtol=1e-10, atol=1e-10)
    # diffusers' own float32 tables: 1 - alphas[0] != betas[0] in float32 scales its last step by ~(1 - 5e-4)
    ours32 = sample_unclip(den, x_T.float(), sch, n, variance=variance, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours32, reference(False), rtol=2e-3, atol=2e-3)


# ---- model_to_denoiser ---------------------------------------------------------------------------
def test_model_to_denoiser_predictions(sch):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 990])
    x_t = sch.q_sample(x0, t, eps)
    outputs = {"eps": eps, "x0": x0, "v": sch.v_target(x0, eps, t)}
    for kind, out in outputs.items():
        den = model_to_denoiser(lambda x, tt, o=out: o, sch, kind)
        torch.testing.assert_close(den(x_t, t), x0, rtol=0, atol=1e-6)
    den = model_to_denoiser(lambda x, tt: torch.cat([x0 * 3, eps[:, :3]], 1), sch, "x0", clip_x0=1.0,
                            with_variance=True)
    pred, v = den(x_t, t)
    assert pred.abs().max().item() == 1.0 and torch.equal(v, eps[:, :3])
    # extra variance channels are dropped by default
    den = model_to_denoiser(lambda x, tt: torch.cat([x0, eps], 1), sch, "x0")
    torch.testing.assert_close(den(x_t, t), x0)


def test_model_to_denoiser_errors(sch):
    x, t = torch.zeros(2, 3), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"prediction='score' is not known; accepted: 'eps', 'x0', 'v'"):
        model_to_denoiser(lambda x, t: x, sch, "score")
    with pytest.raises(ValueError, match="expected 3 or 6 channels"):
        model_to_denoiser(lambda x, t: torch.zeros(2, 4), sch)(x, t)
    with pytest.raises(ValueError, match="with_variance=True needs a network with 2C = 6"):
        model_to_denoiser(lambda x, t: x, sch, with_variance=True)(x, t)
    with pytest.raises(ValueError, match="clip_x0 must be None or > 0"):
        model_to_denoiser(lambda x, t: x, sch, clip_x0=0.0)
    with pytest.raises(TypeError, match="net_fn must be callable"):
        model_to_denoiser("net", sch)


def test_sampler_errors(sch):
    den = gaussian_denoiser(sch)
    x_T = _x_T((4, 2))
    with pytest.raises(ValueError, match=r"variance='learned_range' is not known; accepted: 'fixed_small'"):
        sample_ddpm(den, x_T, sch, 10, variance="learned_range")
    with pytest.raises(ValueError, match="needs a denoiser returning \\(x0, var_interp\\)"):
        sample_ddpm(den, x_T, sch, 10, variance="learned")
    with pytest.raises(ValueError, match="uses no learned variance"):
        sample_ddim(lambda x, t: (den(x, t), x), x_T, sch, 10)
    with pytest.raises(ValueError, match=r"must return predicted x0 of shape \(4, 2\)"):
        sample_ddim(lambda x, t: den(x, t)[:, :1], x_T, sch, 10)
    with pytest.raises(ValueError, match=r"var_interp must have shape \(4, 2\)"):
        sample_ddpm(lambda x, t: (den(x, t), x[:, :1]), x_T, sch, 10, variance="learned")
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        sample_ddim(den, x_T, sch, 10, eta=1.5)
    with pytest.raises(ValueError, match="n_steps must be <= T=1000"):
        sample_dpmpp_2m(den, x_T, sch, 2000)
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        invert_ddim(den, x_T, sch, 0)
    with pytest.raises(ValueError, match=r"spacing='even' is not known"):
        sample_ddim(den, x_T, sch, 10, spacing="even")
    with pytest.raises(TypeError, match="x_T must be a float tensor"):
        sample_ddim(den, x_T.long(), sch, 10)
    with pytest.raises(ValueError, match=r"x_T must have shape \(B, C, ...\)"):
        sample_ddim(den, torch.zeros(3), sch, 10)
    with pytest.raises(TypeError, match="generator must be a torch.Generator, an int seed or None"):
        sample_ddpm(den, x_T, sch, 10, generator="seed")
    with pytest.raises(ValueError, match=r"variance='fixed_small' is not known; accepted: 'learned_range'"):
        sample_unclip(den, x_T, sch, 10, variance="fixed_small")


# ---- classifier-free guidance ------------------------------------------------------------------------
class CountingNet:
    """net(x, t, z, mask) -> [x + z * t/1000, x * z]: guidance channels, then 'variance' channels."""

    def __init__(self):
        self.calls, self.batches = 0, []

    def __call__(self, x, t, z, mask=None):
        self.calls += 1
        self.batches.append(x.shape[0])
        assert mask is None
        scale = (t.to(x.dtype) / 1000).reshape(-1, 1, 1, 1)
        return torch.cat([x + z * scale, x * z], 1)


def test_cfg_one_forward_and_closed_form():
    net = CountingNet()
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 500, 900])
    zc, zu = torch.full_like(x, 2.0), torch.zeros_like(x)
    guided = classifier_free_guidance(net, {"z": zc, "mask": None}, {"z": zu, "mask": None}, scale=4.0)
    out = guided(x, t)
    assert net.calls == 1 and net.batches == [6]
    # uncond = x, cond = x + 2 t/1000: guided = x + 4 * 2 t/1000; variance channels from the cond pass: 2x
    want = x + 8.0 * (t / 1000).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out[:, :2], want)
    torch.testing.assert_close(out[:, 2:], 2 * x)
    assert cfg_denoiser is classifier_free_guidance


def test_cfg_scale_one_skips_uncond():
    net = CountingNet()
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 20])
    zc = torch.ones_like(x)
    out = classifier_free_guidance(net, {"z": zc}, {"z": torch.zeros_like(x)}, 1)(x, t)
    assert net.calls == 1 and net.batches == [2]
    torch.testing.assert_close(out, net(x, t, zc))


def test_cfg_prepare_encodes_the_condition_once():
    """prepare(**condition) runs once, on the joint cond + uncond batch (or on cond alone at scale 1), and its
    keyword arguments reach every network call."""
    net, seen = CountingNet(), []

    def prepare(z, mask):
        seen.append(z.shape[0])
        return {"z": z * 1.0, "mask": mask}

    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 500, 900])
    zc, zu = torch.full_like(x, 2.0), torch.zeros_like(x)
    guided = classifier_free_guidance(net, {"z": zc, "mask": None}, {"z": zu, "mask": None}, 4.0, prepare=prepare)
    out = [guided(x, t) for _ in range(3)]
    assert seen == [6] and net.calls == 3
    torch.testing.assert_close(out[0][:, :2], x + 8.0 * (t / 1000).reshape(-1, 1, 1, 1))
    classifier_free_guidance(net, {"z": zc, "mask": None}, {"z": zu, "mask": None}, 1.0, prepare=prepare)(x, t)
    assert seen == [6, 3]
    with pytest.raises(TypeError, match="prepare must be None or callable"):
        classifier_free_guidance(net, {"z": zc}, {"z": zu}, 2.0, prepare=3)


def test_cfg_composes_with_sampler(sch):
    # a guided eps-network through model_to_denoiser into DDIM: scale 0 equals the uncond network alone
    net = CountingNet()
    x_T = _x_T((2, 1, 2, 2), dtype=torch.float32)
    zc, zu = torch.ones_like(x_T), torch.zeros_like(x_T)
    guided = classifier_free_guidance(net, {"z": zc}, {"z": zu}, 0.0)
    a = sample_ddim(model_to_denoiser(guided, sch, "eps"), x_T, sch, 5)
    b = sample_ddim(model_to_denoiser(lambda x, t: net(x, t, zu)[:, :1], sch, "eps"), x_T, sch, 5)
    torch.testing.assert_close(a, b)


def test_cfg_errors():
    net = CountingNet()
    z = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"guidance scale must lie in \[0, 100\]"):
        classifier_free_guidance(net, {"z": z}, {"z": z}, -1.0)
    with pytest.raises(ValueError, match="same keys"):
        classifier_free_guidance(net, {"z": z}, {"y": z}, 2.0)
    with pytest.raises(ValueError, match="both be tensors or both None"):
        classifier_free_guidance(net, {"z": z}, {"z": None}, 2.0)
    with pytest.raises(ValueError, match=r"cond\['z'\] has shape \(2, 1, 2, 2\) but uncond\['z'\] has"):
        classifier_free_guidance(net, {"z": z}, {"z": z[:1]}, 2.0)
    with pytest.raises(ValueError, match=r"guidance scale must lie in \[0, 100\] .*got nan"):
        classifier_free_guidance(net, {"z": z}, {"z": z}, float("nan"))
    guided = classifier_free_guidance(net, {"z": z}, {"z": z}, 2.0)
    with pytest.raises(ValueError, match="has batch 2 but x has batch 3"):
        guided(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))
