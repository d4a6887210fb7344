"""ComfyUI's five official Qwen-Image 2.1 templates (the ``comfyui_workflow_templates_json`` package) validate
against nodegraph's nodes with model/input-file errors only, and the text-to-image template runs end to end on
the tiny 2.1 files saved under the template's names (the transformers' and Qwen3-VL's ``*_int8_convrot`` files
holding ConvRot INT8 weights quantised by comfy-kitchen, as the releases do). To keep the run cheap on CPU the converted prompt's
EmptyLatentImage is 64×64 (the template: 1024² from ResolutionSelector) and KSampler takes 4 steps (25);
everything else — QwenImage21Cache, KSampler euler/simple at cfg 1, SaveImageAdvanced — runs as the template sets
it. The t2i run turns the prompt-enhancer switch on (saved off): TextGenerate rewrites the prompt with a tiny
random Qwen 3.5 (:mod:`tests.dit.tiny_qwen35`) saved as the template's ``qwen3.5_9b_qwen_image_2.1_pe_t2i
.int8_convrot`` file (ConvRot INT8, CLIPLoader type ``stable_diffusion`` as saved) under the template's system
prompt and sampling (temperature 1, top-k 20, top-p 0.95, presence penalty 1.5, its seed; max_length 16 instead
of 4096), and TextEncodeQwenImage21 gets that text. The edit run turns its enhancer on too: the i2i file
(type ``qwen_image`` as saved) is shown both reference images (BatchImagesNode) with the instruction."""

from __future__ import annotations

import shutil

import pytest

from nodegraph.registry import default_registry

from tests.dit.template_runs import last_saved_image, set_inputs, template_api_of
from tests.dit.test_qwen_image21 import build
from tests.dit.tiny_qwen35 import build_qwen35
from tests.helpers.comfy_quant import int8_convrot_file
from tests.helpers.engines import make_engine
from tests.helpers.package_templates import check_templates, package_templates

FILES = {"diffusion_models/tiny_qwen_image21.safetensors": ["diffusion_models/qwen_image_2.1_int8_convrot.safetensors",
                                                            "diffusion_models/qwen_image_2.1_turbo_int8_convrot.safetensors"],
         "text_encoders/tiny_qwen3vl.safetensors": ["text_encoders/qwen3vl_8b_int8_convrot.safetensors"],
         # the prompt enhancers (Qwen 3.5)
         "text_encoders/tiny_qwen35.safetensors": ["text_encoders/qwen3.5_9b_qwen_image_2.1_pe_t2i.int8_convrot.safetensors",
                                                   "text_encoders/qwen3.5_9b_qwen_image_2.1_pe_i2i.int8_convrot.safetensors"],
         "vae/tiny_qwen_image21_vae.safetensors": ["vae/qwen_image_2.1_vae_bf16.safetensors"]}
QUANTISED = {"diffusion_models/qwen_image_2.1_int8_convrot.safetensors",
             "diffusion_models/qwen_image_2.1_turbo_int8_convrot.safetensors",
             "text_encoders/qwen3vl_8b_int8_convrot.safetensors",
             "text_encoders/qwen3.5_9b_qwen_image_2.1_pe_t2i.int8_convrot.safetensors",
             "text_encoders/qwen3.5_9b_qwen_image_2.1_pe_i2i.int8_convrot.safetensors"}


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
    build_qwen35(models / "text_encoders", ["tiny_qwen35.safetensors"])
    for src, names in FILES.items():
        for name in names:
            if name in QUANTISED:  # the loaded ConvRot INT8 files hold ConvRot INT8 weights
                assert int8_convrot_file(models / src, models / name) > 10
            else:
                shutil.copyfile(models / src, models / name)
    return root


def _api(name: str, registry) -> dict:
    return template_api_of(next(p for p in templates() if p.name == name), registry)


def _run(root, tmp_path, registry, api: dict, values: dict | None = None) -> set[str]:
    """Runs ``api`` on a fresh engine over ``root``'s models (outputs under ``tmp_path``): the node types that
    ran (``values`` gets each executed node's first output by id)."""
    eng = make_engine(root, tmp_path, registry)
    try:
        result = eng.run(api).raise_for_status()
    finally:
        eng.close()
    if values is not None:
        values.update({n: result.value(n, 0) for n in result.executed if result.values.get(n)})
    return {api[n]["class_type"] for n in result.executed}


def test_t2i_template_runs(template_root, tmp_path, registry):
    root = template_root
    api = _api("image_qwen_image_2_1_t2i.json", registry)
    kinds = {n["class_type"] for n in api.values()}
    assert {"TextEncodeQwenImage21", "QwenImage21Cache", "EmptyLatentImage", "KSampler", "TextGenerate"} <= kinds
    (switch_id, switch), = [(k, n) for k, n in api.items() if n["class_type"] == "ComfySwitchNode"]
    (generate_id, generate), = [(k, n) for k, n in api.items() if n["class_type"] == "TextGenerate"]
    assert switch["inputs"]["switch"] is False and switch["inputs"]["on_true"] == [generate_id, 0]  # saved off
    loader = api[generate["inputs"]["clip"][0]]["inputs"]
    assert (loader["clip_name"], loader["type"]) == ("qwen3.5_9b_qwen_image_2.1_pe_t2i.int8_convrot.safetensors",
                                                     "stable_diffusion")
    assert (generate["inputs"]["sampling_mode"], generate["inputs"]["sampling_mode.top_k"]) == ("on", 20)
    set_inputs(api, {"EmptyLatentImage": dict(width=64, height=64), "KSampler": dict(steps=4),
                     "ComfySwitchNode": dict(switch=True), "TextGenerate": dict(max_length=16)})
    values: dict = {}
    ran = _run(root, tmp_path, registry, api, values)
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "QwenImage21Cache", "TextEncodeQwenImage21", "KSampler",
            "VAEDecode", "SaveImageAdvanced", "TextGenerate"} <= ran
    # the enhanced prompt, not the typed one, is what the encoder got
    assert values[switch_id] == values[generate_id] and len(values[generate_id]) > 10
    assert values[generate_id] not in generate["inputs"]["prompt"]
    assert last_saved_image(tmp_path / "output").shape[:2] == (64, 64)


def test_image_edit_template_runs(template_root, tmp_path, registry):
    """The edit template: two reference images (resolution 0: each at its own size rounded to 32 px; here 64×64
    and 96×64 instead of the template's photos), the encoder's latent on the first image's size, 4 steps; the
    prompt enhancer switched on (saved off), shown both images, its answer to the encoder."""
    import numpy as np
    from PIL import Image

    api = _api("image_qwen_image_2_1_image_edit.json", registry)
    (tmp_path / "input").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "input" / "portrait_model_denim.png")
    Image.fromarray(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)).save(
        tmp_path / "input" / "clothing_light_blue_denim_shirt.png")
    (generate_id, generate), = [(k, n) for k, n in api.items() if n["class_type"] == "TextGenerate"]
    (switch_id, switch), = [(k, n) for k, n in api.items()
                            if n["class_type"] == "ComfySwitchNode" and n["inputs"]["on_true"] == [generate_id, 0]]
    assert switch["inputs"]["switch"] is False  # saved off
    loader = api[generate["inputs"]["clip"][0]]["inputs"]
    assert (loader["clip_name"], loader["type"]) == ("qwen3.5_9b_qwen_image_2.1_pe_i2i.int8_convrot.safetensors",
                                                     "qwen_image")
    switch["inputs"]["switch"] = True
    set_inputs(api, {"KSampler": dict(steps=4), "TextGenerate": dict(max_length=16)})
    values: dict = {}
    ran = _run(template_root, tmp_path, registry, api, values)
    assert {"TextEncodeQwenImage21", "QwenImage21Cache", "KSampler", "VAEDecode", "SaveImageAdvanced", "TextGenerate",
            "BatchImagesNode"} <= ran
    assert values[switch_id] == values[generate_id] and len(values[generate_id]) > 10
    assert last_saved_image(tmp_path / "output").shape[:2] == (64, 64)
