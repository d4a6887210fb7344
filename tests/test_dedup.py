"""In-prompt deduplication: nodes with the same signature inside one prompt run once and share the
result; every node id is still reported (the twins as cached). Output nodes, non-cacheable nodes,
nodes whose fingerprint says "always re-run" and nodes that take their own id keep running per id."""

from __future__ import annotations

import math

from nodegraph import Engine, Graph, OutputCache, Paths
from nodegraph.events import EventRecorder, NodeFinished, NodesCached, NodesQueued, NodeStarted
from nodegraph.node import Input, Node, Output
from nodegraph.types import INT

from tests.engine_nodes import LOG


class NeverSame(Node):
    """Its fingerprint says "always re-run" (ComfyUI's IS_CHANGED returning NaN)."""
    category = "test"
    value = Input(INT, default=0)
    outputs = (Output(INT),)

    @classmethod
    def fingerprint(cls, value):
        return math.nan

    def execute(self, value):
        LOG.add(self.ctx.node_id)
        return (value,)


class SameFingerprint(Node):
    """A fingerprint that does not change: twins share one run."""
    category = "test"
    value = Input(INT, default=0)
    outputs = (Output(INT),)

    @classmethod
    def fingerprint(cls, value):
        return "v1"

    def execute(self, value):
        LOG.add(self.ctx.node_id)
        return (value,)


class OwnId(Node):
    """Takes its own node id (hidden ``unique_id``): its result is its own."""
    category = "test"
    hidden = ("unique_id",)
    value = Input(INT, default=0)
    outputs = (Output(INT),)

    def execute(self, value, unique_id=None):
        LOG.add(self.ctx.node_id)
        return (value,)


def register(engine: Engine, *classes) -> None:
    for cls in classes:
        engine.registry.register(cls)


def identical_branches(count: int, value: int = 5) -> Graph:
    """``count`` identical Number → Add branches, each with its own output."""
    g = Graph()
    for i in range(count):
        added = g.node("Add", id=f"add{i}", a=g.node("Number", id=f"num{i}", value=value), b=1)
        g.node("Sink", id=f"out{i}", value=added)
    return g


def test_identical_branches_run_once_and_every_id_is_reported(engine, log):
    recorder = EventRecorder()
    result = engine.run(identical_branches(3), listeners=[recorder])
    assert result.ok, result.failure
    ran = sorted(log.calls)
    assert [c for c in ran if c.startswith("num")] and len([c for c in ran if c.startswith("num")]) == 1
    assert len([c for c in ran if c.startswith("add")]) == 1
    assert sorted(c for c in ran if c.startswith("out")) == ["out0", "out1", "out2"]  # outputs per id
    assert len(result.executed) == 5 and len(result.cached) == 4
    assert set(result.executed) | set(result.cached) == {f"{k}{i}" for k in ("num", "add", "out") for i in range(3)}
    for i in range(3):  # every node has its value, every output its UI
        assert result.value(f"add{i}") == 6
        assert result.outputs[f"out{i}"] == {"value": [6]}
    finished = {e.node_id: e.cached for e in recorder.of(NodeFinished)}
    assert set(finished) == {f"{k}{i}" for k in ("num", "add", "out") for i in range(3)}
    assert sorted(n for n, cached in finished.items() if cached) == sorted(result.cached)
    started = {e.node_id for e in recorder.of(NodeStarted)}
    assert started == set(result.executed)  # twins never start
    reported = {n for e in recorder.of(NodesCached) for n in e.node_ids}
    assert reported == set(result.cached)
    queued = {n for e in recorder.of(NodesQueued) for n in e.node_ids}
    assert queued == set(result.executed)  # the progress total counts what runs


def test_twins_are_served_without_a_cache():
    from tests.engine_nodes import TEST_NODES
    from tests.helpers.engines import registry_with

    registry = registry_with(TEST_NODES)
    LOG.calls.clear()
    engine = Engine(registry, device="cpu", cache=OutputCache(ram_budget=0, vram_budget=0))
    try:
        result = engine.run(identical_branches(4))
        assert result.ok and len(engine.cache) == 0
        assert len([c for c in LOG.calls if not c.startswith("out")]) == 2
        assert all(result.value(f"add{i}") == 6 for i in range(4))
    finally:
        engine.close()


def test_identical_output_nodes_run_per_id(engine, log):
    g = Graph()
    num = g.node("Number", value=3)
    g.node("Sink", id="a", value=num)
    g.node("Sink", id="b", value=num)
    result = engine.run(g)
    assert sorted(result.executed) == ["1", "a", "b"]
    assert sorted(log.calls) == ["1", "a", "b"]


def test_non_cacheable_and_always_rerun_nodes_are_not_shared(engine, log):
    register(engine, NeverSame, OwnId)
    g = Graph()
    for i in range(2):
        g.node("Sink", id=f"r{i}", value=g.node("Random", id=f"rand{i}"))
        g.node("Sink", id=f"n{i}", value=g.node("NeverSame", id=f"never{i}", value=7))
        g.node("Sink", id=f"o{i}", value=g.node("OwnId", id=f"own{i}", value=7))
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.cached == []
    for name in ("rand", "never", "own"):
        assert sorted(c for c in log.calls if c.startswith(name)) == [f"{name}0", f"{name}1"]


def test_a_constant_fingerprint_shares_like_no_fingerprint(engine, log):
    register(engine, SameFingerprint)
    g = Graph()
    for i in range(3):
        g.node("Sink", id=f"s{i}", value=g.node("SameFingerprint", id=f"f{i}", value=2))
    result = engine.run(g)
    assert len([c for c in log.calls if c.startswith("f")]) == 1
    assert sorted(result.cached) == sorted({"f0", "f1", "f2"} - set(result.executed))


def test_twin_of_a_different_branch_only_shares_what_is_identical(engine, log):
    g = Graph()
    shared = g.node("Number", id="n", value=1)
    a = g.node("Add", id="a", a=shared, b=1)
    b = g.node("Add", id="b", a=shared, b=2)          # differs: runs
    c = g.node("Add", id="c", a=g.node("Number", id="n2", value=1), b=1)  # twin of a (and n2 of n)
    for node in (a, b, c):
        g.node("Sink", value=node)
    result = engine.run(g)
    assert result.value("a") == result.value("c") == 2 and result.value("b") == 3
    assert sorted(c for c in log.calls if c in {"n", "n2", "a", "b", "c"}) in (["a", "b", "n"], ["b", "c", "n2"],
                                                                               ["a", "b", "n2"], ["b", "c", "n"])


def test_expanding_twins_expand_once(engine, log):
    g = Graph()
    for i in range(3):
        rep = g.node("RepeatAdd", id=f"rep{i}", value=g.node("Number", id=f"start{i}", value=10), times=4)
        g.node("Sink", id=f"out{i}", value=rep)
    result = engine.run(g)
    assert result.ok, result.failure
    assert all(result.outputs[f"out{i}"] == {"value": [14]} for i in range(3))
    expanded = [c for c in log.calls if "." in c]  # ids of expansion nodes: <parent>.<call>.<local id>
    assert len({c.split(".")[0] for c in expanded}) == 1  # one node expanded, its twins shared it
    assert len(expanded) == 4  # its 4 Adds (its Number(10) is a twin of start*, already computed)
    assert len([c for c in log.calls if c.startswith("rep")]) == 4


def test_lazily_requested_twin_is_served_from_the_computed_one(engine, log):
    g = Graph()
    eager = g.node("Add", id="eager", a=g.node("Number", id="n1", value=1), b=1)
    lazy = g.node("Add", id="lazy", a=g.node("Number", id="n2", value=1), b=1)
    switch = g.node("Switch", switch=True, on_true=lazy, on_false=g.node("Number", id="other", value=9))
    g.node("Sink", id="s1", value=eager)
    g.node("Sink", id="s2", value=switch)
    result = engine.run(g)
    assert result.ok, result.failure
    assert result.outputs["s2"] == {"value": [2]} and result.outputs["s1"] == {"value": [2]}
    assert len([c for c in log.calls if c in ("eager", "lazy")]) == 1
    assert len([c for c in log.calls if c in ("n1", "n2")]) == 1
    assert "other" not in log.calls


def test_failing_computation_fails_the_run_once(engine, log):
    g = Graph()
    for i in range(3):
        g.node("Sink", id=f"s{i}", value=g.node("Fail", id=f"f{i}", value=g.node("Number", id=f"n{i}", value=1)))
    recorder = EventRecorder()
    result = engine.run(g, listeners=[recorder])
    assert result.status == "error"
    assert result.failure.node_id in {"f0", "f1", "f2"}
    assert not [e for e in recorder.of(NodeFinished) if e.node_id.startswith("f")]


def test_wide_identical_image_branches_execute_each_distinct_node_once(tmp_path):
    """The issue's wide-100-identical shape: one source, 100 identical blur → invert branches, each
    with its own PreviewImage: 3 distinct computations, 100 previews (output nodes run per id)."""
    from nodegraph.registry import default_registry

    engine = Engine(default_registry(packs=False), paths=Paths.under(tmp_path), device="cpu")
    try:
        prompt = {"src": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                                 "color": 0x336699}}}
        for i in range(100):
            prompt[f"b{i}"] = {"class_type": "ImageBlur", "inputs": {"image": ["src", 0], "blur_radius": 1,
                                                                     "sigma": 1.0}}
            prompt[f"i{i}"] = {"class_type": "ImageInvert", "inputs": {"image": [f"b{i}", 0]}}
            prompt[f"p{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"i{i}", 0]}}
        result = engine.run(prompt)
        assert result.ok, result.failure
        kinds = [nid[0] for nid in result.executed]
        assert kinds.count("s") == 1 and kinds.count("b") == 1 and kinds.count("i") == 1
        assert kinds.count("p") == 100 and len(result.executed) == 103
        assert len(result.cached) == 198
        assert len(list(engine.paths.temp_dir.glob("*.png"))) == 100
    finally:
        engine.close()
