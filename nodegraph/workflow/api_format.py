"""The API-format workflow (ComfyUI's execution format) as typed records.

``{"id": {"class_type": ..., "inputs": {name: value | [src_id, out_index]}, "_meta": {...}}}``

Parsing is lenient on purpose: a malformed node is kept with its problem recorded, so validation can
report every problem at once instead of stopping at the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple


class Link(NamedTuple):
    """A link to output ``output`` of node ``node_id`` (a named tuple: cheap to make and compare)."""

    node_id: str
    output: int

    def to_json(self) -> list:
        return [self.node_id, self.output]


def is_link_json(value: Any) -> bool:
    """True for exactly ``[str, int]`` (ComfyUI: ``[3, 0]`` with a numeric id is *not* a link)."""
    return (type(value) is list and len(value) == 2 and type(value[0]) is str
            and type(value[1]) is int)


class ArrayConstant(list):
    """A list constant a workflow wrote as ``{"__value__": [...]}``: a list, but not the bare list that
    validation refuses (neither a link nor a constant there)."""


def parse_input_value(value: Any) -> Any:
    """A JSON input value → :class:`Link`, or the constant (``{"__value__": [...]}`` unwrapped, a list as
    :class:`ArrayConstant`)."""
    if is_link_json(value):
        return Link(value[0], value[1])
    if type(value) is dict and len(value) == 1 and "__value__" in value:
        inner = value["__value__"]
        return ArrayConstant(inner) if type(inner) is list else inner
    return value


def dump_input_value(value: Any) -> Any:
    if type(value) is Link:
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return {"__value__": value}
    return value


@dataclass(slots=True)
class WorkflowNode:
    """One node of an API-format workflow.

    ``problem`` is set when the JSON for this node is malformed; validation reports it.
    ``parent`` / ``display_node`` are set for nodes added by run-time expansion.
    """

    id: str
    class_type: str
    inputs: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    is_changed: Any = None
    problem: str | None = None
    parent: str | None = None
    display_node: str | None = None

    def links(self) -> Iterator[tuple[str, Link]]:
        for name, value in self.inputs.items():
            if type(value) is Link:
                yield name, value

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class_type": self.class_type,
                               "inputs": {k: dump_input_value(v) for k, v in self.inputs.items()}}
        if self.title is not None:
            out["_meta"] = {"title": self.title}
        if self.is_changed is not None:
            out["is_changed"] = self.is_changed
        return out


@dataclass
class Workflow:
    """An API-format workflow: node id → :class:`WorkflowNode` (insertion order kept)."""

    nodes: dict[str, WorkflowNode] = field(default_factory=dict)
    problem: str | None = None

    @classmethod
    def from_api(cls, data: Any) -> "Workflow":
        """Parse an API-format dict. Never raises for bad nodes; see ``WorkflowNode.problem``."""
        from ..errors import WorkflowFormatError

        if not isinstance(data, dict):
            raise WorkflowFormatError(
                f"an API-format workflow is a JSON object of nodes keyed by id, not {type(data).__name__}")
        nodes: dict[str, WorkflowNode] = {}
        for raw_id, raw in data.items():
            node_id = str(raw_id)
            nodes[node_id] = _parse_node(node_id, raw)
        return cls(nodes)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Workflow":
        from ..errors import WorkflowFormatError

        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WorkflowFormatError(f"the workflow is not valid JSON: {exc}") from None
        return cls.from_api(data)

    def to_api(self) -> dict[str, Any]:
        return {nid: node.to_api() for nid, node in self.nodes.items()}

    def copy(self) -> "Workflow":
        return Workflow({nid: WorkflowNode(n.id, n.class_type, dict(n.inputs), n.title, n.is_changed,
                                           n.problem, n.parent, n.display_node)
                         for nid, n in self.nodes.items()})

    def __len__(self) -> int:
        return len(self.nodes)


def _parse_node(node_id: str, raw: Any) -> WorkflowNode:
    if not isinstance(raw, dict):
        return WorkflowNode(node_id, "", problem=f"node {node_id} must be a JSON object with "
                            f"'class_type' and 'inputs', not {type(raw).__name__}")
    class_type = raw.get("class_type")
    inputs = raw.get("inputs", {})
    meta = raw.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) and isinstance(meta.get("title"), str) else None
    problem = None
    if not isinstance(class_type, str) or not class_type:
        problem = f"node {node_id} has no 'class_type' (the name of the node class to run)"
        class_type = class_type if isinstance(class_type, str) else ""
    if not isinstance(inputs, dict):
        problem = problem or f"node {node_id} ({class_type}): 'inputs' must be a JSON object"
        inputs = {}
    parsed = {}
    for key, value in inputs.items():
        kind = type(value)
        if kind is list and len(value) == 2 and type(value[0]) is str and type(value[1]) is int:
            value = Link(value[0], value[1])
        elif kind is dict:
            value = parse_input_value(value)
        parsed[key if type(key) is str else str(key)] = value
    return WorkflowNode(node_id, class_type, parsed, title, raw.get("is_changed"), problem)
