"""What every job runner does around running a job, in one place: the attempt, the history, the end.

:class:`RunnerBase` holds the store, the event sink and the engine, and gives its runners
(:class:`~nodegraph.queue.local.LocalRunner`, ``nodegraph.cluster``'s ``RayRunner``):

* :meth:`~RunnerBase.begin`: a job's reporter, noting a restart (``execution_restarted``) and giving
  the job up after ``max_attempts`` (``TooManyAttempts``) so that a job that keeps killing the server
  or its actors cannot block the queue;
* :meth:`~RunnerBase.finish` / :meth:`~RunnerBase.finish_invalid` / :meth:`~RunnerBase.finish_crashed`:
  the history entry with its run status (success / error / interrupted, see
  :mod:`~nodegraph.queue.run_status`), start and end times (committed before the final
  ``executing {node: null}`` is sent, so a client that fetches ``/history/{id}`` on that message
  always finds it);
* the queue-wide answers (``queue_remaining``, ``status_message``, ``broadcast_status``,
  ``executing_for``) of the :class:`~nodegraph.queue.protocol.JobRunner` protocol.

A runner adds how jobs are taken and run (``start``, ``stop``, ``notify``, ``interrupt``,
``request_free``) and lists its running jobs in :meth:`~RunnerBase.running`.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import TYPE_CHECKING, Iterable

from . import messages
from .messages import encode, now_ms
from .protocol import EventSink
from .reporter import RunReporter
from .run_status import ERROR, INTERRUPTED, SUCCESS
from .store import HistoryEntry, Job, JobStore

if TYPE_CHECKING:  # pragma: no cover
    from ..executor import Engine
    from ..plan import Plan

log = logging.getLogger(__name__)


def output_meta(plan: "Plan", node_ids: Iterable[str]) -> dict[str, dict]:
    """History ``meta`` for the output nodes that reported UI data (ComfyUI's shape)."""
    meta = {}
    for node_id in node_ids:
        node = plan.nodes.get(node_id)
        meta[node_id] = {"node_id": node_id, "display_node": node.display_node if node else node_id,
                         "parent_node": node.parent if node else None, "real_node_id": node_id}
    return meta


class RunnerBase:
    """The attempt/finish/history logic shared by job runners (see the module docstring)."""

    #: why a job's earlier attempts ended, when the runner knows no better (``execution_restarted``)
    RESTART_REASON = "the server stopped while this prompt was running"
    #: what ended ``{times}`` earlier attempts, in the ``TooManyAttempts`` message
    GIVE_UP_CAUSE = "the server stopped {times} times while running this prompt"

    def __init__(self, engine: "Engine", store: JobStore, events: EventSink, *, max_attempts: int = 3,
                 preview_size: int = 512) -> None:
        self.engine = engine
        self.store = store
        self.events = events
        self.max_attempts = max_attempts
        self.preview_size = preview_size
        self.stopping = False

    # -- queue-wide answers (any thread) ----------------------------------------------------------

    def recover(self) -> list[str]:
        """Put jobs a crash left running back in the queue (at start-up)."""
        recovered = self.store.recover()
        if recovered:
            log.warning("re-queued %d job(s) interrupted by a crash or restart: %s", len(recovered),
                        ", ".join(recovered))
        return recovered

    def queue_remaining(self) -> int:
        running, pending = self.store.counts()
        return running + pending

    def status_message(self) -> str:
        return messages.status(self.queue_remaining())

    def broadcast_status(self) -> None:
        self.events.post_status()

    def running(self) -> list[tuple[Job, RunReporter | None]]:
        """The jobs running now, each with its reporter (``None`` before it has one)."""
        raise NotImplementedError

    def executing_for(self, client_id: str) -> list[tuple[str, str]]:
        return [(job.prompt_id, reporter.last_node) for job, reporter in self.running()
                if job.client_id == client_id and reporter is not None and reporter.last_node]

    def on_started(self, prompt_id: str) -> None:
        """The engine started ``prompt_id`` (a runner applies an interrupt that came before)."""

    def prepared(self, prompt_id: str, plan: "Plan", *, prompt: dict | None = None) -> None:
        """A plan the server made for a prompt it queues (the protocol's; ignored unless a runner
        runs plans of this process's engine)."""

    # -- one job ----------------------------------------------------------------------------------

    def begin(self, job: Job, restart_reason: str | None = None) -> RunReporter | None:
        """The job's reporter, or ``None`` when the job was given up (too many attempts; finished)."""
        reporter = RunReporter(job, self.events, preview_size=self.preview_size, on_started=self.on_started,
                               stopping=lambda: self.stopping)
        if job.attempts > 1:
            reporter.messages.append(["execution_restarted", {
                "prompt_id": job.prompt_id, "attempt": job.attempts, "timestamp": now_ms(),
                "reason": restart_reason or self.RESTART_REASON}])
        if job.attempts > self.max_attempts:
            cause = self.GIVE_UP_CAUSE.format(times=job.attempts - 1)
            reporter.send("execution_error", {
                "prompt_id": job.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_type": "TooManyAttempts",
                "exception_message": f"{cause}; it was given up so that the queue can go on",
                "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": now_ms()},
                keep=True)
            self.finish(job, reporter, "error")
            return None
        return reporter

    def finish(self, job: Job, reporter: RunReporter, status: str, outputs: dict | None = None,
               meta: dict | None = None) -> None:
        """Write the job's history and tell its client it is over.

        ``status``: the run's, ``success``, ``error`` or ``interrupted`` (the engine's result status);
        ComfyUI's ``status_str`` is derived from it. The start is the ``execution_start`` message's
        time (else when the job was claimed), the end the last ending message's (else now)."""
        if status not in (SUCCESS, ERROR, INTERRUPTED):
            raise ValueError(f"job {job.prompt_id}: a run ends in success, error or interrupted, not {status!r}")
        self._record(job, HistoryEntry(
            job.prompt_id, job.number, job.prompt, job.extra_data, job.outputs_to_execute, outputs or {}, status,
            reporter.messages, meta or {}, job.attempts, workflow_name=job.workflow_name, created=job.created,
            started=reporter.started if reporter.started is not None else job.started,
            ended=reporter.ended if reporter.ended is not None else time.time()))

    def finish_invalid(self, job: Job, reporter: RunReporter, *, node_id: str | None, class_type: str | None,
                       message: str, exception_type: str = "nodegraph.errors.ValidationFailed") -> None:
        """The job failed validation where it was about to run (e.g. an input file was removed after
        it was queued): ``execution_start`` and ``execution_error``, then an error entry."""
        reporter.send("execution_start", {"prompt_id": job.prompt_id, "timestamp": now_ms()}, keep=True)
        reporter.send("execution_error", {
            "prompt_id": job.prompt_id, "node_id": node_id, "node_type": class_type, "executed": [],
            "exception_type": exception_type, "exception_message": message, "traceback": [],
            "current_inputs": {}, "current_outputs": [], "timestamp": now_ms()}, keep=True)
        self.finish(job, reporter, "error")

    def finish_crashed(self, job: Job) -> None:
        """A runner bug while running ``job`` (call from the ``except``): an error entry with the
        traceback, so that the job does not hang."""
        self._record(job, HistoryEntry(
            job.prompt_id, job.number, job.prompt, job.extra_data, job.outputs_to_execute,
            state=ERROR, attempts=job.attempts, workflow_name=job.workflow_name, created=job.created,
            started=job.started, ended=time.time(),
            messages=[["execution_error", {"prompt_id": job.prompt_id, "exception_type": "InternalError",
                                           "exception_message": traceback.format_exc(limit=5),
                                           "timestamp": now_ms()}]]))

    def _record(self, job: Job, entry: HistoryEntry) -> None:
        if not self.store.finish(entry):
            log.warning("job %s was no longer running when it finished; history not written", job.prompt_id)
        self.broadcast_status()
        self.events.post(job.client_id, encode("executing", {"node": None, "prompt_id": job.prompt_id}),
                         ends_prompt=True)
