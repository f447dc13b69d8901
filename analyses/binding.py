"""Variable-binding probes (Ramesh et al. 2022, sec. 7: unCLIP confuses which attribute goes with which object).

Three levels, each a pure function over what the caller passes:
  - CLIP-level: `clip_scores(cases, encoder)` scores the true caption against foils (ARO, SugarCrepe) and
    Winoground's 2x2 (Thrush et al. 2022); `accuracy_table` gives per-category accuracy with intervals.
  - representation-level: `linear_probes(scenes, z_i, z_t)` decodes "colour of the object on the left",
    "shape of the red object", ... from the embeddings with cross-validated logistic regression, against a
    bag-of-attributes baseline that knows which attributes occur but not which object has them.
  - generation-level: `generation_scores(cases, pipe, judge)` generates from the prompt (prior + decoder) and
    from the true image's z_i (decoder only) and judges each image (GenEval-style checks, Ghosh et al. 2023).
Suites: analyses.binding_suite; public formats: analyses.binding_formats; statistics: analyses.binding_stats.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from analyses.binding_formats import load_aro, load_geneval, load_sugarcrepe, load_winoground
from analyses.binding_stats import (CI_METHODS, accuracy_table, bootstrap_interval, macro_accuracy, mcnemar,
                                    paired_bootstrap, wilson_interval)
from analyses.binding_suite import (CATEGORIES, KINDS, SHAPES_CATEGORIES, CaptionPairCase, Case, Expected,
                                    ExpectedObject, GenerationCase, ImageSpec, SuiteError, WinogroundCase,
                                    case_from_dict, case_image, case_to_dict, load_suite, make_suite, parse_suite,
                                    probe_scenes, suite_lines)
from unclip_core.checks import check_choice, check_embeddings, check_positive_int
from unclip_core.data.shapes import (COLOURS, CURRENT_WORLD, POSITIONS, SIZES, Obj, Relation, Scene, caption, complete,
                                     get_world, object_xy)

Judge = Callable[[Any, GenerationCase], Mapping[str, bool]]  # (PIL image, case) -> {check name: passed}
GENERATION_PATHS: tuple[str, ...] = ("prior", "true_z_i")


class Encoder(Protocol):
    def encode_text(self, texts: list[str]) -> Any: ...
    def encode_image(self, images: list) -> Any: ...


def _unit(z: Any, name: str) -> np.ndarray:
    if isinstance(z, torch.Tensor):
        z = z.detach().cpu().float().numpy()
    z = np.asarray(z, dtype=np.float64)
    check_embeddings(name, z)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _split(case: Case) -> str:
    s = case.meta.get("split")
    return str(s) if s is not None else ("held_out" if "held_out" in case.tags else "")


# ----------------------------------------------------------------------------------------------- CLIP level

def clip_scores(cases: Sequence[Case], encoder: Encoder, image_size: int = 64) -> pd.DataFrame:
    """Cosine scores z_i . z_t of caption_pair and winoground cases (generation cases are skipped).

    One row per case: id, kind, category, group, split; caption_pair: score_true, score_foil (the best foil),
    best_foil, margin, hit (true strictly above every foil; ties count as misses, as in Winoground);
    winoground: s00, s01, s10, s11 (s_ci: caption c, image i), text_hit, image_hit, group_hit, and hit = group_hit.
    """
    if not hasattr(encoder, "encode_text") or not hasattr(encoder, "encode_image"):
        raise TypeError(f"encoder must have encode_text and encode_image (e.g. ClipEncoder.load('shapes-clip')), "
                        f"got {type(encoder).__name__}")
    todo = [c for c in cases if isinstance(c, (CaptionPairCase, WinogroundCase))]
    for c in cases:
        if not isinstance(c, (CaptionPairCase, WinogroundCase, GenerationCase)):
            raise TypeError(f"cases must hold suite cases (analyses.binding_suite), got {type(c).__name__}")
    cols = ["id", "kind", "category", "group", "split", "n_foils", "score_true", "score_foil", "best_foil", "margin",
            "s00", "s01", "s10", "s11", "text_hit", "image_hit", "group_hit", "hit"]
    if not todo:
        return pd.DataFrame(columns=cols)
    texts: list[str] = []
    images: list[tuple[ImageSpec, Any]] = []
    for c in todo:
        if isinstance(c, CaptionPairCase):
            texts += [c.caption, *c.foils]
            images.append((c.image, c.meta.get("crop")))
        else:
            texts += list(c.captions)
            images += [(im, None) for im in c.images]
    t_index = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    z_t = _unit(encoder.encode_text(list(t_index)), "encoder.encode_text output")
    z_i = _unit(encoder.encode_image([case_image(im, image_size, crop) for im, crop in images]), "encoder.encode_image output")
    rows = []
    j = 0
    for c in todo:
        row: dict[str, Any] = {"id": c.id, "kind": c.kind, "category": c.category,
                               "group": str(c.meta.get("group", c.category)), "split": _split(c)}
        if isinstance(c, CaptionPairCase):
            s = z_t[[t_index[t] for t in (c.caption, *c.foils)]] @ z_i[j]
            j += 1
            best = int(np.argmax(s[1:]))
            row.update(n_foils=len(c.foils), score_true=float(s[0]), score_foil=float(s[1 + best]), best_foil=c.foils[best],
                       margin=float(s[0] - s[1 + best]), hit=bool(s[0] > s[1:].max()))
        else:
            zt = z_t[[t_index[t] for t in c.captions]]
            s = zt @ z_i[j:j + 2].T  # (caption, image)
            j += 2
            w = winoground_hits(s)
            row.update(s00=float(s[0, 0]), s01=float(s[0, 1]), s10=float(s[1, 0]), s11=float(s[1, 1]), **w,
                       hit=w["group_hit"])
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=cols)


def winoground_hits(s: np.ndarray) -> dict[str, bool]:
    """Winoground's text, image and group scores of one 2x2 score matrix s[caption, image] (Thrush et al. 2022)."""
    s = np.asarray(s, dtype=float)
    if s.shape != (2, 2):
        raise ValueError(f"s must be a 2x2 matrix s[caption, image], got shape {s.shape}")
    text = bool(s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1])
    image = bool(s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0])
    return {"text_hit": text, "image_hit": image, "group_hit": text and image}


def clip_summary(scores: pd.DataFrame, ci: str = "wilson", level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """Per-category accuracy of clip_scores output: caption_pair hits, winoground text / image / group scores.

    Columns: kind, metric, category, n, k, accuracy, lo, hi, chance; rows 'macro' and 'all' close each block.
    """
    check_choice("ci", ci, CI_METHODS)
    blocks = []
    for kind, metrics in (("caption_pair", ("hit",)), ("winoground", ("text_hit", "image_hit", "group_hit"))):
        sub = scores[scores["kind"] == kind]
        if sub.empty:
            continue
        for metric in metrics:
            t = accuracy_table(sub[metric].astype(bool).to_numpy(), sub["category"].to_numpy(), ci, level, n_boot,
                               seed).rename(columns={"group": "category"})
            t.insert(0, "metric", metric.replace("_hit", "").replace("hit", "accuracy"))
            t.insert(0, "kind", kind)
            if kind == "winoground":
                t["chance"] = 1 / 6 if metric == "group_hit" else 0.25
            else:  # 1 / (1 + number of foils), averaged like the accuracy
                chance = 1.0 / (1.0 + sub["n_foils"].astype(float))
                by = chance.groupby(sub["category"]).mean()
                t["chance"] = t["category"].map(by)
                t.loc[t["category"] == "macro", "chance"] = float(by.mean())
                t.loc[t["category"] == "all", "chance"] = float(chance.mean())
            blocks.append(t)
    if not blocks:
        return pd.DataFrame(columns=["kind", "metric", "category", "n", "k", "accuracy", "lo", "hi", "chance"])
    return pd.concat(blocks, ignore_index=True)


# ----------------------------------------------------------------------------------------------- representation

def _bag(scene: Scene) -> np.ndarray:
    """Bag of attributes: how often each colour, shape and size occurs; says nothing of which object has which."""
    shapes = get_world(scene.world).shapes
    v = np.zeros(len(COLOURS) + len(shapes) + len(SIZES))
    for o in scene.objects:
        v[COLOURS.index(o.colour)] += 1
        v[len(COLOURS) + shapes.index(o.shape)] += 1
        v[len(COLOURS) + len(shapes) + SIZES.index(o.size)] += 1
    return v


def _at(scene: Scene, position: str) -> Obj | None:
    found = [o for o in scene.objects if o.position == position]
    return found[0] if len(found) == 1 else None


def _only(scene: Scene, attr: str, value: str) -> Obj | None:
    found = [o for o in scene.objects if getattr(o, attr) == value]
    return found[0] if len(found) == 1 else None


# question -> (condition values, label function(scene, condition) -> label or None); the condition values
# WORLD_SHAPES stand for the shapes of the scenes' ShapesWorld version
WORLD_SHAPES = "<the world's shapes>"
PROBE_QUESTIONS: dict[str, tuple[tuple[str | None, ...] | str, Callable[[Scene, str | None], str | None]]] = {
    "colour of the object on the left": ((None,), lambda s, _: getattr(_at(s, "left"), "colour", None)),
    "shape of the object on the left": ((None,), lambda s, _: getattr(_at(s, "left"), "shape", None)),
    "colour of the object on the right": ((None,), lambda s, _: getattr(_at(s, "right"), "colour", None)),
    "colour of the object at the top": ((None,), lambda s, _: getattr(_at(s, "top"), "colour", None)),
    "size of the object on the left": ((None,), lambda s, _: getattr(_at(s, "left"), "size", None)),
    "shape of the <colour> object": (COLOURS, lambda s, c: getattr(_only(s, "colour", c), "shape", None)),
    "colour of the <shape> object": (WORLD_SHAPES, lambda s, c: getattr(_only(s, "shape", c), "colour", None)),
    "position of the <colour> object": (COLOURS, lambda s, c: getattr(_only(s, "colour", c), "position", None)),
}


def linear_probes(scenes: Sequence[Scene], features: Mapping[str, Any], n_splits: int = 5, seed: int = 0,
                  level: float = 0.95, questions: Sequence[str] | None = None, C: float = 1.0) -> pd.DataFrame:
    """Cross-validated linear probes (logistic regression) decoding bound attributes from embeddings.

    `features` maps a name ("z_i", "z_t") to an (n, d) array aligned with `scenes`; the baselines "bag"
    (bag of attributes, binding-blind) and "majority" are added. Questions with a <slot> train one probe per
    slot value (e.g. one per colour) and pool the held-out predictions. Returns question, features, n,
    n_classes, accuracy, lo, hi (Wilson over the pooled held-out predictions).
    """
    from threadpoolctl import threadpool_limits

    scenes = list(scenes)
    for k, s in enumerate(scenes):
        if not isinstance(s, Scene) or not s.is_complete:
            raise TypeError(f"scenes[{k}] must be a complete ShapesWorld Scene, got {s!r}"[:200])
    worlds = sorted({s.world for s in scenes})
    if len(worlds) > 1:
        raise ValueError(f"scenes mix ShapesWorld versions {worlds}; probe scenes of one version at a time")
    n_splits = check_positive_int("n_splits", n_splits, minimum=2)
    if not isinstance(features, Mapping) or not features:
        raise TypeError("features must be a dict {name: (n, d) array}, e.g. {'z_i': z_i, 'z_t': z_t}")
    mats = {}
    for name, z in features.items():
        if name in ("bag", "majority"):
            raise ValueError(f"features name {name!r} is reserved for the baselines; rename it")
        z = _unit(z, f"features[{name!r}]")
        if z.shape[0] != len(scenes):
            raise ValueError(f"features[{name!r}] has {z.shape[0]} rows but there are {len(scenes)} scenes; "
                             "pass one embedding per scene, in the same order")
        mats[name] = z
    mats["bag"] = np.stack([_bag(s) for s in scenes])
    questions = list(PROBE_QUESTIONS) if questions is None else list(questions)
    for q in questions:
        check_choice("question", q, PROBE_QUESTIONS)
    # small fits: BLAS threads only add overhead (measured 4x slower with 2 threads)
    with threadpool_limits(1):
        return _probe_rows(scenes, mats, questions, n_splits, seed, level, C)


def _probe_rows(scenes: list[Scene], mats: dict[str, np.ndarray], questions: list[str], n_splits: int, seed: int,
                level: float, C: float) -> pd.DataFrame:
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for q in questions:
        slots, label_fn = PROBE_QUESTIONS[q]
        if slots == WORLD_SHAPES:
            slots = get_world(scenes[0].world).shapes
        correct: dict[str, list[np.ndarray]] = {name: [] for name in [*mats, "majority"]}
        n_total, classes = 0, set()
        for slot in slots:
            idx, y = [], []
            for k, s in enumerate(scenes):
                lab = label_fn(s, slot)
                if lab is not None:
                    idx.append(k)
                    y.append(lab)
            y_arr = np.asarray(y)
            if len(idx) < 2 * n_splits or len(set(y)) < 2:
                continue  # too few cases, or a constant answer: nothing to learn
            n_total += len(idx)
            classes |= set(y)
            cv = KFold(n_splits, shuffle=True, random_state=seed)
            for name, X in [*mats.items(), ("majority", mats["bag"])]:
                model = (DummyClassifier(strategy="most_frequent") if name == "majority" else
                         make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)))
                pred = cross_val_predict(model, X[idx], y_arr, cv=cv)
                correct[name].append(pred == y_arr)
        for name, parts in correct.items():
            if not parts:
                rows.append({"question": q, "features": name, "n": 0, "n_classes": 0, "accuracy": np.nan,
                             "lo": np.nan, "hi": np.nan})
                continue
            c = np.concatenate(parts)
            lo, hi = wilson_interval(int(c.sum()), c.size, level)
            rows.append({"question": q, "features": name, "n": int(c.size), "n_classes": len(classes),
                         "accuracy": float(c.mean()), "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["question", "features", "n", "n_classes", "accuracy", "lo", "hi"])


def probe_embeddings(scenes: Sequence[Scene], encoder: Encoder, image_size: int = 64,
                     batch_size: int = 64) -> dict[str, np.ndarray]:
    """z_i of each rendered scene and z_t of its plain caption, for linear_probes."""
    batch_size = check_positive_int("batch_size", batch_size)
    z_i, z_t = [], []
    for s in range(0, len(scenes), batch_size):
        chunk = list(scenes[s:s + batch_size])
        z_i.append(_unit(encoder.encode_image([case_image(sc, image_size) for sc in chunk]), "z_i"))
        z_t.append(_unit(encoder.encode_text([caption(sc) for sc in chunk]), "z_t"))
    return {"z_i": np.concatenate(z_i), "z_t": np.concatenate(z_t)}


# ----------------------------------------------------------------------------------------------- generation

_ATTRS = ("shape", "colour", "size", "position")


def _matches(o: Obj, e: ExpectedObject, attrs: Sequence[str]) -> bool:
    return all(getattr(e, a) is None or getattr(o, a) == getattr(e, a) for a in attrs)


def _related(a: Obj, b: Obj, kind: str) -> bool:
    if a.position is None or b.position is None:
        return False
    (xa, ya), (xb, yb) = object_xy(a), object_xy(b)
    return {"left of": xa < xb, "right of": xa > xb, "above": ya < yb, "below": ya > yb}[kind]


def check_expected(found: Scene | Sequence[Obj], expected: Expected) -> dict[str, bool]:
    """GenEval-style checks of the objects read from an image against what the prompt asked for.

    object{k}: count <= #(objects with every said attribute) <= max_count; object{k}.{attr}: enough objects
    of the right shape with that attribute (binding of attr to shape); relation: some match of a stands in
    the relation to some match of b (shape, colour and size only, then geometry); n_objects: exact total.
    """
    objs = list(found.objects if isinstance(found, Scene) else found)
    if not isinstance(expected, Expected):
        raise TypeError(f"expected must be an Expected, got {type(expected).__name__}")
    checks: dict[str, bool] = {}
    for k, e in enumerate(expected.objects):
        full = sum(_matches(o, e, _ATTRS) for o in objs)
        checks[f"object{k}"] = e.count <= full and (e.max_count is None or full <= e.max_count)
        if e.shape is not None:
            checks[f"object{k}.shape"] = sum(o.shape == e.shape for o in objs) >= e.count
        for attr in ("colour", "size", "position"):
            if getattr(e, attr) is not None:
                checks[f"object{k}.{attr}"] = sum(_matches(o, e, ("shape", attr)) for o in objs) >= e.count
    if expected.relation is not None:
        kind, a, b = expected.relation
        ea, eb = expected.objects[a], expected.objects[b]
        who = ("shape", "colour", "size")
        checks["relation"] = any(_related(oa, ob, kind) for oa in objs for ob in objs
                                 if oa is not ob and _matches(oa, ea, who) and _matches(ob, eb, who))
    if expected.n_objects is not None:
        checks["n_objects"] = len(objs) == expected.n_objects
    return checks


def attribute_summary(checks: Mapping[str, bool]) -> dict[str, float]:
    """Per-attribute pass (1.0 / 0.0, nan when not checked) of a check dict: shape, colour, size, position,
    relation, count, objects (every object{k}) and hit (every check)."""
    out: dict[str, float] = {}
    for attr in ("shape", "colour", "size", "position"):
        vals = [v for k, v in checks.items() if k.endswith(f".{attr}")]
        out[f"{attr}_ok"] = float(all(vals)) if vals else np.nan
    out["relation_ok"] = float(checks["relation"]) if "relation" in checks else np.nan
    out["count_ok"] = float(checks["n_objects"]) if "n_objects" in checks else np.nan
    objs = [v for k, v in checks.items() if k.startswith("object") and "." not in k]
    out["objects_ok"] = float(all(objs)) if objs else np.nan
    out["hit"] = float(all(checks.values())) if checks else np.nan
    return out


def _expected_scene(expected: Expected, world: int = CURRENT_WORLD) -> Scene | None:
    """The expected objects as a ShapesWorld Scene, when they are one (single counts, the world's words)."""
    if any(e.count != 1 or e.max_count is not None for e in expected.objects):
        return None
    if expected.n_objects not in (None, len(expected.objects)):
        return None
    rel = None
    if expected.relation is not None:
        kind, a, b = expected.relation
        kind, a, b = {"right of": ("left of", b, a), "below": ("above", b, a)}.get(kind, (kind, a, b))
        rel = Relation(kind, a, b)
    try:
        return Scene(tuple(Obj(e.shape, e.colour, e.size, e.position) for e in expected.objects), rel, world)
    except (ValueError, TypeError):
        return None


def checks_from_score(score: Mapping[str, Any]) -> dict[str, bool]:
    """unclip_core.data.readout.score_scene output -> check dict (object{k}.{attr}, object{k}, relation, n_objects)."""
    checks: dict[str, bool] = {}
    for entry in score["objects"]:
        k = entry["expected"]
        said = {a: entry[a] for a in _ATTRS if entry.get(a) is not None}
        for attr, ok in said.items():
            checks[f"object{k}.{attr}"] = bool(ok)
        checks[f"object{k}"] = entry.get("matched") is not None and all(said.values())
    if score.get("relation") is not None:
        checks["relation"] = bool(score["relation"])
    checks["n_objects"] = bool(score["count_correct"])
    return checks


class ShapesJudge:
    """Judge generated ShapesWorld images with the read-out (unclip_core.data.readout): read the scene out of
    the pixels, then score it with readout.score_scene (Hungarian matching on position), or check_expected
    for specs a Scene cannot hold (counts, GenEval-style)."""

    def __init__(self, read_scene: Callable[[Any], Scene | None] | None = None, *, world: int | None = None) -> None:
        if read_scene is not None and not callable(read_scene):
            raise TypeError(f"read_scene must be a callable image -> Scene, got {type(read_scene).__name__}")
        self._read = read_scene
        # the ShapesWorld version judged; None: each case's own (its true image's), else the current world
        self.world = None if world is None else get_world(world).version

    def case_world(self, case: GenerationCase) -> int:
        """The ShapesWorld version a case is judged in."""
        if self.world is not None:
            return self.world
        return case.image.world if isinstance(case.image, Scene) else CURRENT_WORLD

    @property
    def read_scene(self) -> Callable[[Any], Scene | None]:
        if self._read is None:
            try:
                from unclip_core.data.readout import read_scene
            except ImportError as exc:
                raise ValueError("the ShapesWorld read-out (unclip_core.data.readout.read_scene) is not available "
                                 f"({exc}); pass judge=callable(image, case) -> {{check: bool}}") from None
            self._read = read_scene
        return self._read

    def check_case(self, case: GenerationCase) -> None:
        """Raise when the case asks for something ShapesWorld cannot show (e.g. GenEval's COCO classes)."""
        w = get_world(self.case_world(case))
        vocab = {"shape": w.shapes, "colour": COLOURS, "size": SIZES, "position": POSITIONS}
        for k, e in enumerate(case.expected.objects):
            for attr, accepted in vocab.items():
                v = getattr(e, attr)
                if v is not None and v not in accepted:
                    raise ValueError(f"case {case.id!r}: expected.objects[{k}].{attr}={v!r} is not a ShapesWorld "
                                     f"v{w.version} {attr}; accepted: {', '.join(accepted)}. For real images pass "
                                     "your own judge=callable(image, case) -> {check: bool}")

    def __call__(self, image: Any, case: GenerationCase) -> dict[str, bool]:
        from unclip_core.data.readout import MIN_READ_SIZE, READ_SIZE
        if hasattr(image, "size") and hasattr(image, "resize") and min(image.size) < MIN_READ_SIZE:
            # bicubic, as `evaluate` reads small decoder outputs
            image = image.convert("RGB").resize((READ_SIZE, READ_SIZE), resample=3)
        world = self.case_world(case)
        read = self.read_scene(image) if self._read is not None else self.read_scene(image, world=world)
        scene = _expected_scene(case.expected, world)
        if scene is not None:
            from unclip_core.data.readout import score_scene
            return checks_from_score(score_scene(read, scene))
        return check_expected(() if read is None else read, case.expected)


def model_world(model: Any) -> int:
    """The ShapesWorld version a CLIP encoder or pipeline was trained on (its CLIP's), else the current one."""
    encoder = getattr(model, "clip", model)
    world = getattr(encoder, "world", None)
    return CURRENT_WORLD if world is None else int(world)


def check_suite_world(cases: Sequence[Case], model: Any) -> None:
    """Refuse a suite whose ShapesWorld scenes are of another version than the model was trained on."""
    encoder = getattr(model, "clip", model)
    world = getattr(encoder, "world", None)
    if world is None:
        return  # not a ShapesWorld model: any scene renders
    found: dict[int, str] = {}
    for c in cases:
        specs = c.images if isinstance(c, WinogroundCase) else (c.image,)
        for spec in specs:
            if isinstance(spec, Scene) and spec.world != world:
                found.setdefault(spec.world, c.id)
    if found:
        v, cid = sorted(found.items())[0]
        raise ValueError(f"the suite holds ShapesWorld v{v} scenes (e.g. case {cid!r}) but the model "
                         f"{getattr(encoder, 'spec', '')!r} was trained on ShapesWorld v{world}; make a v{world} "
                         f"suite with `unclip-explorer binding make-suite --world {world}` "
                         f"(make_suite(..., world={world}))")


def case_seed(seed: int, case_id: str) -> int:
    """A per-case seed from (seed, id): independent of case order, so resumed runs draw the same images."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{case_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def true_image(case: GenerationCase, image_size: int = 64, seed: int = 0, *,
               world: int = CURRENT_WORLD) -> Any | None:
    """The case's true image: its `image`, else a render of the expected scene when it is ShapesWorld-complete
    (in ShapesWorld version `world`)."""
    if case.image is not None:
        return case_image(case.image, image_size)
    try:
        objs = tuple(Obj(e.shape, e.colour, e.size, e.position) for e in case.expected.objects)
        return case_image(complete(Scene(objs, world=world), case_seed(seed, case.id)), image_size)
    except (ValueError, TypeError):
        return None


def generation_scores(cases: Sequence[Case], pipe: Any, judge: Judge, n_images: int = 2, seed: int = 0,
                      paths: Sequence[str] = GENERATION_PATHS, image_size: int = 64, *,
                      sampling: Any = None, upsample: bool | int | None = False,
                      on_images: Callable[[GenerationCase, str, list], None] | None = None) -> pd.DataFrame:
    """Generate n images per generation case and judge them (Ramesh et al. 2022; checks as in GenEval).

    paths: "prior" = pipe.text_to_image(prompt) (prior + decoder); "true_z_i" = pipe.decode of the true
    image's z_i (decoder only), which separates prior errors from decoder errors. sampling: a SamplingConfig or
    a dict of its fields over pipe.sampling (None: pipe.sampling); upsample: the cascade to run (False: the
    decoder's images, which a ShapesWorld judge reads). One row per image: id, category, split, path, k, seed,
    checks (JSON), shape_ok ... count_ok, objects_ok, hit.
    """
    n_images = check_positive_int("n_images", n_images)
    for p in paths:
        check_choice("paths", p, GENERATION_PATHS)
    if not callable(judge):
        raise TypeError(f"judge must be callable (image, case) -> {{check: bool}}, got {type(judge).__name__}")
    gen_cases = [c for c in cases if isinstance(c, GenerationCase)]
    if hasattr(judge, "check_case"):
        for c in gen_cases:
            judge.check_case(c)
    from unclip_core.sampling import SamplingConfig, check_sampling
    sc = check_sampling(sampling, getattr(pipe, "sampling", None) or SamplingConfig())
    rows = []
    for c in gen_cases:
        s = case_seed(seed, c.id)
        for path in paths:
            if path == "prior":
                images = pipe.text_to_image([c.prompt], n=n_images, sampling=sc, upsample=upsample, seed=s).images
            else:
                im = true_image(c, image_size, seed, world=model_world(pipe))
                if im is None:
                    continue  # no true image to encode
                z_i = pipe.encode_images([im])
                images = pipe.decode(z_i.repeat(n_images, 1), sampling=sc, upsample=upsample, seed=s).images
            if on_images is not None:
                on_images(c, path, images)
            for k, im in enumerate(images):
                checks = {str(key): bool(v) for key, v in dict(judge(im, c)).items()}
                rows.append({"id": c.id, "kind": c.kind, "category": c.category, "split": _split(c), "path": path,
                             "k": k, "seed": s, "checks": json.dumps(checks, sort_keys=True),
                             **attribute_summary(checks)})
    cols = ["id", "kind", "category", "split", "path", "k", "seed", "checks", "shape_ok", "colour_ok", "size_ok",
            "position_ok", "relation_ok", "count_ok", "objects_ok", "hit"]
    return pd.DataFrame(rows, columns=cols)


def generation_summary(scores: pd.DataFrame, ci: str = "wilson", level: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Per-category accuracy of generation_scores output, per path, over images; plus attribute pass rates."""
    blocks = []
    for path, sub in scores.groupby("path", sort=True):
        t = accuracy_table(sub["hit"].astype(bool).to_numpy(), sub["category"].to_numpy(), ci, level, n_boot,
                           seed).rename(columns={"group": "category"})
        for attr in ("colour_ok", "shape_ok", "size_ok", "position_ok", "relation_ok", "count_ok"):
            by = sub.groupby("category")[attr].mean()
            t[attr] = t["category"].map(by).astype(float)
            t.loc[t["category"].isin(["macro", "all"]), attr] = float(sub[attr].mean())
        t.insert(0, "path", path)
        blocks.append(t)
    if not blocks:
        return pd.DataFrame(columns=["path", "category", "n", "k", "accuracy", "lo", "hi"])
    return pd.concat(blocks, ignore_index=True)


__all__ = [
    "KINDS", "CATEGORIES", "SHAPES_CATEGORIES", "GENERATION_PATHS", "PROBE_QUESTIONS", "SuiteError",
    "CaptionPairCase", "WinogroundCase", "GenerationCase", "Expected", "ExpectedObject", "Judge", "ShapesJudge",
    "case_to_dict", "case_from_dict", "parse_suite", "load_suite", "suite_lines", "case_image", "make_suite",
    "probe_scenes", "model_world", "check_suite_world", "load_aro", "load_winoground", "load_sugarcrepe", "load_geneval",
    "clip_scores", "winoground_hits", "clip_summary", "linear_probes", "probe_embeddings", "check_expected",
    "attribute_summary", "checks_from_score", "case_seed", "true_image", "generation_scores", "generation_summary",
    "wilson_interval", "bootstrap_interval", "accuracy_table", "macro_accuracy", "mcnemar", "paired_bootstrap",
]
