"""The unclip-explorer command line: registration, embed/neighbors on a fake encoder, error exits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from explorer import api, cli
from explorer.store import EmbeddingStore
from unclip_core.clip import bundled_world

sys.path.insert(0, str(Path(__file__).parent))
from fake_encoder import FakeEncoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLED_CLIP = REPO / "unclip_core" / "bundled" / "shapes-clip"
CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a red circle left of a blue square",
            "a small yellow circle"]


@pytest.fixture
def fake_model():
    enc = FakeEncoder("test-cli-fake", 16, "cli-fake-id")
    api.register_encoder("test-cli-fake", lambda spec: enc)
    yield enc
    api.unregister_encoder("test-cli-fake")


@pytest.fixture
def caption_store(tmp_path, fake_model, capsys):
    (tmp_path / "caps.txt").write_text("\n".join(CAPTIONS) + "\n")
    rc = cli.main(["embed", str(tmp_path / "caps.txt"), "--model", "test-cli-fake", "--out",
                   str(tmp_path / "store"), "--dtype", "float32", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "5 vectors (5 new), dim 16, float32, model test-cli-fake" in out
    return tmp_path / "store"


def test_version(capsys):
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.strip() == "unclip-explorer 0.1.0"


def test_embed_then_neighbors_table_and_json(caption_store, fake_model, capsys):
    store = EmbeddingStore.open(caption_store)
    np.testing.assert_array_equal(np.asarray(store.vectors), fake_model.encode_text(CAPTIONS).numpy())
    assert cli.main(["neighbors", str(caption_store), "--text", "a blue square", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "source"]
    assert lines[1].split()[:3] == ["1", "1.0000", "text:caps.txt:2"] and lines[1].endswith("a blue square")
    assert len(lines) == 3
    assert cli.main(["neighbors", str(caption_store), "--id", "text:caps.txt:4", "-k", "5", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["id"] == "text:caps.txt:4" and records[0]["score"] == pytest.approx(1.0, abs=1e-6)
    z = fake_model.encode_text(CAPTIONS).numpy()
    want = np.argsort(-(z @ z[3]))
    assert [r["id"] for r in records] == [f"text:caps.txt:{i + 1}" for i in want]


def test_embed_rerun_is_noop(caption_store, capsys):
    rc = cli.main(["embed", str(caption_store.parent / "caps.txt"), "--model", "test-cli-fake", "--out",
                   str(caption_store), "--dtype", "float32", "--batch-size", "2", "--no-progress"])
    assert rc == 0 and "5 vectors (0 new)" in capsys.readouterr().out


def test_user_errors_exit_2_with_one_line(tmp_path, caption_store, capsys):
    cases = [
        (["neighbors", str(tmp_path / "missing"), "--id", "x"], "error: no embedding store at"),
        (["neighbors", str(caption_store), "--id", "nope"], "error: id 'nope' is not in the store"),
        (["neighbors", str(caption_store), "--id", "text:caps.txt:1", "-k", "0"], "error: argument -k: must be an integer >= 1, got '0'"),
        (["embed", str(tmp_path / "nothing.txt"), "--model", "test-cli-fake", "--out", str(tmp_path / "o")],
         "error: input not found"),
    ]
    for argv, start in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1 and "Traceback" not in err, err


def test_model_mixing_through_cli(caption_store, capsys):
    api.register_encoder("test-cli-other", lambda spec: FakeEncoder("test-cli-other", 16, "other-id"))
    try:
        rc = cli.main(["embed", str(caption_store.parent / "caps.txt"), "--model", "test-cli-other",
                       "--out", str(caption_store), "--dtype", "float32", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "cannot mix models" in err and "'cli-fake-id'" in err and "'other-id'" in err
    finally:
        api.unregister_encoder("test-cli-other")


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(FileNotFoundError, match="no embedding store"):
        cli.main(["--debug", "neighbors", str(tmp_path / "missing"), "--id", "x"])


def test_error_exit_code_of_the_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "explorer", "neighbors", str(tmp_path / "missing"), "--id", "x"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: no embedding store at") and proc.stderr.count("\n") == 1


def test_argparse_rejects_two_queries(caption_store, capsys):
    assert cli.main(["neighbors", str(caption_store), "--id", "a", "--text", "b"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2 and "embed" in capsys.readouterr().err


def test_one_explicit_command_table():
    """Every command module contributes its COMMANDS to cli.TABLE; no command is there twice, no module is left out."""
    import pkgutil

    import explorer.commands as package
    names = [c.name for c in cli.TABLE]
    assert len(names) == len(set(names))
    modules = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    for m in modules:
        module = __import__(f"explorer.commands.{m}", fromlist=["COMMANDS"])
        assert module.COMMANDS and all(c in cli.TABLE for c in module.COMMANDS), m
    assert {"embed", "neighbors", "generate", "interpolate", "binding", "train", "import"} <= set(names)
    assert "analysis" not in names and "import-karlo" not in names  # the aliases are gone


def test_debug_is_accepted_anywhere(tmp_path, capsys):
    assert cli.main(["neighbors", str(tmp_path / "nowhere"), "--text", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: no embedding store at")
    for argv in (["--debug", "neighbors", str(tmp_path / "nowhere"), "--text", "x"],
                 ["neighbors", str(tmp_path / "nowhere"), "--text", "x", "--debug"]):
        with pytest.raises(FileNotFoundError, match="no embedding store at"):
            cli.main(argv)


def test_models_lists_bundled_folders(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny-clip").mkdir()
    (tmp_path / "tiny-clip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    (tmp_path / "tiny-prior").mkdir()
    (tmp_path / "tiny-prior" / "config.json").write_text(json.dumps({"class": "DiffusionPrior"}))
    (tmp_path / "tiny-clip" / "model.safetensors").write_bytes(b"\0" * 2**20)
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(api, "bundled_dir", lambda: tmp_path)
    assert cli.main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"name": "tiny-clip", "kind": "clip", "size_mb": 1.0, "path": str(tmp_path / "tiny-clip")}
    assert [(r["name"], r["kind"]) for r in rows] == [("tiny-clip", "clip"), ("tiny-prior", "DiffusionPrior")]
    monkeypatch.setattr(api, "bundled_dir", lambda: tmp_path / "none")
    assert cli.main(["models"]) == 0 and "no bundled models" in capsys.readouterr().out


def test_shapes_export(tmp_path, capsys):
    pytest.importorskip("unclip_core.data.shapes", reason="unclip_core/data/shapes.py is not written yet")
    argv = ["shapes", "export", str(tmp_path / "ex"), "--n", "4", "--seed", "0", "--size", "32", "--no-progress"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "ex" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all({"file", "caption", "scene"} <= set(r) for r in rows)
    assert f"wrote 4 ShapesWorld v{bundled_world()} scenes" in capsys.readouterr().out  # the bundled models' world
    assert all(r["scene"]["world"] == bundled_world() for r in rows)
    assert cli.main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0
    rows2 = [json.loads(line) for line in (tmp_path / "ex" / "captions.jsonl").read_text().splitlines()]
    assert rows2 == rows  # seeded: the same scenes again


def test_embed_shapes_export_with_fake_encoder(tmp_path, fake_model, capsys):
    pytest.importorskip("unclip_core.data.shapes", reason="unclip_core/data/shapes.py is not written yet")
    assert cli.main(["shapes", "export", str(tmp_path / "ex"), "--n", "3", "--size", "32", "--no-progress"]) == 0
    assert cli.main(["embed", str(tmp_path / "ex"), "--model", "test-cli-fake", "--out", str(tmp_path / "s"),
                     "--chunk-size", "2", "--no-progress"]) == 0
    store = EmbeddingStore.open(tmp_path / "s")
    meta = store.metadata
    assert meta["kind"].tolist() == ["image"] * 3 + ["text"] * 3
    assert meta["id"].tolist()[0] == "image:images/000000.png" and meta["caption"][0] == meta["source"][3]
    assert any(c.startswith("scene.") for c in meta.columns)
    capsys.readouterr()
    assert cli.main(["neighbors", str(tmp_path / "s"), "--image", str(tmp_path / "ex" / "images" / "000001.png"),
                     "-k", "1", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["id"] == "image:images/000001.png" and top["score"] == pytest.approx(1.0, abs=2e-3)


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    """A seeded tiny random open_clip model folder: a real ClipEncoder spec without trained weights."""
    open_clip = pytest.importorskip("open_clip")
    import torch
    from safetensors.torch import save_file
    cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                           "head_width": 16},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path_factory.mktemp("tinyclip") / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.model.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def test_embed_resume_and_neighbors_with_a_real_clip_encoder(tmp_path, tiny_clip_folder, capsys):
    pytest.importorskip("unclip_core.data.shapes", reason="unclip_core/data/shapes.py is not written yet")
    from explorer.store import embed_items

    class Killed(Exception):
        pass

    def stop(i, n):
        raise Killed

    api.export_shapes(tmp_path / "ex", n=5, seed=3, size=32, progress=False)
    spec = str(tiny_clip_folder)
    enc = api.load_encoder(spec)
    with pytest.raises(Killed):
        embed_items(enc, tmp_path / "ex", tmp_path / "r", batch_size=2, chunk_size=3, progress=False, on_chunk=stop)
    args = ["--model", spec, "--batch-size", "2", "--chunk-size", "3", "--no-progress"]
    assert cli.main(["embed", str(tmp_path / "ex"), "--out", str(tmp_path / "r"), *args]) == 0
    assert cli.main(["embed", str(tmp_path / "ex"), "--out", str(tmp_path / "c"), *args]) == 0
    resumed, clean = EmbeddingStore.open(tmp_path / "r"), EmbeddingStore.open(tmp_path / "c")
    assert len(clean) == 10 and clean.model_id == enc.model_id and clean.dim == 24
    assert np.asarray(resumed.vectors).tobytes() == np.asarray(clean.vectors).tobytes()
    assert resumed.metadata.equals(clean.metadata)
    capsys.readouterr()
    caption = clean.metadata["source"].iloc[7]
    assert cli.main(["neighbors", str(tmp_path / "c"), "--text", caption, "-k", "2", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["id"] == clean.metadata["id"].iloc[7] and top["score"] == pytest.approx(1.0, abs=2e-3)


@pytest.mark.skipif(not BUNDLED_CLIP.exists(), reason="bundled CLIP unclip_core/bundled/shapes-clip is not trained yet")
def test_embed_and_neighbors_with_bundled_clip(tmp_path, capsys):
    pytest.importorskip("unclip_core.data.shapes", reason="unclip_core/data/shapes.py is not written yet")
    assert cli.main(["shapes", "export", str(tmp_path / "ex"), "--n", "6", "--seed", "1", "--size", "64"]) == 0
    assert cli.main(["embed", str(tmp_path / "ex"), "--model", "shapes-clip", "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 0
    store = EmbeddingStore.open(tmp_path / "s")
    assert len(store) == 12 and store.model_spec == "shapes-clip"
    capsys.readouterr()
    caption = store.metadata.loc[store.metadata["kind"] == "text", "source"].iloc[0]
    assert cli.main(["neighbors", str(tmp_path / "s"), "--text", caption, "-k", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["kind"] == "text" and top["source"] == caption and top["score"] == pytest.approx(1.0, abs=2e-3)


def test_train_options_fail_with_one_line(tmp_path, capsys):
    cases = [
        (["train", "clip", "--recipe", "tiny", "--out", str(tmp_path / "c"), "--lr", "1e-3"],
         "error: options for the diffusion stages only, not clip: --lr"),
        (["train", "upsampler1", "--recipe", "tiny", "--out", str(tmp_path / "u"), "--object-weights", "0.5", "0.5"],
         "error: weights must be 3 non-negative numbers"),
        (["train", "upsampler1", "--recipe", "tiny", "--out", str(tmp_path / "w"), "--init-from",
          str(tmp_path / "nowhere")], "error: checkpoint folder"),
        (["train", "upsampler1", "--recipe", "tiny", "--out", str(tmp_path / "m"), "--min-snr-gamma", "-1"],
         "error: argument --min-snr-gamma: must be a finite number > 0, got '-1'"),
        (["train", "decoder", "--recipe", "tiny", "--out", str(tmp_path / "h"), "--high-t-fraction", "2"],
         "error: argument --high-t-fraction: must be a number in [0, 1], got '2'"),
        (["train", "clip", "--recipe", "tiny", "--out", str(tmp_path / "c2"), "--high-t-from", "0.5"],
         "error: options for the diffusion stages only, not clip: --high-t-from"),
        (["train", "upsampler2", "--recipe", "tiny", "--out", str(tmp_path / "k"), "--crop-content-fraction", "-0.1"],
         "error: argument --crop-content-fraction: must be a number in [0, 1], got '-0.1'"),
    ]
    for argv, start in cases:
        assert cli.main(argv + ["--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "w").exists()  # the failed warm start wrote nothing


def test_neighbors_refuses_empty_queries_and_file_stores(caption_store, tmp_path, capsys):
    from explorer import api
    assert cli.main(["neighbors", str(caption_store), "--text", "  "]) == 2
    assert capsys.readouterr().err.strip() == "error: text query 0 is empty; pass a caption with at least one word"
    (tmp_path / "afile").write_text("x")
    assert cli.main(["neighbors", str(tmp_path / "afile"), "--text", "a red circle"]) == 2
    assert f"error: {tmp_path / 'afile'} is a file, not an embedding store" in capsys.readouterr().err
    store = api.open_store(caption_store)
    with pytest.raises(ValueError, match=r"vector must be .* finite and non-zero \(cosine needs a direction\)"):
        api.neighbors(store, vector=np.zeros(16, np.float32))
