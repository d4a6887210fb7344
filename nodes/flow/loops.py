"""Loops on the engine's run-time expansion: Repeat (N rounds, each fed the previous round's result) and
ForEach (a body per list item).

The loop body is a sub-graph template in ComfyUI's API format (a JSON text input, ``body``) with two
kinds of marker nodes: ``LoopInput`` (``name``: ``value`` — the round's input / the item, ``index`` — the
round number from 0, ``context1``…``context4`` — the loop node's context inputs) and exactly one
``LoopOutput`` (the round's result). At run time the loop node unrolls the body once per round into an
expansion: markers become ``LoopValue`` nodes keyed by a content hash of the value they carry, so every
expanded node's cache key depends only on what flows into it. Re-running with one round more therefore
re-executes only the new round; earlier rounds come from the cache. Output nodes in the body (ShowText,
PreviewImage, SaveImage …) run in every round, so each round's results are shown and reported in events.
Outputs: the last round's value and the list of every round's value.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

import torch

from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import ANY, COMBO, INT, STRING
from nodegraph.workflow.api_format import Link, Workflow

LOOP_INPUT_NAMES = ["value", "index", "context1", "context2", "context3", "context4"]
CONTEXTS = ("context1", "context2", "context3", "context4")


# -- values carried into expansions -------------------------------------------------------------------

class LoopStash:
    """Values handed from a loop node to its expansion, by content key (bounded, least recently used)."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, value: Any) -> str:
        key = value_key(value)
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> Any:
        with self._lock:
            if key not in self._items:
                raise KeyError(key)
            self._items.move_to_end(key)
            return self._items[key]


def value_key(value: Any) -> str:
    """A content hash of a value (tensors by dtype, shape and bytes; unknown objects by identity)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()[:40]


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, str):
        h.update(b"S" + value.encode("utf-8", "surrogatepass") + b"\0")
    elif value is None or isinstance(value, (bool, int, float)):
        h.update(f"P{type(value).__name__}:{value!r}\0".encode())
    elif isinstance(value, (list, tuple)):
        h.update(f"L{type(value).__name__}{len(value)}(".encode())
        for item in value:
            _feed(h, item)
        h.update(b")")
    elif isinstance(value, dict):
        h.update(f"D{len(value)}(".encode())
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
        h.update(b")")
    else:  # models and other objects: the stash keeps them alive, so their identity is stable
        h.update(f"O{type(value).__module__}.{type(value).__qualname__}:{id(value)}\0".encode())


def stash_of(node: Node) -> LoopStash:
    services = node.ctx.run.services
    stash = services.get("loop_values")
    if stash is None:
        stash = services.setdefault("loop_values", LoopStash())
    return stash


# -- marker and helper nodes --------------------------------------------------------------------------

class LoopInput(Node):
    """Marks where a loop body receives a value (the round's input, the index, or a context input)."""

    category = "utils/loops"
    name = Input(COMBO, choices=LOOP_INPUT_NAMES, default="value")
    outputs = (Output(ANY, "value"),)

    def execute(self, name="value") -> tuple:
        raise RuntimeError("LoopInput only works inside the body template of a Repeat or ForEach node")


class LoopOutput(Node):
    """Marks a loop body's result (exactly one per body)."""

    category = "utils/loops"
    value = Input(ANY)
    outputs = (Output(ANY, "value"),)

    def execute(self, value) -> tuple:
        return (value,)


class LoopValue(Node):
    """A value handed into a loop's expansion, by content key (created by Repeat/ForEach)."""

    category = "utils/loops"
    key = Input(STRING, default="")
    outputs = (Output(ANY, "value"),)

    def execute(self, key) -> tuple:
        try:
            return (stash_of(self).get(key),)
        except KeyError:
            raise RuntimeError(f"loop value {key[:12]}… is no longer held; run the workflow again") from None


class ListAppend(Node):
    """Append one item to a list (the loop nodes chain these to collect every round's result)."""

    category = "utils/loops"
    takes_lists = True
    item = Input(ANY)
    items = Input(ANY, optional=True)
    outputs = (Output(ANY, "items", is_list=True),)

    def execute(self, item, items=None) -> tuple:
        return (list(items or []) + list(item),)


# -- body templates ----------------------------------------------------------------------------------

def parse_body(body: str, input_name: str = "body") -> Workflow:
    """Read and check a body template: API format, known marker names, exactly one LoopOutput."""
    if not isinstance(body, str) or not body.strip():
        raise ValueError(f"input '{input_name}' is empty; give an API-format sub-graph with LoopInput and "
                         "LoopOutput nodes")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"input '{input_name}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"input '{input_name}' must be a JSON object of nodes (API format)")
    workflow = Workflow.from_api(data)
    outputs = [nid for nid, n in workflow.nodes.items() if n.class_type == "LoopOutput"]
    if len(outputs) != 1:
        raise ValueError(f"input '{input_name}' needs exactly one LoopOutput node, found {len(outputs)}")
    for nid, n in workflow.nodes.items():
        if n.problem:
            raise ValueError(f"input '{input_name}': node {nid}: {n.problem}")
        if n.class_type == "LoopInput" and n.inputs.get("name", "value") not in LOOP_INPUT_NAMES:
            raise ValueError(f"input '{input_name}': LoopInput node {nid} has name {n.inputs.get('name')!r}; "
                             f"use one of {', '.join(LOOP_INPUT_NAMES)}")
    return workflow


def unroll(body: Workflow, prefix: str, values: dict[str, Any], out: dict[str, dict]) -> Link:
    """Add one copy of ``body`` to ``out`` (ids prefixed); LoopInput names map to links or node ids.

    ``values`` maps a LoopInput name to a Link. Returns the link to this copy's LoopOutput.
    """
    replaced: dict[str, Link] = {}
    for nid, n in body.nodes.items():
        if n.class_type == "LoopInput":
            name = n.inputs.get("name", "value")
            if name not in values:
                raise ValueError(f"the loop body reads LoopInput '{name}', which this loop does not give "
                                 "(connect that context input)")
            replaced[nid] = values[name]
    result: Link | None = None
    for nid, n in body.nodes.items():
        if nid in replaced:
            continue
        inputs = {}
        for key, value in n.inputs.items():
            if isinstance(value, Link):
                target = replaced.get(value.node_id)
                value = target if target is not None else Link(prefix + value.node_id, value.output)
                inputs[key] = value.to_json()
            else:
                inputs[key] = value if not isinstance(value, list) else {"__value__": value}
        out[prefix + nid] = {"class_type": n.class_type, "inputs": inputs}
        if n.class_type == "LoopOutput":
            result = Link(prefix + nid, 0)
    assert result is not None
    return result


class _Loop(Node):
    abstract = True
    category = "utils/loops"
    template_input = "body"

    @classmethod
    def validate_inputs(cls, body=None, **_: Any) -> bool | str:
        if body is None:
            return True
        try:
            parse_body(body)
        except ValueError as exc:
            return str(exc)
        return True

    def value_node(self, graph: dict[str, dict], value: Any) -> Link:
        key = stash_of(self).put(value)
        nid = f"v{key[:16]}"
        graph.setdefault(nid, {"class_type": "LoopValue", "inputs": {"key": key}})
        return Link(nid, 0)

    def contexts(self, graph: dict[str, dict], given: dict[str, Any]) -> dict[str, Link]:
        return {name: self.value_node(graph, value) for name, value in given.items() if value is not None}

    @staticmethod
    def collect(graph: dict[str, dict], results: list[Link]) -> Link:
        previous: Link | None = None
        for i, link in enumerate(results):
            inputs: dict[str, Any] = {"item": link.to_json()}
            if previous is not None:
                inputs["items"] = previous.to_json()
            graph[f"collect{i}"] = {"class_type": "ListAppend", "inputs": inputs}
            previous = Link(f"collect{i}", 0)
        assert previous is not None
        return previous


class Repeat(_Loop):
    """Run a body template N rounds, feeding each round's result to the next; every round is kept."""

    initial = Input(ANY, tooltip="The first round's LoopInput 'value'.")
    rounds = Input(INT, default=3, min=1, max=100)
    body = Input(STRING, default="", multiline=True,
                 tooltip="API-format sub-graph with LoopInput (value/index/contextN) and one LoopOutput.")
    context1 = Input(ANY, optional=True)
    context2 = Input(ANY, optional=True)
    context3 = Input(ANY, optional=True)
    context4 = Input(ANY, optional=True)
    outputs = (Output(ANY, "final"), Output(ANY, "all_rounds", is_list=True))

    def execute(self, initial, rounds, body, context1=None, context2=None, context3=None,
                context4=None) -> NodeResult:
        template = parse_body(body)
        graph: dict[str, dict] = {}
        ctx = self.contexts(graph, {"context1": context1, "context2": context2, "context3": context3,
                                    "context4": context4})
        current = self.value_node(graph, initial)
        results = []
        for r in range(rounds):
            values = {**ctx, "value": current, "index": self.value_node(graph, r)}
            current = unroll(template, f"r{r + 1}.", values, graph)
            results.append(current)
        return NodeResult(outputs=(current, self.collect(graph, results)), expand=graph)


class ForEach(_Loop):
    """Run a body template once per item of a list; the results form a list."""

    takes_lists = True
    items = Input(ANY, tooltip="A list (each item is one LoopInput 'value').")
    body = Input(STRING, default="", multiline=True,
                 tooltip="API-format sub-graph with LoopInput (value/index/contextN) and one LoopOutput.")
    context1 = Input(ANY, optional=True)
    context2 = Input(ANY, optional=True)
    context3 = Input(ANY, optional=True)
    context4 = Input(ANY, optional=True)
    outputs = (Output(ANY, "results", is_list=True),)

    def execute(self, items, body, context1=None, context2=None, context3=None, context4=None) -> NodeResult:
        template = parse_body(body[0])
        if not items:
            raise ValueError("input 'items' is an empty list; ForEach needs at least one item")
        graph: dict[str, dict] = {}
        first = lambda v: v[0] if v else None  # noqa: E731 - contexts arrive as lists (takes_lists)
        ctx = self.contexts(graph, {"context1": first(context1), "context2": first(context2),
                                    "context3": first(context3), "context4": first(context4)})
        results = []
        for i, item in enumerate(items):
            values = {**ctx, "value": self.value_node(graph, item), "index": self.value_node(graph, i)}
            results.append(unroll(template, f"i{i + 1}.", values, graph))
        return NodeResult(outputs=(self.collect(graph, results),), expand=graph)
