"""WebSocket clients and message delivery.

Every connection has its own outgoing queue drained by one sender task, so messages reach a client in
the order they were posted and a slow client never blocks the engine or other clients. Messages arrive
from the job runner's threads (the hub is the runner's :class:`~nodegraph.queue.protocol.EventSink`);
:meth:`WebSocketHub.post` hands them to the event loop with ``loop.call_soon_threadsafe`` — the only
thread-crossing point.

Routing is stricter than ComfyUI: a prompt's events go only to the client that submitted it (none
when it gave no ``client_id``); only ``status`` is broadcast.

A client says what it understands in a ``{"type": "feature_flags", "data": {...}}`` message (ComfyUI's
frontend sends it first on every connection); the hub keeps it per connection
(:class:`~nodegraph.queue.messages.ClientFeatures`, answered through ``client_features``) and replies
with the server's flags. A client that announces nothing gets what ComfyUI sends by default: no live
previews, no nodegraph-only messages, ``PREVIEW_IMAGE`` frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import WSMsgType, web

from ..queue.messages import ClientFeatures, encode
from ..queue.protocol import Message
from .features import FEATURES

log = logging.getLogger(__name__)

#: a client this far behind is disconnected rather than buffered without bound
MAX_BACKLOG = 20_000


@dataclass(eq=False)
class WsClient:
    client_id: str
    ws: web.WebSocketResponse
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    #: what it announced (replaced as a whole, so runner threads read it without a lock)
    features: ClientFeatures = field(default_factory=ClientFeatures)

    def offer(self, message: Message) -> None:
        if self.outbox.qsize() >= MAX_BACKLOG:
            log.warning("websocket client %s is %d messages behind; disconnecting it", self.client_id,
                        MAX_BACKLOG)
            asyncio.ensure_future(self.ws.close(message=b"too slow"))
            return
        self.outbox.put_nowait(message)

    async def pump(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            try:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
            except (ConnectionError, RuntimeError):
                return


class WebSocketHub:
    """Connected clients by id; post messages from any thread, deliver on the event loop.

    It is the job runner's :class:`~nodegraph.queue.protocol.EventSink` (``post``, ``post_status``,
    ``is_connected``, ``client_features``); ``status_source`` gives the ``status`` message to broadcast."""

    #: ``status`` broadcasts are coalesced over this many seconds (one per burst, latest count)
    STATUS_DELAY = 0.05

    def __init__(self, status_source: Callable[[], Message] | None = None) -> None:
        self.clients: dict[str, WsClient] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.status_source = status_source
        self._status_timer: asyncio.TimerHandle | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # -- from any thread --------------------------------------------------------------------------

    def post(self, client_id: str | None, message: Message) -> None:
        """Deliver to one client (``None``: to nobody), from any thread."""
        if client_id is None or self.loop is None or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver, client_id, message)
        except RuntimeError:  # loop closed while shutting down
            pass

    def is_connected(self, client_id: str) -> bool:
        return client_id in self.clients

    def client_features(self, client_id: str) -> ClientFeatures | None:
        client = self.clients.get(client_id)
        return None if client is None else client.features

    def post_status(self) -> None:
        """Broadcast a fresh ``status`` soon; bursts (20 clients queueing at once) send one."""
        if self.loop is None or self.loop.is_closed() or self.status_source is None:
            return
        try:
            self.loop.call_soon_threadsafe(self._schedule_status)
        except RuntimeError:
            pass

    # -- on the loop ------------------------------------------------------------------------------

    def _schedule_status(self) -> None:
        if self._status_timer is None and self.loop is not None:
            self._status_timer = self.loop.call_later(self.STATUS_DELAY, self._flush_status)

    def _flush_status(self) -> None:
        self._status_timer = None
        if self.clients and self.status_source is not None:
            self._deliver_all(self.status_source())

    def _deliver(self, client_id: str, message: Message) -> None:
        client = self.clients.get(client_id)
        if client is not None:
            client.offer(message)

    def _deliver_all(self, message: Message) -> None:
        for client in list(self.clients.values()):
            client.offer(message)

    async def serve(self, request: web.Request,
                    greet: Callable[[str], list[Message]]) -> web.WebSocketResponse:
        """Run one connection: register, greet, pump messages until it closes."""
        ws = web.WebSocketResponse(heartbeat=30, compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        previous = self.clients.get(client_id)
        if previous is not None:  # reusing an id replaces the old socket (as ComfyUI)
            previous.outbox.put_nowait(None)
            await previous.ws.close()
        client = WsClient(client_id, ws)
        self.clients[client_id] = client
        for message in greet(client_id):
            client.offer(message)
        sender = asyncio.ensure_future(client.pump())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(client, msg.data)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            if self.clients.get(client_id) is client:
                del self.clients[client_id]
            client.outbox.put_nowait(None)
            try:
                await asyncio.wait_for(sender, timeout=1)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                sender.cancel()
        return ws

    def _on_text(self, client: WsClient, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested past the decoder's depth
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            client.features = ClientFeatures.from_flags(message.get("data"))
            client.offer(encode("feature_flags", dict(FEATURES)))

    async def close_all(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        for client in list(self.clients.values()):
            client.outbox.put_nowait(None)
            try:
                await client.ws.close(code=1001, message=b"server shutdown")
            except Exception:
                pass
        self.clients.clear()
