"""The local runner: this process's engine, on one thread, takes jobs from the store one at a time.

``POST /free`` requests are gathered and applied between jobs (:meth:`Engine.free
<nodegraph.executor.Engine.free>`); an interrupt that arrives before the engine has started the job is
applied when it starts. Stopping interrupts the running job, which goes back to the queue.

The server validates a prompt before queueing it; the plan it made (:meth:`LocalRunner.prepared`) is
run as it is, so a prompt is walked once, and the prompt it parsed is used as it is (its JSON text in
the job store is not decoded again). Plans are kept for the :data:`MAX_PREPARED` newest queued prompts;
an older one (or one queued before a restart) is decoded and validated again when it runs.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from ..errors import ValidationFailed
from ..executor import Engine
from ..heap import RESERVE_LIMIT, TrimGate, prefault_heap, started_with_trim_threshold
from ..heap_populate import HeapPopulator
from ..plan import Plan
from .base import RunnerBase, output_meta
from .protocol import EventSink
from .reporter import RunReporter
from .store import Job, JobStore

log = logging.getLogger(__name__)

#: queued prompts whose server-made plan is kept for the run (each a few hundred KiB at most)
MAX_PREPARED = 64


class LocalRunner(RunnerBase):
    """Runs queued jobs on one thread of this process (a :class:`~nodegraph.queue.protocol.JobRunner`)."""

    def __init__(self, engine: Engine, store: JobStore, events: EventSink, *, max_attempts: int = 3,
                 preview_size: int = 512) -> None:
        super().__init__(engine, store, events, max_attempts=max_attempts, preview_size=preview_size)
        self.current: Job | None = None
        self.current_reporter: RunReporter | None = None
        self.idle = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._interrupt_requested: str | None = None
        self._free: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._plans: OrderedDict[str, tuple[Plan, dict | None]] = OrderedDict()
        self._trim_gate = TrimGate()
        #: bytes of new results the last job left in the cache: the heap reserve to have ready
        self._grown = 0
        #: the reserve stays only where glibc keeps a freed heap top (``nodegraph serve``'s tunables)
        self._prefault = started_with_trim_threshold()
        #: populates the heap's fresh top on another core while jobs run (:mod:`nodegraph.heap_populate`)
        self._populator = HeapPopulator() if self._prefault else None

    # -- control (any thread) ---------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._main, name="nodegraph-jobs", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def prepared(self, prompt_id: str, plan: Plan, *, prompt: dict | None = None) -> None:
        with self._lock:
            self._plans[prompt_id] = (plan, prompt)
            while len(self._plans) > MAX_PREPARED:
                self._plans.popitem(last=False)

    def _take_plan(self, prompt_id: str) -> Plan | None:
        with self._lock:
            prepared = self._plans.pop(prompt_id, None)
        return None if prepared is None else prepared[0]

    def _parsed_prompt(self, prompt_id: str) -> dict | None:
        """The prompt the server parsed, when its plan is still kept (the job store's ``known``)."""
        with self._lock:
            prepared = self._plans.get(prompt_id)
        return None if prepared is None else prepared[1]

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping = True
        current = self.current
        if current is not None:
            self.engine.interrupt(current.prompt_id)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._populator is not None:
            self._populator.close()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        current = self.current
        if current is None or (prompt_id is not None and current.prompt_id != prompt_id):
            return False
        self._interrupt_requested = current.prompt_id
        self.engine.interrupt(current.prompt_id)
        return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            self._free["unload_models"] = self._free.get("unload_models", False) or unload_models
            self._free["free_memory"] = self._free.get("free_memory", False) or free_memory
        self._wake.set()

    def running(self) -> list[tuple[Job, RunReporter | None]]:
        current = self.current
        return [(current, self.current_reporter)] if current is not None else []

    def on_started(self, prompt_id: str) -> None:
        if self._interrupt_requested == prompt_id:  # the interrupt arrived before the engine started
            self.engine.interrupt(prompt_id)

    # -- the thread -------------------------------------------------------------------------------

    def _main(self) -> None:
        while not self.stopping:
            self._apply_free()
            try:
                job = self.store.claim_next(known=self._parsed_prompt)
            except Exception:
                log.exception("cannot read the job queue")
                job = None
            if job is None:
                self.idle.set()
                if self._grown and not self._populating():
                    # nothing queued: have fresh heap ready for the next job's results
                    prefault_heap(self._grown, self._wake)
                    self._grown = 0
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.idle.clear()
            self.current = job
            self._interrupt_requested = None
            self.broadcast_status()
            held_before = self._cache_bytes() if self._prefault else 0
            if self._populator is not None:
                self._populator.job_started()
            try:
                self._run(job)
            except Exception:  # an engine bug must not kill the queue or leave the job hanging
                log.exception("job %s crashed the runner", job.prompt_id)
                self.finish_crashed(job)
            finally:
                self.current = None
                self.current_reporter = None
                if self._populator is not None:
                    self._populator.job_finished()
            held = self._release_memory()  # after the job's end was reported: off its latency
            if self._prefault:
                self._grown = max(0, held - held_before)

    def _release_memory(self) -> int:
        """Give the heap's free memory back to the OS when it may hold enough (:class:`TrimGate`);
        returns the bytes the cache holds."""
        held = self._cache_bytes()
        if self._trim_gate.due(held):
            self.engine.release_memory(keep=RESERVE_LIMIT if self._prefault else 0)
            self._trim_gate.checked(held)
        return held

    def _populating(self) -> bool:
        """Whether the heap populator does the prefault's work (it runs alongside the jobs)."""
        return self._populator is not None and self._populator.supported is not False

    def _cache_bytes(self) -> int:
        stats = getattr(self.engine.cache, "stats", None)
        return stats().ram_bytes if stats is not None else 0

    def _apply_free(self) -> None:
        with self._lock:
            free, self._free = self._free, {}
        if free:
            self.engine.free(unload_models=free["unload_models"], free_memory=free["free_memory"])

    def _run(self, job: Job) -> None:
        reporter = self.begin(job)
        if reporter is None:
            return
        self.current_reporter = reporter
        plan = self._take_plan(job.prompt_id) if job.attempts == 1 else None
        try:
            if plan is None:
                plan = self.engine.validate(job.prompt, job.outputs_to_execute or None, job.extra_data)
        except ValidationFailed as exc:  # e.g. an input file was removed after the prompt was queued
            first = exc.errors[0] if exc.errors else None
            self.finish_invalid(job, reporter, node_id=first.node_id if first else None,
                                class_type=first.class_type if first else None, message=str(exc))
            return
        # the results go into the cache after the client has been told the prompt ended (on this
        # thread, before the next job is taken: that job finds them)
        result = self.engine.execute(plan, prompt_id=job.prompt_id, extra_data=job.extra_data,
                                     listeners=[reporter], defer_cache=True)
        try:
            if result.status == "interrupted" and self.stopping:
                self.store.requeue(job.prompt_id)
                return
            self.finish(job, reporter, result.status, result.outputs, output_meta(plan, result.outputs))
        finally:
            self.engine.store_results(result)
