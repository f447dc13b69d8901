"""ShapesWorld renderer: normalised geometry drawn on a supersampled canvas, box-downsampled (anti-aliased)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unclip_core.checks import check_positive_int
from unclip_core.data.shapes_scene import BACKGROUND_RGB, COLOUR_RGB, RADIUS, Obj, Scene, object_xy

MIN_SIZE, MAX_SIZE = 32, 1024
CIRCLE_SCALE = 0.9       # circles a bit inside the bounding circle so areas look alike across shapes
STAR_INNER = 0.45        # inner/outer radius of the five-pointed star
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
def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (n, 2) of a shape with circumradius 1, pointing up (y down), unrotated."""
    if shape == "circle":
        n, radii, phase = N_CIRCLE_VERTICES, [CIRCLE_SCALE], 0.0
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
    r = np.array([radii[k % len(radii)] for k in range(n)])
    pts = np.stack([r * np.sin(theta), -r * np.cos(theta)], axis=1)
    pts.setflags(write=False)  # cached and shared
    return pts


def _rotation(angle: float) -> np.ndarray:
    th = math.radians(angle)
    return np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])


def object_polygon(o: Obj) -> np.ndarray:
    """Vertices (n, 2) of a complete object in normalised units (x right, y down)."""
    return _unit_polygon(o.shape) @ _rotation(o.angle).T * RADIUS[o.size] + np.array(object_xy(o))


@lru_cache(maxsize=None)
def _unit_miters(shape: str) -> np.ndarray:
    """Per-vertex shifts (n, 2) that move every edge of the unit polygon inward by 1 (mitred joins).

    Moving edges by d adds d * miters, for any scale and (rotating the miters) any rotation.
    """
    pts = _unit_polygon(shape)
    e = np.roll(pts, -1, axis=0) - pts                      # edge k runs from vertex k to k + 1
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    x, y = pts[:, 0], pts[:, 1]
    ccw = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0
    n = np.stack([-e[:, 1], e[:, 0]], axis=1) * (1.0 if ccw else -1.0)  # inward normals
    n_prev = np.roll(n, 1, axis=0)                           # edge k - 1 ends at vertex k
    miters = (n + n_prev) / (1.0 + np.sum(n * n_prev, axis=1, keepdims=True))
    miters.setflags(write=False)  # cached and shared
    return miters


def _canvas_polygon(o: Obj, canvas: int, inset: float) -> list[tuple[float, float]]:
    """object_polygon in canvas pixels with every edge moved inward by `inset` pixels."""
    rot = _rotation(o.angle).T
    pts = (_unit_polygon(o.shape) @ rot * RADIUS[o.size] + np.array(object_xy(o))) * canvas
    return [tuple(p) for p in (pts + inset * (_unit_miters(o.shape) @ rot)).tolist()]


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
    im = Image.new("RGB", (canvas, canvas), BACKGROUND_RGB)
    draw = ImageDraw.Draw(im)
    for o in scene.objects:
        # ImageDraw.polygon's fill overshoots the outline by ~0.3 (slanted edges) to 0.5 (axis-aligned)
        # canvas px (measured); insetting by 0.4 keeps areas within ~0.1 px x perimeter, centroids exact.
        draw.polygon(_canvas_polygon(o, canvas, PIL_EDGE_BIAS), fill=COLOUR_RGB[o.colour])
        if o.label is not None:
            _draw_label(draw, o, canvas)
    return im.reduce(k)


_LABEL_ROOM = {"circle": 0.75, "square": 0.7, "triangle": 0.5, "star": 0.5, "hexagon": 0.8}  # inradius-ish


def _draw_label(draw: ImageDraw.ImageDraw, o: Obj, canvas: int) -> None:
    r_in = RADIUS[o.size] * _LABEL_ROOM[o.shape]
    px_h = 0.9 * r_in * canvas
    px_w = 1.8 * r_in * canvas / _label_width_per_px(o.label)
    px = int(min(px_h, px_w))
    if px < 1:
        return
    cx, cy = object_xy(o)
    if o.shape == "triangle":
        cy += 0.25 * RADIUS[o.size]  # the triangle's wide part is below its centre
    draw.text((cx * canvas, cy * canvas), o.label, fill=_text_rgb(o.colour), font=_font(px), anchor="mm")


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    """render() as a uint8 array (size, size, 3)."""
    return np.array(render(scene, size))


__all__ = ["render", "render_array", "object_polygon", "supersample_factor", "check_size", "MIN_SIZE", "MAX_SIZE"]
