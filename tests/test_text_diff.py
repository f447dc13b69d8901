"""Text diffs (DALL·E 2 sec. 3.3, fig. 5) on a tiny random UnCLIP: the path, fixed x_T, inversion, errors."""
import warnings

import numpy as np
import pytest
import torch

from analyses.latent_math import text_diff_path
from analyses.text_diff import FRAME_COLUMNS, text_diff

from pipeline_fixture import INVERT, noise_image, pipe, pipe_dir  # noqa: F401 (fixtures)

OLD, NEW = "a red circle", "a blue square"


def _z(pipe, img, *texts):
    return pipe.clip.encode_image([img])[0].double(), pipe.clip.encode_text(list(texts)).double()


def test_inverted_first_frame_reconstructs_and_path_is_the_text_diff(pipe):
    img = noise_image(0)
    r = text_diff(pipe, img, OLD, NEW, theta_max=0.5, n_steps=3, upsample=False, sampling=INVERT)
    f = r.frame
    assert list(f.columns) == FRAME_COLUMNS
    np.testing.assert_allclose(f["theta"], [0.0, 0.25, 0.5])
    assert f["l1_input"].iloc[0] < 0.01  # measured 0.002: DDIM inversion makes frame 0 the input
    assert f["l1_input"].iloc[-1] > 0.1
    z_i, z_t = _z(pipe, img, OLD, NEW)
    want = text_diff_path(z_i, z_t[1], z_t[0], 0.5, 3).float()
    torch.testing.assert_close(r.z_theta, want, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(f["z_cos_input"].iloc[0], 1.0, atol=1e-6)
    assert (np.diff(f["z_cos_new"]) > 0).all() and (np.diff(f["z_cos_input"]) < 0).all()
    torch.testing.assert_close(r.x_T, r.x_T[:1].expand(3, -1, -1, -1))  # x_T held fixed across the row
    emb = pipe.clip.encode_image(r.images).double()
    np.testing.assert_allclose(f["sim_old"], (emb @ z_t[0]).numpy(), atol=1e-5)
    np.testing.assert_allclose(f["sim_new"], (emb @ z_t[1]).numpy(), atol=1e-5)
    assert r.settings["baseline"] == "caption" and r.settings["x_T_mode"] == "inverted"


def test_baselines_and_fixed_noise(pipe):
    img = noise_image(1)
    z_i, z_t = _z(pipe, img, OLD, NEW, "a picture")
    none = text_diff(pipe, img, OLD, NEW, baseline="none", x_T_mode="fixed", n_steps=2,
                     sampling={"decoder_steps": 1}, seed=3, upsample=False)
    torch.testing.assert_close(none.z_theta, text_diff_path(z_i, z_t[1], None, 0.5, 2).float(), atol=1e-6, rtol=1e-6)
    x_T = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(none.x_T, x_T.expand(2, -1, -1, -1))
    neutral = text_diff(pipe, img, OLD, NEW, baseline="neutral", x_T_mode="fixed", n_steps=2,
                        sampling={"decoder_steps": 1}, upsample=False)
    torch.testing.assert_close(neutral.z_theta, text_diff_path(z_i, z_t[1], z_t[2], 0.5, 2).float(), atol=1e-6,
                               rtol=1e-6)
    assert neutral.settings["neutral_caption"] == "a picture"


def test_theta_max_zero_gives_identical_frames(pipe):
    r = text_diff(pipe, noise_image(2), OLD, NEW, theta_max=0.0, n_steps=3, x_T_mode="fixed",
                  sampling={"decoder_steps": 2}, upsample=False)
    for k in (1, 2):
        torch.testing.assert_close(r.decoded[k], r.decoded[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(r.frame["theta"], 0.0)


def test_guidance_defaults_to_the_inversion_s_for_inverted_x_T_and_3_for_fixed(pipe):
    img = noise_image(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults never warn
        inv = text_diff(pipe, img, OLD, NEW, n_steps=2, sampling={"decoder_steps": 1, "invert_refine": 0},
                        upsample=False)
        fixed = text_diff(pipe, img, OLD, NEW, n_steps=2, sampling={"decoder_steps": 1}, x_T_mode="fixed",
                          upsample=False)
    assert (inv.settings["guidance"], inv.settings["invert_guidance"]) == (1.0, 1.0)
    assert (fixed.settings["guidance"], fixed.settings["invert_guidance"]) == (3.0, None)
    assert inv.settings["sampling"]["clip_denoised"] is False and fixed.settings["sampling"]["clip_denoised"] is True
    assert inv.settings["sampling"]["decoder_steps"] == fixed.settings["sampling"]["decoder_steps"] == 1
    assert not {"steps", "refine", "upsampler_steps"} & set(inv.settings)
    with pytest.warns(UserWarning, match="invert_guidance=2 with x_T_mode='inverted'"):
        r = text_diff(pipe, img, OLD, NEW, n_steps=2, upsample=False,
                      sampling={"decoder_steps": 1, "invert_refine": 0, "invert_guidance": 2})
    assert (r.settings["guidance"], r.settings["invert_guidance"]) == (2.0, 2.0)


def test_errors(pipe, tmp_path):
    img = noise_image(0)
    with pytest.raises(ValueError, match=r"theta_max must lie in \[0, 1\].*got 1.5"):
        text_diff(pipe, img, OLD, NEW, theta_max=1.5)
    with pytest.raises(ValueError, match=r"theta_max must lie in \[0, 1\].*got -0.1"):
        text_diff(pipe, img, OLD, NEW, theta_max=-0.1)
    with pytest.raises(TypeError, match="theta_max must be a float in"):
        text_diff(pipe, img, OLD, NEW, theta_max="0.5")
    with pytest.raises(ValueError, match="baseline='old' is not known; accepted: 'caption', 'neutral', 'none'"):
        text_diff(pipe, img, OLD, NEW, baseline="old")
    with pytest.raises(ValueError, match="z_t equals z_t0: the captions embed identically"):
        text_diff(pipe, img, OLD, OLD, x_T_mode="fixed")
    with pytest.raises(ValueError, match="new_caption must be a non-empty caption string"):
        text_diff(pipe, img, OLD, "")
    with pytest.raises(FileNotFoundError, match="image: image file not found"):
        text_diff(pipe, tmp_path / "missing.png", OLD, NEW)
    with pytest.raises(ValueError, match="n_steps must be >= 2"):
        text_diff(pipe, img, OLD, NEW, n_steps=1)
