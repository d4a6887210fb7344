"""Ready workflows and ComfyUI-format workflows run on tiny models saved under the names they use."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file
import torch

from nodegraph.workflow.loader import load_workflow_data, load_workflow_file

from tests.diffusion.comfy_ui import area_spec, embedding_spec, lora_spec, sdxl_refiner_spec, ui_workflow
from tests.helpers.engines import make_engine

WORKFLOWS = pathlib.Path(__file__).parents[2] / "workflows"
SD15 = "v1-5-pruned-emaonly.safetensors"

# The default workflow of ComfyUI, as its "Save (API)" writes it.
COMFY_DEFAULT_API = {
    "3": {"inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["5", 0]}, "class_type": "KSampler", "_meta": {"title": "KSampler"}},
    "4": {"inputs": {"ckpt_name": SD15}, "class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"}},
    "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage",
          "_meta": {"title": "Empty Latent Image"}},
    "6": {"inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["4", 1]},
          "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"}},
    "7": {"inputs": {"text": "text, watermark", "clip": ["4", 1]}, "class_type": "CLIPTextEncode",
          "_meta": {"title": "CLIP Text Encode (Prompt)"}},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage",
          "_meta": {"title": "Save Image"}},
}


@pytest.fixture(scope="module")
def named_models(model_root, tiny_sd, tiny_sdxl):
    """The tiny models under the file names the workflows reference, plus LoRAs and an embedding."""
    ckpts = model_root / "models" / "checkpoints"
    for name in (SD15,):
        shutil.copyfile(tiny_sd.checkpoint, ckpts / name)
    for name in ("sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors"):
        shutil.copyfile(tiny_sdxl.checkpoint, ckpts / name)
    loras = model_root / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for lname, target in (("style_a.safetensors", "attn2.to_k"), ("style_b.safetensors", "attn1.to_v")):
        sd = {}
        for mname, module in tiny_sd.unet.named_modules():
            if mname.endswith(target):
                key = "lora_unet_" + mname.replace(".", "_")
                sd[key + ".lora_down.weight"] = torch.randn(2, module.weight.shape[1], generator=g)
                sd[key + ".lora_up.weight"] = torch.randn(module.weight.shape[0], 2, generator=g)
        save_file(sd, str(loras / lname))
    emb = model_root / "models" / "embeddings"
    emb.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(3, 32, generator=g)}, str(emb / "easynegative.safetensors"))
    return model_root


@pytest.fixture
def wf_engine(named_models, tmp_path, diffusion_registry):
    eng = make_engine(named_models, tmp_path, diffusion_registry)
    inputs = tmp_path / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(inputs / "example.png")
    rgba = rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[20:44, 20:44, 3] = 0
    Image.fromarray(rgba).save(inputs / "yosemite_inpaint_example.png")
    yield eng
    eng.close()


def _shrink(api: dict, size: int = 64, steps: int = 3) -> dict:
    """Same graph, fewer pixels and steps (the tiny models need no 512² images to prove the wiring)."""
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "LatentUpscale"):
            scale = 1.5 if node["class_type"] == "LatentUpscale" else 1
            inputs["width"] = inputs["height"] = int(size * scale)
        if node["class_type"].startswith("KSampler") and not isinstance(inputs.get("steps"), list):
            inputs["steps"] = steps
    return api


def _saved(result) -> list:
    images = [img for out in result.outputs.values() for img in out.get("images", [])]
    assert images, "no image was saved"
    return images


def test_comfy_default_api_workflow_runs_unchanged(wf_engine):
    result = wf_engine.run(json.loads(json.dumps(COMFY_DEFAULT_API))).raise_for_status()
    assert set(result.executed) == {"3", "4", "5", "6", "7", "8", "9"}
    images = _saved(result)
    path = wf_engine.paths.output_dir / images[0]["filename"]
    assert Image.open(path).size == (512, 512)


@pytest.mark.parametrize("name", ["txt2img_sd15", "img2img", "inpaint", "hires_fix"])
@pytest.mark.parametrize("fmt", ["json", "ui.json"])
def test_ready_workflows(wf_engine, diffusion_registry, name, fmt):
    loaded = load_workflow_file(WORKFLOWS / f"{name}.{fmt}", diffusion_registry)
    api = _shrink(loaded.api)
    result = wf_engine.run(api).raise_for_status()
    _saved(result)


def _run_ui(engine, registry, spec, shrink=True):
    ui = json.loads(json.dumps(ui_workflow(spec, registry)))  # through JSON, as from a file
    api = load_workflow_data(ui, registry).api
    if shrink:
        api = _shrink(api)
    return engine.run(api).raise_for_status(), api


def test_ui_lora_one_and_several(wf_engine, diffusion_registry):
    one, _ = _run_ui(wf_engine, diffusion_registry, lora_spec(SD15, [("style_a.safetensors", 1.0, 1.0)]))
    several, api = _run_ui(wf_engine, diffusion_registry, lora_spec(
        SD15, [("style_a.safetensors", 0.8, 1.0), ("style_b.safetensors", 0.5, 0.0)]))
    assert sum(1 for n in api.values() if n["class_type"] == "LoraLoader") == 2
    assert not torch.equal(one.value("3")["samples"], several.value("3")["samples"])


def test_ui_area_composition(wf_engine, diffusion_registry):
    result, api = _run_ui(wf_engine, diffusion_registry, area_spec(SD15, steps=3, width=128, height=64), shrink=False)
    assert api["12"]["inputs"]["width"] == 64 and api["14"]["inputs"]["x"] == 64
    assert len(result.value("16")) == 3  # three conditioning entries


def test_ui_embeddings(wf_engine, diffusion_registry):
    result, api = _run_ui(wf_engine, diffusion_registry, embedding_spec(SD15, "easynegative"))
    assert "embedding:easynegative" in api["6"]["inputs"]["text"]
    _saved(result)


def test_ui_sdxl_base_and_refiner_with_primitives(wf_engine, diffusion_registry):
    spec = sdxl_refiner_spec("sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors", steps=4, switch=3,
                             width=64, height=64)
    ui = ui_workflow(spec, diffusion_registry)
    api = load_workflow_data(json.loads(json.dumps(ui)), diffusion_registry).api
    assert "45" not in api and api["10"]["inputs"]["steps"] == 4 and api["11"]["inputs"]["start_at_step"] == 3
    assert api["10"]["inputs"]["end_at_step"] == 3
    result = wf_engine.run(api).raise_for_status()
    _saved(result)
