"""Outputs record exactly how they were made: drawn seeds, the upsampler steps that ran, file permissions, and
atomic writers that leave nothing behind (issue 16, "Faithful records")."""
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from unclip_core import atomic, seeds
from unclip_core.pipeline import UnCLIP
from explorer.records import read_png_meta, save_png

from tiny_models import write_tiny_pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return UnCLIP.load(write_tiny_pipeline(tmp_path_factory.mktemp("records")))


FAST = {"decoder_steps": 2, "prior_steps": 2, "best_of": 1}  # SamplingConfig fields of a quick call


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_seed_none_is_drawn_recorded_and_reproduces(tiny):
    out = tiny.text_to_image("a red circle", n=2, sampling=FAST, upsample=False)
    seed = out.settings["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**31
    again = tiny.text_to_image("a red circle", n=2, sampling=FAST, upsample=False, seed=seed)
    assert again.settings["seed"] == seed and _same(out.images, again.images)
    z = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    d = tiny.decode(z, sampling={"decoder_steps": 2}, upsample=False)
    d2 = tiny.decode(z, sampling={"decoder_steps": 2}, upsample=False, seed=d.settings["seed"])
    assert isinstance(d.settings["seed"], int) and _same(d.images, d2.images)
    # a caller's generator: its seed is the caller's to record
    g = torch.Generator().manual_seed(3)
    assert tiny.decode(z, sampling={"decoder_steps": 2}, upsample=False, seed=g).settings["seed"] is None


def test_two_calls_without_seed_differ(tiny):
    a = tiny.text_to_image("a red circle", sampling=FAST, upsample=False)
    b = tiny.text_to_image("a red circle", sampling=FAST, upsample=False)
    assert a.settings["seed"] != b.settings["seed"]


def test_upsampler_steps_record_what_ran(tiny):
    z = torch.nn.functional.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert tiny.decode(z, sampling={"decoder_steps": 2}, upsample=False, seed=0).settings["upsampler_steps"] == []
    out = tiny.decode(z, sampling={"decoder_steps": 2, "upsampler_steps": (3, 9)}, upsample=True, seed=0)
    assert out.settings["upsampler_steps"] == [3]  # the one stage that ran
    assert out.settings["sampling"]["upsampler_steps"] == [3, 9]  # what was asked


@pytest.mark.parametrize("value,error,match", [
    (1e9, ValueError, r"guidance must lie in \[0, 100\] .*got 1000000000.0"),
    (float("inf"), ValueError, r"guidance must lie in \[0, 100\]"),
    ("3", TypeError, "guidance must be a number in"),
])
def test_guidance_out_of_range_is_refused_before_work(tiny, value, error, match):
    with pytest.raises(error, match=match):
        tiny.text_to_image("a red circle", sampling={**FAST, "decoder_guidance": value}, upsample=False)


def test_seeds_helpers():
    g, s = seeds.generator(5)
    assert s == 5 and torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63 - 1\], got -2"):
        seeds.generator(-2)
    with pytest.raises(TypeError, match="seed must be an int >= 0, got str"):
        seeds.check_seed("7")


def test_published_files_get_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        png = save_png(Image.new("RGB", (4, 4)), tmp_path / "a.png", {"seed": 1})
        js = atomic.write_json(tmp_path / "s.json", {"a": 1})
        for f in (png, js):
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    finally:
        os.umask(mask)
    assert read_png_meta(png) == {"seed": 1}
    assert json.loads(js.read_text()) == {"a": 1}


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"old": True})

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError):
        atomic.atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"old": True} and os.listdir(tmp_path) == ["out.json"]


def test_train_resume_refuses_pickles_and_missing_state(tmp_path, capsys):
    """A pickle payload in state.pt is refused without running it; --resume with no state is an error, not a fresh run."""
    import pickle

    from explorer.cli import main
    from unclip_core.train.common import load_state

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=r"state.pt is not a training state written by unclip-explorer \(Unpickl"):
        load_state(run / "state.pt")
    assert main(["train", "prior", "--out", str(run), "--resume", "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not a training state written by unclip-explorer" in err and "--fresh" in err
    assert "weights_only=False" not in err and "unsafe" not in err.lower()
    assert not marker.exists()
    (run / "state.pt").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="is not a training state written by unclip-explorer"):
        load_state(run / "state.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "prior", "--out", str(empty), "--resume", "--steps", "1", "--no-progress"]) == 2
    assert "holds no training state (no state.pt); drop --resume" in capsys.readouterr().err
    assert os.listdir(empty) == []


def test_silent_inputs_now_speak(tiny):
    """Zero embeddings, huge finite values and unknown words: an error or a warning that names them."""
    z = torch.zeros(2, 16)
    z[0, 0] = 1.0
    with pytest.raises(ValueError, match=r"z_i rows \[1\] are all zeros; an embedding needs a direction"):
        tiny.decode(z, sampling={"decoder_steps": 1}, upsample=False)
    with pytest.raises(ValueError, match=r"z_i holds finite values as large as 1e\+308"):
        tiny.decode(np.full((1, 16), 1e308), sampling={"decoder_steps": 1}, upsample=False)
    with pytest.raises(ValueError, match=r"z_i contains NaN or infinite values \(rows \[0\]\)"):
        tiny.decode(torch.full((1, 16), float("nan")), sampling={"decoder_steps": 1}, upsample=False)


def test_unknown_words_warn_with_suggestions():
    from unclip_core.clip import ClipEncoder
    enc = ClipEncoder.load("shapes-clip")
    with pytest.warns(UserWarning, match=r"'rde' \(did you mean 'red'\?\), 'cirlce' \(did you mean 'circle'\?\) "
                                         r"not in this CLIP's \d+-word vocabulary; each becomes \[UNK\]"):
        enc.encode_text(["a rde cirlce"])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode_text(["a red circle"])


def test_checkpoint_files_are_published_readable(tmp_path):
    from unclip_core.checkpoint import save_checkpoint
    from unclip_core.prior import DiffusionPrior, PriorConfig
    mask = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "p", DiffusionPrior(PriorConfig(clip_dim=8, text_width=8, width=16,
                                                                          n_layers=1, n_heads=2, n_text_tokens=4)))
    finally:
        os.umask(mask)
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
