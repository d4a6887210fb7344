"""ComfyUI's V3 node schema (``comfy_api.latest``): a pack in V3 style (``comfy_entrypoint`` returning a
``ComfyExtension``, ``io.ComfyNode`` classes with ``define_schema`` / ``execute``) loads from a
temporary ``custom_nodes/`` folder and runs through the engine like classic nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nodegraph import Engine
from nodegraph.comfy_compat import CustomNodeSettings, load_custom_nodes
from nodegraph.context import Paths
from nodegraph.errors import ValidationFailed
from nodegraph.events import EventRecorder, ExecutionBlocked
from nodegraph.registry import default_registry

from tests.custom_nodes.packs import write_packs


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("v3")


@pytest.fixture(scope="module")
def registry(root):
    registry = default_registry(packs=False)
    packs = load_custom_nodes(registry, CustomNodeSettings((write_packs(root / "custom_nodes", "ngv3"),)),
                              paths=Paths.under(root), device="cpu")
    [pack] = packs
    assert "comfy_extras.nodes_lt" in pack.error  # the one class that needs ComfyUI's internals
    return registry


@pytest.fixture
def engine(registry, root):
    engine = Engine(registry, paths=Paths.under(root), device="cpu", threads=2)
    yield engine
    engine.close()


def test_a_v3_schema_describes_the_node_as_comfyui_does(registry):
    info = registry.object_info("NgV3Add")["NgV3Add"]
    assert info["python_module"] == "custom_nodes.ngv3"
    assert (info["display_name"], info["category"], info["description"]) == ("Add (V3)", "ngtest/v3",
                                                                              "Adds or multiplies.")
    assert info["input"]["required"]["a"] == ["INT", {"default": 1, "min": 0, "max": 100}]
    assert info["input"]["required"]["mode"] == ["COMBO", {"default": "sum", "multiselect": False,
                                                           "options": ["sum", "product"]}]
    assert info["input"]["hidden"] == {"unique_id": ["UNIQUE_ID"]}
    assert (info["output"], info["output_name"]) == (["INT", "STRING"], ["result", "STRING"])
    assert info["output_tooltips"] == ["the number", ""]
    show = registry.object_info("NgV3Show")["NgV3Show"]
    assert show["output_node"] is True  # and, as ComfyUI finalizes an output node's schema:
    assert show["input"]["hidden"] == {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}


def test_execute_gets_its_inputs_and_hidden_values_and_returns_ui(engine):
    result = engine.run({"7": {"class_type": "NgV3Add", "inputs": {"a": 3, "b": 4, "mode": "product"}},
                         "2": {"class_type": "NgV3Show", "inputs": {"value": ["7", 1]}}})
    assert result.ok, result.failure
    assert result.value("7", 0) == 12
    assert result.outputs["2"] == {"text": [repr("7:12")]}  # cls.hidden.unique_id


def test_lazy_inputs_async_execute_multitype_and_blocking(engine):
    recorder = EventRecorder()
    # the switch's unpicked branch (3) and the blocked branch (6) are separate nodes: a lazy input that
    # already holds a blocker blocks its node, as in ComfyUI, and threads decide whether 3 ran first
    prompt = {"1": {"class_type": "NgV3Switch", "inputs": {"pick_first": False, "first": ["3", 0],
                                                           "second": ["4", 0]}},
              "3": {"class_type": "NgV3Add", "inputs": {"a": 1, "b": 1}},
              "4": {"class_type": "NgV3Twice", "inputs": {"x": 5}},  # an INT widget on an INT,FLOAT input
              "2": {"class_type": "NgV3Show", "inputs": {"value": ["1", 0]}},
              "6": {"class_type": "NgV3Block", "inputs": {}},
              "5": {"class_type": "NgV3Show", "inputs": {"value": ["6", 0]}}}
    result = engine.run(prompt, listeners=[recorder])
    assert result.ok, result.failure
    assert result.outputs["2"] == {"text": ["10.0"]} and "5" not in result.outputs
    [blocked] = recorder.of(ExecutionBlocked)
    assert (blocked.node_id, blocked.message) == ("5", "blocked by a V3 node")
    assert "3" not in result.executed  # the branch not picked never ran


def test_validate_inputs_and_fingerprint_inputs(engine, registry):
    with pytest.raises(ValidationFailed) as refused:
        engine.validate({"1": {"class_type": "NgV3Checked", "inputs": {"value": 7}},
                         "2": {"class_type": "NgV3Show", "inputs": {"value": ["1", 0]}}})
    assert refused.value.errors[0].message.endswith("7 is more than 5")
    calls = registry["NgV3Checked"].comfy_class.CALLS
    before = calls[0]
    prompt = {"1": {"class_type": "NgV3Checked", "inputs": {"value": 2}},
              "2": {"class_type": "NgV3Show", "inputs": {"value": ["1", 0]}}}
    assert engine.run(prompt).ok and engine.run(prompt).ok
    assert calls[0] - before == 1  # the same fingerprint: served from the cache


def test_ui_preview_image_saves_to_the_temp_folder(engine, root):
    result = engine.run({"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4}},
                         "2": {"class_type": "NgV3Preview", "inputs": {"image": ["1", 0]}}},
                        extra_data={"extra_pnginfo": {"workflow": {}}})
    assert result.ok, result.failure
    [image] = result.outputs["2"]["images"]
    assert image["type"] == "temp" and (Path(root) / "temp" / image["filename"]).is_file()
    assert result.outputs["2"]["animated"] == [False]


def test_v3_versions_share_one_surface(registry):
    import comfy_api.latest
    import comfy_api.v0_0_2

    assert comfy_api.v0_0_2.io is comfy_api.latest.io
    assert sys.modules["comfy_api.latest"].io.Int.io_type == "INT"
    assert comfy_api.latest.io.Custom("MY_TYPE").io_type == "MY_TYPE"


def test_newer_comfyui_options_and_types_are_kept(registry):
    from comfy_api.latest import io

    class Newer(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="NgV3Newer", search_aliases=["newer"],
                             inputs=[io.Int.Input("n", default=1, advanced=True), io.BoundingBox.Input("box")],
                             outputs=[io.BoundingBox.Output()])

        @classmethod
        def execute(cls, n, box):
            return io.NodeOutput(box)

    from nodegraph.comfy_compat.classic import build_node_class

    info = registry.__class__([build_node_class("NgV3Newer", Newer, "test")]).object_info()["NgV3Newer"]
    assert info["input"]["required"]["n"] == ["INT", {"default": 1, "advanced": True}]
    assert info["input"]["required"]["box"] == ["BOUNDING_BOX"] and info["output"] == ["BOUNDING_BOX"]


def test_autogrow_parts_are_flat_inputs_and_one_dict_in_execute(engine, registry):
    info = registry.object_info("NgV3Calc")["NgV3Calc"]["input"]
    assert set(info["required"]) == {"values.a", "values.b", "op"} and set(info["optional"]) == {"values.c"}
    assert info["required"]["values.a"] == ["INT,FLOAT"]
    result = engine.run({"1": {"class_type": "NgV3Calc", "inputs": {"values.a": 2, "values.b": 3.5,
                                                                   "values.c": 2, "op": "product"}},
                         "2": {"class_type": "NgV3Show", "inputs": {"value": ["1", 0]}}})
    assert result.ok, result.failure
    assert result.outputs["2"] == {"text": ["14.0"]}
    with pytest.raises(ValidationFailed) as refused:  # the first `min` parts are required
        engine.validate({"1": {"class_type": "NgV3Calc", "inputs": {"values.a": 2, "op": "sum"}},
                         "2": {"class_type": "NgV3Show", "inputs": {"value": ["1", 0]}}})
    assert [(e.kind, e.input_name) for e in refused.value.errors] == [("required_input_missing", "values.b")]


def test_match_type_and_dynamic_combo(engine, registry):
    info = registry.object_info("NgV3Adjust")["NgV3Adjust"]
    assert info["input"]["required"]["value"][0] == "INT,FLOAT" and info["output"] == ["*"]
    assert info["input"]["required"]["how"][1]["options"] == ["scale", "offset"]
    assert info["input"]["optional"]["how.amount"] == ["FLOAT", {"default": 2.0, "min": -10, "max": 10}]
    assert registry["NgV3Adjust"].dynamic_combos == {"how": {"scale": ("how.amount",),
                                                             "offset": ("how.amount", "how.negate")}}

    def adjusted(inputs):
        result = engine.run({"0": {"class_type": "NgV3Add", "inputs": {"a": 4, "b": 1}},
                             "1": {"class_type": "NgV3Adjust", "inputs": {"value": ["0", 0], **inputs}},
                             "2": {"class_type": "NgV3Show", "inputs": {"value": ["1", 0]}}})
        assert result.ok, result.failure
        return result.outputs["2"]["text"][0]

    assert adjusted({"how": "scale"}) == "10.0"  # the chosen option's default amount
    assert adjusted({"how": "offset", "how.amount": 3.0, "how.negate": True}) == "-8.0"
