"""The Ray runner: the durable queue feeds N engine actors on a Ray cluster, one job each at a time.

:class:`RayRunner` implements the queue's :class:`~nodegraph.queue.protocol.JobRunner` protocol on
the same :class:`~nodegraph.queue.base.RunnerBase` as the local runner (attempts, history, the end of
a job), so routes, WebSocket messages and the SQLite queue are unchanged. Inside:

* one dispatch thread: whenever a job arrives or an actor frees up, it offers the first pending jobs
  to the idle actors (:func:`~nodegraph.cluster.routing.choose`: model affinity, cache affinity,
  least load) and claims each chosen job by id in the store;
* one :class:`ActorLane` thread per actor: runs the job as a Ray streaming call and feeds the event
  batches, in order, to the job's :class:`~nodegraph.queue.reporter.RunReporter` (WebSocket messages
  to the submitting client, history messages); output files shipped as bytes are written into the
  server's folders before the event that names them is passed on;
* failover: when the actor dies mid-job (``RayActorError``) the job goes back to the queue through the
  store (same id and number; one history entry when it completes), another actor takes it, and the
  lane starts a replacement actor.

:func:`ray_runner` makes the :class:`~nodegraph.queue.protocol.RunnerFactory` that the CLI hands to
the server (``nodegraph serve --ray``). Ray itself is imported only when the runner starts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..events import NodeFinished
from ..executor import Engine
from ..queue import EventSink, Job, JobStore, RunnerBase, RunnerFactory, RunReporter
from . import ray_setup
from .files import apply_renames, place_files
from .records import ActorSettings, ActorState, EventBatch, FilesShipped, JobOutcome, JobSpec, absolute_paths
from .routing import ActorView, JobNeeds, Waiting, choose, job_needs

log = logging.getLogger(__name__)

#: how many pending jobs (queue order) are offered to idle actors in one round
WINDOW = 64
#: seconds between attempts to start a replacement actor that failed to start
RESPAWN_DELAY = 2.0


@dataclass(frozen=True)
class RaySettings:
    """How ``nodegraph serve --ray`` runs jobs on Ray.

    ``address``: ``auto`` (the cluster on this machine, or a new local one), ``host:port`` or
    ``ray://…``. ``actors``: engine actors to start (default: one per GPU of the cluster, 1 without
    GPUs). ``affinity_wait``: seconds a job waits for the busy actor holding its models before an idle
    one loads them. ``ship_outputs``: ``None`` ships output files as bytes only from actors on another
    machine; ``True``/``False`` force it. ``node_modules``: extra node modules the actors import (the
    server's ``--nodes-module``). ``device``: the actors' device (``None``: each picks its best).
    """

    address: str | None = "auto"
    actors: int | None = None
    affinity_wait: float = 0.0
    ship_outputs: bool | None = None
    node_modules: tuple[str, ...] = ()
    device: str | None = None
    start_timeout: float = 300.0


def ray_runner(settings: RaySettings) -> RunnerFactory:
    """The factory the server calls to build a :class:`RayRunner` with ``settings``."""
    return partial(RayRunner, settings=settings)


class ActorLane:
    """One engine actor and the thread that runs its jobs, one at a time."""

    def __init__(self, runner: "RayRunner", index: int) -> None:
        self.runner = runner
        self.index = index
        self.actor_id = ""
        self.handle: Any = None
        self.state: ActorState | None = None
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

    def view(self) -> ActorView:
        return ActorView(self.index, self.alive, self.busy, self.state)

    def spawn(self) -> Any:
        """Start a new actor (not waiting for it); returns the handle's ``ready`` reference."""
        self.actor_id = f"a{self.index}-{uuid.uuid4().hex[:6]}"
        self.renames = {}
        self.handle = ray_setup.spawn(self.actor_id, self.runner.actor_settings, self.runner.resources)
        return self.handle.ready.remote()

    def started(self, state: ActorState) -> None:
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
                self.runner.run_job(self, job)
            except Exception:  # a runner bug must not kill the lane or leave the job hanging
                log.exception("job %s crashed lane %d", job.prompt_id, self.index)
                self.runner.finish_crashed(job)
            finally:
                self.job = None
                self.reporter = None
                self.runner.notify()

    def replace(self) -> None:
        """Kill what is left of the actor and start a new one (retrying until it starts or we stop)."""
        import ray

        self.alive = False
        try:
            ray.kill(self.handle, no_restart=True)
        except Exception:
            pass
        while not self.runner.stopping:
            try:
                state = ray.get(self.spawn(), timeout=self.runner.settings.start_timeout)
            except Exception as exc:
                log.warning("replacement actor for lane %d did not start: %s", self.index, exc)
                time.sleep(RESPAWN_DELAY)
                continue
            self.restarts += 1
            self.started(state)
            log.warning("lane %d runs on a new actor %s (pid %d)", self.index, self.actor_id, state.pid)
            return


def custom_node_folders(packs) -> tuple[str, ...]:  # noqa: ANN001 - LoadedPack records
    """The absolute ``custom_nodes`` folders the server's packs came from (the actors load the same)."""
    return tuple(dict.fromkeys(str(Path(p.path).resolve().parent) for p in packs))


class RayRunner(RunnerBase):
    """Runs queued jobs on Ray actors (a :class:`~nodegraph.queue.protocol.JobRunner`)."""

    GIVE_UP_CAUSE = "this prompt was interrupted {times} times (server restarts or actors dying)"

    def __init__(self, engine: Engine, store: JobStore, events: EventSink, *, settings: RaySettings,
                 max_attempts: int = 3, preview_size: int = 512) -> None:
        super().__init__(engine, store, events, max_attempts=max_attempts, preview_size=preview_size)
        self.settings = settings
        self.paths = absolute_paths(engine.paths)
        packs = getattr(engine.registry, "custom_packs", ())
        self.actor_settings = ActorSettings(self.paths, settings.device, engine.threads,
                                            _module_folders(settings.node_modules), tuple(engine.policies),
                                            None, settings.ship_outputs,
                                            custom_nodes=custom_node_folders(packs),
                                            disabled_custom_nodes=tuple(p.name for p in packs if p.disabled))
        self.resources = ray_setup.ActorResources()
        self.lanes: list[ActorLane] = []
        self.idle = threading.Event()
        self._owns_ray = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._needs: dict[str, tuple[JobNeeds, float]] = {}
        self._restart_reasons: dict[str, str] = {}

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        import ray

        self.recover()
        self._owns_ray = ray_setup.connect(self.settings.address)
        count, self.resources = ray_setup.plan_actors(self.settings.actors)
        self.actor_settings = replace(self.actor_settings, server_node_id=ray_setup.server_node_id())
        self.lanes = [ActorLane(self, i) for i in range(count)]
        ready = [lane.spawn() for lane in self.lanes]
        for lane, ref in zip(self.lanes, ready):
            lane.started(ray.get(ref, timeout=self.settings.start_timeout))
        log.info("dispatching to %d Ray actor(s): %s", count, ", ".join(l.actor_id for l in self.lanes))
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

    def running(self) -> list[tuple[Job, RunReporter | None]]:
        return [(lane.job, lane.reporter) for lane in self.lanes if lane.job is not None]

    def actor_states(self) -> list[ActorState | None]:
        return [lane.state for lane in self.lanes]

    # on_started: an early interrupt is handled by the actor itself (RunnerBase's no-op)

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
        for prompt_id, index in choose(waiting, views, self.settings.affinity_wait):
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

    def run_job(self, lane: ActorLane, job: Job) -> None:
        import ray

        if self.stopping:  # handed over just as the server stops: back to the queue, untouched
            self.store.requeue(job.prompt_id)
            return
        reporter = self.begin(job, self._restart_reasons.pop(job.prompt_id, None))
        if reporter is None:
            return
        lane.reporter = reporter
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
            self._actor_died(lane, job, exc)
            return
        if outcome is None:
            raise RuntimeError(f"actor {lane.actor_id} ended job {job.prompt_id} without an outcome")
        lane.state = outcome.state or lane.state
        if outcome.status == "invalid":
            error = outcome.validation_error or {}
            self.finish_invalid(job, reporter, node_id=error.get("node_id"), class_type=error.get("class_type"),
                                message=error.get("message", ""),
                                exception_type=error.get("exception_type", "nodegraph.errors.ValidationFailed"))
            return
        if outcome.status == "interrupted" and self.stopping:
            self.store.requeue(job.prompt_id)
            return
        apply_renames(lane.renames, outcome.outputs)
        self.finish(job, reporter, outcome.status, outcome.outputs, outcome.meta)

    def _forward(self, lane: ActorLane, reporter: RunReporter, event: Any) -> None:
        if isinstance(event, FilesShipped):
            lane.renames.update(place_files(list(event.files), self.paths))
            return
        if isinstance(event, NodeFinished) and event.ui is not None and lane.renames:
            ui = {k: [dict(i) if isinstance(i, dict) else i for i in v] if isinstance(v, list) else v
                  for k, v in event.ui.items()}
            apply_renames(lane.renames, {"node": ui})
            event = replace(event, ui=ui)
        reporter(event)

    def _actor_died(self, lane: ActorLane, job: Job, exc: BaseException) -> None:
        lane.alive = False
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("actor %s died while running %s (%s); the job goes back to the queue",
                    lane.actor_id, job.prompt_id, first_line)
        if not self.stopping:
            self._restart_reasons[job.prompt_id] = (f"actor {lane.actor_id} died while running this prompt: "
                                                    f"{first_line}")
        self.store.requeue(job.prompt_id)
        self.notify()  # another actor may take it now
        lane.replace()


def _module_folders(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """Each node module with the folder it is imported from here (actors add it when needed)."""
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
