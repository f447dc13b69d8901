"""The progress bug: keyword-only pipeline calls, one clip_denoised rule, progress that changes nothing but bars.

`text_to_image` once called decode with 11 positional arguments and fed `progress` into `clip_denoised`, so
the same seed gave different pictures with and without a progress bar. These tests pin: bit-identical images
whatever `progress` is; TypeError for positional arguments past the first one or two; clip_denoised clamped
from fresh noise and unclamped from a given x_T, recorded in every output's settings; a labelled bar per stage.
"""
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from unclip_core.checkpoint import list_bundled
from unclip_core.pipeline import UnCLIP

from tiny_models import write_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle left of a blue square"


def fast(**sampling) -> dict:
    """Keyword arguments of a fast call: 3 decoder steps (plus `sampling` fields), no upsampler."""
    return {"sampling": {"decoder_steps": 3, **sampling}, "upsample": False}


@pytest.fixture(scope="module")
def bundled():
    if "shapes-unclip" not in list_bundled():
        pytest.skip("unclip_core/bundled/shapes-unclip is not in this checkout")
    return UnCLIP.load("shapes-unclip")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random pixel pipeline with its decoder's output layer scaled x30, so predicted x0 leaves [-1, 1]
    and the clamp changes pixels (at random-init scale it barely does): the progress tests need that teeth."""
    pipe = UnCLIP.load(write_tiny_pipeline(tmp_path_factory.mktemp("kwonly")))
    with torch.no_grad():
        pipe.decoder.unet.conv_out.weight.mul_(30.0)
        pipe.decoder.unet.conv_out.bias.mul_(30.0)
    return pipe


def _z(pipe: UnCLIP, seed: int = 0, n: int = 2) -> torch.Tensor:
    d = pipe.decoder.config.clip_dim
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _image(seed: int, size: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


def _max_abs_255(a: list[Image.Image], b: list[Image.Image]) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


# ---- (a) progress changes nothing but the bars -----------------------------------------------------------
@pytest.mark.parametrize("call", ["text_to_image", "decode", "variations"])
def test_same_seed_same_images_whatever_progress(tiny, call, capsys):
    def run(progress: bool):
        if call == "text_to_image":
            return tiny.text_to_image(PROMPT, n=2, seed=11, progress=progress, **fast(prior_steps=2))
        if call == "decode":
            return tiny.decode(_z(tiny), seed=11, progress=progress, **fast())
        return tiny.variations(_image(1, 16), n=2, seed=11, progress=progress, **fast())

    quiet, shown = run(False), run(True)
    assert "decoder: DDIM" in capsys.readouterr().err  # the bar was really shown
    assert torch.equal(quiet.stages["decoder"], shown.stages["decoder"])
    assert torch.equal(quiet.z_i, shown.z_i)
    assert [np.asarray(a).tolist() for a in quiet.images] == [np.asarray(b).tolist() for b in shown.images]
    assert quiet.settings["clip_denoised"] is shown.settings["clip_denoised"] is True


def test_the_clamp_matters_so_the_progress_test_has_teeth(tiny):
    """On a pixel decoder clamping predicted x0 changes pixels: had progress leaked into clip_denoised (the bug),
    the test above would see it. text_to_image equals prior + decode with the clamp on. (The bundled v2 family
    has a latent decoder, which never clamps: test_latent_decoder_never_clamps.)"""
    g = torch.Generator().manual_seed(11)
    z_i = tiny.sample_prior(PROMPT, n=2, sampling={"prior_steps": 2}, seed=g)
    state = g.get_state()
    clamped = tiny.decode(z_i, seed=g, **fast())
    unclamped = tiny.decode(z_i, seed=torch.Generator().set_state(state), **fast(clip_denoised=False))
    t2i = tiny.text_to_image(PROMPT, n=2, seed=11, **fast(prior_steps=2))
    assert torch.equal(t2i.z_i, clamped.z_i)  # decode re-normalises the prior's z_i
    assert torch.equal(t2i.stages["decoder"], clamped.stages["decoder"])
    assert _max_abs_255(clamped.images, unclamped.images) >= 20
    assert unclamped.settings["clip_denoised"] is False


# ---- (b) keyword-only past the first one or two arguments -----------------------------------------------
POSITIONAL = {"sample_prior": 1, "decoder_denoiser": 1, "decode": 1, "upsample": 2, "text_to_image": 1,
              "invert": 1, "variations": 1, "inpaint": 2}


@pytest.mark.parametrize("cls", [UnCLIP])
@pytest.mark.parametrize("name", sorted(POSITIONAL))
def test_signatures_are_keyword_only_past_the_first_arguments(cls, name):
    params = list(inspect.signature(getattr(cls, name)).parameters.values())[1:]  # without self
    n = POSITIONAL[name]
    assert [p.kind for p in params[:n]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * n
    assert params[n:] and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[n:]), \
        [(p.name, p.kind.name) for p in params[n:]]


def test_extra_positional_arguments_raise_type_error(tiny):
    z = _z(tiny, n=1)
    x_T = torch.randn(1, 3, 16, 16)
    img = _image(0, 16)
    with pytest.raises(TypeError, match=r"decode\(\) takes 2 positional arguments but 3 were given"):
        tiny.decode(z, x_T)
    with pytest.raises(TypeError, match=r"decode\(\) takes 2 positional arguments but 4 were given"):
        tiny.decode(z, None, 3)
    with pytest.raises(TypeError, match=r"text_to_image\(\) takes 2 positional arguments but 3 were given"):
        tiny.text_to_image("a red circle", 1)
    with pytest.raises(TypeError, match=r"text_to_image\(\) takes 2 positional arguments but 4 were given"):
        tiny.text_to_image("a red circle", 1, 3)
    with pytest.raises(TypeError, match=r"sample_prior\(\) takes 2 positional arguments but 3 were given"):
        tiny.sample_prior("a red circle", 1)
    with pytest.raises(TypeError, match=r"variations\(\) takes 2 positional arguments but 3 were given"):
        tiny.variations(img, 2)
    with pytest.raises(TypeError, match=r"invert\(\) takes 2 positional arguments but 3 were given"):
        tiny.invert([img], 4)
    with pytest.raises(TypeError, match=r"upsample\(\) takes 3 positional arguments but 4 were given"):
        tiny.upsample(torch.zeros(1, 3, 16, 16), 0, 2)
    with pytest.raises(TypeError, match=r"inpaint\(\) takes 3 positional arguments but 4 were given"):
        tiny.inpaint(img, torch.zeros(16, 16), "a red circle")
    with pytest.raises(TypeError, match=r"decoder_denoiser\(\) takes 2 positional arguments but 3 were given"):
        tiny.decoder_denoiser(z, 3.0)


# ---- (c) one clip_denoised rule, recorded -----------------------------------------------------------------
def test_clip_denoised_rule_and_settings(tiny):
    z = tiny.sample_prior(PROMPT, n=2, sampling={"prior_steps": 2}, seed=0)
    fresh = tiny.decode(z, seed=3, **fast())
    t2i = tiny.text_to_image(PROMPT, seed=3, **fast(prior_steps=2))
    assert fresh.settings["clip_denoised"] is True and fresh.settings["x_T_given"] is False
    assert t2i.settings["clip_denoised"] is True and t2i.settings["x_T_given"] is False
    # decode(z_i) from the seed's noise is decode with that noise as x_T and the clamp on
    x_T = torch.randn(z.shape[0], 3, 16, 16, generator=torch.Generator().manual_seed(3))
    given = tiny.decode(z, x_T=x_T, **fast())
    given_clamped = tiny.decode(z, x_T=x_T, **fast(clip_denoised=True))
    assert given.settings["clip_denoised"] is False and given.settings["x_T_given"] is True
    assert given_clamped.settings["clip_denoised"] is True
    assert given.settings["sampling"]["clip_denoised"] is None  # asked: the rule; recorded: what it chose
    assert given_clamped.settings["sampling"]["clip_denoised"] is True
    assert torch.equal(given_clamped.stages["decoder"], fresh.stages["decoder"])
    # a given x_T runs the unclamped ODE, which here moves pixels by tens of levels
    assert _max_abs_255(given.images, fresh.images) >= 20
    assert torch.equal(tiny.decode(z, x_T=x_T, **fast(clip_denoised=False)).stages["decoder"],
                       given.stages["decoder"])
    var = tiny.variations(_image(2, 16), n=2, sampling={"decoder_steps": 2}, seed=0, upsample=False)
    mask = torch.zeros(16, 16)
    mask[:, 8:] = 1
    inp = tiny.inpaint(_image(2, 16), mask, n=1, sampling={"decoder_steps": 2}, n_resample=1, seed=0,
                       upsample=False)
    assert var.settings["clip_denoised"] is True and inp.settings["clip_denoised"] is True
    assert [tiny.clip_denoised_rule(None, x_T_given=g, sampler="ddim") for g in (False, True)] == [True, False]
    assert tiny.clip_denoised_rule(False, x_T_given=False, sampler="ddim") is False
    with pytest.raises(TypeError, match=r"clip_denoised must be True, False or None .* got int 1"):
        tiny.decode(_z(tiny), sampling={"clip_denoised": 1})
    with pytest.raises(TypeError, match=r"clip_denoised must be True or False, got NoneType None"):
        tiny.decoder_denoiser(_z(tiny), clip_denoised=None)


def test_latent_decoder_never_clamps(bundled):
    """The bundled v2 decoder samples autoencoder latents: no [-1, 1] clamp applies, fresh noise or given x_T."""
    z = bundled.sample_prior(PROMPT, n=1, sampling={"prior_steps": 2}, seed=0)
    assert bundled.decode(z, seed=3, **fast()).settings["clip_denoised"] is False
    assert bundled.text_to_image(PROMPT, seed=3, **fast(prior_steps=2)).settings["clip_denoised"] is False
    assert bundled.decode(z, seed=3, **fast(clip_denoised=True)).settings["clip_denoised"] is False  # asked: ignored


def test_every_stage_shows_a_labelled_bar(tiny, capsys):
    sc = tiny.sampling.replace(prior_steps=2, decoder_steps=2, upsampler_steps=(2,))
    quiet = tiny.text_to_image("a red circle", sampling=sc, upsample=True, seed=1)
    assert capsys.readouterr().err == ""
    shown = tiny.text_to_image("a red circle", sampling=sc, upsample=True, seed=1, progress=True)
    err = capsys.readouterr().err
    for label in ("prior: DDIM", "decoder: DDIM", "upsampler1: DDIM"):
        assert f"{label}: 100%" in err, (label, err)
    assert torch.equal(quiet.stages["upsampler1"], shown.stages["upsampler1"])
    tiny.upsample(quiet.stages["decoder"], 0, sampling=sc, seed=0, progress=True)
    tiny.invert([_image(0, 16)], sampling={"decoder_steps": 2}, progress=True)
    mask = torch.ones(16, 16)
    tiny.inpaint(_image(0, 16), mask, prompt="a red circle", sampling={"decoder_steps": 2}, n_resample=1, seed=0,
                 upsample=True,
                 progress=True)
    err = capsys.readouterr().err
    for label in ("upsampler1: DDIM", "decoder: DDIM inversion", "prior: DDIM", "decoder: RePaint"):
        assert f"{label}: 100%" in err, (label, err)
