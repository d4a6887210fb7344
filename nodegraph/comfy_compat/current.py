"""Which node is running on this thread, for the ComfyUI helper modules packs call from inside a node.

ComfyUI's helpers are module-level functions (``comfy.utils.ProgressBar``, ``PromptServer.instance
.send_sync``, ``comfy.model_management.throw_exception_if_processing_interrupted``); nodegraph has no
global run. The adapter (:mod:`nodegraph.comfy_compat.classic`) marks the thread that calls a pack's
function with that node's :class:`~nodegraph.context.NodeContext`, and the helpers reach the run
through :func:`current_node`: progress goes to that run's events, an interrupt check reads that run's
flag. A thread a pack starts itself has no current node (the helpers then fall back to doing nothing,
or to every client for messages).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from ..context import NodeContext

_local = threading.local()


def current_node() -> "NodeContext | None":
    """The context of the node running on this thread, if a pack function is being called."""
    return getattr(_local, "node", None)


@contextmanager
def running(ctx: "NodeContext") -> Iterator[None]:
    """Mark this thread as running ``ctx``'s node for the duration of the block (nests)."""
    previous = getattr(_local, "node", None)
    _local.node = ctx
    try:
        yield
    finally:
        _local.node = previous
