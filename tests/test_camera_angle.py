"""CameraAngle (nodes/primitives/camera_angle.py): the shot description and camera record ComfyUI's node
docs specify, its /object_info entry, and the multi-angle template's node converted and run."""

from __future__ import annotations

import math

import pytest

from nodegraph.builder import Graph
from nodegraph.registry import default_registry
from nodegraph.workflow.loader import load_workflow_data
from nodegraph_nodes.primitives.camera_angle import CameraShot


@pytest.mark.parametrize("h, v, zoom, prompt", [
    (0, 0, 5.0, "front view eye-level shot medium shot"),
    (22, -16, 1.9, "front view low-angle shot wide shot"),
    (23, -15, 2.0, "front-right quarter view eye-level shot medium shot"),
    (90, 14, 5.9, "right side view eye-level shot medium shot"),
    (135, 15, 6.0, "back-right quarter view elevated shot close-up"),
    (180, 44, 10.0, "back view elevated shot close-up"),
    (225, 45, 0.0, "back-left quarter view high-angle shot wide shot"),
    (270, 60, 5.0, "left side view high-angle shot medium shot"),
    (333, 17, 5.0, "front-left quarter view elevated shot medium shot"),  # the template's values
    (338, 0, 5.0, "front view eye-level shot medium shot"),
    (360, 0, 5.0, "front view eye-level shot medium shot"),
    (400, -90, 99.0, "front view low-angle shot close-up"),  # clamped to 360, -30, 10
])
def test_shot_terms(h, v, zoom, prompt):
    assert CameraShot.clamped(h, v, zoom).prompt() == prompt


def test_camera_info_places_the_camera_six_units_away():
    info = CameraShot.clamped(90, 30, 10.0).camera_info()
    pos = info["position"]
    assert math.dist((pos["x"], pos["y"], pos["z"]), (0, 0, 0)) == pytest.approx(6.0)
    assert pos["x"] == pytest.approx(6 * math.cos(math.radians(30)))  # right side: +X
    assert pos["y"] == pytest.approx(3.0) and abs(pos["z"]) < 1e-9
    assert info["target"] == {"x": 0.0, "y": 0.0, "z": 0.0}
    assert info["zoom"] == pytest.approx(1.875) and info["fov"] == 35.0
    assert info["cameraType"] == "perspective"
    front = CameraShot.clamped(0, 0, 0.0).camera_info()
    assert front["position"]["z"] == pytest.approx(6.0) and front["zoom"] == 1.0


def test_object_info_matches_comfyui():
    info = default_registry().object_info("CameraAngle")["CameraAngle"]
    req = info["input"]["required"]
    assert list(req) == ["horizontal_angle", "vertical_angle", "zoom"]
    assert req["horizontal_angle"][1].items() >= {"default": 0, "min": 0, "max": 360}.items()
    assert req["vertical_angle"][1].items() >= {"default": 0, "min": -30, "max": 60}.items()
    assert req["zoom"][1].items() >= {"default": 5.0, "min": 0.0, "max": 10.0, "step": 0.1}.items()
    assert list(info["input"]["optional"]) == ["image"]
    assert info["output"] == ["LOAD3D_CAMERA", "STRING"]
    assert info["output_name"] == ["camera_info", "prompt"]


def test_the_templates_node_converts_and_runs(engine):
    # the multi-angle template's node as the canvas saves it: three widgets, then the 3D preview's 'view'
    ui = {"last_node_id": 1, "last_link_id": 0, "links": [], "version": 0.4, "nodes": [
        {"id": 1, "type": "CameraAngle", "inputs": [{"name": "image", "type": "IMAGE", "link": None}],
         "outputs": [{"name": "camera_info", "type": "LOAD3D_CAMERA", "links": None},
                     {"name": "prompt", "type": "STRING", "links": None}],
         "widgets_values": [333, 17, 5, "camera"]}]}
    api = load_workflow_data(ui, default_registry()).api
    assert api["1"]["inputs"] == {"horizontal_angle": 333, "vertical_angle": 17, "zoom": 5}
    g = Graph()
    cam = g.node("CameraAngle", **api["1"]["inputs"])
    g.node("Sink", value=cam.out(1))
    g.node("Sink", value=cam.out(0))
    result = engine.run(g)
    assert result.ok, result.failure
    (info,), (prompt,) = result.values[cam.id]
    assert prompt == "front-left quarter view elevated shot medium shot"
    assert info["zoom"] == pytest.approx(1.4375)
