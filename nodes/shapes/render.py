"""The seeded procedural renderer: a :class:`Scene` → an RGB image (anti-aliased, flat colours).

The world is defined in 64-px units (:data:`.world.CANVAS`); ``size`` renders the same picture at any
multiple of it (the generator's images are :data:`IMAGE_SIZE` = 128 px, 8× its 16×16 latents, as in
ComfyUI). Shapes are drawn at 4× the output resolution and box-filtered down, so edges are
anti-aliased and interiors keep the exact palette colour.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from nodegraph_nodes.shapes.world import CANVAS, PALETTE, SIZE_PIXELS, Scene, ShapeObject

SUPERSAMPLE = 4
#: The generator's image size (pixels): 8× its 16×16 latents (ComfyUI's latent convention).
IMAGE_SIZE = 128


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


def draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, center: tuple[int, int], s: int = SUPERSAMPLE) -> None:
    """Draws ``obj`` at ``center`` (world pixels) on a canvas ``s`` times the world's size."""
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


def _scale(size: int) -> int:
    if size % CANVAS or size <= 0:
        raise ValueError(f"render size must be a positive multiple of {CANVAS}, got {size}")
    return size // CANVAS


def render_objects(background: str, placements: list[tuple[ShapeObject, tuple[int, int]]],
                   size: int = CANVAS) -> np.ndarray:
    """``uint8 [size, size, 3]``: objects drawn at any centres (world pixels) on a flat background."""
    s = SUPERSAMPLE * _scale(size)
    image = Image.new("RGB", (CANVAS * s, CANVAS * s), PALETTE[background])
    draw = ImageDraw.Draw(image)
    for obj, center in placements:
        draw_object(draw, obj, center, s)
    return np.asarray(image.resize((size, size), Image.BOX))


def render_scene(scene: Scene, size: int = CANVAS) -> np.ndarray:
    """``uint8 [size, size, 3]`` (64 px by default, the world's own resolution)."""
    return render_objects(scene.background, scene.placements(), size)


def render_batch(scenes: list[Scene], size: int = CANVAS) -> np.ndarray:
    """``uint8 [B, size, size, 3]``."""
    return np.stack([render_scene(s, size) for s in scenes])


def downscale_to_canvas(image: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]`` → ``[64, 64, 3]`` by area averaging (identity at 64 px), so checks written
    for the world's 64-px units read a 128-px generator image."""
    if image.shape[:2] == (CANVAS, CANVAS):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((CANVAS, CANVAS), Image.BOX))
