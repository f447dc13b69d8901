"""Interpolations (DALL·E 2 fig. 4) on a tiny random UnCLIP: fixed and inverted x_T, text ends, grids, errors."""
import warnings

import numpy as np
import pytest
import torch

from analyses.interpolation import FRAME_COLUMNS, interpolate, interpolation_grid
from analyses.latent_math import slerp
from analyses.tiling import PAD

from pipeline_fixture import INVERT, noise_image, pipe, pipe_dir  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def inverted(pipe):
    a, b = noise_image(0), noise_image(1)
    return a, b, interpolate(pipe, a, b, n_steps=4, x_T_mode="inverted", upsample=False, sampling=INVERT)


def test_fixed_x_T_and_equal_ends_give_identical_frames(pipe):
    img = noise_image(3)
    r = interpolate(pipe, img, img, n_steps=3, sampling={"decoder_steps": 2, "upsampler_steps": (2,)}, seed=5,
                    upsample=True)
    assert list(r.frame.columns) == FRAME_COLUMNS
    np.testing.assert_array_equal(r.frame["frame"], [0, 1, 2])
    np.testing.assert_allclose(r.frame["t"], [0.0, 0.5, 1.0])
    # one noise for all frames, drawn first from the seed (image ends draw nothing before it)
    x_T = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(r.x_T, x_T.expand(3, -1, -1, -1))
    torch.testing.assert_close(r.z_i[0], r.z_i[2])
    for k in (1, 2):  # same z_i, same x_T, same upsampler noise -> the same picture
        torch.testing.assert_close(r.decoded[k], r.decoded[0], atol=1e-6, rtol=0)
        assert np.abs(np.asarray(r.images[k], np.int16) - np.asarray(r.images[0], np.int16)).max() <= 1
    assert r.images[0].size == (32, 32)
    np.testing.assert_allclose(r.frame["sim_a"], r.frame["sim_b"], atol=1e-6)
    np.testing.assert_allclose(r.frame[["z_cos_a", "z_cos_b"]].to_numpy(), 1.0, atol=1e-6)
    assert r.settings["seed"] == 5 and r.settings["x_T_mode"] == "fixed" and r.settings["kind_a"] == "image"
    sc = r.settings["sampling"]  # the frames': DDIM at eta 0, clamped (fresh noise), the steps asked
    assert (sc["decoder_sampler"], sc["eta"], sc["clip_denoised"]) == ("ddim", 0.0, True)
    assert sc["decoder_steps"] == 2 and sc["upsampler_steps"] == [2]
    assert not {"steps", "refine", "prior_steps", "prior_guidance", "upsampler_steps"} & set(r.settings)


def test_inverted_x_T_end_frames_reconstruct_their_inputs(inverted):
    a, b, r = inverted
    f = r.frame
    assert f["l1_a"].iloc[0] < 0.01 and f["l1_b"].iloc[-1] < 0.01  # measured 0.002 (refine=4)
    assert f["l1_a"].iloc[-1] > 0.3 and f["l1_b"].iloc[0] > 0.3  # the ends differ: the check has teeth
    np.testing.assert_allclose([f["z_cos_a"].iloc[0], f["z_cos_b"].iloc[-1]], 1.0, atol=1e-6)
    assert (np.diff(f["t"]) > 0).all()
    assert (np.diff(f["z_cos_a"]) < 0).all() and (np.diff(f["z_cos_b"]) > 0).all()
    # x_T is the slerp of the two inverted x_T: frame 0 and the last are exactly the inversions
    x_T_ends = r.x_T[[0, -1]]
    mid = slerp(x_T_ends[0].reshape(-1).double(), x_T_ends[1].reshape(-1).double(), 1 / 3).float()
    torch.testing.assert_close(r.x_T[1].reshape(-1), mid, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(r.x_T[0], r.x_T[-1])


def test_inverted_ends_match_pipe_invert(pipe, inverted):
    a, b, r = inverted
    z, x_T = pipe.invert([a, b], sampling=INVERT)
    torch.testing.assert_close(r.x_T[0], x_T[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.z_i[-1], z[1].float(), atol=1e-6, rtol=1e-6)


def test_text_ends(pipe):
    r = interpolate(pipe, "a red circle", "a blue square", n_steps=3, text_as="z_t", sampling={"decoder_steps": 2},
                    upsample=False)
    z_t = pipe.clip.encode_text(["a red circle", "a blue square"])
    torch.testing.assert_close(r.z_i[[0, -1]], z_t, atol=1e-6, rtol=1e-6)
    assert r.frame["l1_a"].isna().all() and r.frame["l1_b"].isna().all()
    # sim_a is image-text cosine with the caption a
    emb = pipe.clip.encode_image(r.images)
    np.testing.assert_allclose(r.frame["sim_a"], (emb @ z_t[0]).numpy(), atol=1e-5)
    # with the prior, the first draw of the seeded generator is caption a's z_i
    p = interpolate(pipe, "a red circle", noise_image(2), n_steps=2, text_as="prior",
                    sampling={"prior_steps": 2, "decoder_steps": 1}, seed=4, upsample=False)
    z_prior = pipe.sample_prior(["a red circle"], sampling={"prior_steps": 2, "prior_guidance": 4.0},
                                seed=torch.Generator().manual_seed(4))
    torch.testing.assert_close(p.z_i[0], z_prior[0], atol=1e-6, rtol=1e-6)
    assert p.settings["kind_a"] == "text" and p.settings["kind_b"] == "image"


def test_interpolation_grid_places_every_frame(pipe):
    g = interpolation_grid(pipe, [(noise_image(0), noise_image(1)), ("a red circle", "a blue square")], n_steps=3,
                           text_as="z_t", sampling={"decoder_steps": 1}, upsample=False)
    assert len(g.rows) == 2 and all(len(r) == 3 for r in g.rows)
    assert list(g.frame["pair"]) == [0, 0, 0, 1, 1, 1]
    assert g.settings["pairs"][1] == ["a red circle", "a blue square"]
    w, h = g.image.size
    cell = 64  # 16px frames enlarged to the 64px minimum cell
    # the last cell of the last row sits PAD from the bottom-right corner and holds the enlarged frame
    x0, y0 = w - PAD - cell, h - PAD - cell
    got = np.asarray(g.image.crop((x0, y0, x0 + cell, y0 + cell)))
    want = np.asarray(g.rows[1][2].resize((cell, cell), 0))
    np.testing.assert_array_equal(got, want)


def test_guidance_defaults_to_the_inversion_s_for_inverted_x_T_and_3_for_fixed(pipe):
    a, b = noise_image(0), noise_image(1)
    quick = {"decoder_steps": 1, "invert_refine": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults never warn
        inv = interpolate(pipe, a, b, n_steps=2, x_T_mode="inverted", sampling=quick, upsample=False)
        fixed = interpolate(pipe, a, b, n_steps=2, sampling=quick, upsample=False)
        # invert_guidance only matters to inverted x_T: fixed frames ignore it, without a warning
        fixed3 = interpolate(pipe, a, b, n_steps=2, sampling={**quick, "invert_guidance": 3.0}, upsample=False)
    assert (inv.settings["guidance"], inv.settings["invert_guidance"]) == (1.0, 1.0)
    assert inv.settings["sampling"]["decoder_guidance"] == 1.0 and inv.settings["sampling"]["clip_denoised"] is False
    assert (fixed.settings["guidance"], fixed.settings["invert_guidance"]) == (3.0, None)
    assert (fixed3.settings["guidance"], fixed3.settings["invert_guidance"]) == (3.0, None)
    assert torch.equal(fixed3.decoded, fixed.decoded)
    with pytest.warns(UserWarning, match=r"invert_guidance=3 with x_T_mode='inverted': .* keep invert_guidance at 1"):
        r = interpolate(pipe, a, b, n_steps=2, x_T_mode="inverted", sampling={**quick, "invert_guidance": 3.0},
                        upsample=False)
    assert r.settings["invert_guidance"] == 3.0  # the inversion runs the ODE the frames are decoded with
    assert r.settings["guidance"] == 3.0 and r.settings["sampling"]["decoder_guidance"] == 3.0


def test_errors(pipe):
    img = noise_image(0)
    with pytest.raises(ValueError, match="x_T_mode='inverted' needs images at both ends, but b is a caption"):
        interpolate(pipe, img, "a red circle", x_T_mode="inverted")
    with pytest.raises(ValueError, match="x_T_mode='noisy' is not known; accepted: 'fixed', 'inverted'"):
        interpolate(pipe, img, img, x_T_mode="noisy")
    with pytest.raises(ValueError, match="text_as='clip' is not known; accepted: 'prior', 'z_t'"):
        interpolate(pipe, img, img, text_as="clip")
    with pytest.raises(ValueError, match="n_steps must be >= 2, got 1"):
        interpolate(pipe, img, img, n_steps=1)
    with pytest.raises(FileNotFoundError, match="b: image file not found: missing.png"):
        interpolate(pipe, img, "missing.png")
    with pytest.raises(ValueError, match="a is an empty string"):
        interpolate(pipe, " ", img)
    with pytest.raises(TypeError, match="seed must be an int, a torch.Generator or None, got str"):
        interpolate(pipe, img, img, seed="0")
    with pytest.raises(ValueError, match=r"guidance must lie in \[0, 100\]"):
        interpolate(pipe, img, img, sampling={"decoder_guidance": float("nan")})
    with pytest.raises(TypeError, match="pipe must be an unclip_core.pipeline.UnCLIP"):
        interpolate(object(), img, img)
    with pytest.raises(ValueError, match=r"pairs\[0\] must be an \(a, b\) pair"):
        interpolation_grid(pipe, [(img,)])
    with pytest.raises(ValueError, match="pairs must be a non-empty list"):
        interpolation_grid(pipe, [])
