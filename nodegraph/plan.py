"""A checked workflow, ready to run: typed nodes with coerced constants, links, outputs and an order.

Validation builds a :class:`Plan`; the executor reads it and may add nodes to it at run time
(expansion). networkx serves ancestry queries (:meth:`Plan.graph`); the executor's hot loop does not
touch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import NodeError
from .node import Node
from .workflow.api_format import Link, dump_input_value


@dataclass(slots=True)
class PlannedNode:
    id: str
    class_type: str
    cls: type[Node]
    constants: dict[str, Any]
    links: dict[str, Link]
    parent: str | None = None
    display_node: str = ""
    is_changed: Any = None
    #: links of non-lazy inputs: what must exist before the node can run
    eager_links: tuple[tuple[str, Link], ...] = ()
    #: links of lazy inputs (``None`` when the node has none)
    lazy_links: dict[str, Link] | None = None
    #: what :func:`nodegraph.signature.node_signature` hashes besides the producers' signatures, kept
    #: once computed for a node whose signature has no fingerprint (a plan memo reuses its nodes)
    signature_parts: tuple | None = field(default=None, compare=False, repr=False)
    #: the executor may call it with its inputs as they are: no lazy or hidden inputs, not ``takes_lists``
    plain_call: bool = field(default=False, compare=False, repr=False)
    #: none of its outputs is a list output: a plain tuple it returns is its outputs
    plain_outputs: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        cls = self.cls
        lazy = cls._LAZY
        if lazy:
            self.eager_links = tuple((n, l) for n, l in self.links.items() if n not in lazy)
            self.lazy_links = {n: l for n, l in self.links.items() if n in lazy}
        else:
            self.eager_links = tuple(self.links.items())
        if not self.display_node:
            self.display_node = self.id
        self.plain_call = self.lazy_links is None and not cls.takes_lists and not cls.hidden
        self.plain_outputs = not any(out.is_list for out in cls.outputs)

    def to_api(self) -> dict[str, Any]:
        inputs = {k: dump_input_value(v) for k, v in self.constants.items()}
        inputs.update({k: v.to_json() for k, v in self.links.items()})
        return {"class_type": self.class_type, "inputs": inputs}


@dataclass
class Plan:
    nodes: dict[str, PlannedNode]
    outputs: list[str]
    order: list[str]
    #: partial validation only: the errors of the output branches left out of this plan
    node_errors: list[NodeError] = field(default_factory=list)
    #: the nodes' signatures when they were computed with the plan (:mod:`nodegraph.plan_memo`); the
    #: executor computes them otherwise
    signatures: dict[str, bytes] | None = None

    def to_api(self) -> dict[str, Any]:
        """The workflow after coercion (ComfyUI's hidden ``PROMPT``); expansion nodes excluded."""
        return {nid: n.to_api() for nid, n in self.nodes.items() if n.parent is None}

    def graph(self):
        """A networkx DiGraph (producer → consumer) of the planned nodes."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        for nid, node in self.nodes.items():
            for _, link in node.links.items():
                g.add_edge(link.node_id, nid)
        return g

    def descendants(self, node_id: str) -> set[str]:
        import networkx as nx

        return nx.descendants(self.graph(), node_id)
