"""Kandinsky 2.2 on our stages, against diffusers on the tiny random models of diffusers' own Kandinsky 2.2 tests:
the decoder UNet (image-embedding conditioning, 32 image tokens, learned-variance channels) step for step."""
from pathlib import Path

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
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.kandinsky import randomize
    return randomize(model, seed)


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


# ---- the whole family: import and sample as diffusers' KandinskyV22PriorPipeline + KandinskyV22Pipeline --------
PROMPTS = ["a red cube", "a photo of the cat on the left of a small dog"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """(diffusers prior pipeline, diffusers decoder pipeline, our imported pipeline, prior folder, decoder folder) of
    one tiny random Kandinsky 2.2 (diffusers' fast-test widths; benchmarks/kandinsky.py builds it)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.kandinsky import build_random_kandinsky
    from unclip_core.families.kandinsky import import_kandinsky
    from unclip_core.pipeline import UnCLIP
    root = tmp_path_factory.mktemp("kandinsky")
    prior_dir, dec_dir, ref_prior, ref_dec = build_random_kandinsky(root / "src", "tiny")
    ours = UnCLIP.load(import_kandinsky(prior_dir, dec_dir, root / "ours"))
    return ref_prior, ref_dec, ours, prior_dir, dec_dir


def test_import_writes_kandinskys_conventions(family):
    from unclip_core.families.kandinsky import KANDINSKY_CONVENTIONS, KANDINSKY_SAMPLING
    _, _, ours, _, _ = family
    assert ours.conventions == KANDINSKY_CONVENTIONS and ours.sampling == KANDINSKY_SAMPLING
    assert ours.is_latent and ours.resolutions == [64] and ours.x_T_shape(1) == (1, 4, 32, 32)
    info = ours.stage_info["decoder"]
    assert (info.schedule, info.beta_start, info.beta_end, info.steps_offset, info.spacing, info.clip_x0) == \
        ("linear", 0.00085, 0.012, 1, "leading", None)
    assert ours.stage_info["prior"].clip_x0 == 10.0


def _float64_tables(scheduler, schedule):
    """diffusers' scheduler with our float64 tables: compares the algorithm, not float32 table rounding (diffusers'
    own tables move the prior's output by ~1e-3 relative, as for Karlo: tests/test_karlo.py)."""
    scheduler.betas, scheduler.alphas = schedule.betas, schedule.alphas
    scheduler.alphas_cumprod = schedule.alphas_cumprod
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)


def test_prior_samples_as_diffusers(family):
    ref_prior, _, ours, _, _ = family
    _float64_tables(ref_prior.scheduler, ours.schedules["prior"])
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 32, generator=g)
    out = ref_prior(PROMPTS, num_inference_steps=3, guidance_scale=4.0, latents=lat,
                    generator=torch.Generator().manual_seed(1), output_type="pt")
    got = ours.sample_prior(PROMPTS, sampling={"prior_steps": 3}, seed=torch.Generator().manual_seed(1), x_T=lat)
    want = out.image_embeds
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # the decoder's null is diffusers' zero-image embedding
    torch.testing.assert_close(ours.decoder.null_z_i.detach(), out.negative_image_embeds[0], rtol=1e-5, atol=1e-6)


def test_decoder_samples_as_diffusers(family):
    """DDPM on diffusers' leading + 1 timesteps with classifier-free guidance against the zero-image embedding: the
    latents equal diffusers' (same float64 tables), and MoVQ decodes them as diffusers does."""
    _, ref_dec, ours, _, _ = family
    _float64_tables(ref_dec.scheduler, ours.schedules["decoder"])
    g = torch.Generator().manual_seed(2)
    emb, lat = torch.randn(2, 32, generator=g), torch.randn(2, 4, 32, 32, generator=g)
    neg = ours.decoder.null_z_i.detach()[None].expand(2, -1)
    want = ref_dec(image_embeds=emb, negative_image_embeds=neg, height=64, width=64, num_inference_steps=4,
                   guidance_scale=4.0, latents=lat, generator=torch.Generator().manual_seed(3),
                   output_type="latent").images
    out = ours.decode(emb, x_T=lat, sampling={"decoder_steps": 4}, seed=torch.Generator().manual_seed(3))
    got = out.stages["decoder_latents"]
    assert got.shape == want.shape == (2, 4, 32, 32) and float(want.std()) > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with torch.no_grad():  # random weights: raw outputs of scale ~30, compared before the [-1, 1] clamp
        pixels = ref_dec.movq.decode(want, force_not_quantize=True).sample
        torch.testing.assert_close(ours.autoencoder.decode(want), pixels, rtol=1e-4,
                                   atol=1e-4 * float(pixels.abs().max()))
    with torch.inference_mode():
        torch.testing.assert_close(out.stages["decoder"], ours.autoencoder.decode(got).clamp(-1, 1))


def test_cli_import_kandinsky_and_every_analysis_runs_on_it(family, tmp_path, capsys):
    """`unclip-explorer import kandinsky PRIOR DECODER --out DIR`, then text -> image, variations through the ViT
    image tower, interpolation with inverted (MoVQ-latent) x_T, a text diff and PCA reconstructions on the tiny model
    by the same calls as on the bundled family."""
    import numpy as np
    from PIL import Image
    from analyses.interpolation import interpolate
    from analyses.recon import pca_reconstructions
    from analyses.text_diff import text_diff
    from explorer.cli import main
    _, _, ours, prior_dir, dec_dir = family
    assert main(["import", "kandinsky", str(prior_dir), str(dec_dir), "--out", str(tmp_path / "k"),
                 "--dtype", "float16"]) == 0
    assert "stages prior, decoder, autoencoder + clip/" in capsys.readouterr().out
    fast = {"prior_steps": 2, "decoder_steps": 3}
    out = ours.text_to_image(["a red cube"], n=2, sampling=fast, seed=0)
    assert len(out.images) == 2 and out.images[0].size == (64, 64) and out.settings["sampling"]["decoder_sampler"] == "ddpm"
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    var = ours.variations(img, n=2, sampling=fast, seed=1)
    assert len(var.images) == 2 and var.z_i.shape == (2, 32)
    assert float(var.z_i.norm(dim=-1)[0]) != pytest.approx(1.0, abs=1e-3)  # raw image embeddings, as Kandinsky's
    r = interpolate(ours, img, img.transpose(Image.FLIP_LEFT_RIGHT), n_steps=3, x_T_mode="inverted",
                    sampling={"decoder_steps": 3, "invert_refine": 1})
    assert len(r.images) == 3 and r.x_T.shape == (3, 4, 32, 32)
    td = text_diff(ours, img, "a red cube", "a blue cube", n_steps=2, sampling={"decoder_steps": 3, "invert_refine": 1})
    assert len(td.images) == 2
    Z = ours.encode_images([Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(6)])
    pr = pca_reconstructions(ours, [img], Z.numpy(), ks=[2, 32], sampling={"decoder_steps": 2})
    assert len(pr.frame) == 2


# ---- ECLIPSE: a one-pass prior in place of Kandinsky's -------------------------------------------------------------
def _eclipse_oracle(ref, pos, x, z_t, hidden, mask):
    """ECLIPSE's forward from diffusers' PriorTransformer parts: no time token, 77 + 3 positions, -1e4 masks."""
    import torch.nn.functional as F
    h = torch.cat([ref.encoder_hidden_states_proj(hidden), ref.embedding_proj(z_t)[:, None], ref.proj_in(x)[:, None],
                   ref.prd_embedding.expand(x.shape[0], -1, -1)], dim=1) + pos
    n = h.shape[1]
    m = F.pad((1 - mask.float()) * -10000.0, (0, 3), value=0.0)
    m = (m[:, None, :] + torch.full((n, n), -10000.0).triu_(1)[None]).repeat_interleave(ref.config.num_attention_heads, 0)
    for block in ref.transformer_blocks:
        h = block(h, attention_mask=m)
    return ref.proj_to_clip_embeddings(ref.norm_out(h)[:, -1])


def test_an_eclipse_prior_replaces_kandinskys_and_equals_its_one_pass(family, tmp_path):
    import json
    from diffusers import PriorTransformer
    from safetensors.torch import save_file
    from unclip_core.families.eclipse import import_eclipse
    from unclip_core.pipeline import UnCLIP
    _, _, ours, _, _ = family
    torch.manual_seed(0)
    ref = _randomize(PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=2),
                     21).eval()
    pos = torch.randn(1, 77 + 3, 24, generator=torch.Generator().manual_seed(22)) * 0.5
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("time_embedding.")}
    state["positional_embedding"] = pos
    src = tmp_path / "eclipse"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, src / "diffusion_pytorch_model.safetensors")
    cfg = {**dict(ref.config), "additional_embeddings": 3, "_class_name": "PriorTransformer"}
    (src / "config.json").write_text(json.dumps(cfg))
    base = Path(ours.describe()["clip"]).parent
    pipe = UnCLIP.load(import_eclipse(src, base, tmp_path / "ours-eclipse"))
    assert pipe.prior.config.time_token is False and pipe.prior.time_embedding is None
    assert pipe.sampling.prior_sampler == "single_pass" and pipe.sampling.prior_steps == 1
    assert pipe.conventions == ours.conventions and pipe.autoencoder is not None
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 32, generator=g)
    z_i = pipe.sample_prior(PROMPTS, x_T=x, seed=0)
    z_t, hidden, mask = pipe.text_condition(PROMPTS)
    with torch.no_grad():
        want = _eclipse_oracle(ref, pos, x, z_t, hidden, mask)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(z_i, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    with pytest.raises(ValueError, match=r"evaluates its network once: pass 1 step, got 3"):
        pipe.sample_prior(PROMPTS, sampling={"prior_steps": 3})
    out = pipe.text_to_image(PROMPTS[:1], sampling={"decoder_steps": 2}, seed=0)
    assert out.images[0].size == (64, 64)


def test_binding_generate_runs_on_kandinsky(family, tmp_path):
    """`binding run --generate` by the same call: CLIP-level cases through Kandinsky's ViT towers, generation
    through its prior, decoder and MoVQ (a judge of brightness: random weights draw nothing to read)."""
    import json
    import numpy as np
    import pandas as pd
    from analyses.binding_suite import make_suite
    from explorer.binding import run_suite
    _, _, ours, _, _ = family
    folder = Path(ours.describe()["clip"]).parent
    cases = [c for c in make_suite(7, seed=0, kinds=["generation"]) if c.category in ("colour_swap", "count")][:2]

    def judge(image, case):
        return {"bright": float(np.asarray(image).mean()) > 100.0}

    out = run_suite(cases, str(folder), tmp_path / "run", generate=True, n_images=1, judge=judge, probes=False,
                    sampling={"prior_steps": 2, "decoder_steps": 2}, progress=False)
    gen = pd.read_csv(out / "generation.csv")
    assert len(gen) == 4 and set(gen["path"]) == {"prior", "true_z_i"}
    assert json.loads((out / "settings.json").read_text())["pipeline"]["conventions"]["text"] == "empty_prompt"


def test_text_to_image_end_to_end_as_diffusers_prior_then_decoder(family):
    """text_to_image with fixed noises equals diffusers' prior pipeline followed by its decoder pipeline (the
    combined pipeline's order, one generator), with our float64 tables in both schedulers."""
    ref_prior, ref_dec, ours, _, _ = family
    _float64_tables(ref_prior.scheduler, ours.schedules["prior"])
    _float64_tables(ref_dec.scheduler, ours.schedules["decoder"])
    g = torch.Generator().manual_seed(8)
    prior_lat, lat = torch.randn(2, 32, generator=g), torch.randn(2, 4, 32, 32, generator=g)
    gen = torch.Generator().manual_seed(9)
    pr = ref_prior(PROMPTS, num_inference_steps=3, guidance_scale=4.0, latents=prior_lat, generator=gen,
                   output_type="pt")
    want = ref_dec(image_embeds=pr.image_embeds, negative_image_embeds=pr.negative_image_embeds, height=64, width=64,
                   num_inference_steps=4, guidance_scale=4.0, latents=lat, generator=gen, output_type="latent").images
    out = ours.text_to_image(PROMPTS, sampling={"prior_steps": 3, "decoder_steps": 4},
                             seed=torch.Generator().manual_seed(9), noise={"prior": prior_lat, "decoder": lat})
    got = out.stages["decoder_latents"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_negative_prompt_equals_diffusers(family):
    """negative_prompt: diffusers' KandinskyV22PriorPipeline(negative_prompt=) samples prompts and negatives in one
    batch, each against the negative's text, and its decoder takes the negatives' embeddings as
    negative_image_embeds; text_to_image equals that chain, sample_prior the prior, and the numbers move."""
    ref_prior, ref_dec, ours, _, _ = family
    _float64_tables(ref_prior.scheduler, ours.schedules["prior"])
    _float64_tables(ref_dec.scheduler, ours.schedules["decoder"])
    assert ours.takes_negative_prompt and ours.decoder_negative_is_z_i
    negatives = ["a blurry photo", "low quality, bad quality"]
    g = torch.Generator().manual_seed(10)
    prior_lat, lat = torch.randn(4, 32, generator=g), torch.randn(2, 4, 32, 32, generator=g)
    gen = torch.Generator().manual_seed(11)
    pr = ref_prior(PROMPTS, negative_prompt=negatives, num_inference_steps=3, guidance_scale=4.0, latents=prior_lat,
                   generator=gen, output_type="pt")
    want = ref_dec(image_embeds=pr.image_embeds, negative_image_embeds=pr.negative_image_embeds, height=64, width=64,
                   num_inference_steps=4, guidance_scale=4.0, latents=lat, generator=gen, output_type="latent").images
    sampling = {"prior_steps": 3, "decoder_steps": 4}
    out = ours.text_to_image(PROMPTS, negative_prompt=negatives, sampling=sampling,
                             seed=torch.Generator().manual_seed(11), noise={"prior": prior_lat, "decoder": lat})
    got = out.stages["decoder_latents"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert out.settings["negative_prompt"] == negatives and "negative_z_i_hash" in out.settings
    torch.testing.assert_close(out.z_i, pr.image_embeds, rtol=1e-4, atol=1e-4 * float(pr.image_embeds.abs().max()))
    # the prior alone: prompts and negatives against the negatives, as diffusers' one batch
    both = ours.sample_prior(PROMPTS + negatives, negative_prompt=negatives * 2, sampling=sampling,
                             seed=torch.Generator().manual_seed(11), x_T=prior_lat)
    ref_both = torch.cat([pr.image_embeds, pr.negative_image_embeds])
    torch.testing.assert_close(both, ref_both, rtol=1e-4, atol=1e-4 * float(ref_both.abs().max()))
    plain = ours.text_to_image(PROMPTS, sampling=sampling, seed=torch.Generator().manual_seed(11),
                               noise={"prior": prior_lat[:2], "decoder": lat})
    assert float((plain.stages["decoder_latents"] - got).abs().max()) > 1e-2 * float(want.abs().max())
    assert plain.settings["negative_prompt"] is None
    with pytest.raises(ValueError, match="negative_prompt has 1 entries for 2 prompts"):
        ours.text_to_image(PROMPTS, negative_prompt=["blurry"], sampling=sampling)
    with pytest.raises(ValueError, match="negative_prompt must be a non-empty string"):
        ours.sample_prior(PROMPTS, negative_prompt="  ", sampling=sampling)
    with pytest.raises(ValueError, match=r"x_T must be a float tensor of shape \(4, 32\)"):
        ours.text_to_image(PROMPTS, negative_prompt="blurry", sampling=sampling, noise={"prior": prior_lat[:2]})


def test_generate_cli_takes_a_negative_prompt(family, tmp_path, capsys):
    """`generate --negative-prompt TEXT` is text_to_image(negative_prompt=TEXT): the same pixels, recorded in
    settings.json; a bundled ShapesWorld model (learned null) refuses it with the pipeline's message."""
    import json
    import numpy as np
    from PIL import Image
    from explorer.cli import main
    _, _, ours, _, _ = family
    folder = Path(ours.describe()["clip"]).parent
    args = ["generate", "a red cube", "--model", str(folder), "--out", str(tmp_path / "g"), "--n", "1",
            "--steps", "2", "--prior-steps", "2", "--seed", "1", "--negative-prompt", "a blurry photo"]
    assert main(args) == 0
    rec = json.loads((tmp_path / "g" / "settings.json").read_text())
    assert rec["settings"]["negative_prompt"] == ["a blurry photo"]
    want = ours.text_to_image("a red cube", sampling={"prior_steps": 2, "decoder_steps": 2}, seed=1,
                              negative_prompt="a blurry photo")
    got = np.asarray(Image.open(tmp_path / "g" / "000.png").convert("RGB"), dtype=np.int16)
    assert np.abs(got - np.asarray(want.images[0], dtype=np.int16)).max() <= 1
    capsys.readouterr()
    assert main(["generate", "a red circle", "--out", str(tmp_path / "s"), "--n", "1", "--steps", "1",
                 "--prior-steps", "1", "--negative-prompt", "a blue square"]) != 0
    assert "shapes-unclip's is a learned null embedding" in capsys.readouterr().err


def test_latent_lab_has_a_negative_prompt_input(family, monkeypatch):
    """The latent lab on a Kandinsky folder: a negative prompt input whose text reaches text_to_image (the same
    images as the call with negative_prompt), and an empty one means none."""
    import numpy as np
    from streamlit.testing.v1 import AppTest
    from dashboards import _state as S
    _, _, ours, _, _ = family
    monkeypatch.setenv(S.ENV_MODEL, str(Path(ours.describe()["clip"]).parent))
    monkeypatch.delenv(S.ENV_STORE, raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboards" / "views" / "latent_lab.py"),
                           default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.slider(key="sampling_decoder_steps").set_value(2)
    at.slider(key="sampling_prior_steps").set_value(2)
    at.number_input(key="t2i_n").set_value(1)
    at.number_input(key="seed").set_value(3)
    at.text_input(key="t2i_prompt").set_value("a red cube")
    at.text_input(key="t2i_negative").set_value("a blurry photo")
    at.button(key="t2i_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    shown = at.session_state["t2i"]
    assert shown.settings["negative_prompt"] == ["a blurry photo"]
    ref = ours.text_to_image("a red cube", seed=3, negative_prompt="a blurry photo",
                             sampling=shown.settings["sampling"])
    assert np.array_equal(np.asarray(shown.images[0]), np.asarray(ref.images[0]))
    at.text_input(key="t2i_negative").set_value("")
    at.button(key="t2i_go").click().run()
    assert at.session_state["t2i"].settings["negative_prompt"] is None


def test_variations_encode_through_the_image_tower_as_diffusers(family):
    """An image's embedding: our preprocessing (PIL bicubic resize, centre crop, OpenAI normalisation) against
    CLIPImageProcessor + the image tower; the two resize kernels differ slightly (cosine > 0.999)."""
    import numpy as np
    from PIL import Image
    ref_prior, _, ours, _, _ = family
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(2)]
    with torch.no_grad():
        pixels = ref_prior.image_processor(images=images, return_tensors="pt").pixel_values
        want = ref_prior.image_encoder(pixels).image_embeds
    got = ours.encode_images(images)
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.999
    assert float(got.norm(dim=-1).mean()) == pytest.approx(float(want.norm(dim=-1).mean()), rel=1e-2)
