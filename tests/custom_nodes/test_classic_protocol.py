"""ComfyUI's classic node protocol through nodegraph's engine: small packs written in ComfyUI's style
(tests/custom_nodes/packs.py) are loaded from a temporary ``custom_nodes/`` folder and run; each
protocol feature is checked by what the run produces, and through the same validator, cache, list
mapping, lazy scheduling, expansion and events as our own nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nodegraph import Engine
from nodegraph.comfy_compat import CustomNodeSettings, load_custom_nodes
from nodegraph.context import Paths
from nodegraph.errors import ValidationFailed
from nodegraph.events import ExecutionBlocked, EventRecorder, NodeMessage, NodeProgress
from nodegraph.registry import default_registry

from tests.custom_nodes.packs import write_packs


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("comfy_packs")


@pytest.fixture(scope="module")
def paths(root) -> Paths:
    paths = Paths.under(root)
    (paths.models_dir / "checkpoints").mkdir(parents=True)
    (paths.models_dir / "checkpoints" / "tiny.safetensors").write_bytes(b"not read")
    return paths


@pytest.fixture(scope="module")
def registry(root, paths):
    registry = default_registry(packs=False)
    folder = write_packs(root / "custom_nodes", "ngtest_protocol")
    load_custom_nodes(registry, CustomNodeSettings((folder,)), paths=paths, device="cpu")
    assert registry.load_errors == []
    return registry


@pytest.fixture
def engine(registry, paths):
    engine = Engine(registry, paths=paths, device="cpu", threads=2)
    yield engine
    engine.close()


def pack_state(registry) -> dict:
    """The protocol pack's module-level call counters."""
    return sys.modules[registry["NgAdd"].comfy_class.__module__].CALLS


def run(engine, prompt, **kwargs):
    recorder = EventRecorder()
    result = engine.run(prompt, listeners=[recorder], **kwargs)
    return result, recorder


def shown(result, node_id: str) -> str:
    return result.outputs[node_id]["text"][0]


ADD_SHOW = {"1": {"class_type": "NgAdd", "inputs": {"a": 3, "b": 4}},
            "2": {"class_type": "NgShow", "inputs": {"value": ["1", 1]}}}


def test_pack_classes_describe_themselves_as_comfyui_does(registry):
    info = registry.object_info("NgAdd")["NgAdd"]
    assert info["python_module"] == "custom_nodes.ngtest_protocol"
    assert info["display_name"] == "Add (ngtest)"
    assert info["category"] == "ngtest/math" and info["description"] == "Adds two numbers."
    assert info["input"]["required"]["a"] == ["INT", {"default": 1, "min": 0, "max": 100}]
    assert info["input"]["hidden"] == {"uid": "UNIQUE_ID", "the_prompt": "PROMPT", "info": "EXTRA_PNGINFO",
                                       "dyn": "DYNPROMPT"}
    assert info["output"] == ["INT", "STRING"] and info["output_name"] == ["sum", "seen"]
    assert info["output_tooltips"] == ["a + b", "what the hidden inputs held"]
    show = registry.object_info("NgShow")["NgShow"]
    assert show["output_node"] is True and show["input"]["required"]["value"] == ["*"]
    assert registry.object_info("NgRange")["NgRange"]["output_is_list"] == [True]
    # a pack cannot replace a core node (ComfyUI ignores such entries)
    assert not registry.source_of("ImageInvert").startswith("custom_nodes")


def test_hidden_inputs_progress_and_messages_reach_the_run(engine):
    result, events = run(engine, ADD_SHOW, extra_data={"extra_pnginfo": {"workflow": "w"}})
    assert result.ok, result.failure
    assert shown(result, "2") == repr("1|['1', '2']|{'workflow': 'w'}|NgAdd")
    assert [(e.value, e.max) for e in events.of(NodeProgress)] == [(1, 2), (2, 2)]
    [message] = events.of(NodeMessage)
    assert (message.node_id, message.event, message.data) == ("1", "ngtest.added", {"uid": "1", "sum": 7})


def test_output_lists_are_mapped_over_and_input_is_list_takes_them_whole(engine, registry):
    before = pack_state(registry)["mapped"]
    prompt = {"1": {"class_type": "NgRange", "inputs": {"count": 4}},
              "2": {"class_type": "NgDouble", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "NgTotal", "inputs": {"values": ["2", 0], "scale": 10}},
              "4": {"class_type": "NgShow", "inputs": {"value": ["3", 0]}}}
    result, _ = run(engine, prompt)
    assert result.ok, result.failure
    assert shown(result, "4") == "120"  # (0+2+4+6) * 10
    assert pack_state(registry)["mapped"] - before == 4  # Double ran once per item
    assert result.values["2"][0] == [0, 2, 4, 6]


def test_is_changed_decides_when_the_node_runs_again(engine, registry, tmp_path):
    source = tmp_path / "value.txt"
    source.write_text("first")
    prompt = {"1": {"class_type": "NgChanged", "inputs": {"path": str(source)}},
              "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}}
    calls = pack_state(registry)
    before = calls["changed"]
    assert shown(run(engine, prompt)[0], "2") == "'first'"
    again, _ = run(engine, prompt)
    assert "1" not in again.executed and calls["changed"] - before == 1
    source.write_text("second")
    changed, _ = run(engine, prompt)
    assert shown(changed, "2") == "'second'" and calls["changed"] - before == 2


def test_validate_inputs_gets_linked_types_and_exempts_its_inputs_from_ranges(engine):
    def prompt(value, source):
        return {"1": {"class_type": "NgAdd", "inputs": {"a": 1, "b": 2}},
                "s": {"class_type": "NgShowResult", "inputs": {"value": 5}},
                "2": {"class_type": "NgValidated", "inputs": {"value": value, "other": source}},
                "3": {"class_type": "NgShow", "inputs": {"value": ["2", 0]}}}

    with pytest.raises(ValidationFailed) as refused:
        engine.validate(prompt(7, ["1", 0]))
    [error] = refused.value.errors
    assert error.kind == "custom_validation_failed" and "seven is not allowed" in error.message
    with pytest.raises(ValidationFailed) as any_type:  # the check saw the linked output's type, "*"
        engine.validate(prompt(1, ["s", 0]))
    assert "other must be a number, got *" in any_type.value.errors[0].message
    # 11 is above the declared max, but VALIDATE_INPUTS takes 'value': ComfyUI skips its range check
    result, _ = run(engine, prompt(11, ["1", 0]))
    assert result.ok and shown(result, "3") == "14"


def test_lazy_inputs_run_only_when_check_lazy_status_asks(engine):
    prompt = {"1": {"class_type": "NgLazySwitch", "inputs": {"pick_first": False, "first": ["2", 0],
                                                             "second": ["3", 0]}},
              "2": {"class_type": "NgRaise", "inputs": {}},
              "3": {"class_type": "NgAsync", "inputs": {"value": 5}},
              "4": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}},
              "5": {"class_type": "NgLazyNoCheck", "inputs": {"value": ["3", 0]}},
              "6": {"class_type": "NgShow", "inputs": {"value": ["5", 0]}}}
    result, _ = run(engine, prompt)
    assert result.ok, result.failure
    assert shown(result, "4") == "105"  # the async function was awaited
    assert "2" not in result.executed  # the branch not picked never ran
    assert shown(result, "6") == repr("None")  # no check_lazy_status: ComfyUI leaves a lazy input unevaluated


def test_an_execution_blocker_stops_its_consumers_and_reports_its_message_once(engine):
    prompt = {"1": {"class_type": "NgBlock", "inputs": {"message": "stop here"}},
              "2": {"class_type": "NgDouble", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "NgShow", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "NgBlock", "inputs": {"value": 4, "block": False}},
              "5": {"class_type": "NgShow", "inputs": {"value": ["4", 0]}}}
    result, events = run(engine, prompt)
    assert result.ok, result.failure
    assert "3" not in result.outputs and shown(result, "5") == "4"
    [blocked] = events.of(ExecutionBlocked)
    assert (blocked.node_id, blocked.message) == ("2", "stop here")
    silent = dict(prompt, **{"1": {"class_type": "NgBlock", "inputs": {"value": 1}}})
    quiet_result, quiet_events = run(engine, silent)
    assert quiet_result.ok and "3" not in quiet_result.outputs and not quiet_events.of(ExecutionBlocked)


def test_graph_expansion_built_with_graph_builder_runs(engine):
    prompt = {"1": {"class_type": "NgExpand", "inputs": {"start": 10, "steps": 3}},
              "2": {"class_type": "NgShowResult", "inputs": {"value": ["1", 0]}}}
    result, _ = run(engine, prompt)
    assert result.ok, result.failure
    assert shown(result, "2") == "13"
    assert sum(1 for nid in result.executed if nid.startswith("1.")) == 3


def test_a_node_that_raises_fails_with_its_error_and_the_engine_goes_on(engine):
    failed, _ = run(engine, {"1": {"class_type": "NgRaise", "inputs": {"value": 3}},
                             "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}})
    assert failed.status == "error"
    assert (failed.failure.node_id, failed.failure.exception_type) == ("1", "ValueError")
    assert failed.failure.exception_message == "the pack refuses 3"
    assert run(engine, ADD_SHOW)[0].ok


def test_calling_an_unsupported_comfy_internal_names_it(engine):
    result, _ = run(engine, {"1": {"class_type": "NgUnsupported", "inputs": {}},
                             "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}})
    assert result.status == "error"
    assert result.failure.exception_type.endswith("NotSupportedByNodegraph")
    assert "not supported by nodegraph: comfy.sd.load_checkpoint_guess_config" in result.failure.exception_message


def test_packs_call_and_subclass_core_nodes(engine, paths):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "color": 0x0000FF}},
              "2": {"class_type": "NgInvertTwice", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "NgShowResult", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 8, "height": 8}},
              "5": {"class_type": "NgMaskPreview", "inputs": {"mask": ["4", 0]}}}
    result, _ = run(engine, prompt)
    assert result.ok, result.failure
    image = result.value("2")
    assert image.shape == (1, 2, 4, 3)  # resized by comfy.utils.common_upscale
    assert torch.allclose(image[0, 0, 0], torch.tensor([1.0, 1.0, 0.0]))  # ImageInvert of blue
    [saved] = result.outputs["5"]["images"]
    assert saved["type"] == "temp" and (paths.temp_dir / saved["filename"]).is_file()


def test_folder_paths_and_device_helpers_see_the_engines_folders(engine, paths):
    result, _ = run(engine, {"1": {"class_type": "NgFolders", "inputs": {"ckpt": "tiny.safetensors",
                                                                         "sampler": "euler"}},
                             "2": {"class_type": "NgShowResult", "inputs": {"value": ["1", 0]}}})
    assert result.ok, result.failure
    assert result.value("1", 0) == str((paths.models_dir / "checkpoints" / "tiny.safetensors").resolve())
    assert result.value("1", 1) == str(paths.input_dir.resolve())
    assert result.value("1", 2) == "cpu"
    with pytest.raises(ValidationFailed) as refused:  # the combo lists the folder's files
        engine.validate({"1": {"class_type": "NgFolders", "inputs": {"ckpt": "missing.ckpt", "sampler": "euler"}},
                         "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}})
    assert refused.value.errors[0].kind == "value_not_in_list"


def test_one_pack_object_per_node_id_is_kept_between_prompts(engine, registry):
    calls = pack_state(registry)
    before = calls["objects"]
    for b in (10, 11, 12):
        prompt = {"9": {"class_type": "NgAdd", "inputs": {"a": 1, "b": b}},
                  "2": {"class_type": "NgShow", "inputs": {"value": ["9", 0]}}}
        assert run(engine, prompt)[0].ok
    assert calls["objects"] - before == 1


def test_constants_are_not_coerced_from_strings(engine):
    with pytest.raises(ValidationFailed) as refused:
        engine.validate({"1": {"class_type": "NgAdd", "inputs": {"a": "5", "b": 4}},
                         "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}})
    assert refused.value.errors[0].kind == "invalid_value"


def test_inputs_beyond_the_declared_ones_as_comfyui_passes_them(engine):
    prompt = {"1": {"class_type": "NgAdd", "inputs": {"a": 3, "b": 4}},
              "2": {"class_type": "NgJoinAll", "inputs": {"sep": "+", "x": 1, "y": ["1", 0]}},
              "3": {"class_type": "NgShow", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "NgSumLinks", "inputs": {"value_1": ["1", 0], "value_2": ["1", 0]}},
              "5": {"class_type": "NgShow", "inputs": {"value": ["4", 0]}}}
    result, _ = run(engine, prompt)
    assert result.ok, result.failure
    assert shown(result, "3") == repr("x=1+y=7")  # the section says it contains every name
    assert shown(result, "5") == "14"  # links of undeclared names reach a **kwargs function
    stray = dict(prompt, **{"4": {"class_type": "NgSumLinks", "inputs": {"value_1": ["1", 0], "value_3": 5}}})
    with pytest.raises(ValidationFailed) as refused:  # an undeclared constant: ComfyUI drops it silently
        engine.validate(stray)
    assert [(e.kind, e.input_name) for e in refused.value.errors] == [("unknown_input", "value_3")]


def test_newer_hidden_kinds(engine):
    result, _ = run(engine, {"1": {"class_type": "NgIds", "inputs": {}},
                             "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}}, prompt_id="p-42")
    assert result.ok, result.failure
    assert shown(result, "2") == repr("p-42|its default")
