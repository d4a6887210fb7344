"""API format → canvas (UI, schema 0.4) format, laid out left to right by depth.

The reverse of :mod:`ui_format`: every node becomes a canvas node with typed input/output slots and
``widgets_values`` in the canvas's order (control values after seed-like widgets, the upload entry
last), every link a litegraph link. ``ui_to_api(api_to_ui(api))`` gives ``api`` back, which the tests
check for every ready workflow. Used to ship ``*.ui.json`` next to each API workflow and by anything
that must show an API workflow on the canvas.
"""

from __future__ import annotations

from typing import Any

from ..errors import WorkflowFormatError
from ..registry import NodeRegistry
from .api_format import Link, Workflow
from .ui_format import declared_inputs, is_canvas_widget, widget_extras

COLUMN_WIDTH = 360
ROW_HEIGHT = 40
NODE_WIDTH = 320


def _depths(workflow: Workflow) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str, trail: frozenset[str]) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in trail:
            raise WorkflowFormatError(f"node {node_id} is part of a cycle")
        producers = [v.node_id for v in workflow.nodes[node_id].inputs.values()
                     if type(v) is Link and v.node_id in workflow.nodes]
        depth[node_id] = 1 + max((visit(p, trail | {node_id}) for p in producers), default=-1)
        return depth[node_id]

    for node_id in workflow.nodes:
        visit(node_id, frozenset())
    return depth


def _empty_widget_value(spec) -> Any:
    """What a fresh canvas widget holds when the input has no default: a combo's first choice, or
    the type's empty value (clamped to the minimum)."""
    if spec.type == "COMBO":
        choices = spec.current_choices()
        return choices[0] if choices else ""
    empty = {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(spec.type, "")
    if spec.type in ("INT", "FLOAT") and spec.min is not None:
        empty = max(empty, spec.min)
    return empty


def integer_ids(api: dict[str, Any]) -> dict[str, str]:
    """Old id → canvas id: kept when every id is a whole number, else 1, 2, 3… in order."""
    if all(str(k).isdigit() for k in api):
        return {str(k): str(k) for k in api}
    return {str(k): str(i) for i, k in enumerate(api, start=1)}


def renumbered(api: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """``api`` with node ids (and the links to them) renamed by ``mapping``."""
    out = {}
    for node_id, node in api.items():
        node = dict(node)
        node["inputs"] = {k: ([mapping.get(v[0], v[0]), v[1]] if isinstance(v, list) and len(v) == 2
                              and isinstance(v[0], str) and isinstance(v[1], int) else v)
                          for k, v in node.get("inputs", {}).items()}
        out[mapping[str(node_id)]] = node
    return out


def api_to_ui(api: dict[str, Any], registry: NodeRegistry) -> dict[str, Any]:
    """A canvas workflow for an API-format workflow. The canvas needs integer node ids: other ids
    are renumbered (see :func:`integer_ids`), and the old id becomes the title when there is none."""
    mapping = integer_ids(api)
    if any(k != v for k, v in mapping.items()):
        titled = {k: ({**n, "_meta": {"title": k}} if isinstance(n, dict) and not n.get("_meta") else n)
                  for k, n in api.items()}
        api = renumbered(titled, mapping)
    workflow = Workflow.from_api(api)
    for node_id, node in workflow.nodes.items():
        if registry.get(node.class_type) is None:
            raise WorkflowFormatError(f"node {node_id}: unknown node type {node.class_type!r}")
    depths = _depths(workflow)
    rows: dict[int, int] = {}
    links: list[list[Any]] = []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    ui_nodes: list[dict[str, Any]] = []
    for order, (node_id, node) in enumerate(sorted(workflow.nodes.items(), key=lambda kv: int(kv[0]))):
        cls = registry[node.class_type]
        inputs, widgets_values = [], []
        for spec in declared_inputs(cls):
            value = node.inputs.get(spec.name)
            slot: dict[str, Any] = {"name": spec.name, "type": spec.type, "link": None}
            if is_canvas_widget(cls, spec):
                slot["widget"] = {"name": spec.name}
                constant = value
                if constant is None or type(constant) is Link:   # absent or linked: the widget's default
                    constant = spec.default if spec.has_default else None
                if constant is None:
                    constant = _empty_widget_value(spec)
                widgets_values.append(constant)
                widgets_values.extend({"control": "fixed", "filter": ""}[k] for k in widget_extras(spec))
            if type(value) is Link:
                link_id = len(links) + 1
                source = workflow.nodes.get(value.node_id)
                if source is None:
                    raise WorkflowFormatError(f"node {node_id}: input {spec.name!r} links to missing node {value.node_id}")
                out_type = registry[source.class_type].outputs[value.output].type
                links.append([link_id, int(value.node_id), value.output, int(node_id), len(inputs), out_type])
                outputs_links.setdefault((value.node_id, value.output), []).append(link_id)
                slot["link"] = link_id
            inputs.append(slot)
        if any(spec.image_upload for spec in declared_inputs(cls)):
            widgets_values.append("image")
        column = depths[node_id]
        row = rows.get(column, 0)
        height = 60 + ROW_HEIGHT * max(len(inputs), len(cls.outputs))
        rows[column] = row + height + 40
        ui_node: dict[str, Any] = {
            "id": int(node_id), "type": node.class_type, "pos": [column * COLUMN_WIDTH, row],
            "size": [NODE_WIDTH, height], "flags": {}, "order": order, "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node.class_type},
            "widgets_values": widgets_values,
        }
        if node.title:
            ui_node["title"] = node.title
        ui_nodes.append(ui_node)
    for ui_node in ui_nodes:
        cls = registry[ui_node["type"]]
        ui_node["outputs"] = [{"name": out.display_name, "type": out.type,
                               "links": outputs_links.get((str(ui_node["id"]), index)) or None,
                               "slot_index": index}
                              for index, out in enumerate(cls.outputs)]
    return {"last_node_id": max((n["id"] for n in ui_nodes), default=0), "last_link_id": len(links),
            "nodes": ui_nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
