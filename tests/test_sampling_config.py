"""SamplingConfig (the one owner of every sampling setting), pipeline.json "sampling", the sampler registry and the
command line's sampling options."""
import argparse
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch

from explorer.commands._args import add_sampling_args, sampling_from_args, sampling_overrides
from unclip_core.diffusion import cosine_schedule
from unclip_core.inpaint import sample_repaint
from unclip_core.pipeline import UnCLIP
from unclip_core.samplers import (SAMPLERS, check_sampler_settings, get_sampler, invert_ddim, run_sampler,
                                  sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_unclip, sampler_names, timesteps)
from unclip_core.sampling import SamplingConfig, check_sampling

from pipeline_fixture import pipe, pipe_dir  # noqa: F401 (module-scoped fixtures)

FIELDS = [f.name for f in dataclasses.fields(SamplingConfig)]


# ---- validation ------------------------------------------------------------------------------------------
def test_fields_are_the_documented_ones():
    assert FIELDS == ["prior_sampler", "prior_steps", "prior_guidance", "best_of", "decoder_sampler", "decoder_steps",
                      "decoder_guidance", "eta", "clip_denoised", "invert_guidance", "invert_refine",
                      "upsampler_sampler", "upsampler_steps", "precision", "noise_level"]


def test_noise_level_is_checked_and_refused_by_decoders_without_noise_augmentation(pipe):  # noqa: F811
    """noise_level (Stable unCLIP's) is an int in [0, 999]; a decoder that reads z_i as it is takes only 0."""
    assert SamplingConfig().noise_level == 0 and SamplingConfig(noise_level=999).to_dict()["noise_level"] == 999
    for bad in (-1, 1000, 2.5, True):
        with pytest.raises(ValueError, match=r"noise_level must be an int in \[0, 999\]"):
            SamplingConfig(noise_level=bad)
    with pytest.raises(ValueError, match=r"noise_level=5 noises the image embedding of a noise-augmented decoder"):
        pipe.decode(torch.randn(1, pipe.decoder.config.clip_dim), sampling={"decoder_steps": 1, "noise_level": 5})


def test_unknown_field_names_are_refused_with_the_list_of_fields():
    cfg = SamplingConfig()
    listing = re.escape(str(FIELDS))
    with pytest.raises(ValueError, match=r"unknown sampling settings \['steps'\]; SamplingConfig has " + listing):
        cfg.replace(steps=2)
    with pytest.raises(ValueError, match=r"unknown sampling settings \['guidance', 'refine'\]; SamplingConfig has "
                                         + listing):
        SamplingConfig.from_dict({"refine": 3, "guidance": 2.0, "decoder_steps": 4})
    with pytest.raises(TypeError, match="sampling settings must be a dict of SamplingConfig fields, got list"):
        SamplingConfig.from_dict([("decoder_steps", 4)])
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        SamplingConfig(steps=2)


def test_eta_is_refused_by_samplers_that_do_not_take_it():
    with pytest.raises(ValueError, match=r"sampler 'dpmpp_2m' does not take eta \(got eta=0.5\); only \['ddim'\]"):
        SamplingConfig(decoder_sampler="dpmpp_2m", eta=0.5)
    with pytest.raises(ValueError, match="sampler 'dpmpp_2m' does not take eta"):
        SamplingConfig(eta=0.5).replace(decoder_sampler="dpmpp_2m")  # the combination, whichever field changes
    with pytest.raises(ValueError, match="sampler 'ddpm' does not take eta"):
        SamplingConfig(decoder_sampler="ddpm").replace(eta=1.0)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        SamplingConfig(eta=1.5)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\]"):
        SamplingConfig(eta=float("nan"))
    assert SamplingConfig(decoder_sampler="dpmpp_2m", eta=0).eta == 0.0
    assert SamplingConfig(eta=1).eta == 1.0 and isinstance(SamplingConfig(eta=1).eta, float)


@pytest.mark.parametrize("changes, error, match", [
    ({"decoder_guidance": -1.0}, ValueError, r"decoder_guidance must lie in \[0, 100\]"),
    ({"prior_guidance": float("inf")}, ValueError, r"prior_guidance must lie in \[0, 100\]"),
    ({"invert_guidance": 1e9}, ValueError, r"invert_guidance must lie in \[0, 100\]"),
    ({"decoder_guidance": "3"}, TypeError, "decoder_guidance must be a number in"),
    ({"upsampler_steps": ()}, ValueError, "upsampler_steps must name at least one step count"),
    ({"upsampler_steps": []}, ValueError, "upsampler_steps must name at least one step count"),
    ({"upsampler_steps": (27, 0)}, ValueError, "upsampler_steps entry must be >= 1, got 0"),
    ({"upsampler_steps": "27"}, TypeError, "upsampler_steps must be a sequence of step counts"),
    ({"decoder_steps": 0}, ValueError, "decoder_steps must be >= 1, got 0"),
    ({"prior_steps": 2.5}, TypeError, "prior_steps must be an integer >= 1"),
    ({"best_of": True}, TypeError, "best_of must be an integer >= 1"),
    ({"invert_refine": -1}, ValueError, "invert_refine must be >= 0, got -1"),
    ({"prior_sampler": "euler"}, ValueError, "sampler='euler' is not known; accepted: 'ddim', 'ddpm', 'dpmpp_2m'"),
    ({"decoder_sampler": "euler"}, ValueError, "sampler='euler' is not known"),
    ({"upsampler_sampler": "euler"}, ValueError, "sampler='euler' is not known"),
    ({"clip_denoised": 1}, TypeError, r"clip_denoised must be True, False or None .*got int 1"),
])
def test_bad_values_are_refused(changes, error, match):
    with pytest.raises(error, match=match):
        SamplingConfig(**changes)
    with pytest.raises(error, match=match):
        SamplingConfig().replace(**changes)


def test_normalised_values_and_frozen():
    cfg = SamplingConfig(upsampler_steps=[3, 4], decoder_guidance=2, invert_refine=0)
    assert cfg.upsampler_steps == (3, 4) and isinstance(cfg.decoder_guidance, float)
    assert SamplingConfig(upsampler_steps=5).upsampler_steps == (5,)
    assert cfg.upsampler_steps_for(0) == [] and cfg.upsampler_steps_for(3) == [3, 4, 4]  # the last serves beyond
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.decoder_steps = 3
    derived = cfg.replace(decoder_steps=7)
    assert derived.decoder_steps == 7 and cfg.decoder_steps == 50 and derived.upsampler_steps == (3, 4)


def test_to_dict_from_dict_round_trip():
    cfg = SamplingConfig(prior_sampler="ddpm", prior_steps=12, prior_guidance=5.5, best_of=3, decoder_sampler="ddim",
                         decoder_steps=17, decoder_guidance=1.5, eta=0.25, clip_denoised=False, invert_guidance=2.0,
                         invert_refine=0, upsampler_sampler="dpmpp_2m", upsampler_steps=(3, 4))
    d = cfg.to_dict()
    assert set(d) == set(FIELDS) and d["upsampler_steps"] == [3, 4] and d["eta"] == 0.25
    assert json.loads(json.dumps(d)) == d  # JSON-ready (outputs record it as settings["sampling"])
    assert SamplingConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert SamplingConfig.from_dict({}) == SamplingConfig()
    assert SamplingConfig.from_dict({"decoder_steps": 7}, base=cfg) == cfg.replace(decoder_steps=7)
    assert SamplingConfig().to_dict()["clip_denoised"] is None


def test_check_sampling_takes_a_config_a_dict_over_the_default_or_none():
    base = SamplingConfig(decoder_steps=9, decoder_guidance=2.0)
    other = SamplingConfig(decoder_steps=3)
    assert check_sampling(None, base) is base
    assert check_sampling(other, base) is other  # a whole config is taken as it is
    assert check_sampling({"decoder_steps": 4}, base) == base.replace(decoder_steps=4)  # fields over the default
    with pytest.raises(TypeError, match=r"sampling must be a SamplingConfig \(e.g. pipe.sampling.replace"):
        check_sampling(25, base)
    with pytest.raises(ValueError, match=r"unknown sampling settings \['steps'\]"):
        check_sampling({"steps": 4}, base)


# ---- pipeline.json "sampling" ---------------------------------------------------------------------------
def _copy_with_sampling(src, dst, entry):
    folder = shutil.copytree(src, dst)
    doc = json.loads((folder / "pipeline.json").read_text())
    if entry is None:
        doc["metadata"].pop("sampling", None)
    else:
        doc["metadata"]["sampling"] = entry
    (folder / "pipeline.json").write_text(json.dumps(doc))
    return folder


def test_pipeline_json_sampling_becomes_pipe_sampling(pipe_dir, tmp_path):
    assert UnCLIP.load(pipe_dir).sampling == UnCLIP.DEFAULT_SAMPLING == SamplingConfig()  # no entry: the defaults
    entry = {"decoder_steps": 2, "decoder_guidance": 2.0, "prior_steps": 2, "upsampler_steps": [5]}
    folder = _copy_with_sampling(pipe_dir, tmp_path / "p", entry)
    p = UnCLIP.load(folder)
    assert p.sampling == SamplingConfig(decoder_steps=2, decoder_guidance=2.0, prior_steps=2, upsampler_steps=(5,))
    z = torch.nn.functional.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = p.decode(z, upsample=False, seed=0)  # sampling None: the folder's settings
    assert out.settings["sampling"] == p.sampling.to_dict()
    # a dict is taken over the pipeline's settings, not over the class defaults
    out3 = p.decode(z, sampling={"decoder_steps": 3}, upsample=False, seed=0)
    assert out3.settings["sampling"]["decoder_steps"] == 3 and out3.settings["sampling"]["decoder_guidance"] == 2.0
    # variations: eta 1 where the decoder's sampler takes eta; as the folder says where it does not
    assert p.variation_sampling() == p.sampling.replace(eta=1.0)
    dpm = UnCLIP.load(_copy_with_sampling(pipe_dir, tmp_path / "dpm", {"decoder_sampler": "dpmpp_2m"}))
    assert dpm.variation_sampling() == dpm.sampling == SamplingConfig(decoder_sampler="dpmpp_2m")


def test_pipeline_json_sampling_written_by_save_pipeline(pipe, pipe_dir, tmp_path):
    from unclip_core.checkpoint import save_pipeline
    sc = SamplingConfig(prior_steps=25, decoder_steps=25)
    folder = save_pipeline(tmp_path / "saved", {"prior": pipe.prior, "decoder": pipe.decoder,
                                                "upsampler1": pipe.upsamplers[0], "clip": pipe_dir / "clip"},
                           metadata={"clip": "clip", "name": "saved", "sampling": sc.to_dict()})
    assert json.loads((folder / "pipeline.json").read_text())["metadata"]["sampling"]["decoder_steps"] == 25
    assert UnCLIP.load(folder).sampling == sc


@pytest.mark.parametrize("entry, match", [
    ({"decoder_stpes": 7}, r"unknown sampling settings \['decoder_stpes'\]"),
    ({"eta": 0.5, "decoder_sampler": "dpmpp_2m"}, "sampler 'dpmpp_2m' does not take eta"),
    ({"decoder_guidance": -2}, r"decoder_guidance must lie in \[0, 100\]"),
    ({"upsampler_steps": []}, "upsampler_steps must name at least one step count"),
    (25, "sampling settings must be a dict of SamplingConfig fields, got int"),
])
def test_a_bad_pipeline_json_sampling_entry_names_the_file(pipe_dir, tmp_path, entry, match):
    folder = _copy_with_sampling(pipe_dir, tmp_path / "bad", entry)
    with pytest.raises(ValueError, match=re.escape(f"{folder}/pipeline.json: 'sampling': ") + match):
        UnCLIP.load(folder)


# ---- decode: the same seed gives the same images, whatever progress is ------------------------------------
def test_decode_same_seed_same_images_whatever_progress_or_form_of_sampling(pipe, capsys):
    z = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(4)), dim=-1)
    cfg = pipe.sampling.replace(decoder_steps=3, upsampler_steps=(2,))
    quiet = pipe.decode(z, sampling=cfg, upsample=True, seed=3)
    assert capsys.readouterr().err == ""
    shown = pipe.decode(z, sampling={"decoder_steps": 3, "upsampler_steps": (2,)}, upsample=True, seed=3,
                        progress=True)
    assert "decoder: DDIM" in capsys.readouterr().err
    for stage in ("decoder", "upsampler1"):
        assert torch.equal(quiet.stages[stage], shown.stages[stage]), stage
    assert quiet.settings == shown.settings
    other = pipe.decode(z, sampling=cfg, upsample=True, seed=4)
    assert not torch.equal(other.stages["decoder"], quiet.stages["decoder"])  # the seed matters


# ---- the sampler registry ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sch():
    return cosine_schedule(1000)


def _denoiser(sch):
    """A smooth x0-denoiser (the ideal one for x0 ~ N(0.3, 0.5^2))."""
    def denoise(x, t):
        a = sch.alphas_cumprod[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return 0.3 + a.sqrt() * 0.25 / (a * 0.25 + 1 - a) * (x - a.sqrt() * 0.3)
    return denoise


def _x_T(seed=0):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_every_sampler():
    assert sampler_names() == ("ddim", "ddpm", "dpmpp_2m", "unclip", "single_pass") == tuple(SAMPLERS)
    assert [n for n in sampler_names() if get_sampler(n).honours_eta] == ["ddim"]
    assert get_sampler("ddim").spacing == "trailing" and get_sampler("unclip").spacing == "linspace"
    with pytest.raises(ValueError, match="sampler='euler' is not known; accepted: 'ddim', 'ddpm', 'dpmpp_2m', "
                                         "'unclip', 'single_pass'"):
        get_sampler("euler")


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp_2m", "unclip"])
def test_run_sampler_with_given_timesteps_equals_the_int_steps_call(sch, name):
    den, x_T = _denoiser(sch), _x_T()
    ts = timesteps(sch, 6, get_sampler(name).spacing)
    assert len(ts) == 6 and ts == sorted(ts, reverse=True)
    by_count = run_sampler(name, den, x_T, sch, 6, generator=5)
    for given in (ts, torch.tensor(ts), np.array(ts)):
        assert torch.equal(run_sampler(name, den, x_T, sch, given, generator=5), by_count)
    # the registry runs the same function as the direct call, on the sampler's own spacing
    direct = {"ddim": lambda: sample_ddim(den, x_T, sch, 6, generator=5, spacing="trailing"),
              "ddpm": lambda: sample_ddpm(den, x_T, sch, 6, generator=5, spacing="linspace"),
              "dpmpp_2m": lambda: sample_dpmpp_2m(den, x_T, sch, 6, spacing="trailing"),
              "unclip": lambda: sample_unclip(den, x_T, sch, 6, "fixed_small_log", generator=5)}[name]()
    assert torch.equal(direct, by_count)
    # another spacing gives other timesteps, and another result
    other = "leading" if get_sampler(name).spacing != "leading" else "trailing"
    assert not torch.equal(run_sampler(name, den, x_T, sch, 6, spacing=other, generator=5), by_count)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp_2m", "unclip"])
def test_callback_receives_every_step_in_order(sch, name):
    den, x_T = _denoiser(sch), _x_T()
    seen = []
    out = run_sampler(name, den, x_T, sch, 5, generator=1,
                      callback=lambda j, t, x: seen.append((j, t, x.clone())))
    assert [j for j, _, _ in seen] == list(range(5))
    assert [t for _, t, _ in seen] == timesteps(sch, 5, get_sampler(name).spacing)
    assert all(x.shape == x_T.shape for _, _, x in seen)
    assert torch.equal(seen[-1][2], out)  # the last call sees the result
    assert torch.equal(run_sampler(name, den, x_T, sch, 5, generator=1), out)  # the callback changes nothing


def test_callback_of_inversion_and_repaint(sch):
    den, x0 = _denoiser(sch), _x_T(1).clamp(-1, 1)
    ts = timesteps(sch, 4, "trailing")
    seen = []
    x_T = invert_ddim(den, x0, sch, ts, callback=lambda j, t, x: seen.append((j, t)))
    assert seen == list(enumerate(ts[::-1]))  # inversion walks the timesteps upwards
    assert torch.equal(invert_ddim(den, x0, sch, 4, spacing="trailing"), x_T)
    seen.clear()
    mask = torch.ones(1, 1, 4, 4)
    sample_repaint(den, _x_T(2), sch, ts, x0, mask, n_resample=2, generator=0,
                   callback=lambda j, t, x: seen.append((j, t)))
    assert seen == list(enumerate(ts))


@pytest.mark.parametrize("name", ["ddpm", "dpmpp_2m", "unclip"])
def test_eta_is_rejected_by_samplers_that_ignore_it(sch, name):
    with pytest.raises(ValueError, match=f"sampler '{name}' does not take eta"):
        run_sampler(name, _denoiser(sch), _x_T(), sch, 3, eta=0.5)
    with pytest.raises(ValueError, match=f"sampler '{name}' does not take eta"):
        check_sampler_settings(name, eta=1.0)
    assert check_sampler_settings(name, eta=0.0).name == name


def test_ddim_honours_eta_and_variances_are_checked(sch):
    den, x_T = _denoiser(sch), _x_T()
    eta0 = run_sampler("ddim", den, x_T, sch, 5, eta=0.0, generator=3)
    eta1 = run_sampler("ddim", den, x_T, sch, 5, eta=1.0, generator=3)
    assert float((eta1 - eta0).abs().max()) > 1e-3
    assert torch.equal(eta1, sample_ddim(den, x_T, sch, 5, eta=1.0, generator=3, spacing="trailing"))
    with pytest.raises(ValueError, match="sampler 'dpmpp_2m' takes no variance setting"):
        run_sampler("dpmpp_2m", den, x_T, sch, 3, variance="fixed_small")
    with pytest.raises(ValueError, match="variance of sampler 'unclip'='fixed_small' is not known"):
        check_sampler_settings("unclip", variance="fixed_small")
    assert not torch.equal(run_sampler("ddpm", den, x_T, sch, 4, variance="fixed_large", generator=0),
                           run_sampler("ddpm", den, x_T, sch, 4, generator=0))


def test_timesteps_checks_a_given_sequence(sch):
    assert timesteps(sch, 4, "trailing") == [999, 749, 499, 249]
    assert timesteps(sch, [900, 10, 0]) == [900, 10, 0]
    for bad in ([10, 10], [5, 9], [1000, 5], [3, -1]):
        with pytest.raises(ValueError, match=r"timesteps must decrease strictly within \[0, 1000\)"):
            timesteps(sch, bad)
    with pytest.raises(ValueError, match="timesteps must be a non-empty 1-d sequence of integers"):
        timesteps(sch, [9.0, 3.0])
    with pytest.raises(ValueError, match="timesteps must be a non-empty 1-d sequence of integers"):
        timesteps(sch, [])
    with pytest.raises(TypeError, match="steps must be a number of steps or a decreasing sequence"):
        timesteps(sch, "10")


# ---- the command line -------------------------------------------------------------------------------------
def _parser(**kw):
    p = argparse.ArgumentParser(exit_on_error=False)
    add_sampling_args(p, **kw)
    return p


def test_cli_options_left_out_are_absent():
    p = _parser(invert=True)
    assert sampling_overrides(p.parse_args([])) == {}
    args = p.parse_args(["--steps", "7", "--sampler", "ddpm", "--guidance", "2", "--prior-steps", "3",
                         "--best-of", "1", "--eta", "0", "--refine", "0", "--invert-guidance", "1.5",
                         "--prior-sampler", "dpmpp_2m", "--prior-guidance", "5", "--upsampler-sampler", "unclip"])
    assert sampling_overrides(args) == {
        "decoder_steps": 7, "decoder_sampler": "ddpm", "decoder_guidance": 2.0, "prior_steps": 3, "best_of": 1,
        "eta": 0.0, "invert_refine": 0, "invert_guidance": 1.5, "prior_sampler": "dpmpp_2m",
        "prior_guidance": 5.0, "upsampler_sampler": "unclip"}  # 0 is a value, not "left out"
    assert sampling_overrides(p.parse_args(["--upsampler-steps", "3", "4"])) == {"upsampler_steps": (3, 4)}
    assert sampling_overrides(p.parse_args(["--guidance", "4"])) == {"decoder_guidance": 4.0}


def test_cli_sampling_from_args_is_over_the_pipeline_s(pipe):
    p = _parser()
    sc = sampling_from_args(p.parse_args(["--steps", "7", "--upsampler-steps", "3", "4"]), pipe)
    assert sc == pipe.sampling.replace(decoder_steps=7, upsampler_steps=(3, 4))
    assert sampling_from_args(p.parse_args([]), pipe) == pipe.sampling
    with pytest.raises(ValueError, match="sampler 'dpmpp_2m' does not take eta"):
        sampling_from_args(p.parse_args(["--sampler", "dpmpp_2m", "--eta", "0.5"]), pipe)


def test_cli_option_groups_follow_the_stages_a_command_runs():
    full = {a.dest for a in _parser(invert=True)._actions}
    assert {"prior_sampler", "prior_steps", "prior_guidance", "best_of", "sampler", "steps", "guidance", "eta",
            "invert_guidance", "refine", "upsampler_sampler", "upsampler_steps"} <= full
    assert not {"invert_guidance", "refine"} & {a.dest for a in _parser()._actions}  # invert=False by default
    frames = {a.dest for a in _parser(prior=False, decoder_sampler=False, upsampler=False)._actions}
    assert {"steps", "guidance"} <= frames and not {"sampler", "eta", "prior_steps", "upsampler_steps"} & frames
    for argv in (["--steps", "0"], ["--sampler", "euler"], ["--eta", "2"], ["--upsampler-steps"]):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            _parser().parse_args(argv)
    for p in (_parser(), _parser(invert=True)):
        assert all(a.default is None for a in p._actions if a.dest in full and a.dest != "help")


def test_precision_autocasts_the_networks_and_is_recorded(pipe):
    """precision="bf16" runs the networks under bfloat16 autocast: images close to float32's, recorded; a
    precision the config does not know is refused."""
    z = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    a = pipe.decode(z, sampling={"decoder_steps": 3}, upsample=False, seed=0)
    b = pipe.decode(z, sampling={"decoder_steps": 3, "precision": "bf16"}, upsample=False, seed=0)
    assert b.settings["sampling"]["precision"] == "bf16" and a.settings["sampling"]["precision"] == "fp32"
    diff = (a.stages["decoder"] - b.stages["decoder"]).abs()
    assert 0 < float(diff.mean()) < 0.05, float(diff.mean())
    with pytest.raises(ValueError, match=r"precision='int8' is not known; accepted: 'fp32', 'bf16', 'fp16'"):
        SamplingConfig(precision="int8")
