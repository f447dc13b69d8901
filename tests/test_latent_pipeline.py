"""UnCLIP with a latent decoder (tiny random autoencoder + latent Decoder): the cascade sees pixels either way."""
import json

import numpy as np
import pytest
import torch

from analyses._pipe import decode as pipe_decode
from analyses._pipe import decoder_size, noise, to_decoder_tensor
from analyses.recon import pca_reconstructions
from unclip_core.checkpoint import load_checkpoint
from unclip_core.clip import ClipEncoder
from unclip_core.imageio import pil_to_tensor
from unclip_core.pipeline import StageInfo, UnCLIP
from unclip_core.sampling import SamplingConfig
from unclip_core.train.diffusion import assemble_pipeline

from pipeline_fixture import noise_image
from tiny_models import write_tiny_latent_pipeline, write_tiny_latent_stages

pytestmark = pytest.mark.filterwarnings("ignore:prompt .* truncated:UserWarning")
# DDIM inversion of the tiny v-predicting latent decoder (steps 4, guidance 1, refine 2): decode(invert(x)) is
# off by max 1.3e-5 in latents and 3.8e-5 in pixels (measured; it is exact up to the ODE's discretisation)
INVERT = {"decoder_steps": 4, "invert_guidance": 1.0, "invert_refine": 2}  # SamplingConfig fields


def _z(n: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return write_tiny_latent_stages(tmp_path_factory.mktemp("stages"))


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    return write_tiny_latent_pipeline(tmp_path_factory.mktemp("latent"))


@pytest.fixture(scope="module")
def lpipe(latent_dir):
    return UnCLIP.load(latent_dir)


def _ae_reconstruction(pipe: UnCLIP, images) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents of the images, their decoding clamped): what a latent decoder can give back at best."""
    with torch.no_grad():
        lat = pipe.autoencoder.encode(pil_to_tensor(images, size=16))
        return lat, pipe.autoencoder.decode(lat).clamp(-1, 1)


# ------------------------------------------------------------------------------------------------ shapes
def test_the_decoder_samples_latents_and_outputs_pixels(lpipe):
    assert lpipe.is_latent and lpipe.x_T_shape(3) == (3, 4, 8, 8)
    assert lpipe.resolutions == [16, 32]  # pixels: the autoencoder's image size, then the upsampler's
    out = lpipe.decode(_z(2), sampling={"decoder_steps": 3, "upsampler_steps": (2,)}, seed=0)
    assert {k: tuple(v.shape) for k, v in out.stages.items()} == {
        "decoder_latents": (2, 4, 8, 8), "decoder": (2, 3, 16, 16), "upsampler1": (2, 3, 32, 32)}
    assert out.images[0].size == (32, 32)
    assert float(out.stages["decoder"].abs().max()) <= 1.0
    with torch.no_grad():  # the decoder stage is the autoencoder's decoding of the sampled latents
        want = lpipe.autoencoder.decode(out.stages["decoder_latents"]).clamp(-1, 1)
    torch.testing.assert_close(out.stages["decoder"], want)
    assert [im.size for im in out.stage_images("decoder")] == [(16, 16)] * 2
    with pytest.raises(ValueError, match="stage 'decoder_latents' holds latents .*not images"):
        out.stage_images("decoder_latents")


def test_same_seed_same_images_whatever_progress(lpipe):
    a = lpipe.decode(_z(2), sampling={"decoder_steps": 3}, upsample=False, seed=5)
    b = lpipe.decode(_z(2), sampling={"decoder_steps": 3}, upsample=False, seed=5, progress=True)
    assert torch.equal(a.stages["decoder_latents"], b.stages["decoder_latents"])
    assert torch.equal(a.stages["decoder"], b.stages["decoder"])
    c = lpipe.decode(_z(2), sampling={"decoder_steps": 3}, upsample=False, seed=6)
    assert not torch.equal(a.stages["decoder"], c.stages["decoder"])


def test_x_T_of_another_shape_names_the_expected_one(lpipe):
    with pytest.raises(ValueError, match=r"x_T has shape \(2, 3, 8, 8\), expected a float tensor of shape "
                                         r"\(2, 4, 8, 8\) \(pipe.x_T_shape\(2\): one latent of the autoencoder"):
        lpipe.decode(_z(2), x_T=torch.randn(2, 3, 8, 8), sampling={"decoder_steps": 2}, upsample=False)
    with pytest.raises(ValueError, match=r"expected a float tensor of shape \(2, 4, 8, 8\)"):
        lpipe.decode(_z(2), x_T=torch.randn(2, 3, 16, 16), sampling={"decoder_steps": 2},
                     upsample=False)  # pixel noise
    with pytest.raises(ValueError, match="n must be"):
        lpipe.x_T_shape(0)


# ------------------------------------------------------------------------------------------------ clip_denoised
def test_a_latent_decoder_never_clamps_x0(lpipe):
    assert lpipe.stage_info["decoder"].clip_x0 is None
    for asked in (None, True, False):
        for given in (True, False):
            assert lpipe.clip_denoised_rule(asked, x_T_given=given, sampler="ddim") is False
    a = lpipe.decode(_z(1), sampling={"decoder_steps": 3}, upsample=False, seed=0)
    b = lpipe.decode(_z(1), sampling={"decoder_steps": 3, "clip_denoised": True}, upsample=False, seed=0)
    assert a.settings["clip_denoised"] is False and b.settings["clip_denoised"] is False
    assert torch.equal(a.stages["decoder_latents"], b.stages["decoder_latents"])
    with pytest.raises(TypeError, match="clip_denoised must be True, False or None"):
        lpipe.decode(_z(1), sampling={"decoder_steps": 2, "clip_denoised": 1}, upsample=False)


# ------------------------------------------------------------------------------------------------ inversion
def test_invert_then_decode_reconstructs_latents_and_pixels(lpipe):
    images = [noise_image(0), noise_image(1)]
    z_i, x_T = lpipe.invert(images, sampling=INVERT)
    assert x_T.shape == lpipe.x_T_shape(2)
    lat, rec = _ae_reconstruction(lpipe, images)
    out = lpipe.decode(z_i, x_T=x_T, sampling={"decoder_steps": INVERT["decoder_steps"],
                                              "decoder_guidance": INVERT["invert_guidance"]}, upsample=False)
    assert out.settings["clip_denoised"] is False and out.settings["x_T_given"] is True
    assert float((out.stages["decoder_latents"] - lat).abs().max()) < 1e-4  # measured 1.3e-5
    assert float((out.stages["decoder"] - rec).abs().max()) < 2e-4  # measured 3.8e-5
    fresh = lpipe.decode(z_i, sampling={"decoder_steps": INVERT["decoder_steps"], "decoder_guidance": 1.0},
                         upsample=False, seed=0)
    assert float((fresh.stages["decoder"] - rec).abs().mean()) > 0.1  # fresh noise does not reconstruct


def test_variations_and_text_to_image_go_through_the_autoencoder(lpipe):
    var = lpipe.variations(noise_image(3), n=2, sampling={"decoder_steps": 2}, seed=0, upsample=False)
    assert var.stages["decoder_latents"].shape == (2, 4, 8, 8) and var.images[0].size == (16, 16)
    fast = {"decoder_steps": 2, "prior_steps": 2, "upsampler_steps": (2,)}
    out = lpipe.text_to_image(["a red circle", "a blue square"], sampling=fast, seed=0)
    assert out.stages["decoder_latents"].shape == (2, 4, 8, 8) and out.stages["upsampler1"].shape == (2, 3, 32, 32)
    assert out.settings["clip_denoised"] is False and out.settings["latent_decoder"] is True
    again = lpipe.text_to_image(["a red circle", "a blue square"], sampling=fast, seed=0)
    assert torch.equal(out.stages["upsampler1"], again.stages["upsampler1"])


# ------------------------------------------------------------------------------------------------ inpainting
def test_inpaint_resamples_latent_cells_and_keeps_the_rest(lpipe):
    image = noise_image(0)
    lat, rec = _ae_reconstruction(lpipe, [image])
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1  # regenerate the left half: latent columns 0-3
    out = lpipe.inpaint(image, mask, n=2, sampling={"decoder_steps": 4}, n_resample=2, seed=0, upsample=False)
    got, px = out.stages["decoder_latents"], out.stages["decoder"]
    assert got.shape == (2, 4, 8, 8) and px.shape == (2, 3, 16, 16)
    assert float((got[..., 4:] - lat[..., 4:]).abs().max()) < 1e-5  # kept latent cells: exactly the image's
    assert float((got[..., :4] - lat[..., :4]).abs().mean()) > 0.1
    # pixels: the autoencoder decodes the whole latent, so the kept half is close to, not equal to, the image's
    # reconstruction (measured mean |error| 0.19 kept vs 0.30 regenerated on seed 0; 0.17-0.19 on seeds 0-4)
    kept, regen = float((px[..., 8:] - rec[..., 8:]).abs().mean()), float((px[..., :8] - rec[..., :8]).abs().mean())
    assert kept < 0.22 and kept < regen
    # the mask goes to the latent grid: a cell is regenerated when any of its f x f pixels is
    one = torch.zeros(16, 16)
    one[5, 9] = 1
    single = lpipe.inpaint(image, one, sampling={"decoder_steps": 4}, n_resample=2, seed=0,
                           upsample=False).stages["decoder_latents"]
    changed = ((single[0] - lat[0]).abs().amax(0) > 1e-5).nonzero().tolist()
    assert changed == [[2, 4]]
    with pytest.raises(ValueError, match=r"mask has shape \(8, 8\) but the decoder makes 16x16 images"):
        lpipe.inpaint(image, torch.ones(8, 8), sampling={"decoder_steps": 2}, upsample=False)


# ------------------------------------------------------------------------------------------------ folders
def test_assembled_folder_round_trips(stages, tmp_path):
    folder = assemble_pipeline(tmp_path / "pipe", {k: stages[k] for k in ("prior", "decoder", "upsampler1")},
                               stages["clip"], "tiny-latent")
    manifest = json.loads((folder / "pipeline.json").read_text())
    assert "autoencoder" in manifest["stages"]  # taken from the decoder's metadata
    assert manifest["metadata"]["stage_info"]["decoder"] == {"prediction": "v", "clip_x0": None}
    assert "autoencoder" not in manifest["metadata"]["stage_info"]
    loaded = UnCLIP.load(folder)
    built = UnCLIP(ClipEncoder.load(str(stages["clip"])), load_checkpoint(stages["decoder"]),
                   load_checkpoint(stages["prior"]), [load_checkpoint(stages["upsampler1"])],
                   {"decoder": StageInfo("v", None)}, autoencoder=load_checkpoint(stages["autoencoder"]))
    fast = {"decoder_steps": 2, "prior_steps": 2, "upsampler_steps": (2,)}
    a = loaded.text_to_image("a red circle", sampling=fast, seed=3)
    b = built.text_to_image("a red circle", sampling=fast, seed=3)
    for name in ("decoder_latents", "decoder", "upsampler1"):
        assert torch.equal(a.stages[name], b.stages[name]), name


def test_assemble_names_a_missing_autoencoder(stages, tmp_path):
    import shutil
    dec = tmp_path / "decoder"
    shutil.copytree(stages["decoder"], dec)
    doc = json.loads((dec / "config.json").read_text())
    doc["metadata"]["autoencoder"] = str(tmp_path / "gone")
    (dec / "config.json").write_text(json.dumps(doc))
    with pytest.raises(FileNotFoundError, match=r"samples the latents of autoencoder .*gone.* pass that "
                                                r"checkpoint folder as stage 'autoencoder'"):
        assemble_pipeline(tmp_path / "pipe", {"decoder": dec}, stages["clip"], "x")
    # an explicit autoencoder stage wins over the recorded one
    folder = assemble_pipeline(tmp_path / "pipe", {"decoder": dec, "autoencoder": stages["autoencoder"]},
                               stages["clip"], "x")
    assert UnCLIP.load(folder).is_latent


def test_mismatched_stages_are_refused(stages):
    clip = ClipEncoder.load(str(stages["clip"]))
    dec, ae = load_checkpoint(stages["decoder"]), load_checkpoint(stages["autoencoder"])
    pixel = load_checkpoint(stages["prior"])  # any other model is not an Autoencoder
    with pytest.raises(TypeError, match=r"autoencoder must be an Autoencoder, a MoVQ or a \w+ \(or None\), got DiffusionPrior"):
        UnCLIP(clip, dec, autoencoder=pixel)
    with pytest.raises(ValueError, match=r"decoder samples 4-channel 8x8 arrays, not RGB images: a latent decoder; "
                                         r"pass its autoencoder"):
        UnCLIP(clip, dec)
    from unclip_core.autoencoder import Autoencoder, AutoencoderConfig
    other = Autoencoder(AutoencoderConfig(image_size=32, latent_channels=4, channels=8, channel_mult=(1, 2),
                                          norm_groups=4))
    with pytest.raises(ValueError, match=r"autoencoder makes latents of shape \(4, 16, 16\) .*but the decoder "
                                         r"samples \(4, 8, 8\) .*image_size=16 and in_channels=4"):
        UnCLIP(clip, dec, autoencoder=other)
    with pytest.raises(ValueError, match=r"clip_x0=1.0 clamps x0 to a pixel range.*set the decoder's clip_x0 to None"):
        UnCLIP(clip, dec, stage_info={"decoder": StageInfo("v", 1.0)}, autoencoder=ae)


def test_describe_records_the_autoencoder(lpipe):
    d = lpipe.describe()
    assert d["latent_decoder"] is True and d["resolutions"] == [16, 32]
    n_ae = sum(p.numel() for p in lpipe.autoencoder.parameters())
    assert d["parameters"]["autoencoder"] == n_ae
    assert d["autoencoder"] == {"parameters": n_ae, "image_size": 16, "latent_shape": [4, 8, 8], "factor": 2,
                                "scaling_factor": 1.0}
    out = lpipe.decode(_z(1), sampling={"decoder_steps": 2}, upsample=False, seed=0)
    assert out.settings["autoencoder"]["latent_shape"] == [4, 8, 8]  # provenance of every output
    json.dumps(out.settings)  # PNG text chunks need JSON


# ------------------------------------------------------------------------------------------------ analyses
def test_analyses_helpers_use_pixels_and_x_T_shape(lpipe):
    assert decoder_size(lpipe) == 16 and to_decoder_tensor(lpipe, noise_image(0)).shape == (1, 3, 16, 16)
    x_T = noise(lpipe, 3, torch.Generator().manual_seed(0))
    assert x_T.shape == (3, 4, 8, 8)
    sc = SamplingConfig(decoder_steps=2, decoder_guidance=3.0, clip_denoised=True, upsampler_steps=(2,))
    images, decoded = pipe_decode(lpipe, _z(3), x_T, sampling=sc, upsample=1, g=torch.Generator().manual_seed(0),
                                  batch_size=2)
    assert decoded.shape == (3, 3, 16, 16) and [im.size for im in images] == [(32, 32)] * 3
    # frames depend on z_i and x_T only: the first frame alone decodes the same
    one, d1 = pipe_decode(lpipe, _z(3)[:1], x_T[:1], sampling=sc, upsample=False, g=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d1, decoded[:1])


def test_pca_reconstructions_on_a_latent_pipeline(lpipe):
    Z = np.random.default_rng(0).normal(size=(20, 16))
    r = pca_reconstructions(lpipe, [noise_image(0), noise_image(1)], Z / np.linalg.norm(Z, axis=1, keepdims=True),
                            ks=[2, 16], sampling={"decoder_steps": 2}, seed=1, upsample=False)
    assert list(r.frame["k"]) == [2, 16, 2, 16]
    assert all(im.size == (16, 16) for row in r.rows for im in row[1:])
    again = pca_reconstructions(lpipe, [noise_image(0), noise_image(1)], Z / np.linalg.norm(Z, axis=1, keepdims=True),
                                ks=[2, 16], sampling={"decoder_steps": 2}, seed=1, upsample=False)
    assert np.asarray(r.rows[1][2]).tolist() == np.asarray(again.rows[1][2]).tolist()


# ------------------------------------------------------------------------------------------------ training CLIs
def test_a_trained_latent_decoder_assembles_with_its_autoencoder(tmp_path, capsys):
    from dataclasses import replace

    from explorer.cli import main
    from unclip_core.train.autoencoder import recipe as ae_recipe
    from unclip_core.train.autoencoder import train_autoencoder
    from unclip_core.train.diffusion import fit_to_autoencoder, recipe, train_stage
    from tiny_models import write_tiny_clip
    clip = ClipEncoder.load(str(write_tiny_clip(tmp_path / "clip")))
    ae = train_autoencoder(ae_recipe("tiny"), tmp_path / "ae", progress=False)  # 32 px -> (2, 16, 16)
    runs = tmp_path / "runs"
    cfg = recipe("tiny", "decoder", autoencoder=str(ae), clip=clip.spec, n_steps=1)
    cfg = fit_to_autoencoder(replace(cfg, model={**cfg.model, "clip_dim": 16}))
    assert (cfg.model["image_size"], cfg.model["in_channels"]) == (16, 2)
    dec = train_stage(cfg, runs / "tiny-decoder", clip=clip, progress=False)
    meta = json.loads((dec / "config.json").read_text())["metadata"]
    assert meta["autoencoder"] == str(ae)
    assert "latent decoder: samples the latents of the autoencoder" in (dec / "README.md").read_text()
    assert main(["train", "assemble", "--recipe", "tiny", "--runs", str(runs), "--out", str(tmp_path / "p")]) == 0
    assert "assembled tiny-unclip (decoder, autoencoder; CLIP" in capsys.readouterr().out
    pipe = UnCLIP.load(tmp_path / "p")
    assert pipe.is_latent and pipe.resolutions == [32] and pipe.x_T_shape(1) == (1, 2, 16, 16)
    assert pipe.decode(_z(1), sampling={"decoder_steps": 2}, seed=0).images[0].size == (32, 32)


def test_training_cli_misuse_is_one_line(tmp_path, capsys):
    from explorer.cli import main
    from unclip_core.train.diffusion import main as diffusion_main
    assert main(["train", "prior", "--recipe", "tiny", "--autoencoder", "x", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "autoencoder is a decoder setting (a latent decoder); the prior stage takes none" in err
    assert "Traceback" not in err
    assert main(["train", "clip", "--recipe", "tiny", "--autoencoder", "x", "--out", str(tmp_path / "c")]) == 2
    assert "options for the diffusion stages only, not clip: --autoencoder" in capsys.readouterr().err
    assert main(["train", "decoder", "--recipe", "tiny", "--world", "9", "--out", str(tmp_path / "w")]) == 2
    assert "world must be a ShapesWorld version in [1, 2], got 9" in capsys.readouterr().err
    assert main(["train", "assemble", "--recipe", "tiny", "--world", "2", "--out", str(tmp_path / "p")]) == 2
    assert "--world sets the training data; train assemble" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        diffusion_main(["upsampler1", "--recipe", "tiny", "--autoencoder", "x", "--out", str(tmp_path / "u")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == ("python -m unclip_core.train.diffusion: error: autoencoder is a decoder setting (a latent "
                   "decoder); the upsampler1 stage takes none\n")
    with pytest.raises(SystemExit):
        diffusion_main(["decoder", "--recipe", "tiny", "--autoencoder", str(tmp_path / "none"), "--out",
                        str(tmp_path / "d")])
    assert "error: checkpoint folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ dashboard
@pytest.mark.filterwarnings("ignore:.*ScriptRunContext")
def test_latent_lab_runs_a_latent_pipeline(monkeypatch, latent_dir, lpipe):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from dashboards import _state as S
    monkeypatch.setenv(S.ENV_MODEL, str(latent_dir))
    monkeypatch.delenv(S.ENV_STORE, raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboards" / "views" / "latent_lab.py"),
                           default_timeout=120)
    at.run()
    assert not at.exception and not at.error
    assert any("autoencoder (0.02M)" in c.value for c in at.caption)  # describe() lists the stage
    at.slider(key="sampling_decoder_steps").set_value(2)
    at.slider(key="sampling_prior_steps").set_value(2)
    at.number_input(key="t2i_n").set_value(1)
    at.button(key="t2i_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    shown = at.session_state["t2i"]
    ref = lpipe.text_to_image("a red circle left of a blue square", n=1, upsample=1, seed=0,
                              sampling={"decoder_steps": 2, "decoder_guidance": 3.0, "prior_steps": 2,
                                        "prior_guidance": 4.0})
    assert shown.settings["sampling"] == ref.settings["sampling"]
    assert shown.images[0].size == (32, 32)
    assert np.asarray(shown.images[0]).tolist() == np.asarray(ref.images[0]).tolist()
