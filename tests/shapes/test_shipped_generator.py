"""The shipped shapes-world generator (nodes/shapes/weights/generator) through the ordinary nodes:
``workflows/txt2img.json`` runs on it out of the box, Load Checkpoint picks it when a workflow names
no checkpoint, and the built-in captioner reads back what was asked for.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodegraph import Engine, OutputCache
from nodegraph.context import Paths
from nodegraph.models import ModelManager
from nodegraph.registry import default_registry
from nodegraph.workflow.loader import load_workflow_file

from nodegraph_nodes.shapes.evaluate import geometric_check
from nodegraph_nodes.shapes.generator import DEFAULT_FOLDER
from nodegraph_nodes.shapes.world import Scene, ShapeObject

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = "shapes-world (built-in)"


@pytest.fixture(scope="module")
def registry():
    return default_registry(packs=False)


@pytest.fixture
def engine(registry, tmp_path):
    paths = Paths(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                  models_dir=tmp_path / "models")  # an empty models folder: only built-in models exist
    eng = Engine(registry, paths=paths, device="cpu", threads=1, cache=OutputCache(ram_budget=256 << 20),
                 services={"models": ModelManager("cpu")})
    yield eng
    eng.close()


def test_weights_ship_in_the_package_folder():
    index = json.loads((DEFAULT_FOLDER / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["_shapes_world"]["unet_steps"] > 0
    size = sum(p.stat().st_size for p in DEFAULT_FOLDER.rglob("*.safetensors"))
    captioner = DEFAULT_FOLDER.parent / "captioner.safetensors"
    assert size + captioner.stat().st_size <= 40 << 20  # the budget for all shipped weights


def test_txt2img_workflow_runs_on_the_builtin_model(engine, registry):
    api = load_workflow_file(ROOT / "workflows" / "txt2img.json", registry).api
    assert api["4"]["inputs"]["ckpt_name"] == BUILTIN
    api["cap"] = {"class_type": "CaptionerLoader", "inputs": {"model_name": BUILTIN}}
    api["caption"] = {"class_type": "ImageCaption", "inputs": {"captioner": ["cap", 0], "image": ["8", 0]}}
    api["show"] = {"class_type": "ShowText", "inputs": {"text": ["caption", 0]}}
    result = engine.run(api).raise_for_status()
    saved = result.outputs["9"]["images"]
    assert len(saved) == 1
    png = Image.open(engine.paths.output_dir / saved[0]["subfolder"] / saved[0]["filename"])
    assert png.size == (64, 64)
    assert json.loads(png.info["prompt"])["4"]["inputs"]["ckpt_name"] == BUILTIN
    # the prompt is "a large red circle at the top on a white background"
    scene = Scene("white", (ShapeObject("circle", "red", "large"),), position="top")
    image = (result.value("8")[0].numpy() * 255).round().astype(np.uint8)
    assert geometric_check(image, scene).ok, geometric_check(image, scene).reasons
    caption = result.value("caption")
    assert (caption[0] if isinstance(caption, list) else caption) == api["6"]["inputs"]["text"]


def test_checkpoint_loader_defaults_to_the_builtin_model(engine, registry):
    api = copy.deepcopy(load_workflow_file(ROOT / "workflows" / "txt2img.json", registry).api)
    del api["4"]["inputs"]["ckpt_name"]  # a workflow that names no checkpoint
    info = registry.object_info(paths=engine.paths)["CheckpointLoaderSimple"]
    assert info["input"]["required"]["ckpt_name"][0][0] == BUILTIN
    result = engine.run(api).raise_for_status()
    assert tuple(result.value("8").shape) == (1, 64, 64, 3)
