"""ComfyUI's official workflow templates through our converter and validator (issue 18): three templates
copied into tests/data/comfy_templates (MIT, see its README) are checked the way bench/templates.py
checks the whole template bundle — converted from the canvas format, validated against empty model and
input folders, errors sorted into unknown node types, model files, input files and the rest."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from nodegraph.context import Paths
from nodegraph.registry import default_registry
from nodegraph.validation import validate
from nodegraph.workflow.loader import load_workflow_data

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "tests" / "data" / "comfy_templates"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_templates", ROOT / "bench" / "templates.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def registry():
    return default_registry(packs=False)


@pytest.fixture(scope="module")
def results(registry):
    return {r.name: r for r in bench.run(TEMPLATES, registry)}


def empty_paths(root: Path) -> Paths:
    return Paths(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp", models_dir=root / "models")


def test_every_copied_template_is_found(results):
    assert sorted(results) == ["basic_mask_operations_and_compositing", "image_sdxl_simple", "sdxlturbo_example"]


def test_sdxl_templates_fail_only_for_their_checkpoint(results):
    for name, ckpt in [("image_sdxl_simple", "sd_xl_base_1.0.safetensors"),
                       ("sdxlturbo_example", "sd_xl_turbo_1.0_fp16.safetensors")]:
        r = results[name]
        assert r.status == "model_files_only", (name, [(p.kind, p.message) for p in r.problems])
        assert [(p.category, p.kind, p.class_type, p.input_name) for p in r.problems] == \
            [("model_file", "value_not_in_list", "CheckpointLoaderSimple", "ckpt_name")]
        assert r.model_files == [ckpt] and r.sd_family


def test_mask_template_validates_fully(results):
    r = results["basic_mask_operations_and_compositing"]
    assert r.status == "valid" and r.problems == [] and r.model_files == [] and not r.sd_family


def test_with_the_checkpoint_present_the_sdxl_template_validates(registry, tmp_path):
    paths = empty_paths(tmp_path)
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "sd_xl_turbo_1.0_fp16.safetensors").write_bytes(b"")
    api = load_workflow_data(json.loads((TEMPLATES / "sdxlturbo_example.json").read_text()), registry).api
    plan = validate(api, registry, paths=paths)
    assert {api[n]["class_type"] for n in plan.nodes} >= {"SamplerCustom", "KSamplerSelect", "SDTurboScheduler"}


def test_custom_sampling_widgets_map_to_comfyui_input_names(registry):
    """The canvas's widgets_values land on the inputs ComfyUI's template meant (seed control skipped)."""
    api = load_workflow_data(json.loads((TEMPLATES / "sdxlturbo_example.json").read_text()), registry).api
    by_type = {node["class_type"]: node["inputs"] for node in api.values()}
    assert by_type["SamplerCustom"] == {
        "add_noise": True, "noise_seed": 0, "cfg": 1, "model": ["20", 0], "positive": ["6", 0],
        "negative": ["7", 0], "sampler": ["14", 0], "sigmas": ["22", 0], "latent_image": ["5", 0]}
    assert by_type["SDTurboScheduler"] == {"steps": 1, "denoise": 1, "model": ["20", 0]}
    assert by_type["KSamplerSelect"] == {"sampler_name": "euler_ancestral"}


def test_unknown_node_type_is_reported_by_name(registry, tmp_path):
    workflow = json.loads((TEMPLATES / "image_sdxl_simple.json").read_text())
    saver = next(n for n in workflow["nodes"] if n["type"] == "SaveImage")
    saver["type"] = "SaveImageSomewhereElse"
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(workflow))
    r = bench.check_template(path, registry, empty_paths(tmp_path))
    assert r.status == "unknown_nodes" and r.unknown_types == ["SaveImageSomewhereElse"]


def test_report_counts_statuses_and_sd_templates(results, capsys):
    bench.report(list(results.values()))
    out = capsys.readouterr().out
    assert "templates: 3 (3 local, 0 api_*)" in out
    assert "validate with at most model-file errors: 3 of 3" in out
    assert "SD1.x/SDXL templates (every model file of the SD 1.x/SDXL families): 2; at most model-file errors: 2" \
        in out


def test_missing_input_image_is_an_input_file_error(registry, tmp_path):
    """LoadImage's own check (the file is not in the input folder) is sorted as input_file, not other."""
    workflow = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
                "nodes": [{"id": 1, "type": "LoadImage", "mode": 0, "widgets_values": ["example.png", "image"],
                           "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
                          {"id": 2, "type": "PreviewImage", "mode": 0,
                           "inputs": [{"name": "images", "type": "IMAGE", "link": 1}]}],
                "links": [[1, 1, 0, 2, 0, "IMAGE"]]}
    path = tmp_path / "load.json"
    path.write_text(json.dumps(workflow))
    r = bench.check_template(path, registry, empty_paths(tmp_path))
    assert r.status == "files_only", [(p.kind, p.message) for p in r.problems]
    assert [(p.category, p.class_type) for p in r.problems] == [("input_file", "LoadImage")]
