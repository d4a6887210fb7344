"""ComfyUI's ``comfy_execution.graph_utils``: build the sub-graph a node expands into.

    graph = GraphBuilder()
    a = graph.node("ImageInvert", image=image_link)
    b = graph.node("ImageInvert", image=a.out(0))
    return {"result": (b.out(0),), "expand": graph.finalize()}

``node.out(i)`` is a link ``[id, i]``; ``finalize()`` is an API-format graph. nodegraph gives the
expansion's nodes ids of their own (``<parent>.<call>.<id>``), so the ids here only need to be unique
within one graph.
"""

from __future__ import annotations

import itertools
from typing import Any

from nodegraph.blocking import ExecutionBlocker  # noqa: F401 - ComfyUI defines it here too

_counter = itertools.count()


def is_link(obj: Any) -> bool:
    """``[node id (str), output index (int)]``."""
    return isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], int) \
        and not isinstance(obj[1], bool)


class GraphBuilder:
    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else f"gb{next(_counter)}."
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str, call_index: int, graph_index: int = 0) -> None:
        return None  # nodegraph prefixes expansion ids itself

    @classmethod
    def alloc_prefix(cls, root: Any = None, call_index: Any = None, graph_index: Any = None) -> str:
        return f"gb{next(_counter)}."

    def node(self, class_type: str, id: str | None = None, **kwargs: Any) -> "Node":
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        id = self.prefix + id
        if id in self.nodes:
            return self.nodes[id]
        node = Node(id, class_type, kwargs)
        self.nodes[id] = node
        return node

    def lookup_node(self, id: str) -> "Node | None":
        return self.nodes.get(self.prefix + id)

    def finalize(self) -> dict[str, dict]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        node_id = self.prefix + node_id
        for node in self.nodes.values():
            for name, value in list(node.inputs.items()):
                if is_link(value) and value[0] == node_id and value[1] == index:
                    node.inputs[name] = new_value

    def remove_node(self, id: str) -> None:
        self.nodes.pop(self.prefix + id, None)


class Node:
    def __init__(self, id: str, class_type: str, inputs: dict[str, Any]) -> None:
        self.id = id
        self.class_type = class_type
        self.inputs = dict(inputs)
        self.override_display_id: str | None = None

    def out(self, index: int) -> list:
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        data: dict[str, Any] = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            data["override_display_id"] = self.override_display_id
        return data


def add_graph_prefix(graph: dict, outputs: Any, prefix: str) -> tuple[dict, Any]:
    """Prefix every node id of ``graph`` (and the links in it and in ``outputs``)."""
    def relink(value: Any) -> Any:
        return [prefix + value[0], value[1]] if is_link(value) else value

    new_graph = {prefix + nid: {**node, "inputs": {k: relink(v) for k, v in node.get("inputs", {}).items()}}
                 for nid, node in graph.items()}
    new_outputs = tuple(relink(o) for o in outputs) if outputs is not None else None
    return new_graph, new_outputs
