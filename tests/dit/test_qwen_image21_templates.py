"""ComfyUI's five official Qwen-Image 2.1 templates (the ``comfyui_workflow_templates_json`` package) validate
against nodegraph's nodes with model/input-file errors only, and the text-to-image template runs end to end on
the tiny 2.1 files saved under the template's names. To keep the run cheap on CPU the converted prompt's
EmptyLatentImage is 64×64 (the template: 1024² from ResolutionSelector) and KSampler takes 4 steps (25);
everything else — the prompt-enhancer switch (off as saved, so TextGenerate and its Qwen 3.5 loader do not
run), QwenImage21Cache, KSampler euler/simple at cfg 1, SaveImageAdvanced — runs as the template sets it."""

from __future__ import annotations

import json
import shutil

import pytest

from nodegraph.registry import default_registry
from nodegraph.workflow.loader import load_workflow_data

from tests.dit.test_qwen_image21 import build
from tests.helpers.engines import make_engine
from tests.helpers.package_templates import check_templates, package_templates

FILES = {"diffusion_models/tiny_qwen_image21.safetensors": ["diffusion_models/qwen_image_2.1_int8_convrot.safetensors",
                                                            "diffusion_models/qwen_image_2.1_turbo_int8_convrot.safetensors"],
         "text_encoders/tiny_qwen3vl.safetensors": ["text_encoders/qwen3vl_8b_int8_convrot.safetensors",
                                                    # the prompt enhancer's files: named, not loaded while it is off
                                                    "text_encoders/qwen3.5_9b_qwen_image_2.1_pe_t2i.int8_convrot.safetensors",
                                                    "text_encoders/qwen3.5_9b_qwen_image_2.1_pe_i2i.int8_convrot.safetensors"],
         "vae/tiny_qwen_image21_vae.safetensors": ["vae/qwen_image_2.1_vae_bf16.safetensors"]}


@pytest.fixture(scope="module")
def registry():
    return default_registry(packs=False)


def templates():
    return package_templates(lambda name: name.startswith("image_qwen_image_2_1"))


def test_the_five_templates_validate_with_file_errors_only(registry):
    paths = templates()
    assert len(paths) == 5, [p.name for p in paths]
    check = check_templates(paths, registry, file_errors=("not one of its choices", "not found in inputs",
                                                          "Invalid image file"))
    check.assert_missing(set())
    assert sorted(check.clean) == sorted(p.name for p in paths)


@pytest.fixture(scope="module")
def template_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen21_template")
    build(root)
    models = root / "models"
    for src, names in FILES.items():
        for name in names:
            shutil.copyfile(models / src, models / name)
    return root


def _api(name: str, registry) -> dict:
    path = next(p for p in templates() if p.name == name)
    return load_workflow_data(json.loads(path.read_text()), registry).api


def test_t2i_template_runs(template_root, tmp_path, registry):
    root = template_root
    api = _api("image_qwen_image_2_1_t2i.json", registry)
    kinds = {n["class_type"] for n in api.values()}
    assert {"TextEncodeQwenImage21", "QwenImage21Cache", "EmptyLatentImage", "KSampler", "TextGenerate"} <= kinds
    for n in api.values():
        if n["class_type"] == "EmptyLatentImage":
            n["inputs"].update(width=64, height=64)
        if n["class_type"] == "KSampler":
            n["inputs"].update(steps=4)
    eng = make_engine(root, tmp_path, registry)
    try:
        result = eng.run(api).raise_for_status()
    finally:
        eng.close()
    ran = {api[n]["class_type"] for n in result.executed}
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "QwenImage21Cache", "TextEncodeQwenImage21", "KSampler",
            "VAEDecode", "SaveImageAdvanced"} <= ran
    assert "TextGenerate" not in ran  # the prompt enhancer is switched off as saved
    saved = sorted(p for p in (tmp_path / "output").rglob("*.png"))
    assert saved, "SaveImageAdvanced wrote no file"
    from PIL import Image

    image = Image.open(saved[-1])
    assert image.size == (64, 64)


def test_image_edit_template_runs(template_root, tmp_path, registry):
    """The edit template: two reference images (resolution 0: each at its own size rounded to 32 px; here 64×64
    and 96×64 instead of the template's photos), the encoder's latent on the first image's size, 4 steps."""
    import numpy as np
    from PIL import Image

    api = _api("image_qwen_image_2_1_image_edit.json", registry)
    (tmp_path / "input").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "input" / "portrait_model_denim.png")
    Image.fromarray(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)).save(
        tmp_path / "input" / "clothing_light_blue_denim_shirt.png")
    for n in api.values():
        if n["class_type"] == "KSampler":
            n["inputs"].update(steps=4)
    eng = make_engine(template_root, tmp_path, registry)
    try:
        result = eng.run(api).raise_for_status()
    finally:
        eng.close()
    ran = {api[n]["class_type"] for n in result.executed}
    assert {"TextEncodeQwenImage21", "QwenImage21Cache", "KSampler", "VAEDecode", "SaveImageAdvanced"} <= ran
    assert "TextGenerate" not in ran
    from PIL import Image as _Image

    saved = sorted((tmp_path / "output").rglob("*.png"))
    assert saved and _Image.open(saved[-1]).size == (64, 64)
