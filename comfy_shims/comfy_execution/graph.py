"""ComfyUI's ``comfy_execution.graph``: ``ExecutionBlocker`` (nodegraph's own, the executor knows it)
and ``DynamicPrompt``; the scheduler classes are placeholders."""

from __future__ import annotations

from typing import Any

from nodegraph.blocking import ExecutionBlocker
from nodegraph.comfy_compat.dynprompt import DynamicPrompt, NodeNotFoundError
from .._attrs import missing_attribute

__all__ = ["ExecutionBlocker", "DynamicPrompt", "NodeNotFoundError"]


def __getattr__(name: str) -> Any:
    return missing_attribute("comfy_execution.graph", name)
