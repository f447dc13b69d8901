"""The bundled ShapesWorld unCLIP family (`shapes-unclip`): it loads by name and draws what it is asked for.

Quality is measured by `unclip-explorer evaluate` (numbers in its model card); these tests pin a few fixed-seed
numbers of the shipped weights so a broken loader, sampler or export shows up as a failed read-out.
"""
import numpy as np
import pytest
import torch

from unclip_core.checkpoint import list_bundled
from unclip_core.data.readout import score_attributes
from unclip_core.data.shapes import parse, render, sample_scene

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
    assert pipe.prior is not None and pipe.clip.embed_dim == 128
    assert {k: v.prediction for k, v in pipe.stage_info.items()} == {
        "prior": "x0", "decoder": "v", "upsampler1": "v", "upsampler2": "v"}


def test_decoder_reconstructs_shape_and_colour_of_one_object_scenes(pipe):
    rng = np.random.default_rng(123)
    scenes = [sample_scene(rng, 1) for _ in range(8)]
    z_i = pipe.encode_images([render(s, 64) for s in scenes])
    out = pipe.decode(z_i, steps=15, upsample=False, seed=0)
    df = score_attributes(out.images, scenes)
    assert df["colour_correct"].mean() >= COLOUR_MIN
    assert df["shape_correct"].mean() >= SHAPE_MIN


def test_text_to_image_draws_the_colour_it_is_told(pipe):
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    out = pipe.text_to_image(prompts, steps=15, prior_steps=15, upsample=False, seed=0)
    df = score_attributes(out.images, [parse(p) for p in prompts])
    assert df["colour_correct"].mean() >= T2I_COLOUR_MIN
