"""The bundled ShapesWorld unCLIP family (`shapes-unclip`): it loads by name and draws what it is asked for.

Quality is measured by `unclip-explorer evaluate` (numbers in its model card); these tests pin a few fixed-seed
numbers of the shipped weights so a broken loader, sampler or export shows up as a failed read-out.
"""
import numpy as np
import pytest
import torch

from unclip_core.checkpoint import list_bundled
from unclip_core.data.readout import score_attributes
from unclip_core.data.shapes import caption, render, sample_scene

pytestmark = pytest.mark.skipif("shapes-unclip" not in list_bundled(),
                                reason="unclip_core/bundled/shapes-unclip is not in this checkout")


@pytest.fixture(scope="module")
def pipe():
    from unclip_core.pipeline import UnCLIP
    torch.set_num_threads(1)
    return UnCLIP.load("shapes-unclip")


def test_loads_by_name_with_the_paper_s_cascade(pipe):
    assert pipe.name == "shapes-unclip"
    assert pipe.resolutions == [64, 256, 1024]
    assert pipe.prior is not None and pipe.clip.embed_dim == 128 and pipe.clip.world == 2
    assert {k: v.prediction for k, v in pipe.stage_info.items()} == {
        "prior": "x0", "decoder": "v", "upsampler1": "v", "upsampler2": "v"}
    assert pipe.autoencoder is not None and pipe.x_T_shape(1) == (1, 4, 16, 16)  # a latent decoder
    assert pipe.default_upsample == 0  # neither upsampler beats bicubic (card)
    # pipeline.json "sampling": the settings its card was measured with, over SamplingConfig's defaults
    from unclip_core.sampling import SamplingConfig
    assert pipe.sampling == SamplingConfig(prior_steps=25, decoder_steps=25)


def test_decoder_reconstructs_one_object_scenes(pipe):
    """Fixed seeds: read-out of 8 reconstructions from the true z_i (every attribute; the v1 decoder had shape
    2/8 right)."""
    rng = np.random.default_rng(123)
    scenes = [sample_scene(rng, 1, world=2) for _ in range(8)]  # the bundled pipeline is ShapesWorld v2
    z_i = pipe.encode_images([render(s, 64) for s in scenes])
    out = pipe.decode(z_i, sampling={"decoder_steps": 15}, upsample=False, seed=0)
    assert out.images[0].size == (64, 64)
    df = score_attributes(out.images, scenes)
    assert df["colour_correct"].mean() >= 0.875  # chance is 1/6
    assert df["size_correct"].mean() >= 0.875  # chance is 1/2
    assert df["position_correct"].mean() >= 0.875  # the spatial z_i map puts objects where z_i says
    assert (df["n_read"] == 1).mean() >= 0.875   # one clean object, not noise or a spurious second one
    assert df["shape_correct"].mean() >= 0.875   # v2: shape is visible at 64 px and carried by z_i


def test_prior_maps_captions_next_to_their_renders(pipe):
    """z_i from the prior lies near the CLIP embedding of a render of its caption (fresh scenes, fixed seeds)."""
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng, 1 + k % 2, world=2) for k in range(16)]
    z_true = pipe.encode_images([render(s, 64) for s in scenes])
    z_hat = pipe.sample_prior([caption(s) for s in scenes], sampling={"prior_steps": 25}, seed=0)
    sim = z_hat @ z_true.T
    assert sim.diag().mean() >= 0.9   # measured 0.97
    assert (sim.argmax(1) == torch.arange(16)).float().mean() >= 0.875  # retrieves its own render among 16 (16/16)
