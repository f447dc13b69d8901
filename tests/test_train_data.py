"""Training on your own data: run files, image folders (captions.jsonl / .txt), webdataset shards and embedding
stores; the z_i cache, bad data, kill and resume, TensorBoard, sample grids, DDP and assembly."""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unclip_core.checkpoint import load_checkpoint
from unclip_core.clip import ClipEncoder
from unclip_core.train.diffusion import DiffusionTrainConfig, load_run_config, recipe

from tiny_models import write_tiny_clip

pytestmark = pytest.mark.filterwarnings("ignore:prompt .* truncated:UserWarning")

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40), (200, 60, 200), (60, 200, 200)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return ClipEncoder.load(str(write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A ShapesWorld export folder (images/*.png + captions.jsonl), 10 scenes at 32 px."""
    from unclip_core.data.shapes import export
    return Path(export(tmp_path_factory.mktemp("data") / "export", n=10, seed=0, size=32, world=2,
                       progress=False))


def _square(colour, size=40, box=None):
    im = Image.new("RGB", (size, size + 8), (250, 250, 250))  # not square: the loader centre-crops
    im.paste(colour, box or (8, 12, 24, 28))
    return im


@pytest.fixture(scope="module")
def txt_folder(tmp_path_factory):
    """6 images with same-name .txt captions (one in a subfolder), one image without a caption, one corrupt file."""
    root = tmp_path_factory.mktemp("data") / "txt"
    (root / "sub").mkdir(parents=True)
    for i, c in enumerate(COLOURS):
        path = (root / "sub" if i == 5 else root) / f"img{i}.png"
        _square(c).save(path)
        path.with_suffix(".txt").write_text(f"a square of colour {i}\n")
    _square((10, 10, 10)).save(root / "nocap.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _write_shard(path, items):
    with tarfile.open(path, "w") as tf:
        for key, image, caption in items:
            for name, data in ((f"{key}.png", image), (f"{key}.txt", caption)):
                if data is None:
                    continue
                import io
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two webdataset shards of 4 samples each (png + txt); the last sample of shard 1 has no caption."""
    import io
    root = tmp_path_factory.mktemp("data") / "wds"
    root.mkdir()
    for s in range(2):
        items = []
        for k in range(4):
            buf = io.BytesIO()
            _square(COLOURS[(s * 4 + k) % 6]).save(buf, format="PNG")
            caption = None if (s, k) == (1, 3) else f"sample {s} {k}".encode()
            items.append((f"{s:02d}{k:04d}", buf.getvalue(), caption))
        _write_shard(root / f"shard-{s:03d}.tar", items)
    return root


def _run_file(tmp_path, stage, data, clip, **fields):
    """A run file (TOML) of a tiny network on `data`."""
    fields = {"stage": stage, "preset": "tiny", "clip": clip.spec, "n_steps": 4, "batch_size": 4, "warmup_steps": 1,
              "checkpoint_every": 2, "tensorboard": False, **fields}
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    if stage == "decoder":
        lines += ["", "[model]", "model_channels = 16", "head_channels = 8"]
    lines += ["", "[data]"] + [f"{k} = {json.dumps(v)}" for k, v in data.items()]
    path = tmp_path / f"{stage}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _same_weights(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=k)


def _kill_and_resume(config, tmp_path, clip, kill_at=3):
    """Train `config` uninterrupted and killed after step kill_at then resumed: -> (reference, resumed) models."""
    from explorer.training import train_run
    ref = load_checkpoint(train_run(config, tmp_path / "ref", clip=clip, progress=False))

    def kill(step, metrics):
        if step == kill_at:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "run", clip=clip, progress=False, callback=kill)
    seen = []
    resumed = load_checkpoint(train_run(config, tmp_path / "run", clip=clip, progress=False,
                                        callback=lambda s, m: seen.append(s)))
    assert seen == list(range(kill_at, config.n_steps + 1))
    return ref, resumed


# ---- run files -------------------------------------------------------------------------------------------------
def test_shipped_configs_are_the_recipes_and_run_files_validate(tmp_path):
    from unclip_core.train.diffusion import CONFIG_DIR, RECIPES
    assert {"shapes", "shapes-v2", "shapes-v2-slots", "tiny"} <= set(RECIPES)
    cfg = load_run_config(CONFIG_DIR / "shapes-v2-decoder.toml")
    assert cfg == recipe("shapes-v2", "decoder")
    assert cfg.model_config().channel_mult == (1, 2, 2) and cfg.batch_size == 32 and cfg.high_t_fraction == 0.3
    run = tmp_path / "run.toml"
    run.write_text('stage = "decoder"\nrecipe = "shapes-v2"\nn_steps = 50\n[model]\nmodel_channels = 32\n'
                   '[data]\npath = "imgs"\nkind = "folder"\n')
    cfg = load_run_config(run, overrides={"lr": 1e-4, "data": {"on_bad_image": "fail"}})
    assert (cfg.n_steps, cfg.lr, cfg.model["model_channels"], cfg.model["in_channels"]) == (50, 1e-4, 32, 4)
    assert (cfg.data.path, cfg.data.kind, cfg.data.on_bad_image) == ("imgs", "folder", "fail")
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"stage": "prior", "preset": "small", "grad_accum": 2,
                              "data": {"kind": "embeddings", "path": "store"}}))
    cfg = load_run_config(js)
    assert (cfg.model["width"], cfg.model["n_layers"], cfg.grad_accum, cfg.data.kind) == (256, 6, 2, "embeddings")


def test_run_file_errors_name_the_key_and_the_fix(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('stage = "decoder"\npreset = "tiny"\nlearning_rate = 1e-3\n')
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]; accepted keys: .*'lr'"):
        load_run_config(bad)
    bad.write_text('stage = "decoder"\npreset = "tiny"\n[data]\npath = "x"\nlayout = "folder"\n')
    with pytest.raises(ValueError, match=r"unknown DataConfig keys \['layout'\]; accepted keys: \['kind', 'path'"):
        load_run_config(bad)
    bad.write_text('stage = "decoder"\npreset = "huge"\n')
    with pytest.raises(ValueError, match="preset='huge' is not known; accepted: 'base', 'paper', 'small', 'tiny'"):
        load_run_config(bad)
    bad.write_text('stage = "decoder"\npreset = "tiny"\n')
    with pytest.raises(ValueError, match="configures the decoder stage, not the prior"):
        load_run_config(bad, "prior")
    bad.write_text('stage = "decoder"\npreset = "tiny"\n[data]\nkind = "embeddings"\npath = "store"\n')
    with pytest.raises(ValueError, match="trains the prior only; the decoder needs images"):
        load_run_config(bad)
    bad.write_text('stage = "decoder"\npreset = "tiny"\n[data]\nkind = "folder"\n')
    with pytest.raises(ValueError, match="data kind='folder' needs data path"):
        load_run_config(bad)
    bad.write_text('stage = "decoder"\nn_steps = \n')
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_run_config(bad)
    with pytest.raises(ValueError, match=r"suffix '.yaml'; accepted: '.toml', '.json'"):
        (tmp_path / "r.yaml").write_text("x")
        load_run_config(tmp_path / "r.yaml")
    with pytest.raises(ValueError, match=r"grad_accum must be >= 1, got 0"):
        recipe("tiny", "decoder", grad_accum=0)


# ---- folders --------------------------------------------------------------------------------------------------
def test_decoder_on_an_export_folder_caches_z_i_and_resumes_bit_identical(clip, export, tmp_path):
    from explorer.store import EmbeddingStore
    from explorer.training import open_training_data, prepare_run
    config = load_run_config(_run_file(tmp_path, "decoder", {"kind": "folder", "path": str(export)}, clip,
                                       n_steps=5))
    ref, resumed = _kill_and_resume(config, tmp_path, clip)
    _same_weights(ref, resumed)
    cache = EmbeddingStore.open(tmp_path / "run" / "embeddings")
    assert cache.model_id == clip.model_id and cache.model_spec == clip.spec and len(cache) == 10
    report = json.loads((tmp_path / "run" / "data.json").read_text())
    assert (report["n_items"], report["n_unreadable"], report["n_missing_captions"]) == (10, 0, 0)
    # the batch's z_i are the cache's (the CLIP's embeddings of the files), not re-encoded
    config, _ = prepare_run(config, clip=clip)
    items = open_training_data(config, clip=clip, run_dir=tmp_path / "run", progress=False)
    b = items.batch([0, 3], sizes=(32,))
    direct = clip.encode_image([Image.open(items.payloads[i]) for i in (0, 3)])
    torch.testing.assert_close(b.z_i, direct, rtol=0, atol=2e-3)  # the cache is float16
    assert b.images[0].shape == (2, 3, 32, 32) and -1 <= float(b.images[0].min()) < float(b.images[0].max()) <= 1
    assert b.captions[0] == json.loads((export / "captions.jsonl").read_text().splitlines()[0])["caption"]


def test_txt_captions_bad_images_and_missing_captions(clip, txt_folder, tmp_path, capsys):
    from explorer.training import open_training_data, prepare_run
    data = {"kind": "auto", "path": str(txt_folder)}
    dec, _ = prepare_run(load_run_config(_run_file(tmp_path, "decoder", data, clip)), clip=clip)
    items = open_training_data(dec, clip=clip, run_dir=tmp_path / "d", progress=False)
    report = json.loads((tmp_path / "d" / "data.json").read_text())
    # 8 files: 6 captioned, nocap.png kept (the decoder needs no caption), broken.png skipped and counted
    assert (len(items), report["n_unreadable"], report["missing_captions"]) == (7, 1, ["nocap.png"])
    assert report["unreadable"][0].endswith("broken.png")
    err = capsys.readouterr().err
    assert "skipped 1 unreadable images" in err and "1 images have no caption (kept: this stage needs no captions)" in err
    assert sorted(c for c in items.captions if c) == sorted(f"a square of colour {i}" for i in range(6))
    prior, _ = prepare_run(load_run_config(_run_file(tmp_path, "prior", data, clip)), clip=clip)
    items = open_training_data(prior, clip=clip, run_dir=tmp_path / "p", progress=False)
    assert len(items) == 6 and None not in items.captions  # the prior needs captions: nocap.png left out
    assert "1 images have no caption (left out)" in capsys.readouterr().err
    strict = load_run_config(_run_file(tmp_path, "decoder", {**data, "on_bad_image": "fail"}, clip))
    with pytest.raises(ValueError, match=r"1 of 8 images cannot be read: .*broken.png.*on_bad_image = \"skip\""):
        open_training_data(prepare_run(strict, clip=clip)[0], clip=clip, run_dir=tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "embeddings").exists()  # refused before any work


def test_empty_and_unusable_data_are_errors_before_training(clip, tmp_path):
    from explorer.training import train_run
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = load_run_config(_run_file(tmp_path, "decoder", {"kind": "folder", "path": str(empty)}, clip))
    with pytest.raises(ValueError, match="holds no images"):
        train_run(cfg, tmp_path / "r", clip=clip, progress=False)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_bytes(b"nope")
    cfg = load_run_config(_run_file(tmp_path, "decoder", {"kind": "folder", "path": str(only_bad)}, clip))
    with pytest.raises(ValueError, match="every input .* is unreadable"):
        train_run(cfg, tmp_path / "r2", clip=clip, progress=False)
    uncaptioned = tmp_path / "nocaps"
    uncaptioned.mkdir()
    _square((1, 2, 3)).save(uncaptioned / "x.png")
    cfg = load_run_config(_run_file(tmp_path, "prior", {"kind": "folder", "path": str(uncaptioned)}, clip))
    with pytest.raises(ValueError, match=r"no usable items \(1 images found; 1 images without a caption"):
        train_run(cfg, tmp_path / "r3", clip=clip, progress=False)
    assert not (tmp_path / "r3" / "state.pt").exists()
    cfg = load_run_config(_run_file(tmp_path, "decoder", {"kind": "folder", "path": str(tmp_path / "nowhere")}, clip))
    with pytest.raises(FileNotFoundError, match="data path not found"):
        train_run(cfg, tmp_path / "r4", clip=clip, progress=False)


def test_the_cache_refuses_another_clip(clip, txt_folder, tmp_path):
    from explorer.training import train_run
    other = ClipEncoder.load(str(write_tiny_clip(tmp_path / "other", seed=1)))
    cache = str(tmp_path / "cache")
    data = {"kind": "folder", "path": str(txt_folder), "cache": cache}
    train_run(load_run_config(_run_file(tmp_path, "decoder", data, clip, n_steps=1)), tmp_path / "a", clip=clip,
              progress=False)
    cfg = load_run_config(_run_file(tmp_path, "decoder", data, other, n_steps=1))
    with pytest.raises(ValueError, match=r"the embedding cache .*cache holds z_i of CLIP .*; this run's CLIP is"):
        train_run(cfg, tmp_path / "b", clip=other, progress=False)


# ---- webdataset shards ----------------------------------------------------------------------------------------
def test_webdataset_shards_train_the_decoder_and_prior_and_resume(clip, shards, tmp_path):
    from explorer.training import open_training_data, prepare_run
    pattern = str(shards / "shard-{000..001}.tar")
    cfg = load_run_config(_run_file(tmp_path, "prior", {"kind": "webdataset", "path": pattern}, clip,
                                    grad_accum=2, n_steps=4))
    ref, resumed = _kill_and_resume(cfg, tmp_path / "prior", clip)
    _same_weights(ref, resumed)
    report = json.loads((tmp_path / "prior" / "run" / "data.json").read_text())
    assert report["n_items"] == 7 and report["missing_captions"] == ["shard-001.tar/010003"]
    dec, _ = prepare_run(load_run_config(_run_file(tmp_path, "decoder", {"kind": "auto", "path": str(shards)}, clip)),
                         clip=clip)
    items = open_training_data(dec, clip=clip, run_dir=tmp_path / "dec", progress=False)
    assert len(items) == 8  # the decoder keeps the uncaptioned sample
    b = items.batch([0, 7], sizes=(32, 16))
    assert [x.shape[-1] for x in b.images] == [32, 16]
    # centre crop of a 40 x 48 image: the red square (rows 12..28 of 48) sits at rows 8..24 of the 40 px crop
    red = b.images[0][0]
    assert float(red[0, 16, 16]) > 0.6 and float(red[1, 16, 16]) < -0.5 and float(red[0, 2, 2]) > 0.9


# ---- precomputed embeddings -----------------------------------------------------------------------------------
def test_prior_on_a_store_and_on_a_clip_retrieval_folder(clip, export, tmp_path):
    from explorer.store import embed_items, export_clip_retrieval
    from explorer.training import open_training_data, prepare_run
    store = embed_items(clip, export, tmp_path / "store", kind="both", progress=False)
    crf = export_clip_retrieval(store, tmp_path / "crf")
    _, _, meta = store.select("image")
    for path in (tmp_path / "store", crf):
        cfg = load_run_config(_run_file(tmp_path, "prior", {"kind": "auto", "path": str(path)}, clip, n_steps=2))
        cfg, _ = prepare_run(cfg, clip=clip)
        items = open_training_data(cfg, clip=clip, run_dir=tmp_path / path.name, progress=False)
        assert len(items) == 10 and items.has_z_t
        b = items.batch([0, 9])
        assert b.captions[0] == meta["caption"].iloc[0]
        torch.testing.assert_close(b.z_t, clip.encode_text(b.captions), rtol=0, atol=2e-3)
        img0 = export / meta["file"].iloc[0]
        torch.testing.assert_close(b.z_i[:1], clip.encode_image([Image.open(img0)]), rtol=0, atol=2e-3)
    cfg = load_run_config(_run_file(tmp_path, "prior", {"kind": "embeddings", "path": str(crf)}, clip, n_steps=4))
    ref, resumed = _kill_and_resume(cfg, tmp_path / "resume", clip)
    _same_weights(ref, resumed)
    other = ClipEncoder.load(str(write_tiny_clip(tmp_path / "other", seed=1)))
    with pytest.raises(ValueError, match="come from CLIP model_id .* pass the CLIP they were made with"):
        from explorer.training import train_run
        train_run(load_run_config(_run_file(tmp_path, "prior", {"kind": "embeddings", "path": str(crf)}, other)),
                  tmp_path / "o", clip=other, progress=False)


# ---- logging, samples, the command line, assembly --------------------------------------------------------------
def test_cli_config_run_writes_tensorboard_and_a_sample_grid_then_assembles(clip, export, tmp_path, capsys):
    from explorer.cli import main
    from unclip_core.pipeline import UnCLIP
    run = _run_file(tmp_path, "decoder", {"kind": "folder", "path": str(export)}, clip, tensorboard=True,
                    sample_every=2, n_samples=3, sample_steps=2, log_every=1)
    assert main(["train", "decoder", "--config", str(run), "--out", str(tmp_path / "dec"), "--no-progress",
                 "--steps", "2"]) == 0
    grid = Image.open(tmp_path / "dec" / "samples" / "step-0000002.png")
    assert grid.size == (3 * 32, 2 * 32)  # the data on top, samples below
    events = list((tmp_path / "dec" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "dec" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2] and "samples" in acc.Tags()["images"]
    csv = (tmp_path / "dec" / "loss.csv").read_text().splitlines()
    assert float(csv[1].split(",")[1]) == pytest.approx(acc.Scalars("loss")[0].value, rel=1e-4)
    prior = _run_file(tmp_path, "prior", {"kind": "folder", "path": str(export)}, clip, sample_every=1, n_samples=2,
                      sample_steps=2)
    assert main(["train", "prior", "--config", str(prior), "--out", str(tmp_path / "prior"), "--no-progress",
                 "--steps", "1"]) == 0
    sample = json.loads((tmp_path / "prior" / "samples" / "step-0000001.json").read_text())
    assert len(sample["cosine"]) == 2 and -1 <= sample["cosine_mean"] <= 1
    assert main(["train", "assemble", "--stage-dir", f"decoder={tmp_path / 'dec' / 'model'}",
                 "--stage-dir", f"prior={tmp_path / 'prior' / 'model'}", "--out", str(tmp_path / "pipe"),
                 "--name", "mine"]) == 0
    assert "assembled mine (decoder, prior; CLIP" in capsys.readouterr().out
    pipe = UnCLIP.load(tmp_path / "pipe")
    out = pipe.text_to_image("a red circle", sampling={"decoder_steps": 2, "prior_steps": 2}, seed=0)
    assert out.images[0].size == (32, 32)
    assert main(["train", "assemble", "--stage-dir", "decoder", "--out", str(tmp_path / "p2")]) == 2
    assert "expected STAGE=PATH" in capsys.readouterr().err
    assert main(["train", "decoder", "--config", str(run), "--recipe", "tiny"]) == 2
    assert "--config and --recipe both name a run" in capsys.readouterr().err


def test_recipe_names_take_data_flags(txt_folder):
    from explorer.commands.train import add_parser, diffusion_config
    import argparse
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "decoder", "--recipe", "shapes-v2", "--data", str(txt_folder),
                              "--fail-on-bad-images", "--grad-accum", "2"])
    cfg = diffusion_config(args)
    assert (cfg.data.kind, cfg.data.path, cfg.data.on_bad_image, cfg.grad_accum) == ("auto", str(txt_folder), "fail", 2)
    assert cfg.model == recipe("shapes-v2", "decoder").model


def test_fine_tune_a_decoder_for_another_clip(clip, txt_folder, tmp_path, capsys):
    """A decoder trained on one CLIP's 16-d z_i continues on another CLIP's 24-d z_i: every weight that fits is
    loaded, the z_i projections start fresh (init_strict = false); strict warm starts refuse and say so."""
    import copy

    from open_clip.model import CLIP
    from safetensors.torch import save_file

    import tiny_models
    from explorer.cli import main
    folder = tmp_path / "clip24"
    folder.mkdir()
    cfg24 = copy.deepcopy(tiny_models.CLIP_CFG)
    cfg24["embed_dim"] = 24
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg24, "preprocess_cfg": {}}))
    torch.manual_seed(3)
    save_file({k: v.contiguous() for k, v in CLIP(**cfg24).state_dict().items()},
              folder / "open_clip_model.safetensors")
    data = {"kind": "folder", "path": str(txt_folder)}
    first = tmp_path / "first"
    assert main(["train", "decoder", "--config", str(_run_file(tmp_path, "decoder", data, clip, n_steps=2)),
                 "--out", str(first), "--no-progress"]) == 0
    exported = load_checkpoint(first / "model").state_dict()
    run = _run_file(tmp_path, "decoder", data, ClipEncoder.load(str(folder)), n_steps=1, lr=1e-12)
    args = ["train", "decoder", "--config", str(run), "--init-from", str(first / "model"), "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "strict")]) == 2
    assert "init_strict = false" in capsys.readouterr().err  # the flag: --init-partial
    assert main(args + ["--out", str(tmp_path / "tuned"), "--init-partial"]) == 0
    err = capsys.readouterr().err
    assert "weights of another shape start fresh" in err and "clip_to" in err
    tuned = load_checkpoint(tmp_path / "tuned" / "model")
    assert tuned.config.clip_dim == 24
    own = tuned.state_dict()
    same = [k for k, v in exported.items() if own[k].shape == v.shape]
    fresh = [k for k in own if k not in same]
    assert len(same) > 10 * len(fresh) > 0
    assert max(float((own[k] - exported[k]).abs().max()) for k in same) < 1e-5  # lr 1e-12: as loaded


# ---- DDP ----------------------------------------------------------------------------------------------------------
def test_ranks_draw_disjoint_items_covering_each_epoch():
    from types import SimpleNamespace

    from unclip_core.train.diffusion import _Batcher
    data = SimpleNamespace(__len__=None)
    n = 22

    class Items:
        def __len__(self):
            return n
    cfg = SimpleNamespace(batch_size=3, grad_accum=2, seed=5)
    ranks = [_Batcher.__new__(_Batcher) for _ in range(2)]
    for r, b in enumerate(ranks):
        b.c, b.rank, b.world, b.dataset, b._epoch = cfg, r, 2, Items(), {}
    drawn = [[i for step in range(4) for micro in range(2) for i in b.indices(step, micro)] for b in ranks]
    assert not set(drawn[0][:9]) & set(drawn[1][:9])  # the first 3 micro-batches of each rank: disjoint
    stream = [i for step in range(4) for micro in range(2) for b in ranks for i in b.indices(step, micro)]
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))  # each epoch once
    assert stream[:n] != stream[n:2 * n]  # a new order each epoch
    assert ranks[0].indices(3, 1) == ranks[0].indices(3, 1)  # a pure function of (step, micro, rank)


def test_ddp_two_gloo_ranks_on_a_folder_hold_identical_weights(clip, txt_folder, tmp_path):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file
    run = _run_file(tmp_path, "decoder", {"kind": "folder", "path": str(txt_folder)}, clip, n_steps=3,
                    batch_size=2)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port=29533",
                           str(Path(__file__).parent / "ddp_folder_worker.py"), str(tmp_path / "out"), str(run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(tmp_path / "out" / "rank0.safetensors"), load_file(tmp_path / "out" / "rank1.safetensors")
    assert w0.keys() == w1.keys()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    exported = load_checkpoint(tmp_path / "out" / "model").state_dict()
    assert max(float((exported[k] - w0[k]).abs().max()) for k in w0) > 0  # EMA export differs from raw: it trained
    assert json.loads((tmp_path / "out" / "data.json").read_text())["n_items"] == 7


def test_loader_benchmark_reports_images_per_second_and_ratios(clip, tmp_path):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import train_loaders
    out = tmp_path / "r.json"
    r = train_loaders.main(["--clip", clip.spec, "--preset", "tiny", "--steps", "3", "--batch", "2", "--n-items", "8",
                            "--repeats", "3", "--load-repeats", "2", "--json", str(out)])
    assert set(r["images_per_s"]) == {"shapesworld", "folder", "webdataset"}
    assert all(v > 0 for v in r["images_per_s"].values())
    # the ratio is the median of per-round ratios, each of sources timed back to back in one round
    s = r["step_seconds"]
    assert r["round_ratios"]["folder"] == pytest.approx([a / b for a, b in zip(s["shapesworld"], s["folder"])])
    assert r["ratio"]["folder"] == pytest.approx(sorted(r["round_ratios"]["folder"])[1])
    assert all(len(v) == 2 and min(v) > 0 for v in r["load_batch_seconds_all"].values())
    assert json.loads(out.read_text())["settings"]["n_items"] == 8


# ---- a tiny decoder learns from a folder (slow) ---------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_decoder_on_an_exported_folder_learns_colour_and_position(tmp_path):
    """The folder loader, not the ShapesWorld sampler: 512 one-object v2 scenes exported at 32 px, the bundled
    shapes-clip's z_i cached; a tiny 32 px decoder with a spatial z_i map for 600 steps x 16 (~6 CPU min). The loss
    falls, and images drawn from the z_i of 48 exported scenes are read back (shapes-readout) with colour and
    position above chance. Without the z_i map (clip_map_channels = 0) and at lr 5e-4 the same run learned the
    unconditional blob only (the z_i reached it through the time embedding and 4 context tokens, too weakly for
    600 steps): every sample was the same mixed-colour blob wherever x_T put it, read-out colour 0.021, position 0.
    """
    from explorer.training import open_training_data, train_run
    from unclip_core.data.shapes_data import export
    from unclip_core.data.shapes_scene import Scene
    from unclip_core.data.readout import score_attributes
    from unclip_core.diffusion import cosine_schedule
    from unclip_core.samplers import model_to_denoiser, sample_ddim
    folder = export(tmp_path / "export", n=512, seed=0, size=32, n_objects=(1,), world=2, progress=False)
    run = tmp_path / "decoder.toml"
    run.write_text(f'stage = "decoder"\npreset = "tiny"\nclip = "shapes-clip"\nprediction = "v"\nn_steps = 600\n'
                   f'batch_size = 16\nlr = 1e-3\nwarmup_steps = 20\nema_decay = 0.99\nhigh_t_fraction = 0.5\n'
                   f'precision = "fp32"\ncheckpoint_every = 300\ntensorboard = false\n'
                   f'[model]\nlearn_sigma = false\n'  # the tiny preset has the z_i map (clip_map_channels 4)
                   f'[data]\nkind = "folder"\npath = "{folder}"\n')
    losses = []
    cfg = load_run_config(run)
    model_dir = train_run(cfg, tmp_path / "run", progress=False, callback=lambda s, m: losses.append(m["loss"]))
    first, last = float(np.mean(losses[:50])), float(np.mean(losses[-50:]))
    decoder = load_checkpoint(model_dir)
    from explorer.training import prepare_run
    cfg, clip = prepare_run(cfg)
    items = open_training_data(cfg, clip=clip, run_dir=tmp_path / "run", progress=False)
    n = 48
    rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    by_file = {r["file"]: r for r in rows}
    idx = list(range(n))
    z_i = items.batch(idx).z_i
    scenes = [Scene.from_dict(by_file[Path(items.payloads[i]).relative_to(folder).as_posix()]["scene"]) for i in idx]
    schedule = cosine_schedule(1000)
    with torch.no_grad():
        denoise = model_to_denoiser(lambda x, t: decoder(x, t, z_i=z_i), schedule, "v", clip_x0=1.0)
        images = sample_ddim(denoise, torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
                             schedule, 25)
    scores = score_attributes(images, scenes)
    colour, position = float(scores["colour_correct"].mean()), float(scores["position_correct"].mean())
    print(f"loss {first:.4f} -> {last:.4f}; read-out (n {n}): colour {colour:.3f}, position {position:.3f}, "
          f"shape {float(scores['shape_correct'].mean()):.3f}, size {float(scores['size_correct'].mean()):.3f}")
    assert last < 0.7 * first
    assert colour > 1 / 6 + 0.2 and position > 1 / 5 + 0.2  # chance: 6 colours, 5 positions
