"""ComfyUI's official Qwen-Image, Qwen-Image-Edit and Z-Image Turbo templates run end to end on tiny
random-weight models saved under the file names the templates use (tests/data/comfy_templates_dit, MIT).
The only changes to a converted template keep the test cheap on CPU: a smaller EmptySD3LatentImage
(64×64 instead of 1024² / 1328²), and for Edit a 256×256 input image (the template's VAEEncode samples
at the input's size; its ImageScaleToTotalPixels feeds nothing) and 4 steps instead of 20; loaders, encoders, samplers, schedulers, switches and SaveImage run as the template sets
them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.workflow.loader import load_workflow_data

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.template_runs import last_saved_image
from tests.dit.tiny_qwen import copy_as

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "comfy_templates_dit"


def _api(name: str, registry) -> dict:
    api = load_workflow_data(json.loads((TEMPLATES / f"{name}.json").read_text()), registry).api
    for n in api.values():
        if n["class_type"] == "EmptySD3LatentImage":
            n["inputs"].update(width=64, height=64)
    return api


def _run(engine, registry, name: str, steps: int | None = None, lightning: bool = False):
    api = _api(name, registry)
    if lightning:  # the template's 'enable the Lightning LoRA' boolean
        booleans = [n for n in api.values() if n["class_type"] == "PrimitiveBoolean"]
        assert len(booleans) == 1
        booleans[0]["inputs"]["value"] = True
    if steps is not None:  # the template's step count comes from a primitive behind a switch
        for n in api.values():
            if n["class_type"] == "PrimitiveInt" and n["inputs"].get("value") == 20:
                n["inputs"]["value"] = steps
    result = engine.run(api).raise_for_status()
    saves = [n for n, v in api.items() if v["class_type"] == "SaveImage"]
    assert saves and all(s in result.executed for s in saves)
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape[-1] == 3 and min(image.shape[:2]) >= 64 and image.std() > 0.01
    return api, result


def test_z_image_turbo_template_runs(qwen_engine, qwen_registry, qwen_root, tiny_z_image):
    copy_as(qwen_root, {"diffusion_models/tiny_z_image.safetensors": "diffusion_models/z_image_turbo_bf16.safetensors",
                        "text_encoders/tiny_qwen_3.safetensors": "text_encoders/qwen_3_4b.safetensors",
                        "vae/tiny_z_image_ae.safetensors": "vae/ae.safetensors"})
    api, result = _run(qwen_engine, qwen_registry, "image_z_image_turbo")
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "ModelSamplingAuraFlow", "KSampler", "ConditioningZeroOut"} <= kinds


def _qwen_template_files(qwen_root, unet: str, lora: str) -> None:
    """The tiny Qwen-Image files under a template's names (``unet`` the diffusion model's) and a tiny
    LoRA file as its Lightning LoRA ``lora``."""
    copy_as(qwen_root, {"diffusion_models/tiny_qwen_image.safetensors": f"diffusion_models/{unet}",
                        "text_encoders/tiny_qwen_2.5_vl.safetensors": "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
                        "vae/tiny_qwen_image_vae.safetensors": "vae/qwen_image_vae.safetensors"})
    path = qwen_root / "models" / "loras" / lora
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, 64, generator=g),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(64, 2, generator=g)}, str(path))


@pytest.mark.parametrize("lightning", [False, True])
def test_qwen_image_template_runs(qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, lightning):
    # the template names the Lightning LoRA behind a switch (off as saved: it must exist but is not applied;
    # on: LoraLoaderModelOnly applies it and the switches pick 8 steps at cfg 1)
    _qwen_template_files(qwen_root, "qwen_image_fp8_e4m3fn.safetensors", "Qwen-Image-Lightning-8steps-V1.0.safetensors")
    api, result = _run(qwen_engine, qwen_registry, "image_qwen_image", lightning=lightning)
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "ModelSamplingAuraFlow", "KSampler"} <= kinds
    assert ("LoraLoaderModelOnly" in kinds) == lightning


def test_qwen_image_edit_template_runs(qwen_engine, qwen_registry, qwen_root, tiny_qwen_image):
    _qwen_template_files(qwen_root, "qwen_image_edit_fp8_e4m3fn.safetensors",
                         "Qwen-Image-Edit-Lightning-4steps-V1.0-bf16.safetensors")
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.kron(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((32, 32, 1), np.uint8))
    Image.fromarray(pixels).save(qwen_engine.paths.input_dir / "image_qwen_image_edit_input_image.png")
    api, result = _run(qwen_engine, qwen_registry, "image_qwen_image_edit", steps=4)
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"TextEncodeQwenImageEdit", "CFGNorm", "VAEEncode", "KSampler"} <= kinds
    assert "LoraLoaderModelOnly" not in kinds
