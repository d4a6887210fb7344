"""The shapes world: the renderer draws exactly the described scenes, deterministically per seed,
and the caption grammar's canonical form is as specified."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nodegraph_nodes.shapes.captions import canonical_caption, paraphrase
from nodegraph_nodes.shapes.render import render_scene
from nodegraph_nodes.shapes.world import (CANVAS, PALETTE, POSITION_CENTERS, SIZE_PIXELS, Scene, ShapeObject,
                                   sample_scene, scene_for_seed)


def mask_of(image: np.ndarray, color: str) -> np.ndarray:
    """Pixels of exactly this palette colour (interiors are exact; edges are blends)."""
    return np.all(image == np.array(PALETTE[color], np.uint8), axis=-1)


def nearer_to(image: np.ndarray, color: str, background: str) -> np.ndarray:
    """Pixels closer to ``color`` than to the background (interiors plus the inner half of edges)."""
    pixels = image.astype(np.int32)
    to_color = np.abs(pixels - np.array(PALETTE[color])).sum(-1)
    to_background = np.abs(pixels - np.array(PALETTE[background])).sum(-1)
    return to_color < to_background


def test_same_seed_same_scene_and_pixels():
    for seed in range(20):
        a, b = scene_for_seed(seed), scene_for_seed(seed)
        assert a == b
        assert np.array_equal(render_scene(a), render_scene(b))
    assert len({scene_for_seed(s) for s in range(50)}) > 40


@pytest.mark.parametrize("seed", range(60))
def test_render_matches_scene(seed):
    scene = scene_for_seed(seed)
    image = render_scene(scene)
    assert image.shape == (CANVAS, CANVAS, 3) and image.dtype == np.uint8
    assert mask_of(image, scene.background)[0, 0] and mask_of(image, scene.background)[-1, -1]
    for obj, (cx, cy) in scene.placements():
        assert mask_of(image, obj.color)[cy, cx], (scene, obj)   # the centre is the object's colour
        ys, xs = np.nonzero(nearer_to(image, obj.color, scene.background))
        # the object's pixels sit around its position, about its nominal size across
        reach = SIZE_PIXELS[obj.size] // 2 + 2
        near = (abs(xs - cx) <= reach) & (abs(ys - cy) <= reach)
        xs, ys = xs[near], ys[near]
        width = xs.max() - xs.min() + 1
        assert abs((xs.max() + xs.min() + 1) / 2 - cx) <= 1.5
        low = SIZE_PIXELS[obj.size] * (0.9 if obj.shape == "star" else 1) - 2   # star tips are thin
        assert low <= width <= SIZE_PIXELS[obj.size] + 1, (obj, width)
    # exactly the palette colours of the scene, plus anti-aliased blends at edges
    exact = mask_of(image, scene.background) | np.any([mask_of(image, o.color) for o in scene.objects], 0)
    assert exact.mean() > 0.85


def test_two_object_relations_place_objects_apart():
    a, b = ShapeObject("circle", "red", "large"), ShapeObject("square", "blue", "large")
    left = render_scene(Scene("white", (a, b), relation="left of"))
    red_x = np.nonzero(mask_of(left, "red"))[1].mean()
    blue_x = np.nonzero(mask_of(left, "blue"))[1].mean()
    assert red_x < blue_x - 20
    below = render_scene(Scene("white", (a, b), relation="below"))
    assert np.nonzero(mask_of(below, "red"))[0].mean() > np.nonzero(mask_of(below, "blue"))[0].mean() + 20
    assert not (mask_of(left, "red") & mask_of(left, "blue")).any()


def test_shapes_differ_in_area():
    areas = {}
    for shape in ("circle", "square", "triangle", "star"):
        img = render_scene(Scene("black", (ShapeObject(shape, "white", "large"),), position="center"))
        areas[shape] = mask_of(img, "white").sum()
    assert areas["square"] > areas["circle"] > areas["triangle"] > areas["star"]


def test_canonical_captions():
    single = Scene("white", (ShapeObject("circle", "red", "large"),), position="top")
    assert canonical_caption(single) == "a large red circle at the top on a white background"
    pair = Scene("black", (ShapeObject("square", "blue", "small"), ShapeObject("triangle", "yellow", "small")),
                 relation="left of")
    assert canonical_caption(pair) == "a small blue square to the left of a small yellow triangle on a black background"


def test_paraphrases_vary_but_keep_the_colours():
    rng = random.Random(3)
    scene = sample_scene(rng, two_objects=True)
    texts = {paraphrase(scene, rng) for _ in range(50)}
    assert len(texts) > 20
    for text in texts:
        for obj in scene.objects:
            assert obj.color in text or (obj.color == "purple" and "violet" in text)
