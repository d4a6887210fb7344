"""ComfyUI's ``server`` module for custom node packs: ``PromptServer.instance``.

* ``send_sync(event, data, sid=None)`` — inside a running node: a message to the client that queued
  the prompt (or to ``sid``), through the run's events, in order with the prompt's other messages
  (ComfyUI sends ``sid=None`` to every client; nodegraph keeps a prompt's messages with its client).
  Outside a node (a pack's route, a thread): to ``sid``, or to every client, through the server;
  without a server (the CLI) it does nothing. ``send`` / ``send_json`` are its ``async`` forms.
* ``routes`` — aiohttp-style decorators (``@PromptServer.instance.routes.get("/my/route")``); the
  server adds them (also under ``/api``) when it builds its application. ``app.add_routes`` and
  ``app.router.add_get`` / ``add_post`` / ``add_route`` / ``add_static`` are recorded the same way.
* ``client_id``, ``last_node_id``, ``last_prompt_id`` — the calling node's prompt client, id and prompt.
* ``loop`` — the server's event loop (``None`` without a server).
* ``add_on_prompt_handler`` is accepted and never called (nodegraph does not let packs rewrite
  prompts); other attributes are placeholders.
"""

from __future__ import annotations

import asyncio  # noqa: F401 - names ComfyUI's server module has, which packs reach through it
import json  # noqa: F401
import logging
import mimetypes  # noqa: F401
import os
import struct  # noqa: F401
import sys  # noqa: F401
import uuid  # noqa: F401
from io import BytesIO  # noqa: F401
from typing import Any

import aiohttp  # noqa: F401
from aiohttp import web  # noqa: F401
from PIL import Image, ImageOps  # noqa: F401
from PIL.PngImagePlugin import PngInfo  # noqa: F401

from nodegraph.comfy_compat.current import current_node
from nodegraph.comfy_compat.host import HOST
from nodegraph.comfy_compat.routes import RecordedRoute
from nodegraph.comfy_compat.unsupported import unsupported_attribute
from nodegraph.events import NodeMessage
from ._attrs import missing_attribute

log = logging.getLogger("nodegraph.custom_nodes")


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


class _Router:
    """``PromptServer.instance.app.router``: the ``add_*`` calls packs make, recorded (packs load before
    the application is built, so the router is not frozen yet)."""

    frozen = False

    def add_route(self, method: str, path: str, handler: Any, **kwargs: Any) -> None:
        HOST.routes.add(RecordedRoute(method.upper(), path, handler, dict(kwargs)))

    def add_get(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("GET", path, handler, **kwargs)

    def add_post(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("POST", path, handler, **kwargs)

    def add_put(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("PUT", path, handler, **kwargs)

    def add_delete(self, path: str, handler: Any, **kwargs: Any) -> None:
        self.add_route("DELETE", path, handler, **kwargs)

    def add_static(self, prefix: str, path: Any, **kwargs: Any) -> None:
        HOST.routes.static(prefix, path, **kwargs)


class _App:
    """``PromptServer.instance.app``: route registration only."""

    def __init__(self) -> None:
        self.router = _Router()

    def add_routes(self, routes: Any) -> None:
        for route in routes:
            HOST.routes.raw(route)

    def __getattr__(self, name: str) -> Any:
        return unsupported_attribute("server.PromptServer.instance.app", name)


class PromptServer:
    instance: "PromptServer"

    def __init__(self) -> None:
        self.routes = HOST.routes
        self.app = _App()
        self.number = 0
        self.supports = ["custom_nodes_from_web"]
        self.web_root = os.path.abspath("web")
        self.on_prompt_handlers: list[Any] = []
        PromptServer.instance = self

    # -- the calling node's prompt --------------------------------------------------------------

    @property
    def client_id(self) -> str | None:
        ctx = current_node()
        return ctx.run.extra_data.get("client_id") if ctx is not None else None

    @property
    def last_node_id(self) -> str | None:
        ctx = current_node()
        return ctx.node_id if ctx is not None else None

    @property
    def last_prompt_id(self) -> str | None:
        ctx = current_node()
        return ctx.prompt_id if ctx is not None else None

    @property
    def loop(self) -> Any:
        server = HOST.server
        return getattr(server, "loop", None) if server is not None else None

    # -- messages -------------------------------------------------------------------------------

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        ctx = current_node()
        if isinstance(event, int):  # binary frames: previews become our previews, the rest is dropped
            if ctx is not None and event in (BinaryEventTypes.UNENCODED_PREVIEW_IMAGE,
                                             BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA):
                from comfy.utils import _preview_tensor

                image = _preview_tensor(data[0] if event == BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA else data)
                if image is not None:
                    ctx.preview(image)
            return
        if ctx is not None:
            if ctx.run.bus.active:
                ctx.run.bus.emit(NodeMessage(ctx.prompt_id, ctx.node_id, str(event), data, sid))
            return
        server = HOST.server
        if server is not None:
            server.send(str(event), data, sid)

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def add_on_prompt_handler(self, handler: Any) -> None:
        log.info("a custom node pack registered an on-prompt handler (%s); nodegraph does not call those",
                 getattr(handler, "__qualname__", handler))
        self.on_prompt_handlers.append(handler)

    def queue_updated(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return missing_attribute("server.PromptServer.instance", name)


PromptServer()


def __getattr__(name: str) -> Any:
    return missing_attribute("server", name)
