"""Binding probes on hand-made cases with known answers: statistics, scorers, suites, loaders, judges."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analyses.binding import (CaptionPairCase, Expected, ExpectedObject, GenerationCase, ShapesJudge,
                              WinogroundCase, accuracy_table, attribute_summary, bootstrap_interval, case_to_dict,
                              check_expected, clip_scores, clip_summary, generation_scores, linear_probes,
                              load_aro, load_geneval, load_sugarcrepe, load_winoground, macro_accuracy, make_suite,
                              mcnemar, paired_bootstrap, parse_suite, probe_scenes, suite_lines, wilson_interval,
                              winoground_hits)
from analyses.binding_suite import SHAPES_CATEGORIES, SuiteError, load_suite
from unclip_core.data.shapes import HELD_OUT_PAIRS, Obj, Relation, Scene, caption, canonical, parse


# ----------------------------------------------------------------------------------------------- statistics

def test_wilson_interval_closed_form():
    lo, hi = wilson_interval(7, 10)
    z = 1.959963984540054
    centre = (0.7 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.7 * 0.3 / 10 + z * z / 400) / (1 + z * z / 10)
    assert lo == pytest.approx(centre - half, abs=1e-12) and hi == pytest.approx(centre + half, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="level must be a confidence level in"):
        wilson_interval(1, 2, level=95)
    with pytest.raises(ValueError, match=r"k must be in \[0, n\]"):
        wilson_interval(3, 2)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    hits = [True] * 6 + [False] * 4
    a = bootstrap_interval(hits, n_boot=500, seed=1)
    assert a == bootstrap_interval(hits, n_boot=500, seed=1)
    assert a[0] < 0.6 < a[1]
    assert bootstrap_interval([True] * 5, n_boot=100) == (1.0, 1.0)
    with pytest.raises(ValueError, match="hits must hold booleans or 0/1"):
        bootstrap_interval([0, 2, 1])


def test_accuracy_table_groups_macro_and_all():
    hits = [1, 1, 1, 0] + [1, 0]
    groups = ["a"] * 4 + ["b"] * 2
    t = accuracy_table(hits, groups).set_index("group")
    assert t.loc["a", "accuracy"] == 0.75 and t.loc["b", "accuracy"] == 0.5
    assert t.loc["macro", "accuracy"] == pytest.approx(0.625)
    assert t.loc["all", "accuracy"] == pytest.approx(4 / 6) and t.loc["all", "n"] == 6
    assert t.loc["a", "lo"] == pytest.approx(wilson_interval(3, 4)[0])
    assert t.loc["macro", "lo"] <= 0.625 <= t.loc["macro", "hi"]
    # small categories that are all right or all wrong: the macro interval must not collapse to a point
    small = accuracy_table([1] * 6 + [0] + [1], ["a"] * 7 + ["b"]).set_index("group")
    assert small.loc["macro", "accuracy"] == pytest.approx((6 / 7 + 1) / 2)
    lo, hi = small.loc["macro", "lo"], small.loc["macro", "hi"]
    assert lo < 0.8 and hi > 0.95 and hi - lo > 0.15, (lo, hi)
    one_each = accuracy_table([1, 1, 1], ["a", "b", "c"]).set_index("group")
    assert one_each.loc["macro", "hi"] - one_each.loc["macro", "lo"] > 0.2
    with pytest.raises(ValueError, match="ci='exact' is not known; accepted: 'wilson', 'bootstrap'"):
        accuracy_table(hits, groups, ci="exact")
    with pytest.raises(ValueError, match="groups has 2 entries but hits has 6"):
        accuracy_table(hits, ["a", "b"])


def test_macro_accuracy_as_aro():
    hits = [1, 1, 0, 0, 1, 1, 1, 1]
    groups = ["on"] * 2 + ["under"] * 2 + ["has"] * 4
    assert macro_accuracy(hits, groups) == pytest.approx((1 + 0 + 1) / 3)
    assert macro_accuracy(hits, groups, min_count=3) == 1.0  # only "has" qualifies
    with pytest.raises(ValueError, match="no group has at least min_count=9"):
        macro_accuracy(hits, groups, min_count=9)


def test_mcnemar_and_paired_bootstrap():
    a = np.zeros(12, bool)
    b = np.r_[np.ones(10, bool), np.zeros(2, bool)]
    r = mcnemar(a, b)
    assert (r["b10"], r["b01"], r["n"]) == (0, 10, 12)
    assert r["p"] == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar(a, a)["p"] == 1.0
    assert mcnemar([1, 0, 1, 0], [0, 1, 0, 1])["p"] == 1.0  # 2 vs 2 discordant
    pb = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert pb["diff"] == pytest.approx(10 / 12) and pb["lo"] > 0 and pb["p"] < 0.01
    assert paired_bootstrap(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="a and b must be paired"):
        mcnemar([1, 0], [1])


# ----------------------------------------------------------------------------------------------- CLIP level

class ScoreEncoder:
    """Images are solid colours; image with red value r embeds as e_r. Text vectors are set by hand."""

    def __init__(self, text_vecs, dim=4):
        self.text_vecs = {t: np.asarray(v, float) for t, v in text_vecs.items()}
        self.dim = dim

    def encode_text(self, texts):
        return np.stack([self.text_vecs[t] / np.linalg.norm(self.text_vecs[t]) for t in texts])

    def encode_image(self, images):
        return np.stack([np.eye(self.dim)[im.getpixel((0, 0))[0]] for im in images])


def _solid(tmp_path, r):
    p = tmp_path / f"img{r}.png"
    Image.new("RGB", (8, 8), (r, 0, 0)).save(p)
    return str(p)


def _vec(*s):
    """A unit vector whose first components are s (the scores against e_0, e_1, ...), padded to unit norm."""
    v = np.zeros(4)
    v[:len(s)] = s
    v[3] = math.sqrt(1 - sum(x * x for x in s))
    return v


def test_clip_scores_caption_pairs_and_winoground_exact(tmp_path):
    img0, img1 = _solid(tmp_path, 0), _solid(tmp_path, 1)
    texts, cases = {}, []
    # 10 caption pairs on image e_0: true score 0.5; foil scores make 7 hits, 1 tie (a miss) and 2 misses
    foil_scores = [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7]
    for k, f in enumerate(foil_scores):
        texts[f"true {k}"], texts[f"foil {k}"] = _vec(0.5), _vec(f)
        cases.append(CaptionPairCase(f"c{k}", "colour_swap" if k < 5 else "shape_swap", img0, f"true {k}",
                                     (f"foil {k}", "true 0") if k == 9 else (f"foil {k}",)))
    # winoground 2x2 s[caption, image]
    matrices = {"w_all": [[0.6, 0.2], [0.1, 0.5]],     # text, image, group
                "w_text": [[0.6, 0.7], [0.1, 0.8]],    # text only: s00>s10, s11>s01; image: s00<s01
                "w_image": [[0.5, 0.1], [0.6, 0.7]],   # image only: s00>s01, s11>s10; text: s00<s10
                "w_none": [[0.1, 0.6], [0.6, 0.1]]}
    for name, s in matrices.items():
        texts[f"{name} c0"], texts[f"{name} c1"] = _vec(*s[0]), _vec(*s[1])
        cases.append(WinogroundCase(name, "relation", (f"{name} c0", f"{name} c1"), (img0, img1)))
    cases.append(GenerationCase("g0", "count", "a red circle", Expected((ExpectedObject("circle"),))))
    df = clip_scores(cases, ScoreEncoder(texts))
    assert len(df) == 14  # the generation case is skipped
    cp = df[df["kind"] == "caption_pair"].set_index("id")
    np.testing.assert_allclose(cp["score_true"], 0.5, atol=1e-12)
    assert cp["hit"].tolist() == [True] * 7 + [False] * 3
    assert cp.loc["c9", "best_foil"] == "foil 9" and cp.loc["c9", "n_foils"] == 2
    assert cp.loc["c2", "margin"] == pytest.approx(0.2)
    w = df[df["kind"] == "winoground"].set_index("id")
    assert w.loc["w_all", ["text_hit", "image_hit", "group_hit"]].tolist() == [True, True, True]
    assert w.loc["w_text", ["text_hit", "image_hit", "group_hit"]].tolist() == [True, False, False]
    assert w.loc["w_image", ["text_hit", "image_hit", "group_hit"]].tolist() == [False, True, False]
    assert w.loc["w_none", ["text_hit", "image_hit", "group_hit"]].tolist() == [False, False, False]
    assert w.loc["w_text", "s01"] == pytest.approx(0.7)

    s = clip_summary(df).set_index(["kind", "metric", "category"])
    assert s.loc[("caption_pair", "accuracy", "colour_swap"), "accuracy"] == 1.0
    assert s.loc[("caption_pair", "accuracy", "shape_swap"), "accuracy"] == pytest.approx(0.4)
    assert s.loc[("caption_pair", "accuracy", "macro"), "accuracy"] == pytest.approx(0.7)
    assert s.loc[("caption_pair", "accuracy", "shape_swap"), "lo"] == pytest.approx(wilson_interval(2, 5)[0])
    assert s.loc[("caption_pair", "accuracy", "shape_swap"), "chance"] == pytest.approx((4 * 0.5 + 1 / 3) / 5)
    assert s.loc[("winoground", "text", "relation"), "accuracy"] == 0.5
    assert s.loc[("winoground", "image", "relation"), "accuracy"] == 0.5
    assert s.loc[("winoground", "group", "relation"), "accuracy"] == 0.25
    assert s.loc[("winoground", "group", "relation"), "chance"] == pytest.approx(1 / 6)


def test_winoground_hits_and_errors():
    assert winoground_hits(np.eye(2)) == {"text_hit": True, "image_hit": True, "group_hit": True}
    assert winoground_hits(np.ones((2, 2)))["group_hit"] is False  # ties are misses
    with pytest.raises(ValueError, match=r"s must be a 2x2 matrix s\[caption, image\], got shape \(3,\)"):
        winoground_hits(np.ones(3))
    with pytest.raises(TypeError, match="encoder must have encode_text and encode_image"):
        clip_scores([], object())


# ----------------------------------------------------------------------------------------------- suites

def test_make_suite_covers_every_category_and_round_trips(tmp_path):
    cases = make_suite(70, seed=3)
    assert len(cases) == 70
    assert {c.kind for c in cases} == {"caption_pair", "winoground", "generation"}
    for kind in ("caption_pair", "winoground", "generation"):
        assert {c.category for c in cases if c.kind == kind} == set(SHAPES_CATEGORIES)
    assert {c.tags[0] for c in cases} == {"train", "held_out"}
    assert make_suite(70, seed=3) == cases and make_suite(70, seed=4) != cases
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(suite_lines(cases)) + "\n")
    assert load_suite(path) == cases
    assert json.loads(json.dumps(case_to_dict(cases[0]))) == case_to_dict(cases[0])


def test_make_suite_foils_have_known_answers():
    for c in make_suite(140, seed=0):
        if c.kind != "caption_pair":
            continue
        truth, foil = parse(c.caption), parse(c.foils[0])
        assert truth != foil
        if c.category == "typographic":  # the caption follows the pixels, the foil the printed word
            o = c.image.objects[0]
            assert o.label is not None and truth == canonical(Scene((Obj(o.shape, o.colour, o.size, o.position),)))
            assert getattr(foil.objects[0], c.meta["attribute"]) == o.label
        elif c.category == "count":
            assert len(foil.objects) != len(truth.objects)
        elif c.category in ("colour_swap", "shape_swap", "size_swap"):
            attr = c.meta["attribute"]
            assert sorted(getattr(o, attr) for o in truth.objects) == sorted(getattr(o, attr) for o in foil.objects)
            others = [a for a in ("shape", "colour", "size") if a != attr]
            assert [[getattr(o, a) for a in others] for o in truth.objects] == \
                   [[getattr(o, a) for a in others] for o in foil.objects]
        else:
            assert parse(c.caption) == canonical(c.image)
        if c.category == "held_out_composition":
            assert any((o.colour, o.shape) in HELD_OUT_PAIRS for o in c.image.objects)
            assert c.tags == ("held_out",)


def _line(**kw):
    d = {"kind": "caption_pair", "id": "a", "category": "colour_swap", "image": "x.png", "caption": "a red circle",
         "foils": ["a blue circle"]}
    d.update(kw)
    return json.dumps({k: v for k, v in d.items() if v is not ...})


@pytest.mark.parametrize("line, match", [
    ("{not json", r"s\.jsonl:2: not valid JSON"),
    (_line(caption=...), r"s\.jsonl:2: field 'caption' is missing"),
    (_line(foils="a blue circle"), r"s\.jsonl:2: field 'foils': expected a non-empty list of non-empty strings"),
    (_line(foils=["ok", ""]), r"s\.jsonl:2: field 'foils\[1\]': expected a non-empty string"),
    (_line(category="colour_swapp"), r"s\.jsonl:2: field 'category': 'colour_swapp' is not known; accepted: "
                                     r"colour_swap, shape_swap"),
    (_line(kind="pairs"), r"s\.jsonl:2: field 'kind': 'pairs' is not known; accepted: caption_pair, winoground"),
    (_line(colour="red"), r"s\.jsonl:2: field 'colour' is not known for kind 'caption_pair'; accepted:"),
    (_line(id="first"), r"s\.jsonl:2: field 'id': 'first' was already used on line 1"),
    (_line(image={"objects": [{"shape": "circle", "colour": "pink"}]}),
     r"s\.jsonl:2: field 'image': not a valid ShapesWorld scene: colour='pink' is not known"),
    (_line(image=3), r"s\.jsonl:2: field 'image': expected an image path"),
    (json.dumps({"kind": "generation", "id": "g", "category": "count", "prompt": "p",
                 "expected": {"objects": [{"shape": "circle", "hue": "red"}]}}),
     r"s\.jsonl:2: field 'expected.objects\[0\]': unknown attributes \['hue'\]; accepted: shape, colour"),
    (json.dumps({"kind": "generation", "id": "g", "category": "count", "prompt": "p",
                 "expected": {"objects": [{"shape": "circle"}], "relation": {"kind": "near", "a": 0, "b": 0}}}),
     r"s\.jsonl:2: field 'expected': relation kind 'near' is not known; accepted: left of, right of"),
    (json.dumps({"kind": "winoground", "id": "w", "category": "object", "captions": ["a"], "images": ["x", "y"]}),
     r"s\.jsonl:2: field 'captions': expected a list of 2 non-empty strings"),
])
def test_malformed_lines_name_file_line_and_field(line, match):
    with pytest.raises(SuiteError, match=match):
        parse_suite([_line(id="first"), line], "s.jsonl")


def test_suite_loader_file_errors_and_custom_categories(tmp_path):
    with pytest.raises(FileNotFoundError, match="suite file not found: .*make one with"):
        load_suite(tmp_path / "none.jsonl")
    with pytest.raises(SuiteError, match="no cases"):
        parse_suite(["", "# comment"], "e.jsonl")
    (tmp_path / "s.jsonl").write_text(_line(category="x-mine", image="pic.png") + "\n")
    (case,) = load_suite(tmp_path / "s.jsonl")
    assert case.category == "x-mine" and case.image == str(tmp_path / "pic.png")


# ----------------------------------------------------------------------------------------------- loaders

def test_aro_loader_relation_and_attribution(tmp_path):
    rel = [{"image_id": "1", "image_path": "1.jpg", "bbox_x": 2, "bbox_y": 3, "bbox_w": 10, "bbox_h": 5,
            "relation_name": "on", "true_caption": "the cup is on the table", "false_caption": "the table is on the cup"},
           {"image_id": "2", "image_path": "2.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 4, "bbox_h": 4,
            "relation_name": "under", "true_caption": "the cat is under the bed", "false_caption": "the bed is under the cat"}]
    (tmp_path / "visual_genome_relation.json").write_text(json.dumps(rel))
    cases = load_aro(tmp_path / "visual_genome_relation.json", tmp_path / "images")
    assert [c.category for c in cases] == ["vg_relation"] * 2
    assert cases[0].image == str(tmp_path / "images" / "1.jpg") and cases[0].foils == ("the table is on the cup",)
    assert cases[0].meta == {"group": "on", "source": "aro", "crop": [2.0, 3.0, 12.0, 8.0]}
    att = [{"image_path": "3.jpg", "attributes": ["white", "black"], "true_caption": "the white dog and the black cat",
            "false_caption": "the black dog and the white cat"}]
    (tmp_path / "visual_genome_attribution.json").write_text(json.dumps(att))
    (c,) = load_aro(tmp_path / "visual_genome_attribution.json", tmp_path)
    assert c.category == "vg_attribution" and c.meta["group"] == "white_black" and "crop" not in c.meta
    bad = [dict(rel[0], true_caption=None)]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SuiteError, match=r"bad\.json: entry 0: field 'true_caption': expected a non-empty str"):
        load_aro(tmp_path / "bad.json", tmp_path)
    with pytest.raises(ValueError, match="kind='vg' is not known; accepted: 'auto', 'vg_relation'"):
        load_aro(tmp_path / "bad.json", tmp_path, kind="vg")


def test_aro_crop_is_applied_when_scoring(tmp_path):
    im = Image.new("RGB", (10, 10), (0, 0, 0))
    im.paste((1, 0, 0), (5, 0, 10, 10))  # right half has red value 1
    im.save(tmp_path / "1.png")
    rel = [{"image_path": "1.png", "bbox_x": 5, "bbox_y": 0, "bbox_w": 5, "bbox_h": 10, "relation_name": "on",
            "true_caption": "t", "false_caption": "f"}]
    (tmp_path / "r.json").write_text(json.dumps(rel))
    cases = load_aro(tmp_path / "r.json", tmp_path)
    df = clip_scores(cases, ScoreEncoder({"t": _vec(0, 0.9), "f": _vec(0.9, 0)}))
    assert bool(df["hit"].iloc[0]) and df["score_true"].iloc[0] == pytest.approx(0.9)


def test_winoground_folder_loader(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("ex_0_img_0", "ex_0_img_1"):
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / f"{name}.png")
    ex = {"id": 0, "caption_0": "an old person kisses a young person", "caption_1": "a young person kisses an old person",
          "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "tag": "Noun", "secondary_tag": "", "num_main_preds": 1,
          "collapsed_tag": "Object"}
    (tmp_path / "examples.jsonl").write_text(json.dumps(ex) + "\n")
    (c,) = load_winoground(tmp_path)
    assert c.id == "winoground-0" and c.category == "object" and c.tags == ("Noun",)
    assert c.images == (str(tmp_path / "images" / "ex_0_img_0.png"), str(tmp_path / "images" / "ex_0_img_1.png"))
    (tmp_path / "examples.jsonl").write_text(json.dumps(dict(ex, image_1="missing")) + "\n")
    with pytest.raises(FileNotFoundError, match=r"examples\.jsonl:1: image 'missing' not found"):
        load_winoground(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no examples.jsonl"):
        load_winoground(tmp_path / "images")


def test_sugarcrepe_loader(tmp_path):
    data = {"0": {"filename": "000000397133.jpg", "caption": "A man is in a kitchen making pizzas.",
                  "negative_caption": "A man is in a kitchen eating pizzas."}}
    (tmp_path / "replace_rel.json").write_text(json.dumps(data))
    (tmp_path / "swap_att.json").write_text(json.dumps({"7": dict(data["0"], negative_caption="x")}))
    cases = load_sugarcrepe(tmp_path, "/coco/val2017")
    assert [(c.id, c.category) for c in cases] == [("sugarcrepe-replace_rel-0", "replace_rel"),
                                                   ("sugarcrepe-swap_att-7", "swap_att")]
    assert cases[0].image == "/coco/val2017/000000397133.jpg"
    (tmp_path / "mine.json").write_text("{}")
    with pytest.raises(ValueError, match="mine.json is not a SugarCrepe file name; accepted: add_obj.json"):
        load_sugarcrepe(tmp_path / "mine.json", tmp_path)


def test_geneval_loader(tmp_path):
    lines = [{"tag": "position", "include": [{"class": "dog", "count": 1},
                                             {"class": "cat", "count": 1, "position": ["right of", 0]}],
              "prompt": "a photo of a cat right of a dog"},
             {"tag": "counting", "include": [{"class": "clock", "count": 3}], "exclude": [{"class": "clock", "count": 4}],
              "prompt": "a photo of three clocks"},
             {"tag": "color_attr", "include": [{"class": "bed", "count": 1, "color": "yellow"}],
              "prompt": "a photo of a yellow bed"}]
    (tmp_path / "evaluation_metadata.jsonl").write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    a, b, c = load_geneval(tmp_path / "evaluation_metadata.jsonl")
    assert a.category == "position" and a.expected.relation == ("right of", 1, 0)
    assert b.expected.objects == (ExpectedObject("clock", count=3, max_count=3),)
    assert c.expected.objects[0].colour == "yellow"
    (tmp_path / "bad.jsonl").write_text(json.dumps(dict(lines[0], tag="colours")) + "\n")
    with pytest.raises(SuiteError, match=r"bad\.jsonl:1: field 'tag': 'colours' is not known; accepted: single_object"):
        load_geneval(tmp_path / "bad.jsonl")


# ----------------------------------------------------------------------------------------------- probes

def test_linear_probes_beat_the_bag_only_when_binding_is_encoded():
    scenes = probe_scenes(300, seed=0)
    # a "binding" embedding: one-hot of each position's colour and shape; a "bag" embedding: counts only
    pos = ("left", "centre", "right", "top", "bottom")
    from unclip_core.data.shapes import COLOURS, SHAPES
    bound = np.zeros((len(scenes), len(pos) * (len(COLOURS) + len(SHAPES))))
    for k, s in enumerate(scenes):
        for o in s.objects:
            base = pos.index(o.position) * (len(COLOURS) + len(SHAPES))
            bound[k, base + COLOURS.index(o.colour)] = 1
            bound[k, base + len(COLOURS) + SHAPES.index(o.shape)] = 1
    bound += np.random.default_rng(0).normal(0, 0.01, bound.shape)
    df = linear_probes(scenes, {"z_i": bound}, questions=["colour of the object on the left",
                                                          "position of the <colour> object"])
    t = df.set_index(["question", "features"])["accuracy"]
    assert t[("colour of the object on the left", "z_i")] == 1.0  # measured: bag 0.57, majority 0.18
    assert t[("colour of the object on the left", "bag")] < 0.7
    assert t[("position of the <colour> object", "z_i")] > 0.95  # measured 0.98
    assert t[("position of the <colour> object", "bag")] < 0.35  # the bag cannot say where: measured 0.24
    assert df.set_index(["question", "features"]).loc[("colour of the object on the left", "z_i"), "n"] == \
        sum(any(o.position == "left" for o in s.objects) for s in scenes)
    assert df.iloc[:3].equals(linear_probes(scenes, {"z_i": bound}, questions=["colour of the object on the left"]))
    with pytest.raises(ValueError, match="question='colour' is not known; accepted:"):
        linear_probes(scenes, {"z_i": bound}, questions=["colour"])
    with pytest.raises(ValueError, match=r"features\['z_i'\] has 3 rows but there are 300 scenes"):
        linear_probes(scenes, {"z_i": bound[:3]})
    with pytest.raises(ValueError, match="features name 'bag' is reserved"):
        linear_probes(scenes, {"bag": bound})


# ----------------------------------------------------------------------------------------------- generation

RED_LEFT_BLUE = Scene((Obj("circle", "red", "small", "left"), Obj("square", "blue", "large", "right")),
                      Relation("left of"))


def test_check_expected_known_answers():
    e = Expected.from_scene(RED_LEFT_BLUE)
    assert all(check_expected(RED_LEFT_BLUE, e).values())
    swapped = Scene((Obj("circle", "blue", "small", "left"), Obj("square", "red", "large", "right")),
                    Relation("left of"))
    c = check_expected(swapped, e)
    assert c["object0.shape"] and c["object1.shape"] and not c["object0.colour"] and not c["object1.colour"]
    assert not c["object0"] and not c["relation"] and c["n_objects"]
    s = attribute_summary(c)
    assert s["colour_ok"] == 0.0 and s["shape_ok"] == 1.0 and s["size_ok"] == 1.0 and s["hit"] == 0.0
    reversed_ = Scene((Obj("square", "blue", "large", "left"), Obj("circle", "red", "small", "right")),
                      Relation("left of"))
    c = check_expected(reversed_, e)
    assert c["object0.colour"] and c["object0.size"] and not c["object0.position"] and not c["relation"]
    extra = (*RED_LEFT_BLUE.objects, Obj("star", "green", "small", "centre"))
    c = check_expected(extra, e)
    assert c["object0"] and c["relation"] and not c["n_objects"]
    counting = Expected((ExpectedObject("clock", count=3, max_count=3),))
    three = [SimpleNamespace(shape="clock", colour=None, size=None, position=None) for _ in range(3)]
    assert check_expected(three, counting)["object0"]
    assert not check_expected(three + three[:1], counting)["object0"]


def test_shapes_judge_with_a_read_out_and_vocabulary_errors():
    case = GenerationCase("g", "colour_swap", caption(RED_LEFT_BLUE), Expected.from_scene(RED_LEFT_BLUE),
                          RED_LEFT_BLUE)
    judge = ShapesJudge(read_scene=lambda image: RED_LEFT_BLUE)
    checks = judge(None, case)
    assert set(checks) == {"object0", "object0.shape", "object0.colour", "object0.size", "object0.position",
                           "object1", "object1.shape", "object1.colour", "object1.size", "object1.position",
                           "relation", "n_objects"}
    assert all(checks.values())
    swapped = Scene((Obj("circle", "blue", "small", "left"), Obj("square", "red", "large", "right")),
                    Relation("left of"))
    s = attribute_summary(ShapesJudge(read_scene=lambda image: swapped)(None, case))
    assert (s["colour_ok"], s["shape_ok"], s["size_ok"], s["position_ok"], s["hit"]) == (0.0, 1.0, 1.0, 1.0, 0.0)
    s = attribute_summary(ShapesJudge(read_scene=lambda image: None)(None, case))  # nothing read
    assert (s["shape_ok"], s["count_ok"], s["hit"]) == (0.0, 0.0, 0.0)
    counting = GenerationCase("n", "count", "two circles", Expected((ExpectedObject("circle", count=2),)))
    two = Scene((Obj("circle", "red", "small", "left"), Obj("circle", "blue", "large", "right")), Relation("left of"))
    assert ShapesJudge(read_scene=lambda image: two)(None, counting) == {"object0": True, "object0.shape": True}
    dog = GenerationCase("d", "single_object", "a dog", Expected((ExpectedObject("dog"),)))
    with pytest.raises(ValueError, match="case 'd': expected.objects\\[0\\].shape='dog' is not a ShapesWorld v2 shape; "
                                         "accepted: circle, square"):
        judge.check_case(dog)
    with pytest.raises(TypeError, match="read_scene must be a callable"):
        ShapesJudge(read_scene=3)


def test_shapes_judge_reads_rendered_scenes():
    from unclip_core.checkpoint import BUNDLED_DIR
    if not (BUNDLED_DIR / "shapes-readout").is_dir():
        pytest.skip("the bundled shapes-readout classifier is not trained yet")
    from unclip_core.data.shapes import render
    case = GenerationCase("g", "colour_swap", caption(RED_LEFT_BLUE), Expected.from_scene(RED_LEFT_BLUE))
    assert attribute_summary(ShapesJudge()(render(RED_LEFT_BLUE, 64), case))["hit"] == 1.0
    swapped = Scene((Obj("circle", "blue", "small", "left"), Obj("square", "red", "large", "right")),
                    Relation("left of"))
    assert attribute_summary(ShapesJudge()(render(swapped, 64), case))["colour_ok"] == 0.0


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from tiny_models import write_tiny_pipeline
    from unclip_core.pipeline import UnCLIP
    return UnCLIP.load(write_tiny_pipeline(tmp_path_factory.mktemp("bpipe")))


FAST = {"decoder_steps": 2, "prior_steps": 2, "upsampler_steps": (1,)}  # SamplingConfig fields


def bright_judge(image, case):
    return {"bright": float(np.asarray(image).mean()) > 100.0}


@pytest.mark.filterwarnings("ignore:prompt")
def test_generation_scores_on_a_tiny_pipeline(tiny_pipe):
    cases = make_suite(1, seed=0, kinds=["generation"])
    seen = []
    df = generation_scores(cases, tiny_pipe, bright_judge, n_images=2, seed=0,
                           sampling=FAST, upsample=None,
                           on_images=lambda c, p, ims: seen.append((c.id, p, len(ims))))
    assert len(df) == 4 and seen == [(c.id, p, 2) for c in cases for p in ("prior", "true_z_i")]
    assert df["checks"].map(lambda s: set(json.loads(s))).eq({"bright"}).all()
    assert (df["hit"] == df["checks"].map(lambda s: float(json.loads(s)["bright"]))).all()
    again = generation_scores(cases, tiny_pipe, bright_judge, n_images=2, seed=0,
                              sampling=tiny_pipe.sampling.replace(**FAST), upsample=None)
    pd.testing.assert_frame_equal(df, again)
    with pytest.raises(ValueError, match="paths='decoder' is not known; accepted: 'prior', 'true_z_i'"):
        generation_scores(cases, tiny_pipe, bright_judge, paths=("decoder",))
    with pytest.raises(TypeError, match="judge must be callable"):
        generation_scores(cases, tiny_pipe, "judge")


def test_json_schema_accepts_make_suite_and_rejects_what_the_loader_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "suite.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for line in suite_lines(make_suite(21, seed=1)):
        validator.validate(json.loads(line))
    for bad in (_line(caption=...), _line(category="colour_swapp"), _line(foils=[]), _line(colour="red")):
        assert not validator.is_valid(json.loads(bad))
