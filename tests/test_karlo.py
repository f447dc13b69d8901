"""Karlo import: tensors mapped by name and shape, and equivalence with diffusers' UnCLIPPipeline.

diffusers' Karlo components are built with Karlo's architecture at tiny widths and random weights (no zero
layers), saved in Karlo's folder layout and imported. Measured on this fixture (CPU, float32): text encoder,
prior and both super-resolution nets identical (max |diff| 0); decoder eps/variance 3.5e-6 (outputs ~3);
whole text-to-image (prior 25, decoder 25, super-res 7 steps, same noise) with identical scheduler tables:
prior z_i rel. 1e-6, images max |diff| 1.3e-2, mean 3e-5 (random nets amplify rounding through the
1/sqrt(abar) of early steps). With diffusers' own float32 tables its last step of each stage is scaled by
~(1 - 5e-4), so the prior z_i differ by 5e-4 relative and images by a few 1e-3 on average.
"""
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import karlo as kb  # noqa: E402
from unclip_core.conventions import KARLO_CONVENTIONS, KARLO_SAMPLING  # noqa: E402
from unclip_core.families.karlo import import_karlo  # noqa: E402
from unclip_core.hf_clip import load_hf_clip  # noqa: E402
from unclip_core.pipeline import UnCLIP  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red cube", "a photo of the cat on the left of a small dog"]


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    """(Karlo folder, our imported folder) for the tiny random Karlo."""
    root = tmp_path_factory.mktemp("karlo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = kb.build_random_karlo(root / "karlo", "tiny", seed=0)
    return src, import_karlo(src, root / "ours")


@pytest.fixture(scope="module")
def ours(karlo):
    return UnCLIP.load(karlo[1])


@pytest.fixture(scope="module")
def ref(karlo):
    return kb.diffusers_pipeline(karlo[0])


def _text(ref, prompts):
    ids = ref.tokenizer(prompts, padding="max_length", max_length=ref.tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
    with torch.no_grad():
        out = ref.text_encoder(ids.input_ids)
    return out.text_embeds, out.last_hidden_state, ids.attention_mask.bool()


def _float64_tables(ref, schedule):
    for sch in (ref.prior_scheduler, ref.decoder_scheduler, ref.super_res_scheduler):
        sch.betas, sch.alphas, sch.alphas_cumprod = schedule.betas, schedule.alphas, schedule.alphas_cumprod
        sch.one = torch.tensor(1.0, dtype=torch.float64)


# ---- import --------------------------------------------------------------------------------------
def test_import_writes_a_karlo_pipeline_with_karlo_settings(karlo, ours):
    src, out = karlo
    manifest = json.loads((out / "pipeline.json").read_text())
    assert manifest["stages"] == {s: s for s in ("prior", "decoder", "upsampler1", "upsampler1_last")}
    meta = manifest["metadata"]
    assert meta["family"] == "karlo" and meta["clip"] == "clip"
    cosine = {"schedule": "cosine", "beta_start": None, "beta_end": None, "steps_offset": 0,  # squaredcos_cap_v2
              "spacing": None, "set_alpha_to_one": True}
    assert meta["stage_info"]["prior"] == {"prediction": "x0", "clip_x0": 5.0, "variance": "fixed_small_log", **cosine}
    assert meta["stage_info"]["decoder"] == {"prediction": "eps", "clip_x0": 1.0, "variance": "learned_range", **cosine}
    assert meta["stage_info"]["upsampler1"]["variance"] == "fixed_small_log"
    assert meta["conventions"] == {"text": "empty_prompt", "normalize_embeddings": False}
    # one class for every family: Karlo's ways are the data its folder records
    assert type(ours) is UnCLIP and ours.conventions == KARLO_CONVENTIONS and ours.sampling == KARLO_SAMPLING
    assert ours.upsamplers_last[0] is not None and "upsampler1_last" in ours.describe()["parameters"]
    pc, dc, uc = ours.prior.config, ours.decoder.config, ours.upsamplers[0].config
    assert (pc.clip_dim, pc.width, pc.n_layers, pc.n_heads, pc.n_text_tokens) == (32, 32, 2, 2, 77)
    assert pc.clip_scale == 1.0 and pc.use_clip_stats and not pc.norm_in
    assert (dc.image_size, dc.model_channels, dc.channel_mult, dc.attention_resolutions) == (16, 16, (1, 2, 3), (8, 4))
    assert dc.use_z_t and dc.learn_sigma and (dc.n_clip_tokens, dc.context_dim, dc.text_width) == (4, 48, 32)
    assert (uc.low_res, uc.out_res, uc.learn_sigma) == (16, 32, False)
    assert not uc.use_scale_shift_norm and uc.antialias
    assert ours.resolutions == [16, 32]


def test_import_maps_tensors_by_name_with_karlo_layouts(karlo, ours):
    src = karlo[0]
    proj = load_file(src / "text_proj" / "diffusion_pytorch_model.safetensors")
    prior = load_file(src / "prior" / "diffusion_pytorch_model.safetensors")
    dec = load_file(src / "decoder" / "diffusion_pytorch_model.safetensors")
    D, n = 48, 4
    W = proj["clip_extra_context_tokens_proj.weight"]  # rows d * n + k (Karlo) -> k * D + d (ours)
    ours_W = ours.decoder.clip_to_context_tokens.weight.detach()
    for k, d in ((0, 0), (1, 0), (3, 47), (2, 5)):
        assert torch.equal(ours_W[k * D + d], W[d * n + k])
    assert torch.equal(ours.decoder.null_z_i.detach(), proj["learned_classifier_free_guidance_embeddings"])
    assert torch.equal(ours.decoder.unet.norm_out.weight.detach(), dec["conv_norm_out.weight"])
    assert torch.equal(ours.decoder.unet.down_blocks[0].resample.conv1.weight.detach(),
                       dec["down_blocks.0.downsamplers.0.conv1.weight"])
    assert torch.equal(ours.prior.clip_std, prior["clip_std"][0])
    assert torch.equal(ours.prior.transformer_blocks[1].ff.proj_out.weight.detach(),
                       prior["transformer_blocks.1.ff.net.2.weight"])
    # the prior's null_z_t (no counterpart in Karlo) is stored as the encoding of "", Karlo's unconditional text
    torch.testing.assert_close(ours.prior.null_z_t.detach(), ours.clip.encode_text([""], normalize=False)[0])


# ---- networks ------------------------------------------------------------------------------------
def test_text_encoder_is_karlos(ref, ours):
    z_t, hidden, mask = _text(ref, PROMPTS)
    torch.testing.assert_close(ours.clip.encode_text(PROMPTS, normalize=False), z_t, rtol=0, atol=0)
    feats, ours_mask = ours.clip.text_tokens(PROMPTS)
    torch.testing.assert_close(feats, hidden, rtol=0, atol=0)
    assert torch.equal(ours_mask, mask) and mask.sum(1).tolist() == [5, 14]
    assert ours.clip.embed_dim == 32 and ours.clip.text_width == 32 and ours.clip.context_length == 77


def test_prior_matches_diffusers(ref, ours):
    z_t, hidden, mask = _text(ref, PROMPTS)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 32, generator=g) * 3
    t = torch.tensor([999, 17])
    with torch.no_grad():
        want = ref.prior(x, timestep=t, proj_embedding=z_t, encoder_hidden_states=hidden,
                         attention_mask=mask).predicted_image_embedding
        got = ours.prior(x, t, z_t, hidden, mask)
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.prior.scale_out(got), ref.prior.post_process_latents(want), rtol=1e-5, atol=1e-5)


def test_decoder_noise_prediction_matches_diffusers(ref, ours):
    z_t, hidden, mask = _text(ref, PROMPTS)
    g = torch.Generator().manual_seed(2)
    z_i, x_t = torch.randn(2, 32, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([999, 3])
    with torch.no_grad():
        context, additive = ref.text_proj(image_embeddings=z_i, prompt_embeds=z_t, text_encoder_hidden_states=hidden,
                                          do_classifier_free_guidance=False)
        want = ref.decoder(x_t, t, encoder_hidden_states=context, class_labels=additive,
                           attention_mask=F.pad(mask, (4, 0), value=True)).sample
        got = ours.decoder(x_t, t, z_i, hidden, mask, z_t=z_t)
    assert want.shape == (2, 6, 16, 16) and want.abs().max() > 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_upsamplers_match_diffusers(ref, ours):
    g = torch.Generator().manual_seed(3)
    low, x_t = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([600, 0])
    up = F.interpolate(low, size=[32, 32], mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        for theirs, mine in ((ref.super_res_first, ours.upsamplers[0]), (ref.super_res_last, ours.upsamplers_last[0])):
            want = theirs(torch.cat([x_t, up], 1), t).sample
            assert want.abs().max() > 1.0
            torch.testing.assert_close(mine(x_t, t, low), want, rtol=1e-6, atol=1e-6)


# ---- whole text-to-image -------------------------------------------------------------------------
def _diffusers_z_i(ref, prompts, noise, seed):
    captured = {}
    post = ref.prior.post_process_latents
    ref.prior.post_process_latents = lambda x: captured.setdefault("z_i", post(x))
    try:
        images = kb.run_diffusers(ref, prompts, noise, seed)
    finally:
        ref.prior.post_process_latents = post
    return captured["z_i"], images


def test_text_to_image_matches_diffusers_step_for_step(karlo, ours):
    ref = kb.diffusers_pipeline(karlo[0])
    _float64_tables(ref, ours.schedule)  # same coefficients: compares the algorithm, not table rounding
    noise = kb.initial_noise(ref, len(PROMPTS), 0)
    z_want, want = _diffusers_z_i(ref, PROMPTS, noise, 0)
    g = torch.Generator().manual_seed(0)
    z_i = ours.sample_prior(PROMPTS, seed=g, x_T=noise["prior_latents"])
    torch.testing.assert_close(z_i, z_want, rtol=1e-5, atol=1e-5 * float(z_want.abs().max()))
    out = ours.decode(z_i, x_T=noise["decoder_latents"], prompts=PROMPTS, seed=g,
                      noise={"upsampler1": noise["super_res_latents"]})
    got = out.stages["upsampler1"]
    assert got.shape == want.shape == (2, 3, 32, 32) and want.std() > 0.3
    diff = (got - want).abs()
    assert float(diff.mean()) < 1e-4 and float(diff.max()) < 5e-2
    # text_to_image draws the same noises in the same order as the two calls above
    again = kb.run_ours(ours, PROMPTS, noise, 0)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_text_to_image_close_to_diffusers_float32_tables(ref, ours):
    noise = kb.initial_noise(ref, 1, 1)
    z_want, want = _diffusers_z_i(ref, PROMPTS[:1], noise, 1)
    got = kb.run_ours(ours, PROMPTS[:1], noise, 1)
    z_i = ours.sample_prior(PROMPTS[:1], seed=1, x_T=noise["prior_latents"])
    rel = float((z_i - z_want).abs().max() / z_want.abs().max())
    assert 1e-4 < rel < 2e-3  # diffusers' float32 1 - alphas[0] != betas[0]: its last step is scaled by ~1 - 5e-4
    assert float((got - want).abs().mean()) < 2e-2


def test_seeded_output_is_reproducible_and_decode_defaults_to_empty_prompt(ours):
    fast = {"decoder_steps": 5, "prior_steps": 5}
    a = ours.text_to_image("a red cube", seed=7, upsample=False, sampling=fast)
    b = ours.text_to_image("a red cube", seed=7, upsample=False, sampling=fast)
    assert torch.equal(a.stages["decoder"], b.stages["decoder"]) and a.z_i.shape == (1, 32)
    assert a.settings["sampling"]["decoder_sampler"] == "unclip" and a.settings["parameters"]["upsampler1_last"] > 0
    assert a.settings["sampling"]["decoder_steps"] == 5 and a.settings["sampling"]["prior_steps"] == 5
    assert a.settings["sampling"]["decoder_guidance"] == 8.0 and a.settings["sampling"]["best_of"] == 1
    # decode without prompts conditions on "" (Karlo's image-variation convention); the caption matters
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    c = ours.decode(a.z_i, x_T=x_T, sampling=fast, upsample=False, seed=1)
    d = ours.decode(a.z_i, x_T=x_T, sampling=fast, upsample=False, seed=1, prompts=["a red cube"])
    assert float((c.stages["decoder"] - d.stages["decoder"]).abs().max()) > 1e-3
    z_null, _, mask_null = ours.text_condition([""])
    assert torch.equal(z_null, ours.clip.encode_text([""], normalize=False)) and mask_null.sum() == 2


def test_progress_changes_nothing_and_clip_denoised_follows_the_rule(ours, capsys):
    """Karlo follows UnCLIP's clip_denoised rule, except that its "unclip" sampler always clamps (as diffusers'
    UnCLIPScheduler); progress only adds one labelled bar per stage; calls are keyword-only."""
    kw = {"seed": 3, "sampling": {"decoder_steps": 3, "prior_steps": 3, "upsampler_steps": (2,)}}
    quiet = ours.text_to_image("a red cube", **kw)
    assert capsys.readouterr().err == ""
    shown = ours.text_to_image("a red cube", progress=True, **kw)
    err = capsys.readouterr().err
    for label in ("prior: DDPM", "decoder: DDPM", "upsampler1: DDPM"):
        assert f"{label}: 100%" in err, (label, err)
    for stage in ("decoder", "upsampler1"):
        assert torch.equal(quiet.stages[stage], shown.stages[stage])
    assert quiet.settings["clip_denoised"] is shown.settings["clip_denoised"] is True
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    dec = {"upsample": False, "seed": 1}
    steps3, ddim = {"decoder_steps": 3}, {"decoder_steps": 3, "decoder_sampler": "ddim"}
    assert ours.decode(quiet.z_i, x_T=x_T, sampling=steps3, **dec).settings["clip_denoised"] is True  # unclip
    assert ours.decode(quiet.z_i, sampling=ddim, **dec).settings["clip_denoised"] is True   # fresh noise
    given = ours.decode(quiet.z_i, x_T=x_T, sampling=ddim, **dec)
    assert given.settings["clip_denoised"] is False and given.settings["x_T_given"] is True
    clamped = ours.decode(quiet.z_i, x_T=x_T, sampling={**ddim, "clip_denoised": True}, **dec)
    assert float((given.stages["decoder"] - clamped.stages["decoder"]).abs().max()) > 1e-3
    with pytest.raises(TypeError, match=r"decode\(\) takes 2 positional arguments but 3 were given"):
        ours.decode(quiet.z_i, x_T)
    with pytest.raises(TypeError, match=r"text_to_image\(\) takes 2 positional arguments but 3 were given"):
        ours.text_to_image("a red cube", 1)


def test_karlo_sampling_defaults_and_eta_honoured_or_rejected(karlo, ours):
    """An imported Karlo samples with KARLO_SAMPLING (written into its pipeline.json); the decoder's eta is
    honoured by DDIM and refused by the "unclip" sampler (which has no eta), never silently dropped."""
    assert ours.sampling == KARLO_SAMPLING
    assert json.loads((karlo[1] / "pipeline.json").read_text())["metadata"]["sampling"] == KARLO_SAMPLING.to_dict()
    assert (KARLO_SAMPLING.prior_steps, KARLO_SAMPLING.decoder_steps, KARLO_SAMPLING.upsampler_steps) == (25, 25, (7,))
    z = ours.sample_prior("a red cube", sampling={"prior_steps": 3}, seed=0)
    dec = {"upsample": False, "seed": 5}  # fresh noise, clamped (a given x_T saturates this random net's pixels)
    ddim = {"decoder_steps": 4, "decoder_sampler": "ddim"}
    eta0 = ours.decode(z, sampling=ddim, **dec)
    eta1 = ours.decode(z, sampling={**ddim, "eta": 1.0}, **dec)
    eta1_again = ours.decode(z, sampling={**ddim, "eta": 1.0}, **dec)
    assert eta1.settings["sampling"]["eta"] == 1.0 and eta0.settings["sampling"]["eta"] == 0.0
    assert float((eta1.stages["decoder"] - eta0.stages["decoder"]).abs().max()) > 1e-3  # honoured
    assert torch.equal(eta1.stages["decoder"], eta1_again.stages["decoder"])  # its noise comes from the seed
    with pytest.raises(ValueError, match="sampler 'unclip' does not take eta"):
        ours.decode(z, sampling={"eta": 1.0}, **dec)  # the pipeline's decoder sampler is "unclip"


def test_float16_storage_loads_close(karlo, ours, tmp_path):
    out = import_karlo(karlo[0], tmp_path / "half", dtype="float16")
    half = UnCLIP.load(out)
    size = lambda p: (p / "prior" / "model.safetensors").stat().st_size  # noqa: E731
    assert size(out) < 0.6 * size(karlo[1])
    x, t = torch.randn(1, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([10])
    with torch.no_grad():
        torch.testing.assert_close(half.prior(x, t), ours.prior(x, t), rtol=2e-2, atol=2e-2)


# ---- errors --------------------------------------------------------------------------------------
@pytest.fixture
def copy(karlo, tmp_path):
    dst = tmp_path / "k"
    shutil.copytree(karlo[0], dst)
    return dst


def _edit_weights(folder: Path, fn):
    f = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    fn(state)
    save_file(state, str(f))


def test_unmapped_tensor_is_listed(copy, tmp_path):
    _edit_weights(copy / "prior", lambda s: s.update({"extra_head.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected \(1\): \['extra_head.weight'\]"):
        import_karlo(copy, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_missing_and_mismatched_tensors_are_listed(copy, tmp_path):
    _edit_weights(copy / "super_res_last", lambda s: s.pop("conv_out.bias"))
    with pytest.raises(ValueError, match=r"missing \(1\): \['unet.conv_out.bias'\]"):
        import_karlo(copy, tmp_path / "o")
    shutil.rmtree(copy / "super_res_last")
    shutil.copytree(copy / "super_res_first", copy / "super_res_last")
    _edit_weights(copy / "text_proj", lambda s: s.update({"embedding_proj.bias": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"shape-mismatched \(1\): \['z_t_to_time.bias: checkpoint \(3,\)"):
        import_karlo(copy, tmp_path / "o")


def test_bad_folders_and_settings(copy, karlo, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; download kakaobrain/karlo-v1-alpha"):
        import_karlo(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(ValueError, match=r"dtype='float8' is not known; accepted: 'float32', 'float16', 'bfloat16'"):
        import_karlo(copy, tmp_path / "o", dtype="float8")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        import_karlo(copy, karlo[1])
    cfg = json.loads((copy / "decoder" / "config.json").read_text())
    (copy / "decoder" / "config.json").write_text(json.dumps(dict(cfg, resnet_time_scale_shift="default")))
    with pytest.raises(ValueError, match=r"resnet_time_scale_shift='default' \(supported: 'scale_shift'\)"):
        import_karlo(copy, tmp_path / "o")
    sched = copy / "decoder_scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(dict(json.loads(sched.read_text()), variance_type="learned")))
    with pytest.raises(ValueError, match=r"variance_type='learned' is not known; accepted: 'fixed_small_log'"):
        import_karlo(copy, tmp_path / "o")
    shutil.rmtree(copy / "text_proj")
    with pytest.raises(FileNotFoundError, match=r"missing subfolders \['text_proj'\]"):
        import_karlo(copy, tmp_path / "o")


def test_karlo_pipeline_user_errors(ours, karlo, tmp_path):
    with pytest.raises(ValueError, match="holds no CLIP image tower.*image_encoder/"):
        ours.clip.encode_image(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match=r"x_T must be a float tensor of shape \(1, 32\), got \(2, 32\)"):
        ours.sample_prior("a cube", sampling={"prior_steps": 2}, x_T=torch.zeros(2, 32))
    with pytest.raises(ValueError, match="sampler='euler' is not known; accepted: 'ddim', 'ddpm', 'dpmpp_2m', "
                                         "'unclip'"):
        ours.text_to_image("a cube", sampling={"decoder_sampler": "euler"})
    other = shutil.copytree(karlo[1], tmp_path / "other")
    manifest = json.loads((other / "pipeline.json").read_text())
    manifest["metadata"]["conventions"] = {"text": "telepathy"}
    (other / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"pipeline.json: 'conventions': conventions text='telepathy' is not known"):
        UnCLIP.load(other)
    with pytest.raises(ValueError, match=r"noise names unknown stages \['super_res'\]"):
        ours.text_to_image("a cube", noise={"super_res": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="holds no Hugging Face CLIP tower"):
        load_hf_clip(ROOT)


def test_a_folder_imported_before_conventions_loads_as_karlo(karlo, ours, tmp_path):
    """pipeline.json written before "conventions", "sampling" and StageInfo.variance existed (family "karlo",
    "variance" beside stage_info) loads with Karlo's conventions and sampling, and samples identically."""
    old = shutil.copytree(karlo[1], tmp_path / "old")
    manifest = json.loads((old / "pipeline.json").read_text())
    meta = manifest["metadata"]
    meta.pop("conventions"), meta.pop("sampling")
    meta["variance"] = {k: v.pop("variance") for k, v in meta["stage_info"].items()}
    (old / "pipeline.json").write_text(json.dumps(manifest))
    pipe = UnCLIP.load(old)
    assert pipe.conventions == KARLO_CONVENTIONS and pipe.sampling == KARLO_SAMPLING
    assert pipe.stage_info["decoder"].variance == "learned_range"
    fast = {"prior_steps": 3, "decoder_steps": 3, "upsampler_steps": (2,)}
    a = pipe.text_to_image(PROMPTS[:1], sampling=fast, seed=3).stages["upsampler1"]
    b = ours.text_to_image(PROMPTS[:1], sampling=fast, seed=3).stages["upsampler1"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cli_import_karlo(karlo, tmp_path, capsys):
    from explorer.cli import main
    assert main(["import", "karlo", str(karlo[0]), "--out", str(tmp_path / "o"), "--dtype", "float16"]) == 0
    assert "stages prior, decoder, upsampler1, upsampler1_last + clip/" in capsys.readouterr().out
    assert UnCLIP.load(tmp_path / "o").conventions == KARLO_CONVENTIONS
    assert main(["import", "karlo", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_generate_on_a_karlo_folder_samples_with_karlos_settings(karlo, tmp_path, capsys):
    """`generate --model <karlo>` samples with the folder's own defaults (25 / 25 / 7 steps of "unclip", guidance
    4 / 8, no best-of), not the shapes family's; an option on the command line changes only its own field."""
    from explorer.cli import main
    assert main(["generate", "a red cube", "--model", str(karlo[1]), "--out", str(tmp_path / "g"), "--n", "1",
                 "--no-upsample", "--seed", "1"]) == 0
    rec = json.loads((tmp_path / "g" / "settings.json").read_text())
    assert rec["settings"]["sampling"] == KARLO_SAMPLING.to_dict()
    assert main(["generate", "a red cube", "--model", str(karlo[1]), "--out", str(tmp_path / "h"), "--n", "1",
                 "--no-upsample", "--steps", "4", "--prior-steps", "3"]) == 0
    rec = json.loads((tmp_path / "h" / "settings.json").read_text())
    assert rec["settings"]["sampling"] == {**KARLO_SAMPLING.to_dict(), "decoder_steps": 4, "prior_steps": 3}
    assert main(["generate", "a red cube", "--model", str(karlo[1]), "--out", str(tmp_path / "i"),
                 "--eta", "0.5"]) == 2
    assert "sampler 'unclip' does not take eta" in capsys.readouterr().err


def test_every_analysis_runs_on_karlo_with_an_image_tower(karlo, tmp_path):
    """Karlo's download has no image tower; with one beside its text tower (clip/image_encoder, as OpenAI ViT-L/14
    would be) variations, inverted interpolation, text diffs and PCA reconstructions run by the same calls."""
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    from analyses.interpolation import interpolate
    from analyses.recon import pca_reconstructions
    from analyses.text_diff import text_diff
    folder = shutil.copytree(karlo[1], tmp_path / "karlo-with-eyes")
    torch.manual_seed(0)
    vision = kb.randomize(CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, image_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, patch_size=8)), 7).eval()
    vision.save_pretrained(folder / "clip" / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "clip" / "image_processor")
    pipe = UnCLIP.load(folder)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    fast = {"prior_steps": 2, "decoder_steps": 3, "upsampler_steps": (2,)}
    var = pipe.variations(img, n=2, sampling=fast, upsample=False, seed=0)
    assert len(var.images) == 2 and var.settings["sampling"]["decoder_sampler"] == "unclip"
    r = interpolate(pipe, img, img.transpose(Image.FLIP_LEFT_RIGHT), n_steps=3, x_T_mode="inverted", upsample=False,
                    sampling={"decoder_steps": 3, "invert_refine": 1})
    assert len(r.images) == 3 and r.x_T.shape == (3, 3, 16, 16)
    c = interpolate(pipe, "a red cube", "a blue ball", n_steps=2, upsample=False, sampling=fast)
    assert len(c.images) == 2
    td = text_diff(pipe, img, "a red cube", "a blue cube", n_steps=2, upsample=False,
                   sampling={"decoder_steps": 3, "invert_refine": 1})
    assert len(td.images) == 2
    Z = pipe.encode_images([Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(5)])
    pr = pca_reconstructions(pipe, [img], Z.numpy(), ks=[2, 32], sampling={"decoder_steps": 2}, upsample=False)
    assert len(pr.frame) == 2
