"""The engine thread: takes jobs from the store one at a time, runs them, records history, reports.

Executor events become ComfyUI WebSocket messages in :class:`RunReporter` (on whichever thread emits
them) and are handed to the hub, which crosses to the event loop. Traffic per prompt is linear in its
nodes: ``executing`` / ``node_finished`` per node, ``executed`` per node with UI data, ``progress``
per step; no whole-graph ``progress_state``.

History is committed before the final ``executing {node: null}`` is sent, so a client that fetches
``/history/{id}`` on that message always finds the entry.
"""

from __future__ import annotations

import gc
import io
import logging
import struct
import threading
import time
import traceback
from typing import Any

from ..errors import ValidationFailed
from ..events import (Event, ExecutionDone, ExecutionInterrupted, ExecutionStarted, NodeFailed,
                      NodeFinished, NodePreview, NodeProgress, NodesCached, NodeStarted)
from ..executor import Engine
from .jobs import HistoryEntry, Job, JobStore
from .ws import WebSocketHub, encode

log = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
JPEG = 1


def now_ms() -> int:
    return int(time.time() * 1000)


def encode_preview(image: Any, max_size: int) -> bytes:
    """Binary frame ``uint32 BE event=1 (PREVIEW_IMAGE)``, ``uint32 BE format=1 (JPEG)``, JPEG bytes."""
    from PIL import Image

    from ..pngmeta import to_uint8

    pil = Image.fromarray(to_uint8(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    pil.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=95)
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + buffer.getvalue()


class RunReporter:
    """An event listener for one job: WS messages to its client, history messages kept."""

    def __init__(self, worker: "JobWorker", job: Job) -> None:
        self.worker = worker
        self.job = job
        self.client = job.client_id
        self.hub = worker.hub
        self.messages: list[list] = []
        self.cached_sent = False
        self.last_node: str | None = None

    def send(self, type_: str, data: dict, keep: bool = False) -> None:
        if keep:
            self.messages.append([type_, data])
        self.hub.post(self.client, encode(type_, data))

    def ensure_cached_sent(self) -> None:
        if not self.cached_sent:
            self.cached_sent = True
            self.send("execution_cached", {"nodes": [], "prompt_id": self.job.prompt_id,
                                           "timestamp": now_ms()}, keep=True)

    def __call__(self, event: Event) -> None:
        pid = event.prompt_id
        if isinstance(event, NodeProgress):
            self.send("progress", {"value": event.value, "max": event.max, "prompt_id": pid,
                                   "node": event.node_id})
        elif isinstance(event, NodePreview):
            if self.client is not None and self.client in self.hub.clients:
                try:
                    self.hub.post(self.client, encode_preview(event.image, self.worker.preview_size))
                except Exception as exc:  # a bad preview must not fail the node
                    log.debug("preview encoding failed: %s", exc)
        elif isinstance(event, NodeStarted):
            self.ensure_cached_sent()
            self.last_node = event.node_id
            self.send("executing", {"node": event.node_id, "display_node": event.display_node,
                                    "prompt_id": pid})
        elif isinstance(event, NodeFinished):
            if event.ui is not None:
                self.send("executed", {"node": event.node_id, "display_node": event.display_node,
                                       "output": event.ui, "prompt_id": pid})
            self.send("node_finished", {"node": event.node_id, "prompt_id": pid,
                                        "seconds": round(event.seconds, 6), "cached": event.cached})
        elif isinstance(event, NodesCached):
            if not self.cached_sent:
                self.cached_sent = True
                self.send("execution_cached", {"nodes": list(event.node_ids), "prompt_id": pid,
                                               "timestamp": now_ms()}, keep=True)
            else:  # nodes found in the cache later in the run (lazy branches)
                self.send("execution_cached", {"nodes": list(event.node_ids), "prompt_id": pid,
                                               "timestamp": now_ms()})
        elif isinstance(event, ExecutionStarted):
            self.send("execution_start", {"prompt_id": pid, "timestamp": now_ms()}, keep=True)
            self.worker.on_started(pid)
        elif isinstance(event, NodeFailed):
            self.ensure_cached_sent()
            self.send("execution_error", {
                "prompt_id": pid, "node_id": event.node_id, "node_type": event.class_type,
                "executed": list(event.executed), "exception_message": event.exception_message,
                "exception_type": event.exception_type, "traceback": list(event.traceback),
                "current_inputs": event.inputs, "current_outputs": list(event.executed),
                "timestamp": now_ms()}, keep=True)
        elif isinstance(event, ExecutionInterrupted):
            if self.worker.stopping:
                return  # shutdown: the job goes back to the queue, nothing to report
            self.ensure_cached_sent()
            self.send("execution_interrupted", {
                "prompt_id": pid, "node_id": event.node_id, "node_type": event.class_type,
                "executed": list(event.executed), "timestamp": now_ms()}, keep=True)
        elif isinstance(event, ExecutionDone):
            self.ensure_cached_sent()
            if event.status == "success":
                self.send("execution_success", {"prompt_id": pid, "timestamp": now_ms()}, keep=True)


class JobWorker:
    """Runs queued jobs on one thread; the API thread only enqueues, cancels and interrupts."""

    def __init__(self, engine: Engine, store: JobStore, hub: WebSocketHub, *, max_attempts: int = 3,
                 preview_size: int = 512) -> None:
        self.engine = engine
        self.store = store
        self.hub = hub
        self.max_attempts = max_attempts
        self.preview_size = preview_size
        self.stopping = False
        self.current: Job | None = None
        self.current_reporter: RunReporter | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._interrupt_requested: str | None = None
        self._free: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.idle = threading.Event()

    # -- control (any thread) ---------------------------------------------------------------------

    def start(self) -> None:
        recovered = self.store.recover()
        if recovered:
            log.warning("re-queued %d job(s) interrupted by a crash or restart: %s", len(recovered),
                        ", ".join(recovered))
        self._thread = threading.Thread(target=self._main, name="nodegraph-jobs", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after interrupting the running job, which goes back to the queue (not to history)."""
        self.stopping = True
        current = self.current
        if current is not None:
            self.engine.interrupt(current.prompt_id)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running job (only if it is ``prompt_id``, when given)."""
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

    def queue_remaining(self) -> int:
        running, pending = self.store.counts()
        return running + pending

    def status_message(self) -> str:
        return encode("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}})

    def executing_for(self, client_id: str) -> list[tuple[str, str]]:
        """``(prompt_id, node)`` of this client's running job, if any (repeated on WS connect)."""
        current, reporter = self.current, self.current_reporter
        if current is not None and current.client_id == client_id and reporter and reporter.last_node:
            return [(current.prompt_id, reporter.last_node)]
        return []

    def broadcast_status(self) -> None:
        self.hub.post_status()

    # -- the thread -------------------------------------------------------------------------------

    def on_started(self, prompt_id: str) -> None:
        if self._interrupt_requested == prompt_id:  # interrupt arrived before the engine started
            self.engine.interrupt(prompt_id)

    def _main(self) -> None:
        while not self.stopping:
            self._apply_free()
            try:
                job = self.store.claim_next()
            except Exception:
                log.exception("cannot read the job queue")
                job = None
            if job is None:
                self.idle.set()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.idle.clear()
            self.current = job
            self._interrupt_requested = None
            self.broadcast_status()
            try:
                self._run(job)
            except Exception:  # an engine bug must not kill the queue or leave the job hanging
                log.exception("job %s crashed the worker", job.prompt_id)
                self._finish(job, HistoryEntry(
                    job.prompt_id, job.number, job.prompt, job.extra_data, job.outputs_to_execute,
                    status="error", completed=False, attempts=job.attempts,
                    messages=[["execution_error", {"prompt_id": job.prompt_id,
                                                   "exception_type": "InternalError",
                                                   "exception_message": traceback.format_exc(limit=5),
                                                   "timestamp": now_ms()}]]))
            finally:
                self.current = None
                self.current_reporter = None

    def _apply_free(self) -> None:
        with self._lock:
            free, self._free = self._free, {}
        if not free:
            return
        if free.get("free_memory"):
            self.engine.cache.clear()
        if free.get("unload_models"):
            from ..models import ModelManager

            for service in self.engine.services.values():
                if isinstance(service, ModelManager):
                    service.free(unload=True)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    def _run(self, job: Job) -> None:
        reporter = RunReporter(self, job)
        self.current_reporter = reporter
        if job.attempts > 1:
            reporter.messages.append(["execution_restarted", {
                "prompt_id": job.prompt_id, "attempt": job.attempts, "timestamp": now_ms(),
                "reason": "the server stopped while this prompt was running"}])
        if job.attempts > self.max_attempts:
            reporter.send("execution_error", {
                "prompt_id": job.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_type": "TooManyAttempts",
                "exception_message": f"the server stopped {job.attempts - 1} times while running this "
                                     "prompt; it was given up so that the queue can go on",
                "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": now_ms()},
                keep=True)
            self._finish(job, self._entry(job, reporter, "error", {}))
            return
        try:
            plan = self.engine.validate(job.prompt, job.outputs_to_execute or None, job.extra_data)
        except ValidationFailed as exc:  # e.g. an input file was removed after the prompt was queued
            reporter.send("execution_start", {"prompt_id": job.prompt_id, "timestamp": now_ms()}, keep=True)
            reporter.send("execution_error", {
                "prompt_id": job.prompt_id, "node_id": exc.errors[0].node_id if exc.errors else None,
                "node_type": exc.errors[0].class_type if exc.errors else None, "executed": [],
                "exception_type": "nodegraph.errors.ValidationFailed", "exception_message": str(exc),
                "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": now_ms()},
                keep=True)
            self._finish(job, self._entry(job, reporter, "error", {}))
            return
        result = self.engine.execute(plan, prompt_id=job.prompt_id, extra_data=job.extra_data,
                                     listeners=[reporter])
        if result.status == "interrupted" and self.stopping:
            self.store.requeue(job.prompt_id)
            return
        meta = {}
        for node_id in result.outputs:
            node = plan.nodes.get(node_id)
            meta[node_id] = {"node_id": node_id, "display_node": node.display_node if node else node_id,
                             "parent_node": node.parent if node else None, "real_node_id": node_id}
        self._finish(job, self._entry(job, reporter, "success" if result.ok else "error", result.outputs,
                                      meta))

    @staticmethod
    def _entry(job: Job, reporter: RunReporter, status: str, outputs: dict,
               meta: dict | None = None) -> HistoryEntry:
        return HistoryEntry(job.prompt_id, job.number, job.prompt, job.extra_data, job.outputs_to_execute,
                            outputs, status, status == "success", reporter.messages, meta or {},
                            job.attempts)

    def _finish(self, job: Job, entry: HistoryEntry) -> None:
        if not self.store.finish(entry):
            log.warning("job %s was no longer running when it finished; history not written", job.prompt_id)
        self.broadcast_status()
        self.hub.post(job.client_id, encode("executing", {"node": None, "prompt_id": job.prompt_id}))
