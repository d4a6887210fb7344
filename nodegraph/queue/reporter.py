"""One job's executor events as ComfyUI WebSocket messages, for the client that submitted it.

:class:`RunReporter` is an event listener (called on whichever thread emits; on the Ray runner, the
lane thread that replays the actor's events). Traffic per prompt is linear in its nodes:
``executing`` / ``node_finished`` per node, ``executed`` per node with UI data, ``progress`` per step;
no whole-graph ``progress_state``. Messages marked ``keep`` also go into the job's history; the
timestamps of the kept ``execution_start`` and of the last kept ``execution_success`` /
``execution_error`` / ``execution_interrupted`` are the run's start and end in its history entry.

What a client gets depends on what it announced (:class:`~nodegraph.queue.messages.ClientFeatures`),
as in ComfyUI:

* live previews only when it asked (``extra_data.preview_method``, or our ``nodegraph_previews``
  flag; ComfyUI's default sends none); a preview waits for its node's next ``progress`` and follows
  it, so a client never sees a node's image before that node's first ``progress`` (ComfyUI sends
  ``progress`` then the preview of that step; some clients hang otherwise). Between two ``progress``
  messages the latest preview wins; one still waiting when its node ends is dropped;
* images a node sends as results (``SaveImageWebsocket``) always, in the order the node sent them;
* frames as ``PREVIEW_IMAGE_WITH_METADATA`` when it announced ``supports_preview_metadata``;
* ``node_finished`` and ``node_warning`` (ours) only when it announced ``nodegraph_events``.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from ..events import (Event, ExecutionBlocked, ExecutionDone, ExecutionInterrupted, ExecutionStarted, NodeFailed,
                      NodeFinished, NodeImage, NodeMessage, NodePreview, NodeProgress, NodesCached, NodeStarted,
                      NodeWarning)
from .messages import (ClientFeatures, encode, encode_preview, executing_tail, executing_with, image_frame, now_ms,
                       wants_previews)
from .protocol import EventSink
from .store import Job

log = logging.getLogger(__name__)

#: the kept messages that end a run (ComfyUI's jobs API reads the end time from the same ones)
END_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")


class RunReporter:
    """An event listener for one job: WS messages to its client, history messages kept.

    ``on_started(prompt_id)`` is called when the engine starts the job (a runner applies an interrupt
    that arrived earlier); ``stopping()`` says the runner is shutting down (an interrupt then is not
    reported: the job goes back to the queue)."""

    def __init__(self, job: Job, events: EventSink, *, preview_size: int = 512,
                 on_started: Callable[[str], None] | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.job = job
        self.client = job.client_id
        self.events = events
        self.preview_size = preview_size
        self.on_started = on_started
        self.stopping = stopping
        self.messages: list[list] = []
        self.cached_sent = False
        self.last_node: str | None = None
        #: the prompt id and the end of its ``executing`` messages (encoded once)
        self._tail: tuple[str | None, str] = (None, "")
        #: node → its latest preview, waiting for the node's next ``progress``
        self.held: dict[str, NodePreview] = {}
        #: held while a progress message and its preview are posted (nodes run on several threads)
        self.pairing = threading.Lock()
        #: node → the node the canvas shows it as (image frames' metadata)
        self.display: dict[str, str] = {}
        #: the run's start and end (seconds since the epoch), from the kept messages' timestamps
        self.started: float | None = None
        self.ended: float | None = None

    def send(self, type_: str, data: dict, keep: bool = False) -> None:
        if keep:
            self.messages.append([type_, data])
            stamp = data.get("timestamp")
            if isinstance(stamp, (int, float)):
                if type_ == "execution_start":
                    self.started = stamp / 1000.0
                elif type_ in END_MESSAGES:
                    self.ended = stamp / 1000.0
        self.events.post(self.client, encode(type_, data))

    def features(self) -> ClientFeatures | None:
        """What the job's client announced; ``None`` when it is not connected (or the job has none)."""
        return None if self.client is None else self.events.client_features(self.client)

    def frame(self, node_id: str, encode_frame: Callable[[dict | None], bytes]) -> bytes | None:
        """One binary image frame for the client (with metadata when it understands it); ``None``
        when it is not listening or the image cannot be encoded."""
        features = self.features()
        if features is None:
            return None
        metadata = None
        if features.preview_metadata:
            display = self.display.get(node_id, node_id)
            metadata = {"node_id": node_id, "display_node_id": display,
                        "parent_node_id": display if display != node_id else None,
                        "real_node_id": node_id, "prompt_id": self.job.prompt_id}
        try:
            return encode_frame(metadata)
        except Exception as exc:  # a bad image must not fail the node
            log.debug("image frame encoding failed for node %s: %s", node_id, exc)
            return None

    def _started(self, event: NodeStarted) -> None:
        self.on_node_started(event.prompt_id, event.node_id, event.class_type, event.display_node)

    def on_node_started(self, prompt_id: str, node_id: str, class_type: str, display_node: str) -> None:
        """``NodeStarted`` without the event object (:meth:`EventBus.node_started`): ``executing``."""
        if not self.cached_sent:
            self.ensure_cached_sent()
        self.last_node = node_id
        self.display[node_id] = display_node or node_id
        known, tail = self._tail
        if prompt_id != known:
            self._tail = prompt_id, tail = prompt_id, executing_tail(prompt_id)
        self.events.post(self.client, executing_with(node_id, display_node, tail))

    def _finished(self, event: NodeFinished) -> None:
        self.on_node_finished(event.prompt_id, event.node_id, event.class_type, event.display_node,
                              event.seconds, event.cached, event.ui, event.output_node)

    def on_node_finished(self, prompt_id: str, node_id: str, class_type: str, display_node: str, seconds: float,
                         cached: bool, ui: dict | None, output_node: bool) -> None:
        """``NodeFinished`` without the event object (:meth:`EventBus.node_finished`): ``executed`` for
        a node with UI data, ``node_finished`` for a client that announced our events."""
        if self.held:
            self.held.pop(node_id, None)
        if ui is not None:
            self.send("executed", {"node": node_id, "display_node": display_node, "output": ui,
                                   "prompt_id": prompt_id})
        features = self.features()
        if features is not None and features.extra_events:
            self.send("node_finished", {"node": node_id, "prompt_id": prompt_id, "seconds": round(seconds, 6),
                                        "cached": cached})

    def ensure_cached_sent(self) -> None:
        if not self.cached_sent:
            self.cached_sent = True
            self.send("execution_cached", {"nodes": [], "prompt_id": self.job.prompt_id,
                                           "timestamp": now_ms()}, keep=True)

    def __call__(self, event: Event) -> None:
        kind = type(event)
        if kind is NodeStarted:  # the two events of every node first: their cost is a per-node cost
            self._started(event)
            return
        if kind is NodeFinished:
            self._finished(event)
            return
        pid = event.prompt_id
        if isinstance(event, NodeProgress):
            held = self.held.pop(event.node_id, None)
            frame = None if held is None else self.frame(
                held.node_id, lambda meta: encode_preview(held.image, self.preview_size, meta))
            with self.pairing:  # the preview right after its progress, even when nodes run at once
                self.send("progress", {"value": event.value, "max": event.max, "prompt_id": pid,
                                       "node": event.node_id})
                if frame is not None:
                    self.events.post(self.client, frame)
        elif isinstance(event, NodePreview):
            if wants_previews(self.features(), self.job.extra_data):
                self.held[event.node_id] = event  # goes out right after the node's next progress
        elif isinstance(event, NodeImage):
            frame = self.frame(event.node_id, lambda meta: image_frame(event.data, event.image_format, meta))
            if frame is not None:
                self.events.post(self.client, frame)
        elif isinstance(event, NodeStarted):
            self._started(event)
        elif isinstance(event, NodeFinished):
            self._finished(event)
        elif isinstance(event, NodesCached):
            first = not self.cached_sent  # later ones: nodes found in the cache in lazy branches
            self.cached_sent = True
            self.send("execution_cached", {"nodes": list(event.node_ids), "prompt_id": pid,
                                           "timestamp": now_ms()}, keep=first)
        elif isinstance(event, ExecutionStarted):
            self.send("execution_start", {"prompt_id": pid, "timestamp": now_ms()}, keep=True)
            if self.on_started is not None:
                self.on_started(pid)
        elif isinstance(event, NodeFailed):
            self.held.pop(event.node_id, None)
            self.ensure_cached_sent()
            self.send("execution_error", {
                "prompt_id": pid, "node_id": event.node_id, "node_type": event.class_type,
                "executed": list(event.executed), "exception_message": event.exception_message,
                "exception_type": event.exception_type, "traceback": list(event.traceback),
                "current_inputs": event.inputs, "current_outputs": list(event.executed),
                "timestamp": now_ms()}, keep=True)
        elif isinstance(event, NodeWarning):  # ours, as node_finished: only to clients that announced them
            features = self.features()
            if features is not None and features.extra_events:
                self.send("node_warning", {"node": event.node_id, "node_type": event.class_type,
                                           "message": event.message, "prompt_id": event.prompt_id})
        elif isinstance(event, NodeMessage):  # a custom node's send_sync: as it is, not kept in history
            self.events.post(event.client_id or self.client, encode(event.event, event.data))
        elif isinstance(event, ExecutionBlocked):  # as ComfyUI: an error message, not kept; the run goes on
            self.send("execution_error", {
                "prompt_id": pid, "node_id": event.node_id, "node_type": event.class_type,
                "executed": list(event.executed), "exception_message": f"Execution Blocked: {event.message}",
                "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [],
                "current_outputs": [], "timestamp": now_ms()})
        elif isinstance(event, ExecutionInterrupted):
            self.held.clear()
            if self.stopping():
                return  # shutdown: the job goes back to the queue, nothing to report
            self.ensure_cached_sent()
            self.send("execution_interrupted", {
                "prompt_id": pid, "node_id": event.node_id, "node_type": event.class_type,
                "executed": list(event.executed), "timestamp": now_ms()}, keep=True)
        elif isinstance(event, ExecutionDone):
            self.ensure_cached_sent()
            if event.status == "success":
                self.send("execution_success", {"prompt_id": pid, "timestamp": now_ms()}, keep=True)
