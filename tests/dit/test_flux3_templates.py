"""ComfyUI's four official FLUX.3 Klein templates (the ``comfyui_workflow_templates_json`` package) validate against
nodegraph's nodes with model/input-file errors only, and all four run end to end on the tiny FLUX.3 files
(:mod:`tests.dit.tiny_flux3`) saved under the templates' names; the ``int8_convrot`` ones hold ConvRot INT8 weights
as those releases do (every 2-D weight quantised by comfy-kitchen, :mod:`tests.helpers.comfy_quant`; nodegraph
dequantises them when it reads the file). To keep the runs cheap on CPU the converted
prompts' EmptyFlux2LatentImage is 64×64 (the templates: 1024² from ResolutionSelector), KSampler takes 4 steps
(50 / 16) and the edits' ReferenceMultiLatent resizes to 0.01 MP (the templates: 1 MP; 64² px → 102² → 96² on
the 16-px grid). The t2i runs keep the prompt upsampler on as saved: TextGenerate writes the prompt with a tiny
random Qwen 3.5 (:mod:`tests.dit.tiny_qwen35`, saved as the template's ``*_w4a8`` file with comfy-kitchen's
``asym_w4a8_int8`` weights; its max_length 16 instead of 3584) under the template's system prompt and sampling
(top-k 1, presence penalty 1.5), and that text is what CLIPTextEncode gets; the edit runs too, as saved: the
upsampler is shown the reference image (BatchImagesNode) and the layout prompt, and its answer is what
CLIPTextEncode gets. Everything else (CreateBoundingBoxes and Flux3LayoutPrompt,
KSampler's sampler, scheduler and cfg) runs as the templates set it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from nodegraph.registry import default_registry

from tests.dit.template_runs import last_saved_image, set_inputs, template_api_of
from tests.dit.tiny_flux3 import NAMES, build_flux3
from tests.dit.tiny_qwen35 import build_qwen35, w4a8_file
from tests.helpers.comfy_quant import int8_convrot_file
from tests.helpers.engines import make_engine
from tests.helpers.package_templates import check_templates, package_templates

FILES = {f"diffusion_models/{NAMES['unet']}": ["diffusion_models/flux3-image-klein-base-int8-convrot.safetensors"],
         f"diffusion_models/{NAMES['distilled']}": ["diffusion_models/flux3-image-klein-int8-convrot.safetensors"],
         f"text_encoders/{NAMES['clip']}": ["text_encoders/qwen3vl_4b_int8_convrot.safetensors"],
         f"vae/{NAMES['vae']}": ["vae/flux2-vae.safetensors"]}
TEMPLATES = ("image_flux3_klein_t2i.json", "image_flux3_klein_distilled_t2i.json", "image_flux3_klein_image_edit.json",
             "image_flux3_klein_distilled_image_edit.json")
UPSAMPLER = "qwen3.5_9b_flux3_prompt_upsampler_w4a8.safetensors"
SMALL = {"EmptyFlux2LatentImage": dict(width=64, height=64), "KSampler": dict(steps=4),
         "TextGenerate": dict(max_length=16)}


@pytest.fixture(scope="module")
def registry():
    return default_registry(packs=False)


def templates():
    return package_templates(lambda name: name.startswith("image_flux3"))


def test_package_templates_validate_with_file_errors_only(registry):
    paths = templates()
    assert sorted(p.name for p in paths) == sorted(TEMPLATES)
    check = check_templates(paths, registry, file_errors=("not one of its choices", "not found in inputs",
                                                          "Invalid image file"))
    check.assert_missing(set())
    assert sorted(check.clean) == sorted(TEMPLATES)


@pytest.fixture(scope="module")
def template_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux3_template")
    build_flux3(root)
    models = root / "models"
    for src, names in FILES.items():
        for name in names:
            if "int8" in name:  # the templates' ConvRot INT8 files hold ConvRot INT8 weights
                assert int8_convrot_file(models / src, models / name) > 10
            else:
                shutil.copyfile(models / src, models / name)
    build_qwen35(models / "text_encoders", ["tiny_qwen35.safetensors"])  # the prompt upsampler, w4a8 as released
    assert w4a8_file(models / "text_encoders" / "tiny_qwen35.safetensors", models / "text_encoders" / UPSAMPLER) > 10
    return root


def _api(name: str, registry) -> dict:
    return template_api_of(next(p for p in templates() if p.name == name), registry)


def _run(root, tmp_path, registry, api: dict, texts: list | None = None, values: dict | None = None) -> set[str]:
    """Runs ``api`` on a fresh engine over ``root``'s models; the node types that ran (``texts`` gets the
    PreviewAny texts, ``values`` each executed node's first output by id)."""
    eng = make_engine(root, tmp_path, registry)
    try:
        result = eng.run(api).raise_for_status()
    finally:
        eng.close()
    if texts is not None:
        texts.extend(t for out in result.outputs.values() for t in out.get("text", []))
    if values is not None:
        values.update({n: result.value(n, 0) for n in result.executed if result.values.get(n)})
    return {api[n]["class_type"] for n in result.executed}


@pytest.mark.parametrize("name, steps, cfg", [("image_flux3_klein_t2i.json", 50, 3.5),
                                               ("image_flux3_klein_distilled_t2i.json", 16, 1)])
def test_t2i_templates_run(template_root, tmp_path, registry, name, steps, cfg):
    api = _api(name, registry)
    (sampler,) = [n["inputs"] for n in api.values() if n["class_type"] == "KSampler"]
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]) == (steps, cfg, "euler",
                                                                                                "simple")
    (switch_id, switch), = [(k, n) for k, n in api.items() if n["class_type"] == "ComfySwitchNode"]
    (generate_id, generate), = [(k, n) for k, n in api.items() if n["class_type"] == "TextGenerate"]
    assert switch["inputs"]["switch"] is True and switch["inputs"]["on_true"] == [generate_id, 0]  # upsampler on
    loader = api[generate["inputs"]["clip"][0]]["inputs"]
    assert (loader["clip_name"], loader["type"]) == (UPSAMPLER, "flux3")
    assert isinstance(generate["inputs"]["system_prompt"], list) and generate["inputs"]["thinking"] is False
    set_inputs(api, SMALL)
    values: dict = {}
    ran = _run(template_root, tmp_path, registry, api, values=values)
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "EmptyFlux2LatentImage", "KSampler",
            "VAEDecode", "SaveImage", "CreateBoundingBoxes", "Flux3LayoutPrompt", "TextGenerate"} <= ran
    prompt = api[next(k for k, n in api.items() if n["class_type"] == "PrimitiveStringMultiline"
                      and [k, 0] == generate["inputs"]["prompt"])]["inputs"]["value"]
    assert values[switch_id] == values[generate_id] and len(values[generate_id]) > 10  # the upsampled prompt
    assert values[generate_id] not in prompt and prompt not in values[generate_id]
    image = last_saved_image(tmp_path / "output")
    assert image.shape[:2] == (64, 64) and float(image.std()) > 0.01


@pytest.mark.parametrize("name, picture", [
    ("image_flux3_klein_image_edit.json", "fashion_portrait_blue_silk_gown_vis.png"),
    ("image_flux3_klein_distilled_image_edit.json", "woman_gold_earring_teal_top_portrait.png")])
def test_image_edit_templates_run(template_root, tmp_path, registry, name, picture):
    """The edit templates: a 64×64 picture instead of the template's photo, its boxes (as saved) cited in the
    layout prompt that the upsampler rewrites with the picture in view, its answer to the text encoder,
    ReferenceMultiLatent's empty latent as KSampler's."""
    from PIL import Image

    api = _api(name, registry)
    (tmp_path / "input").mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "input" / picture)
    (switch_id, switch), = [(k, n) for k, n in api.items() if n["class_type"] == "ComfySwitchNode"]
    (generate_id, generate), = [(k, n) for k, n in api.items() if n["class_type"] == "TextGenerate"]
    assert switch["inputs"]["switch"] is False and switch["inputs"]["on_false"] == [generate_id, 0]  # upsampler on
    assert api[generate["inputs"]["image"][0]]["class_type"] == "BatchImagesNode"
    set_inputs(api, {"KSampler": dict(steps=4), "ReferenceMultiLatent": {"resolution.megapixels": 0.01},
                     "TextGenerate": dict(max_length=16)})
    texts: list = []
    values: dict = {}
    ran = _run(template_root, tmp_path, registry, api, texts, values)
    assert any('<obj_1>' in t and '"id": "obj_1"' in t for t in texts), texts  # the layout prompt, the upsampler's
    assert values[switch_id] == values[generate_id] and len(values[generate_id]) > 10  # its answer to the encoder
    assert {"CreateBoundingBoxes", "Flux3LayoutPrompt", "ReferenceMultiLatent", "CLIPTextEncode", "KSampler",
            "VAEDecode", "SaveImage", "TextGenerate", "BatchImagesNode"} <= ran
    assert last_saved_image(tmp_path / "output").shape[:2] == (96, 96)  # the reference's size
