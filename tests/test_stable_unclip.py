"""Stable Diffusion 2.1 unCLIP on our stages, against diffusers' StableUnCLIPImg2ImgPipeline / StableUnCLIPPipeline on
tiny random models (diffusers' own fast-test widths, a 2-level VAE): the VAE, the noise augmentation of the image
embedding, one UNet step, whole variations and text-to-image from the same noises, and every analysis by the same
calls as on the other families."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stable_unclip import build_random_stable_unclip, float64_tables  # noqa: E402
from unclip_core.decoder import Decoder  # noqa: E402
from unclip_core.families.diffusers_unet import load_mapped  # noqa: E402
from unclip_core.families.stable_unclip import (STABLE_UNCLIP_CONVENTIONS, decoder_config_from_stable_unclip,  # noqa: E402
                                                import_stable_unclip, map_decoder_state)
from unclip_core.pipeline import UnCLIP  # noqa: E402

D = 32  # the tiny image-embedding dimension


def _close(got, want, rel=1e-4):
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def img2img(tmp_path_factory):
    """(diffusers img2img pipeline, our imported pipeline, source folder)."""
    root = tmp_path_factory.mktemp("stable-unclip")
    src, ref = build_random_stable_unclip(root / "src", "tiny", "img2img")
    return ref, UnCLIP.load(import_stable_unclip(src, root / "ours")), src


@pytest.fixture(scope="module")
def text2img(tmp_path_factory):
    root = tmp_path_factory.mktemp("stable-unclip-text")
    src, ref = build_random_stable_unclip(root / "src", "tiny", "text")
    return ref, UnCLIP.load(import_stable_unclip(src, root / "ours")), src


def _image(seed, size=32):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


# ---- the pieces ----------------------------------------------------------------------------------------------------
def test_vae_encodes_and_decodes_as_diffusers(img2img):
    ref, ours, _ = img2img
    vae = ours.autoencoder
    assert type(vae).__name__ == "KLAutoencoder" and vae.config.factor == 2 and vae.config.latent_size == 16
    assert set(vae.state_dict()) == set(ref.vae.state_dict())
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want_z = ref.vae.encode(x).latent_dist.mean * ref.vae.config.scaling_factor
        err_z = _close(vae.encode(x), want_z)
        want = ref.vae.decode(want_z / ref.vae.config.scaling_factor).sample
        err = _close(vae.decode(want_z), want)
    assert want.std() > 0.1 and max(err_z, err) < 1e-5


def test_noise_augmentation_equals_noise_image_embeddings(img2img):
    """normalise -> q_sample at noise_level (squaredcos) -> un-normalise -> [., sinusoidal(noise_level)]."""
    from unclip_core.noise_aug import augment_z_i
    ref, ours, _ = img2img
    g = torch.Generator().manual_seed(1)
    z_i, eps = torch.randn(3, D, generator=g) * 2, torch.randn(3, D, generator=g)
    for level in (0, 250, 999):
        with torch.no_grad():
            want = ref.noise_image_embeddings(z_i, level, noise=eps)
        got = augment_z_i(z_i, level, mean=ours.decoder.z_i_mean.detach(), std=ours.decoder.z_i_std.detach(),
                          schedule=ours.schedules["z_i_noising"], noise=eps)
        assert got.shape == (3, 2 * D)
        _close(got, want, 1e-5)
    with pytest.raises(ValueError, match=r"noise_level must be an int in \[0, 999\]"):
        augment_z_i(z_i, 1000, mean=torch.zeros(D), std=torch.ones(D), schedule=ours.schedules["z_i_noising"],
                    noise=eps)


def test_one_unet_step_equals_diffusers(img2img):
    ref, ours, _ = img2img
    c = ours.decoder.config
    assert (c.attention_kind, c.noise_augmented, c.clip_dim, c.text_width, c.head_channels) == ("cross", True, D, 32, 16)
    assert c.attention_resolutions == (16,) and not c.learn_sigma and not c.use_scale_shift_norm
    n_ref = sum(p.numel() for p in ref.unet.parameters()) + 2 * D  # + the normalizer's mean and std
    assert sum(p.numel() for n, p in ours.decoder.named_parameters() if n != "null_z_i") == n_ref
    g = torch.Generator().manual_seed(2)
    x, emb = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 2 * D, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([981, 21])
    with torch.no_grad():
        want = ref.unet(x, t, encoder_hidden_states=text, class_labels=emb).sample
        got = ours.decoder(x, t, text_tokens=text, z_i_aug=emb)
    assert want.std() > 0.1
    assert _close(got, want) < 1e-5


def test_decoder_config_names_what_it_cannot_express():
    cfg = json.loads(json.dumps(dict(
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[32, 64], attention_head_dim=[2, 4], class_embed_type="projection",
        projection_class_embeddings_input_dim=64, cross_attention_dim=32, sample_size=16, in_channels=4,
        out_channels=4, layers_per_block=1, mid_block_type="UNetMidBlock2DCrossAttn")))
    assert decoder_config_from_stable_unclip(cfg).head_channels == 16
    with pytest.raises(ValueError, match=r"class_embed_type='timestep' \(supported: 'projection'\)"):
        decoder_config_from_stable_unclip({**cfg, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match=r"give head widths \[8, 16\]; our Decoder takes one head width"):
        decoder_config_from_stable_unclip({**cfg, "attention_head_dim": [4, 4]})
    with pytest.raises(ValueError, match=r"projection_class_embeddings_input_dim=None"):
        decoder_config_from_stable_unclip({k: v for k, v in cfg.items() if k != "projection_class_embeddings_input_dim"})
