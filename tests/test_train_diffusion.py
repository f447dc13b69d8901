"""Stage trainers on tiny recipes: every stage runs, a killed run resumes to the same weights, configs validate."""
import json
from dataclasses import replace

import pytest
import torch

from unclip_core.checkpoint import load_checkpoint
from unclip_core.clip import ClipEncoder
from unclip_core.train.diffusion import STAGES, DiffusionTrainConfig, recipe, train_stage

from tiny_models import write_tiny_clip

# the tiny CLIP's context (12 tokens) truncates long ShapesWorld captions; that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:prompt .* truncated:UserWarning")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return ClipEncoder.load(str(write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")))


def _tiny(stage: str, **kw) -> DiffusionTrainConfig:
    cfg = recipe("tiny", stage, **kw)
    if stage == "prior":
        return replace(cfg, model={**cfg.model, "clip_dim": 16, "text_width": 32, "n_text_tokens": 12})
    if stage == "decoder":
        return replace(cfg, model={**cfg.model, "clip_dim": 16})
    return cfg


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_trains_and_exports(stage, clip, tmp_path):
    losses = []
    folder = train_stage(_tiny(stage), tmp_path / stage, clip=clip, progress=False,
                         callback=lambda step, m: losses.append(m["loss"]))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    model = load_checkpoint(folder)
    assert type(model).__name__ == {"prior": "DiffusionPrior", "decoder": "Decoder"}.get(stage, "Upsampler")
    rows = (tmp_path / stage / "loss.csv").read_text().strip().splitlines()
    assert rows[0] == "step,loss,lr,seconds" and len(rows) == 1 + 4 // 10 + 1  # log_every=10, plus the last step


def test_killed_run_resumes_to_identical_weights(clip, tmp_path):
    cfg = _tiny("decoder", n_steps=6, checkpoint_every=2)
    ref = load_checkpoint(train_stage(cfg, tmp_path / "ref", clip=clip, progress=False))

    def kill(step, metrics):
        if step == 3:
            raise KeyboardInterrupt  # after the checkpoint at step 2
    with pytest.raises(KeyboardInterrupt):
        train_stage(cfg, tmp_path / "run", clip=clip, progress=False, callback=kill)
    seen = []
    resumed = load_checkpoint(train_stage(cfg, tmp_path / "run", clip=clip, progress=False,
                                          callback=lambda s, m: seen.append(s)))
    assert seen == [3, 4, 5, 6]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_resume_with_another_config_is_refused(clip, tmp_path):
    train_stage(_tiny("upsampler1"), tmp_path / "u", clip=clip, progress=False)
    with pytest.raises(ValueError, match="another config .*differs in \\['lr'\\]"):
        train_stage(_tiny("upsampler1", lr=1e-3), tmp_path / "u", clip=clip, progress=False)


def test_config_errors(clip, tmp_path):
    with pytest.raises(ValueError, match="stage='vae' is not known; accepted"):
        recipe("shapes", "vae")
    with pytest.raises(ValueError, match="unknown DecoderConfig keys \\['bogus'\\]; accepted keys"):
        DiffusionTrainConfig(stage="decoder", model={"bogus": 1})
    with pytest.raises(ValueError, match="p_drop_z_i must be a probability"):
        recipe("tiny", "decoder", p_drop_z_i=1.5)
    with pytest.raises(ValueError, match="clip_dim=64 but CLIP .* makes 16-d embeddings"):
        train_stage(recipe("tiny", "decoder"), tmp_path / "d", clip=clip, progress=False)


def test_ddp_two_cpu_ranks_hold_identical_weights(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port=29531",
                           str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the trainer's initial weights: torch.manual_seed(config.seed)
        init = type(load_checkpoint(tmp_path / "model"))(recipe("tiny", "upsampler1").model_config())
    moved = sum(float((w0[k] - v).abs().sum()) for k, v in init.state_dict().items())
    assert moved > 0  # the ranks trained (the same way), they did not just keep the initial weights
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_assembled_pipeline_samples_with_each_stage_s_prediction(clip, tmp_path):
    from unclip_core.pipeline import UnCLIP
    from unclip_core.train.diffusion import assemble_pipeline
    dec = train_stage(_tiny("decoder", prediction="v", n_steps=1), tmp_path / "d", clip=clip, progress=False)
    prior = train_stage(_tiny("prior", n_steps=1), tmp_path / "p", clip=clip, progress=False)
    folder = assemble_pipeline(tmp_path / "pipe", {"prior": prior, "decoder": dec}, clip.spec, "tiny-family")
    pipe = UnCLIP.load(folder)
    assert pipe.stage_info["decoder"].prediction == "v" and pipe.stage_info["prior"].prediction == "x0"
    assert pipe.name == "tiny-family"
    out = pipe.text_to_image("a red circle", sampling={"decoder_steps": 2, "prior_steps": 2}, seed=0)
    assert out.images[0].size == (32, 32)
    with pytest.raises(ValueError, match="prediction='noise' is not known; accepted"):
        _tiny("decoder", prediction="noise")


def test_resume_may_change_the_number_of_steps(clip, tmp_path):
    train_stage(_tiny("decoder", n_steps=2), tmp_path, clip=clip, progress=False)
    train_stage(_tiny("decoder", n_steps=3), tmp_path, clip=clip, progress=False)  # lengthened: one more step
    meta = json.loads((tmp_path / "model" / "config.json").read_text())["metadata"]
    assert meta["steps"] == 3 and meta["train"]["n_steps"] == 3
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "2", "3"]  # the last step of each run is logged


def test_train_assemble_puts_the_finished_stages_together(clip, tmp_path, capsys):
    from explorer.cli import main
    from unclip_core.pipeline import UnCLIP
    runs = tmp_path / "runs"
    args = ["train", "assemble", "--recipe", "tiny", "--runs", str(runs), "--out", str(tmp_path / "pipe")]
    assert main(args) == 2
    assert "no finished decoder at" in capsys.readouterr().err
    for stage in ("decoder", "prior", "upsampler1"):
        train_stage(_tiny(stage, n_steps=1, clip=clip.spec), runs / f"tiny-{stage}", clip=clip, progress=False)
    assert main(args) == 0
    assert "assembled tiny-unclip (prior, decoder, upsampler1; CLIP" in capsys.readouterr().out
    pipe = UnCLIP.load(tmp_path / "pipe")
    assert pipe.name == "tiny-unclip" and pipe.resolutions == [32, 128]
    assert pipe.stage_info["upsampler1"].prediction == "eps"
    assert (tmp_path / "pipe" / "clip" / "open_clip_config.json").is_file()  # a CLIP path is copied along
    assert main(args[:-1] + [str(tmp_path / "half"), "--fp16"]) == 0
    from safetensors.torch import load_file
    half = load_file(str(tmp_path / "half" / "decoder" / "model.safetensors"))
    full = load_file(str(tmp_path / "pipe" / "decoder" / "model.safetensors"))
    assert {v.dtype for v in half.values()} == {torch.float16} and {v.dtype for v in full.values()} == {torch.float32}
    assert max(float((half[k].float() - v).abs().max()) for k, v in full.items()) < 2e-3
    meta = json.loads((tmp_path / "half" / "decoder" / "config.json").read_text())
    assert meta["stored_dtype"] == "float16" and meta["metadata"]["prediction"] == "eps"
    assert (tmp_path / "half" / "decoder" / "README.md").is_file()  # the stage's card is kept
    pipe16 = UnCLIP.load(tmp_path / "half")
    assert next(pipe16.decoder.parameters()).dtype == torch.float32


def test_warm_start_continues_an_exported_stage(clip, tmp_path):
    first = train_stage(_tiny("upsampler1"), tmp_path / "a", clip=clip, progress=False)
    exported = load_checkpoint(first).state_dict()
    ends = {}

    def run(name, **kw):
        # a vanishing learning rate: the weights a one-step run ends with are the ones it started from
        train_stage(_tiny("upsampler1", n_steps=1, lr=1e-12, **kw), tmp_path / name, clip=clip, progress=False,
                    on_end=lambda m: ends.update({name: {k: v.detach().clone() for k, v in m.state_dict().items()}}))

    run("warm", init_from=str(first), min_snr_gamma=5.0)
    run("fresh")
    d_warm = max(float((ends["warm"][k] - v).abs().max()) for k, v in exported.items())
    d_fresh = max(float((ends["fresh"][k] - v).abs().max()) for k, v in exported.items())
    assert d_warm < 1e-6 < 1e-4 < d_fresh
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["init_from"] == str(first)



def test_warm_start_grows_a_clip_map_into_a_plain_decoder(clip, tmp_path):
    first = train_stage(_tiny("decoder"), tmp_path / "a", clip=clip, progress=False)
    exported = load_checkpoint(first).state_dict()
    ends = {}
    cfg = _tiny("decoder", n_steps=1, lr=1e-12, init_from=str(first))
    cfg = replace(cfg, model={**cfg.model, "clip_map_channels": 2, "clip_map_size": 8})
    train_stage(cfg, tmp_path / "grown", clip=clip, progress=False,
                on_end=lambda m: ends.update({k: v.detach().clone() for k, v in m.state_dict().items()}))
    assert set(ends) - set(exported) == {"clip_to_map.weight", "clip_to_map.bias"}
    w = ends["unet.conv_in.weight"]
    assert w.shape[1] == 5 and float(w[:, 3:].abs().max()) < 1e-6  # the new input channels start at zero
    assert max(float((ends[k] - v).abs().max()) for k, v in exported.items() if k != "unet.conv_in.weight") < 1e-6
    torch.testing.assert_close(w[:, :3], exported["unet.conv_in.weight"], rtol=0, atol=1e-6)

def test_warm_start_refuses_another_network(clip, tmp_path):
    first = train_stage(_tiny("upsampler1"), tmp_path / "a", clip=clip, progress=False)
    with pytest.raises(ValueError, match="holds a Upsampler with another config"):
        train_stage(_tiny("upsampler2", init_from=str(first)), tmp_path / "b", clip=clip, progress=False)
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        recipe("tiny", "decoder", min_snr_gamma=0.0)



def test_high_t_sampling_shares_and_validation():
    from unclip_core.train.diffusion import sample_timesteps
    g = torch.Generator().manual_seed(0)
    plain = sample_timesteps(200_000, 1000, g)
    high = sample_timesteps(200_000, 1000, g, high_fraction=0.5, high_from=0.8)
    # uniform: 20% of draws in the top fifth; half drawn from it: 0.5 + 0.5 * 0.2 = 60%
    assert abs(float((plain >= 800).float().mean()) - 0.2) < 0.005
    assert abs(float((high >= 800).float().mean()) - 0.6) < 0.005
    assert int(high.min()) == 0 and int(high.max()) == 999
    assert torch.equal(sample_timesteps(8, 1000, torch.Generator().manual_seed(3), 0.5),
                       sample_timesteps(8, 1000, torch.Generator().manual_seed(3), 0.5))  # resumable: seeded
    with pytest.raises(ValueError, match=r"crop_content_fraction must be a share in \[0, 1\], got 1.5"):
        recipe("tiny", "upsampler2", crop_content_fraction=1.5)
    with pytest.raises(ValueError, match=r"high_t_fraction must be a share in \[0, 1\], got 1.5"):
        recipe("tiny", "decoder", high_t_fraction=1.5)
    with pytest.raises(ValueError, match=r"high_t_from must be in \[0, 1\)"):
        recipe("tiny", "decoder", high_t_from=1.0)

def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    from unclip_core.train import common
    avx2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert not common.cpu_has_native_bf16(avx2)
    assert common.cpu_has_native_bf16(sapphire)
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert common.resolve_precision("auto") == "fp32"
    assert common.resolve_precision("bf16") == "bf16"  # an explicit choice is kept
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert common.resolve_precision("auto") == "bf16"
    with pytest.raises(ValueError, match="precision='fp16' is not known"):
        common.resolve_precision("fp16")
    assert recipe("shapes", "decoder").precision == "auto"


def test_the_data_world_follows_the_config_then_the_clip():
    from unclip_core.train.diffusion import data_world, recipe
    assert data_world(recipe("shapes", "decoder")) == 1  # the bundled shapes-clip is a v1 model
    assert data_world(recipe("shapes", "upsampler1", world=2)) == 2
    with pytest.raises(ValueError, match=r"world must be a ShapesWorld version in \[1, 2\], got 7"):
        recipe("shapes", "decoder", world=7)
