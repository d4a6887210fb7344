"""An input name the node's class does not declare is a validation error (``unknown_input``) naming the
node, the input and the closest real input — in the engine, the CLI's ``--set`` and ``POST /prompt``.
Declared hidden inputs, a class's ``extra_inputs`` and the canvas-only companions of declared widgets
(``upload``, ``control_after_generate``) stay valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodegraph import ValidationFailed
from nodegraph.cli import main
from nodegraph.node import INT, STRING, Input, Node, Output
from nodegraph.registry import default_registry
from nodegraph.validation import validate

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def text_prompt(**inputs) -> dict:
    return {"1": {"class_type": "PrimitiveString", "inputs": inputs},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def errors_of(prompt: dict, registry) -> list:
    with pytest.raises(ValidationFailed) as info:
        validate(prompt, registry)
    return info.value.errors


def test_unknown_input_names_node_input_and_closest_name(registry):
    errors = errors_of(text_prompt(value="hi", valeu="typo"), registry)
    assert [(e.kind, e.node_id, e.input_name) for e in errors] == [("unknown_input", "1", "valeu")]
    assert errors[0].message == "node 1 (PrimitiveString) has no input 'valeu'; did you mean 'value'?"


def test_wrong_name_does_not_run_silently_with_defaults(registry, engine):
    """``inputs.text`` on a node whose input is ``value``: both the missing input and the unknown one."""
    with pytest.raises(ValidationFailed) as info:
        engine.run(text_prompt(text="hello"))
    kinds = {(e.kind, e.input_name) for e in info.value.errors}
    assert kinds == {("required_input_missing", "value"), ("unknown_input", "text")}
    unknown = next(e for e in info.value.errors if e.kind == "unknown_input")
    assert "'text'" in unknown.message and "'value'" in unknown.message


def test_far_name_lists_the_inputs(registry):
    errors = errors_of({"1": {"class_type": "EmptyImage",
                              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0, "zzz": 1}},
                        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}, registry)
    assert errors[0].kind == "unknown_input"
    assert "its inputs are 'width', 'height', 'batch_size', 'color'" in errors[0].message


def test_unknown_linked_input_is_reported_too(registry):
    prompt = text_prompt(value="x")
    prompt["2"]["inputs"]["sources"] = ["1", 0]
    errors = errors_of(prompt, registry)
    assert [(e.kind, e.input_name) for e in errors] == [("unknown_input", "sources")]
    assert "did you mean 'source'?" in errors[0].message


class _Extras(Node):
    """A node that declares a hidden input and a growable group of canvas-only names."""

    hidden = ("unique_id",)
    extra_inputs = (r"slot\d+",)
    count = Input(INT, default=1, control_after_generate=True)
    outputs = (Output(STRING),)
    output_node = True

    def execute(self, count: int, unique_id=None) -> tuple:
        return (str(count),)


def test_declared_hidden_extra_patterns_and_widget_companions_are_accepted():
    registry = default_registry(packs=False)
    registry.register(_Extras)
    good = {"1": {"class_type": "_Extras", "inputs": {"count": 3, "unique_id": "1", "slot1": "a",
                                                      "slot12": "b", "control_after_generate": "fixed"}}}
    assert validate(good, registry).nodes["1"].constants == {"count": 3}
    for name in ("slot", "slotx", "prompt", "upload"):
        bad = {"1": {"class_type": "_Extras", "inputs": {"count": 3, name: 1}}}
        assert [e.kind for e in errors_of(bad, registry)] == ["unknown_input"], name


def test_built_in_dynamic_names_are_accepted():
    registry = default_registry(packs=False)
    combo = registry.get("CustomCombo")
    assert combo.accepts_input("option1") and combo.accepts_input("option17")
    assert not combo.accepts_input("options")
    load = registry.get("LoadImage")
    assert load.accepts_input("upload") and not load.accepts_input("uplaod")
    prompt = {"1": {"class_type": "CustomCombo", "inputs": {"choice": "b", "option1": "a", "option2": "b"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    validate(prompt, registry)
    assert registry.get("CreateList").accepts_input("inputs.input9")
    assert registry.get("ComfyMathExpression").accepts_input("values.z")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_shipped_workflows_have_no_unknown_inputs(path):
    from nodegraph.workflow.loader import load_workflow_file

    registry = default_registry()
    loaded = load_workflow_file(path, registry)
    try:
        validate(loaded.api, registry)
    except ValidationFailed as exc:
        assert [e for e in exc.errors if e.kind == "unknown_input"] == []


def test_cli_set_with_a_wrong_input_name_fails(tmp_path, capsys):
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(text_prompt(value="x")))
    assert main(["validate", str(workflow), "--set", "1.value=y"]) == 0
    capsys.readouterr()
    code = main(["validate", str(workflow), "--set", "1.vlaue=y"])
    _, err = capsys.readouterr()
    assert code != 0
    assert "unknown_input" in err and "no input 'vlaue'; did you mean 'value'?" in err


def test_cli_set_loop_round_suggests_rounds(capsys):
    code = main(["validate", str(ROOT / "workflows" / "design_loop.json"), "--set", "loop.round=5"])
    _, err = capsys.readouterr()
    assert code != 0
    assert "node loop (Repeat) has no input 'round'; did you mean 'rounds'?" in err


def test_post_prompt_with_unknown_input_is_rejected(server):
    client = server.client()
    reply = client.post_json("/prompt", {"prompt": text_prompt(value="x", text="hello")})
    assert reply.status == 400
    payload = reply.json()
    assert payload["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = payload["node_errors"]["1"]["errors"]
    assert error["type"] == "unknown_input"
    assert error["extra_info"]["kind"] == "unknown_input" and error["extra_info"]["input_name"] == "text"
    assert "no input 'text'; its inputs are 'value'" in error["details"]
    assert client.post_json("/prompt", {"prompt": text_prompt(value="x")}).status == 200
