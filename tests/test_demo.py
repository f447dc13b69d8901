"""`unclip-explorer demo` end to end on the tiny random models: CLIP sections plus the unCLIP pictures."""
import json
import re

import pandas as pd
import pytest
from PIL import Image

from analyses.tiling import PAD, make_grid
from explorer import demo
from explorer.cli import main
from explorer.demo import DEMO_CAPTIONS, GeneratorSettings, run_demo, run_generator
from explorer.records import read_png_meta

from tiny_models import write_tiny_pipeline

TINY = GeneratorSettings(captions=("a red circle", "a blue square"), n_seeds=2, n_variations=2, n_frames=3, n_theta=3,
                         sampling={"decoder_steps": 2, "prior_steps": 2, "invert_refine": 0, "upsampler_steps": (2,)})


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def demo_out(pipe_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, n=8, seed=3, model=str(pipe_dir.parent / "clip"), k=3, progress=False, pipeline=str(pipe_dir),
             generator=TINY)
    return out


def test_every_file_exists_and_pngs_carry_provenance(demo_out):
    u = demo_out / "unclip"
    expected = ["text_to_image.png", "variations.png", "interpolation.png", "text_diff.png", "text_diff.csv",
                "interpolation.csv", "inputs/a-purple-star-above-an-orange-circle.png",
                "inputs/a-large-red-circle.png", "inputs/a-large-blue-square.png", "variations/00.png",
                "variations/01.png",
                "cascade/decoder.png", "cascade/upsampler1.png"]
    expected += [f"text_to_image/r{i}-seed{s}.png" for i in range(2) for s in (3, 4)]
    for name in expected:
        assert (u / name).is_file(), name
    assert sorted(p.relative_to(u).as_posix() for p in u.rglob("*") if p.is_file()) == sorted(expected)
    for name in ("index.html", "settings.json", "neighbours.csv", "pca.html"):
        assert (demo_out / name).is_file()
    for png in u.rglob("*.png"):
        assert read_png_meta(png), f"{png} has no provenance"
    cell = read_png_meta(u / "text_to_image/r1-seed4.png")
    assert cell["prompt"] == "a blue square" and cell["seed"] == 4 and cell["model"] == "tiny-unclip"
    assert cell["sampling"]["decoder_steps"] == 2 and cell["sampling"]["prior_steps"] == 2
    assert len(cell["z_i_hash"]) == 16
    # every cell says whether the read-out finds its caption in it (a random tiny model: it does not)
    assert cell["readout_agrees"] is False and cell["world"] == 2
    grid_meta = read_png_meta(u / "text_to_image.png")
    assert grid_meta["readout_agrees"] == "0 of 4" and grid_meta["world"] == 2
    var = read_png_meta(u / "variations/01.png")
    assert var["sampling"]["eta"] == 1.0 and var["task"] == "variations"  # pipe.variation_sampling: DDIM eta 1
    assert var["sampling"]["decoder_steps"] == 2 and cell["sampling"]["eta"] == 0.0
    assert var["input"] == "inputs/a-purple-star-above-an-orange-circle.png"
    inter = read_png_meta(u / "interpolation.png")
    assert inter["x_T_mode"] == "inverted" and inter["n_steps"] == 3 and inter["model"] == "tiny-unclip"
    assert inter["sampling"]["invert_refine"] == 0 and inter["sampling"]["decoder_steps"] == 2
    td = read_png_meta(u / "text_diff.png")
    assert (td["old_caption"], td["new_caption"], td["x_T_mode"]) == ("a red circle", "a blue circle", "inverted")
    up = read_png_meta(u / "cascade/upsampler1.png")
    assert up["stage"] == "upsampler1" and up["upsampler_steps"] == [2]


def test_grid_and_picture_sizes_are_exact(demo_out):
    u = demo_out / "unclip"
    for png in (u / "text_to_image").glob("*.png"):
        assert Image.open(png).size == (16, 16)  # the tiny decoder's resolution
    assert Image.open(u / "cascade/decoder.png").size == (16, 16)
    assert Image.open(u / "cascade/upsampler1.png").size == (32, 32)
    # the grid is exactly make_grid of the saved cells with the same labels
    rows = [[Image.open(u / f"text_to_image/r{i}-seed{s}.png") for s in (3, 4)] for i in range(2)]
    grid = Image.open(u / "text_to_image.png")
    assert grid.size == make_grid(rows, list(TINY.captions), ["seed 3", "seed 4"]).size
    ref = make_grid([[Image.new("RGB", (16, 16))] * 3], None, ["a", "b", "c"])
    for name, n_cols in (("variations.png", 3), ("text_diff.png", 4)):  # input + frames, 64px cells
        im = Image.open(u / name)
        assert im.size == (n_cols * (64 + PAD) + PAD, ref.size[1]), name
    inter = Image.open(u / "interpolation.png")  # 3 frames plus a row label "a-large-red-circle.png -> ..."
    assert inter.size[1] == ref.size[1] and inter.size[0] > ref.size[0]


def test_text_diff_csv_and_interpolation_frames(demo_out):
    df = pd.read_csv(demo_out / "unclip/text_diff.csv")
    assert list(df.columns) == ["frame", "theta", "sim_old", "sim_new", "sim_input", "z_cos_input", "z_cos_new",
                                "l1_input"]
    assert df["theta"].tolist() == pytest.approx([0.0, 0.25, 0.5])
    assert df["z_cos_input"].iloc[0] == pytest.approx(1.0, abs=1e-6)  # theta 0 is the image's own z_i
    fr = pd.read_csv(demo_out / "unclip/interpolation.csv")
    assert fr["t"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert fr["z_cos_a"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    assert fr["z_cos_b"].iloc[-1] == pytest.approx(1.0, abs=1e-6)


def test_index_references_every_picture_and_settings_record_seeds(demo_out):
    page = (demo_out / "index.html").read_text()
    u = demo_out / "unclip"
    for png in u.rglob("*.png"):
        assert f"'unclip/{png.relative_to(u).as_posix()}'" in page, png
    assert "'unclip/text_diff.csv'" in page and "'unclip/interpolation.csv'" in page
    titles = ("Text to image", "Variations", "Image to image interpolation", "Text diff", "Cascade: 16px -&gt; 32px")
    for title in titles:
        assert title in page, title
    assert page.count("<table class='settings'>") == 5
    assert "a red circle left of a blue square" in page  # the CLIP neighbour section is still there
    s = json.loads((demo_out / "settings.json").read_text())
    assert s["command"] == "demo" and s["versions"]["torch"]
    gen = s["settings"]["generator"]
    assert gen["pipeline"].endswith("tiny-unclip") and gen["pipeline_model"]["model"] == "tiny-unclip"
    assert gen["seeds"] == {"text_to_image": [3, 4], "variations": 3, "interpolation": 3, "text_diff": 3}
    assert gen["settings"]["sampling"]["decoder_steps"] == 2
    assert gen["settings"]["captions"] == ["a red circle", "a blue square"]
    assert s["model"]["model"].endswith("clip") and s["seed"] == 3
    assert sorted(gen["pictures"]) == ["Cascade: 16px -> 32px", "Image to image interpolation", "Text diff",
                                       "Text to image", "Variations"]


def test_generator_is_seeded(pipe_dir, demo_out, tmp_path):
    from unclip_core.pipeline import UnCLIP
    s = GeneratorSettings(captions=("a red circle", "a blue square"), n_seeds=1, n_variations=2, n_frames=2,
                          n_theta=2, cascade_stages=0,
                          sampling={"decoder_steps": 2, "prior_steps": 2, "invert_refine": 0})
    records = run_generator(UnCLIP.load(str(pipe_dir)), tmp_path, seed=3, settings=s, progress=False)
    assert [r["title"] for r in records] == ["Text to image", "Variations", "Image to image interpolation",
                                            "Text diff"]
    assert not (tmp_path / "cascade").exists()
    for name in ("text_to_image/r0-seed3.png", "text_to_image/r1-seed3.png", "variations/00.png"):
        assert list(Image.open(tmp_path / name).getdata()) == list(Image.open(demo_out / "unclip" / name).getdata())


def test_without_a_pipeline_the_page_says_it_is_not_bundled(pipe_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "list_bundled", lambda: ["shapes-clip"])
    assert demo.default_pipeline() is None
    run_demo(tmp_path, n=6, model=str(pipe_dir.parent / "clip"), k=2, progress=False)
    page = (tmp_path / "index.html").read_text()
    assert re.search(r"shapes-unclip</code> is not bundled yet", page)
    assert "--pipeline DIR" in page and not (tmp_path / "unclip").exists()
    gen = json.loads((tmp_path / "settings.json").read_text())["settings"]["generator"]
    assert gen["pipeline"] is None and "not bundled yet" in gen["note"]
    run_demo(tmp_path, n=6, model=str(pipe_dir.parent / "clip"), k=2, progress=False, pipeline="none")
    assert "No generator pipeline was requested" in (tmp_path / "index.html").read_text()


def test_default_pipeline_is_the_bundled_generator(monkeypatch):
    monkeypatch.setattr(demo, "list_bundled", lambda: ["shapes-clip", "shapes-unclip"])
    assert demo.default_pipeline() == "shapes-unclip"


def test_cli_demo(pipe_dir, tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--n", "6", "--model", str(pipe_dir.parent / "clip"),
                 "--pipeline", str(pipe_dir), "--captions", "a green star", "--n-seeds", "1", "--steps", "1",
                 "--prior-steps", "1", "--n-variations", "1", "--n-frames", "2", "--n-theta", "2", "--refine", "0",
                 "--no-upsample", "--seed", "5", "--no-progress"])
    assert code == 0 and "demo written" in capsys.readouterr().out
    assert read_png_meta(tmp_path / "unclip/text_to_image/r0-seed5.png")["prompt"] == "a green star"
    assert json.loads((tmp_path / "settings.json").read_text())["settings"]["generator"]["settings"]["cascade_stages"] == 0
    assert not (tmp_path / "unclip/cascade").exists()
    # a rerun with another --n rebuilds the scenes and the store it depends on, and reports the n it used
    assert main(["demo", "--out", str(tmp_path), "--n", "8", "--model", str(pipe_dir.parent / "clip"),
                 "--pipeline", "none", "--no-progress"]) == 0
    assert json.loads((tmp_path / "settings.json").read_text())["settings"]["n"] == 8
    assert json.loads((tmp_path / "shapes/meta.json").read_text())["n"] == 8
    from explorer.store import EmbeddingStore
    assert len(EmbeddingStore.open(tmp_path / "store")) == 8


def test_cli_errors(pipe_dir, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--pipeline", "no-such-pipeline", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pipeline 'no-such-pipeline' could not be loaded" in err and "--pipeline none" in err
    assert not (tmp_path / "shapes").exists()  # failed before the slow part
    assert main(["demo", "--out", str(tmp_path), "--pipeline", str(pipe_dir), "--full-cascade",
                 "--model", str(pipe_dir.parent / "clip"), "--n", "4", "--no-progress", "--steps", "1",
                 "--prior-steps", "1", "--n-seeds", "1", "--captions", "a red circle"]) == 2
    assert "cascade_stages=2 needs 2 upsamplers but pipeline 'tiny-unclip' has 1" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--steps", "0", "--pipeline", "none"]) == 2
    assert "error: argument --steps: must be an integer >= 1, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, match", [
    ({"captions": "a red circle"}, TypeError, "captions must be a non-empty tuple"),
    ({"captions": ()}, TypeError, "captions must be a non-empty tuple"),
    ({"captions": ("a red circle", " ")}, ValueError, r"captions\[1\] must be a non-empty string"),
    ({"n_seeds": 0}, ValueError, "n_seeds must be >= 1, got 0"),
    ({"n_frames": 1}, ValueError, "n_frames must be >= 2, got 1"),
    ({"n_theta": 1}, ValueError, "n_theta must be >= 2, got 1"),
    ({"sampling": {"invert_refine": -1}}, ValueError, "invert_refine must be >= 0, got -1"),
    ({"sampling": {"decoder_steps": 2.5}}, TypeError, "decoder_steps must be an integer >= 1"),
    ({"sampling": {"decoder_guidance": -1.0}}, ValueError, r"guidance must lie in \[0, 100\]"),
    ({"sampling": {"eta": float("nan")}}, ValueError, r"eta must be a number in \[0, 1\]"),
    ({"sampling": {"eta": 0.5, "decoder_sampler": "dpmpp_2m"}}, ValueError, "'dpmpp_2m' does not take eta"),
    ({"sampling": {"steps": 2}}, ValueError, r"unknown sampling settings \['steps'\]"),
    ({"sampling": 25}, TypeError, "sampling must be a SamplingConfig"),
    ({"steps": 2}, TypeError, "unexpected keyword argument 'steps'"),
    ({"theta_max": 1.5}, ValueError, r"theta_max must lie in \[0, 1\]"),
    ({"cascade_stages": 3}, ValueError, "cascade_stages=3 is not known; accepted: 0, 1, 2"),
    ({"sampling": {"upsampler_steps": ()}}, ValueError, "upsampler_steps must name at least one step count"),
    ({"sampling": {"upsampler_steps": "27"}}, TypeError, "upsampler_steps must be a sequence of step counts"),
    ({"sampling": {"upsampler_steps": (27, 0)}}, ValueError, "upsampler_steps entry must be >= 1, got 0"),
])
def test_settings_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        GeneratorSettings(**kwargs)


def test_run_demo_and_run_generator_errors(pipe_dir, tmp_path):
    with pytest.raises(TypeError, match="generator must be a GeneratorSettings or None, got dict"):
        run_demo(tmp_path, pipeline="none", generator={"steps": 2})
    with pytest.raises(TypeError, match="pipeline must be a bundled name, a pipeline folder, 'auto' or None, got int"):
        run_demo(tmp_path, pipeline=3)
    with pytest.raises(TypeError, match="pipe must be an unclip_core.pipeline.UnCLIP"):
        run_generator(object(), tmp_path)
    from unclip_core.pipeline import UnCLIP
    with pytest.raises(TypeError, match="settings must be a GeneratorSettings, got dict"):
        run_generator(UnCLIP.load(str(pipe_dir)), tmp_path, settings={})
    assert GeneratorSettings().captions == DEMO_CAPTIONS


@pytest.mark.parametrize("absolute", [False, True])
def test_every_img_src_resolves_relative_to_index_html(pipe_dir, tmp_path, monkeypatch, absolute):
    """--out nested, relative (or absolute) and run from another cwd: every <img src> (the neighbour thumbnails)
    is a path relative to index.html that names a file, and still does after the folder moves."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "runs/nested/demo"
    assert main(["demo", "--out", str(out) if absolute else "../runs/nested/demo", "--n", "6",
                 "--model", str(pipe_dir.parent / "clip"), "--pipeline", "none", "--no-progress"]) == 0
    moved = tmp_path / "moved"
    out.rename(moved)
    srcs = re.findall(r"<img src=['\"]([^'\"]+)['\"]", (moved / "index.html").read_text())
    assert len(srcs) == 3 * 6  # k=6 neighbours of each of the 3 queries, all images (the store holds only images)
    for src in srcs:
        assert not src.startswith(("/", "data:")) and ".." not in src.split("/"), src
        assert (moved / src).is_file(), src


@pytest.mark.parametrize("world", [1, 2])
def test_readout_agreement_marks_renders_of_the_caption_and_not_others(world):
    from explorer.demo import _framed, _render, readout_agreement
    images = [_render("a large red circle", 0, 64, world), _render("a small blue square left of a green star", 1, 64,
                                                                   world)]
    assert readout_agreement(images, ["a large red circle", "a small blue square left of a green star"],
                             world) == [True, True]
    assert readout_agreement(images, ["a large blue circle", "a small blue star left of a green square"],
                             world) == [False, False]
    framed = _framed(images[0], True)
    assert framed.size == (70, 70) and framed.getpixel((0, 0)) == (40, 200, 90)
    assert _framed(images[0], False).getpixel((1, 1)) == (230, 40, 40)
