"""`unclip-explorer generate / inspect / train` end to end on tiny models."""
import json

import pytest

from explorer.cli import main
from explorer.records import read_png_meta

from tiny_models import write_tiny_pipeline


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


def test_generate_writes_pngs_with_provenance(pipe_dir, tmp_path, capsys):
    code = main(["generate", "a red circle", "a blue square", "--model", str(pipe_dir), "--out", str(tmp_path),
                 "--n", "2", "--steps", "2", "--prior-steps", "2", "--seed", "7"])
    assert code == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["000.png", "001.png", "002.png", "003.png"]
    meta = read_png_meta(pngs[2])
    assert meta["prompt"] == "a blue square" and meta["seed"] == 7 and meta["model"] == "tiny-unclip"
    assert meta["sampling"]["decoder_steps"] == 2 and meta["sampling"]["prior_steps"] == 2
    assert meta["sampling"]["decoder_guidance"] == 3.0 and len(meta["z_i_hash"]) == 16  # not given: the pipeline's
    record = json.loads((tmp_path / "settings.json").read_text())
    assert record["command"] == "generate" and record["seed"] == 7 and record["model"]["model"] == "tiny-unclip"
    assert record["settings"]["prompts"] == ["a red circle", "a blue square"] and len(record["files"]) == 4
    assert record["versions"]["torch"] and record["settings"]["upsampler_steps"] == [27]
    assert record["settings"]["sampling"]["upsampler_steps"] == [27, 15] and "steps" not in record["settings"]
    assert main(["inspect", str(pngs[0])]) == 0
    assert '"prompt": "a red circle"' in capsys.readouterr().out


def test_cli_errors_are_one_line(pipe_dir, tmp_path, capsys):
    assert main(["generate", "x", "--model", str(pipe_dir), "--out", str(tmp_path), "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: argument --steps: must be an integer >= 1, got '0'")
    assert main(["generate", "x", "--model", str(pipe_dir), "--out", str(tmp_path), "--sampler", "dpmpp_2m",
                 "--eta", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "sampler 'dpmpp_2m' does not take eta" in err and err.strip().count("\n") == 0
    assert main(["generate", "x", "--model", str(pipe_dir), "--out", str(tmp_path), "--sampler", "euler"]) == 2
    assert "argument --sampler: invalid choice: 'euler'" in capsys.readouterr().err
    assert main(["generate", "x", "--model", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_train_refuses_to_clobber_a_run(tmp_path, capsys):
    (tmp_path / "state.pt").write_bytes(b"")
    assert main(["train", "upsampler1", "--recipe", "tiny", "--out", str(tmp_path)]) == 2
    assert "pass --resume to continue it or --fresh" in capsys.readouterr().err


def test_train_a_tiny_upsampler(tmp_path):
    assert main(["train", "upsampler1", "--recipe", "tiny", "--out", str(tmp_path), "--steps", "2",
                 "--no-progress"]) == 0
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert main(["train", "upsampler1", "--recipe", "tiny", "--out", str(tmp_path), "--steps", "2",
                 "--resume", "--no-progress"]) == 0  # already done: resumes at step 2 and re-exports


def test_default_cascade_leaves_out_upsamplers_that_do_not_beat_bicubic(pipe_dir, tmp_path, capsys):
    import shutil

    from PIL import Image

    from unclip_core.pipeline import UnCLIP
    left_out = tmp_path / "pipe"
    shutil.copytree(pipe_dir, left_out)
    doc = json.loads((left_out / "pipeline.json").read_text())
    doc["metadata"]["default_upsample"] = 0  # as a card would: upsampler1 does not beat bicubic
    (left_out / "pipeline.json").write_text(json.dumps(doc))
    pipe = UnCLIP.load(left_out)
    assert pipe.resolutions == [16, 32] and pipe.default_upsample == 0 and UnCLIP.load(pipe_dir).default_upsample == 1
    z = pipe.sample_prior(["a red circle"], sampling={"prior_steps": 2}, seed=0)
    fast = {"decoder_steps": 2, "upsampler_steps": (2,)}
    assert list(pipe.decode(z, sampling=fast, seed=0).stages) == ["decoder"]  # None: the default cascade
    assert list(pipe.decode(z, sampling=fast, seed=0, upsample=True).stages) == ["decoder", "upsampler1"]
    base = ["generate", "a red circle", "--model", str(left_out), "--n", "1", "--steps", "2", "--prior-steps", "2"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0  # default size: the largest below 256, 32 px
    meta = read_png_meta(tmp_path / "a" / "000.png")
    assert Image.open(tmp_path / "a" / "000.png").size == (32, 32) and meta["size"] == 32
    assert meta["resize"].startswith("bicubic 16 -> 32 px: upsampler1 is left out of the default cascade")
    assert main(base + ["--out", str(tmp_path / "b"), "--all-upsamplers"]) == 0
    assert "resize" not in read_png_meta(tmp_path / "b" / "000.png")
    assert main(base + ["--out", str(tmp_path / "c"), "--size", "64"]) == 2
    assert "--size 64 is not a resolution of" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "d"), "--no-upsample", "--size", "32"]) == 2
    assert "--no-upsample stops at 16 px but --size is 32" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"upsample must be None \(the default cascade\), True, False or a number"):
        pipe.decode(z, sampling={"decoder_steps": 2}, upsample=5)


def test_bad_outputs_and_inputs_fail_before_any_work(pipe_dir, tmp_path, capsys, monkeypatch):
    from unclip_core.pipeline import UnCLIP

    loads = []
    monkeypatch.setattr(UnCLIP, "load", classmethod(lambda cls, *a, **k: loads.append(a) or 1 / 0))
    existing = tmp_path / "out.png"
    existing.write_bytes(b"x")
    assert main(["generate", "a red circle", "--model", str(pipe_dir), "--out", str(existing)]) == 2
    assert "--out " + str(existing) + " is a file, not a folder" in capsys.readouterr().err and loads == []
    assert main(["generate", "x", "--out", str(tmp_path), "--prior-steps", "-5"]) == 2
    assert "argument --prior-steps: must be an integer >= 1, got '-5'" in capsys.readouterr().err
    assert main(["generate", "x", "--out", str(tmp_path), "--guidance", "1e9"]) == 2
    assert "argument --guidance: must be a number in [0, 100] (1 = no guidance), got '1e9'" in capsys.readouterr().err
    assert loads == []
    for name, data in (("random.png", bytes(range(256)) * 3), ("text.txt", b"hello\n")):
        (tmp_path / name).write_bytes(data)
        assert main(["inspect", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name} is not a readable image (UnidentifiedImageError)") and \
            "Traceback" not in err
