"""ComfyUI's ``DYNPROMPT`` hidden input: a read-only view of the prompt a node runs in.

Packs that declare ``"hidden": {"dynprompt": "DYNPROMPT"}`` read other nodes through it
(``get_node``, ``has_node``, ``get_original_prompt``, the real/parent/display id helpers). nodegraph
builds it from the prompt as validated (the hidden ``PROMPT``): the workflow's own nodes, not the
children an expansion added at run time (ComfyUI's view has those too); adding ephemeral nodes from a
pack is not supported (a node expands by returning ``{"expand": graph}`` instead).
"""

from __future__ import annotations

from typing import Any

from .unsupported import NotSupportedByNodegraph


class NodeNotFoundError(Exception):
    """``DynamicPrompt.get_node`` of an id that is not in the prompt."""


class DynamicPrompt:
    def __init__(self, original_prompt: dict[str, Any] | None) -> None:
        self.original_prompt = original_prompt or {}

    def get_node(self, node_id: str) -> dict[str, Any]:
        node = self.original_prompt.get(str(node_id))
        if node is None:
            raise NodeNotFoundError(f"node {node_id} is not in the prompt")
        return node

    def has_node(self, node_id: str) -> bool:
        return str(node_id) in self.original_prompt

    def get_original_prompt(self) -> dict[str, Any]:
        return self.original_prompt

    def all_node_ids(self) -> set[str]:
        return set(self.original_prompt)

    def get_real_node_id(self, node_id: str) -> str:
        return str(node_id)

    def get_parent_node_id(self, node_id: str) -> str | None:
        return None

    def get_display_node_id(self, node_id: str) -> str:
        return str(node_id)

    def add_ephemeral_node(self, node_id: str, node_info: dict, parent_id: str, display_id: str) -> None:
        raise NotSupportedByNodegraph("comfy_execution.graph.DynamicPrompt.add_ephemeral_node")
