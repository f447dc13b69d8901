"""Kandinsky 2.2 on our stages, against diffusers on the tiny random models of diffusers' own Kandinsky 2.2 tests:
the decoder UNet (image-embedding conditioning, 32 image tokens, learned-variance channels) step for step."""
import pytest
import torch

from unclip_core.decoder import Decoder
from unclip_core.families.diffusers_unet import load_mapped
from unclip_core.families.kandinsky import decoder_config_from_kandinsky, map_decoder_state

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_UNET = dict(in_channels=4, out_channels=8, addition_embed_type="image",
                 down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                 up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                 mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
                 encoder_hid_dim=32, encoder_hid_dim_type="image_proj", cross_attention_dim=32, attention_head_dim=4,
                 resnet_time_scale_shift="scale_shift", class_embed_type=None, sample_size=32)


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / max(p[0].numel(), 1) ** 0.5)
    return model


@pytest.fixture(scope="module")
def unets():
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    ref = _randomize(UNet2DConditionModel(**TINY_UNET), 1).eval()
    cfg = decoder_config_from_kandinsky(dict(ref.config))
    null = torch.randn(32, generator=torch.Generator().manual_seed(3))
    ours = load_mapped(Decoder(cfg), map_decoder_state(ref.state_dict(), null), "tiny unet").eval()
    return ref, ours


def test_decoder_config_and_every_tensor(unets):
    ref, ours = unets
    c = ours.config
    assert (c.image_size, c.in_channels, c.n_clip_tokens, c.context_dim, c.clip_dim) == (32, 4, 32, 32, 32)
    assert c.learn_sigma and c.clip_time_norm and c.clip_tokens_norm and not c.text_width and not c.use_z_t
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = sum(p.numel() for n, p in ours.named_parameters() if n != "null_z_i")
    assert n_ours == n_ref


def test_one_unet_step_equals_diffusers(unets):
    ref, ours = unets
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 32, 32, generator=g)
    z = torch.randn(2, 32, generator=g)
    t = torch.tensor([999, 17])
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": z}).sample
        got = ours(x, t, z_i=z)
    assert got.shape == want.shape == (2, 8, 32, 32) and want.std() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_what_our_decoder_cannot_express_is_named():
    with pytest.raises(ValueError, match=r"addition_embed_type"):
        decoder_config_from_kandinsky({**TINY_UNET, "addition_embed_type": "text"})


def test_the_prior_is_karlos_architecture_and_equals_diffusers():
    """Kandinsky 2.2's prior is diffusers' PriorTransformer, as Karlo's: the tiny config of diffusers' prior test
    maps through the same converter, one step equal; clip_mean / clip_std de-standardise as post_process_latents."""
    from diffusers import PriorTransformer
    from unclip_core.families.karlo import map_prior_state, prior_config_from_karlo
    from unclip_core.prior import DiffusionPrior
    torch.manual_seed(0)
    ref = _randomize(PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1),
                     5).eval()
    state = map_prior_state(ref.state_dict())
    state["null_z_t"] = torch.zeros(32)
    ours = load_mapped(DiffusionPrior(prior_config_from_karlo(dict(ref.config))), state, "tiny prior").eval()
    g = torch.Generator().manual_seed(6)
    x, z_t, hidden = torch.randn(2, 32, generator=g) * 3, torch.randn(2, 32, generator=g), torch.randn(2, 77, 32,
                                                                                                       generator=g)
    mask = torch.arange(77)[None] < torch.tensor([[5], [30]])
    t = torch.tensor([999, 17])
    with torch.no_grad():
        want = ref(x, timestep=t, proj_embedding=z_t, encoder_hidden_states=hidden,
                   attention_mask=mask).predicted_image_embedding
        got = ours(x, t, z_t, hidden, mask)
    assert want.abs().max() > 0.5
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(ours.scale_out(got), ref.post_process_latents(want), rtol=1e-5, atol=1e-5)
