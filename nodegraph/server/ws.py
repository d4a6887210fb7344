"""WebSocket clients and message delivery.

Every connection has its own outgoing queue drained by one sender task, so messages reach a client in
the order they were posted and a slow client never blocks the engine or other clients. Messages arrive
from the job runner's threads (the hub is the runner's :class:`~nodegraph.queue.protocol.EventSink`);
:meth:`WebSocketHub.post` adds them to a pending deque (no lock: appending and taking are atomic) and
wakes the event loop (``call_soon_threadsafe``) only when it has not been woken for what is pending —
the only thread-crossing point. The loop then waits
:data:`WebSocketHub.FLUSH_DELAY` before handing what is pending to the clients, so a prompt's burst of
events (one or two per node) costs a wake-up of the loop every few milliseconds rather than one per
node, each of which would take the GIL from the engine's thread for the loop's work. The message that
ends a prompt (``executing`` with node ``null``) goes out at once, with everything before it.

Each message is still its own WebSocket frame (ComfyUI's clients parse one JSON message per text frame),
but the sender writes every frame waiting for a client in one transport write: one system call and one
wake-up of the client for a burst instead of one per message, and no task switch per message.

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
import struct
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import WSMsgType, web

from ..queue.messages import ClientFeatures, encode
from ..queue.protocol import Message
from .features import FEATURES

log = logging.getLogger(__name__)

#: a client this far behind is disconnected rather than buffered without bound
MAX_BACKLOG = 20_000
#: the sender waits while the socket holds this many unsent bytes (a slow reader)
HIGH_WATER = 1 << 20

_TEXT, _BINARY = 0x1, 0x2
#: the header of an unfragmented text frame whose payload is shorter than 126 bytes, by length
_SHORT_TEXT_HEADERS = tuple(bytes((0x80 | _TEXT, size)) for size in range(126))


def _header(opcode: int, size: int) -> bytes:
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size)
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, 127, size)


def frame_parts(messages: list[Message]) -> list[bytes]:
    """The unmasked, uncompressed WebSocket frames (RFC 6455 §5.2) of ``messages`` — text for ``str``,
    binary for ``bytes``, what ``send_str``/``send_bytes`` write for a server without compression (the
    hub's connections never negotiate it) — header and payload as separate pieces for one
    ``writelines``; the headers of short text frames (most of a prompt's traffic: one ``executing`` per
    node) are precomputed."""
    parts: list[bytes] = []
    add = parts.append
    short = _SHORT_TEXT_HEADERS
    for message in messages:
        if type(message) is str:
            payload = message.encode()
            size = len(payload)
            add(short[size] if size < 126 else _header(_TEXT, size))
        else:
            payload = message
            add(_header(_BINARY, len(payload)))
        add(payload)
    return parts


def frame(message: Message) -> bytes:
    """One message's frame (:func:`frame_parts`), as one piece."""
    return b"".join(frame_parts([message]))


@dataclass(eq=False)
class WsClient:
    client_id: str
    ws: web.WebSocketResponse
    #: the connection's transport, where the sender writes its frames
    transport: asyncio.BaseTransport | None = None
    #: messages waiting to be sent (``None``: stop the sender)
    outbox: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: what it announced (replaced as a whole, so runner threads read it without a lock)
    features: ClientFeatures = field(default_factory=ClientFeatures)

    def offer(self, message: Message | None) -> None:
        if message is not None and self._behind(1):
            return
        self.outbox.append(message)
        self.wake.set()

    def offer_many(self, messages: list[Message]) -> None:
        """:meth:`offer` each of ``messages`` (none of them ``None``), in order."""
        if self._behind(len(messages)):
            return
        self.outbox.extend(messages)
        self.wake.set()

    def _behind(self, adding: int) -> bool:
        """Whether adding ``adding`` messages would put the client past :data:`MAX_BACKLOG`: it is then
        disconnected rather than buffered without bound."""
        if len(self.outbox) + adding <= MAX_BACKLOG:
            return False
        log.warning("websocket client %s is %d messages behind; disconnecting it", self.client_id, MAX_BACKLOG)
        asyncio.ensure_future(self.ws.close(message=b"too slow"))
        return True

    async def pump(self) -> None:
        """Send what is waiting, all frames of a burst in one write, until ``None`` or a closed socket."""
        outbox, wake = self.outbox, self.wake
        while True:
            await wake.wait()
            wake.clear()
            batch = list(outbox)  # all of it at once (only this loop adds to it)
            outbox.clear()
            stop = None in batch  # ``None``: stop after what came before it
            if stop:
                batch = batch[:batch.index(None)]
            transport = self.transport
            if batch:
                if self.ws.closed or (transport is not None and transport.is_closing()):
                    return
                try:
                    if transport is None:  # no socket transport to write to: aiohttp's writer, one by one
                        for message in batch:
                            await (self.ws.send_bytes(message) if isinstance(message, bytes)
                                   else self.ws.send_str(message))
                    else:
                        transport.writelines(frame_parts(batch))
                        while transport.get_write_buffer_size() > HIGH_WATER and not transport.is_closing():
                            await asyncio.sleep(0.005)  # a slow reader: let the socket drain
                except (ConnectionError, RuntimeError):
                    return
            if stop:
                return


class WebSocketHub:
    """Connected clients by id; post messages from any thread, deliver on the event loop.

    It is the job runner's :class:`~nodegraph.queue.protocol.EventSink` (``post``, ``post_status``,
    ``is_connected``, ``client_features``); ``status_source`` gives the ``status`` message to broadcast."""

    #: ``status`` broadcasts are coalesced over this many seconds (one per burst, latest count)
    STATUS_DELAY = 0.05
    #: posted messages wait this long on the loop for more to come (see the module docstring)
    FLUSH_DELAY = 0.004

    def __init__(self, status_source: Callable[[], Message] | None = None) -> None:
        self.clients: dict[str, WsClient] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.status_source = status_source
        self._status_timer: asyncio.TimerHandle | None = None
        #: messages posted from other threads, not yet handed to their clients
        self._pending: deque[tuple[str, Message]] = deque()
        #: the loop has been woken for what is pending (cleared by the loop before it takes it)
        self._woken = False
        self._flush_timer: asyncio.TimerHandle | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # -- from any thread --------------------------------------------------------------------------

    def post(self, client_id: str | None, message: Message, *, ends_prompt: bool = False) -> None:
        """Deliver to one client (``None``: to nobody), from any thread."""
        loop = self.loop
        if client_id is None or loop is None or loop.is_closed():
            return
        self._pending.append((client_id, message))
        if ends_prompt or not self._woken:  # a prompt ends, or the loop has not been woken for this: wake it
            self._woken = True
            try:
                loop.call_soon_threadsafe(self._deliver_pending if ends_prompt else self._deliver_soon)
            except RuntimeError:  # loop closed while shutting down
                self._woken = False

    def broadcast(self, message: Message) -> None:
        """Deliver to every connected client, from any thread (a custom node pack's message)."""
        if self.loop is None or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver_all, message)
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

    def _deliver_soon(self) -> None:
        if self._flush_timer is None and self.loop is not None:
            self._flush_timer = self.loop.call_later(self.FLUSH_DELAY, self._deliver_pending)

    def _deliver_pending(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        # cleared before taking: a message posted from now on wakes the loop again (and one posted
        # before is taken below)
        self._woken = False
        pending, clients = self._pending, self.clients
        take = pending.popleft
        # handed over a run of messages at a time: a prompt's burst goes to one client
        current: str | None = None
        run: list[Message] = []
        while pending:
            client_id, message = take()
            if client_id != current:
                if run:
                    self._offer_run(clients.get(current), run)
                    run = []
                current = client_id
            run.append(message)
        if run:
            self._offer_run(clients.get(current), run)

    @staticmethod
    def _offer_run(client: WsClient | None, messages: list[Message]) -> None:
        if client is not None:
            client.offer_many(messages) if len(messages) > 1 else client.offer(messages[0])

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
            previous.offer(None)
            await previous.ws.close()
        client = WsClient(client_id, ws, request.transport)
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
            client.offer(None)
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
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for client in list(self.clients.values()):
            client.offer(None)
            try:
                await client.ws.close(code=1001, message=b"server shutdown")
            except Exception:
                pass
        self.clients.clear()
