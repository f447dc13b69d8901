"""The analysis facade (explorer.analysis_api) and its commands end to end on tiny models: files, settings, errors."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analyses.metrics import metric_table
from analyses.projection import fit_projection
from explorer import analysis_api
from explorer.cli import main
from explorer.store import EmbeddingStore, embed_items
from explorer.records import read_png_meta

from fake_encoder import FakeEncoder
from pipeline_fixture import INVERT, noise_image, pipe, pipe_dir  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(6):
        noise_image(i).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    return embed_items(FakeEncoder(), CAPTIONS, tmp_path_factory.mktemp("s") / "texts", kind="text", progress=False,
                       dtype="float32")


def _settings(folder):
    return json.loads((Path(folder) / "settings.json").read_text())


def test_interpolate_api_writes_folder(pipe, image_files, tmp_path):
    out = tmp_path / "interp"
    r = analysis_api.interpolate(pipe, image_files / "img0.png", image_files / "img1.png", n_steps=3,
                                 x_T_mode="inverted", upsample=False, seed=2, out=out, sampling=INVERT)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["frame-000.png", "frame-001.png", "frame-002.png", "frames.csv", "grid.png", "index.html",
                     "settings.json"]
    s = _settings(out)
    assert s["analysis"] == "interpolate" and s["seed"] == 2 and s["model"]["model"] == "tiny-unclip"
    assert s["settings"]["x_T_mode"] == "inverted" and s["settings"]["n_steps"] == 3
    assert s["settings"]["sampling"]["invert_refine"] == 4 and s["settings"]["sampling"]["decoder_steps"] == 4
    assert "refine" not in s["settings"] and "steps" not in s["settings"]
    assert s["settings"]["a"] == "img0.png" and set(s["versions"]) >= {"torch", "numpy", "unclip_explorer"}
    assert "frames.csv" in s["files"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "frames.csv"), r.frame, check_dtype=False, atol=1e-9)
    meta = read_png_meta(out / "frame-002.png")
    assert meta["frame"] == 2 and meta["model"] == "tiny-unclip" and meta["seed"] == 2
    assert r.frame["l1_a"].iloc[0] < 0.01  # the PNG paths were inverted like the images themselves
    assert "src='grid.png'" in (out / "index.html").read_text()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_interpolate_cli(pipe_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["interpolate", "a red circle", "a blue square", "--model", str(pipe_dir), "--out", str(out),
                 "--n-steps", "2", "--steps", "1", "--prior-steps", "1", "--seed", "9", "--no-upsample"])
    assert code == 0
    assert "wrote 2 frames" in capsys.readouterr().out
    s = _settings(out)
    assert s["seed"] == 9 and s["settings"]["kind_a"] == "text" and s["settings"]["x_T_mode"] == "fixed"
    assert s["settings"]["guidance"] == 3.0 and s["settings"]["invert_guidance"] is None  # fixed x_T: guidance 3
    assert s["settings"]["sampling"]["decoder_steps"] == 1 and s["settings"]["sampling"]["prior_steps"] == 1
    assert len(pd.read_csv(out / "frames.csv")) == 2


def test_text_diff_cli_default_guidance_is_the_inversion_s(pipe_dir, image_files, tmp_path):
    out = tmp_path / "td-default"
    assert main(["text-diff", str(image_files / "img0.png"), "a red circle", "a blue square", "--model",
                 str(pipe_dir), "--out", str(out), "--n-steps", "2", "--steps", "1", "--refine", "0",
                 "--no-upsample"]) == 0
    s = _settings(out)["settings"]
    assert (s["x_T_mode"], s["guidance"], s["invert_guidance"]) == ("inverted", 1.0, 1.0)
    assert read_png_meta(out / "frame-000.png")["invert_guidance"] == 1.0
    assert s["sampling"]["invert_refine"] == 0 and s["sampling"]["decoder_steps"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # --guidance is the decoder's: inverted frames ignore it, without a warning
        assert main(["text-diff", str(image_files / "img0.png"), "a red circle", "a blue square", "--model",
                     str(pipe_dir), "--out", str(out), "--n-steps", "2", "--steps", "1", "--refine", "0",
                     "--guidance", "3", "--no-upsample"]) == 0
    assert _settings(out)["settings"]["invert_guidance"] == 1.0
    with pytest.warns(UserWarning, match="invert_guidance=3 with x_T_mode='inverted'"):
        assert main(["text-diff", str(image_files / "img0.png"), "a red circle", "a blue square", "--model",
                     str(pipe_dir), "--out", str(out), "--n-steps", "2", "--steps", "1", "--refine", "0",
                     "--invert-guidance", "3", "--no-upsample"]) == 0
    assert _settings(out)["settings"]["invert_guidance"] == 3.0


def test_text_diff_cli_and_grouped_command(pipe_dir, image_files, tmp_path, capsys):
    out = tmp_path / "td"
    code = main(["text-diff", str(image_files / "img0.png"), "a red circle", "a blue square",
                 "--model", str(pipe_dir), "--out", str(out), "--theta-max", "0.3", "--n-steps", "2", "--steps", "1",
                 "--x-T", "fixed", "--no-upsample"])
    assert code == 0, capsys.readouterr().err
    s = _settings(out)
    assert s["analysis"] == "text_diff" and s["settings"]["theta_max"] == 0.3
    assert s["settings"]["image"].endswith("img0.png")
    np.testing.assert_allclose(pd.read_csv(out / "frames.csv")["theta"], [0.0, 0.3])


def test_cli_errors_are_one_line(pipe_dir, image_files, tmp_path, capsys):
    img = str(image_files / "img0.png")
    assert main(["text-diff", img, "a", "b", "--model", str(pipe_dir), "--out", str(tmp_path), "--theta-max",
                 "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --theta-max: must be a number in [0, 1], got '2'") and err.count("\n") == 1
    assert main(["interpolate", str(tmp_path / "nope.png"), img, "--model", str(pipe_dir), "--out",
                 str(tmp_path)]) == 2
    assert "a: image file not found" in capsys.readouterr().err
    assert main(["interpolate", "a", "b", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["interpolate", "a red circle", img, "--x-T", "inverted", "--model", str(pipe_dir), "--out",
                 str(tmp_path)]) == 2
    assert "needs images at both ends, but a is a caption" in capsys.readouterr().err
    # frames decode with DDIM at eta 0: the analyses take no decoder sampler or eta
    for option in (["--sampler", "ddpm"], ["--eta", "0.5"]):
        assert main(["interpolate", "a", "b", "--model", str(pipe_dir), "--out", str(tmp_path), *option]) == 2
        assert f"unrecognized arguments: {' '.join(option)}" in capsys.readouterr().err


def test_pca_recon_cli(pipe, pipe_dir, image_files, tmp_path, capsys):
    store = embed_items(pipe.clip, image_files, tmp_path / "fit", kind="image", progress=False, dtype="float32")
    out = tmp_path / "recon"
    code = main(["pca-recon", str(image_files / "img0.png"), str(image_files / "img1.png"), "--model", str(pipe_dir),
                 "--fit-store", str(store.path), "--out", str(out), "--ks", "2,16", "--steps", "1", "--no-upsample"])
    assert code == 0, capsys.readouterr().err
    df = pd.read_csv(out / "recon.csv")
    assert list(df["k"]) == [2, 16, 2, 16] and list(df["image"]) == [0, 0, 1, 1]
    s = _settings(out)
    assert s["settings"]["n_fit"] == 6 and s["settings"]["ks"] == [2, 16] and s["settings"]["fit"] == str(store.path)
    assert read_png_meta(out / "grid.png")["ks"] == [2, 16]
    assert s["settings"]["sampling"]["decoder_steps"] == 1 and s["settings"]["guidance"] == 3.0
    assert main(["pca-recon", str(image_files / "img0.png"), "--model", str(pipe_dir), "--fit-store",
                 str(store.path), "--out", str(out), "--ks", "99"]) == 2
    assert "k=99 exceeds the embedding dimension 16" in capsys.readouterr().err
    # a store of another CLIP model cannot fit this pipeline's PCA
    other = embed_items(FakeEncoder(), image_files, tmp_path / "fake-fit", kind="image", progress=False)
    with pytest.raises(ValueError, match="cannot mix models"):
        analysis_api.pca_reconstructions(pipe, [noise_image(0)], fit_store=other, ks=[2])
    with pytest.raises(ValueError, match="pass exactly one of fit_store"):
        analysis_api.pca_reconstructions(pipe, [noise_image(0)])


def test_project_cli_writes_html_and_csv(text_store, tmp_path, capsys):
    out = tmp_path / "proj"
    assert main(["project", str(text_store.path), "--method", "pca", "--out", str(out), "--color", "kind"]) == 0
    points = pd.read_csv(out / "points.csv")
    assert len(points) == len(CAPTIONS) and {"x", "y", "id", "source", "kind"} <= set(points.columns)
    want = fit_projection(np.asarray(text_store.vectors), "pca", seed=0).embedding_
    np.testing.assert_allclose(points[["x", "y"]].to_numpy(), want, atol=1e-5)
    html = (out / "scatter.html").read_text()
    assert "plotly" in html.lower() and "a red circle" in html
    s = _settings(out)
    assert s["analysis"] == "project" and s["settings"]["method"] == "pca" and s["model"]["model"] == "test-fake"
    assert main(["project", str(text_store.path), "--method", "pca", "--out", str(out), "--color", "colour"]) == 2
    assert "color='colour' is not a metadata column of the store; columns: id" in capsys.readouterr().err
    assert main(["project", str(tmp_path / "nostore"), "--method", "pca", "--out", str(out)]) == 2
    assert "no embedding store at" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no rows of kind 'image'"):
        analysis_api.project(text_store, method="pca", kind="image")


def test_metrics_cli_and_errors(text_store, tmp_path, capsys):
    fake = embed_items(FakeEncoder(), [c + " on grey" for c in CAPTIONS], tmp_path / "fake", kind="text",
                       progress=False, dtype="float32")
    out = tmp_path / "m"
    assert main(["metrics", str(text_store.path), str(fake.path), "--out", str(out), "--kind", "text", "-k",
                 "3"]) == 0
    df = pd.read_csv(out / "metrics.csv")
    want = metric_table(np.asarray(text_store.vectors), np.asarray(fake.vectors), k=3)
    np.testing.assert_allclose(df["value"], want["value"], rtol=1e-9)
    assert list(df["metric"]) == ["fd", "cmmd", "precision", "recall", "density", "coverage"]
    s = _settings(out)
    assert s["settings"]["k"] == 3 and s["settings"]["fake"]["store"] == str(fake.path)
    same = analysis_api.metrics(text_store, text_store, kind="text")
    assert same.set_index("metric").loc["cmmd", "value"] == 0.0
    # errors: mismatched dimensions, other model, empty store, NaN arrays
    other = embed_items(FakeEncoder(dim=8), CAPTIONS[:6], tmp_path / "d8", kind="text", progress=False)
    with pytest.raises(ValueError, match="real has dimension 16 but fake has 8"):
        analysis_api.metrics(text_store, other, kind="text")
    renamed = embed_items(FakeEncoder(model_id="fake-other"), CAPTIONS, tmp_path / "o", kind="text", progress=False)
    with pytest.raises(ValueError, match="embed both with the same CLIP model"):
        analysis_api.metrics(text_store, renamed, kind="text")
    empty = EmbeddingStore.create(tmp_path / "empty", "test-fake", "fake-16", 16)
    assert main(["metrics", str(empty.path), str(fake.path), "--out", str(out), "--kind", "all"]) == 2
    assert "real is empty" in capsys.readouterr().err
    bad = np.ones((4, 16))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="fake contains NaN"):
        analysis_api.metrics(np.ones((4, 16)), bad)
    with pytest.raises(ValueError, match="has no rows of kind 'image'"):
        analysis_api.metrics(text_store, fake)


def test_commands_are_listed_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-m", "explorer", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("interpolate", "text-diff", "project", "pca-recon", "metrics"):
        assert f"\n    {name}" in proc.stdout


@pytest.mark.slow
def test_project_umap_default(text_store, tmp_path):
    # umap-learn compiles with numba on first use (tens of seconds): slow
    r = analysis_api.project(text_store, n_neighbors=5, out=tmp_path / "u")
    assert r.settings["method"] == "umap" and r.frame[["x", "y"]].notna().all().all()
    again = analysis_api.project(text_store, n_neighbors=5)
    np.testing.assert_allclose(again.frame[["x", "y"]], r.frame[["x", "y"]])  # seeded: reproducible
    assert len(pd.read_csv(tmp_path / "u" / "points.csv")) == len(CAPTIONS)


def test_project_rows_and_custom_axes_are_library_calls(text_store):
    """The dashboard's re-projection of a selection and its custom axes live in explorer.analysis_api."""
    frame, proj = analysis_api.project_rows(text_store, [0, 2, 3, 5], method="pca", kind="text")
    assert len(frame) == 4 and proj.n_components == 2
    with pytest.raises(ValueError, match="the selection is empty"):
        analysis_api.project_rows(text_store, [], kind="text")
    with pytest.raises(ValueError, match=r"rows must lie in \[0, \d+\)"):
        analysis_api.project_rows(text_store, [10**6], kind="text")
    with pytest.raises(ValueError, match="has no rows of kind 'image'"):
        analysis_api.project_rows(text_store, [0], kind="image")


def test_variations_command_writes_a_grid_and_cosines(pipe_dir, image_files, tmp_path, capsys):
    out = tmp_path / "var"
    assert main(["variations", str(image_files / "img0.png"), "--model", str(pipe_dir), "--out", str(out), "--n", "3",
                 "--steps", "2", "--seed", "5", "--no-upsample"]) == 0
    frame = pd.read_csv(out / "variations.csv")
    assert list(frame["index"]) == [0, 1, 2] and frame["sim_original"].between(-1, 1).all()
    s = _settings(out)
    assert s["analysis"] == "variations" and s["seed"] == 5 and s["settings"]["sampling"]["decoder_steps"] == 2
    assert s["settings"]["sampling"]["eta"] == 1.0  # variations sample DDIM with eta 1 (fresh noise each step)
    assert sorted(p.name for p in out.glob("variation-*.png")) == [f"variation-{k:03d}.png" for k in range(3)]
    a, b = (np.asarray(Image.open(out / f"variation-{k:03d}.png"), float) for k in (0, 1))
    assert np.abs(a - b).mean() > 0.5  # different noises, different pictures
    assert main(["variations", str(image_files / "img0.png"), "--model", str(pipe_dir), "--out", str(out),
                 "--noise-level", "300"]) == 2
    assert "noise" in capsys.readouterr().err
