"""ShapesWorld renderer: normalised geometry drawn on a supersampled canvas, box-downsampled (anti-aliased)."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unclip_core.checks import check_positive_int
from unclip_core.data.shapes_scene import (BACKGROUND_RGB, COLOUR_RGB, CURRENT_WORLD, SIZES, Obj, Scene, World,
                                           get_world, object_xy)

MIN_SIZE, MAX_SIZE = 32, 1024
STAR_INNER = 0.45        # inner/outer radius of the five-pointed star
CROSS_HALF_WIDTH = 0.35  # half the width of a cross's arm, in units of its arm's half length
N_CIRCLE_VERTICES = 96   # sagitta 5e-4 r: below a canvas pixel up to 1024 px
PIL_EDGE_BIAS = 0.4      # canvas px by which ImageDraw.polygon's fill overshoots a polygon's edges


def supersample_factor(size: int) -> int:
    """Canvas pixels per output pixel along each axis: 8 up to 64 px, 4 beyond (canvas >= 512 px)."""
    return 8 if size <= 64 else 4


def check_size(size: object) -> int:
    """Return size as int, or raise unless it is an integer in 32..1024."""
    size = check_positive_int("size", size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in {MIN_SIZE}..{MAX_SIZE} (pixels per side of the square image), got {size}")
    return size


@lru_cache(maxsize=None)
def _unit_polygon(shape: str, scale: float = 1.0) -> np.ndarray:
    """Vertices (n, 2) of a shape with circumradius `scale` (<= 1), pointing up (y down), unrotated."""
    if shape == "cross":  # a plus sign: 12 vertices, arm ends on the circumcircle
        w = CROSS_HALF_WIDTH
        pts = np.array([(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w),
                        (-1, w), (-w, w), (-w, 1)], dtype=np.float64) * (scale / math.hypot(1.0, w))
        pts.setflags(write=False)
        return pts
    if shape == "circle":
        n, radii, phase = N_CIRCLE_VERTICES, [1.0], 0.0
    elif shape == "square":
        n, radii, phase = 4, [1.0], math.pi / 4
    elif shape == "triangle":
        n, radii, phase = 3, [1.0], 0.0
    elif shape == "hexagon":
        n, radii, phase = 6, [1.0], 0.0
    elif shape == "star":
        n, radii, phase = 10, [1.0, STAR_INNER], 0.0
    else:  # Obj validates shapes; reaching here means SHAPES grew without a polygon
        raise ValueError(f"no polygon for shape {shape!r}")
    theta = phase + 2 * math.pi * np.arange(n) / n
    r = scale * np.array([radii[k % len(radii)] for k in range(n)])
    pts = np.stack([r * np.sin(theta), -r * np.cos(theta)], axis=1)
    pts.setflags(write=False)  # cached and shared
    return pts


def _rotation(angle: float) -> np.ndarray:
    th = math.radians(angle)
    return np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])


def _world_polygon(shape: str, world: World) -> np.ndarray:
    return _unit_polygon(shape, world.scale(shape))


def object_polygon(o: Obj, world: int | World = CURRENT_WORLD) -> np.ndarray:
    """Vertices (n, 2) of a complete object in normalised units (x right, y down) in a ShapesWorld version."""
    w = get_world(world)
    return _world_polygon(o.shape, w) @ _rotation(o.angle).T * w.radii[o.size] + np.array(object_xy(o, w))


@lru_cache(maxsize=None)
def _unit_miters(shape: str, scale: float = 1.0) -> np.ndarray:
    """Per-vertex shifts (n, 2) that move every edge of the unit polygon inward by 1 (mitred joins).

    Moving edges by d adds d * miters, for any scale and (rotating the miters) any rotation.
    """
    pts = _unit_polygon(shape, scale)
    e = np.roll(pts, -1, axis=0) - pts                      # edge k runs from vertex k to k + 1
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    x, y = pts[:, 0], pts[:, 1]
    ccw = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0
    n = np.stack([-e[:, 1], e[:, 0]], axis=1) * (1.0 if ccw else -1.0)  # inward normals
    n_prev = np.roll(n, 1, axis=0)                           # edge k - 1 ends at vertex k
    miters = (n + n_prev) / (1.0 + np.sum(n * n_prev, axis=1, keepdims=True))
    miters.setflags(write=False)  # cached and shared
    return miters


def _canvas_polygon(o: Obj, world: World, canvas: int, inset: float) -> list[tuple[float, float]]:
    """object_polygon in canvas pixels with every edge moved inward by `inset` pixels."""
    rot = _rotation(o.angle).T
    pts = object_polygon(o, world) * canvas
    return [tuple(p) for p in (pts + inset * (_unit_miters(o.shape, world.scale(o.shape)) @ rot)).tolist()]


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)  # Pillow's bundled font: same glyphs on every machine


@lru_cache(maxsize=None)
def _label_width_per_px(label: str) -> float:
    return _font(100).getlength(label) / 100.0


def _text_rgb(colour: str) -> tuple[int, int, int]:
    r, g, b = COLOUR_RGB[colour]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render a complete scene as an RGB PIL image of size x size, anti-aliased, deterministic.

    Geometry is in normalised units, so render(s, 256) box-downsampled x4 matches render(s, 64).
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}; build one with sample_scene or parse")
    size = check_size(size)
    for i, o in enumerate(scene.objects):
        if not o.is_complete:
            raise ValueError(f"scene is partial (object {i}: shape={o.shape}, colour={o.colour}, size={o.size}, "
                             f"position={o.position}); call complete(scene, rng) to fill unsaid fields first")
    k = supersample_factor(size)
    canvas = size * k
    world = get_world(scene.world)
    im = Image.new("RGB", (canvas, canvas), BACKGROUND_RGB)
    draw = ImageDraw.Draw(im)
    for o in scene.objects:
        # ImageDraw.polygon's fill overshoots the outline by ~0.3 (slanted edges) to 0.5 (axis-aligned)
        # canvas px (measured); insetting by 0.4 keeps areas within ~0.1 px x perimeter, centroids exact.
        draw.polygon(_canvas_polygon(o, world, canvas, PIL_EDGE_BIAS), fill=COLOUR_RGB[o.colour])
        if o.label is not None:
            _draw_label(draw, o, world, canvas)
    return im.reduce(k)


# room for a label, as a fraction of the circumradius (about the inradius)
_LABEL_ROOM = {"circle": 0.75, "square": 0.7, "triangle": 0.5, "star": 0.5, "hexagon": 0.8, "cross": 0.45}


def coverage(scene: Scene, size: int = 64) -> np.ndarray:
    """Per-object coverage maps (n_objects, size, size) in [0, 1]: the share of each pixel an object covers."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    size = check_size(size)
    k = supersample_factor(size)
    world = get_world(scene.world)
    maps = []
    for o in scene.objects:
        im = Image.new("L", (size * k, size * k), 0)
        ImageDraw.Draw(im).polygon(_canvas_polygon(o, world, size * k, PIL_EDGE_BIAS), fill=255)
        maps.append(np.asarray(im.reduce(k), dtype=np.float64) / 255.0)
    return np.stack(maps)


def shape_contrast(world: int | World = CURRENT_WORLD, size: int = 64,
                   angles: tuple[float, ...] = (-20.0, -10.0, 0.0, 10.0, 20.0),
                   offsets: tuple[float, ...] = (0.0, 0.25, 0.5)) -> list[dict[str, Any]]:
    """How visibly two shapes differ in the same pose: worst case over in-plane angles and sub-pixel offsets.

    A mask is the pixels an object covers at least half of. For every size and pair of shapes, returns
    {size, a, b, min_pixels_differ, max_iou, n_poses}: the fewest pixels the two masks differ in and their
    largest intersection-over-union, over poses at the centre slot shifted by `offsets` pixels in x and y.
    """
    size = check_size(size)
    w = get_world(world)
    rows = []
    for z in SIZES:
        masks: dict[str, list[np.ndarray]] = {}
        for shape in w.shapes:
            objs = [Obj(shape, "red", z, "centre", dx=ox / size, dy=oy / size, angle=a)
                    for a in angles for ox in offsets for oy in offsets]
            masks[shape] = [coverage(Scene((o,), world=w.version), size)[0] >= 0.5 for o in objs]
        for i, a in enumerate(w.shapes):
            for b in w.shapes[i + 1:]:
                diff = [int((ma ^ mb).sum()) for ma, mb in zip(masks[a], masks[b])]
                iou = [float((ma & mb).sum() / (ma | mb).sum()) for ma, mb in zip(masks[a], masks[b])]
                rows.append({"size": z, "a": a, "b": b, "min_pixels_differ": min(diff), "max_iou": max(iou),
                             "n_poses": len(diff)})
    return rows


def _draw_label(draw: ImageDraw.ImageDraw, o: Obj, world: World, canvas: int) -> None:
    r_in = world.radii[o.size] * _LABEL_ROOM[o.shape]
    px_h = 0.9 * r_in * canvas
    px_w = 1.8 * r_in * canvas / _label_width_per_px(o.label)
    px = int(min(px_h, px_w))
    if px < 1:
        return
    cx, cy = object_xy(o, world)
    if o.shape == "triangle":
        cy += 0.25 * world.radii[o.size]  # the triangle's wide part is below its centre
    draw.text((cx * canvas, cy * canvas), o.label, fill=_text_rgb(o.colour), font=_font(px), anchor="mm")


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    """render() as a uint8 array (size, size, 3)."""
    return np.array(render(scene, size))


__all__ = ["render", "render_array", "coverage", "shape_contrast", "object_polygon", "supersample_factor", "check_size", "MIN_SIZE", "MAX_SIZE"]
