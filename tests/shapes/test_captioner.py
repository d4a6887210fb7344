"""The shipped shapes-world captioner: exact canonical captions on fresh renders, and the same model
through the captioning nodes (CaptionerLoader's built-in entry + ImageCaption)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from nodegraph_nodes.shapes.captioner import WEIGHTS, caption_images, load_captioner
from nodegraph_nodes.shapes.captions import canonical_caption
from nodegraph_nodes.shapes.render import render_batch
from nodegraph_nodes.shapes.world import sample_scene
from nodegraph import Engine, Graph, Paths
from nodegraph.registry import default_registry

FRESH_SEED = 987_654_321  # a seed stream the training never used


def test_weights_are_shipped_small():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 5 * 2**20


def test_at_least_98_percent_exact_captions_on_fresh_renders():
    model = load_captioner()
    rng = random.Random(FRESH_SEED)
    scenes = [sample_scene(rng) for _ in range(500)]
    images = torch.from_numpy(render_batch(scenes)).float() / 255.0          # IMAGE layout [B,H,W,C]
    predictions = caption_images(model, images)
    exact = sum(p.caption == canonical_caption(s.normalized()) for p, s in zip(predictions, scenes))
    assert exact / len(scenes) >= 0.98, exact


def test_captioner_through_the_nodes(tmp_path):
    paths = Paths.under(tmp_path)
    paths.input_dir.mkdir(parents=True)
    scene = sample_scene(random.Random(FRESH_SEED + 1), two_objects=False)
    Image.fromarray(render_batch([scene])[0]).save(paths.input_dir / "scene.png")
    g = Graph()
    captioner = g.node("CaptionerLoader", model_name="shapes-world (built-in)")
    image = g.node("LoadImage", image="scene.png")
    caption = g.node("ImageCaption", captioner=captioner, image=image)
    g.node("ShowText", text=caption)
    engine = Engine(default_registry(packs=False), paths=paths, device="cpu")
    result = engine.run(g)
    engine.close()
    assert result.ok, result.failure
    assert result.value(caption.id) == canonical_caption(scene)
