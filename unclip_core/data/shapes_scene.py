"""ShapesWorld scenes: objects, relations, layouts, held-out pairs and seeded sampling."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from unclip_core.checks import check_choice

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
MAX_ANGLE: float = 20.0  # degrees of in-plane rotation that sampling draws from


@dataclass(frozen=True)
class World:
    """One version of ShapesWorld: its shape words and geometry. Scenes, exports, suites and cards record it.

    Geometry is in normalised units (the image is the unit square, y down), the same at every render size;
    `radius` is each size's circumradius, `shape_scale` shrinks a shape inside it (circles, so areas look
    alike), and objects never overlap: neighbours 2 * (radius["large"] + max_shift) apart at least.
    """
    version: int
    shapes: tuple[str, ...]
    radius: tuple[tuple[str, float], ...]
    position_xy: tuple[tuple[str, tuple[float, float]], ...]
    max_shift: float
    held_out_pairs: frozenset[tuple[str, str]]
    shape_scale: tuple[tuple[str, float], ...] = ()

    @property
    def radii(self) -> dict[str, float]:
        return dict(self.radius)

    @property
    def positions_xy(self) -> dict[str, tuple[float, float]]:
        return dict(self.position_xy)

    @property
    def label_words(self) -> tuple[str, ...]:
        """Words a label may print on an object: colour and shape words, for typographic probes."""
        return COLOURS + self.shapes

    def scale(self, shape: str) -> float:
        return dict(self.shape_scale).get(shape, 1.0)

    def check_shape(self, shape: str, where: str = "shape") -> None:
        """Raise naming both versions when a shape word belongs to another ShapesWorld version."""
        if shape in self.shapes:
            return
        owners = [v for v, w in WORLDS.items() if shape in w.shapes]
        fix = (f"it is a ShapesWorld v{owners[0]} shape: pass world={owners[0]} for v{owners[0]} scenes, "
               f"or use a v{self.version} shape") if owners else "no ShapesWorld version has it"
        raise ValueError(f"{where} {shape!r} is not in ShapesWorld v{self.version} (shapes: "
                         f"{', '.join(self.shapes)}); {fix}")


# v1 (the first bundled models): small objects ~10 px across at 64 px, where a circle and a hexagon differ by
# under a pixel of outline. Kept so v1 models, suites and stores still render and read as they were made.
WORLD_V1 = World(
    version=1, shapes=("circle", "square", "triangle", "star", "hexagon"),
    radius=(("small", 0.075), ("large", 0.13)),
    position_xy=(("left", (0.18, 0.5)), ("right", (0.82, 0.5)), ("top", (0.5, 0.18)), ("bottom", (0.5, 0.82)),
                 ("centre", (0.5, 0.5))),
    max_shift=0.02,  # neighbours 0.32 apart, 2 * (0.13 + 0.02) = 0.30
    held_out_pairs=frozenset({("red", "triangle"), ("green", "star"), ("blue", "hexagon"), ("yellow", "circle"),
                              ("purple", "square")}),
    shape_scale=(("circle", 0.9),),
)
# v2: every shape plainly visible at 64 px. The smallest circle spans 15.2 px; at both sizes any two shapes in
# the same pose differ in >= 34 pixels with mask IoU <= 0.80 (shape_contrast; v1: 0 pixels, IoU 1.0 for a small
# circle and hexagon in some poses); large has 1.54x the area of small; the hexagon gives way to a cross.
WORLD_V2 = World(
    version=2, shapes=("circle", "square", "triangle", "star", "cross"),
    radius=(("small", 0.125), ("large", 0.155)),
    position_xy=(("left", (0.167, 0.5)), ("right", (0.833, 0.5)), ("top", (0.5, 0.167)),
                 ("bottom", (0.5, 0.833)), ("centre", (0.5, 0.5))),
    max_shift=0.008,  # neighbours 0.333 apart, 2 * (0.155 + 0.008) = 0.326; edges 0.167 - 0.163 = 0.004 inside
    held_out_pairs=frozenset({("red", "triangle"), ("green", "star"), ("blue", "cross"), ("yellow", "circle"),
                              ("purple", "square")}),
    shape_scale=(("circle", 0.95),),
)
WORLDS: dict[int, World] = {1: WORLD_V1, 2: WORLD_V2}
CURRENT_WORLD: int = 2
ALL_SHAPES: tuple[str, ...] = tuple(dict.fromkeys(s for w in WORLDS.values() for s in w.shapes))
_MAX_SHIFT_ANY = max(w.max_shift for w in WORLDS.values())  # Obj's own bound; Scene checks its world's


def get_world(world: "int | World" = CURRENT_WORLD) -> World:
    """The World of a version number (or the World itself); unknown versions list the known ones."""
    if isinstance(world, World):
        return world
    if isinstance(world, bool) or not isinstance(world, (int, np.integer)) or int(world) not in WORLDS:
        raise ValueError(f"world must be a ShapesWorld version in {sorted(WORLDS)}, got {world!r}")
    return WORLDS[int(world)]


# The current world's vocabulary and geometry under their historic names.
SHAPES: tuple[str, ...] = WORLD_V2.shapes
LABEL_WORDS: tuple[str, ...] = WORLD_V2.label_words
POSITION_XY: dict[str, tuple[float, float]] = WORLD_V2.positions_xy
RADIUS: dict[str, float] = WORLD_V2.radii
MAX_SHIFT: float = WORLD_V2.max_shift
# Held out of split="train" for zero-shot composition: one per shape and per colour except orange,
# so every colour keeps >= 4 shapes and every shape keeps 5 colours in training.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = WORLD_V2.held_out_pairs

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
        _check_optional_choice("shape", self.shape, ALL_SHAPES)
        _check_optional_choice("colour", self.colour, COLOURS)
        _check_optional_choice("size", self.size, SIZES)
        _check_optional_choice("position", self.position, POSITIONS)
        _check_optional_choice("label", self.label, COLOURS + ALL_SHAPES)
        _check_float("dx", self.dx, _MAX_SHIFT_ANY)
        _check_float("dy", self.dy, _MAX_SHIFT_ANY)
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
    """1-3 objects on a dark background; two-object scenes carry a relation consistent with positions.

    `world` is the ShapesWorld version whose shapes and geometry the scene uses (CURRENT_WORLD by default).
    """
    objects: tuple[Obj, ...]
    relation: Relation | None = None
    world: int = CURRENT_WORLD

    def __post_init__(self) -> None:
        if isinstance(self.objects, list):
            object.__setattr__(self, "objects", tuple(self.objects))
        if not isinstance(self.objects, tuple) or not all(isinstance(o, Obj) for o in self.objects):
            raise TypeError(f"objects must be a tuple of Obj, got {type(self.objects).__name__}")
        n = len(self.objects)
        if not 1 <= n <= 3:
            raise ValueError(f"a scene has 1 to 3 objects, got {n}")
        w = get_world(self.world)
        object.__setattr__(self, "world", w.version)
        for i, o in enumerate(self.objects):
            if o.shape is not None:
                w.check_shape(o.shape, f"object {i}'s shape")
            if o.label is not None and o.label not in w.label_words:
                raise ValueError(f"object {i}'s label {o.label!r} is not a ShapesWorld v{w.version} word; "
                                 f"accepted: {', '.join(w.label_words)}")
            for name in ("dx", "dy"):
                if abs(getattr(o, name)) > w.max_shift + 1e-12:
                    raise ValueError(f"object {i}'s {name}={getattr(o, name)!r} is out of range for ShapesWorld "
                                     f"v{w.version}; expected |{name}| <= {w.max_shift} (larger shifts could "
                                     "make objects overlap)")
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
        return {"objects": objs, "relation": rel, "world": self.world}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Scene":
        """Inverse of to_dict; rejects unknown keys. A dict without "world" predates versions: ShapesWorld v1."""
        if not isinstance(d, Mapping):
            raise TypeError(f"Scene.from_dict expects a dict from Scene.to_dict(), got {type(d).__name__}")
        _check_keys("scene", d, {"objects", "relation", "world"}, required={"objects"})
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
        return cls(tuple(objs), rel, d.get("world", 1))


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
    return Scene(tuple(objs), rel, scene.world)


def _pairs(split: str, world: World) -> list[tuple[str, str]]:
    allp = [(c, s) for c in COLOURS for s in world.shapes]
    if split == "train":
        return [p for p in allp if p not in world.held_out_pairs]
    if split == "held_out":
        return sorted(world.held_out_pairs, key=allp.index)
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
                 label_prob: float = 0.0, *, world: int | World = CURRENT_WORLD) -> Scene:
    """Draw a complete scene with distinct (colour, shape) pairs; deterministic given rng's state.

    split="train" never uses the world's held-out pairs, "held_out" puts one in at least one object, "all"
    anything. Objects come in canonical order (left-to-right / top-to-bottom) with jitter dx, dy, angle.
    """
    rng = _check_rng(rng)
    w = get_world(world)
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
        pool_special, pool_rest = _pairs("held_out", w), _pairs("all", w)
    else:
        special, pool_special = -1, []
        pool_rest = _pairs(split, w)
    chosen: list[tuple[str, str]] = []
    for i in range(n_objects):
        pool = [p for p in (pool_special if i == special else pool_rest) if p not in chosen]
        chosen.append(pool[rng.integers(len(pool))])
    objs = []
    for (colour, shape), pos in zip(chosen, positions):
        size = SIZES[rng.integers(2)]
        dx, dy = (float(v) for v in rng.uniform(-w.max_shift, w.max_shift, size=2))
        angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        label = None
        if label_prob > 0 and rng.random() < label_prob:
            label = w.label_words[rng.integers(len(w.label_words))]
        objs.append(Obj(shape, colour, size, pos, label, dx, dy, angle))
    return Scene(tuple(objs), relation, w.version)


def complete(scene: Scene, rng: np.random.Generator | int) -> Scene:
    """Fill the fields a partial spec leaves unsaid (None) at random, so the scene can be rendered."""
    rng = _check_rng(rng)
    shapes = get_world(scene.world).shapes
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
        objs.append(replace(o, shape=o.shape or shapes[rng.integers(len(shapes))],
                            colour=o.colour or COLOURS[rng.integers(len(COLOURS))],
                            size=o.size or SIZES[rng.integers(2)], position=pos))
    return Scene(tuple(objs), relation, scene.world)


def object_xy(o: Obj, world: int | World = CURRENT_WORLD) -> tuple[float, float]:
    """Centre of a complete object in normalised units (x right, y down) in a ShapesWorld version."""
    x, y = get_world(world).positions_xy[o.position]
    return x + o.dx, y + o.dy


__all__ = ["World", "WORLD_V1", "WORLD_V2", "WORLDS", "CURRENT_WORLD", "ALL_SHAPES", "get_world",
           "SHAPES", "COLOURS", "COLOUR_RGB", "BACKGROUND_RGB", "SIZES", "POSITIONS", "RELATIONS", "SPLITS",
           "LABEL_WORDS", "POSITION_XY", "RADIUS", "MAX_SHIFT", "MAX_ANGLE", "HELD_OUT_PAIRS", "ROW", "COLUMN",
           "Obj", "Relation", "Scene", "canonical", "sample_scene", "complete", "object_xy"]
