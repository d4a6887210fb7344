"""What the server asks of a job runner, and what a runner needs from whoever delivers its messages.

:class:`JobRunner` is implemented by :class:`~nodegraph.queue.local.LocalRunner` (this process's engine
thread) and by ``nodegraph.cluster``'s ``RayRunner`` (engine actors on a Ray cluster). The server
builds one through a :class:`RunnerFactory` (the CLI picks which) and never imports a runner itself.

A runner reports through an :class:`EventSink`: ComfyUI WebSocket messages, already encoded, for one
client; the server's ``WebSocketHub`` is one. Runners never import the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from ..executor import Engine
    from ..plan import Plan
    from .messages import ClientFeatures
    from .store import JobStore

#: one WebSocket message: JSON text, or a binary frame (previews)
Message = str | bytes


@runtime_checkable
class EventSink(Protocol):
    """Where a runner's messages go. Every method may be called from any thread and must not block."""

    def post(self, client_id: str | None, message: Message, *, ends_prompt: bool = False) -> None:
        """Deliver ``message`` to one client (``None``: to nobody). ``ends_prompt``: it is the message
        that ends a prompt (``executing`` with node null): deliver it and what is pending now."""

    def post_status(self) -> None:
        """Broadcast a fresh ``status`` (the queue length changed) soon."""

    def is_connected(self, client_id: str) -> bool:
        """Whether the client is listening now."""

    def client_features(self, client_id: str) -> "ClientFeatures | None":
        """What the client announced it understands (``feature_flags``); ``None`` when it is not
        listening (then no image is encoded for it)."""


@runtime_checkable
class JobRunner(Protocol):
    """Takes jobs from the store, runs them, records their history and reports their events.

    The API thread only enqueues (then calls :meth:`notify`), cancels and interrupts."""

    def start(self) -> None:
        """Re-queue jobs a crash left running, then start taking jobs (may take seconds: Ray)."""

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt running jobs (they go back to the queue, not to history) and stop."""

    def notify(self) -> None:
        """A job was queued: look at the queue now."""

    def prepared(self, prompt_id: str, plan: "Plan", *, prompt: dict | None = None) -> None:
        """The server validated the prompt it has just queued: its plan, which a runner whose engine is
        this process's may run instead of validating the prompt again (one validation walk per prompt),
        and the prompt as parsed (``prompt``), which it need not decode from the job store again.
        A runner may ignore both, and one that took the job before this call validates it itself."""

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running job ``prompt_id`` (any running job when ``None``); ``True`` if one was."""

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """``POST /free``: drop cached outputs and/or unload models, now when idle, else between jobs."""

    def queue_remaining(self) -> int:
        """Jobs running plus jobs pending."""

    def status_message(self) -> str:
        """The encoded ``status`` message (what the hub broadcasts)."""

    def broadcast_status(self) -> None:
        """Tell every client the queue changed."""

    def executing_for(self, client_id: str) -> list[tuple[str, str]]:
        """``(prompt_id, node)`` of this client's running jobs (the WebSocket greeting repeats them)."""


class RunnerFactory(Protocol):
    """Builds the runner once the server has its engine, store and event sink
    (:class:`~nodegraph.queue.local.LocalRunner` itself is one)."""

    def __call__(self, engine: "Engine", store: "JobStore", events: EventSink, *, max_attempts: int,
                 preview_size: int) -> JobRunner: ...
