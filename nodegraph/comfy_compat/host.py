"""What the ComfyUI helper modules see of the process: folders, the node registry, the server.

ComfyUI's helper modules are process-wide (``folder_paths.get_input_directory()``, ``nodes
.NODE_CLASS_MAPPINGS``, ``PromptServer.instance``); packs read them at import time, before any node
runs. One :data:`HOST` record holds what they read: the engine's :class:`~nodegraph.context.Paths`,
the registry whose nodes ``nodes`` exposes, and — when a server runs — a :class:`ServerBinding` that
delivers messages to WebSocket clients. The loader binds paths and registry before importing packs;
the server binds itself when it starts. Inside a running node, the node's own run (its paths, its
client) wins over these process-wide values (:mod:`nodegraph.comfy_compat.current`).

Several engines in one process (tests) share this record: the last one bound is what packs see
outside a run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..context import Paths
from .current import current_node
from .routes import RouteRecorder

if TYPE_CHECKING:  # pragma: no cover
    from ..registry import NodeRegistry


class ServerBinding(Protocol):
    """The server side of ``PromptServer.instance``, for messages sent outside a running node."""

    #: the server's event loop (packs schedule coroutines on it)
    loop: Any

    def send(self, event: str, data: Any, client_id: str | None) -> None:
        """A ``{"type": event, "data": data}`` message to ``client_id``, or to every client (``None``)."""


@dataclass
class Host:
    paths: Paths = field(default_factory=Paths)
    device: str = "cpu"
    registry: "NodeRegistry | None" = None
    server: ServerBinding | None = None
    #: the HTTP routes packs declared (``PromptServer.instance.routes``)
    routes: RouteRecorder = field(default_factory=RouteRecorder)
    #: the ``custom_nodes`` folders packs were loaded from (``folder_paths`` lists them)
    custom_nodes_dirs: tuple[Path, ...] = ()
    #: called when the registry is bound (the ``nodes`` helper rebuilds NODE_CLASS_MAPPINGS)
    on_registry: list[Callable[["NodeRegistry"], None]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def bind(self, *, paths: Paths | None = None, device: str | None = None,
             registry: "NodeRegistry | None" = None, custom_nodes_dirs: tuple[Path, ...] | None = None) -> None:
        with self.lock:
            if paths is not None:
                self.paths = paths
            if device is not None:
                self.device = device
            if custom_nodes_dirs is not None:
                self.custom_nodes_dirs = tuple(custom_nodes_dirs)
            if registry is not None:
                self.registry = registry
                for hook in list(self.on_registry):
                    hook(registry)

    def bind_server(self, server: ServerBinding | None) -> None:
        """The running server (``None`` when it stops) that messages from outside a node go to."""
        with self.lock:
            self.server = server

    def current_paths(self) -> Paths:
        """The running node's folders, else the bound engine's."""
        ctx = current_node()
        return ctx.paths if ctx is not None else self.paths

    def current_device(self) -> str:
        ctx = current_node()
        return ctx.device if ctx is not None else self.device


#: the one record of the process
HOST = Host()
