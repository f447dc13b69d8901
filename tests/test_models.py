"""Prior, decoder and upsampler: shapes, masks, conditioning, CFG dropout rates, seeded output slices, errors."""
import pytest
import torch

from unclip_core.decoder import Decoder, DecoderConfig
from unclip_core.nn import timestep_embedding
from unclip_core.prior import DiffusionPrior, PriorConfig
from unclip_core.upsampler import Upsampler, UpsamplerConfig, upsample_low_res

PRIOR = dict(clip_dim=16, text_width=8, width=32, n_layers=2, n_heads=4, n_text_tokens=6)
DEC = dict(image_size=16, model_channels=16, channel_mult=(1, 2), n_res_blocks=1, attention_resolutions=(8,),
           head_channels=8, clip_dim=16, text_width=8, context_dim=24, norm_groups=8, dropout=0.0)
UPS = dict(low_res=8, out_res=32, model_channels=16, channel_mult=(1, 2), n_res_blocks=1, norm_groups=8)


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter (the zero-initialised output layers would otherwise hide all behaviour)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def prior_inputs(B=3, L=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 16, generator=g), torch.randint(0, 1000, (B,), generator=g),
            torch.randn(B, 16, generator=g), torch.randn(B, L, 8, generator=g))


# --- shared layers -------------------------------------------------------------------------------------
def test_timestep_embedding_closed_form():
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    # freqs = [1, 1e-2]: [cos(t), cos(t/100), sin(t), sin(t/100)]
    torch.testing.assert_close(e[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(e[1], torch.tensor([0.5403023, 0.99995, 0.84147098, 0.00999983]), rtol=1e-5, atol=1e-6)


# --- prior ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [PRIOR, dict(PRIOR, clip_dim=24, width=48, n_heads=3, n_text_tokens=0)])
def test_prior_shapes(cfg):
    torch.manual_seed(0)
    m = DiffusionPrior(PriorConfig(**cfg)).eval()
    B, d = 5, cfg["clip_dim"]
    tokens = torch.randn(B, 3, 8) if cfg["n_text_tokens"] else None
    out = m(torch.randn(B, d), torch.arange(B), torch.randn(B, d), tokens)
    assert out.shape == (B, d)
    assert m.hidden_states(torch.randn(B, d), 7, None).shape == (B, cfg["n_text_tokens"] + 4, cfg["width"])


def test_prior_is_causal():
    torch.manual_seed(0)
    m = randomize(DiffusionPrior(PriorConfig(**PRIOR)))
    z, t, zt, tok = prior_inputs()
    h1 = m.hidden_states(z, t, zt, tok)
    h2 = m.hidden_states(z + 1.0, t, zt, tok)  # z_noisy sits at index n_text_tokens + 2
    k = PRIOR["n_text_tokens"] + 2
    torch.testing.assert_close(h1[:, :k], h2[:, :k], rtol=0, atol=1e-6)
    assert (h1[:, k:] - h2[:, k:]).abs().amax(dim=-1).min() > 1e-3
    h3 = m.hidden_states(z, t, zt * 2, tok)  # z_t at index n_text_tokens: text states unchanged
    torch.testing.assert_close(h1[:, :PRIOR["n_text_tokens"]], h3[:, :PRIOR["n_text_tokens"]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cfg", [PRIOR, dict(PRIOR, time_token=False, norm_in=True),
                                 dict(PRIOR, text_width=0, n_text_tokens=0)])
def test_prior_prefix_cache_equals_the_full_sequence(cfg):
    """encode_prefix once + forward(prefix=) per step: the numbers of the full causal sequence, padding included;
    prepare_condition is what classifier-free guidance calls; mixing the two kinds of input is refused."""
    torch.manual_seed(0)
    m = randomize(DiffusionPrior(PriorConfig(**cfg)))
    z, t, zt, tok = prior_inputs(L=5)
    tok = tok if cfg["n_text_tokens"] else None
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool) if tok is not None \
        else None
    with torch.no_grad():
        want = m(z, t, zt, tok, mask)
        prefix = m.encode_prefix(zt, tok, mask)
        got = m(z, t, prefix=prefix)
        again = m(z * 2, t.flip(0), **m.prepare_condition(zt, tok, mask))
        null = m(z, t, prefix=m.encode_prefix(None, batch=3))
    assert len(prefix.keys_values) == cfg["n_layers"] and prefix.mask.shape == (3, m.n_prefix)
    assert float(want.abs().max()) > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, m(z * 2, t.flip(0), zt, tok, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(null, m(z, t, None, None), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="either prefix"):
        m(z, t, zt, prefix=prefix)
    with pytest.raises(ValueError, match="PriorPrefix of batch 2"):
        m(z[:2], t[:2], prefix=prefix)


def test_prior_padding_mask():
    torch.manual_seed(0)
    m = randomize(DiffusionPrior(PriorConfig(**PRIOR)))
    z, t, zt, tok = prior_inputs(L=5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = m(z, t, zt, tok, mask)
    tok2 = torch.where(mask[..., None], tok, torch.randn_like(tok) * 5)
    torch.testing.assert_close(m(z, t, zt, tok2, mask), out, rtol=0, atol=1e-6)
    tok3 = tok.clone()
    tok3[:, 0] += 1.0  # a real token
    assert (m(z, t, zt, tok3, mask) - out).abs().amax(dim=-1).min() > 1e-4
    # fewer tokens than n_text_tokens are padded and masked: same as explicit padding
    padded = torch.cat([tok, torch.randn(3, 1, 8)], 1)
    torch.testing.assert_close(m(z, t, zt, padded, torch.cat([mask, torch.zeros(3, 1, dtype=torch.bool)], 1)), out,
                               rtol=0, atol=1e-6)


def test_prior_null_condition():
    torch.manual_seed(0)
    m = randomize(DiffusionPrior(PriorConfig(**PRIOR)))
    z, t, zt, tok = prior_inputs()
    none = m(z, t, None, None)
    zt0, tok0, mask0 = m.null_condition(3)
    torch.testing.assert_close(m(z, t, zt0, tok0, mask0), none, rtol=0, atol=1e-6)
    all_false = torch.zeros(3, 4, dtype=torch.bool)
    torch.testing.assert_close(m(z, t, None, tok, all_false), none, rtol=0, atol=1e-6)
    assert torch.isfinite(none).all()
    assert (m(z, t, zt, tok) - none).abs().amax() > 1e-3


def test_prior_drop_condition_rate():
    m = DiffusionPrior(PriorConfig(**PRIOR))
    B, p = 10_000, 0.1
    zt, tok = torch.randn(B, 16), torch.randn(B, 2, 8)
    g = torch.Generator().manual_seed(0)
    zt2, tok2, mask2 = m.drop_condition(zt, tok, None, p, g)
    dropped = (zt2 == m.null_z_t.detach()).all(dim=1)
    n = int(dropped.sum())
    assert abs(n - B * p) < 4 * (B * p * (1 - p)) ** 0.5  # 4 sigma binomial bound
    assert torch.equal(~mask2.any(dim=1), dropped)
    assert torch.equal(zt2[~dropped], zt[~dropped]) and (tok2[dropped] == 0).all()
    again = m.drop_condition(zt, tok, None, p, torch.Generator().manual_seed(0))[0]
    assert torch.equal(again, zt2)
    assert torch.equal(m.drop_condition(zt, None, None, 0.0)[0], zt)
    assert (m.drop_condition(zt, None, None, 1.0)[0] == m.null_z_t.detach()).all()


def test_prior_scale_round_trip():
    torch.manual_seed(0)
    m = DiffusionPrior(PriorConfig(**dict(PRIOR, use_clip_stats=True, clip_scale=2.0)))
    m.clip_mean.copy_(torch.randn(16))
    m.clip_std.copy_(torch.rand(16) + 0.5)
    z = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    torch.testing.assert_close(m.scale_out(m.scale_in(z)), z)
    torch.testing.assert_close(m.scale_in(m.clip_mean[None]), torch.zeros(1, 16))
    plain = DiffusionPrior(PriorConfig(**PRIOR))
    torch.testing.assert_close(plain.scale_in(z), 17.2 * z)
    torch.testing.assert_close(plain.scale_cond(z), 17.2 * z)


def test_prior_seeded_slice():
    torch.manual_seed(0)
    m = DiffusionPrior(PriorConfig(**PRIOR)).eval()
    z, t, zt, tok = prior_inputs()
    out = m(z, t, zt, tok)
    expected = torch.tensor(PRIOR_SLICE)
    torch.testing.assert_close(out[0, :6], expected, rtol=1e-4, atol=1e-5)


PRIOR_SLICE = [0.254727, 0.714655, 0.577771, 0.198749, -0.697795, -1.060074]


def test_prior_errors():
    with pytest.raises(ValueError, match="width=30 is not divisible by n_heads=4"):
        PriorConfig(**dict(PRIOR, width=30))
    with pytest.raises(ValueError, match="text_width=0 but n_text_tokens=6"):
        PriorConfig(**dict(PRIOR, text_width=0))
    with pytest.raises(ValueError, match="clip_scale must be a positive number"):
        PriorConfig(**dict(PRIOR, clip_scale=0))
    with pytest.raises(TypeError, match="n_layers must be an integer"):
        PriorConfig(**dict(PRIOR, n_layers=2.0))
    with pytest.raises(TypeError, match="config must be a PriorConfig"):
        DiffusionPrior(dict(PRIOR))
    m = DiffusionPrior(PriorConfig(**PRIOR))
    z, t, zt, tok = prior_inputs()
    with pytest.raises(ValueError, match=r"z_noisy must have shape \(\*, 16\), got \(3, 15\)"):
        m(z[:, :15], t, zt, tok)
    with pytest.raises(ValueError, match=r"z_t must have shape \(3, 16\)"):
        m(z, t, zt[:2], tok)
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        m(z, t[:2], zt, tok)
    with pytest.raises(ValueError, match="text_tokens has 7 tokens but the prior was built for n_text_tokens=6"):
        m(z, t, zt, torch.randn(3, 7, 8))
    with pytest.raises(ValueError, match=r"text_mask must be a bool tensor of shape \(3, 4\)"):
        m(z, t, zt, tok, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="z_noisy must be a float tensor"):
        m(z.long(), t, zt, tok)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        m.drop_condition(zt, tok, None, 1.5)
    no_text = DiffusionPrior(PriorConfig(**dict(PRIOR, n_text_tokens=0)))
    with pytest.raises(ValueError, match="this prior has n_text_tokens=0"):
        no_text(z, t, zt, tok)


# --- decoder -------------------------------------------------------------------------------------------
def dec_inputs(B=2, size=16, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, size, size, generator=g), torch.randint(0, 1000, (B,), generator=g),
            torch.nn.functional.normalize(torch.randn(B, 16, generator=g), dim=-1), torch.randn(B, 5, 8, generator=g))


@pytest.mark.parametrize("size,learn_sigma,mult", [(16, True, (1, 2)), (32, False, (1, 2, 2))])
def test_decoder_shapes(size, learn_sigma, mult):
    cfg = DecoderConfig(**dict(DEC, image_size=size, learn_sigma=learn_sigma, channel_mult=mult))
    m = Decoder(cfg).eval()
    x, t, z, tok = dec_inputs(size=size)
    out = m(x, t, z, tok)
    assert out.shape == (2, 6 if learn_sigma else 3, size, size)
    assert m(x, 3, None).shape == out.shape
    assert (out == 0).all()  # zero-initialised output conv (ADM): the untrained model predicts eps = 0


def test_decoder_conditioning():
    torch.manual_seed(0)
    m = randomize(Decoder(DecoderConfig(**DEC)))
    x, t, z, tok = dec_inputs()
    out = m(x, t, z, tok)
    assert (m(x, t, z.flip(0), tok) - out).abs().amax() > 1e-3  # z_i changes the output
    null = m(x, t, None, tok)
    assert (null - out).abs().amax() > 1e-3
    torch.testing.assert_close(m(x, t, m.null_z_i[None].expand(2, -1), tok), null)
    assert (m(x, t, z, tok * 2) - out).abs().amax() > 1e-3  # caption changes the output
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    base = m(x, t, z, tok, mask)
    tok2 = torch.where(mask[..., None], tok, torch.randn_like(tok) * 3)
    torch.testing.assert_close(m(x, t, z, tok2, mask), base, rtol=0, atol=1e-5)  # padding ignored
    # an all-False caption mask is the caption-free pass
    no_caption = m(x, t, z, tok, torch.zeros(2, 5, dtype=torch.bool))
    torch.testing.assert_close(no_caption, m(x, t, z, None), rtol=0, atol=1e-5)


@pytest.mark.parametrize("extra", [dict(), dict(use_z_t=True, clip_map_channels=2, clip_map_size=4),
                                   dict(attention_kind="cross", n_clip_tokens=0, context_dim=0),
                                   dict(attention_kind="cross", n_clip_tokens=0, context_dim=0, noise_augmented=True)])
def test_decoder_condition_encoded_once_equals_every_step(extra):
    """encode_condition / prepare_condition once, then forward(condition=) at other x_t and t: the numbers of the
    plain call (the context's keys and values, time-embedding terms and clip map are what no step changes)."""
    torch.manual_seed(0)
    m = randomize(Decoder(DecoderConfig(**dict(DEC, **extra))))
    x, t, z, tok = dec_inputs()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    cond = dict(z_i_aug=torch.cat([z, z.flip(0)], dim=1)) if extra.get("noise_augmented") else dict(z_i=z)
    cond.update(text_tokens=tok, text_mask=mask, z_t=-z if extra.get("use_z_t") else None)
    with torch.no_grad():
        prepared = m.prepare_condition(**cond)
        n_attn = len(m.unet.attention_blocks())
        assert n_attn == 4 and len(prepared["condition"].context_kv) == n_attn
        for k in range(2):
            want = m(x * (k + 1), t // (k + 1), **cond)
            assert float(want.abs().max()) > 1e-2
            torch.testing.assert_close(m(x * (k + 1), t // (k + 1), **prepared), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="either condition"):
        m(x, t, z, condition=prepared["condition"])
    with pytest.raises(ValueError, match="DecoderCondition of batch 1"):
        m(x[:1], t[:1], **prepared)


def test_decoder_use_z_t():
    torch.manual_seed(0)
    m = randomize(Decoder(DecoderConfig(**dict(DEC, use_z_t=True))))
    x, t, z, tok = dec_inputs()
    assert (m(x, t, z, tok, z_t=z) - m(x, t, z, tok, z_t=-z)).abs().amax() > 1e-3
    with pytest.raises(ValueError, match="use_z_t=True and needs z_t"):
        m(x, t, z, tok)


def test_decoder_drop_condition_rates():
    m = Decoder(DecoderConfig(**DEC))
    B = 10_000
    z, tok = torch.randn(B, 16), torch.randn(B, 3, 8)
    z2, tok2, mask2 = m.drop_condition(z, tok, None, p_z_i=0.1, p_text=0.5, generator=torch.Generator().manual_seed(1))
    dz = (z2 == m.null_z_i.detach()).all(dim=1)
    dt = ~mask2.any(dim=1)
    for n, p in ((int(dz.sum()), 0.1), (int(dt.sum()), 0.5)):
        assert abs(n - B * p) < 4 * (B * p * (1 - p)) ** 0.5
    both = int((dz & dt).sum())  # independent drops: both ~ B * 0.05
    assert abs(both - B * 0.05) < 4 * (B * 0.05 * 0.95) ** 0.5
    assert torch.equal(z2[~dz], z[~dz])
    with pytest.raises(ValueError, match=r"p_text must be a probability in \[0, 1\], got -0.1"):
        m.drop_condition(z, tok, p_text=-0.1)


def test_decoder_seeded_slice():
    torch.manual_seed(0)
    m = randomize(Decoder(DecoderConfig(**DEC)), seed=3)
    x, t, z, tok = dec_inputs()
    out = m(x, t, z, tok)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(DEC_SLICE), rtol=1e-4, atol=1e-5)


DEC_SLICE = [0.094646, -0.079879, -0.019347, 0.259697, -0.043827, -0.078611]


def test_decoder_errors():
    with pytest.raises(ValueError, match=r"attention_resolutions \[4\] match no UNet level; .* are \[16, 8\]"):
        DecoderConfig(**dict(DEC, attention_resolutions=(4,)))
    with pytest.raises(ValueError, match="norm_groups=8 must divide every level's channels"):
        DecoderConfig(**dict(DEC, model_channels=12))
    with pytest.raises(ValueError, match="image_size=18 must be divisible by"):
        DecoderConfig(**dict(DEC, image_size=18, channel_mult=(1, 2, 2), attention_resolutions=(9,)))
    with pytest.raises(ValueError, match=r"head_channels=12 must divide the channels of every attention level, "
                                         r"but not \[32\]"):
        DecoderConfig(**dict(DEC, head_channels=12))
    with pytest.raises(ValueError, match="channel_mult must be a non-empty tuple"):
        DecoderConfig(**dict(DEC, channel_mult=()))
    assert DecoderConfig(**dict(DEC, channel_mult=[1, 2], attention_resolutions=[8])) == DecoderConfig(**DEC)
    m = Decoder(DecoderConfig(**DEC))
    x, t, z, tok = dec_inputs()
    with pytest.raises(ValueError, match=r"x_t must have shape \(\*, 3, 16, 16\), got \(2, 3, 32, 32\); "
                                         "this decoder was built for 16x16"):
        m(torch.randn(2, 3, 32, 32), t, z, tok)
    with pytest.raises(ValueError, match=r"z_i must have shape \(2, 16\)"):
        m(x, t, z[:1], tok)
    with pytest.raises(ValueError, match=r"text_mask must be a bool tensor of shape \(2, 5\)"):
        m(x, t, z, tok, torch.ones(2, 4, dtype=torch.bool))
    plain = Decoder(DecoderConfig(**dict(DEC, text_width=0)))
    with pytest.raises(ValueError, match="this decoder has text_width=0"):
        plain(x, t, z, tok)



def test_decoder_clip_map_is_spatial_and_grows_from_a_plain_decoder():
    torch.manual_seed(0)
    plain = randomize(Decoder(DecoderConfig(**DEC)), seed=4)
    grown = Decoder(DecoderConfig(**dict(DEC, clip_map_channels=3, clip_map_size=4)))
    grown.load_grown(plain.state_dict(), plain.config)
    grown.eval()
    x, t, z, tok = dec_inputs()
    # new input channels start at zero weight: the grown decoder computes what the plain one did
    torch.testing.assert_close(grown(x, t, z, tok), plain(x, t, z, tok), rtol=0, atol=1e-6)
    m = grown.clip_map(z).detach()
    assert m.shape == (2, 3, 16, 16)
    assert float(m[:, :, :8].std()) > 0 and float((m[:, :, :4] - m[:, :, 12:]).abs().amax()) > 1e-3  # varies in space
    # once its input weights move, the map carries z_i into the first convolution
    with torch.no_grad():
        grown.unet.conv_in.weight[:, 3:].normal_(0, 0.5)
        grown.clip_to_time.weight.zero_(), grown.clip_to_context_tokens.weight.zero_()
        grown.clip_to_time.bias.zero_(), grown.clip_to_context_tokens.bias.zero_()
    assert (grown(x, t, z, tok) - grown(x, t, z.flip(0), tok)).abs().amax() > 1e-3  # z_i reaches only via the map
    with pytest.raises(ValueError, match=r"only \['clip_map_channels', 'clip_map_size'\] may differ.*'model_channels'"):
        Decoder(DecoderConfig(**dict(DEC, model_channels=8, clip_map_channels=3))).load_grown(
            plain.state_dict(), plain.config)
    with pytest.raises(ValueError, match="can add a clip map to a decoder without one, not resize"):
        grown.load_grown(grown.state_dict(), DecoderConfig(**dict(DEC, clip_map_channels=2, clip_map_size=4)))
    with pytest.raises(ValueError, match="clip_map_size=5 must divide image_size=16"):
        DecoderConfig(**dict(DEC, clip_map_channels=2, clip_map_size=5))
    with pytest.raises(ValueError, match="this decoder has clip_map_channels=0"):
        plain.clip_map(z)

# --- upsampler -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("low,out", [(8, 32), (16, 32)])
def test_upsampler_crops_and_full_size(low, out):
    cfg = UpsamplerConfig(**dict(UPS, low_res=low, out_res=out))
    torch.manual_seed(0)
    m = randomize(Upsampler(cfg))
    g = torch.Generator().manual_seed(4)
    lo = torch.randn(2, 3, low, low, generator=g)
    x = torch.randn(2, 3, out, out, generator=g)
    full = m(x, torch.tensor([5, 500]), lo)
    assert full.shape == (2, 3, out, out)
    up = upsample_low_res(lo, (out, out))
    torch.testing.assert_close(m(x, torch.tensor([5, 500]), up), full)  # both low_res forms agree
    crop = m(x[..., :16, 8:24], torch.tensor([5, 500]), up[..., :16, 8:24])  # crop of the upsampled image
    assert crop.shape == (2, 3, 16, 16)
    f = out // low
    crop_lo = m(x[..., :16, :16], 7, lo[..., :16 // f, :16 // f])  # aligned low-res crop
    assert crop_lo.shape == (2, 3, 16, 16)
    assert m(torch.randn(1, 3, 64, 48), 3, torch.randn(1, 3, 64 // f, 48 // f)).shape == (1, 3, 64, 48)


def test_upsampler_has_no_attention_and_seeded_slice():
    torch.manual_seed(0)
    m = randomize(Upsampler(UpsamplerConfig(**UPS)), seed=5)
    assert not any("attention" in type(mod).__name__.lower() for mod in m.modules())
    g = torch.Generator().manual_seed(6)
    out = m(torch.randn(1, 3, 32, 32, generator=g), torch.tensor([10]), torch.randn(1, 3, 8, 8, generator=g))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(UPS_SLICE), rtol=1e-4, atol=1e-5)
    assert Upsampler(UpsamplerConfig(**dict(UPS, learn_sigma=True)))(
        torch.randn(1, 3, 32, 32), 1, torch.randn(1, 3, 8, 8)).shape == (1, 6, 32, 32)


UPS_SLICE = [0.109939, 0.086412, 0.389531]


def test_upsampler_errors():
    with pytest.raises(ValueError, match="out_res=24 must be 2 or 4 times low_res=8"):
        UpsamplerConfig(**dict(UPS, out_res=24))
    m = Upsampler(UpsamplerConfig(**UPS))
    with pytest.raises(ValueError, match=r"low_res is 10x10 but x_t is 32x32: pass low_res at 1/4 of x_t's size "
                                         r"\(8x8\) or already upsampled to 32x32"):
        m(torch.randn(1, 3, 32, 32), 1, torch.randn(1, 3, 10, 10))
    with pytest.raises(ValueError, match="x_t is 31x32 but its sides must be multiples of 2"):
        m(torch.randn(1, 3, 31, 32), 1, torch.randn(1, 3, 31, 32))
    with pytest.raises(ValueError, match=r"low_res must have shape \(1, 3, \*, \*\)"):
        m(torch.randn(1, 3, 32, 32), 1, torch.randn(1, 1, 8, 8))
