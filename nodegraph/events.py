"""One typed event stream for a run: the CLI progress bar, the server's WebSocket and tests all read it.

Events are small dataclasses with slots, hashable by value; listeners must not change them. They are
not ``frozen``: a frozen dataclass sets each field through ``object.__setattr__``, ~2.5 µs more per
``NodeFinished`` (eight fields) — a millisecond per 400-node prompt with a listener (the server's
reporter gets two events per node). An :class:`EventBus` fans them out to subscribers; the executor
only ever calls ``bus.emit(event)`` and costs nothing extra when nobody listens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

EventListener = Callable[["Event"], None]


@dataclass(slots=True, unsafe_hash=True)
class Event:
    prompt_id: str


@dataclass(slots=True, unsafe_hash=True)
class ExecutionStarted(Event):
    """A prompt began; ``nodes`` is how many nodes it plans to consider."""
    nodes: int = 0


@dataclass(slots=True, unsafe_hash=True)
class NodesCached(Event):
    """Nodes whose results came from the cache without running."""
    node_ids: tuple[str, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class NodesQueued(Event):
    """Nodes the run now knows it has to execute (not in the cache): first the plan's, then those a
    lazy input asks for or an expansion adds. Every executed node is queued exactly once, so their
    running count is the run's progress total."""
    node_ids: tuple[str, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class NodeStarted(Event):
    node_id: str = ""
    class_type: str = ""
    display_node: str = ""


@dataclass(slots=True, unsafe_hash=True)
class NodeProgress(Event):
    node_id: str = ""
    value: int = 0
    max: int = 0


@dataclass(slots=True, unsafe_hash=True)
class NodePreview(Event):
    """A preview image from inside a running node: ``image`` is a float ``[H,W,C]`` tensor 0..1."""
    node_id: str = ""
    image: Any = None


@dataclass(slots=True, unsafe_hash=True)
class NodeImage(Event):
    """An encoded image a node sends to the client that queued the prompt as a result (ComfyUI's
    ``SaveImageWebsocket``): unlike a preview it is always sent and never scaled. ``data`` is the
    image file's bytes, ``image_format`` ``PNG`` or ``JPEG``."""
    node_id: str = ""
    data: bytes = b""
    image_format: str = "PNG"


@dataclass(slots=True, unsafe_hash=True)
class NodeFinished(Event):
    """A node finished (or was served from cache); ``ui`` is what it shows / stores in history."""
    node_id: str = ""
    class_type: str = ""
    display_node: str = ""
    seconds: float = 0.0
    cached: bool = False
    ui: dict | None = None
    output_node: bool = False


@dataclass(slots=True, unsafe_hash=True)
class NodeFailed(Event):
    node_id: str = ""
    class_type: str = ""
    exception_type: str = ""
    exception_message: str = ""
    traceback: tuple[str, ...] = ()
    inputs: dict[str, list[str]] = field(default_factory=dict)
    executed: tuple[str, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class ExecutionBlocked(Event):
    """A node was not run because an input was an :class:`~nodegraph.blocking.ExecutionBlocker` with a
    message (reported once; the run goes on and may still succeed)."""
    node_id: str = ""
    class_type: str = ""
    message: str = ""
    executed: tuple[str, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class NodeMessage(Event):
    """A message a running node sends to the prompt's client as it is (a custom node pack's
    ``PromptServer.instance.send_sync(event, data)``): ``event`` is the WebSocket message type,
    ``data`` its JSON-able payload. ``client_id``: send to that client instead of the prompt's."""
    node_id: str = ""
    event: str = ""
    data: Any = None
    client_id: str | None = None


@dataclass(slots=True, unsafe_hash=True)
class NodeWarning(Event):
    """A running node's warning for the user (:meth:`~nodegraph.context.NodeContext.warn`): something
    it did not do and goes on without (a LoRA's unmatched keys …). Also logged; a WebSocket client that
    announced ``nodegraph_events`` gets it as our ``node_warning`` message."""
    node_id: str = ""
    class_type: str = ""
    message: str = ""


@dataclass(slots=True, unsafe_hash=True)
class ExecutionInterrupted(Event):
    node_id: str | None = None
    class_type: str | None = None
    executed: tuple[str, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class ExecutionDone(Event):
    """The last event of every run: ``status`` is ``success``, ``error`` or ``interrupted``."""
    status: str = "success"
    seconds: float = 0.0
    executed: int = 0
    cached: int = 0


class EventBus:
    """Fan-out of events to listeners. Thread-safe subscribe/unsubscribe; emit is lock-free.

    The two events of every node have their own entry points, :meth:`node_started` and
    :meth:`node_finished`: a listener with an ``on_node_started`` / ``on_node_finished`` method gets
    the fields as arguments (no event object, no dispatch on its type: on a 400-node prompt this is
    the server's per-node cost); any other listener gets the event as usual."""

    def __init__(self) -> None:
        self._listeners: tuple[EventListener, ...] = ()
        #: per listener, its ``on_node_started`` / ``on_node_finished`` (``None``: it takes events)
        self._started: tuple[tuple[EventListener, Callable | None], ...] = ()
        self._finished: tuple[tuple[EventListener, Callable | None], ...] = ()
        self._lock = threading.Lock()
        self.active = False

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        with self._lock:
            self._set(self._listeners + (listener,))

        def unsubscribe() -> None:
            with self._lock:
                self._set(tuple(l for l in self._listeners if l is not listener))
        return unsubscribe

    def _set(self, listeners: tuple[EventListener, ...]) -> None:
        self._started = tuple((l, getattr(l, "on_node_started", None)) for l in listeners)
        self._finished = tuple((l, getattr(l, "on_node_finished", None)) for l in listeners)
        self._listeners = listeners
        #: whether anyone listens (an attribute, read twice per node: no property call)
        self.active = bool(listeners)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)

    def node_started(self, prompt_id: str, node_id: str, class_type: str, display_node: str) -> None:
        """Emit ``NodeStarted(prompt_id, node_id, class_type, display_node)``."""
        event = None
        for listener, direct in self._started:
            if direct is not None:
                direct(prompt_id, node_id, class_type, display_node)
            else:
                if event is None:
                    event = NodeStarted(prompt_id, node_id, class_type, display_node)
                listener(event)

    def node_finished(self, prompt_id: str, node_id: str, class_type: str, display_node: str, seconds: float,
                      cached: bool, ui: dict | None, output_node: bool) -> None:
        """Emit ``NodeFinished(prompt_id, node_id, class_type, display_node, seconds, cached, ui,
        output_node)``."""
        event = None
        for listener, direct in self._finished:
            if direct is not None:
                direct(prompt_id, node_id, class_type, display_node, seconds, cached, ui, output_node)
            else:
                if event is None:
                    event = NodeFinished(prompt_id, node_id, class_type, display_node, seconds, cached, ui,
                                         output_node)
                listener(event)


class EventRecorder:
    """A listener that keeps every event, for tests and reports."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
