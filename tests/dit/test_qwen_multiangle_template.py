"""ComfyUI's template_qwen_multiangle.app (Qwen-Image-Edit 2511 with the multiple-angles LoRA): CameraAngle's
shot description is the edit prompt. Runs end to end on the tiny Qwen-Image files saved under the template's
names (the LoRAs tiny files of their own); to keep it cheap on CPU the input is 64×64 and FluxKontextImageScale
(which would scale it to about 1 MP) is replaced by a 64×64 ImageScale — everything else as the template sets
it (the Lightning switch on: 4 steps, cfg 1)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.template_runs import package_template_api
from tests.dit.tiny_qwen import copy_as


def test_multiangle_template_runs_with_the_camera_prompt(qwen_engine, qwen_registry, qwen_root, tiny_qwen_image):
    api = package_template_api("template_qwen_multiangle.app", qwen_registry)
    copy_as(qwen_root, {"diffusion_models/tiny_qwen_image.safetensors":
                            "diffusion_models/qwen_image_edit_2511_int8_convrot.safetensors",
                        "text_encoders/tiny_qwen_2.5_vl.safetensors": "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
                        "vae/tiny_qwen_image_vae.safetensors": "vae/qwen_image_vae.safetensors"})
    g = torch.Generator().manual_seed(0)
    for lora in ("qwen-image-edit-2511-multiple-angles-lora.safetensors",
                 "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors"):
        path = qwen_root / "models" / "loras" / lora
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, 64, generator=g) * 0.1,
                   "transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(64, 2, generator=g) * 0.1}, str(path))
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.kron(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    Image.fromarray(pixels).save(qwen_engine.paths.input_dir / "cyber_genesis.png")
    camera = next(n for n, v in api.items() if v["class_type"] == "CameraAngle")
    assert {k: v for k, v in api[camera]["inputs"].items() if k != "image"} == {
        "horizontal_angle": 333, "vertical_angle": 17, "zoom": 5}
    scale = next(n for n, v in api.items() if v["class_type"] == "FluxKontextImageScale")
    api[scale] = {"class_type": "ImageScale", "inputs": {"image": api[scale]["inputs"]["image"], "width": 64,
                                                          "height": 64, "upscale_method": "nearest-exact",
                                                          "crop": "disabled"}}
    result = qwen_engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"CameraAngle", "TextEncodeQwenImageEditPlus", "LoraLoaderModelOnly", "KSampler", "SaveImage"} <= kinds
    assert result.values[camera][1][0] == "front-left quarter view elevated shot medium shot"
    encoders = [n for n, v in api.items() if v["class_type"] == "TextEncodeQwenImageEditPlus"
                and v["inputs"]["prompt"] == [camera, 1]]
    assert len(encoders) == 1
