"""ComfyUI's Start Loop / End Loop (nodes/flow/comfy_loops.py) on the engine's run-time expansion: API
prompts written as ComfyUI's frontend sends them (``mode.num_iterations``, ``terminations.termination0``)
run with the values ComfyUI's loop semantics give (written out), in simple, For and List mode, with a
carried value, accumulation, terminations, nesting and zero iterations; the iteration cache follows
``cache_iterations``; a loop output used outside the loop and an End Loop without a Start are errors."""

from __future__ import annotations

import pytest

from nodegraph.node import Node
from nodegraph.registry import default_registry
from nodegraph.workflow.ui_format import ui_to_api
from nodegraph_nodes.flow.comfy_loops import LoopStructureError, loop_graph, pair_loops


def start(mode="simple", **inputs):
    return {"class_type": "StartLoop", "inputs": {"mode": mode, "cache_iterations": False, **inputs}}


def end(output=None, carry=None, accumulate=False, **inputs):
    node = {"class_type": "EndLoop", "inputs": {"accumulate": accumulate, **inputs}}
    if output is not None:
        node["inputs"]["output_value"] = output
    if carry is not None:
        node["inputs"]["next_iteration_value"] = carry
    return node


def add(a, b=0):
    return {"class_type": "Add", "inputs": {"a": a, "b": b}}


def sink(value):
    return {"class_type": "Sink", "inputs": {"value": value}}


def test_object_info_names_and_types():
    info = default_registry(packs=False).object_info()
    s, e = info["StartLoop"], info["EndLoop"]
    assert s["display_name"] == "Start Loop" and s["category"] == "utilities/looping"
    assert s["input_order"]["required"] == ["mode", "cache_iterations"]
    assert s["input"]["required"]["mode"][0] == ["simple", "For", "List"]
    assert s["input"]["optional"]["mode.num_iterations"] == ["INT", {
        "default": 4, "min": 0, "tooltip": "Number of times to execute the loop body."}]
    assert s["input"]["optional"]["mode.max_iteration"][1]["max"] == 0xFFFFFFFFFFFFFFFF
    assert s["output_name"] == ["iteration_index", "is_first", "is_last", "list_item", "current_iteration_value"]
    assert s["output"] == ["INT", "BOOLEAN", "BOOLEAN", "*", "*"]
    assert e["display_name"] == "End Loop" and e["output_is_list"] == [True] and e["output_name"] == ["outputs"]
    assert e["input"]["required"]["accumulate"][1]["default"] is False
    assert "terminations.termination49" in e["input"]["optional"]


def test_simple_loop_accumulates_every_iteration(engine):
    prompt = {
        "s": start(**{"mode.num_iterations": 3}),
        "idx": add(["s", 0], 100),                   # iteration index + 100
        "e": end(["idx", 0], accumulate=True),
        "show": sink(["e", 0]),
    }
    result = engine.run(prompt).raise_for_status()
    assert result.values["e"][0] == [100, 101, 102]
    assert result.outputs["show"] == {"value": [100, 101, 102]}      # Sink ran once per item


def test_carried_value_reaches_the_last_iteration(engine):
    prompt = {
        "init": {"class_type": "Number", "inputs": {"value": 10}},
        "s": start(**{"mode.num_iterations": 3}, initial_iteration_value=["init", 0]),
        "step": add(["s", 4], 5),
        "e": end(["step", 0], ["step", 0]),
        "show": sink(["e", 0]),
    }
    result = engine.run(prompt).raise_for_status()
    assert result.values["e"][0] == [25]                 # 10 + 5 · 3, the last iteration only
    assert result.outputs["show"] == {"value": [25]}


def test_for_mode(engine):
    prompt = {
        "s": start("For", **{"mode.start_iteration_index": 2, "mode.max_iteration": 9, "mode.step": 3}),
        "e": end(["s", 0], accumulate=True),
        "show": sink(["e", 0]),
    }
    assert engine.run(prompt).raise_for_status().values["e"][0] == [2, 5, 8]


def test_list_mode_with_first_and_last(engine):
    prompt = {
        "items": {"class_type": "Range", "inputs": {"count": 3}},
        "s": start("List", **{"mode.list": ["items", 0]}),
        "plus": add(["s", 3], 10),                   # list item + 10
        "e": end(["plus", 0], accumulate=True),
        "show": sink(["e", 0]),
    }
    result = engine.run(prompt).raise_for_status()
    assert result.values["e"][0] == [10, 11, 12]
    prompt2 = {
        "items": {"class_type": "Range", "inputs": {"count": 3}},
        "s": start("List", **{"mode.list": ["items", 0]}),
        "e": end(["s", 2], accumulate=True),
        "show": sink(["e", 0]),
    }
    assert engine.run(prompt2).raise_for_status().values["e"][0] == [False, False, True]


def test_zero_iterations_output_nothing(engine, log):
    prompt = {
        "s": start(**{"mode.num_iterations": 0}),
        "body": add(["s", 0], 1),
        "e": end(["body", 0], accumulate=True),
        "show": sink(["e", 0]),
    }
    result = engine.run(prompt).raise_for_status()
    assert result.values["e"][0] == [] and "show" not in result.outputs
    assert not [c for c in log.calls if c.endswith("body")]


def test_terminations_run_every_iteration(engine, log):
    prompt = {
        "s": start(**{"mode.num_iterations": 3}),
        "side": add(["s", 0], 7),
        "e": end(**{"terminations.termination0": ["side", 0]}),
        "show": sink(["e", 0]),
    }
    result = engine.run(prompt).raise_for_status()
    assert result.values["e"][0] == []
    assert sorted(c.split(".")[-1] for c in log.calls if c.endswith("~side")) == ["b0~side", "b1~side", "b2~side"]


def test_nested_loops(engine):
    prompt = {
        "three": {"class_type": "Number", "inputs": {"value": 3}},   # a linked count, read at run time
        "outer": start(**{"mode.num_iterations": 2}),
        "inner": start(**{"mode.num_iterations": ["three", 0]}, parent_iteration=["outer", 0]),
        "sum": add(["inner", 0], ["outer", 0]),        # inner index + outer index
        "inner_end": end(["sum", 0], accumulate=True),
        "total": {"class_type": "Total", "inputs": {"values": ["inner_end", 0]}},
        "outer_end": end(["total", 0], accumulate=True),
        "show": sink(["outer_end", 0]),
    }
    result = engine.run(prompt).raise_for_status()
    assert result.values["outer_end"][0] == [3, 6]      # (0+1+2), (1+2+3)
    prompt["outer_end"] = end(["inner_end", 0], accumulate=True)
    del prompt["total"]
    assert engine.run(prompt).raise_for_status().values["outer_end"][0] == [0, 1, 2, 1, 2, 3]


def test_iteration_cache_follows_cache_iterations(engine, log):
    def prompt(cache: bool):
        return {
            "s": {**start(**{"mode.num_iterations": 2}), "inputs": {
                "mode": "simple", "mode.num_iterations": 2, "cache_iterations": cache}},
            "body": add(["s", 0], 1),
            "e": end(["body", 0], accumulate=True),
            "show": sink(["e", 0]),
        }

    def body_calls() -> int:
        return len([c for c in log.calls if c.endswith("~body")])

    for cache, reruns in ((False, 2), (True, 0)):
        engine.cache.clear()
        engine.run(prompt(cache)).raise_for_status()
        before = body_calls()
        assert engine.run(prompt(cache)).raise_for_status().values["e"][0] == [1, 2]
        assert body_calls() - before == reruns, cache


def test_loop_structure_errors(engine):
    prompt = {
        "s": start(**{"mode.num_iterations": 2}),
        "body": add(["s", 0], 1),
        "e": end(["body", 0]),
        "mix": add(["body", 0], ["e", 0]),           # inside the loop, yet waits for its result
        "show": sink(["mix", 0]),
    }
    failure = engine.run(prompt).failure
    assert failure is not None and failure.node_id == "e"
    assert "node mix follows Start Loop s and also uses e" in failure.exception_message
    prompt = {
        "s": start(**{"mode.num_iterations": 2}),
        "body": add(["s", 0], 1),
        "e": end(["body", 0], accumulate=["flag", 0]),
        "flag": {"class_type": "Text", "inputs": {"text": "x"}},
        "show": sink(["e", 0]),
    }
    prompt["e"]["inputs"]["accumulate"] = ["s", 1]
    failure = engine.run(prompt).failure
    assert failure is not None and "accumulate is driven by node s" in failure.exception_message


def test_an_output_node_in_the_body_runs_every_iteration(engine, log):
    prompt = {
        "s": start(**{"mode.num_iterations": 3}),
        "body": add(["s", 0], 1),
        "peek": sink(["body", 0]),                   # inside the loop, not connected to End Loop
        "e": end(["body", 0], accumulate=True),
        "show": sink(["e", 0]),
    }
    result = engine.run(prompt).raise_for_status()
    assert result.values["e"][0] == [1, 2, 3]
    assert sorted(c.split(".")[-1] for c in log.calls if c.endswith("~peek")) == ["b0~peek", "b1~peek", "b2~peek"]
    assert "peek" not in log.calls                   # the body's own node is blocked, as ComfyUI inhibits it


def test_pairing_rules():
    prompt = {
        "a": start(), "b": start(),
        "x": add(["a", 0], ["b", 0]),
        "e": end(["x", 0]),
    }
    with pytest.raises(LoopStructureError, match="several unrelated Start Loops"):
        pair_loops(prompt)
    lonely = {"n": {"class_type": "Number", "inputs": {"value": 1}}, "e": end(["n", 0])}
    with pytest.raises(LoopStructureError, match="no Start Loop"):
        pair_loops(lonely)
    nested = {"o": start(), "i": start(parent_iteration=["o", 0]), "x": add(["i", 0], ["o", 0]), "ie": end(["x", 0]),
              "oe": end(["ie", 0])}
    assert pair_loops(nested) == {"ie": "i", "oe": "o"}
    graph = loop_graph(nested, "oe")
    assert sorted(graph.body) == ["i", "ie", "x"] and sorted(graph.inner) == ["ie"]
    assert sorted(graph.inner["ie"].body) == ["x"]


@pytest.mark.skipif(not hasattr(Node, "dynamic_combos"), reason="the UI conversion of ComfyUI's DynamicCombo "
                    "layout (Node.dynamic_combos) is not in this tree yet")
def test_canvas_workflow_with_a_for_loop(engine, registry):
    """ComfyUI's canvas stores Start Loop's widgets as the mode, the mode's own widgets, then
    cache_iterations (a template's ['For', 0, 12, 1, False])."""
    def out(name, type_, links):
        return {"name": name, "type": type_, "links": links}

    ui = {"last_node_id": 3, "last_link_id": 2, "version": 0.4, "groups": [], "config": {}, "extra": {},
          "nodes": [
              {"id": 1, "type": "StartLoop", "pos": [0, 0], "size": [300, 200], "flags": {}, "order": 0, "mode": 0,
               "inputs": [], "outputs": [out("iteration_index", "INT", [1]), out("is_first", "BOOLEAN", []),
                                         out("is_last", "BOOLEAN", []), out("list_item", "*", []),
                                         out("current_iteration_value", "*", [])],
               "properties": {}, "widgets_values": ["For", 0, 12, 3, False]},
              {"id": 2, "type": "EndLoop", "pos": [400, 0], "size": [300, 100], "flags": {}, "order": 1, "mode": 0,
               "inputs": [{"name": "output_value", "type": "*", "link": 1}],
               "outputs": [out("outputs", "*", [2])], "properties": {}, "widgets_values": [True]},
              {"id": 3, "type": "Sink", "pos": [800, 0], "size": [200, 100], "flags": {}, "order": 2, "mode": 0,
               "inputs": [{"name": "value", "type": "*", "link": 2}], "outputs": [], "properties": {},
               "widgets_values": []}],
          "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "*"]]}
    prompt = ui_to_api(ui, registry)
    assert prompt["1"]["inputs"]["mode"] == "For" and prompt["1"]["inputs"]["mode.max_iteration"] == 12
    assert prompt["1"]["inputs"]["mode.step"] == 3 and prompt["1"]["inputs"]["cache_iterations"] is False
    assert engine.run(prompt).raise_for_status().values["2"][0] == [0, 3, 6, 9]
