"""Binding suites: case types, the JSONL format with a validating loader, and the built-in ShapesWorld suite.

A suite is a JSONL file, one case per line (docs/binding.md, docs/suite.schema.json). Kinds:
`caption_pair` (ARO / SugarCrepe: an image, its caption, foils), `winoground` (two captions, two images) and
`generation` (GenEval / T2I-CompBench: a prompt and the objects the image must show).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from unclip_core.checks import check_positive_int
from unclip_core.data.shapes import (COLOURS, CURRENT_WORLD, Obj, Relation, Scene, World, canonical, caption,
                                     foil_scenes, get_world, render, sample_scene)
from unclip_core.imageio import load_image

KINDS: tuple[str, ...] = ("caption_pair", "winoground", "generation")
# The built-in ShapesWorld categories; make_suite covers every one of them.
SHAPES_CATEGORIES: tuple[str, ...] = ("colour_swap", "shape_swap", "size_swap", "relation_order", "count",
                                      "held_out_composition", "typographic")
# Categories of the public formats the loaders read, and ShapesWorld's one-object foils.
PUBLIC_CATEGORIES: tuple[str, ...] = (
    "colour_change", "shape_change", "size_change", "position_change",       # ShapesWorld one-object foils
    "vg_relation", "vg_attribution",                                         # ARO
    "add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att",  # SugarCrepe
    "object", "relation", "both",                                            # Winoground collapsed_tag
    "single_object", "two_object", "counting", "colors", "position", "color_attr",  # GenEval tags
)
CATEGORIES: tuple[str, ...] = SHAPES_CATEGORIES + PUBLIC_CATEGORIES
CUSTOM_PREFIX = "x-"  # user categories: any name starting with "x-"
RELATION_KINDS: tuple[str, ...] = ("left of", "right of", "above", "below")
EXPECTED_OBJECT_KEYS: tuple[str, ...] = ("shape", "colour", "size", "position", "count", "max_count")

ImageSpec = str | Scene  # a path (relative to the suite file's folder) or a ShapesWorld scene rendered on use


class SuiteError(ValueError):
    """A malformed suite line; the message names the file, the line number and the field."""


# ----------------------------------------------------------------------------------------------- case types

@dataclass(frozen=True)
class ExpectedObject:
    """One object a generated image must show, GenEval's "include" entry: said attributes, count in [count, max_count]."""
    shape: str | None = None      # a ShapesWorld shape, or any class name for real images
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    count: int = 1
    max_count: int | None = None

    def __post_init__(self) -> None:
        for name in ("shape", "colour", "size", "position"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise TypeError(f"{name} must be a non-empty string or null, got {type(v).__name__} {v!r}")
        check_positive_int("count", self.count, minimum=0)
        if self.max_count is not None:
            check_positive_int("max_count", self.max_count, minimum=0)
            if self.max_count < self.count:
                raise ValueError(f"max_count={self.max_count} is below count={self.count}; pass max_count >= count")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in EXPECTED_OBJECT_KEYS}


@dataclass(frozen=True)
class Expected:
    """What a generated image must show: objects, an optional relation objects[a] `kind` objects[b], exact total."""
    objects: tuple[ExpectedObject, ...]
    relation: tuple[str, int, int] | None = None
    n_objects: int | None = None  # exact number of objects in the image, when given

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("expected.objects is empty; list at least one object the image must show")
        if self.relation is not None:
            kind, a, b = self.relation
            if kind not in RELATION_KINDS:
                raise ValueError(f"relation kind {kind!r} is not known; accepted: {', '.join(RELATION_KINDS)}")
            for name, v in (("a", a), ("b", b)):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(self.objects):
                    raise ValueError(f"relation.{name}={v!r} must index expected.objects (0..{len(self.objects) - 1})")
            if a == b:
                raise ValueError(f"relation needs two different objects, got a=b={a}")
        if self.n_objects is not None:
            check_positive_int("n_objects", self.n_objects)

    def to_dict(self) -> dict[str, Any]:
        rel = None if self.relation is None else dict(zip(("kind", "a", "b"), self.relation))
        return {"objects": [o.to_dict() for o in self.objects], "relation": rel, "n_objects": self.n_objects}

    @classmethod
    def from_scene(cls, scene: Scene, exact: bool = True) -> "Expected":
        """The objects and relation a ShapesWorld scene shows (labels are not checked: they are words, not pixels)."""
        s = canonical(scene)
        objs = tuple(ExpectedObject(o.shape, o.colour, o.size, o.position) for o in s.objects)
        rel = None if s.relation is None else (s.relation.kind, s.relation.a, s.relation.b)
        return cls(objs, rel, len(objs) if exact else None)


@dataclass(frozen=True)
class CaptionPairCase:
    """ARO / SugarCrepe style: hit when the image scores its caption above every foil."""
    kind: ClassVar[str] = "caption_pair"
    id: str
    category: str
    image: ImageSpec
    caption: str
    foils: tuple[str, ...]
    tags: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WinogroundCase:
    """Winoground style (Thrush et al. 2022): caption c_k belongs to image i_k, k = 0, 1."""
    kind: ClassVar[str] = "winoground"
    id: str
    category: str
    captions: tuple[str, str]
    images: tuple[ImageSpec, ImageSpec]
    tags: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationCase:
    """GenEval / T2I-CompBench style: generate from `prompt`, judge against `expected`; `image` is the truth."""
    kind: ClassVar[str] = "generation"
    id: str
    category: str
    prompt: str
    expected: Expected
    image: ImageSpec | None = None  # the true image, for decoding its z_i (separates prior from decoder errors)
    tags: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


Case = CaptionPairCase | WinogroundCase | GenerationCase
_CASE_TYPES = {"caption_pair": CaptionPairCase, "winoground": WinogroundCase, "generation": GenerationCase}
_CASE_KEYS = {
    "caption_pair": ({"kind", "id", "category", "image", "caption", "foils"}, {"tags", "meta"}),
    "winoground": ({"kind", "id", "category", "captions", "images"}, {"tags", "meta"}),
    "generation": ({"kind", "id", "category", "prompt", "expected"}, {"image", "tags", "meta"}),
}


# ----------------------------------------------------------------------------------------------- (de)serialising

def _image_to_json(image: ImageSpec | None) -> Any:
    if image is None or isinstance(image, str):
        return image
    return image.to_dict()


def case_to_dict(case: Case) -> dict[str, Any]:
    """JSON-able dict of a case (one suite line); case_from_dict(case_to_dict(c)) == c."""
    d: dict[str, Any] = {"kind": case.kind, "id": case.id, "category": case.category}
    if isinstance(case, CaptionPairCase):
        d.update(image=_image_to_json(case.image), caption=case.caption, foils=list(case.foils))
    elif isinstance(case, WinogroundCase):
        d.update(captions=list(case.captions), images=[_image_to_json(i) for i in case.images])
    elif isinstance(case, GenerationCase):
        d.update(prompt=case.prompt, expected=case.expected.to_dict())
        if case.image is not None:
            d["image"] = _image_to_json(case.image)
    else:
        raise TypeError(f"case must be a CaptionPairCase, WinogroundCase or GenerationCase, got {type(case).__name__}")
    if case.tags:
        d["tags"] = list(case.tags)
    if case.meta:
        d["meta"] = dict(case.meta)
    return d


class _Where:
    """Where a value came from, for messages: 'suite.jsonl:12: field 'foils[1]''."""

    def __init__(self, source: str, line: int | None) -> None:
        self.prefix = f"{source}:{line}" if line is not None else source

    def error(self, fld: str, expected: str, got: Any, fix: str = "") -> SuiteError:
        shown = repr(got) if not isinstance(got, (dict, list)) else json.dumps(got)[:80]
        tail = f"; {fix}" if fix else ""
        return SuiteError(f"{self.prefix}: field {fld!r}: expected {expected}, got {type(got).__name__} {shown}{tail}")


def _str(w: _Where, d: Mapping, key: str) -> str:
    v = d[key]
    if not isinstance(v, str) or not v.strip():
        raise w.error(key, "a non-empty string", v)
    return v


def _str_list(w: _Where, v: Any, fld: str, n: int | None = None) -> tuple[str, ...]:
    want = f"a list of {n} non-empty strings" if n else "a non-empty list of non-empty strings"
    if not isinstance(v, list) or not v or (n is not None and len(v) != n):
        raise w.error(fld, want, v)
    for k, s in enumerate(v):
        if not isinstance(s, str) or not s.strip():
            raise w.error(f"{fld}[{k}]", "a non-empty string", s)
    return tuple(v)


def _image(w: _Where, v: Any, fld: str) -> ImageSpec:
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, Mapping):
        try:
            return Scene.from_dict(v)
        except (ValueError, TypeError) as exc:
            raise SuiteError(f"{w.prefix}: field {fld!r}: not a valid ShapesWorld scene: {exc}") from None
    raise w.error(fld, "an image path (string) or a ShapesWorld scene (dict from Scene.to_dict())", v)


def _category(w: _Where, v: Any) -> str:
    if not isinstance(v, str) or not (v in CATEGORIES or (v.startswith(CUSTOM_PREFIX) and len(v) > 2)):
        raise SuiteError(f"{w.prefix}: field 'category': {v!r} is not known; accepted: {', '.join(CATEGORIES)}, "
                         f"or a custom name starting with {CUSTOM_PREFIX!r} (e.g. 'x-my-probe')")
    return v


def _expected(w: _Where, v: Any) -> Expected:
    if not isinstance(v, Mapping):
        raise w.error("expected", "a dict {objects: [...], relation: {...} | null, n_objects: int | null}", v)
    unknown = set(v) - {"objects", "relation", "n_objects"}
    if unknown:
        raise SuiteError(f"{w.prefix}: field 'expected': unknown keys {sorted(unknown)}; "
                         "accepted: objects, relation, n_objects")
    objs = v.get("objects")
    if not isinstance(objs, list) or not objs:
        raise w.error("expected.objects", "a non-empty list of objects", objs)
    parsed = []
    for k, o in enumerate(objs):
        fld = f"expected.objects[{k}]"
        if not isinstance(o, Mapping):
            raise w.error(fld, "a dict of attributes", o)
        bad = set(o) - set(EXPECTED_OBJECT_KEYS)
        if bad:
            raise SuiteError(f"{w.prefix}: field {fld!r}: unknown attributes {sorted(bad)}; "
                             f"accepted: {', '.join(EXPECTED_OBJECT_KEYS)}")
        try:
            parsed.append(ExpectedObject(**o))
        except (ValueError, TypeError) as exc:
            raise SuiteError(f"{w.prefix}: field {fld!r}: {exc}") from None
    rel = v.get("relation")
    if rel is not None:
        if not isinstance(rel, Mapping) or set(rel) != {"kind", "a", "b"}:
            raise w.error("expected.relation", "null or a dict {kind, a, b}", rel)
        rel = (rel["kind"], rel["a"], rel["b"])
    try:
        return Expected(tuple(parsed), rel, v.get("n_objects"))
    except (ValueError, TypeError) as exc:
        raise SuiteError(f"{w.prefix}: field 'expected': {exc}") from None


def case_from_dict(d: Any, source: str = "<case>", line: int | None = None) -> Case:
    """Validate one suite record and build its case; errors name source, line and field."""
    w = _Where(source, line)
    if not isinstance(d, Mapping):
        raise SuiteError(f"{w.prefix}: expected a JSON object (one case per line), got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise SuiteError(f"{w.prefix}: field 'kind': {kind!r} is not known; accepted: {', '.join(KINDS)}")
    required, optional = _CASE_KEYS[kind]
    missing = required - set(d)
    if missing:
        raise SuiteError(f"{w.prefix}: field {sorted(missing)[0]!r} is missing; a {kind} case needs "
                         f"{', '.join(sorted(required))}")
    unknown = set(d) - required - optional
    if unknown:
        raise SuiteError(f"{w.prefix}: field {sorted(unknown)[0]!r} is not known for kind {kind!r}; accepted: "
                         f"{', '.join(sorted(required | optional))}")
    cid = d["id"]
    if isinstance(cid, bool) or not isinstance(cid, (str, int)) or (isinstance(cid, str) and not cid.strip()):
        raise w.error("id", "a non-empty string", cid)
    common = {"id": str(cid), "category": _category(w, d["category"])}
    tags = d.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise w.error("tags", "a list of strings", tags)
    meta = d.get("meta", {})
    if not isinstance(meta, Mapping):
        raise w.error("meta", "a dict", meta)
    common.update(tags=tuple(tags), meta=dict(meta))
    if kind == "caption_pair":
        return CaptionPairCase(image=_image(w, d["image"], "image"), caption=_str(w, d, "caption"),
                               foils=_str_list(w, d["foils"], "foils"), **common)
    if kind == "winoground":
        images = d["images"]
        if not isinstance(images, list) or len(images) != 2:
            raise w.error("images", "a list of 2 images (paths or scenes)", images)
        return WinogroundCase(captions=_str_list(w, d["captions"], "captions", 2),  # type: ignore[arg-type]
                              images=(_image(w, images[0], "images[0]"), _image(w, images[1], "images[1]")),
                              **common)
    image = d.get("image")
    return GenerationCase(prompt=_str(w, d, "prompt"), expected=_expected(w, d["expected"]),
                          image=None if image is None else _image(w, image, "image"), **common)


def parse_suite(lines: Iterable[str], source: str = "<suite>") -> list[Case]:
    """Cases from JSONL lines (blank lines and lines starting with '#' skipped); ids must be unique."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for lineno, text in enumerate(lines, start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{source}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                             "each line must be one JSON object") from None
        case = case_from_dict(d, source, lineno)
        if case.id in seen:
            raise SuiteError(f"{source}:{lineno}: field 'id': {case.id!r} was already used on line "
                             f"{seen[case.id]}; ids must be unique")
        seen[case.id] = lineno
        cases.append(case)
    if not cases:
        raise SuiteError(f"{source}: no cases; a suite has one JSON case per line")
    return cases


def load_suite(path: str | Path) -> list[Case]:
    """Read and validate a JSONL suite; relative image paths are resolved against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file not found: {path} (make one with `unclip-explorer binding make-suite`)")
    if path.is_dir():
        raise SuiteError(f"{path} is a folder; pass the suite's .jsonl file (`binding make-suite` writes suite.jsonl)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path} is not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset {exc.start}); a "
                         "suite is JSON Lines, one case per line: make one with `unclip-explorer binding make-suite` "
                         "or `binding convert`") from None
    cases = parse_suite(text.splitlines(), str(path))
    return [resolve_paths(c, path.parent, source=str(path)) for c in cases]


def suite_lines(cases: Sequence[Case]) -> list[str]:
    """The JSONL lines of a suite (without newlines)."""
    return [json.dumps(case_to_dict(c), sort_keys=False) for c in cases]


def resolve_paths(case: Case, root: str | Path, source: str = "<suite>") -> Case:
    """Make the case's relative image paths absolute against `root`; a relative path may not leave `root`
    (`../../etc/hostname` in a suite someone sent you is refused, naming the case). Absolute paths are kept."""
    base = Path(root).resolve()

    def fix(im: ImageSpec | None) -> ImageSpec | None:
        if isinstance(im, str) and not Path(im).is_absolute():
            full = (base / im).resolve()
            if full != base and base not in full.parents:
                raise SuiteError(f"{source}: case {case.id!r}: image path {im!r} leaves the suite's folder {base}; "
                                 "keep a suite's images under its folder, or write the path as an absolute path "
                                 "if you mean that file")
            return str(Path(root) / im)
        return im
    if isinstance(case, WinogroundCase):
        return replace(case, images=(fix(case.images[0]), fix(case.images[1])))
    return replace(case, image=fix(case.image))


def case_image(spec: ImageSpec, size: int = 64, crop: Sequence[float] | None = None):
    """The PIL image of an image spec: a ShapesWorld scene rendered at `size`, or a file read from disk
    (cropped to the box (x0, y0, x1, y1) in pixels when given, as ARO crops to its bounding boxes)."""
    if isinstance(spec, Scene):
        return render(spec, size)
    image = load_image(spec)
    if crop is not None:
        if len(crop) != 4:
            raise ValueError(f"crop must be a box (x0, y0, x1, y1) in pixels, got {crop!r}")
        image = image.crop(tuple(int(round(float(v))) for v in crop))
    return image


# ----------------------------------------------------------------------------------------------- make_suite

_SWAP_ATTRIBUTE = {"colour_swap": "colour", "shape_swap": "shape", "size_swap": "size", "relation_order": "position"}


def _unlabelled(scene: Scene) -> Scene:
    return Scene(tuple(replace(o, label=None) for o in scene.objects), scene.relation, scene.world)


def _swapped_values(truth: Scene, foil: Scene, attribute: str) -> list[str]:
    """The truth's values of `attribute` on the objects the foil changed, sorted (for swap confusion charts)."""
    t, f = canonical(truth), canonical(foil)
    if attribute == "position":
        return sorted(f"{o.colour} {o.shape}" for o in t.objects if o not in f.objects)
    return sorted(str(getattr(a, attribute)) for a, b in zip(t.objects, f.objects)
                  if getattr(a, attribute) != getattr(b, attribute))


def _split_tag(scene: Scene) -> str:
    held_out = get_world(scene.world).held_out_pairs
    return "held_out" if any((o.colour, o.shape) in held_out for o in scene.objects) else "train"


def _swap_truth(rng: np.random.Generator, category: str, split: str, w: World) -> tuple[Scene, Scene]:
    for _ in range(1000):
        s = sample_scene(rng, n_objects=int(rng.integers(2, 4)), split=split, world=w)
        found = dict(foil_scenes(s))
        if category in found:
            return s, found[category]
    raise RuntimeError(f"no {category} foil found in 1000 scenes")  # cannot happen: swaps exist for most scenes


def _count_truth(rng: np.random.Generator, split: str, w: World) -> tuple[Scene, Scene]:
    """A foil with one object more or fewer: drop the middle (or second) object, or add one in the middle."""
    n = int(rng.integers(2, 4))
    s = sample_scene(rng, n_objects=n, split=split, world=w)  # objects come in canonical order, jitter kept
    objs = list(s.objects)
    horizontal = objs[0].position == "left"
    if n == 3:  # drop the middle object: the outer two keep their places
        return s, Scene((objs[0], objs[2]), Relation("left of" if horizontal else "above"), w.version)
    if rng.random() < 0.5:  # two objects -> the first alone
        return s, Scene((replace(objs[0], position="centre"),), world=w.version)
    used = {(o.colour, o.shape) for o in objs}
    pool = [(c, sh) for c in COLOURS for sh in w.shapes if (c, sh) not in used and (c, sh) not in w.held_out_pairs]
    colour, shape = pool[rng.integers(len(pool))]
    extra = Obj(shape, colour, "small" if rng.random() < 0.5 else "large", "centre")
    return s, Scene((objs[0], extra, objs[1]), world=w.version)  # a third object in the middle of the row / column


def _typographic_truth(rng: np.random.Generator, split: str, w: World) -> tuple[Scene, Scene, str]:
    """One object labelled with a conflicting colour or shape word; the foil follows the word, not the pixels."""
    s = sample_scene(rng, n_objects=1, split=split, world=w)
    o = s.objects[0]
    if rng.random() < 0.5:
        word = [c for c in COLOURS if c != o.colour][rng.integers(len(COLOURS) - 1)]
        follow_word, kind = replace(o, colour=word), "colour"
    else:
        word = [sh for sh in w.shapes if sh != o.shape][rng.integers(len(w.shapes) - 1)]
        follow_word, kind = replace(o, shape=word), "shape"
    labelled = Scene((replace(o, label=word),), world=w.version)
    return labelled, Scene((follow_word,), world=w.version), kind


def _make_case(kind: str, category: str, i: int, seed: int, w: World) -> Case:
    rng = np.random.default_rng([seed, i])
    split = "held_out" if category == "held_out_composition" or rng.random() < 0.2 else "train"
    meta: dict[str, Any] = {}
    if category in _SWAP_ATTRIBUTE:
        truth, foil = _swap_truth(rng, category, "train" if split == "train" else "held_out", w)
        attribute = _SWAP_ATTRIBUTE[category]
        meta = {"attribute": attribute, "swap": _swapped_values(truth, foil, attribute)}
    elif category == "held_out_composition":
        sub = ("colour_swap", "shape_swap", "size_swap", "relation_order")[rng.integers(4)]
        truth, foil = _swap_truth(rng, sub, "held_out", w)
        meta = {"foil_category": sub, "attribute": _SWAP_ATTRIBUTE[sub],
                "swap": _swapped_values(truth, foil, _SWAP_ATTRIBUTE[sub])}
    elif category == "count":
        truth, foil = _count_truth(rng, split, w)
        meta = {"n_true": len(truth.objects), "n_foil": len(foil.objects)}
    elif category == "typographic":
        truth, foil, label_kind = _typographic_truth(rng, split, w)
        o = truth.objects[0]
        meta = {"attribute": label_kind, "label": o.label, "pixels": getattr(o, label_kind),
                "swap": sorted([getattr(o, label_kind), o.label])}
    else:
        raise ValueError(f"category={category!r} is not a ShapesWorld category; accepted: {', '.join(SHAPES_CATEGORIES)}")
    split = _split_tag(truth)
    meta["split"] = split
    tags = (split,)
    cid = f"{kind[:3]}-{category}-{i:05d}"
    if kind == "caption_pair":
        text = caption(_unlabelled(truth)) if category == "typographic" else caption(truth)
        return CaptionPairCase(cid, category, truth, text, (caption(foil),), tags, meta)
    if kind == "winoground":
        if category == "typographic":  # the foil image carries the word of the truth's pixels
            o, f = truth.objects[0], foil.objects[0]
            foil_img = Scene((replace(f, label=getattr(o, meta["attribute"])),), world=w.version)
            return WinogroundCase(cid, category, (caption(_unlabelled(truth)), caption(foil)), (truth, foil_img),
                                  tags, meta)
        return WinogroundCase(cid, category, (caption(truth), caption(foil)), (truth, foil), tags, meta)
    prompt = caption(truth)  # typographic prompts carry the label: "a red circle labelled 'blue' ..."
    return GenerationCase(cid, category, prompt, Expected.from_scene(truth), truth, tags, meta)


def make_suite(n: int = 500, seed: int = 0, kinds: Sequence[str] = KINDS,
               weights: Sequence[float] | None = None, *, world: int | World = CURRENT_WORLD) -> list[Case]:
    """The built-in ShapesWorld binding suite: n cases over every category, train and held-out compositions.

    Cases cycle through SHAPES_CATEGORIES within each kind; `weights` (default 0.6 / 0.2 / 0.2 for
    caption_pair / winoground / generation) split n between `kinds`. Case i depends only on (seed, i, world);
    its scenes record the ShapesWorld version.
    """
    n = check_positive_int("n", n)
    the_world = get_world(world)
    kinds = list(kinds)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kinds contains {k!r}, which is not known; accepted: {', '.join(KINDS)}")
    if not kinds:
        raise ValueError(f"kinds is empty; pass some of {', '.join(KINDS)}")
    default = {"caption_pair": 0.6, "winoground": 0.2, "generation": 0.2}
    w = np.array([default[k] for k in kinds] if weights is None else list(weights), dtype=float)
    if w.shape != (len(kinds),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(kinds)} non-negative numbers (one per kind), got {weights!r}")
    counts = np.floor(n * w / w.sum()).astype(int)
    counts[0] += n - counts.sum()
    cases: list[Case] = []
    i = 0
    for kind, count in zip(kinds, counts):
        for j in range(count):
            cases.append(_make_case(kind, SHAPES_CATEGORIES[j % len(SHAPES_CATEGORIES)], i, seed, the_world))
            i += 1
    return cases


def probe_scenes(n: int = 600, seed: int = 0, split: str = "all", *,
                 world: int | World = CURRENT_WORLD) -> list[Scene]:
    """Scenes of 2-3 objects for the representation probes; scene i depends only on (seed, i, world)."""
    n = check_positive_int("n", n)
    return [sample_scene(np.random.default_rng([seed, 7, i]), n_objects=2 + i % 2, split=split, world=world)
            for i in range(n)]


__all__ = ["KINDS", "CATEGORIES", "SHAPES_CATEGORIES", "PUBLIC_CATEGORIES", "CUSTOM_PREFIX", "RELATION_KINDS",
           "EXPECTED_OBJECT_KEYS", "SuiteError", "ExpectedObject", "Expected", "CaptionPairCase", "WinogroundCase",
           "GenerationCase", "Case", "case_to_dict", "case_from_dict", "parse_suite", "load_suite", "suite_lines",
           "resolve_paths", "case_image", "make_suite", "probe_scenes"]
