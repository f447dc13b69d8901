"""The Streamlit dashboards driven by streamlit.testing AppTest: every page, interactions asserted by values shown."""
import argparse
import base64
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import explorer
from analyses.binding import clip_scores, clip_summary
from analyses.binding_suite import make_suite
from dashboards import _state as S
from explorer.binding import run_suite
from explorer.cli import main
from explorer.commands import dashboard as dashboard_cmd
from pipeline_fixture import pipe, pipe_dir  # noqa: F401 (module-scoped fixtures)
from unclip_core.clip import ClipEncoder, bundled_world
from explorer.records import read_png_meta

PAGES = Path(__file__).resolve().parent.parent / "dashboards" / "views"
pytestmark = pytest.mark.filterwarnings("ignore:prompt", "ignore:.*ScriptRunContext")


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=120)


def png(seed: int, size: int = 16) -> bytes:
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def chart_points(at: AppTest, index: int = 0) -> int:
    """Number of points in a plotly chart's data (plotly >= 6 ships arrays as base64 'bdata')."""
    spec = json.loads(at.get("plotly_chart")[index].proto.spec)
    n = 0
    for trace in spec["data"]:
        x = trace["x"]
        n += len(np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])) if isinstance(x, dict) else len(x)
    return n


@pytest.fixture(scope="module")
def tiny_store(pipe_dir, tmp_path_factory):
    """Image embeddings of 10 noise images made with the tiny pipeline's CLIP (a PCA fit store)."""
    images = [Image.open(io.BytesIO(png(s))) for s in range(10)]
    out = tmp_path_factory.mktemp("tiny") / "store"
    return explorer.embed(images, ClipEncoder.load(str(pipe_dir / "clip")), out, kind="image", progress=False)


@pytest.fixture(scope="module")
def shapes_store(tmp_path_factory):
    """40 ShapesWorld scenes embedded with the bundled shapes-clip (images and captions)."""
    root = tmp_path_factory.mktemp("shapes")
    explorer.export_shapes(root / "export", n=40, seed=0, progress=False)
    return explorer.embed(root / "export", "shapes-clip", root / "store", progress=False)


@pytest.fixture(scope="module")
def binding_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("binding")
    suite = explorer.binding.write_suite(make_suite(24, seed=0, kinds=["caption_pair", "winoground"], world=bundled_world()),
                                         root / "suite.jsonl")
    return run_suite(suite, "shapes-clip", root / "run", probes=False, progress=False), suite


@pytest.fixture()
def lab(monkeypatch, pipe_dir):
    monkeypatch.setenv(S.ENV_MODEL, str(pipe_dir))
    monkeypatch.delenv(S.ENV_STORE, raising=False)
    at = page("latent_lab")
    at.run()
    at.slider(key="sampling_decoder_steps").set_value(2)
    return at


# ------------------------------------------------------------------------------------------------ entry
def test_app_navigates_between_the_three_pages(monkeypatch, pipe_dir):
    monkeypatch.setenv(S.ENV_MODEL, str(pipe_dir))
    at = AppTest.from_file(str(PAGES.parent / "app.py"), default_timeout=120)
    at.run()
    no_errors(at)
    assert at.title[0].value == "Latent lab"
    for view, title in (("projections", "Projections"), ("binding", "Binding")):
        at.switch_page(f"views/{view}.py").run()
        assert not at.exception and at.title[0].value == title


# ------------------------------------------------------------------------------------------------ latent lab
def test_latent_lab_without_a_generator_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv(S.ENV_MODEL, raising=False)
    monkeypatch.setattr("unclip_core.checkpoint.list_bundled", lambda: ["shapes-clip"])
    at = page("latent_lab")
    at.run()
    no_errors(at)
    assert "shapes-unclip" in at.info[0].value and "--model PIPELINE_FOLDER" in at.info[0].value
    assert not at.tabs  # the page stops before its tools


def test_latent_lab_unknown_model_is_a_message(monkeypatch):
    monkeypatch.setenv(S.ENV_MODEL, "no-such-model")
    at = page("latent_lab")
    at.run()
    assert not at.exception
    assert "neither a bundled model nor an existing path" in at.error[0].value


def test_text_to_image_shows_the_seeded_images(lab, pipe):
    lab.slider(key="sampling_prior_steps").set_value(2)
    lab.number_input(key="t2i_n").set_value(2)
    lab.number_input(key="seed").set_value(7)
    lab.button(key="t2i_go").click().run()
    no_errors(lab)
    shown = lab.session_state["t2i"]
    ref = pipe.text_to_image("a small red circle left of a large blue square", n=2, seed=7,
                             sampling={"decoder_steps": 2, "decoder_guidance": 3.0, "prior_steps": 2,
                                       "prior_guidance": 4.0})
    assert shown.settings["sampling"] == ref.settings["sampling"]
    assert len(shown.images) == 2
    for a, b in zip(shown.images, ref.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    captions = [c for im in lab.get("image") for c in im.captions]
    assert "a small red circle left of a large blue square #1" in captions
    # add to gallery -> the gallery tab counts it
    lab.button(key="gal_t2i-1").click().run()
    assert len(lab.session_state["gallery"]) == 1
    assert any("1 image(s) kept" in c.value for c in lab.caption)


def test_too_long_prompt_is_refused_in_the_page(lab):
    lab.text_input(key="t2i_prompt").set_value("a red circle " * 20)
    lab.button(key="t2i_go").click().run()
    assert not lab.exception
    assert "too long" in lab.error[0].value and "Shorten it" in lab.error[0].value
    assert "t2i" not in lab.session_state


def test_the_negative_prompt_input_is_only_for_pipelines_that_take_one(lab, pipe):
    """ShapesWorld's unconditional branch is a learned null: the text-to-image tab has no negative prompt."""
    assert not pipe.takes_negative_prompt
    keys = [w.key for w in lab.text_input]
    assert "t2i_prompt" in keys and "t2i_negative" not in keys


def test_variations_and_a_non_image_upload(lab, pipe):
    lab.file_uploader(key="var_upload").set_value(("notes.png", b"this is not a picture", "image/png"))
    lab.run()
    assert not lab.exception
    assert "'notes.png' is not an image" in lab.error[0].value
    lab.file_uploader(key="var_upload").set_value(("noise.png", png(1), "image/png"))
    lab.number_input(key="var_n").set_value(2)
    lab.button(key="var_go").click().run()
    no_errors(lab)
    _, out = lab.session_state["var"]
    ref = pipe.variations(Image.open(io.BytesIO(png(1))).convert("RGB"), n=2, seed=0,
                          sampling={"eta": 1.0, "decoder_steps": 2, "decoder_guidance": 3.0})
    assert out.settings["sampling"]["eta"] == 1.0 and out.settings["sampling"]["decoder_steps"] == 2
    assert [np.asarray(a).tolist() for a in out.images] == [np.asarray(b).tolist() for b in ref.images]


def test_interpolation_strip_and_theta_slider(lab):
    lab.slider(key="ip_n").set_value(3)
    lab.button(key="ip_go").click().run()
    no_errors(lab)
    table = lab.dataframe[0].value
    assert table["t"].tolist() == [0.0, 0.5, 1.0]
    assert np.allclose(table["z_cos_a"].iloc[0], 1.0) and np.allclose(table["z_cos_b"].iloc[-1], 1.0)
    lab.select_slider(key="ip_t").set_value(1.0).run()
    assert any("frame 2, t=1.00" in c for im in lab.get("image") for c in im.captions)
    # inverted x_T needs images at both ends: the library's message, in the page
    lab.radio(key="ip_mode").set_value("inverted")
    lab.button(key="ip_go").click().run()
    assert not lab.exception and "needs images at both ends" in lab.error[0].value


def test_text_diff_theta_max_slider(lab):
    lab.file_uploader(key="td_upload").set_value(("img.png", png(2), "image/png"))
    lab.slider(key="td_theta").set_value(0.4)
    lab.slider(key="td_n").set_value(3)
    lab.radio(key="td_mode").set_value("fixed")
    lab.button(key="td_go").click().run()
    no_errors(lab)
    frame = lab.session_state["td"].frame
    assert np.allclose(frame["theta"], [0.0, 0.2, 0.4])
    assert np.allclose(lab.dataframe[0].value["theta"], [0.0, 0.2, 0.4])
    assert frame["z_cos_input"].iloc[0] == pytest.approx(1.0)


def test_pca_reconstruction_k_slider_and_a_store_of_another_model(lab, tiny_store, shapes_store):
    lab.file_uploader(key="pca_upload").set_value(("img.png", png(3), "image/png"))
    lab.text_input(key="pca_store").set_value(str(shapes_store.path)).run()
    lab.button(key="pca_go").click().run()
    assert not lab.exception
    assert "cannot mix models" in lab.error[0].value
    lab.text_input(key="pca_store").set_value(str(tiny_store.path)).run()
    assert lab.slider(key="pca_k").max == 10  # min(10 image rows, dim 16)
    lab.slider(key="pca_k").set_value(4)
    lab.button(key="pca_go").click().run()
    no_errors(lab)
    frame = lab.dataframe[0].value
    assert frame["k"].tolist() == [4, 16]
    assert frame["z_cos"].iloc[1] == pytest.approx(1.0)  # k = dim is the untruncated z_i
    assert frame["z_cos"].iloc[0] < 1.0


def test_png_download_carries_the_settings():
    data = S.png_bytes(Image.new("RGB", (8, 8), (255, 0, 0)), {"seed": 3, "model": "tiny", "steps": 2})
    path = Path(__import__("tempfile").mkdtemp()) / "x.png"
    path.write_bytes(data)
    assert read_png_meta(path) == {"seed": 3, "model": "tiny", "steps": 2}
    assert Image.open(path).getpixel((0, 0)) == (255, 0, 0)


def test_read_upload_rejects_non_images():
    assert S.read_upload(png(0)).size == (16, 16)
    with pytest.raises(ValueError, match="is not an image PIL can read"):
        S.read_upload(b"\x00\x01 not a png")


# ------------------------------------------------------------------------------------------------ projections
@pytest.fixture()
def proj(monkeypatch, shapes_store):
    monkeypatch.setenv(S.ENV_STORE, str(shapes_store.path))
    at = page("projections")
    at.run()
    return at


def test_projection_shows_every_point_of_the_chosen_kind(proj, shapes_store):
    no_errors(proj)
    assert proj.selectbox(key="pj_kind").value == "image"
    assert chart_points(proj) == 40
    proj.selectbox(key="pj_kind").set_value("all").run()
    assert chart_points(proj) == len(shapes_store) == 80
    proj.selectbox(key="pj_method").set_value("tsne").run()
    no_errors(proj)
    assert chart_points(proj) == 80


def test_selection_table_and_reprojection(proj, shapes_store):
    proj.selectbox(key="pj_filter_col").set_value("caption")
    proj.text_input(key="pj_filter_text").set_value("red").run()
    no_errors(proj)
    meta = shapes_store.metadata
    images = meta[meta["kind"] == "image"]
    n_red = int(images["caption"].str.contains("red", case=False).sum())
    assert 0 < n_red < 40
    assert any(f"**{n_red} selected points**" == m.value for m in proj.markdown)
    assert len(proj.dataframe[0].value) == n_red
    proj.button(key="pj_reproject").click().run()
    no_errors(proj)
    sub_frame, sub_proj = proj.session_state["pj_sub"]
    assert len(sub_frame) == n_red and sub_proj.embedding_.shape == (n_red, 2)
    assert chart_points(proj, 1) == n_red


def test_empty_selection_is_a_warning(proj):
    proj.text_input(key="pj_filter_text").set_value("no caption has this").run()
    assert not proj.exception
    assert "0 points" in proj.warning[0].value


def test_selected_rows_reads_customdata():
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 2.0]})
    event = {"selection": {"points": [{"customdata": [2, "b"]}, {"customdata": [0, "a"]}, {"customdata": [9]}],
                           "box": [{}]}}
    assert S.selected_rows(event, frame) == [0, 2]
    assert S.selected_rows({"selection": {"points": []}}, frame) == []
    assert S.selected_rows(None, frame) == []


def test_neighbours_of_a_caption_and_of_a_point(proj, shapes_store):
    proj.text_input(key="nn_query_caption").set_value("a red circle")
    proj.number_input(key="nn_k").set_value(5)
    proj.button(key="nn_go").click().run()
    no_errors(proj)
    shown = proj.dataframe[-1].value
    ref = explorer.neighbors(shapes_store, text="a red circle", k=5)
    assert shown["id"].tolist() == ref["id"].tolist()
    assert shown["score"].iloc[0] == pytest.approx(ref["score"].iloc[0])
    proj.radio(key="nn_by").set_value("point id").run()
    proj.text_input(key="nn_query_point id").set_value("image:images/000007.png")
    proj.button(key="nn_go").click().run()
    no_errors(proj)
    top = proj.dataframe[-1].value.iloc[0]
    assert top["id"] == "image:images/000007.png" and top["score"] == pytest.approx(1.0, abs=1e-3)


def test_query_with_another_model_than_the_store_is_a_message(proj, pipe_dir):
    proj.text_input(key="nn_model").set_value(str(pipe_dir / "clip"))
    proj.button(key="nn_go").click().run()
    assert not proj.exception
    assert "cannot mix models" in proj.error[0].value


def test_custom_axes_are_cosines_to_caption_directions(proj, shapes_store):
    proj.button(key="ax_go").click().run()
    no_errors(proj)
    ax, _ = proj.session_state["ax"]
    enc = ClipEncoder.load("shapes-clip")
    z_t = enc.encode_text(["a red circle", "a blue circle", "a small circle", "a large circle"]).double().numpy()
    d1 = (z_t[0] - z_t[1]) / np.linalg.norm(z_t[0] - z_t[1])
    d2 = (z_t[2] - z_t[3]) / np.linalg.norm(z_t[2] - z_t[3])
    keep = (shapes_store.metadata["kind"] == "image").to_numpy()
    Z = np.asarray(shapes_store.vectors[keep], np.float64)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    assert np.allclose(ax["x"], Z @ d1, atol=1e-6) and np.allclose(ax["y"], Z @ d2, atol=1e-6)
    assert chart_points(proj, -1) == 40


def test_embed_captions_on_the_spot(monkeypatch):
    monkeypatch.delenv(S.ENV_STORE, raising=False)
    at = page("projections")
    at.run()
    assert "Type the folder of an embedding store" in at.info[0].value
    at.radio(key="pj_source").set_value("embed captions now").run()
    at.button(key="pj_embed").click().run()
    no_errors(at)
    assert "embedded 6 rows with shapes-clip" in at.success[0].value
    assert at.selectbox(key="pj_kind").value == "all" and chart_points(at) == 6


def test_missing_store_is_a_message(monkeypatch, tmp_path):
    monkeypatch.setenv(S.ENV_STORE, str(tmp_path / "nowhere"))
    at = page("projections")
    at.run()
    assert not at.exception and "no embedding store at" in at.error[0].value


# ------------------------------------------------------------------------------------------------ binding
def test_binding_page_shows_a_finished_run(binding_run):
    run, _ = binding_run
    at = page("binding")
    at.run()
    at.text_input(key="bd_folder").set_value(str(run)).run()
    no_errors(at)
    summary = pd.read_csv(run / "summary.csv")
    acc = summary[(summary["kind"] == "caption_pair") & (summary["category"] == "all")]["accuracy"].iloc[0]
    metric = next(m for m in at.metric if m.label == "caption_pair accuracy (all)")
    assert metric.value == f"{acc:.3f}"
    shown = at.dataframe[0].value
    assert np.allclose(shown["accuracy"], summary["accuracy"]) and np.allclose(shown["lo"], summary["lo"])
    assert len(at.get("plotly_chart")) == 2  # accuracy with intervals, swap confusion (suite file present)


def test_binding_page_bad_folder_is_a_message(tmp_path):
    at = page("binding")
    at.run()
    at.text_input(key="bd_folder").set_value(str(tmp_path)).run()
    assert not at.exception and "is not a binding run" in at.error[0].value


def test_binding_live_run_and_compare(binding_run, tmp_path):
    at = page("binding")
    at.run()
    at.number_input(key="live_n").set_value(12)
    at.button(key="live_go").click().run()
    no_errors(at)
    cases = make_suite(12, seed=0, kinds=["caption_pair", "winoground"], world=bundled_world())
    ref = clip_summary(clip_scores(cases, ClipEncoder.load("shapes-clip")))
    acc = ref[(ref["kind"] == "caption_pair") & (ref["category"] == "all")]["accuracy"].iloc[0]
    metric = next(m for m in at.metric if m.label == "caption_pair accuracy (all)")
    assert metric.value == f"{acc:.3f}"
    # compare the module's run with itself: every difference is 0
    run, _ = binding_run
    at.text_input(key="cmp_a").set_value(str(run))
    at.text_input(key="cmp_b").set_value(str(run)).run()
    no_errors(at)
    cmp = next(d.value for d in at.dataframe if "p_mcnemar" in d.value.columns)
    assert (cmp["diff"] == 0).all() and set(cmp["kind"]) == {"caption_pair", "winoground"}


# ------------------------------------------------------------------------------------------------ command
def _args(**kw):
    base = {"store": None, "model": None, "port": 8501, "address": "localhost"}
    return argparse.Namespace(**{**base, **kw})


def test_dashboard_command_line(pipe_dir, shapes_store):
    cmd, env = dashboard_cmd.command(_args(store=str(shapes_store.path), model=str(pipe_dir), port=8765))
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboards/app.py")
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert env[S.ENV_STORE] == str(shapes_store.path.resolve()) and env[S.ENV_MODEL] == str(pipe_dir.resolve())


def test_dashboard_command_rejects_bad_input(tmp_path, capsys):
    with pytest.raises(ValueError, match="--port must be an integer in 1..65535"):
        dashboard_cmd.command(_args(port=70000))
    with pytest.raises(ValueError, match="is not an unCLIP pipeline"):
        dashboard_cmd.command(_args(model="shapes-clip"))
    with pytest.raises(FileNotFoundError, match="no embedding store at"):
        dashboard_cmd.command(_args(store=str(tmp_path)))
    assert main(["dashboard", "--port", "0"]) == 2
    assert "error: argument --port: must be an integer in [1, 65535]" in capsys.readouterr().err


def test_latent_lab_stops_where_the_default_cascade_stops(monkeypatch, pipe_dir, tmp_path):
    import shutil
    left_out = tmp_path / "pipe"
    shutil.copytree(pipe_dir, left_out)
    doc = json.loads((left_out / "pipeline.json").read_text())
    doc["metadata"]["default_upsample"] = 0  # its upsampler does not beat bicubic
    (left_out / "pipeline.json").write_text(json.dumps(doc))
    monkeypatch.setenv(S.ENV_MODEL, str(left_out))
    monkeypatch.delenv(S.ENV_STORE, raising=False)
    at = page("latent_lab")
    at.run()
    no_errors(at)
    assert at.selectbox(key="out_px").value == 32  # the largest size (256 px where a cascade reaches it)
    assert "32 px needs upsampler1, which this pipeline leaves out of its default cascade" in at.info[0].value
    at.checkbox(key="all_up").check().run()
    no_errors(at)
    assert not [i for i in at.info if "default cascade" in i.value]


def test_dashboard_process_is_the_server(monkeypatch, pipe_dir, capsys):
    """The command execs Streamlit in its own process: a SIGKILL of the PID it prints stops the server itself."""
    calls = []
    monkeypatch.setattr(dashboard_cmd.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    dashboard_cmd.run(_args(model=str(pipe_dir)))
    (path, argv, env), = calls
    assert path == sys.executable and argv[1:4] == ["-m", "streamlit", "run"]
    assert f"server PID {os.getpid()}" in capsys.readouterr().out


def test_latent_lab_runs_on_an_imported_kandinsky(monkeypatch, tmp_path):
    """The latent lab on another family: the sidebar's sampling widget starts at the folder's own settings
    (Kandinsky 2.2: DDPM decoder, "unclip" prior, guidance 4) and text -> image runs through prior, decoder, MoVQ."""
    pytest.importorskip("diffusers")
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.kandinsky import build_random_kandinsky
    from unclip_core.families.kandinsky import import_kandinsky
    prior_dir, dec_dir, _, _ = build_random_kandinsky(tmp_path / "src", "tiny")
    folder = import_kandinsky(prior_dir, dec_dir, tmp_path / "k22")
    monkeypatch.setenv(S.ENV_MODEL, str(folder))
    monkeypatch.delenv(S.ENV_STORE, raising=False)
    at = page("latent_lab")
    at.run()
    no_errors(at)
    assert at.selectbox(key="sampling_decoder_sampler").value == "ddpm"
    assert at.number_input(key="sampling_decoder_guidance").value == 4.0
    at.slider(key="sampling_decoder_steps").set_value(2)
    at.slider(key="sampling_prior_steps").set_value(2)
    at.button(key="t2i_go").click().run()
    no_errors(at)
    shown = at.session_state["t2i"]
    assert shown.settings["sampling"]["decoder_sampler"] == "ddpm" and shown.images[0].size == (64, 64)
