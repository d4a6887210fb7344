"""Executor behaviour: caching, partial re-runs, laziness, lists, expansion, concurrency, failures."""

from __future__ import annotations

import threading
import time

import pytest

from nodegraph import Engine, Graph, OutputCache, Paths
from nodegraph.events import (EventRecorder, ExecutionDone, ExecutionInterrupted, NodeFailed,
                              NodeFinished, NodeProgress, NodeStarted, NodesCached)


def chain(n: int, start: int = 0) -> Graph:
    g = Graph()
    node = g.node("Number", value=start)
    for _ in range(n):
        node = g.node("Add", a=node, b=1)
    g.node("Sink", value=node)
    return g


def test_run_returns_outputs_and_values(engine):
    result = engine.run(chain(3, start=10))
    assert result.ok
    assert result.outputs == {"5": {"value": [13]}}
    assert result.value("4") == 13


def test_rerun_of_unchanged_workflow_executes_zero_nodes(engine, log):
    g = chain(5)
    engine.run(g)
    log.calls.clear()
    recorder = EventRecorder()
    again = engine.run(g, listeners=[recorder])
    assert again.executed == [] and log.calls == []
    assert again.outputs == {"7": {"value": [5]}}
    # every cached node is reported (as ComfyUI's execution_cached does), producers first
    assert recorder.of(NodesCached)[0].node_ids == ("1", "2", "3", "4", "5", "6", "7")
    # the output node's UI data is still reported (ComfyUI sends `executed` for cached outputs)
    finished = recorder.of(NodeFinished)
    assert [(e.node_id, e.cached, e.ui) for e in finished] == [("7", True, {"value": [5]})]


def test_changing_one_input_reruns_only_that_node_and_descendants(engine, log):
    g = Graph()
    a = g.node("Number", value=1)          # 1
    b = g.node("Number", value=2)          # 2
    sa = g.node("Add", a=a, b=10)          # 3
    sb = g.node("Add", a=b, b=20)          # 4
    both = g.node("Add", a=sa, b=0)        # 5 (only depends on a's branch)
    g.node("Sink", value=both)             # 6
    g.node("Sink", value=sb)               # 7
    engine.run(g)
    log.calls.clear()
    sb.set(b=21)
    result = engine.run(g)
    assert sorted(result.executed) == ["4", "7"]
    assert sorted(log.calls) == ["4", "7"]
    assert result.outputs["7"] == {"value": [23]}


def test_cache_is_shared_across_workflows_with_other_ids(engine, log):
    engine.run(chain(4, start=100))
    log.calls.clear()
    other = Graph()
    n = other.node("Number", id="alpha", value=100)
    for i in range(4):
        n = other.node("Add", id=f"step{i}", a=n, b=1)
    other.node("Add", id="extra", a=n, b=1000)
    other.node("Sink", id="out", value=other.lookup("extra"))
    result = engine.run(other)
    assert sorted(result.executed) == ["extra", "out"]   # the shared chain came from the cache
    assert result.outputs["out"] == {"value": [1104]}


def test_lazy_switch_evaluates_only_the_branch_it_takes(engine, log):
    g = Graph()
    yes = g.node("Add", a=g.node("Number", value=1), b=1)
    no = g.node("Fail", value=g.node("Number", value=2))      # would fail if evaluated
    sw = g.node("Switch", switch=True, on_true=yes, on_false=no)
    g.node("Sink", value=sw)
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.outputs[list(result.outputs)[0]] == {"value": [2]}
    assert no.id not in result.executed and "3" not in log.calls   # node 3 = Number(2) feeding Fail
    sw.set(switch=False)
    failed = engine.run(g)
    assert failed.status == "error" and failed.failure.node_id == no.id


def test_list_outputs_map_over_downstream_nodes(engine):
    g = Graph()
    items = g.node("Range", count=4)
    plus = g.node("Add", a=items, b=10)            # runs once per item
    total = g.node("Total", values=plus)           # takes the whole list
    g.node("Sink", value=total)
    result = engine.run(g)
    assert result.values[plus.id] == ([10, 11, 12, 13],)
    assert result.value(total.id) == 46


def test_run_time_expansion(engine, log):
    g = Graph()
    rep = g.node("RepeatAdd", value=g.node("Number", value=5), times=4)
    g.node("Sink", value=rep)
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.value(rep.id) == 9
    expanded = [nid for nid in result.executed if nid.startswith(f"{rep.id}.")]
    assert len(expanded) == 4   # four Adds; the inner Number(5) equals node 1 and came from the cache
    again = engine.run(g)
    assert again.executed == []


def test_invalid_expansion_is_a_node_failure(engine, registry):
    from nodegraph.node import Input, Node, NodeResult, Output

    class BadExpand(Node):
        outputs = (Output("INT"),)

        def execute(self):
            g = Graph()
            n = g.node("NoSuchNode")
            return NodeResult(outputs=(n.out(0),), expand=g)

    registry.register(BadExpand)
    g = Graph()
    g.node("Sink", value=g.node("BadExpand"))
    result = engine.run(g)
    assert result.status == "error" and "NoSuchNode" in result.failure.exception_message


def test_failure_reports_node_exception_traceback_and_inputs(engine):
    g = Graph()
    bad = g.node("Fail", value=g.node("Number", value=7), message="kaput")
    g.node("Sink", value=bad)
    recorder = EventRecorder()
    result = engine.run(g, listeners=[recorder])
    f = result.failure
    assert result.status == "error"
    assert (f.node_id, f.class_type, f.exception_type, f.exception_message) == (bad.id, "Fail", "RuntimeError", "kaput")
    assert any("raise RuntimeError" in line for line in f.traceback)
    assert f.inputs == {"value": ["7"], "message": ["'kaput'"]}
    assert recorder.of(NodeFailed)[0].node_id == bad.id
    assert recorder.of(ExecutionDone)[0].status == "error"
    with pytest.raises(Exception, match="kaput"):
        result.raise_for_status()


def test_failure_stops_new_scheduling(engine, log):
    g = Graph()
    bad = g.node("Fail", value=g.node("Number", value=1))
    after = g.node("Add", a=bad, b=1)
    g.node("Sink", value=after)
    result = engine.run(g)
    assert after.id not in log.calls and result.status == "error"


def test_two_independent_slow_branches_overlap(engine, log):
    g = Graph()
    s1 = g.node("Sleep", value=g.node("Number", value=1), seconds=0.4)
    s2 = g.node("Sleep", value=g.node("Number", value=2), seconds=0.4)
    g.node("Sink", value=s1)
    g.node("Sink", value=s2)
    result = engine.run(g)
    assert result.ok
    (a0, a1), (b0, b1) = log.spans[s1.id], log.spans[s2.id]
    overlap = min(a1, b1) - max(a0, b0)
    assert overlap > 0.2, (log.spans, overlap)


def test_single_thread_runs_branches_one_after_another(registry, tmp_path, log):
    engine = Engine(registry, paths=Paths.under(tmp_path), device="cpu", threads=1)
    g = Graph()
    s1 = g.node("Sleep", value=g.node("Number", value=1), seconds=0.2)
    s2 = g.node("Sleep", value=g.node("Number", value=2), seconds=0.2)
    g.node("Sink", value=s1)
    g.node("Sink", value=s2)
    assert engine.run(g).ok
    (a0, a1), (b0, b1) = log.spans[s1.id], log.spans[s2.id]
    assert min(a1, b1) <= max(a0, b0)
    engine.close()


def test_interrupt_inside_a_long_node(engine, log):
    g = Graph()
    slow = g.node("Sleep", value=g.node("Number", value=1), seconds=30)
    after = g.node("Add", a=slow, b=1)
    g.node("Sink", value=after)
    recorder = EventRecorder()

    def interrupt_when_progressing(event):
        if isinstance(event, NodeProgress) and event.value == 2:
            engine.interrupt()

    started = time.perf_counter()
    result = engine.run(g, listeners=[recorder, interrupt_when_progressing])
    assert time.perf_counter() - started < 10
    assert result.status == "interrupted" and result.interrupted_at == slow.id
    assert after.id not in log.calls
    assert recorder.of(ExecutionInterrupted)[0].node_id == slow.id
    # the engine works normally afterwards
    assert engine.run(chain(2)).ok


def test_interrupt_between_nodes(engine, log):
    g = chain(20)

    def stop_after_third(event):
        if isinstance(event, NodeFinished) and event.node_id == "3":
            engine.interrupt()

    result = engine.run(g, listeners=[stop_after_third])
    assert result.status == "interrupted"
    assert "4" not in result.executed


def test_interrupt_for_another_prompt_is_ignored(engine):
    assert engine.interrupt("not-running") is False


def test_never_cacheable_nodes_rerun_with_their_descendants(engine, log):
    g = Graph()
    r = g.node("Random")
    plus = g.node("Add", a=r, b=1)
    g.node("Sink", value=plus)
    engine.run(g)
    log.calls.clear()
    result = engine.run(g)
    assert r.id in result.executed and plus.id in result.executed


def test_events_in_order_for_a_chain(engine):
    recorder = EventRecorder()
    engine.run(chain(1), listeners=[recorder])
    kinds = [type(e).__name__ for e in recorder.events]
    assert kinds[0] == "ExecutionStarted" and kinds[-1] == "ExecutionDone"
    started = [e.node_id for e in recorder.of(NodeStarted)]
    assert started == ["1", "2", "3"]


def test_cache_byte_budget_respected_under_pressure(registry, tmp_path, log):
    budget = 1 << 20  # 1 MiB
    cache = OutputCache(ram_budget=budget)
    engine = Engine(registry, paths=Paths.under(tmp_path), device="cpu", cache=cache)
    peak = 0
    for seed in range(12):
        g = Graph()
        g.node("Sink", value=g.node("BlobSize", blob=g.node("Big", kib=300, seed=seed)))
        assert engine.run(g).ok
        peak = max(peak, cache.stats().ram_bytes)
    stats = cache.stats()
    assert peak <= budget
    assert stats.evictions > 0
    # an entry bigger than the whole budget is refused, not stored
    g = Graph()
    g.node("Sink", value=g.node("BlobSize", blob=g.node("Big", kib=2048)))
    assert engine.run(g).ok
    assert cache.stats().rejected >= 1 and cache.stats().ram_bytes <= budget
    engine.close()


def test_deferred_cache_writes_wait_for_store_results(engine, log):
    """``defer_cache=True`` (the server runner): the run's results reach the cache only through
    ``store_results``, in the order they were made, and then serve the next run as usual."""
    g = chain(3, start=7)
    plan = engine.validate(g.to_api())
    before = len(engine.cache)
    result = engine.execute(plan, defer_cache=True)
    assert result.ok and result.outputs == {"5": {"value": [10]}}
    assert len(engine.cache) == before  # nothing stored yet
    assert len(result.unstored) == len(result.executed) == 5
    assert [write.outputs for write in result.unstored] == [result.values[nid] for nid in result.executed]
    engine.store_results(result)
    assert result.unstored == [] and len(engine.cache) == before + 5
    log.calls.clear()
    again = engine.run(g)
    assert again.executed == [] and log.calls == [] and again.outputs == {"5": {"value": [10]}}


def test_a_failed_deferred_run_stores_what_it_computed(engine, log):
    g = Graph()
    good = g.node("Add", a=g.node("Number", value=1), b=1)
    g.node("Sink", value=g.node("Fail", value=good))
    result = engine.execute(engine.validate(g.to_api()), defer_cache=True)
    assert result.status == "error" and result.unstored
    engine.store_results(result)
    log.calls.clear()
    g2 = Graph()
    g2.node("Sink", value=g2.node("Add", a=g2.node("Add", a=g2.node("Number", value=1), b=1), b=5))
    again = engine.run(g2)
    assert again.outputs == {"4": {"value": [7]}}
    assert sorted(again.executed) == ["3", "4"]  # the first Add and its Number came from the cache


def test_a_cache_past_half_its_budget_is_not_deferred(registry, tmp_path, log):
    """A fuller cache stores as the run goes (its evictions make room while the run holds its
    results): ``defer_cache`` then leaves nothing for ``store_results``."""
    import torch

    engine = Engine(registry, cache=OutputCache(ram_budget=1 << 20), paths=Paths(output_dir=tmp_path))
    assert engine.cache.put(b"an earlier result", ([torch.zeros(150_000)],))  # ~600 KiB of the 1 MiB
    result = engine.execute(engine.validate(chain(2, start=50).to_api()), defer_cache=True)
    assert result.ok and result.unstored == []
