"""The shipped shapes-world generator (nodes/shapes/weights/generator) through the ordinary nodes:
``workflows/txt2img.json`` runs on it out of the box, so does a plain ComfyUI txt2img API workflow
(``EmptyLatentImage`` 128×128 with no ``vae`` input: the VAE is 8× like SD's), Load Checkpoint picks it
when a workflow names no checkpoint, and the built-in captioner reads back what was asked for.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
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
#: A two-object prompt and seed the shipped weights draw right (chosen from the held-out evaluation).
PAIR_PROMPT = "a small blue triangle to the right of a large orange circle on a red background"
PAIR_SCENE = Scene("red", (ShapeObject("triangle", "blue", "small"), ShapeObject("circle", "orange", "large")),
                   relation="right of")
PAIR_SEED = 1000000007


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
    assert png.size == (128, 128)
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
    assert tuple(result.value("8").shape) == (1, 128, 128, 3)


def comfy_txt2img(prompt: str, seed: int, size: int = 128) -> dict:
    """The API workflow ComfyUI's default txt2img graph exports (no ``vae`` on EmptyLatentImage)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 30, "cfg": 2.5, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


COMFY_CASES = [  # (prompt, scene, seed): one object and two objects
    ("a large red circle at the top on a white background",
     Scene("white", (ShapeObject("circle", "red", "large"),), position="top"), 1),
    (PAIR_PROMPT, PAIR_SCENE, PAIR_SEED),
]


@pytest.mark.parametrize("prompt,scene,seed", COMFY_CASES, ids=["one object", "two objects"])
def test_plain_comfyui_txt2img_workflow_renders_the_builtin_model(engine, prompt, scene, seed):
    api = comfy_txt2img(prompt, seed)
    result = engine.run(api).raise_for_status()
    latent = result.value("5")["samples"]
    assert tuple(latent.shape) == (1, 4, 16, 16)  # SD's 1/8 latents are this VAE's own size
    saved = result.outputs["9"]["images"]
    png = Image.open(engine.paths.output_dir / saved[0]["subfolder"] / saved[0]["filename"])
    assert png.size == (128, 128)
    image = np.array(png.convert("RGB"))
    check = geometric_check(image, scene)
    assert check.ok, check.reasons
    from nodegraph_nodes.shapes.captioner import caption_images, load_captioner

    prediction = caption_images(load_captioner(), torch.from_numpy(image[None]).float() / 255.0)[0]
    assert prediction.scene == scene.normalized(), prediction.caption


def test_the_optional_vae_input_sizes_the_same_latent(engine):
    api = comfy_txt2img("a small blue star on the left on a black background", seed=3)
    api["5"]["inputs"]["vae"] = ["4", 2]
    result = engine.run(api).raise_for_status()
    assert tuple(result.value("5")["samples"].shape) == (1, 4, 16, 16)
    assert tuple(result.value("8").shape) == (1, 128, 128, 3)


def test_a_64px_latent_still_decodes_to_its_8x_image(engine):
    """Any size ComfyUI would accept works (64 px → an 8×8 latent → a 64-px picture); only 128 px is
    the world the model was trained on."""
    api = comfy_txt2img("a large green square in the center on a white background", seed=2, size=64)
    result = engine.run(api).raise_for_status()
    assert tuple(result.value("5")["samples"].shape) == (1, 4, 8, 8)
    assert tuple(result.value("8").shape) == (1, 64, 64, 3)
