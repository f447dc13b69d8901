"""At their defaults, the inverted-x_T frames of interpolation and text diff reconstruct their input on shapes-unclip.

Frames decoded from a DDIM-inverted x_T use the guidance the inversion used (invert_guidance, 1 by default).
decoder_steps is lowered from the pipeline's 25 to keep the test short; at 20 steps, on the 20 renders of
docs/analyses.md, guidance 1 gives mean |pixel error| 0.0044 (max 0.0098) and guidance 3 (the earlier default) 0.0056 (max 0.0255, render 5011).
Renders 5013 and 5016 missed by 0.12 and 0.04 under guidance 3 at 50 steps.
"""
import warnings

import numpy as np
import pytest
import torch

from explorer import analysis_api
from unclip_core.checkpoint import list_bundled
from unclip_core.data.shapes import render, sample_scene

pytestmark = pytest.mark.skipif("shapes-unclip" not in list_bundled(),
                                reason="unclip_core/bundled/shapes-unclip is not in this checkout")

STEPS = 20  # decoder DDIM steps of the inversion and the frames (the pipeline's: 25)
BOUND = 0.02  # mean |pixel error|, pixels in [0, 1]


@pytest.fixture(scope="module")
def pipe():
    from unclip_core.pipeline import UnCLIP
    torch.set_num_threads(1)
    return UnCLIP.load("shapes-unclip")


def _render(seed: int):
    return render(sample_scene(np.random.default_rng(seed), n_objects=1 + seed % 2), 64)


def test_inverted_frames_reconstruct_at_the_default_guidance(pipe):
    a, b, c = _render(5013), _render(5016), _render(5011)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults do not warn
        r = analysis_api.interpolate(pipe, a, b, n_steps=2, x_T_mode="inverted", sampling={"decoder_steps": STEPS},
                                     upsample=False)
        td = analysis_api.text_diff(pipe, c, "a red circle", "a blue square", n_steps=2,
                                    sampling={"decoder_steps": STEPS}, upsample=False)
    assert r.settings["guidance"] == r.settings["invert_guidance"] == 1.0
    assert td.settings["guidance"] == td.settings["invert_guidance"] == 1.0
    assert r.settings["sampling"]["invert_refine"] == td.settings["sampling"]["invert_refine"] == 3  # the default
    # l1 columns are in [-1, 1]; halve for pixels in [0, 1]
    errors = np.array([r.frame["l1_a"].iloc[0], r.frame["l1_b"].iloc[-1], td.frame["l1_input"].iloc[0]]) / 2
    assert (errors <= BOUND).all(), errors  # measured 0.0026, 0.0040, 0.0031; guidance 3: 0.0154, 0.0036, 0.0255
    assert r.frame["l1_a"].iloc[-1] / 2 > 2 * BOUND  # the ends differ, so the bound has teeth
