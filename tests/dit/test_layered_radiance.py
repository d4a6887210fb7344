"""EmptyQwenImageLayeredLatentImage, EmptyChromaRadianceLatentImage and ChromaRadianceOptions follow ComfyUI's
specs (input names, defaults, ranges; output shapes) — facts written out from ComfyUI's source; and the model
patch nodes' input specs (ModelPatchLoader, QwenImageDiffsynthControlnet, ZImageFunControlnet)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.registry import default_registry

from nodegraph_nodes.dit.layered_radiance import (ChromaRadianceOptions, EmptyChromaRadianceLatentImage,
                                                  EmptyQwenImageLayeredLatentImage)

SPECS = {
    "EmptyQwenImageLayeredLatentImage": {"required": {
        "width": ["INT", {"default": 640, "min": 16, "max": 16384, "step": 16}],
        "height": ["INT", {"default": 640, "min": 16, "max": 16384, "step": 16}],
        "layers": ["INT", {"default": 3, "min": 0, "max": 16384, "step": 1}],
        "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}},
    "EmptyChromaRadianceLatentImage": {"required": {
        "width": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}],
        "height": ["INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}],
        "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}},
    "ChromaRadianceOptions": {"required": {
        "model": ["MODEL", {}], "preserve_wrapper": ["BOOLEAN", {"default": True}],
        "start_sigma": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}],
        "end_sigma": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}],
        "nerf_tile_size": ["INT", {"default": -1, "min": -1}]}},
    "QwenImageDiffsynthControlnet": {"required": {
        "model": ["MODEL", {}], "model_patch": ["MODEL_PATCH", {}], "vae": ["VAE", {}], "image": ["IMAGE", {}],
        "strength": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]},
        "optional": {"mask": ["MASK", {}]}},
    "ZImageFunControlnet": {"required": {
        "model": ["MODEL", {}], "model_patch": ["MODEL_PATCH", {}], "vae": ["VAE", {}],
        "strength": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]},
        "optional": {"image": ["IMAGE", {}], "inpaint_image": ["IMAGE", {}], "mask": ["MASK", {}]}},
}


@pytest.fixture(scope="module")
def object_info():
    return default_registry(packs=False).object_info()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_input_specs(object_info, name):
    got = object_info[name]["input"]
    want = SPECS[name]
    assert list(got) == list(want)
    for section in want:
        assert list(got[section]) == list(want[section])
        for key, (kind, opts) in want[section].items():
            assert got[section][key][0] == kind
            for k, v in opts.items():
                assert got[section][key][1].get(k) == v, (name, key, k)


def test_model_patch_loader_lists_model_patches(object_info):
    assert object_info["ModelPatchLoader"]["output"] == ["MODEL_PATCH"]
    assert list(object_info["ModelPatchLoader"]["input"]["required"]) == ["name"]


def test_layered_latent_shape(make):
    out = make(EmptyQwenImageLayeredLatentImage).execute(width=640, height=320, layers=2, batch_size=3)[0]["samples"]
    assert out.shape == (3, 16, 3, 40, 80) and not out.any()
    none = make(EmptyQwenImageLayeredLatentImage).execute(width=64, height=64, layers=0)[0]["samples"]
    assert none.shape == (1, 16, 1, 8, 8)


def test_radiance_latent_is_pixel_space(make):
    out = make(EmptyChromaRadianceLatentImage).execute(width=48, height=32, batch_size=2)[0]["samples"]
    assert out.shape == (2, 3, 32, 48) and out.dtype == torch.float32 and not out.any()


def test_radiance_options(make):
    model = object()
    node = make(ChromaRadianceOptions)
    assert node.execute(model=model)[0] is model
    assert node.execute(model=model, nerf_tile_size=16, start_sigma=0.8, end_sigma=0.2)[0] is model
    with pytest.raises(ValueError, match="end_sigma"):
        node.execute(model=model, nerf_tile_size=16, start_sigma=0.2, end_sigma=0.8)
