"""Binding runs on disk: outputs, resume after a simulated kill, settings guard, compare, the CLI."""
import json

import numpy as np
import pandas as pd
import pytest

from analyses.binding import make_suite
from explorer import api
from explorer.binding import compare_runs, run_suite, write_suite
from explorer.cli import main

from fake_encoder import FakeEncoder

pytestmark = pytest.mark.filterwarnings("ignore:prompt")


class Killed(Exception):
    pass


class CountingEncoder(FakeEncoder):
    """FakeEncoder that counts encode_text calls and can 'die' on the call numbered `die_at`."""

    def __init__(self, die_at=None):
        super().__init__("counting-fake", dim=16, model_id="fake-16")
        self.calls, self.die_at, self.texts = 0, die_at, []

    def encode_text(self, texts):
        self.calls += 1
        if self.die_at is not None and self.calls == self.die_at:
            raise Killed("simulated kill")
        self.texts += list(texts)
        return super().encode_text(texts)


@pytest.fixture()
def suite(tmp_path):
    return write_suite(make_suite(24, seed=0, kinds=["caption_pair", "winoground"]), tmp_path / "suite.jsonl")


def test_run_writes_every_output(tmp_path, suite):
    out = run_suite(suite, CountingEncoder(), tmp_path / "run", probe_n=40, batch_size=8, progress=False)
    for name in ("settings.json", "cases.csv", "cases.parquet", "summary.csv", "probes.csv", "charts/accuracy.html",
                 "charts/confusion.html", "failures.png", "index.html"):
        assert (out / name).is_file(), name
    cases = pd.read_parquet(out / "cases.parquet")
    assert len(cases) == 24 and cases["id"].is_unique
    assert pd.read_csv(out / "cases.csv")["hit"].tolist() == cases["hit"].tolist()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == "counting-fake" and settings["seed"] == 0 and settings["finished"]
    summary = pd.read_csv(out / "summary.csv")
    cp = summary[(summary["kind"] == "caption_pair") & (summary["category"] == "all")].iloc[0]
    assert cp["k"] == cases.loc[cases["kind"] == "caption_pair", "hit"].sum()
    assert "Binding suite" in (out / "index.html").read_text()
    assert len(list((out / "parts").glob("clip-*.jsonl"))) == 3  # 24 cases / batches of 8


def test_resume_after_a_simulated_kill_redoes_nothing(tmp_path, suite):
    ref = run_suite(suite, CountingEncoder(), tmp_path / "ref", probes=False, batch_size=8, progress=False)
    dying = CountingEncoder(die_at=3)
    with pytest.raises(Killed):
        run_suite(suite, dying, tmp_path / "run", probes=False, batch_size=8, progress=False)
    assert len(list((tmp_path / "run" / "parts").glob("clip-*.jsonl"))) == 2  # two batches were finished
    done_texts = set(dying.texts)
    again = CountingEncoder()
    run_suite(suite, again, tmp_path / "run", probes=False, batch_size=8, progress=False)
    assert again.calls == 1 and not done_texts & set(again.texts)  # only the last batch was encoded
    pd.testing.assert_frame_equal(pd.read_csv(ref / "cases.csv"), pd.read_csv(tmp_path / "run" / "cases.csv"))
    with pytest.raises(ValueError, match="holds a run with other settings \\(seed: run has 0, now 1\\); rerun with "
                                         "the same settings to resume it, or pass a new --out folder"):
        run_suite(suite, CountingEncoder(), tmp_path / "run", probes=False, batch_size=8, seed=1, progress=False)


def _fake_run(folder, hits_by_category):
    folder.mkdir()
    (folder / "settings.json").write_text("{}")
    rows = [{"id": f"{cat}-{k}", "kind": "caption_pair", "category": cat, "hit": bool(h)}
            for cat, hits in hits_by_category.items() for k, h in enumerate(hits)]
    pd.DataFrame(rows).to_csv(folder / "cases.csv", index=False)
    return folder


def test_compare_constructed_runs(tmp_path):
    a = _fake_run(tmp_path / "a", {"colour_swap": [0] * 12, "count": [1, 0, 1, 0]})
    b = _fake_run(tmp_path / "b", {"colour_swap": [1] * 10 + [0] * 2, "count": [1, 0, 1, 0]})
    df = compare_runs(a, b, n_boot=500).set_index("category")
    assert df.loc["colour_swap", "b_only"] == 10 and df.loc["colour_swap", "a_only"] == 0
    assert df.loc["colour_swap", "p_mcnemar"] == pytest.approx(2 * 0.5 ** 10)
    assert df.loc["colour_swap", "diff"] == pytest.approx(10 / 12) and df.loc["colour_swap", "lo"] > 0
    assert df.loc["count", "p_mcnemar"] == 1.0 and df.loc["count", "diff"] == 0.0
    assert df.loc["all", "n"] == 16
    with pytest.raises(FileNotFoundError, match="is not a binding run \\(no settings.json\\)"):
        compare_runs(a, tmp_path)
    c = _fake_run(tmp_path / "c", {"other": [1]})
    with pytest.raises(ValueError, match="share no case ids; compare runs of the same suite"):
        compare_runs(a, c)


def test_cli_make_suite_run_compare_and_errors(tmp_path, capsys):
    api.register_encoder("binding-fake", lambda spec: FakeEncoder(spec, dim=16))
    try:
        path = tmp_path / "suite.jsonl"
        assert main(["binding", "make-suite", "--n", "14", "--seed", "0", "--kinds", "caption_pair,winoground",
                     "--out", str(path)]) == 0
        assert len(path.read_text().splitlines()) == 14
        for run in ("r1", "r2"):
            assert main(["binding", "run", str(path), "--model", "binding-fake", "--out", str(tmp_path / run),
                         "--probe-n", "0", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "report:" in out and "caption_pair" in out
        assert main(["binding", "compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "--json"]) == 0
        records = json.loads(capsys.readouterr().out)
        assert {r["p_mcnemar"] for r in records} == {1.0}  # same model: no differences
        assert main(["binding", "run", str(path), "--model", "binding-fake", "--out", str(tmp_path / "g"),
                     "--generate"]) == 2
        assert "--generate needs a pipeline" in capsys.readouterr().err
        bad = tmp_path / "bad.jsonl"
        bad.write_text(path.read_text().splitlines()[0] + "\n" + '{"kind": "caption_pair", "id": "z"}\n')
        assert main(["binding", "run", str(bad), "--model", "binding-fake", "--out", str(tmp_path / "b")]) == 2
        assert f"{bad}:2: field 'caption' is missing" in capsys.readouterr().err
        assert main(["binding", "convert", "aro", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 2
        assert "aro needs --images DIR" in capsys.readouterr().err
    finally:
        api.unregister_encoder("binding-fake")


def test_generation_run_on_a_tiny_pipeline(tmp_path):
    from tiny_models import write_tiny_pipeline
    pipe_dir = write_tiny_pipeline(tmp_path / "pipe")
    cases = [c for c in make_suite(7, seed=0, kinds=["generation"]) if c.category in ("colour_swap", "count")]
    fast = {"decoder_steps": 2, "prior_steps": 2, "upsampler_steps": (1,)}  # SamplingConfig fields

    def judge(image, case):
        return {"bright": float(np.asarray(image).mean()) > 100.0}

    out = run_suite(cases, str(pipe_dir), tmp_path / "run", generate=True, n_images=1, judge=judge, probes=False,
                    sampling=fast, upsample=None, progress=False)
    gen = pd.read_csv(out / "generation.csv")
    assert len(gen) == 4 and set(gen["path"]) == {"prior", "true_z_i"}
    assert (out / "images" / cases[0].id / "prior-0.png").is_file()
    from explorer.records import read_png_meta
    meta = read_png_meta(out / "images" / cases[0].id / "true_z_i-0.png")
    row = gen[(gen["id"] == cases[0].id) & (gen["path"] == "true_z_i")].iloc[0]
    assert meta["case"] == cases[0].id and meta["path"] == "true_z_i" and meta["seed"] == row["seed"]
    assert meta["prompt"] == cases[0].prompt and meta["sampling"]["decoder_steps"] == 2 and meta["index"] == 0
    assert meta["sampling"]["prior_steps"] == 2 and meta["sampling"]["upsampler_steps"] == [1]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sampling"] == {"decoder_steps": 2, "prior_steps": 2, "upsampler_steps": [1]}
    assert settings["upsample"] is None and "text_to_image_kwargs" not in settings
    assert len(meta["suite_sha256"]) == 64
    assert set(pd.read_csv(out / "generation_summary.csv")["path"]) == {"prior", "true_z_i"}
    assert json.loads((out / "settings.json").read_text())["pipeline"]["model"] == "tiny-unclip"


def test_cli_generation_judges_the_decoder_output_unless_upsample(tmp_path):
    from PIL import Image

    from tiny_models import write_tiny_pipeline
    pipe_dir = write_tiny_pipeline(tmp_path / "pipe")
    cases = [c for c in make_suite(7, seed=0, kinds=["generation"]) if c.category == "colour_swap"][:1]
    suite = write_suite(cases, tmp_path / "suite.jsonl")
    for flag, side in (([], 16), (["--upsample"], 32)):
        out = tmp_path / f"run{side}"
        assert main(["binding", "run", str(suite), "--model", str(pipe_dir), "--out", str(out), "--generate",
                     "--n-images", "1", "--steps", "2", "--prior-steps", "2", "--probe-n", "0", "--no-progress",
                     *flag]) == 0
        assert Image.open(out / "images" / cases[0].id / "prior-0.png").size == (side, side)
        settings = json.loads((out / "settings.json").read_text())
        assert settings["upsample"] is bool(flag)
        assert settings["sampling"] == {"decoder_steps": 2, "prior_steps": 2}  # the options given


def test_bad_suites_fail_before_writing_and_rerun_clean(tmp_path, suite):
    """Escaping image paths, binary files and missing images are named before any output; a rerun then works."""
    from PIL import Image

    from analyses.binding_suite import SuiteError
    img = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(img)
    (tmp_path / "escape").mkdir()
    case = {"kind": "caption_pair", "id": "c1", "category": "colour_change", "image": "../img.png",
            "caption": "a red circle", "foils": ["a blue circle"]}
    esc = tmp_path / "escape" / "suite.jsonl"
    esc.write_text(json.dumps(case) + "\n")
    with pytest.raises(SuiteError, match=r"case 'c1': image path '../img.png' leaves the suite's folder"):
        run_suite(esc, CountingEncoder(), tmp_path / "r_esc", probes=False, progress=False)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SuiteError, match=r"binary.jsonl is not a UTF-8 text file \(byte 0xff at offset 0\); a suite "
                                         r"is JSON Lines"):
        run_suite(binary, CountingEncoder(), tmp_path / "r_bin", probes=False, progress=False)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({**case, "image": "nope.png"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) named by the suite do not exist \(case 'c1': "
                                                r".*nope.png\).*nothing was written"):
        run_suite(missing, CountingEncoder(), tmp_path / "r_miss", probes=False, progress=False)
    assert not (tmp_path / "r_miss").exists()
    missing.write_text(json.dumps({**case, "image": "img.png"}) + "\n")  # fixed: the same --out runs
    out = run_suite(missing, CountingEncoder(), tmp_path / "r_miss", probes=False, progress=False)
    assert len(pd.read_csv(out / "cases.csv")) == 1
    # a settings.json left by a run that died before any work does not block a rerun with other settings
    (tmp_path / "r_dead").mkdir()
    (tmp_path / "r_dead" / "settings.json").write_text(json.dumps({"suite_sha256": "other", "seed": 5}))
    run_suite(missing, CountingEncoder(), tmp_path / "r_dead", probes=False, progress=False)


def test_compare_refuses_runs_of_different_suites(tmp_path, suite):
    a = run_suite(suite, CountingEncoder(), tmp_path / "a", probes=False, progress=False)
    other = write_suite(make_suite(12, seed=1, kinds=["caption_pair"]), tmp_path / "other.jsonl")
    b = run_suite(other, CountingEncoder(), tmp_path / "b", probes=False, progress=False)
    with pytest.raises(ValueError, match=r"ran different suites \(24 cases from .*suite.jsonl, sha256 \w{12}; 12 cases "
                                         r"from .*other.jsonl.*--shared-cases"):
        compare_runs(a, b)
    try:
        df = compare_runs(a, b, shared_cases=True)
        assert (df["n"] <= 12).all()
    except ValueError as e:  # different seeds may share no ids at all: then it says so
        assert "share no case ids" in str(e)
