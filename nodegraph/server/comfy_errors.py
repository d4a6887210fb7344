"""Validation errors in ComfyUI's ``POST /prompt`` shape (COMFY_COMPAT §7).

Our :class:`~nodegraph.errors.NodeError` kinds map to ComfyUI's ``errors[].type`` where they differ;
our own kind is kept in ``extra_info.kind``. Node-less problems become the top-level ``error``.
"""

from __future__ import annotations

from typing import Any

from ..context import Paths
from ..errors import NodeError
from ..registry import NodeRegistry
from ..validation import PROMPT_KINDS
from ..workflow.api_format import Workflow

#: our kind → ComfyUI's ``errors[].type`` (kinds not listed keep their name)
COMFY_TYPES = {
    "value_below_min": "value_smaller_than_min",
    "value_above_max": "value_bigger_than_max",
    "invalid_value": "invalid_input_type",
    "link_required": "bad_linked_input",
}

#: ComfyUI's short ``message`` per type; our sentence goes in ``details``
COMFY_MESSAGES = {
    "required_input_missing": "Required input is missing",
    "bad_linked_input": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
    "return_type_mismatch": "Return type mismatch between linked nodes",
    "invalid_input_type": "Failed to convert an input value to the declared type",
    "value_smaller_than_min": "Value smaller than min",
    "value_bigger_than_max": "Value bigger than max",
    "value_not_in_list": "Value not in list",
    "custom_validation_failed": "Custom validation failed for node",
    "exception_during_validation": "Exception when validating node",
    "unknown_node_type": "Node type not found",
    "invalid_node": "Node is missing the class_type property",
}


#: prompt-level kinds that belong to one node: listed in ``node_errors`` too (ComfyUI leaves them out)
NODE_BOUND_PROMPT_KINDS = frozenset({"unknown_node_type", "invalid_node"})


def error(type_: str, message: str, details: str = "", **extra_info: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def comfy_node_error(e: NodeError, registry: NodeRegistry, paths: Paths | None) -> dict[str, Any]:
    type_ = COMFY_TYPES.get(e.kind, e.kind)
    extra: dict[str, Any] = {"kind": e.kind}
    if e.input_name:
        extra["input_name"] = e.input_name
        cls = registry.get(e.class_type or "")
        spec = cls.INPUTS.get(e.input_name) if cls else None
        if spec is not None:
            try:
                config = spec.spec(paths)
                if isinstance(config[0], list) and len(config[0]) > 20:
                    config = None  # ComfyUI leaves out long combo lists
                extra["input_config"] = config
            except Exception:  # a choices callable failing must not hide the real error
                pass
    extra.update({k: v for k, v in e.extra.items() if k not in extra})
    return error(type_, COMFY_MESSAGES.get(type_, type_.replace("_", " ").capitalize()), e.message, **extra)


def output_ancestry(api: dict, registry: NodeRegistry) -> dict[str, set[str]]:
    """For each output node id: itself and every node it depends on (``dependent_outputs`` of an
    error response)."""
    try:
        workflow = Workflow.from_api(api)
    except Exception:
        return {}
    result: dict[str, set[str]] = {}
    for nid, node in workflow.nodes.items():
        cls = registry.get(node.class_type)
        if not (cls and cls.output_node):
            continue
        seen: set[str] = set()
        stack = [nid]
        while stack:
            cur = stack.pop()
            if cur in seen or cur not in workflow.nodes:
                continue
            seen.add(cur)
            stack.extend(link.node_id for _, link in workflow.nodes[cur].links())
        result[nid] = seen
    return result


def prompt_error_response(errors: list[NodeError], api: dict, registry: NodeRegistry,
                          paths: Paths | None) -> dict[str, Any]:
    """``{"error": {…}, "node_errors": {…}}`` for a prompt that failed validation. An error of a
    :data:`~nodegraph.validation.PROMPT_KINDS` kind becomes the top-level error.

    Stricter than ComfyUI, which stops at an unknown class (or a node without ``class_type``) and
    answers with that alone and empty ``node_errors``: here ``node_errors`` holds every node's errors
    at once — the unknown node's own (``unknown_node_type`` / ``invalid_node``) and the other nodes'
    input errors — so a client can mark all of them in one round trip; the top-level ``error`` is
    still ComfyUI's (``Cannot execute because node … does not exist.``)."""
    whole = [e for e in errors if e.kind in PROMPT_KINDS]
    per_node = [e for e in errors if e.node_id is not None and
                (e.kind not in PROMPT_KINDS or e.kind in NODE_BOUND_PROMPT_KINDS)]
    node_errors: dict[str, Any] = {}
    ancestry = output_ancestry(api, registry) if per_node else {}
    for e in per_node:
        entry = node_errors.setdefault(e.node_id, {
            "errors": [], "class_type": e.class_type,
            "dependent_outputs": sorted(o for o, anc in ancestry.items() if e.node_id in anc)})
        entry["errors"].append(comfy_node_error(e, registry, paths))
    if whole:
        first = whole[0]
        extra = {"kind": first.kind, "node_id": first.node_id, **first.extra,
                 "problems": [e.message for e in whole]}
        if first.kind in ("unknown_node_type", "invalid_node"):
            missing = first.class_type or "?"
            message = (f"Cannot execute because node {missing} does not exist."
                       if first.kind == "unknown_node_type"
                       else "Cannot execute because a node is missing the class_type property.")
            top = error("invalid_prompt", message, f"Node ID '#{first.node_id}'", **extra)
            top["details"] = f"Node ID '#{first.node_id}': {first.message}"
        elif first.kind == "no_outputs":
            top = error("prompt_no_outputs", "Prompt has no outputs", first.message, **extra)
        else:
            top = error("invalid_prompt", "Dependency cycle detected", first.message, **extra)
        return {"error": top, "node_errors": node_errors}
    details = "\n".join(f"{err['message']}: {err['details']}"
                        for entry in node_errors.values() for err in entry["errors"])
    return {"error": error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
            "node_errors": node_errors}


def bad_request(type_: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    """A request-level error body (``node_errors`` empty), for the non-validation 4xx answers."""
    return {"error": error(type_, message, details, **extra), "node_errors": {}}
