"""PCA-truncated reconstructions (DALL·E 2 fig. 7) on a tiny random UnCLIP: k lists, numbers, judge, errors."""
import numpy as np
import pytest
import torch

from analyses.projection import fit_projection, pca_truncate
from analyses.tiling import make_grid
from analyses.recon import FRAME_COLUMNS, check_ks, default_ks, pca_reconstructions

from pipeline_fixture import noise_image, pipe, pipe_dir  # noqa: F401 (fixtures)


def _Z(n, dim=16, seed=0):
    Z = np.random.default_rng(seed).normal(size=(n, dim))
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def test_default_ks():
    assert default_ks(1024, 5000) == [20, 30, 40, 80, 120, 160, 200, 320, 1024]
    assert default_ks(512, 100) == [20, 30, 40, 80, 512]
    assert default_ks(16, 16) == [1, 2, 4, 8, 16]
    assert default_ks(16, 5) == [1, 2, 4, 16]
    assert check_ks([8, 2, 2, 16], 16, 10) == [2, 8, 16]


def test_reconstruction_numbers(pipe):
    images = [noise_image(0), noise_image(1)]
    Z_fit = _Z(40)
    r = pca_reconstructions(pipe, images, Z_fit, ks=[2, 4, 16], sampling={"decoder_steps": 2}, seed=1, upsample=False,
                            judge=lambda im: {"mean": float(np.asarray(im).mean())})
    f = r.frame
    assert list(f.columns) == FRAME_COLUMNS + ["judge_mean"]
    assert list(f["image"]) == [0, 0, 0, 1, 1, 1] and list(f["k"]) == [2, 4, 16, 2, 4, 16]
    proj = fit_projection(Z_fit, "pca", n_components=16)
    evr = np.cumsum(proj.explained_variance_ratio_)
    np.testing.assert_allclose(f["explained_variance"].iloc[:2], evr[[1, 3]], rtol=1e-10)
    assert f["explained_variance"].iloc[2] == 1.0
    z_i = pipe.clip.encode_image(images).double()
    z4 = pca_truncate(z_i, proj, 4, renormalize=True)
    np.testing.assert_allclose(f["z_cos"].iloc[[1, 4]], (z4 * z_i).sum(1).numpy(), atol=1e-6)
    np.testing.assert_allclose(f.loc[f["k"] == 16, "z_cos"], 1.0, atol=1e-6)  # k = dim: z_i itself
    emb = pipe.clip.encode_image(r.rows[1][1:]).double()
    np.testing.assert_allclose(f["sim_original"].iloc[3:], (emb @ z_i[1]).numpy(), atol=1e-5)
    np.testing.assert_allclose(f["judge_mean"].iloc[0], np.asarray(r.rows[0][1]).mean())
    assert len(r.rows) == 2 and len(r.rows[0]) == 4 and r.rows[0][0] is not None
    grid = make_grid(r.rows, ["image 0", "image 1"], ["original", "k=2", "k=4", "k=16"], cell_size=64)
    assert r.image.size == grid.size and r.image.size[0] > 4 * 66 + 2 and r.image.size[1] > 2 * 66 + 2
    np.testing.assert_array_equal(np.asarray(r.image), np.asarray(grid))
    assert r.settings["ks"] == [2, 4, 16] and r.settings["n_fit"] == 40 and r.settings["judge"] == "<lambda>"
    assert r.settings["guidance"] == 3.0 and r.settings["sampling"]["decoder_steps"] == 2
    assert (r.settings["sampling"]["decoder_sampler"], r.settings["sampling"]["eta"]) == ("ddim", 0.0)
    assert "steps" not in r.settings and "upsampler_steps" not in r.settings


def test_same_x_T_per_image_across_k(pipe):
    # k = dim decodes z_i itself from the image's x_T, drawn first from the seed
    img = noise_image(3)
    r = pca_reconstructions(pipe, [img], _Z(20), ks=[16], sampling={"decoder_steps": 2}, seed=7, upsample=False)
    x_T = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(7))
    want = pipe.decode(pipe.clip.encode_image([img]), x_T=x_T, upsample=False,
                       sampling={"decoder_steps": 2, "decoder_guidance": 3.0, "clip_denoised": True}).images[0]
    np.testing.assert_array_equal(np.asarray(r.rows[0][1]), np.asarray(want))


def test_errors(pipe):
    img = [noise_image(0)]
    with pytest.raises(ValueError, match="Z_fit has embedding dimension 8, expected 16"):
        pca_reconstructions(pipe, img, _Z(10, dim=8))
    bad = _Z(10)
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="Z_fit contains NaN"):
        pca_reconstructions(pipe, img, bad)
    with pytest.raises(ValueError, match="Z_fit is empty"):
        pca_reconstructions(pipe, img, np.zeros((0, 16)))
    with pytest.raises(ValueError, match="Z_fit needs at least 2 rows"):
        pca_reconstructions(pipe, img, _Z(1))
    with pytest.raises(ValueError, match="images must be a non-empty list"):
        pca_reconstructions(pipe, [], _Z(10))
    with pytest.raises(ValueError, match="k=32 exceeds the embedding dimension 16"):
        pca_reconstructions(pipe, img, _Z(10), ks=[4, 32])
    with pytest.raises(ValueError, match="k=12 exceeds the 10 principal components"):
        pca_reconstructions(pipe, img, _Z(10), ks=[12])
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        pca_reconstructions(pipe, img, _Z(10), ks=[0])
    with pytest.raises(TypeError, match="judge must be a callable"):
        pca_reconstructions(pipe, img, _Z(10), judge="readout")
    with pytest.raises(TypeError, match="judge must return a dict of scores"):
        pca_reconstructions(pipe, img, _Z(10), ks=[16], sampling={"decoder_steps": 1}, upsample=False,
                            judge=lambda im: 0.5)
