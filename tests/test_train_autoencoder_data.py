"""The stages that need no CLIP on your own images: the autoencoder and an upsampler on an image folder and on
webdataset shards (explorer.training), run files and the CLI, kill/resume, bad data."""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unclip_core.checkpoint import load_checkpoint
from unclip_core.train.autoencoder import load_run_config, reconstruction_psnr, train_autoencoder


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """16 ShapesWorld scenes at 32 px: images/*.png + captions.jsonl (`unclip-explorer shapes export`)."""
    from unclip_core.data.shapes import export
    return Path(export(tmp_path_factory.mktemp("data") / "export", n=16, seed=0, size=32, world=2, progress=False))


def _images(folder):
    return sorted((folder / "images").glob("*.png"))


def _run_file(tmp_path, data, name="ae", **fields):
    """An autoencoder run file (TOML) of the tiny network on `data`."""
    fields = {"stage": "autoencoder", "preset": "tiny", "n_steps": 4, "batch_size": 4, "warmup_steps": 1,
              "checkpoint_every": 2, "log_every": 1, **fields}
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    lines += ["", "[data]"] + [f"{k} = {json.dumps(v)}" for k, v in data.items()]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _same_weights(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=k)


def _kill_and_resume(config, tmp_path, kill_at=3):
    """Train `config` uninterrupted and killed after step kill_at then resumed: -> (reference, resumed) models."""
    from explorer.training import train_run
    ref = load_checkpoint(train_run(config, tmp_path / "ref", progress=False))

    def kill(step, metrics):
        if step == kill_at:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "run", progress=False, callback=kill)
    assert (tmp_path / "run" / "state.pt").is_file() and not (tmp_path / "run" / "model").exists()
    seen = []
    resumed = load_checkpoint(train_run(config, tmp_path / "run", progress=False, callback=lambda s, m: seen.append(s)))
    assert seen == list(range(kill_at, config.n_steps + 1))  # from the checkpoint at step 2: step 3 is redone
    return ref, resumed


def test_autoencoder_loss_falls_on_an_image_folder(folder, tmp_path):
    from explorer.training import train_run
    config = load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(folder)}, n_steps=40, lr=3e-3,
                                       warmup_steps=2, checkpoint_every=20))
    losses = []
    model = load_checkpoint(train_run(config, tmp_path / "run", progress=False,
                                      callback=lambda s, m: losses.append(m["loss"])))
    # measured (bf16 and fp32 alike): 1.68 at step 1 -> 0.123 over the last 5 steps
    assert len(losses) == 40 and losses[0] > 1.0 and np.mean(losses[-5:]) < 0.25
    report = json.loads((tmp_path / "run" / "data.json").read_text())
    assert (report["kind"], report["n_items"], report["n_unreadable"], report["clip"]) == ("folder", 16, 0, None)
    assert not (tmp_path / "run" / "embeddings").exists()  # no CLIP, nothing cached
    from unclip_core.train.data import to_tensor
    x = to_tensor([np.asarray(Image.open(p).convert("RGB")) for p in _images(folder)[:8]])
    assert reconstruction_psnr(model, x).mean() > 17.0  # measured 19.4 dB (bf16 and fp32 alike)
    assert model.config.scaling_factor != 1.0  # calibrated on the folder's images
    doc = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert doc["metadata"]["train_config"]["data"]["path"] == str(folder)
    assert "- data: folder `" in (tmp_path / "run" / "model" / "README.md").read_text()


def test_autoencoder_cli_run_file_kill_and_resume_bit_identical(folder, tmp_path, capsys):
    from explorer.cli import main
    from explorer.training import train_run
    run = _run_file(tmp_path, {"kind": "folder", "path": "unused"})
    argv = ["train", "autoencoder", "--config", str(run), "--data", str(folder), "--no-progress", "--threads", "1"]
    assert main(argv + ["--out", str(tmp_path / "ref")]) == 0
    assert f"trained autoencoder: {tmp_path / 'ref' / 'model'}" in capsys.readouterr().out
    config = load_run_config(run, overrides={"data": {"path": str(folder), "kind": "auto"}})

    def kill(step, metrics):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "run", progress=False, callback=kill)
    assert main(argv + ["--out", str(tmp_path / "run")]) == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "run"), "--resume"]) == 0
    _same_weights(load_checkpoint(tmp_path / "ref" / "model"), load_checkpoint(tmp_path / "run" / "model"))
    assert len((tmp_path / "run" / "loss.csv").read_text().splitlines()) == 1 + 4  # header + steps 1..4 once
    assert main(argv + ["--out", str(tmp_path / "run"), "--resume", "--data", str(folder / "images")]) == 2
    assert "differs in ['data']" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "x"), "--clip", "shapes-clip", "--cache", "c"]) == 2
    assert "options the autoencoder does not take: --clip, --cache" in capsys.readouterr().err


def test_autoencoder_on_webdataset_shards_resumes_bit_identical(folder, tmp_path):
    shards = tmp_path / "wds"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"shard-{s:03d}.tar", "w") as tf:
            for k, p in enumerate(_images(folder)[s * 8:(s + 1) * 8]):
                tf.add(p, arcname=f"{s:02d}{k:04d}.png")  # images only: no captions needed
    config = load_run_config(_run_file(tmp_path, {"path": str(shards)}))  # no kind: "auto", from the path
    ref, resumed = _kill_and_resume(config, tmp_path)
    _same_weights(ref, resumed)
    report = json.loads((tmp_path / "run" / "data.json").read_text())
    assert (report["kind"], report["n_items"]) == ("webdataset", 16)


def test_autoencoder_bad_data_errors_before_training(folder, tmp_path, capsys):
    from explorer.training import train_run
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        train_run(load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(empty)})), tmp_path / "r0",
                  progress=False)
    assert not (tmp_path / "r0" / "state.pt").exists()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in _images(folder)[:3]:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"1 of 4 images cannot be read: .*broken\.png \(.*\)\. Fix or remove them, "
                                         r"or set data on_bad_image = \"skip\""):
        train_run(load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(mixed), "on_bad_image": "fail"})),
                  tmp_path / "r1", progress=False)
    assert not (tmp_path / "r1" / "state.pt").exists()
    capsys.readouterr()
    train_run(load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(mixed)}, n_steps=2)), tmp_path / "r2",
              progress=False)
    report = json.loads((tmp_path / "r2" / "data.json").read_text())
    assert (report["n_items"], report["n_unreadable"]) == (3, 1) and report["unreadable"][0].endswith("broken.png")
    assert "data: skipped 1 unreadable images" in capsys.readouterr().err
    with pytest.raises(ValueError, match="caches CLIP image embeddings, which the autoencoder does not use"):
        train_run(load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(mixed), "cache": "c"})),
                  tmp_path / "r3", progress=False)
    with pytest.raises(ValueError, match="trains the prior only; the autoencoder needs images"):
        load_run_config(_run_file(tmp_path, {"kind": "embeddings", "path": str(mixed)}))
    config = load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(mixed)}))
    with pytest.raises(ValueError, match=r"pass its images as data= \(explorer.training.open_training_data"):
        train_autoencoder(config, tmp_path / "r4", progress=False)
    with pytest.raises(ValueError, match=r"configures the decoder stage, not the autoencoder; pass `train decoder`"):
        load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(mixed)}, stage="decoder"))
    with pytest.raises(ValueError, match=r"unknown keys \['clip'\]; accepted keys: \[.*'data'"):
        load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(mixed)}, clip="shapes-clip"))
    with pytest.raises(ValueError, match=r"preset='base' is not known"):
        load_run_config(_run_file(tmp_path, {"kind": "folder", "path": str(mixed)}, preset="base"))


def test_upsampler1_on_an_image_folder_downsamples_trains_and_resumes(folder, tmp_path):
    from explorer.training import open_training_data, prepare_run
    from unclip_core.train.diffusion import DiffusionTrainConfig
    config = DiffusionTrainConfig(stage="upsampler1", model=dict(low_res=16, out_res=32, model_channels=8,
                                                                 channel_mult=(1, 2), n_res_blocks=1, norm_groups=4),
                                  n_steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=1,
                                  tensorboard=False, data={"kind": "folder", "path": str(folder)})
    config, clip = prepare_run(config)
    assert clip is None  # an upsampler needs no CLIP: the folder's images are read, not embedded
    items = open_training_data(config, clip=None, run_dir=tmp_path / "open", progress=False)
    lo, hi = items.batch([0, 1], sizes=(16, 32)).images
    assert lo.shape == (2, 3, 16, 16) and hi.shape == (2, 3, 32, 32)
    # the low-res input is the folder's image downsampled (bicubic, antialiased): close to a 2x2 box filter of it
    assert (lo - F.avg_pool2d(hi, 2)).abs().mean() < 0.03  # measured 0.0085 (of a [-1, 1] range)
    ref, resumed = _kill_and_resume(config, tmp_path)
    _same_weights(ref, resumed)
    assert (tmp_path / "run" / "state.pt").is_file() and (tmp_path / "run" / "model" / "config.json").is_file()
    assert len((tmp_path / "run" / "loss.csv").read_text().splitlines()) == 1 + 4
    assert not (tmp_path / "run" / "embeddings").exists()
