"""Custom node packs on the server: their HTTP routes, their frontend files, their WebSocket messages.

* Routes a pack declared while it was imported (``@PromptServer.instance.routes.get(...)``, recorded
  by :mod:`nodegraph.comfy_compat.routes`) are added to the application under each prefix (``""`` and
  ``/api``, as ComfyUI adds them; the ``/comfyui`` aliases too when ComfyUI's frontend is served
  there). A route that clashes with an existing one is skipped with a warning; the pack's routes go
  through the same security middleware (Host, Origin, token) as ours.
* ``WEB_DIRECTORY`` files are served read-only under ``/extensions/<pack>/`` and ``GET /extensions``
  lists their ``.js`` files (:func:`extension_urls`).
* Messages a pack sends outside a running node (from its route, or a thread) reach the WebSocket
  clients through :class:`HubBinding`; messages sent from inside a node travel with the prompt's
  events instead (the run reporter sends them to the prompt's client).

Packs are never loaded or installed through the API: only ``--custom-nodes-dir`` folders and installed
distributions are read, when the server starts.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

from aiohttp import web

from ..comfy_compat.host import HOST
from ..comfy_compat.loader import LoadedPack
from ..comfy_compat.routes import RecordedRoute
from ..queue import messages
from .ws import WebSocketHub

log = logging.getLogger("nodegraph.server")


class HubBinding:
    """``PromptServer.instance``'s way to the clients when no node is running (``HOST.server``)."""

    def __init__(self, hub: WebSocketHub) -> None:
        self.hub = hub

    @property
    def loop(self) -> Any:
        return self.hub.loop

    def send(self, event: str, data: Any, client_id: str | None) -> None:
        message = messages.encode(event, data)
        if client_id:
            self.hub.post(client_id, message)
        else:
            self.hub.broadcast(message)


def loaded_packs(registry: Any) -> list[LoadedPack]:
    return [p for p in getattr(registry, "custom_packs", ()) if isinstance(p, LoadedPack) and p.ok]


def extension_urls(packs: Iterable[LoadedPack]) -> list[str]:
    """``/extensions/<pack>/<file>.js`` for every script of every pack's web folder (sorted per pack)."""
    urls = []
    for pack in packs:
        if pack.web_dir is None:
            continue
        quoted = urllib.parse.quote(pack.name)
        for root, _, files in os.walk(pack.web_dir):
            for name in sorted(files):
                if name.endswith(".js"):
                    relative = Path(root, name).relative_to(pack.web_dir).as_posix()
                    urls.append(f"/extensions/{quoted}/{relative}")
    return urls


def add_pack_routes(app: web.Application, packs: Iterable[LoadedPack], prefixes: Iterable[str]) -> int:
    """Add the packs' routes and web folders to ``app``; returns how many routes were added."""
    prefixes = tuple(prefixes)
    plain = tuple(p for p in prefixes if not p.endswith("/api")) or ("",)
    added = 0
    for pack in packs:
        for route in pack.routes:
            added += _add_route(app, pack, route, prefixes if route.kind == "route" else plain)
        if pack.web_dir is not None:
            for prefix in plain:
                try:
                    app.router.add_static(f"{prefix}/extensions/{pack.name}", pack.web_dir)
                except (ValueError, RuntimeError) as exc:
                    log.warning("custom node pack %s: its web folder cannot be served: %s", pack.name, exc)
    return added


def _add_route(app: web.Application, pack: LoadedPack, route: RecordedRoute, prefixes: tuple[str, ...]) -> int:
    added = 0
    for prefix in prefixes:
        try:
            if route.kind == "static":
                app.router.add_static(prefix + route.path, route.handler, **route.kwargs)
            elif route.kind == "raw":
                if prefix:
                    continue  # a pack's own aiohttp route object: where it said, once
                app.router.add_routes([route.handler])
            else:
                app.router.add_route(route.method, prefix + route.path, route.handler, **route.kwargs)
            added += 1
        except (ValueError, RuntimeError, TypeError) as exc:
            log.warning("custom node pack %s: route %s %s%s not added: %s", pack.name, route.method,
                        prefix, route.path, exc)
    return added


def bind(hub: WebSocketHub | None) -> None:
    """Messages packs send from outside a node go to ``hub``'s clients (``None``: nowhere)."""
    HOST.bind_server(HubBinding(hub) if hub is not None else None)


def unbind(hub: WebSocketHub) -> None:
    """This server stops: messages no longer go to its clients (another server's binding stays)."""
    with HOST.lock:
        if isinstance(HOST.server, HubBinding) and HOST.server.hub is hub:
            HOST.server = None


def load_packs(engine: Any, dirs: Iterable[Path], disabled: Iterable[str] = ()) -> list[LoadedPack]:
    """Load the custom node packs of ``dirs`` into the engine's registry (at start), logging a line
    per pack (its nodes, or why it failed)."""
    from ..comfy_compat import CustomNodeSettings, describe_packs, load_custom_nodes

    settings = CustomNodeSettings(tuple(Path(d) for d in dirs), True, frozenset(disabled))
    packs = load_custom_nodes(engine.registry, settings, paths=engine.paths, device=engine.device)
    for line in describe_packs(packs):
        log.info(line)
    return packs
