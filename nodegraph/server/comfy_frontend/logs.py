"""The server's log for the frontend's logs panel: ``/internal/logs``, ``/internal/logs/raw``,
``/internal/logs/subscribe``.

A :class:`LogBuffer` (a ``logging`` handler on the root logger, installed while the application runs)
keeps the last :data:`MAX_ENTRIES` records as ComfyUI's entries ``{"t": ISO time, "m": text}``.

* ``GET /internal/logs`` — the entries as one text (``"<t> - <m>"`` lines);
* ``GET /internal/logs/raw`` — ``{"entries": [...], "size": {"cols", "rows"}}``;
* ``PATCH /internal/logs/subscribe`` with ``{"enabled": bool, "clientId": id}`` — while enabled, that
  WebSocket client receives each new record as a ``logs`` message ``{"entries": [entry], "size"}``
  (through the hub's thread-safe ``post``, so records logged on runner threads arrive in order).
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading

from aiohttp import web

from ...queue.messages import encode
from .common import RouteError, json_body
from .state import FrontendState

MAX_ENTRIES = 2000
#: the terminal size ComfyUI reports with its log (the panel wraps at it)
SIZE = {"cols": 120, "rows": 40}


class LogBuffer(logging.Handler):
    """The last records, and the WebSocket clients that want new ones."""

    def __init__(self, post, capacity: int = MAX_ENTRIES) -> None:
        super().__init__(level=logging.INFO)
        self.entries: collections.deque[dict] = collections.deque(maxlen=capacity)
        self.subscribers: set[str] = set()
        self.post = post  # the hub's post(client_id, message), callable from any thread
        self._guard = threading.Lock()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": datetime.datetime.fromtimestamp(record.created).isoformat(timespec="milliseconds"),
                     "m": self.format(record) + "\n"}
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            return
        with self._guard:
            self.entries.append(entry)
            subscribers = list(self.subscribers)
        if subscribers:
            message = encode("logs", {"entries": [entry], "size": SIZE})
            for client_id in subscribers:
                self.post(client_id, message)

    def snapshot(self) -> list[dict]:
        with self._guard:
            return list(self.entries)

    def subscribe(self, client_id: str, enabled: bool) -> None:
        with self._guard:
            (self.subscribers.add if enabled else self.subscribers.discard)(client_id)

    def install(self) -> None:
        logging.getLogger().addHandler(self)

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)


class Logs:
    def __init__(self, state: FrontendState, buffer: LogBuffer) -> None:
        self.state = state
        self.buffer = buffer

    async def text(self, request: web.Request) -> web.Response:
        return web.json_response("".join(f"{e['t']} - {e['m']}" for e in self.buffer.snapshot()))

    async def raw(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": self.buffer.snapshot(), "size": SIZE})

    async def subscribe(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        client_id = body.get("clientId") if isinstance(body, dict) else None
        if not isinstance(client_id, str) or not client_id:
            raise RouteError(400, "invalid_request", "send {\"enabled\": true|false, \"clientId\": \"<id>\"}")
        self.buffer.subscribe(client_id, bool(body.get("enabled")))
        return web.json_response({})
