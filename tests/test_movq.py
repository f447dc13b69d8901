"""MoVQ (Kandinsky 2.2's autoencoder) equals diffusers' VQModel(norm_type="spatial") tensor for tensor: the tiny
model of diffusers' own Kandinsky 2.2 tests, random weights, loaded into ours with every name and shape checked."""
import pytest
import torch

from unclip_core.movq import MoVQ, MoVQConfig, config_from_diffusers

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
            num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
            vq_embed_dim=4)


@pytest.fixture(scope="module")
def pair():
    from diffusers import VQModel
    torch.manual_seed(0)
    ref = VQModel(**TINY).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # no zero layers: every tensor matters
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.05) + (1.0 if p.ndim == 1 and
                                                                                            p.shape[0] > 0 else 0))
    ours = MoVQ(config_from_diffusers(dict(ref.config))).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref, ours


def test_every_tensor_maps_by_name_and_shape(pair):
    ref, ours = pair
    a, b = ref.state_dict(), ours.state_dict()
    assert set(a) == set(b) and len(a) == 219
    assert all(a[k].shape == b[k].shape for k in a)
    assert ours.config.factor == 2 and ours.config.attention == (False, True)


def test_encode_and_decode_equal_diffusers(pair):
    ref, ours = pair
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        want_z = ref.encode(x).latents
        got_z = ours.encode(x)
        torch.testing.assert_close(got_z, want_z, rtol=1e-4, atol=1e-4 * float(want_z.abs().max()))
        want = ref.decode(want_z, force_not_quantize=True).sample
        got = ours.decode(want_z)
    assert got.shape == (2, 3, 64, 48) and want.std() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with torch.no_grad():  # the VQ latent: diffusers' quantizer picks the same codes
        q_ref = ref.quantize(want_z)[0]
    torch.testing.assert_close(ours.codebook_latents(want_z), q_ref, rtol=1e-5, atol=1e-6)


def test_config_errors():
    with pytest.raises(ValueError, match=r"attention has 1 entries for 2 levels"):
        MoVQConfig(block_out_channels=(32, 64), attention=(True,))
    with pytest.raises(ValueError, match=r"norm_type.*differs from MoVQ's"):
        config_from_diffusers({**TINY, "norm_type": "group"})
    with pytest.raises(ValueError, match=r"MoVQ takes \(Attn\)DownEncoderBlock2D"):
        config_from_diffusers({**TINY, "down_block_types": ["CrossAttnDownBlock2D", "DownEncoderBlock2D"]})
    ours = MoVQ(MoVQConfig(block_out_channels=(32, 64), attention=(False, True), norm_num_groups=8,
                           num_vq_embeddings=4, image_size=64))
    with pytest.raises(ValueError, match=r"multiples of 2"):
        ours.encode(torch.zeros(1, 3, 63, 64))


def test_a_movq_is_a_latent_decoders_autoencoder_in_a_pipeline(pair, tmp_path):
    """Saved as a checkpoint and used as the `autoencoder` stage of a latent pipeline, a MoVQ decodes the
    decoder's latents to pixels and inverts images in its latent space, as our KL autoencoder does."""
    from unclip_core.checkpoint import load_checkpoint, save_checkpoint
    from unclip_core.clip import ClipEncoder
    from unclip_core.decoder import Decoder, DecoderConfig
    from unclip_core.pipeline import StageInfo, UnCLIP
    _, ours = pair
    folder = save_checkpoint(tmp_path / "movq", ours)
    loaded = load_checkpoint(folder)
    assert isinstance(loaded, MoVQ) and loaded.config == ours.config
    torch.testing.assert_close(loaded.state_dict()["decoder.conv_out.weight"], ours.state_dict()["decoder.conv_out.weight"])
    clip = ClipEncoder.load("shapes-clip")
    dec = Decoder(DecoderConfig(image_size=32, in_channels=4, model_channels=16, channel_mult=(1, 2), n_res_blocks=1,
                                attention_resolutions=(16,), head_channels=8, clip_dim=clip.embed_dim, norm_groups=8,
                                text_width=0))
    pipe = UnCLIP(clip, dec, stage_info={"decoder": StageInfo("eps", None)}, autoencoder=loaded)
    assert pipe.resolutions == [64] and pipe.x_T_shape(2) == (2, 4, 32, 32)
    z = clip.encode_text(["a red circle", "a blue square"])
    out = pipe.decode(z, sampling={"decoder_steps": 2}, seed=0)
    assert out.stages["decoder_latents"].shape == (2, 4, 32, 32) and out.stages["decoder"].shape == (2, 3, 64, 64)
    z_i, x_T = pipe.invert(out.images[:1], sampling={"decoder_steps": 2, "invert_refine": 0})
    assert x_T.shape == (1, 4, 32, 32)


@pytest.mark.parametrize("size", [(16, 24), (10, 10)])
def test_spatial_norm_at_the_latent_size_equals_resizing_z_q(size):
    """The scale and shift convolved at the latent's size and broadcast over each block equal diffusers' formula
    (z_q resized to f, then convolved); a size that is no multiple of the latent's takes the formula itself."""
    import torch.nn.functional as F
    from unclip_core.movq import SpatialNorm
    torch.manual_seed(0)
    norm = SpatialNorm(64, 4).eval()
    g = torch.Generator().manual_seed(1)
    f, zq = torch.randn(2, 64, *size, generator=g) * 3, torch.randn(2, 4, 4, 4, generator=g)
    with torch.no_grad():
        up = F.interpolate(zq, size=size, mode="nearest")
        want = norm.norm_layer(f) * norm.conv_y(up) + norm.conv_b(up)
        got = norm(f, zq)
    assert float(want.abs().max()) > 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
