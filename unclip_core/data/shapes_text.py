"""ShapesWorld language: caption paraphrases, an exact parser, binding foils and the word vocabulary."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from unclip_core.checks import check_choice
from unclip_core.data.shapes_scene import (COLOURS, COLUMN, CURRENT_WORLD, ROW, SIZES, WORLDS, Obj, Relation, Scene,
                                           World, _check_rng, canonical, get_world)

CAPTION_STYLES: tuple[str, ...] = ("plain", "reversed", "sentence")
FOIL_CATEGORIES: tuple[str, ...] = ("colour_swap", "shape_swap", "size_swap", "relation_order",
                                    "colour_change", "shape_change", "size_change", "position_change")
GRAMMAR_EXAMPLES: tuple[str, ...] = (
    "a small red circle at the top",
    "a large red circle left of a small blue square",
    "a small green star above a large yellow cross",
    "a small red circle, a large blue square and a small green star from left to right",
)

_POSITION_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "centre": "in the centre"}
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre",
                   "center": "centre", "middle": "centre"}  # parse also takes the synonyms
_PREPOSITIONS = ("at", "on", "in")
_LABEL_VERBS = ("labelled", "labeled")
_QUOTES = ("'", '"')
_AXIS_WORDS = {("left", "right"): "row", ("right", "left"): "row_rev",
               ("top", "bottom"): "column", ("bottom", "top"): "column_rev"}
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize_words(caption: str) -> list[str]:
    """Lower-case words, with each punctuation mark its own token: "labelled 'blue'" -> [labelled, ', blue, ']."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    return _TOKEN.findall(caption.lower())


def vocabulary(world: int | World = CURRENT_WORLD) -> list[str]:
    """Every token (tokenize_words) a caption, a parseable prompt or a label can contain in a world, sorted."""
    w = get_world(world)
    words = {"a", "an", "the", "there", "is", "of", "to", "and", "from", "row", "column", ",", ".",
             "left", "right", "above", "below"}
    words |= set(SIZES) | set(COLOURS) | set(w.shapes) | set(w.label_words)
    words |= set(_POSITION_WORDS) | set(_PREPOSITIONS) | set(_LABEL_VERBS) | set(_QUOTES)
    return sorted(words)


# ----------------------------------------------------------------------------------------------- captions

def _object_phrase(o: Obj) -> str:
    words = [w for w in (o.size, o.colour, o.shape) if w is not None]
    article = "an" if words[0][0] in "aeiou" else "a"
    text = " ".join([article] + words)
    return text if o.label is None else f"{text} labelled '{o.label}'"


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene, rng: np.random.Generator | int | None = None, style: str | None = None) -> str:
    """Describe a scene: a named style, else a paraphrase drawn from rng, else "plain".

    Styles (CAPTION_STYLES): plain "a small red circle left of a large blue square", reversed "a large blue
    square to the right of a small red circle", sentence "a small red circle is to the left of ...".
    Jitter (dx, dy, angle) is never described; parse(caption(s)) == canonical(s) for every style.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if style is None:
        style = "plain" if rng is None else CAPTION_STYLES[_check_rng(rng).integers(len(CAPTION_STYLES))]
    check_choice("style", style, CAPTION_STYLES)
    s = canonical(scene)
    ph = [_object_phrase(o) for o in s.objects]
    n = len(ph)
    if n == 1:
        pos = s.objects[0].position
        if pos is None:
            return {"plain": ph[0], "reversed": ph[0], "sentence": f"there is {ph[0]}"}[style]
        where = _POSITION_PHRASE[pos]
        return {"plain": f"{ph[0]} {where}", "reversed": f"{where}, {ph[0]}",
                "sentence": f"there is {ph[0]} {where}"}[style]
    if s.objects[0].position is None:  # partial spec with no layout: an unordered list
        return _join(ph)
    horizontal = s.objects[0].position == "left" or s.objects[-1].position == "right"
    if n == 2:
        a, b = ph
        if horizontal:
            return {"plain": f"{a} left of {b}", "reversed": f"{b} to the right of {a}",
                    "sentence": f"{a} is to the left of {b}"}[style]
        return {"plain": f"{a} above {b}", "reversed": f"{b} below {a}", "sentence": f"{a} is above {b}"}[style]
    if style == "plain":
        return f"{_join(ph)} from {'left to right' if horizontal else 'top to bottom'}"
    if style == "reversed":
        return f"{_join(ph[::-1])} from {'right to left' if horizontal else 'bottom to top'}"
    return f"a {'row' if horizontal else 'column'} of {_join(ph)}"


# ----------------------------------------------------------------------------------------------- parser

class _Parser:
    def __init__(self, text: str, world: World):
        self.text, self.toks, self.i = text, tokenize_words(text), 0
        self.world = world
        while self.toks and self.toks[-1] == ".":  # a typed prompt may end like a sentence
            self.toks.pop()

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self, *words: str) -> bool:
        if self.toks[self.i:self.i + len(words)] == list(words):
            self.i += len(words)
            return True
        return False

    def fail(self, expected: str) -> ValueError:
        got = "the end of the caption" if self.peek() is None else f"{self.peek()!r}"
        examples = "; ".join(repr(e) for e in GRAMMAR_EXAMPLES)
        return ValueError(f"cannot parse caption {self.text!r}: expected {expected} at word {self.i + 1}, "
                          f"got {got}. ShapesWorld captions follow the grammar of e.g. {examples}")

    def obj(self) -> Obj:
        self.take("a") or self.take("an")
        size = colour = None
        while self.peek() in SIZES or self.peek() in COLOURS:
            w = self.toks[self.i]
            if w in SIZES and size is None:
                size = w
            elif w in COLOURS and colour is None:
                colour = w
            else:
                raise self.fail("one size and one colour word at most")
            self.i += 1
        shapes = self.world.shapes
        if self.peek() not in shapes:
            other = [v for v, w in WORLDS.items() if self.peek() in w.shapes]
            hint = (f" ({self.peek()!r} is a ShapesWorld v{other[0]} shape; this is v{self.world.version}: "
                    f"pass world={other[0]} to read v{other[0]} captions)") if other else ""
            raise self.fail(f"a shape ({', '.join(shapes)}) or, before it, a size ({', '.join(SIZES)}) "
                            f"or a colour ({', '.join(COLOURS)}){hint}")
        shape = self.toks[self.i]
        self.i += 1
        label = None
        if self.peek() in _LABEL_VERBS:
            self.i += 1
            quote = self.peek() if self.peek() in _QUOTES else None
            if quote:
                self.i += 1
            if self.peek() not in self.world.label_words:
                raise self.fail(f"a label word ({', '.join(self.world.label_words)})")
            label = self.toks[self.i]
            self.i += 1
            if quote and not self.take(quote):
                raise self.fail(f"a closing {quote}")
        return Obj(shape, colour, size, None, label)

    def position(self) -> str | None:
        """An optional 'at/on/in the <position>' phrase."""
        if self.peek() in _PREPOSITIONS:
            k = 2 if self.peek(1) == "the" else 1
            if self.peek(k) in _POSITION_WORDS:
                self.i += k + 1
                return _POSITION_WORDS[self.toks[self.i - 1]]
        return None

    def relation(self) -> str | None:
        """An optional '(is) (to the) left of / right of / above / below'; returns the word."""
        start = self.i
        self.take("is")
        if self.take("above"):
            return "above"
        if self.take("below"):
            return "below"
        self.take("to", "the")
        for w in ("left", "right"):
            if self.take(w, "of"):
                return w
        self.i = start
        return None

    def object_list(self) -> list[Obj]:
        objs = [self.obj()]
        while self.peek() in (",", "and"):
            self.take(",")
            self.take("and")
            objs.append(self.obj())
        return objs

    def end(self) -> None:
        if self.peek() is not None:
            raise self.fail("the end of the caption")

    def scene(self) -> Scene:
        layout = None
        self.take("there", "is")
        if self.peek() == "a" and self.peek(1) in ("row", "column") and self.peek(2) == "of":
            layout = "row" if self.peek(1) == "row" else "column"
            self.i += 3
            objs = self.object_list()
            self.end()
            return _layout_scene(objs, layout, self)
        pos = self.position()
        if pos is not None:  # "at the top, a small red circle"
            self.take(",")
            o = self.obj()
            self.end()
            return Scene((replace(o, position=pos),), world=self.world.version)
        first = self.obj()
        rel = self.relation()
        if rel is not None:
            objs, rels = [first, self.obj()], [rel]
            while (rel := self.relation()) is not None:
                rels.append(rel)
                objs.append(self.obj())
            self.end()
            if len(set(rels)) > 1:
                raise self.fail(f"one direction along a chain of objects, got {rels}")
            if len(objs) > 3:
                raise self.fail("at most three objects")
            layout = {"left": "row", "right": "row_rev", "above": "column", "below": "column_rev"}[rels[0]]
            return _layout_scene(objs, layout, self)
        if self.peek() in (",", "and"):
            objs = [first]
            while self.peek() in (",", "and"):
                self.take(",")
                self.take("and")
                objs.append(self.obj())
            if self.take("from"):
                a, b = self.peek(), self.peek(2)
                if self.peek(1) != "to" or (a, b) not in _AXIS_WORDS:
                    raise self.fail("'left to right', 'right to left', 'top to bottom' or 'bottom to top'")
                self.i += 3
                layout = _AXIS_WORDS[(a, b)]
            self.end()
            return _layout_scene(objs, layout, self)
        pos = self.position()
        self.end()
        return Scene((replace(first, position=pos),), world=self.world.version)


def _layout_scene(objs: list[Obj], layout: str | None, p: _Parser) -> Scene:
    if len(objs) > 3:
        raise p.fail("at most three objects")
    if layout is None:
        return Scene(tuple(objs), world=p.world.version)
    if layout.endswith("_rev"):
        objs, layout = objs[::-1], layout[:-4]
    slots = ROW if layout == "row" else COLUMN
    if len(objs) == 2:
        slots = (slots[0], slots[2])
    elif len(objs) == 1:
        raise p.fail("two or three objects in a row or column")
    placed = tuple(replace(o, position=pos) for o, pos in zip(objs, slots))
    rel = Relation("left of" if layout == "row" else "above", 0, 1) if len(objs) == 2 else None
    return Scene(placed, rel, p.world.version)


def parse(caption: str, *, world: int | World = CURRENT_WORLD) -> Scene:
    """Read a caption (or a short typed prompt) into its canonical Scene in a ShapesWorld version.

    parse(caption(s, style=...), world=s.world) == canonical(s) for every style; parse("a red circle") has
    size=None, position=None. Raises ValueError naming the caption and showing the grammar when it cannot be
    read.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    return canonical(_Parser(caption, get_world(world)).scene())



# ----------------------------------------------------------------------------------------------- foils

_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "centre": "top"}


def _swap(scene: Scene, i: int, j: int, fields: tuple[str, ...]) -> Scene:
    objs = list(scene.objects)
    a, b = objs[i], objs[j]
    objs[i] = replace(a, **{f: getattr(b, f) for f in fields})
    objs[j] = replace(b, **{f: getattr(a, f) for f in fields})
    return canonical(Scene(tuple(objs), scene.relation, scene.world))


def foil_scenes(scene: Scene) -> list[tuple[str, Scene]]:
    """Binding foils as scenes (canonical), each differing from canonical(scene); see foils()."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    truth = canonical(scene)
    out: list[tuple[str, Scene]] = []
    n = len(truth.objects)
    if n == 1:
        o = truth.objects[0]
        shapes = get_world(truth.world).shapes
        changes = {
            "colour_change": ("colour", None if o.colour is None else COLOURS[(COLOURS.index(o.colour) + 3) % 6]),
            "shape_change": ("shape", None if o.shape is None
                             else shapes[(shapes.index(o.shape) + 2) % len(shapes)]),
            "size_change": ("size", None if o.size is None else SIZES[1 - SIZES.index(o.size)]),
            "position_change": ("position", None if o.position is None else _OPPOSITE[o.position]),
        }
        for cat, (f, v) in changes.items():
            if v is not None:
                out.append((cat, Scene((replace(o, **{f: v}),), world=truth.world)))
        return out
    attrs = ("shape", "colour", "size", "label")
    swaps = {"colour_swap": ("colour",), "shape_swap": ("shape",), "size_swap": ("size",)}
    if truth.objects[0].position is not None:
        swaps["relation_order"] = attrs  # the same objects in each other's places
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for cat, fields in swaps.items():
        for i, j in pairs:
            foil = _swap(truth, i, j, fields)
            if foil != truth:
                out.append((cat, foil))
                break
    return out


def foils(scene: Scene, style: str = "plain") -> list[tuple[str, str]]:
    """Binding foils (ARO / SugarCrepe-style swaps): [(category, caption)], each describing another scene.

    Multi-object: colour_swap, shape_swap, size_swap (first pair whose swap changes the scene) and
    relation_order (two objects trade places). One object: colour_change, shape_change, size_change,
    position_change. Categories that cannot differ (e.g. equal colours) are left out.
    """
    check_choice("style", style, CAPTION_STYLES)
    return [(cat, caption(s, style=style)) for cat, s in foil_scenes(scene)]


__all__ = ["CAPTION_STYLES", "FOIL_CATEGORIES", "GRAMMAR_EXAMPLES", "tokenize_words", "vocabulary", "caption",
           "parse", "foils", "foil_scenes"]
