"""The Ray engine actor: one :class:`~nodegraph.executor.Engine` (own output cache, own model manager)
that runs one job at a time and streams its events back.

:meth:`EngineActor.run` is a generator (a Ray streaming call): the engine runs on a thread of the
actor, its events are queued and yielded in emission order as :class:`EventBatch` es (gathered for a
few milliseconds each), and the last batch carries the :class:`JobOutcome` (outputs, and the actor's
:class:`ActorState` for routing). Output files to ship travel as ``FilesShipped`` events. The actor is
threaded (``max_concurrency`` > 1) so that :meth:`interrupt`, :meth:`free` and :meth:`state` answer
while a job runs.

The class is plain Python; :mod:`nodegraph.cluster.ray_setup` wraps it with ``ray.remote``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import ValidationFailed
from ..events import Event, ExecutionStarted, NodeFinished, NodePreview
from ..queue.base import output_meta
from .files import collect_files
from .records import ActorSettings, ActorState, EventBatch, FilesShipped, JobOutcome, JobSpec

log = logging.getLogger(__name__)

#: events are gathered this long before a batch is sent (progress reaches clients this much later)
COALESCE_S = 0.02


def model_files(loaded: list[dict[str, Any]]) -> frozenset[str]:
    """The file paths named in the model manager's keys (``(path, component, dtype, …)`` tuples)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, (str, os.PathLike)):
            text = os.fspath(value)
            if "/" in text or os.sep in text:
                found.add(text)
        elif isinstance(value, (tuple, list, frozenset, set)):
            for item in value:
                walk(item)

    for entry in loaded:
        walk(entry["key"])
    return frozenset(found)


def import_node_modules(modules: tuple[tuple[str, str | None], ...]) -> list[Any]:
    """Import each module, adding the folder the server found it in to ``sys.path`` if needed."""
    imported = []
    for name, folder in modules:
        try:
            imported.append(importlib.import_module(name))
        except ImportError:
            if folder is None or not Path(folder).is_dir():
                raise
            if folder not in sys.path:
                sys.path.insert(0, folder)
            imported.append(importlib.import_module(name))
    return imported


class EngineActor:
    """An engine in a Ray actor (or any process): ``run`` one job at a time, stream its events."""

    def __init__(self, actor_id: str, settings: ActorSettings) -> None:
        from ..executor import Engine
        from ..registry import default_registry

        self.actor_id = actor_id
        self.settings = settings
        self.node_id = _ray_node_id()
        ship = settings.ship_outputs
        if ship is None:
            ship = settings.server_node_id is not None and self.node_id != settings.server_node_id
        self.ship_outputs = bool(ship)
        paths = settings.paths
        env_models, env_inputs = os.environ.get("NODEGRAPH_MODELS"), os.environ.get("NODEGRAPH_INPUT_DIR")
        paths = dataclasses.replace(paths, models_dir=Path(env_models) if env_models else paths.models_dir,
                                    input_dir=Path(env_inputs) if env_inputs else paths.input_dir)
        if self.ship_outputs:  # no shared disk: write locally, return the files as bytes
            scratch = Path(tempfile.mkdtemp(prefix=f"nodegraph-{actor_id}-"))
            paths = dataclasses.replace(paths, output_dir=scratch / "output", temp_dir=scratch / "temp")
        for folder in (paths.output_dir, paths.temp_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        registry = default_registry()
        for module in import_node_modules(settings.node_modules):
            registry.add_module(module)
        if settings.custom_nodes:  # the server's ComfyUI packs, from the same folders
            from ..comfy_compat import CustomNodeSettings, load_custom_nodes

            load_custom_nodes(registry, CustomNodeSettings(tuple(Path(d) for d in settings.custom_nodes), True,
                                                           frozenset(settings.disabled_custom_nodes)),
                              paths=paths, device=settings.device)
        self.engine = Engine(registry, paths=paths, device=settings.device, threads=settings.threads,
                             policies=settings.policies)
        self.jobs_done = 0
        self._busy = threading.Lock()
        self._interrupt_requested: str | None = None
        self._free: dict[str, bool] = {}
        self._free_lock = threading.Lock()

    # -- control (answered while a job runs) ------------------------------------------------------

    def ready(self) -> ActorState:
        return self.state()

    def state(self) -> ActorState:
        return ActorState(self.actor_id, self.node_id, os.getpid(),
                           model_files(self.engine.services["models"].loaded()),
                           frozenset(self.engine.cache.keys()), self.jobs_done)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running job (or the one about to start, when ``prompt_id`` names it)."""
        if prompt_id is not None:
            self._interrupt_requested = prompt_id
        return self.engine.interrupt(prompt_id)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """``POST /free``: applied now when idle, else before the next job."""
        with self._free_lock:
            self._free["unload_models"] = self._free.get("unload_models", False) or unload_models
            self._free["free_memory"] = self._free.get("free_memory", False) or free_memory
        if self._busy.acquire(blocking=False):
            try:
                self._apply_free()
            finally:
                self._busy.release()

    def _apply_free(self) -> None:
        with self._free_lock:
            free, self._free = self._free, {}
        if free:
            self.engine.free(unload_models=free["unload_models"], free_memory=free["free_memory"])

    # -- jobs -------------------------------------------------------------------------------------

    def run(self, spec: JobSpec) -> Iterator[EventBatch]:
        """Run ``spec``; yield its events in order, in batches, the last one with the outcome.

        Events are gathered for up to :data:`COALESCE_S` before a batch goes out (each yield is a
        round trip to the server): a short job streams as one batch, a long one every few ms."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(target=self._execute, args=(spec, events), daemon=True,
                                  name=f"nodegraph-job-{spec.prompt_id[:8]}")
        thread.start()
        while True:
            batch = [events.get()]
            deadline = time.monotonic() + COALESCE_S
            while not isinstance(batch[-1], JobOutcome):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(events.get(timeout=left))
                except queue.Empty:
                    break
            if isinstance(batch[-1], JobOutcome):
                outcome = batch.pop()
                yield EventBatch(tuple(batch), outcome)
                thread.join()
                return
            yield EventBatch(tuple(batch))

    def _execute(self, spec: JobSpec, events: queue.SimpleQueue) -> None:
        try:
            with self._busy:
                self._apply_free()
                outcome = self._run_job(spec, events.put)
        except BaseException as exc:  # an engine bug: report it as this job's error
            log.exception("job %s failed in actor %s", spec.prompt_id, self.actor_id)
            outcome = JobOutcome(spec.prompt_id, "invalid", validation_error={
                "node_id": None, "class_type": None, "exception_type": "InternalError",
                "message": f"actor {self.actor_id}: {type(exc).__name__}: {exc}"})
        outcome.state = self.state()
        events.put(outcome)

    def _run_job(self, spec: JobSpec, emit) -> JobOutcome:
        engine = self.engine
        try:
            plan = engine.validate(spec.prompt, spec.outputs_to_execute or None, spec.extra_data)
        except ValidationFailed as exc:  # e.g. a file present on the server is missing on this node
            first = exc.errors[0] if exc.errors else None
            return JobOutcome(spec.prompt_id, "invalid", validation_error={
                "node_id": first.node_id if first else None, "class_type": first.class_type if first else None,
                "exception_type": "nodegraph.errors.ValidationFailed",
                "message": f"{exc} (on actor {self.actor_id})"})

        def listener(event: Event) -> None:
            if isinstance(event, NodePreview):
                event = dataclasses.replace(event, image=_preview_array(event.image))
            elif isinstance(event, ExecutionStarted) and self._interrupt_requested == spec.prompt_id:
                engine.interrupt(spec.prompt_id)  # the interrupt arrived before the engine started
            elif isinstance(event, NodeFinished) and self.ship_outputs and event.ui and not event.cached:
                files = collect_files({event.node_id: event.ui}, engine.paths)
                if files:
                    emit(FilesShipped(spec.prompt_id, event.node_id, tuple(files)))
            emit(event)

        result = engine.execute(plan, prompt_id=spec.prompt_id, extra_data=spec.extra_data,
                                listeners=[listener])
        self._interrupt_requested = None
        self.jobs_done += 1
        return JobOutcome(spec.prompt_id, result.status, result.outputs, output_meta(plan, result.outputs))

    def close(self) -> None:
        self.engine.close()


def _preview_array(image: Any) -> Any:
    """A preview as a CPU uint8 array: small to send, readable where no GPU is."""
    from ..pngmeta import to_uint8

    try:
        return to_uint8(image)
    except Exception:  # leave it to the server's encoder to report
        return image


def _ray_node_id() -> str | None:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return None
