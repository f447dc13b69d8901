"""ShapesWorld scenes: objects, relations, layouts, held-out pairs and seeded sampling."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from unclip_core.checks import check_choice

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")
# Hue order, ~30-80 degrees apart; RGB chosen saturated so colour read-out is a nearest-neighbour lookup.
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 45), "orange": (255, 130, 0), "yellow": (245, 235, 40),
    "green": (30, 185, 70), "blue": (40, 100, 240), "purple": (160, 50, 220),
}
BACKGROUND_RGB: tuple[int, int, int] = (18, 18, 22)
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
RELATIONS: tuple[str, ...] = ("left of", "above")
SPLITS: tuple[str, ...] = ("train", "held_out", "all")
# Words a label may print on an object: colour and shape words, for typographic probes.
LABEL_WORDS: tuple[str, ...] = COLOURS + SHAPES

# Geometry in normalised units (the image is the unit square, y down); the same at every render size.
POSITION_XY: dict[str, tuple[float, float]] = {
    "left": (0.18, 0.5), "right": (0.82, 0.5), "top": (0.5, 0.18), "bottom": (0.5, 0.82), "centre": (0.5, 0.5),
}
RADIUS: dict[str, float] = {"small": 0.075, "large": 0.13}  # circumradius of every shape
MAX_SHIFT: float = 0.02  # |dx|, |dy| bound: neighbours 0.32 apart, 2 * (0.13 + 0.02) = 0.30, so never overlap
MAX_ANGLE: float = 20.0  # degrees of in-plane rotation that sampling draws from

# Held out of split="train" for zero-shot composition: one per shape and per colour except orange,
# so every colour keeps >= 4 shapes and every shape keeps 5 colours in training.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"), ("green", "star"), ("blue", "hexagon"), ("yellow", "circle"), ("purple", "square"),
})

ROW: tuple[str, ...] = ("left", "centre", "right")
COLUMN: tuple[str, ...] = ("top", "centre", "bottom")
_RELATION_POSITIONS: dict[str, tuple[str, str]] = {"left of": ("left", "right"), "above": ("top", "bottom")}
_POSITION_ORDER: dict[str, int] = {"left": 0, "top": 0, "centre": 1, "right": 2, "bottom": 2}


def _check_optional_choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value is not None:
        check_choice(name, value, accepted)


def _check_float(name: str, value: object, bound: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if bound is not None and abs(float(value)) > bound + 1e-12:
        raise ValueError(f"{name}={value!r} is out of range; expected |{name}| <= {bound} "
                         "(larger shifts could make objects overlap)")


@dataclass(frozen=True)
class Obj:
    """One object; None marks a field a partial spec (a typed prompt) leaves unsaid."""
    shape: str | None
    colour: str | None
    size: str | None = None
    position: str | None = None
    label: str | None = None
    dx: float = 0.0      # jitter in normalised units, never captioned
    dy: float = 0.0
    angle: float = 0.0   # degrees, never captioned

    def __post_init__(self) -> None:
        _check_optional_choice("shape", self.shape, SHAPES)
        _check_optional_choice("colour", self.colour, COLOURS)
        _check_optional_choice("size", self.size, SIZES)
        _check_optional_choice("position", self.position, POSITIONS)
        _check_optional_choice("label", self.label, LABEL_WORDS)
        _check_float("dx", self.dx, MAX_SHIFT)
        _check_float("dy", self.dy, MAX_SHIFT)
        _check_float("angle", self.angle)

    @property
    def is_complete(self) -> bool:
        return None not in (self.shape, self.colour, self.size, self.position)


@dataclass(frozen=True)
class Relation:
    """objects[a] is `kind` objects[b]; kind is "left of" or "above"."""
    kind: str
    a: int = 0
    b: int = 1

    def __post_init__(self) -> None:
        check_choice("relation kind", self.kind, RELATIONS)
        for name, v in (("a", self.a), ("b", self.b)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"Relation.{name} must be an object index (int), got {type(v).__name__}")
        if self.a == self.b:
            raise ValueError(f"Relation needs two different objects, got a=b={self.a}")


@dataclass(frozen=True)
class Scene:
    """1-3 objects on a dark background; two-object scenes carry a relation consistent with positions."""
    objects: tuple[Obj, ...]
    relation: Relation | None = None

    def __post_init__(self) -> None:
        if isinstance(self.objects, list):
            object.__setattr__(self, "objects", tuple(self.objects))
        if not isinstance(self.objects, tuple) or not all(isinstance(o, Obj) for o in self.objects):
            raise TypeError(f"objects must be a tuple of Obj, got {type(self.objects).__name__}")
        n = len(self.objects)
        if not 1 <= n <= 3:
            raise ValueError(f"a scene has 1 to 3 objects, got {n}")
        positions = [o.position for o in self.objects]
        r = self.relation
        if r is not None and not isinstance(r, Relation):
            raise TypeError(f"relation must be a Relation or None, got {type(r).__name__}")
        if n != 2 and r is not None:
            raise ValueError(f"only two-object scenes carry a relation; this one has {n} objects "
                             "(three-object layouts are given by positions: a row or a column)")
        if n == 2:
            if r is None:
                if any(p is not None for p in positions):
                    raise ValueError(f"a two-object scene with positions {positions} needs a relation: "
                                     "pass relation=Relation('left of') or Relation('above')")
            else:
                if {r.a, r.b} != {0, 1}:
                    raise ValueError(f"relation indices must be 0 and 1, got a={r.a}, b={r.b}")
                want = _RELATION_POSITIONS[r.kind]
                got = (positions[r.a], positions[r.b])
                if got != want:
                    raise ValueError(f"relation {r.kind!r} needs positions {want} for objects (a, b), got {got}")
        if n == 3 and any(p is not None for p in positions):
            if sorted(positions, key=str) not in (sorted(ROW), sorted(COLUMN)):
                raise ValueError(f"three objects must form a row {ROW} or a column {COLUMN}, got {positions}")

    @property
    def is_complete(self) -> bool:
        return all(o.is_complete for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; Scene.from_dict(scene.to_dict()) == scene."""
        objs = [{"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position,
                 "label": o.label, "dx": float(o.dx), "dy": float(o.dy), "angle": float(o.angle)}
                for o in self.objects]
        rel = None if self.relation is None else {"kind": self.relation.kind, "a": int(self.relation.a),
                                                   "b": int(self.relation.b)}
        return {"objects": objs, "relation": rel}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Scene":
        """Inverse of to_dict; rejects unknown keys."""
        if not isinstance(d, Mapping):
            raise TypeError(f"Scene.from_dict expects a dict from Scene.to_dict(), got {type(d).__name__}")
        _check_keys("scene", d, {"objects", "relation"}, required={"objects"})
        objs = []
        for i, o in enumerate(d["objects"]):
            if not isinstance(o, Mapping):
                raise TypeError(f"scene['objects'][{i}] must be a dict, got {type(o).__name__}")
            _check_keys(f"scene['objects'][{i}]", o, {f.name for f in Obj.__dataclass_fields__.values()},
                        required={"shape", "colour"})
            objs.append(Obj(**o))
        rel = d.get("relation")
        if rel is not None:
            if not isinstance(rel, Mapping):
                raise TypeError(f"scene['relation'] must be a dict or None, got {type(rel).__name__}")
            _check_keys("scene['relation']", rel, {"kind", "a", "b"}, required={"kind"})
            rel = Relation(**rel)
        return cls(tuple(objs), rel)


def _check_keys(where: str, d: Mapping, accepted: set[str], required: set[str]) -> None:
    unknown = set(d) - accepted
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; accepted: {sorted(accepted)}")
    missing = required - set(d)
    if missing:
        raise ValueError(f"{where} is missing keys {sorted(missing)}; a Scene.to_dict() output has them")


def canonical(scene: Scene) -> Scene:
    """The scene a caption describes: jitter zeroed, objects ordered left-to-right / top-to-bottom."""
    objs = [replace(o, dx=0.0, dy=0.0, angle=0.0) for o in scene.objects]
    if all(o.position is not None for o in objs):
        objs.sort(key=lambda o: _POSITION_ORDER[o.position])
    rel = None if scene.relation is None else Relation(scene.relation.kind, 0, 1)
    return Scene(tuple(objs), rel)


def _pairs(split: str) -> list[tuple[str, str]]:
    allp = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "train":
        return [p for p in allp if p not in HELD_OUT_PAIRS]
    if split == "held_out":
        return sorted(HELD_OUT_PAIRS, key=allp.index)
    return allp


def _check_rng(rng: object) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)) or an int seed, "
                    f"got {type(rng).__name__}")


def _layout(rng: np.random.Generator, n: int) -> tuple[tuple[str, ...], Relation | None]:
    if n == 1:
        return (POSITIONS[rng.integers(len(POSITIONS))],), None
    kind = RELATIONS[rng.integers(2)]
    if n == 2:
        return _RELATION_POSITIONS[kind], Relation(kind, 0, 1)
    return (ROW if kind == "left of" else COLUMN), None


def sample_scene(rng: np.random.Generator | int, n_objects: int | None = None, split: str = "train",
                 label_prob: float = 0.0) -> Scene:
    """Draw a complete scene with distinct (colour, shape) pairs; deterministic given rng's state.

    split="train" never uses HELD_OUT_PAIRS, "held_out" puts one in at least one object, "all" anything.
    Objects come in canonical order (left-to-right / top-to-bottom) with jitter dx, dy, angle.
    """
    rng = _check_rng(rng)
    check_choice("split", split, SPLITS)
    if n_objects is None:
        n_objects = int(rng.integers(1, 4))
    check_choice("n_objects", n_objects, (1, 2, 3))
    _check_float("label_prob", label_prob)
    if not 0.0 <= label_prob <= 1.0:
        raise ValueError(f"label_prob must be a probability in [0, 1], got {label_prob}")
    positions, relation = _layout(rng, n_objects)
    if split == "held_out":
        special = int(rng.integers(n_objects))
        pool_special, pool_rest = _pairs("held_out"), _pairs("all")
    else:
        special, pool_special = -1, []
        pool_rest = _pairs(split)
    chosen: list[tuple[str, str]] = []
    for i in range(n_objects):
        pool = [p for p in (pool_special if i == special else pool_rest) if p not in chosen]
        chosen.append(pool[rng.integers(len(pool))])
    objs = []
    for (colour, shape), pos in zip(chosen, positions):
        size = SIZES[rng.integers(2)]
        dx, dy = (float(v) for v in rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2))
        angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        label = None
        if label_prob > 0 and rng.random() < label_prob:
            label = LABEL_WORDS[rng.integers(len(LABEL_WORDS))]
        objs.append(Obj(shape, colour, size, pos, label, dx, dy, angle))
    return Scene(tuple(objs), relation)


def complete(scene: Scene, rng: np.random.Generator | int) -> Scene:
    """Fill the fields a partial spec leaves unsaid (None) at random, so the scene can be rendered."""
    rng = _check_rng(rng)
    n = len(scene.objects)
    relation = scene.relation
    positions = [o.position for o in scene.objects]
    if any(p is None for p in positions):
        slots, relation = _layout(rng, n)
        order = rng.permutation(n)  # an unsaid layout lets any object take any slot
        positions = [slots[j] for j in order]
        if n == 2:
            relation = Relation(relation.kind, int(np.argmin(order)), int(np.argmax(order)))
    objs = []
    for o, pos in zip(scene.objects, positions):
        objs.append(replace(o, shape=o.shape or SHAPES[rng.integers(len(SHAPES))],
                            colour=o.colour or COLOURS[rng.integers(len(COLOURS))],
                            size=o.size or SIZES[rng.integers(2)], position=pos))
    return Scene(tuple(objs), relation)


def object_xy(o: Obj) -> tuple[float, float]:
    """Centre of a complete object in normalised units (x right, y down)."""
    x, y = POSITION_XY[o.position]
    return x + o.dx, y + o.dy


__all__ = ["SHAPES", "COLOURS", "COLOUR_RGB", "BACKGROUND_RGB", "SIZES", "POSITIONS", "RELATIONS", "SPLITS",
           "LABEL_WORDS", "POSITION_XY", "RADIUS", "MAX_SHIFT", "MAX_ANGLE", "HELD_OUT_PAIRS", "ROW", "COLUMN",
           "Obj", "Relation", "Scene", "canonical", "sample_scene", "complete", "object_xy"]
