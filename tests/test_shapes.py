"""ShapesWorld: grammar round trips, held-out split, renderer geometry and agreement, datasets, export, errors."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unclip_core.data import (CAPTION_STYLES, COLOUR_RGB, BACKGROUND_RGB, COLOURS, HELD_OUT_PAIRS, LABEL_WORDS,
                              POSITION_XY, RADIUS, SHAPES, Obj, Relation, Scene, ShapesConfig, ShapesDataset,
                              ShapesFixedSet, canonical, caption, collate_shapes, complete, export, foil_scenes,
                              foils, object_polygon, parse, render, sample_scene, tokenize_words, vocabulary)


def scenes(seed, n, **kw):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, **kw) for _ in range(n)]


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-12))


# ------------------------------------------------------------------------------------------ grammar

@pytest.mark.parametrize("style", CAPTION_STYLES)
def test_parse_inverts_caption_for_every_style(style):
    for s in scenes(0, 300, split="all", label_prob=0.3):
        assert parse(caption(s, style=style)) == canonical(s)


def test_random_paraphrases_round_trip_and_vary():
    rng = np.random.default_rng(1)
    s = sample_scene(np.random.default_rng(2), n_objects=2)
    seen = set()
    for _ in range(60):
        c = caption(s, rng=rng)
        assert parse(c) == canonical(s)
        seen.add(c)
    assert len(seen) == len(CAPTION_STYLES)
    assert caption(s) == caption(s, style="plain")


def test_caption_strings_follow_the_grammar():
    one = Scene((Obj("circle", "red", "small", "top"),))
    assert caption(one) == "a small red circle at the top"
    assert caption(one, style="reversed") == "at the top, a small red circle"
    assert caption(one, style="sentence") == "there is a small red circle at the top"
    two = Scene((Obj("circle", "red", "small", "left"), Obj("square", "orange", "large", "right")),
                Relation("left of"))
    assert caption(two) == "a small red circle left of a large orange square"
    assert caption(two, style="reversed") == "a large orange square to the right of a small red circle"
    col = Scene((Obj("star", "green", "large", "top"), Obj("cross", "yellow", "small", "bottom")), Relation("above"))
    assert caption(col) == "a large green star above a small yellow cross"
    assert caption(col, style="reversed") == "a small yellow cross below a large green star"
    v1 = Scene((Obj("star", "green", "large", "top"), Obj("hexagon", "yellow", "small", "bottom")), Relation("above"),
               world=1)
    assert caption(v1) == "a large green star above a small yellow hexagon"
    three = Scene((Obj("circle", "red", "small", "centre"), Obj("square", "blue", "large", "left"),
                   Obj("star", "green", "small", "right")))
    assert caption(three) == "a large blue square, a small red circle and a small green star from left to right"
    assert caption(three, style="sentence") == "a row of a large blue square, a small red circle and a small green star"
    labelled = Scene((Obj("circle", "red", "large", "centre", label="blue"),))
    assert caption(labelled) == "a large red circle labelled 'blue' in the centre"


def test_paper_style_phrasings_parse_to_the_same_scene():
    a = parse("a red circle left of a blue square")
    assert a == parse("a blue square to the right of a red circle")
    assert a == Scene((Obj("circle", "red", None, "left"), Obj("square", "blue", None, "right")), Relation("left of"))
    assert parse("a green star above a yellow cross") == parse("a yellow cross below a green star")
    assert parse("a green star above a yellow hexagon", world=1) == \
        parse("a yellow hexagon below a green star", world=1)
    assert parse("a red circle left of a blue square left of a green star") == \
        parse("a red circle, a blue square and a green star from left to right")


def test_short_prompts_parse_to_partial_specs():
    assert parse("a red circle") == Scene((Obj("circle", "red"),))
    assert parse("Circle.") == Scene((Obj("circle", None),))
    assert parse("an orange star in the middle") == Scene((Obj("star", "orange", None, "centre"),))
    two = parse("a red circle and a blue square")
    assert two.relation is None and [o.position for o in two.objects] == [None, None]
    assert caption(two) == "a red circle and a blue square"
    filled = complete(two, 3)
    assert filled.is_complete and filled.relation is not None
    assert {(o.colour, o.shape) for o in filled.objects} == {("red", "circle"), ("blue", "square")}
    render(filled, 32)


def test_vocabulary_covers_every_caption_foil_and_label():
    vocab = set(vocabulary())
    assert set(LABEL_WORDS) <= vocab and vocabulary() == sorted(vocab)
    for s in scenes(3, 200, split="all", label_prob=0.5):
        for style in CAPTION_STYLES:
            assert set(tokenize_words(caption(s, style=style))) <= vocab
        for _, f in foils(s):
            assert set(tokenize_words(f)) <= vocab
    assert tokenize_words("A red Circle labelled 'blue'.") == ["a", "red", "circle", "labelled", "'", "blue", "'", "."]


# ------------------------------------------------------------------------------------------ foils

def _diff_fields(a, b):
    return {f for oa, ob in zip(a.objects, b.objects) for f in ("shape", "colour", "size", "position", "label")
            if getattr(oa, f) != getattr(ob, f)}


def test_foils_differ_from_truth_in_exactly_the_swapped_attribute():
    expect = {"colour_swap": {"colour"}, "shape_swap": {"shape"}, "size_swap": {"size"},
              "colour_change": {"colour"}, "shape_change": {"shape"}, "size_change": {"size"},
              "position_change": {"position"}}
    counts = {}
    for s in scenes(4, 300, split="all", label_prob=0.2):
        truth = canonical(s)
        for (cat, text), (cat2, fs) in zip(foils(s), foil_scenes(s)):
            assert cat == cat2 and parse(text) == fs != truth
            counts[cat] = counts.get(cat, 0) + 1
            if cat == "relation_order":  # two objects trade places: same objects, other slots
                moved = [i for i in range(len(truth.objects)) if fs.objects[i] != truth.objects[i]]
                assert len(moved) == 2
                i, j = moved
                assert replace(fs.objects[i], position=None) == replace(truth.objects[j], position=None)
                assert [o.position for o in fs.objects] == [o.position for o in truth.objects]
            else:
                assert _diff_fields(fs, truth) == expect[cat]
                if cat.endswith("_swap"):
                    f = cat[:-5]
                    values = [sorted(str(getattr(o, f)) for o in x.objects) for x in (fs, truth)]
                    assert values[0] == values[1]
    assert set(counts) == set(expect) | {"relation_order"}


def test_foils_skip_swaps_that_change_nothing():
    s = Scene((Obj("circle", "red", "small", "left"), Obj("square", "red", "small", "right")), Relation("left of"))
    assert [c for c, _ in foils(s)] == ["shape_swap", "relation_order"]
    assert dict(foils(s))["relation_order"] == "a small red square left of a small red circle"


# ------------------------------------------------------------------------------------------ sampling and splits

def test_held_out_pairs_never_in_a_5000_sample_train_stream():
    config = ShapesConfig(seed=0, split="train")
    pairs = set()
    for i in range(5000):
        s, _ = config.scene_caption(i)
        pairs |= {(o.colour, o.shape) for o in s.objects}
    assert not pairs & HELD_OUT_PAIRS
    assert len(pairs) == len(COLOURS) * len(SHAPES) - len(HELD_OUT_PAIRS)
    assert {c for c, _ in pairs} == set(COLOURS) and {s for _, s in pairs} == set(SHAPES)


def test_held_out_and_all_splits():
    for s in scenes(5, 500, split="held_out"):
        assert any((o.colour, o.shape) in HELD_OUT_PAIRS for o in s.objects)
    pairs = {(o.colour, o.shape) for s in scenes(6, 1000, split="all") for o in s.objects}
    assert HELD_OUT_PAIRS <= pairs and len(HELD_OUT_PAIRS) == 5


def test_sampling_is_deterministic_and_objects_never_overlap():
    a, b = scenes(7, 300, label_prob=0.5), scenes(7, 300, label_prob=0.5)
    assert a == b and a != scenes(8, 300, label_prob=0.5)
    for s in a:
        assert s == Scene.from_dict(json.loads(json.dumps(s.to_dict())))
        assert canonical(s).objects == tuple(replace(o, dx=0.0, dy=0.0, angle=0.0) for o in s.objects)
        polys = [object_polygon(o) for o in s.objects]
        assert all(p.min() > 0 and p.max() < 1 for p in polys)
        for i in range(len(s.objects)):
            for j in range(i + 1, len(s.objects)):
                ci, cj = polys[i].mean(0), polys[j].mean(0)
                gap = np.linalg.norm(ci - cj) - RADIUS[s.objects[i].size] - RADIUS[s.objects[j].size]
                assert gap > 0.0


# ------------------------------------------------------------------------------------------ rendering

def test_render_closed_form_colours_and_area():
    size = 128
    sq = Scene((Obj("square", "red", "large", "centre"),))
    x = np.asarray(render(sq, size)).astype(np.float64)
    assert tuple(x[64, 64]) == COLOUR_RGB["red"] and tuple(x[0, 0]) == BACKGROUND_RGB
    # Coverage of an anti-aliased square = its area, 2 r^2 (half-diagonal r), to 1%.
    cover = (x[..., 0] - BACKGROUND_RGB[0]) / (COLOUR_RGB["red"][0] - BACKGROUND_RGB[0])
    assert cover.sum() / size ** 2 == pytest.approx(2 * RADIUS["large"] ** 2, rel=1e-2)
    # Its centre sits where POSITION_XY says: coverage-weighted centroid in normalised units.
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    cx, cy = (cover * xs).sum() / cover.sum() / size, (cover * ys).sum() / cover.sum() / size
    assert (cx, cy) == pytest.approx(POSITION_XY["centre"], abs=1e-3)
    moved = np.asarray(render(Scene((replace(sq.objects[0], dx=0.008),)), size))
    assert not np.array_equal(moved, x.astype(np.uint8))


def test_render_64_agrees_with_downsampled_256():
    worst_psnr, worst_max = math.inf, 0
    for s in scenes(9, 40, split="all"):
        lo = np.asarray(render(s, 64))
        hi = np.asarray(render(s, 256).reduce(4))  # box filter, the renderer's own downsampling
        worst_psnr = min(worst_psnr, psnr(lo, hi))
        worst_max = max(worst_max, int(np.abs(lo.astype(int) - hi.astype(int)).max()))
    assert worst_psnr >= 42.0 and worst_max <= 48  # differences only in edge pixels (measured 46 dB, 34)


def test_render_is_deterministic_at_every_size():
    s = scenes(10, 1, n_objects=3, label_prob=1.0)[0]
    for size in (32, 48, 64, 100, 256):
        a, b = render(s, size), render(s, size)
        assert a.size == (size, size) and a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))
    no_label = Scene(tuple(replace(o, label=None) for o in s.objects))
    assert not np.array_equal(np.asarray(render(s, 128)), np.asarray(render(no_label, 128)))


# ------------------------------------------------------------------------------------------ datasets

def test_dataset_seeded_stream():
    items = list(ShapesDataset(seed=0, size=32, n=6))
    again = list(ShapesDataset(seed=0, size=32, n=6))
    other = list(ShapesDataset(seed=1, size=32, n=6))
    x, text, scene = items[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert all(torch.equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(items, again))
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(items, other))
    for _, text, scene in items:
        assert parse(text) == canonical(Scene.from_dict(scene))
    assert [t for _, t, _ in items[:3]] == [
        "a large orange cross, a large orange triangle and a small yellow cross from bottom to top",
        "a small purple cross is above a large green circle",
        "a small orange square, a large yellow triangle and a large orange star from right to left",
    ]
    # the v1 stream is the one the v1 models were trained on, unchanged
    assert [t for _, t, _ in ShapesDataset(seed=0, size=32, n=2, world=1)] == [
        "a large orange hexagon, a large orange triangle and a small yellow hexagon from bottom to top",
        "a small purple hexagon is above a large green circle",
    ]


def test_workers_and_ranks_split_the_stream_disjointly():
    full = [t for _, t, _ in ShapesDataset(seed=3, size=32, n=12)]
    ranks = [[t for _, t, _ in ShapesDataset(seed=3, size=32, n=12, rank=r, world_size=2)] for r in (0, 1)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]
    assert len(ShapesDataset(3, 32, n=12, rank=1, world_size=2)) == 6
    loader = DataLoader(ShapesDataset(seed=3, size=32, n=12), batch_size=3, num_workers=2, collate_fn=collate_shapes)
    batches = list(loader)
    assert batches[0][0].shape == (3, 3, 32, 32)
    assert sorted(t for b in batches for t in b[1]) == sorted(full) and len(full) == 12


def test_fixed_set_matches_stream():
    fixed = ShapesFixedSet(seed=5, n=4, size=32, n_objects=(2,), label_prob=0.5)
    stream = list(ShapesDataset(seed=5, size=32, n=4, n_objects=(2,), label_prob=0.5))
    assert len(fixed) == 4 and fixed.captions == [t for _, t, _ in stream]
    assert torch.equal(fixed[3][0], stream[3][0]) and torch.equal(fixed[-1][0], stream[3][0])
    assert all(len(s.objects) == 2 for s in fixed.scenes)
    with pytest.raises(IndexError, match="out of range"):
        fixed[4]
    only3 = ShapesFixedSet(seed=5, n=20, size=32, n_objects=(1, 3), weights=(0.0, 1.0))
    assert all(len(s.objects) == 3 for s in only3.scenes)


def test_export_writes_images_and_jsonl(tmp_path):
    out = export(tmp_path / "shapes", n=5, seed=2, size=32, progress=False)
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [d["file"] for d in lines] == [f"images/{i:06d}.png" for i in range(5)]
    stream = list(ShapesDataset(seed=2, size=32, n=5))
    from PIL import Image
    for d, (x, text, scene) in zip(lines, stream):
        s = Scene.from_dict(d["scene"])
        assert d["caption"] == text and d["scene"] == scene and parse(text) == canonical(s)
        assert np.array_equal(np.asarray(Image.open(out / d["file"])), np.asarray(render(s, 32)))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 2 and meta["n"] == 5 and meta["split"] == "train"
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="already exists and is not empty; pass overwrite=True"):
        export(out, n=2, seed=0, size=32, progress=False)
    export(out, n=2, seed=0, size=32, progress=False, overwrite=True)
    assert len(list((out / "images").iterdir())) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


# ------------------------------------------------------------------------------------------ errors

def test_unknown_names_list_the_accepted_ones():
    with pytest.raises(ValueError, match="colour='pink' is not known; accepted: 'red', 'orange'"):
        Obj("circle", "pink")
    with pytest.raises(ValueError, match="shape='oval' is not known; accepted: 'circle', 'square'"):
        Obj("oval", "red")
    with pytest.raises(ValueError, match="position='middle' is not known; accepted: 'left', 'right'"):
        Obj("circle", "red", "small", "middle")
    with pytest.raises(ValueError, match="size='medium' is not known; accepted: 'small', 'large'"):
        Obj("circle", "red", "medium")
    with pytest.raises(ValueError, match="split='test' is not known; accepted: 'train', 'held_out', 'all'"):
        sample_scene(np.random.default_rng(0), split="test")
    with pytest.raises(ValueError, match="style='poetic' is not known; accepted: 'plain'"):
        caption(Scene((Obj("circle", "red"),)), style="poetic")
    with pytest.raises(ValueError, match=r"\|dx\| <= 0.02"):
        Obj("circle", "red", dx=0.1)


def test_parse_errors_name_the_caption_and_show_the_grammar():
    with pytest.raises(ValueError, match=r"cannot parse caption 'a pink circle': expected a shape .* at word 2, "
                                         r"got 'pink'.*e\.g\. 'a small red circle at the top'"):
        parse("a pink circle")
    with pytest.raises(ValueError, match="cannot parse caption 'a red circle left of': .*the end of the caption"):
        parse("a red circle left of")
    with pytest.raises(ValueError, match="one direction along a chain"):
        parse("a red circle left of a blue square above a green star")
    with pytest.raises(ValueError, match="at most three objects"):
        parse("a red circle, a blue square, a green star and a red star")
    with pytest.raises(TypeError, match="caption must be a str"):
        parse(3)


def test_render_rejects_bad_sizes_and_partial_scenes():
    s = Scene((Obj("circle", "red", "small", "top"),))
    with pytest.raises(ValueError, match=r"size must be in 32\.\.1024 .* got 31"):
        render(s, 31)
    with pytest.raises(ValueError, match=r"size must be in 32\.\.1024 .* got 1025"):
        render(s, 1025)
    with pytest.raises(TypeError, match="size must be an integer"):
        render(s, 64.0)
    with pytest.raises(ValueError, match=r"scene is partial .* call complete\(scene, rng\)"):
        render(parse("a red circle"), 64)
    with pytest.raises(TypeError, match="scene must be a Scene"):
        render("a red circle", 64)
    with pytest.raises(ValueError, match=r"size must be in 32\.\.1024"):
        ShapesDataset(seed=0, size=16)


def test_scene_validation_messages():
    with pytest.raises(ValueError, match="relation 'left of' needs positions"):
        Scene((Obj("circle", "red", "small", "right"), Obj("square", "blue", "small", "left")), Relation("left of"))
    with pytest.raises(ValueError, match="a scene has 1 to 3 objects, got 4"):
        Scene(tuple(Obj("circle", "red") for _ in range(4)))
    with pytest.raises(ValueError, match="three objects must form a row"):
        Scene((Obj("circle", "red", "small", "left"), Obj("star", "red", "small", "top"),
               Obj("square", "red", "small", "right")))
    with pytest.raises(ValueError, match="needs a relation"):
        Scene((Obj("circle", "red", "small", "left"), Obj("square", "blue", "small", "right")))
    with pytest.raises(ValueError, match=r"relation kind='below' is not known; accepted: 'left of', 'above'"):
        Relation("below")
    with pytest.raises(ValueError, match=r"unknown keys \['colour_name'\]"):
        Scene.from_dict({"objects": [{"shape": "circle", "colour_name": "red"}]})
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        sample_scene(0.5)
    with pytest.raises(ValueError, match=r"label_prob must be a probability in \[0, 1\], got 1.5"):
        sample_scene(np.random.default_rng(0), label_prob=1.5)


def test_dataset_argument_errors():
    with pytest.raises(ValueError, match=r"rank must be in 0..world_size-1 = 0..1, got 2"):
        ShapesDataset(seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"weights must be 3 non-negative numbers"):
        ShapesDataset(seed=0, weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="n_objects entry=4 is not known; accepted: 1, 2, 3"):
        ShapesDataset(seed=0, n_objects=(1, 4))
    with pytest.raises(TypeError, match="endless and has no length"):
        len(ShapesDataset(seed=0))
    with pytest.raises(ValueError, match="seed must be >= 0"):
        ShapesDataset(seed=-1)
