"""Issue 20 point 7: our MODEL / CLIP / VAE objects survive a pack node that passes them through (a
switch, an any-type reroute) or a loader wrapper that calls ``nodes.CheckpointLoaderSimple``, and the
graph still samples — to the same image as the graph without the pack nodes. The models are the tiny
random SD built here (tests/helpers/tiny_sd.py); the pack is written to a temporary custom_nodes/."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from PIL import Image

from nodegraph.comfy_compat import CustomNodeSettings, load_custom_nodes
from nodegraph.context import Paths
from nodegraph.registry import default_registry

from tests.helpers.engines import make_engine
from tests.helpers.tiny_sd import build_sd1

MODEL_PACK = '''
import folder_paths
import nodes


class AnyType(str):
    def __ne__(self, other):
        return False


ANY = AnyType("*")


class ModelSwitch:
    """A classic switch: one of two MODELs, by a boolean."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"use_first": ("BOOLEAN", {"default": True}), "model_a": ("MODEL",)},
                "optional": {"model_b": ("MODEL",)}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "pick"
    CATEGORY = "ngtest/models"
    def pick(self, use_first, model_a, model_b=None):
        return (model_a if use_first or model_b is None else model_b,)


class Reroute:
    """An any-type pass-through (the reroute pattern)."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY,)}}
    RETURN_TYPES = (ANY,)
    FUNCTION = "route"
    def route(self, value):
        return (value,)


class CheckpointWrapper:
    """A loader wrapper: ComfyUI's CheckpointLoaderSimple called as packs call it."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "STRING")
    FUNCTION = "load"
    def load(self, ckpt_name):
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[:3]
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        return (model, clip, vae, path)


NODE_CLASS_MAPPINGS = {"NgModelSwitch": ModelSwitch, "NgReroute": Reroute, "NgCheckpointWrapper": CheckpointWrapper}
'''

CKPT = "tiny_sd15.safetensors"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack_models")
    build_sd1(root)
    return root


@pytest.fixture(scope="module")
def registry(model_root):
    folder = model_root / "custom_nodes"
    (folder / "ng_models").mkdir(parents=True)
    (folder / "ng_models" / "__init__.py").write_text(textwrap.dedent(MODEL_PACK).lstrip())
    registry = default_registry(packs=False)
    load_custom_nodes(registry, CustomNodeSettings((folder,)), paths=Paths.under(model_root), device="cpu")
    assert registry.load_errors == []
    return registry


@pytest.fixture
def engine(model_root, tmp_path, registry):
    eng = make_engine(model_root, tmp_path, registry)
    yield eng
    eng.close()


def sampling_graph(model, clip, vae) -> dict:
    """Encode, sample 2 steps, decode, save; the model/clip/vae come from the given links."""
    return {
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blue sky", "clip": clip}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
                                                    "scheduler": "normal", "denoise": 1.0, "model": model,
                                                    "positive": ["6", 0], "negative": ["7", 0],
                                                    "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": vae}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "models"}},
    }


def saved_pixels(engine, result) -> np.ndarray:
    [image] = result.outputs["9"]["images"]
    return np.asarray(Image.open(engine.paths.output_dir / image["subfolder"] / image["filename"]))


def test_models_pass_through_pack_nodes_and_still_sample(engine, model_root):
    plain = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
             **sampling_graph(["4", 0], ["4", 1], ["4", 2])}
    reference = engine.run(plain)
    assert reference.ok, reference.failure
    expected = saved_pixels(engine, reference)

    packed = {
        "1": {"class_type": "NgCheckpointWrapper", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "NgModelSwitch", "inputs": {"use_first": True, "model_a": ["1", 0]}},
        "10": {"class_type": "NgReroute", "inputs": {"value": ["1", 1]}},
        "11": {"class_type": "NgReroute", "inputs": {"value": ["1", 2]}},
        "12": {"class_type": "NgReroute", "inputs": {"value": ["2", 0]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["1", 3]}},
        **sampling_graph(["12", 0], ["10", 0], ["11", 0]),
    }
    result = engine.run(packed)
    assert result.ok, result.failure
    assert result.outputs["13"]["text"] == [str(model_root / "models" / "checkpoints" / CKPT)]
    got = saved_pixels(engine, result)
    assert got.shape == expected.shape == (64, 64, 3)
    assert got.std() > 0  # a picture, not a blank
    np.testing.assert_array_equal(got, expected)
