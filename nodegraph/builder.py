"""Build workflows in Python (the API format, as ComfyUI's ``GraphBuilder`` does).

    g = Graph()
    img = g.node("EmptyImage", width=64, height=64)
    inv = g.node("ImageInvert", image=img)          # a NodeRef means its output 0
    g.node("SaveImage", images=inv.out(0), filename_prefix="demo")
    result = nodegraph.run(g)

``Graph.to_api()`` gives the JSON the CLI and server take; ``Graph.from_api()`` reads it back.
Nodes use the same builder to return a sub-graph from ``execute`` (run-time expansion).
"""

from __future__ import annotations

from typing import Any

from .workflow.api_format import Link, Workflow, WorkflowNode, dump_input_value


class NodeRef:
    """A node in a :class:`Graph`; ``ref.out(i)`` is a link to its output ``i``."""

    __slots__ = ("graph", "id")

    def __init__(self, graph: "Graph", node_id: str) -> None:
        self.graph = graph
        self.id = node_id

    def out(self, index: int = 0) -> Link:
        return Link(self.id, index)

    def __getitem__(self, index: int) -> Link:
        return self.out(index)

    def set(self, **inputs: Any) -> "NodeRef":
        """Set or replace inputs of this node."""
        self.graph._nodes[self.id].inputs.update({k: _as_input(v) for k, v in inputs.items()})
        return self

    def __repr__(self) -> str:
        return f"NodeRef({self.id!r}, {self.graph._nodes[self.id].class_type})"


def _as_input(value: Any) -> Any:
    if isinstance(value, NodeRef):
        return value.out(0)
    return value


class Graph:
    """A workflow under construction. Ids are ``"1"``, ``"2"``, … unless given."""

    def __init__(self) -> None:
        self._nodes: dict[str, WorkflowNode] = {}
        self._counter = 0

    def node(self, class_type: str, id: str | int | None = None, *, title: str | None = None,
             **inputs: Any) -> NodeRef:
        if id is None:
            self._counter += 1
            while str(self._counter) in self._nodes:
                self._counter += 1
            id = self._counter
        node_id = str(id)
        if node_id in self._nodes:
            raise ValueError(f"node id {node_id!r} is already used in this graph")
        self._nodes[node_id] = WorkflowNode(node_id, class_type, {k: _as_input(v) for k, v in inputs.items()},
                                            title)
        return NodeRef(self, node_id)

    def lookup(self, node_id: str | int) -> NodeRef:
        if str(node_id) not in self._nodes:
            raise KeyError(f"no node {node_id!r} in this graph")
        return NodeRef(self, str(node_id))

    def remove(self, node_id: str | int) -> None:
        del self._nodes[str(node_id)]

    def to_api(self) -> dict[str, Any]:
        return {nid: n.to_api() for nid, n in self._nodes.items()}

    def to_workflow(self) -> Workflow:
        return Workflow.from_api(self.to_api())

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Graph":
        g = cls()
        for nid, node in Workflow.from_api(data).nodes.items():
            g._nodes[nid] = node
        numeric = [int(n) for n in g._nodes if n.isdigit()]
        g._counter = max(numeric, default=0)
        return g

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return str(node_id) in self._nodes


__all__ = ["Graph", "NodeRef", "Link", "dump_input_value"]
