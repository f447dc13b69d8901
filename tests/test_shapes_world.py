"""ShapesWorld versions: v2's visibility bounds computed from the renderer, v1 kept bit for bit, version records."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from unclip_core.data.shapes import (CURRENT_WORLD, WORLDS, Obj, Relation, Scene, ShapesConfig, caption, export,
                                     parse, render_array, sample_scene, vocabulary)
from unclip_core.data.shapes_render import coverage, object_polygon, shape_contrast


def test_v2_shapes_differ_visibly_in_every_pose_at_64px():
    rows = shape_contrast(2, 64)
    assert len(rows) == 2 * 10 and all(r["n_poses"] == 45 for r in rows)  # 2 sizes x C(5, 2) pairs
    worst_diff = min(r["min_pixels_differ"] for r in rows)
    worst_iou = max(r["max_iou"] for r in rows)
    assert worst_diff >= 24 and worst_iou <= 0.85  # the bars
    assert worst_diff == 34 and worst_iou == pytest.approx(0.798, abs=1e-3)  # measured: small triangle / star


def test_v1_circle_and_hexagon_coincide_in_some_pose():
    rows = {(r["size"], r["a"], r["b"]): r for r in shape_contrast(1, 64)}
    assert rows[("small", "circle", "hexagon")]["min_pixels_differ"] == 0  # why v2 exists
    assert rows[("small", "circle", "hexagon")]["max_iou"] == 1.0


def test_v2_sizes_spans_and_layout():
    w = WORLDS[2]
    cov = {(s, z): coverage(Scene((Obj(s, "red", z, "centre"),), world=2), 64)[0] for s in w.shapes
           for z in ("small", "large")}
    for s in w.shapes:
        assert cov[(s, "large")].sum() / cov[(s, "small")].sum() >= 1.5
    circle = cov[("circle", "small")] >= 0.5
    assert circle.any(axis=0).sum() >= 14 and circle.any(axis=1).sum() >= 14  # the smallest circle spans 15 px
    # objects never overlap and stay inside the image, over many sampled scenes with the largest jitter
    for i in range(400):
        scene = sample_scene(np.random.default_rng([3, i]), n_objects=3 if i % 2 else 2, world=2)
        polys = [object_polygon(o, 2) for o in scene.objects]
        assert all(p.min() >= 0 and p.max() <= 1 for p in polys)
        maps = coverage(scene, 256)
        assert (maps > 0).sum(0).max() == 1  # no pixel touched by two objects


def test_v1_renders_and_captions_are_unchanged():
    h = hashlib.sha256()
    for i in range(40):
        s = sample_scene(np.random.default_rng(i), label_prob=0.3, world=1)
        h.update(render_array(s, 64).tobytes())
        h.update(render_array(s, 256).tobytes())
        h.update(caption(s, np.random.default_rng(i)).encode())
    # the digest before versions existed (main at f3df37a): v1 models keep their world exactly
    assert h.hexdigest() == "d90303ce0cf77425450168e01be3b725a4810b57675db2f1e67fc80eefa26ae5"


def test_world_is_recorded_and_checked():
    s = sample_scene(np.random.default_rng(0), n_objects=2)
    assert s.world == CURRENT_WORLD == 2 and s.to_dict()["world"] == 2
    assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    legacy = {k: v for k, v in sample_scene(np.random.default_rng(0), world=1).to_dict().items() if k != "world"}
    assert Scene.from_dict(legacy).world == 1  # files written before versions are v1
    assert parse(caption(s)).world == 2 and parse("a red hexagon", world=1).world == 1
    assert "cross" in vocabulary() and "hexagon" not in vocabulary() and "hexagon" in vocabulary(1)
    with pytest.raises(ValueError, match=r"'hexagon' is not in ShapesWorld v2 .* ShapesWorld v1 shape: pass world=1"):
        Scene((Obj("hexagon", "red", "small", "centre"),))
    with pytest.raises(ValueError, match=r"'cross' is not in ShapesWorld v1 .* ShapesWorld v2 shape"):
        Scene((Obj("cross", "red", "small", "centre"),), world=1)
    with pytest.raises(ValueError, match=r"'hexagon' is a ShapesWorld v1 shape; this is v2: pass world=1"):
        parse("a red hexagon")
    with pytest.raises(ValueError, match=r"world must be a ShapesWorld version in \[1, 2\], got 3"):
        ShapesConfig(seed=0, world=3)
    with pytest.raises(ValueError, match=r"dx=0.02 is out of range for ShapesWorld v2; expected \|dx\| <= 0.008"):
        Scene((Obj("circle", "red", "small", "centre", dx=0.02),))
    assert Scene((Obj("circle", "red", "small", "left", dx=0.02), Obj("star", "red", "small", "right")),
                 Relation("left of"), world=1).world == 1


def test_export_records_the_world(tmp_path):
    out = export(tmp_path / "v1", n=3, seed=0, size=32, progress=False, world=1)
    meta = json.loads((out / "meta.json").read_text())
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert meta["world"] == 1 and ["blue", "hexagon"] in meta["held_out_pairs"]
    assert all(r["scene"]["world"] == 1 for r in rows)
    meta2 = json.loads((export(tmp_path / "v2", n=2, seed=0, size=32, progress=False) / "meta.json").read_text())
    assert meta2["world"] == 2 and ["blue", "cross"] in meta2["held_out_pairs"]
