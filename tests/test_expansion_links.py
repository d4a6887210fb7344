"""Run-time expansion linking to workflow nodes that have not run yet (what Start Loop / End Loop's
expansion needs): such a node is requested and computed first; a link to a node that waits for the
expanding node itself is an expansion error, not a hang."""

from __future__ import annotations

from nodegraph import Engine, OutputCache, Paths
from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import ANY, INT, STRING

from tests.engine_nodes import TEST_NODES
from tests.helpers.engines import registry_with


class LinkOut(Node):
    """Expands into Add(a=<target node's output 0>, b=1); ``keep`` links the target lazily, never read."""

    category = "test"
    target = Input(STRING, default="")
    keep = Input(ANY, optional=True, lazy=True)
    outputs = (Output(INT),)

    def check_lazy(self, **_):
        return []

    def execute(self, target, keep=None):
        add = {"class_type": "Add", "inputs": {"a": [target, 0], "b": 1}}
        return NodeResult(outputs=(["x", 0],), expand={"x": add})


def _engine(tmp_path) -> Engine:
    return Engine(registry_with(list(TEST_NODES) + [LinkOut]), paths=Paths.under(tmp_path), device="cpu", threads=2,
                  cache=OutputCache(ram_budget=64 << 20))


def test_expansion_requests_a_workflow_node_not_run_yet(tmp_path, log):
    engine = _engine(tmp_path)
    try:
        prompt = {"n": {"class_type": "Number", "inputs": {"value": 5}},
                  "l": {"class_type": "LinkOut", "inputs": {"target": "n", "keep": ["n", 0]}},
                  "show": {"class_type": "Sink", "inputs": {"value": ["l", 0]}}}
        result = engine.run(prompt).raise_for_status()
        assert result.values["l"][0] == [6] and "n" in log.calls
        assert log.calls.index("n") < log.calls.index("show")
    finally:
        engine.close()


def test_expansion_link_to_a_node_waiting_for_it_is_an_error(tmp_path):
    engine = _engine(tmp_path)
    try:
        prompt = {"n": {"class_type": "Number", "inputs": {"value": 5}},
                  "l": {"class_type": "LinkOut", "inputs": {"target": "after", "keep": ["n", 0]}},
                  "after": {"class_type": "Add", "inputs": {"a": ["l", 0], "b": 1}},
                  "show": {"class_type": "Sink", "inputs": {"value": ["after", 0]}}}
        failure = engine.run(prompt).failure
        assert failure is not None and failure.node_id == "l"
        assert "waits for node l's expansion" in failure.exception_message
    finally:
        engine.close()
