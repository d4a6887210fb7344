"""The server's job runner on Ray: the durable queue feeds N engine actors, one job each at a time.

:class:`RayDispatcher` answers what the server asks of its job runner (``start``, ``stop``,
``notify``, ``interrupt``, ``request_free``, ``queue_remaining``, ``executing_for``) exactly as the
in-process :class:`~nodegraph.server.worker.JobWorker` does, so routes, WebSocket messages and the
SQLite queue are unchanged. Inside:

* one dispatch thread: whenever a job arrives or a worker frees up, it offers the first pending jobs
  to the idle workers (:func:`~nodegraph.cluster.routing.choose`: model affinity, cache affinity,
  least load) and claims each chosen job by id in the store;
* one :class:`WorkerLane` thread per actor: runs the job as a Ray streaming call and feeds the event
  batches, in order, to the job's :class:`~nodegraph.server.worker.RunReporter` (WebSocket messages to
  the submitting client, history messages); output files shipped as bytes are written into the
  server's folders before the event that names them is passed on;
* failover: when the actor dies mid-job (``RayActorError``) the job goes back to the queue through the
  store (same id and number; one history entry when it completes), another worker takes it, and the
  lane starts a replacement actor.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..events import NodeFinished
from ..executor import Engine
from ..server.jobs import HistoryEntry, Job, JobStore
from ..server.worker import JobWorker, RunReporter, now_ms
from ..server.ws import WebSocketHub, encode
from . import ray_setup
from .files import apply_renames, place_files
from .records import EventBatch, FilesShipped, JobOutcome, JobSpec, WorkerSettings, WorkerState, absolute_paths
from .routing import JobNeeds, Waiting, WorkerView, choose, job_needs

log = logging.getLogger(__name__)

#: how many pending jobs (queue order) are offered to idle workers in one round
WINDOW = 64
#: seconds between attempts to start a replacement actor that failed to start
RESPAWN_DELAY = 2.0


class WorkerLane:
    """One engine actor and the thread that runs its jobs, one at a time."""

    def __init__(self, dispatcher: "RayDispatcher", index: int) -> None:
        self.dispatcher = dispatcher
        self.index = index
        self.worker_id = ""
        self.handle: Any = None
        self.state: WorkerState | None = None
        self.alive = False
        self.job: Job | None = None
        self.reporter: RunReporter | None = None
        self.restarts = 0
        #: files renamed on the server when shipped (``(kind, subfolder, name)`` → new name); the
        #: actor's cache still knows the old names
        self.renames: dict[tuple[str, str, str], str] = {}
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None

    def view(self) -> WorkerView:
        return WorkerView(self.index, self.alive, self.busy, self.state)

    def spawn(self) -> Any:
        """Start a new actor (not waiting for it); returns the handle's ``ready`` reference."""
        self.worker_id = f"w{self.index}-{uuid.uuid4().hex[:6]}"
        self.renames = {}
        self.handle = ray_setup.spawn(self.worker_id, self.dispatcher.settings, self.dispatcher.resources)
        return self.handle.ready.remote()

    def started(self, state: WorkerState) -> None:
        self.state = state
        self.alive = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"nodegraph-lane-{self.index}",
                                            daemon=True)
            self._thread.start()

    def assign(self, job: Job) -> None:
        self.job = job
        self._inbox.put(job)

    def close(self) -> None:
        self._inbox.put(None)

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            try:
                self.dispatcher.run_job(self, job)
            except Exception:  # a dispatcher bug must not kill the lane or leave the job hanging
                log.exception("job %s crashed lane %d", job.prompt_id, self.index)
                self.dispatcher.finish_internal_error(job)
            finally:
                self.job = None
                self.reporter = None
                self.dispatcher.notify()

    def replace(self) -> None:
        """Kill what is left of the actor and start a new one (retrying until it starts or we stop)."""
        import ray

        self.alive = False
        try:
            ray.kill(self.handle, no_restart=True)
        except Exception:
            pass
        while not self.dispatcher.stopping:
            try:
                state = ray.get(self.spawn(), timeout=self.dispatcher.start_timeout)
            except Exception as exc:
                log.warning("replacement worker for lane %d did not start: %s", self.index, exc)
                time.sleep(RESPAWN_DELAY)
                continue
            self.restarts += 1
            self.started(state)
            log.warning("lane %d runs on a new worker %s (pid %d)", self.index, self.worker_id, state.pid)
            return


class RayDispatcher:
    """Runs queued jobs on Ray actors; the API thread only enqueues, cancels and interrupts."""

    def __init__(self, engine: Engine, store: JobStore, hub: WebSocketHub, *, address: str | None = "auto",
                 workers: int | None = None, affinity_wait: float = 0.0, ship_outputs: bool | None = None,
                 node_modules: tuple[str, ...] = (), engine_workers: int = 2, device: str | None = None,
                 max_attempts: int = 3, preview_size: int = 512, start_timeout: float = 300.0) -> None:
        self.engine = engine
        self.store = store
        self.hub = hub
        self.address = address
        self.requested_workers = workers
        self.affinity_wait = affinity_wait
        self.max_attempts = max_attempts
        self.preview_size = preview_size
        self.start_timeout = start_timeout
        self.paths = absolute_paths(engine.paths)
        self.settings = WorkerSettings(self.paths, device, engine_workers, _module_folders(node_modules),
                                       tuple(engine.policies), None, ship_outputs)
        self.resources = ray_setup.ActorResources()
        self.lanes: list[WorkerLane] = []
        self.stopping = False
        self.idle = threading.Event()
        self._owns_ray = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._needs: dict[str, tuple[JobNeeds, float]] = {}
        self._restart_reasons: dict[str, str] = {}

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        import ray

        recovered = self.store.recover()
        if recovered:
            log.warning("re-queued %d job(s) interrupted by a crash or restart: %s", len(recovered),
                        ", ".join(recovered))
        self._owns_ray = ray_setup.connect(self.address)
        count, self.resources = ray_setup.plan_workers(self.requested_workers)
        self.settings = replace(self.settings, server_node_id=ray_setup.server_node_id())
        self.lanes = [WorkerLane(self, i) for i in range(count)]
        ready = [lane.spawn() for lane in self.lanes]
        for lane, ref in zip(self.lanes, ready):
            lane.started(ray.get(ref, timeout=self.start_timeout))
        log.info("dispatching to %d Ray worker(s): %s", count, ", ".join(l.worker_id for l in self.lanes))
        self._thread = threading.Thread(target=self._main, name="nodegraph-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop: running jobs are interrupted and go back to the queue; actors are ended."""
        import ray

        self.stopping = True
        self._wake.set()
        for lane in self.lanes:
            if lane.job is not None and lane.alive:
                try:
                    lane.handle.interrupt.remote(lane.job.prompt_id)
                except Exception:
                    pass
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.close()
            lane.join(max(0.1, deadline - time.monotonic()))
        for lane in self.lanes:
            try:
                ray.kill(lane.handle, no_restart=True)
            except Exception:
                pass
        if self._owns_ray:
            ray_setup.disconnect()

    # -- what the server asks (any thread) --------------------------------------------------------

    def notify(self) -> None:
        self._wake.set()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt a running job (``prompt_id``), or every running job when none is named."""
        hit = False
        for lane in self.lanes:
            job = lane.job
            if job is not None and lane.alive and (prompt_id is None or job.prompt_id == prompt_id):
                lane.handle.interrupt.remote(job.prompt_id)
                hit = True
        return hit

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        for lane in self.lanes:
            if lane.alive:
                lane.handle.free.remote(unload_models, free_memory)

    def queue_remaining(self) -> int:
        running, pending = self.store.counts()
        return running + pending

    def status_message(self) -> str:
        return encode("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}})

    def broadcast_status(self) -> None:
        self.hub.post_status()

    def executing_for(self, client_id: str) -> list[tuple[str, str]]:
        """``(prompt_id, node)`` of this client's running jobs (the WebSocket greeting repeats them)."""
        found = []
        for lane in self.lanes:
            job, reporter = lane.job, lane.reporter
            if job is not None and job.client_id == client_id and reporter is not None and reporter.last_node:
                found.append((job.prompt_id, reporter.last_node))
        return found

    def on_started(self, prompt_id: str) -> None:
        """RunReporter hook; an early interrupt is handled by the actor itself."""

    def worker_states(self) -> list[WorkerState | None]:
        return [lane.state for lane in self.lanes]

    # -- dispatching ------------------------------------------------------------------------------

    def _main(self) -> None:
        while not self.stopping:
            try:
                self._dispatch()
            except Exception:
                log.exception("cannot dispatch jobs")
            self._wake.wait(0.5)
            self._wake.clear()

    def _dispatch(self) -> None:
        views = [lane.view() for lane in self.lanes]
        if not any(v.alive and not v.busy for v in views):
            self.idle.clear()
            return
        pending = self.store.jobs("pending", limit=WINDOW)
        if not pending:
            if not any(v.busy for v in views):
                self.idle.set()
            return
        self.idle.clear()
        now = time.monotonic()
        waiting = []
        for job in pending:
            known = self._needs.get(job.prompt_id)
            if known is None:
                known = self._needs[job.prompt_id] = (job_needs(job.prompt, job.outputs_to_execute,
                                                                self.engine), now)
            waiting.append(Waiting(job.prompt_id, known[0], now - known[1]))
        for prompt_id, index in choose(waiting, views, self.affinity_wait):
            self._needs.pop(prompt_id, None)
            job = self.store.claim(prompt_id)
            if job is None:  # cancelled meanwhile
                continue
            self.lanes[index].assign(job)
            self.broadcast_status()
        if len(self._needs) > 4 * WINDOW:  # forget jobs cancelled while pending
            keep = {job.prompt_id for job in pending}
            self._needs = {k: v for k, v in self._needs.items() if k in keep}

    # -- one job on one lane (the lane's thread) --------------------------------------------------

    def run_job(self, lane: WorkerLane, job: Job) -> None:
        import ray

        if self.stopping:  # handed over just as the server stops: back to the queue, untouched
            self.store.requeue(job.prompt_id)
            return
        reporter = RunReporter(self, job)
        lane.reporter = reporter
        if job.attempts > 1:
            reason = self._restart_reasons.pop(job.prompt_id,
                                               "the server stopped while this prompt was running")
            reporter.messages.append(["execution_restarted", {
                "prompt_id": job.prompt_id, "attempt": job.attempts, "timestamp": now_ms(), "reason": reason}])
        if job.attempts > self.max_attempts:
            reporter.send("execution_error", {
                "prompt_id": job.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_type": "TooManyAttempts",
                "exception_message": f"this prompt was interrupted {job.attempts - 1} times (server restarts "
                                     "or workers dying); it was given up so that the queue can go on",
                "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": now_ms()},
                keep=True)
            self._finish(job, JobWorker._entry(job, reporter, "error", {}))
            return
        spec = JobSpec(job.prompt_id, job.prompt, job.extra_data, job.outputs_to_execute)
        outcome: JobOutcome | None = None
        try:
            stream = lane.handle.run.options(num_returns="streaming").remote(spec)
            for ref in stream:
                batch: EventBatch = ray.get(ref)
                for event in batch.events:
                    self._forward(lane, reporter, event)
                if batch.outcome is not None:
                    outcome = batch.outcome
        except ray_setup.dead_actor_errors() as exc:
            self._worker_died(lane, job, exc)
            return
        if outcome is None:
            raise RuntimeError(f"worker {lane.worker_id} ended job {job.prompt_id} without an outcome")
        lane.state = outcome.state or lane.state
        if outcome.status == "invalid":
            self._report_invalid(job, reporter, outcome.validation_error or {})
            return
        if outcome.status == "interrupted" and self.stopping:
            self.store.requeue(job.prompt_id)
            return
        apply_renames(lane.renames, outcome.outputs)
        self._finish(job, JobWorker._entry(job, reporter, "success" if outcome.status == "success" else "error",
                                           outcome.outputs, outcome.meta))

    def _forward(self, lane: WorkerLane, reporter: RunReporter, event: Any) -> None:
        if isinstance(event, FilesShipped):
            lane.renames.update(place_files(list(event.files), self.paths))
            return
        if isinstance(event, NodeFinished) and event.ui is not None and lane.renames:
            ui = {k: [dict(i) if isinstance(i, dict) else i for i in v] if isinstance(v, list) else v
                  for k, v in event.ui.items()}
            apply_renames(lane.renames, {"node": ui})
            event = replace(event, ui=ui)
        reporter(event)

    def _report_invalid(self, job: Job, reporter: RunReporter, error: dict) -> None:
        reporter.send("execution_start", {"prompt_id": job.prompt_id, "timestamp": now_ms()}, keep=True)
        reporter.send("execution_error", {
            "prompt_id": job.prompt_id, "node_id": error.get("node_id"), "node_type": error.get("class_type"),
            "executed": [], "exception_type": error.get("exception_type", "nodegraph.errors.ValidationFailed"),
            "exception_message": error.get("message", ""), "traceback": [], "current_inputs": {},
            "current_outputs": [], "timestamp": now_ms()}, keep=True)
        self._finish(job, JobWorker._entry(job, reporter, "error", {}))

    def _worker_died(self, lane: WorkerLane, job: Job, exc: BaseException) -> None:
        lane.alive = False
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("worker %s died while running %s (%s); the job goes back to the queue",
                    lane.worker_id, job.prompt_id, first_line)
        if not self.stopping:
            self._restart_reasons[job.prompt_id] = (f"worker {lane.worker_id} died while running this prompt: "
                                                    f"{first_line}")
        self.store.requeue(job.prompt_id)
        self.notify()  # another worker may take it now
        lane.replace()

    def _finish(self, job: Job, entry: HistoryEntry) -> None:
        if not self.store.finish(entry):
            log.warning("job %s was no longer running when it finished; history not written", job.prompt_id)
        self.broadcast_status()
        self.hub.post(job.client_id, encode("executing", {"node": None, "prompt_id": job.prompt_id}))

    def finish_internal_error(self, job: Job) -> None:
        self._finish(job, HistoryEntry(
            job.prompt_id, job.number, job.prompt, job.extra_data, job.outputs_to_execute,
            status="error", completed=False, attempts=job.attempts,
            messages=[["execution_error", {"prompt_id": job.prompt_id, "exception_type": "InternalError",
                                           "exception_message": traceback.format_exc(limit=5),
                                           "timestamp": now_ms()}]]))


def _module_folders(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """Each node module with the folder it is imported from here (workers add it when needed)."""
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        folder = None
        if origin and os.path.isfile(origin):
            path = Path(origin).resolve().parent
            for _ in range(name.count(".") + (1 if spec.submodule_search_locations else 0)):
                path = path.parent
            folder = str(path)
        found.append((name, folder))
    return tuple(found)
