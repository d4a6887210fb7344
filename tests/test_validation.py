"""Validation reports every error at once, each with a kind, the node, the input and a sentence."""

from __future__ import annotations

import math

import pytest

from nodegraph import ValidationFailed
from nodegraph.validation import validate


def errors_of(api, registry, **kw):
    with pytest.raises(ValidationFailed) as info:
        validate(api, registry, **kw)
    return info.value.errors


def test_all_errors_reported_at_once_with_kinds(registry):
    api = {
        "1": {"class_type": "Number", "inputs": {"value": 5000}},                 # above max
        "2": {"class_type": "Number", "inputs": {"value": -5000}},                # below min
        "3": {"class_type": "Add", "inputs": {"b": 1}},                           # a missing
        "4": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 1.0, "mode": "ceil"}},  # combo
        "5": {"class_type": "NoSuchNode", "inputs": {}},                          # unknown class
        "6": {"class_type": "Add", "inputs": {"a": ["99", 0], "b": 1}},           # missing source
        "7": {"class_type": "Add", "inputs": {"a": ["1", 3], "b": 1}},            # bad output index
        "8": {"class_type": "Add", "inputs": {"a": ["9", 0], "b": 1}},            # STRING into INT
        "9": {"class_type": "Text", "inputs": {"text": "hi"}},
        "10": {"class_type": "Add", "inputs": {"a": [1, 0], "b": 1}},             # numeric id link
        "11": {"class_type": "Text", "inputs": {"text": 42}},                     # wrong type
        "12": {"class_type": "NeedsPositive", "inputs": {"value": -3}},           # custom check
        "13": {"class_type": "Sink", "inputs": {"value": ["14", 0]}},
        "14": {"class_type": "Scale", "inputs": {"x": ["2", 0], "factor": float("nan"), "mode": "floor"}},
    }
    sinks = {f"s{n}": {"class_type": "Sink", "inputs": {"value": [str(n), 0]}}
             for n in (1, 2, 3, 4, 6, 7, 8, 10, 11, 12)}
    api.update(sinks)
    errors = errors_of(api, registry)
    by = {(e.node_id, e.kind) for e in errors}
    assert ("1", "value_above_max") in by
    assert ("2", "value_below_min") in by
    assert ("3", "required_input_missing") in by
    assert ("4", "value_not_in_list") in by
    assert ("5", "unknown_node_type") in by
    assert ("6", "bad_linked_input") in by
    assert ("7", "bad_linked_input") in by
    assert ("8", "return_type_mismatch") in by
    assert ("10", "bad_linked_input") in by
    assert ("11", "invalid_value") in by
    assert ("12", "custom_validation_failed") in by
    assert ("14", "invalid_value") in by
    for e in errors:
        assert e.message and (e.node_id is None or e.node_id in e.message)
    missing = next(e for e in errors if e.kind == "required_input_missing")
    assert missing.input_name == "a" and "'a'" in missing.message
    numeric = next(e for e in errors if e.node_id == "10")
    assert '["1", 0]' in numeric.message


def test_cycle_is_reported_with_its_nodes(registry):
    api = {"1": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
           "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
           "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}}}
    errors = errors_of(api, registry)
    assert [e.kind for e in errors] == ["cycle"]
    assert set(errors[0].extra["nodes"]) == {"1", "2"}


def test_no_outputs(registry):
    errors = errors_of({"1": {"class_type": "Number", "inputs": {"value": 1}}}, registry)
    assert [e.kind for e in errors] == ["no_outputs"]


def test_malformed_nodes_and_constants_where_links_belong(registry):
    api = {"1": "not a node",
           "2": {"inputs": {}},
           "3": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
           "4": {"class_type": "BlobSize", "inputs": {"blob": "a string where a link belongs"}},
           "5": {"class_type": "Sink", "inputs": {"value": ["6", 0]}},
           "6": {"class_type": "Add", "inputs": {"a": "text for an INT socket", "b": 1}}}
    errors = errors_of(api, registry)
    kinds = sorted((e.node_id, e.kind) for e in errors)
    assert kinds == [("1", "invalid_node"), ("2", "invalid_node"), ("4", "link_required"),
                     ("6", "invalid_value")]


def test_wrapped_list_constants_are_constants_and_bare_lists_are_not(registry):
    """``{"__value__": [...]}`` is how the frontend writes a list constant (CreateBoundingBoxes' editor state):
    it validates and reaches the node as a list; a bare list that is not a link stays an error."""
    plan = validate({"1": {"class_type": "Sink", "inputs": {"value": {"__value__": [{"x": 1}, {"x": 2}]}}}}, registry)
    value = plan.nodes["1"].constants["value"]
    assert isinstance(value, list) and value == [{"x": 1}, {"x": 2}]
    errors = errors_of({"1": {"class_type": "Sink", "inputs": {"value": [1, 2, 3]}}}, registry)
    assert [e.kind for e in errors] == ["bad_linked_input"]


@pytest.mark.parametrize("value, ok", [(3, True), (3.0, True), (3.5, False), ("3", False), (True, False),
                                       (float("inf"), False), (2**80, False), (None, False)])
def test_int_inputs_are_not_silently_coerced(registry, value, ok):
    api = {"1": {"class_type": "Number", "inputs": {"value": value}},
           "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}
    if ok:
        plan = validate(api, registry)
        assert plan.nodes["1"].constants["value"] == 3 and type(plan.nodes["1"].constants["value"]) is int
    else:
        assert errors_of(api, registry)[0].input_name == "value"


def test_int_to_float_coercion_like_comfyui(registry):
    api = {"1": {"class_type": "Number", "inputs": {"value": 2}},
           "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 2, "mode": "floor"}},
           "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}}}
    plan = validate(api, registry)
    assert type(plan.nodes["2"].constants["factor"]) is float


def test_boolean_strings_are_refused(registry):
    api = {"1": {"class_type": "Text", "inputs": {"text": "x", "flag": "false"}},
           "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}
    errors = errors_of(api, registry)
    assert errors[0].kind == "invalid_value" and errors[0].input_name == "flag"


def test_defaults_fill_missing_widget_inputs(registry):
    plan = validate({"1": {"class_type": "Number", "inputs": {}},
                     "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}, registry)
    assert plan.nodes["1"].constants == {"value": 0}


def test_unused_nodes_are_not_planned(registry):
    plan = validate({"1": {"class_type": "Number", "inputs": {"value": 1}},
                     "2": {"class_type": "Number", "inputs": {"value": 9999}},
                     "3": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}, registry)
    assert set(plan.nodes) == {"1", "3"} and plan.outputs == ["3"]
