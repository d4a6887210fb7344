"""API → canvas conversion: every ready workflow ships a canvas twin that converts back to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodegraph.registry import default_registry
from nodegraph.workflow.api_to_ui import api_to_ui, integer_ids, renumbered
from nodegraph.workflow.ui_format import ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
API_FILES = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith(".ui.json"))


def structure(api: dict) -> dict:
    return {k: (v["class_type"], v["inputs"]) for k, v in api.items()}


@pytest.fixture(scope="module")
def registry():
    return default_registry(packs=False)


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_every_workflow_has_an_equivalent_canvas_twin(path, registry):
    api = json.loads(path.read_text())
    twin = path.with_name(path.name[: -len(".json")] + ".ui.json")
    assert twin.exists(), f"{twin.name} is missing: run `python -m nodegraph.workflow.make_ui_twins`"
    expected = renumbered(api, integer_ids(api))
    converted = ui_to_api(json.loads(twin.read_text()), registry)
    # inputs the API file leaves out come back as the widget's default (what validation fills in
    # for an absent input) or, without one, its fresh value ("" / 0 / False)
    for node_id, node in converted.items():
        spec = registry[node["class_type"]].INPUTS
        for name in [n for n in node["inputs"] if n not in expected[node_id]["inputs"]]:
            value = node["inputs"].pop(name)
            wanted = spec[name].default if spec[name].has_default else ("", 0, 0.0, False)
            assert value == wanted or value in (wanted if isinstance(wanted, tuple) else ()), (node_id, name)
    assert structure(converted) == structure(expected)


def test_round_trip_with_seed_controls_uploads_and_string_ids(registry, tmp_path):
    api = {"img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 5}},
           "noise": {"class_type": "ImageAddNoise", "inputs": {"image": ["img", 0], "seed": 7, "strength": 0.2}},
           "save": {"class_type": "SaveImage", "inputs": {"images": ["noise", 0], "filename_prefix": "x"}}}
    ui = api_to_ui(api, registry)
    noise = next(n for n in ui["nodes"] if n["type"] == "ImageAddNoise")
    assert noise["widgets_values"] == [7, "fixed", 0.2]       # the seed carries its control value
    assert noise["title"] == "noise"                          # the old id survives as the title
    assert [n["pos"][0] for n in ui["nodes"]] == [0, 360, 720]  # laid out by depth
    assert structure(ui_to_api(ui, registry)) == structure(renumbered(api, integer_ids(api)))
    (tmp_path / "in").mkdir()
    load = api_to_ui({"1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
                      "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, registry)
    assert load["nodes"][0]["widgets_values"] == ["cat.png", "image"]   # the upload button's entry
