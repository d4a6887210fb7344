"""ComfyUI's official SD3.5 and Flux.1 templates: three run end to end on tiny random-weight models saved
under the file names they use (tests/data/comfy_templates_flow, MIT; the only change is a 64×64
EmptySD3LatentImage instead of 1024² to keep the test cheap), and — where the template package is
installed — every Flux.1 / SD3.5 template of it validates with at most file errors (models, input
images) apart from a known, shrinking list of node types nodegraph lacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from nodegraph.workflow.loader import load_workflow_data

from tests.dit.template_runs import last_saved_image
from tests.dit.tiny_flow import _contig, flux_to_bfl, flux_transformer
from tests.helpers.package_templates import check_templates, package_templates

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "comfy_templates_flow"
#: node types of the package's Flux.1 / SD3.5 templates that nodegraph does not have yet
MISSING_NODE_TYPES: set[str] = set()


@pytest.fixture(scope="module")
def template_files(flow_root, tiny_sd3, tiny_flux):
    models = flow_root / "models"
    copies = {"checkpoints/sd3.5_large_fp8_scaled.safetensors": "checkpoints/tiny_sd35.safetensors",
              "diffusion_models/flux1-dev.safetensors": "diffusion_models/tiny_flux_dev.safetensors",
              "text_encoders/clip_l.safetensors": "text_encoders/tiny_clip_l.safetensors",
              "text_encoders/t5xxl_fp16.safetensors": "text_encoders/tiny_t5xxl.safetensors",
              "vae/ae.safetensors": "vae/tiny_flux_ae.safetensors"}
    for name, source in copies.items():
        shutil.copy(models / source, models / name)
    # ComfyUI's all-in-one schnell file: transformer, VAE and both text encoders under their prefixes
    allinone = {"model.diffusion_model." + k: v for k, v in flux_to_bfl(flux_transformer(guidance=False)).items()}
    allinone.update({"first_stage_model." + k: v for k, v in load_file(str(models / "vae" / "ae.safetensors")).items()})
    for prefix, source in (("clip_l", "tiny_clip_l"), ("t5xxl", "tiny_t5xxl")):
        allinone.update({f"text_encoders.{prefix}.transformer.{k}": v
                         for k, v in load_file(str(models / "text_encoders" / f"{source}.safetensors")).items()})
    save_file(_contig(allinone), str(models / "checkpoints" / "flux1-schnell-fp8.safetensors"))
    return models


def _api(name: str, registry) -> dict:
    api = load_workflow_data(json.loads((TEMPLATES / f"{name}.json").read_text()), registry).api
    latents = [n for n in api.values() if n["class_type"] == "EmptySD3LatentImage"]
    assert len(latents) == 1
    latents[0]["inputs"].update(width=64, height=64)
    return api


@pytest.mark.parametrize("name", ["sd3.5_simple_example", "flux_dev_full_text_to_image", "flux_schnell"])
def test_template_runs_end_to_end(flow_engine, flow_registry, template_files, name):
    api = _api(name, flow_registry)
    result = flow_engine.run(api).raise_for_status()
    saves = [n for n, v in api.items() if v["class_type"] == "SaveImage"]
    assert saves and all(s in result.executed for s in saves)
    image = last_saved_image(flow_engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01


def _flow_template(name: str) -> bool:
    return ("flux" in name and "flux2" not in name and "flux3" not in name) or name.startswith("sd3")


def test_package_templates_validate_with_file_errors_only(flow_registry):
    paths = package_templates(_flow_template)
    assert len(paths) >= 10
    check = check_templates(paths, flow_registry)
    check.assert_missing(MISSING_NODE_TYPES)
    assert len(check.clean) >= 17, check.clean
