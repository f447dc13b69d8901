"""ShapesWorld versions across the toolkit: models know their world; stores and suites refuse a mismatch."""
from __future__ import annotations

import json

import pytest

from analyses.binding import model_world
from analyses.binding_suite import make_suite
from explorer import api
from explorer.binding import run_suite, write_suite
from explorer.cli import main
from unclip_core.clip import ClipEncoder, bundled_world


def test_bundled_models_record_their_world():
    clip = ClipEncoder.load("shapes-clip")
    assert clip.world == bundled_world() == 2 and model_world(clip) == 2


def test_embed_refuses_scenes_of_another_world(tmp_path):
    export = api.export_shapes(tmp_path / "v1", n=3, seed=0, size=32, progress=False, world=1)
    with pytest.raises(ValueError, match=r"holds ShapesWorld v1 scenes but the encoder 'shapes-clip' was trained "
                                         r"on ShapesWorld v2; export v2 scenes \(`unclip-explorer shapes export "
                                         r"--world 2`\)"):
        api.embed(export, "shapes-clip", tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()  # refused before any work
    ok = api.embed(api.export_shapes(tmp_path / "v2", n=3, seed=0, size=32, progress=False), "shapes-clip",
                   tmp_path / "store2", progress=False)
    assert set(ok.metadata["scene.world"]) == {2}


def test_suite_of_another_world_is_refused_before_work(tmp_path, capsys):
    suite = write_suite(make_suite(6, seed=0, kinds=["caption_pair"], world=1), tmp_path / "v1.jsonl")
    with pytest.raises(ValueError, match=r"the suite holds ShapesWorld v1 scenes \(e.g. case 'cap-colour_swap-00000'\)"
                                         r" but the model 'shapes-clip' was trained on ShapesWorld v2; make a v2 "
                                         r"suite with `unclip-explorer binding make-suite --world 2`"):
        run_suite(suite, "shapes-clip", tmp_path / "run", probes=False, progress=False)
    assert not (tmp_path / "run" / "settings.json").exists()
    assert main(["binding", "make-suite", "--n", "4", "--kinds", "caption_pair", "--out",
                 str(tmp_path / "default.jsonl")]) == 0
    assert "ShapesWorld v2 cases" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "default.jsonl").read_text().splitlines()]
    assert {r["image"]["world"] for r in rows} == {bundled_world()}
