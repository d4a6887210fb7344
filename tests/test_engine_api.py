"""The engine API the server uses: ``Engine.validate(partial=...)`` (the plan and the left-out outputs'
errors in one walk), ``Engine.free`` (``POST /free``), ``Engine.device_stats`` (``GET /system_stats``),
and ``threads`` (``workers=`` kept as a deprecated alias)."""

from __future__ import annotations

import warnings

import pytest
import torch

from nodegraph import Engine, NodeError, Paths, ValidationFailed
from nodegraph import policies
from nodegraph.device_stats import SystemStats

#: two outputs: "3" (valid) and "5", whose branch holds an out-of-range value
TWO_BRANCHES = {
    "1": {"class_type": "Number", "inputs": {"value": 2}},
    "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3}},
    "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
    "4": {"class_type": "Number", "inputs": {"value": 5000}},
    "5": {"class_type": "Sink", "inputs": {"value": ["4", 0]}},
}


def test_partial_validation_keeps_the_valid_outputs_and_reports_the_others(engine):
    plan = engine.validate(TWO_BRANCHES, partial=True)
    assert plan.outputs == ["3"]
    assert set(plan.nodes) == set(plan.order) == {"1", "2", "3"}
    assert [(e.node_id, e.kind, e.input_name) for e in plan.node_errors] == [("4", "value_above_max", "value")]
    assert engine.execute(plan).value("2") == 5
    with pytest.raises(ValidationFailed) as failed:  # without partial: every error, nothing runs
        engine.validate(TWO_BRANCHES)
    assert [e.node_id for e in failed.value.errors] == ["4"]
    assert engine.validate({k: v for k, v in TWO_BRANCHES.items() if k in "123"}, partial=True).node_errors == []


def test_partial_validation_still_fails_when_no_output_is_left_or_the_prompt_is_broken(engine):
    broken = {**TWO_BRANCHES, "1": {"class_type": "Number", "inputs": {"value": -5000}}}
    with pytest.raises(ValidationFailed) as failed:
        engine.validate(broken, partial=True)
    assert sorted(e.node_id for e in failed.value.errors) == ["1", "4"]
    unknown = {**TWO_BRANCHES, "6": {"class_type": "Nope", "inputs": {}}}
    with pytest.raises(ValidationFailed) as failed:
        engine.validate(unknown, partial=True)
    assert {e.kind for e in failed.value.errors} == {"unknown_node_type", "value_above_max"}
    with pytest.raises(ValidationFailed):  # the requested output is the broken one
        engine.validate(TWO_BRANCHES, ["5"], partial=True)
    assert engine.validate(TWO_BRANCHES, ["3"], partial=True).outputs == ["3"]


def test_partial_validation_leaves_out_outputs_a_policy_refuses(engine, monkeypatch):
    def no_sink_of_node_2(plan, registry):
        return [NodeError("test_policy", f"node {nid} shows node 2", nid, "Sink") for nid in plan.outputs
                if any(link.node_id == "2" for link in plan.nodes[nid].links.values())]

    monkeypatch.setitem(policies._POLICIES, "no_sink_of_node_2", no_sink_of_node_2)
    prompt = {**TWO_BRANCHES, "4": {"class_type": "Number", "inputs": {"value": 7}}}
    plan = engine.validate(prompt, extra_data={"no_sink_of_node_2": True}, partial=True)
    assert plan.outputs == ["5"] and [e.kind for e in plan.node_errors] == ["test_policy"]
    with pytest.raises(ValidationFailed):
        engine.validate(prompt, extra_data={"no_sink_of_node_2": True})


def test_free_drops_cached_outputs_and_unloads_models(engine):
    engine.run({"1": {"class_type": "Number", "inputs": {"value": 2}},
                "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}})
    models = engine.services["models"]
    models.load("free-test", lambda: torch.zeros(4))
    engine.free()  # neither flag: only garbage collection
    assert engine.cache.stats().entries > 0 and models.loaded()
    engine.free(unload_models=True)
    assert models.loaded() == [] and engine.cache.stats().entries > 0
    engine.free(free_memory=True)
    assert engine.cache.stats().entries == 0


def test_device_stats_in_comfyui_terms(engine):
    stats = engine.device_stats()
    assert isinstance(stats, SystemStats)
    assert stats.ram_total >= stats.ram_free > 0 and stats.torch_version == torch.__version__
    device = stats.devices[0].to_dict()
    assert set(device) == {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                           "torch_vram_free"}
    if not torch.cuda.is_available():
        assert device["type"] == "cpu" and device["vram_total"] == stats.ram_total


def test_threads_and_the_deprecated_workers_keyword(registry, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = Engine(registry, paths=Paths.under(tmp_path), device="cpu", threads=3)
    assert engine.threads == 3
    with pytest.warns(DeprecationWarning, match=r"Engine\(threads=\.\.\.\)"):
        old = Engine(registry, paths=Paths.under(tmp_path), device="cpu", workers=1)
    assert old.threads == 1
