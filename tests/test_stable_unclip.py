"""Stable Diffusion 2.1 unCLIP on our stages, against diffusers' StableUnCLIPImg2ImgPipeline / StableUnCLIPPipeline on
tiny random models (diffusers' own fast-test widths, a 2-level VAE): the VAE, the noise augmentation of the image
embedding, one UNet step, whole variations and text-to-image from the same noises, and every analysis by the same
calls as on the other families."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stable_unclip import build_random_stable_unclip, float64_tables  # noqa: E402
from unclip_core.decoder import Decoder  # noqa: E402
from unclip_core.families.diffusers_unet import load_mapped  # noqa: E402
from unclip_core.families.stable_unclip import (  # noqa: E402
    STABLE_UNCLIP_CONVENTIONS, decoder_config_from_stable_unclip, import_stable_unclip)
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
    assert (c.attention_kind, c.noise_augmented, c.clip_dim, c.text_width, c.head_channels) == \
        ("cross", True, D, 32, 16)
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
        decoder_config_from_stable_unclip({k: v for k, v in cfg.items()
                                           if k != "projection_class_embeddings_input_dim"})


# ---- whole pipelines -----------------------------------------------------------------------------------------------
def test_import_writes_stable_unclips_conventions(img2img):
    ref, ours, _ = img2img
    assert ours.conventions == STABLE_UNCLIP_CONVENTIONS and ours.prior is None and ours.is_latent
    assert ours.resolutions == [32] and ours.x_T_shape(1) == (1, 4, 16, 16)
    s = ours.sampling
    assert (s.decoder_sampler, s.decoder_steps, s.decoder_guidance, s.eta, s.noise_level) == ("ddim", 20, 10.0, 0.0, 0)
    info = ours.stage_info["decoder"]
    assert (info.prediction, info.schedule, info.beta_start, info.beta_end, info.steps_offset, info.spacing,
            info.set_alpha_to_one, info.clip_x0) == ("v", "scaled_linear", 0.00085, 0.012, 1, "leading", False, None)
    assert ours.schedules["decoder"].final_abar == pytest.approx(float(ours.schedules["decoder"].alphas_cumprod[0]))
    torch.testing.assert_close(ours.schedules["decoder"].alphas_cumprod.float(), ref.scheduler.alphas_cumprod)
    assert ours.decoder_text is not None and ours.describe()["decoder_text"].endswith("decoder_text")


def test_variation_decodes_as_the_img2img_pipeline(img2img):
    """decode(z_i, x_T, noise={"z_i": eps}) at noise_level 100 equals StableUnCLIPImg2ImgPipeline given the same image
    embedding, latents and first generator draw (our float64 tables in its schedulers); VAE pixels too."""
    ref, ours, _ = img2img
    float64_tables(ref.scheduler, ours.schedules["decoder"])
    float64_tables(ref.image_noising_scheduler, ours.schedules["z_i_noising"])
    g = torch.Generator().manual_seed(3)
    z_i, lat = torch.randn(2, D, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    eps = torch.randn(2, D, generator=torch.Generator().manual_seed(4))  # what the pipeline draws first from seed 4
    kw = dict(num_inference_steps=3, guidance_scale=10.0, noise_level=100)
    want = ref(image_embeds=z_i, latents=lat, prompt=[""] * 2, generator=torch.Generator().manual_seed(4),
               output_type="latent", **kw).images
    sampling = {"decoder_steps": 3, "noise_level": 100}
    out = ours.decode(z_i, x_T=lat, sampling=sampling, noise={"z_i": eps}, seed=0)
    assert out.stages["decoder_latents"].shape == want.shape == (2, 4, 16, 16) and float(want.std()) > 0.1
    err = _close(out.stages["decoder_latents"], want)
    pixels = ref(image_embeds=z_i, latents=lat, prompt=[""] * 2, generator=torch.Generator().manual_seed(4),
                 output_type="pt", **kw).images
    err_px = float(((out.stages["decoder"] + 1) / 2 - pixels).abs().max())
    assert err < 1e-4 and err_px < 1e-4
    assert out.settings["sampling"]["noise_level"] == 100 and out.settings["z_i_noise"] == "given"
    with_prompt = ours.decode(z_i, x_T=lat, sampling=sampling, noise={"z_i": eps}, prompts=["a red cube"] * 2)
    want_p = ref(image_embeds=z_i, latents=lat, prompt=["a red cube"] * 2, generator=torch.Generator().manual_seed(4),
                 output_type="latent", **kw).images
    _close(with_prompt.stages["decoder_latents"], want_p)
    assert with_prompt.settings["prompts"] == ["a red cube"] * 2


def test_variations_end_to_end_equal_diffusers_from_one_seed(img2img):
    """variations(image, n=2, seed) (image tower, z_i noise and x_T drawn in diffusers' order, DDIM eta 1) equals the
    img2img pipeline given [image, image] and the same seed; each image at the tower's size, so both preprocessings
    are the identity up to float rounding."""
    ref, ours, _ = img2img
    float64_tables(ref.scheduler, ours.schedules["decoder"])
    float64_tables(ref.image_noising_scheduler, ours.schedules["z_i_noising"])
    img = _image(5)
    want = ref(image=[img, img], num_inference_steps=3, guidance_scale=10.0, noise_level=300, eta=1.0,
               generator=torch.Generator().manual_seed(6), output_type="latent").images
    out = ours.variations(img, n=2, sampling={"decoder_steps": 3, "noise_level": 300, "eta": 1.0},
                          seed=torch.Generator().manual_seed(6))
    err = _close(out.stages["decoder_latents"], want, 1e-3)
    assert err < 1e-4 and out.settings["task"] == "variations" and out.settings["z_i_noise"] == "drawn from the seed"
    assert not torch.allclose(out.stages["decoder_latents"][0], out.stages["decoder_latents"][1], atol=1e-2)


def test_text_to_image_end_to_end_equals_stable_unclip_pipeline(text2img):
    """StableUnCLIPPipeline: prior (DDPM, leading steps, x0 clipped to 5) over the prior's text tower, noising, the
    decoder over SD's text tower, all from one seed and the same prior latents."""
    ref, ours, _ = text2img
    assert ours.prior is not None and ours.sampling.prior_sampler == "ddpm"
    assert ours.stage_info["prior"].spacing == "leading" and ours.stage_info["prior"].clip_x0 == 5.0
    float64_tables(ref.scheduler, ours.schedules["decoder"])
    float64_tables(ref.prior_scheduler, ours.schedules["prior"])
    float64_tables(ref.image_noising_scheduler, ours.schedules["z_i_noising"])
    prompts = ["a red cube", "a small blue ball on the left"]
    prior_lat = torch.randn(2, D, generator=torch.Generator().manual_seed(7))
    want = ref(prompts, prior_num_inference_steps=3, num_inference_steps=3, noise_level=50, prior_latents=prior_lat,
               generator=torch.Generator().manual_seed(8), output_type="latent").images
    out = ours.text_to_image(prompts, sampling={"prior_steps": 3, "decoder_steps": 3, "noise_level": 50},
                             seed=torch.Generator().manual_seed(8), noise={"prior": prior_lat})
    assert float(want.std()) > 0.1
    err = _close(out.stages["decoder_latents"], want)
    assert err < 1e-4 and out.settings["prompts"] == prompts and out.settings["sampling"]["noise_level"] == 50


# ---- the official text-to-image pairing: the small model with Karlo's prior ------------------------------------------
@pytest.fixture(scope="module")
def karlo_paired(img2img, tmp_path_factory):
    """(diffusers StableUnCLIPPipeline assembled as diffusers' docs do: Karlo's prior, its text tower and its
    UnCLIPScheduler config run as a DDPMScheduler; our pipeline imported with --prior; the Karlo folder)."""
    from benchmarks.karlo import build_random_karlo
    from diffusers import DDPMScheduler, PriorTransformer, StableUnCLIPPipeline, UnCLIPScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    from explorer.cli import main
    ref, _, src = img2img
    root = tmp_path_factory.mktemp("paired")
    karlo = build_random_karlo(root / "karlo", "tiny")
    assert main(["import", "stable-unclip", str(src), "--prior", str(karlo), "--out", str(root / "ours")]) == 0
    prior_sched = DDPMScheduler.from_config(UnCLIPScheduler.from_pretrained(karlo / "prior_scheduler").config)
    paired = StableUnCLIPPipeline(
        prior_tokenizer=CLIPTokenizer.from_pretrained(karlo / "tokenizer"),
        prior_text_encoder=CLIPTextModelWithProjection.from_pretrained(karlo / "text_encoder").eval(),
        prior=PriorTransformer.from_pretrained(karlo / "prior").eval(), prior_scheduler=prior_sched,
        image_normalizer=ref.image_normalizer, image_noising_scheduler=ref.image_noising_scheduler,
        tokenizer=ref.tokenizer, text_encoder=ref.text_encoder, unet=ref.unet, scheduler=ref.scheduler, vae=ref.vae)
    paired.set_progress_bar_config(disable=True)
    return paired, UnCLIP.load(root / "ours"), karlo


def test_karlo_prior_pairing_is_text_to_image_end_to_end(karlo_paired):
    paired, ours, _ = karlo_paired
    assert ours.prior is not None and ours.prior.config.clip_dim == D and ours.name.endswith("+karlo")
    assert ours.clip.model.visual.image_size == 32  # the image tower stays: variations run on the same folder
    for stage, sched in (("decoder", paired.scheduler), ("prior", paired.prior_scheduler),
                         ("z_i_noising", paired.image_noising_scheduler)):
        float64_tables(sched, ours.schedules[stage])
    prompts = ["a red cube on the left of a blue ball"]
    prior_lat = torch.randn(1, D, generator=torch.Generator().manual_seed(9))
    want = paired(prompts, prior_num_inference_steps=4, num_inference_steps=3, noise_level=0, prior_latents=prior_lat,
                  generator=torch.Generator().manual_seed(10), output_type="pt").images
    out = ours.text_to_image(prompts, sampling={"prior_steps": 4, "decoder_steps": 3},
                             seed=torch.Generator().manual_seed(10), noise={"prior": prior_lat})
    assert out.images[0].size == (32, 32) and float(want.std()) > 0.05
    assert float(((out.stages["decoder"] + 1) / 2 - want).abs().max()) < 1e-4


def _edit_weights(folder, fn):
    from safetensors.torch import load_file, save_file
    f = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    fn(state)
    save_file(state, str(f))


def test_import_errors_name_the_problem(img2img, karlo_paired, tmp_path):
    _, _, src = img2img
    copy = shutil.copytree(src, tmp_path / "su")
    _edit_weights(copy / "unet", lambda s: s.update({"extra_head.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected \(1\): \['unet.extra_head.weight'\]"):
        import_stable_unclip(copy, tmp_path / "o")
    _edit_weights(copy / "unet", lambda s: (s.pop("extra_head.weight"), s.pop("conv_out.bias")))
    with pytest.raises(ValueError, match=r"missing \(1\): \['unet.conv_out.bias'\]"):
        import_stable_unclip(copy, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    shutil.rmtree(copy / "image_normalizer")
    with pytest.raises(FileNotFoundError, match=r"missing subfolders \['image_normalizer'\]"):
        import_stable_unclip(copy, tmp_path / "o")
    with pytest.raises(ValueError, match=r"dtype='float8' is not known"):
        import_stable_unclip(src, tmp_path / "o", dtype="float8")
    sched = shutil.copytree(src, tmp_path / "su2") / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(dict(json.loads(sched.read_text()), beta_schedule="squaredcos_cap_v2")))
    with pytest.raises(ValueError, match=r"beta_schedule='squaredcos_cap_v2' is not known; accepted: 'linear'"):
        import_stable_unclip(sched.parents[1], tmp_path / "o")
    _, _, karlo = karlo_paired
    with pytest.raises(FileNotFoundError, match=r"Karlo \(prior\) folder .* does not exist"):
        import_stable_unclip(src, tmp_path / "o", prior=tmp_path / "nope")


def test_float16_storage_loads_close(img2img, tmp_path):
    from explorer.cli import main
    _, ours, src = img2img
    assert main(["import", "stable-unclip", str(src), "--out", str(tmp_path / "h"), "--dtype", "float16"]) == 0
    half = UnCLIP.load(tmp_path / "h")
    g = torch.Generator().manual_seed(11)
    z_i, lat = torch.randn(1, D, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    a = ours.decode(z_i, x_T=lat, sampling={"decoder_steps": 2}).stages["decoder_latents"]
    b = half.decode(z_i, x_T=lat, sampling={"decoder_steps": 2}).stages["decoder_latents"]
    assert float((a - b).abs().max() / a.abs().max()) < 2e-2


# ---- every analysis by the same calls ------------------------------------------------------------------------------
def test_variations_over_a_noise_level_sweep(karlo_paired):
    """Rows = noise levels from the same seed: level 0 keeps the image embedding (up to the schedule's first-step
    noise), so its row's images move away from it as the level grows; the frame's numbers are CLIP cosines."""
    from analyses import noise_level_sweep
    _, ours, _ = karlo_paired
    img = _image(12)
    r = noise_level_sweep(ours, img, [0, 500, 999], n=2, sampling={"decoder_steps": 2}, seed=3,
                          prompt="a red cube")
    assert len(r.rows) == 3 and all(len(row) == 3 for row in r.rows) and r.image.size[0] >= 3 * 64
    assert list(r.frame["noise_level"]) == [0, 0, 500, 500, 999, 999]
    assert r.frame["sim_original"].between(-1, 1).all() and r.settings["prompt"] == "a red cube"
    a = np.asarray(r.rows[0][1], dtype=float)
    assert np.abs(a - np.asarray(r.rows[2][1], dtype=float)).mean() > 1.0  # the level changes the picture
    with pytest.raises(ValueError, match=r"levels \[1000\] are not noise levels"):
        noise_level_sweep(ours, img, [0, 1000])


def test_every_analysis_runs_on_stable_unclip(karlo_paired, tmp_path):
    """Interpolation with inverted latents (which reconstruct their images at a non-zero noise_level: the z_i noise
    is the fixed draw when x_T is given), caption interpolation through the prior, a text diff and PCA
    reconstructions, by the same calls as on every family."""
    from analyses.interpolation import interpolate
    from analyses.recon import pca_reconstructions
    from analyses.text_diff import text_diff
    _, ours, _ = karlo_paired
    img = _image(13)
    inv = {"decoder_steps": 3, "invert_refine": 1, "noise_level": 200}
    r = interpolate(ours, img, img.transpose(Image.FLIP_LEFT_RIGHT), n_steps=3, x_T_mode="inverted", sampling=inv)
    assert len(r.images) == 3 and r.x_T.shape == (3, 4, 16, 16)
    z_i, x_T = ours.invert([img], sampling=inv)
    again = ours.decode(z_i, x_T=x_T, sampling={**inv, "decoder_guidance": 1.0})
    assert again.settings["z_i_noise"] == "fixed (seed 0)"
    first = ours.decode(z_i, x_T=x_T, sampling={**inv, "decoder_guidance": 1.0}, seed=5)
    torch.testing.assert_close(first.stages["decoder_latents"], again.stages["decoder_latents"])
    c = interpolate(ours, "a red cube", "a blue ball", n_steps=2, sampling={"prior_steps": 2, "decoder_steps": 2})
    assert len(c.images) == 2
    td = text_diff(ours, img, "a red cube", "a blue cube", n_steps=2, sampling={"decoder_steps": 2, "invert_refine": 1})
    assert len(td.images) == 2
    Z = ours.encode_images([_image(20 + k) for k in range(6)])
    assert float(Z.norm(dim=-1)[0]) != pytest.approx(1.0, abs=1e-3)  # raw image embeddings
    pr = pca_reconstructions(ours, [img], Z.numpy(), ks=[2, 32], sampling={"decoder_steps": 2})
    assert len(pr.frame) == 2


def test_binding_generate_runs_on_stable_unclip(karlo_paired, tmp_path):
    import pandas as pd
    from analyses.binding_suite import make_suite
    from explorer.binding import run_suite
    _, ours, _ = karlo_paired
    folder = Path(ours.describe()["clip"]).parent
    cases = [c for c in make_suite(7, seed=0, kinds=["generation"]) if c.category in ("colour_swap", "count")][:2]

    def judge(image, case):
        return {"bright": float(np.asarray(image).mean()) > 100.0}

    out = run_suite(cases, str(folder), tmp_path / "run", generate=True, n_images=1, judge=judge, probes=False,
                    sampling={"prior_steps": 2, "decoder_steps": 2, "noise_level": 100}, progress=False)
    gen = pd.read_csv(out / "generation.csv")
    assert len(gen) == 4 and set(gen["path"]) == {"prior", "true_z_i"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["pipeline"]["conventions"]["text"] == "noise_augmented"


def test_latent_lab_has_a_noise_level_slider(karlo_paired, monkeypatch):
    """The latent lab on a Stable unCLIP folder: the sampling sidebar shows noise_level, and variations record it."""
    import io
    from streamlit.testing.v1 import AppTest
    from dashboards import _state as S
    _, ours, _ = karlo_paired
    monkeypatch.setenv(S.ENV_MODEL, str(Path(ours.describe()["clip"]).parent))
    monkeypatch.delenv(S.ENV_STORE, raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboards" / "views" / "latent_lab.py"),
                           default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.slider(key="sampling_decoder_steps").set_value(2)
    at.slider(key="sampling_noise_level").set_value(300)
    buf = io.BytesIO()
    _image(14).save(buf, format="PNG")
    at.file_uploader(key="var_upload").set_value(("x.png", buf.getvalue(), "image/png"))
    at.number_input(key="var_n").set_value(2)
    at.button(key="var_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    _, out = at.session_state["var"]
    assert out.settings["sampling"]["noise_level"] == 300 and len(out.images) == 2


def test_generate_cli_and_the_benchmark_at_tiny_size(karlo_paired, tmp_path, capsys):
    """`generate --model` on the paired folder samples with its own defaults and records noise_level and the
    prompts; benchmarks/stable_unclip.py runs at tiny size and writes its ratio."""
    from benchmarks.stable_unclip import main as bench
    from explorer.cli import main
    _, ours, _ = karlo_paired
    folder = Path(ours.describe()["clip"]).parent
    assert main(["generate", "a red cube", "--model", str(folder), "--out", str(tmp_path / "g"), "--n", "1",
                 "--steps", "2", "--prior-steps", "2", "--seed", "1"]) == 0
    rec = json.loads((tmp_path / "g" / "settings.json").read_text())
    assert rec["settings"]["sampling"]["noise_level"] == 0 and rec["settings"]["sampling"]["decoder_guidance"] == 10.0
    assert bench(["--size", "tiny", "--repeats", "1", "--decoder-steps", "2", "--json", str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["ratio"] > 0 and result["mean_abs_pixel_diff"] < 1e-4


def test_variations_cli_noise_level_sweep_grid(karlo_paired, tmp_path, capsys):
    """`unclip-explorer variations IMAGE --noise-levels ...`: a grid row per level, the level recorded in each PNG,
    and a level outside 0-999 refused by the option."""
    from explorer.cli import main
    from explorer.records import read_png_meta
    _, ours, _ = karlo_paired
    folder = Path(ours.describe()["clip"]).parent
    _image(21).save(tmp_path / "in.png")
    out = tmp_path / "v"
    assert main(["variations", str(tmp_path / "in.png"), "--model", str(folder), "--out", str(out), "--n", "2",
                 "--noise-levels", "0,400,900", "--steps", "2", "--seed", "4", "--prompt", "a red cube"]) == 0
    frame = pd.read_csv(out / "variations.csv")
    assert list(frame["noise_level"]) == [0, 0, 400, 400, 900, 900] and frame["sim_original"].between(-1, 1).all()
    assert len(list(out.glob("variation-*.png"))) == 6
    meta = read_png_meta(out / "variation-005.png")
    assert meta["levels"] == [0, 400, 900] and meta["prompt"] == "a red cube" and meta["index"] == 5
    from PIL import Image as _Image
    grid = _Image.open(out / "grid.png")
    assert grid.size[1] > grid.size[0] / 3 * 2  # three rows of (input + 2) cells
    assert main(["variations", str(tmp_path / "in.png"), "--model", str(folder), "--out", str(out),
                 "--noise-levels", "0,1000"]) == 2
    assert "1000 is outside 0-999" in capsys.readouterr().err
