"""The seeded procedural renderer: a :class:`Scene` → a 64×64 RGB image (anti-aliased, flat colours).

Shapes are drawn at 4× resolution and box-filtered down, so edges are anti-aliased and interiors keep
the exact palette colour.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from nodegraph_nodes.shapes.world import CANVAS, PALETTE, SIZE_PIXELS, Scene, ShapeObject

SUPERSAMPLE = 4


def _polygon_points(obj: ShapeObject, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    if obj.shape == "triangle":  # pointing up, fills the box's width and height
        return [(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)]
    if obj.shape == "star":  # five points, the first pointing up
        points = []
        for i in range(10):
            r = radius if i % 2 == 0 else radius * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        return points
    raise ValueError(obj.shape)


def draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, center: tuple[int, int]) -> None:
    s = SUPERSAMPLE
    radius = SIZE_PIXELS[obj.size] / 2 * s
    cx, cy = center[0] * s, center[1] * s
    fill = PALETTE[obj.color]
    box = [cx - radius, cy - radius, cx + radius - 1, cy + radius - 1]
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(_polygon_points(obj, cx - 0.5, cy - 0.5, radius), fill=fill)


def render_objects(background: str, placements: list[tuple[ShapeObject, tuple[int, int]]]) -> np.ndarray:
    """``uint8 [64, 64, 3]``: objects drawn at any centres (pixels) on a flat background."""
    size = CANVAS * SUPERSAMPLE
    image = Image.new("RGB", (size, size), PALETTE[background])
    draw = ImageDraw.Draw(image)
    for obj, center in placements:
        draw_object(draw, obj, center)
    return np.asarray(image.resize((CANVAS, CANVAS), Image.BOX))


def render_scene(scene: Scene) -> np.ndarray:
    """``uint8 [64, 64, 3]``."""
    return render_objects(scene.background, scene.placements())


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """``uint8 [B, 64, 64, 3]``."""
    return np.stack([render_scene(s) for s in scenes])
