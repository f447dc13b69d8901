"""A tiny random UnCLIP (tests/tiny_models.py) as module-scoped fixtures, plus random 16px test images."""
import numpy as np
import pytest
from PIL import Image

from tiny_models import write_tiny_pipeline
from unclip_core.pipeline import UnCLIP

# sampling settings (SamplingConfig fields) of an inversion on the tiny random decoder, measured at 4 steps and
# guidance 1: mean |error| of decode(invert(x)) is 0.28 with refine 2, 0.02 with 3 and 0.002 with 4
INVERT = {"decoder_steps": 4, "invert_guidance": 1.0, "invert_refine": 4}


def noise_image(seed: int, size: int = 16) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    return UnCLIP.load(pipe_dir)
