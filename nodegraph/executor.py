"""The executor: runs a validated :class:`~nodegraph.plan.Plan`.

It follows the ``graphlib.TopologicalSorter`` protocol — hand ready nodes to threads, mark them done,
repeat — over a graph that may grow while it runs:

* only what the output nodes need is requested; a node whose signature is cached is served from the
  cache and its ancestors are never requested;
* nodes with the same signature inside one prompt run once: the first one requested computes, its
  twins wait for it and are served its result (reported as cached, like a cache hit; their ancestors
  are never requested). Output nodes are left out: they run per node id, as they do today in one
  prompt (their job is the side effect: a file, a preview). Nodes that must not be reused already have
  signatures of their own (``cacheable = False`` or a failing / NaN fingerprint add a nonce, the hidden
  ``unique_id`` adds the node id), so they never have twins;
* lazy inputs are requested only when the node's ``check_lazy`` asks for them;
* a node fed lists runs once per item (unless it ``takes_lists``), as in ComfyUI;
* a node may return ``NodeResult(expand=graph)``: the sub-graph is validated, added and run, and the
  node's outputs are taken from it. Its nodes may link to any node of the workflow that does not wait
  for the expanding node (nor for the node that expanded into it); those not computed yet are requested;
* independent ready nodes run concurrently on a bounded thread pool; a lone ready node runs inline on
  the dispatching thread (no hand-off cost on chains);
* a call whose input is an :class:`~nodegraph.blocking.ExecutionBlocker` is not made: each of its
  outputs is the blocker (a blocker's message is reported once, by the first node it reaches);
* the first failure or an interrupt stops new scheduling; in-flight nodes are allowed to finish.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
import traceback
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .blocking import ExecutionBlocker, find_blocker
from .cache import OutputCache
from .context import NodeContext, Paths, RunContext, pick_device
from .device_stats import SystemStats, read_system_stats
from .errors import ExecutionFailed, Interrupted, NodeFailure, ValidationFailed
from .events import (EventBus, EventListener, ExecutionBlocked, ExecutionDone, ExecutionInterrupted,
                     ExecutionStarted, NodeFailed, NodesCached, NodesQueued)
from .heap import TRIM_SLACK, release_free_memory
from .node import Node, NodeResult
from .plan import Plan, PlannedNode
from .policies import check_policies, requested_policies
from .registry import NodeRegistry, default_registry
from .signature import compute_signatures
from .validation import keep_valid_outputs, topological_order, validate, validate_node
from .workflow.api_format import Link, Workflow, WorkflowNode, parse_input_value

NodeOutputs = tuple  # one list per declared output

#: what a link to a node without a result reads (``gather`` gives the input ``None``)
_MISSING = [None]


@dataclass
class RunResult:
    """What a run produced. ``values[node_id]`` holds one list per output (one item per call)."""

    prompt_id: str
    status: str
    outputs: dict[str, dict] = field(default_factory=dict)
    values: dict[str, NodeOutputs] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    failure: NodeFailure | None = None
    interrupted_at: str | None = None
    seconds: float = 0.0
    #: results not yet in the output cache (``Engine.execute(defer_cache=True)``): the caller hands
    #: them to :meth:`Engine.store_results` once it has reported the run
    unstored: list[CacheWrite] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def value(self, node_id: str, output: int = 0) -> Any:
        """Output ``output`` of a node: the single item, or the list when the node ran several times."""
        items = self.values[str(node_id)][output]
        return items[0] if len(items) == 1 else items

    def raise_for_status(self) -> "RunResult":
        if self.failure is not None:
            raise ExecutionFailed(self.failure)
        if self.status == "interrupted":
            raise Interrupted(f"run {self.prompt_id} was interrupted")
        return self


@dataclass(slots=True)
class CacheWrite:
    """One node's result, to go into the output cache under its signature."""

    signature: bytes
    outputs: NodeOutputs
    ui: dict | None


@dataclass(slots=True)
class _Outcome:
    node_id: str
    outputs: NodeOutputs = ()
    ui: dict | None = None
    expansions: list[tuple[int, Any, tuple]] | None = None
    error: BaseException | None = None
    trace: list[str] | None = None
    inputs: dict[str, list] | None = None
    seconds: float = 0.0


class ExpansionError(Exception):
    """A node's run-time expansion is not a valid graph."""


class Engine:
    """Holds what lasts between runs (registry, cache, thread pool, services) and runs workflows.

    ``threads``: how many independent nodes may run at once (``workers=`` is its old, deprecated name).
    """

    def __init__(self, registry: NodeRegistry | None = None, *, cache: OutputCache | None = None,
                 paths: Paths | None = None, device: str | None = None, threads: int = 2,
                 services: dict[str, Any] | None = None, policies: Iterable[str] = (),
                 workers: int | None = None) -> None:
        if workers is not None:
            warnings.warn("Engine(workers=...) is deprecated; use Engine(threads=...)", DeprecationWarning,
                          stacklevel=2)
            threads = workers
        self.registry = registry if registry is not None else default_registry()
        self.cache = cache if cache is not None else OutputCache()
        self.paths = paths or Paths()
        self.device = pick_device(device)
        self.threads = max(1, int(threads))
        self.services = dict(services or {})
        self.policies = tuple(policies)  # optional validation passes (nodegraph.policies)
        if "models" not in self.services:
            from .models import ModelManager

            self.services["models"] = ModelManager(self.device)
        self.bus = EventBus()
        self._pool: ThreadPoolExecutor | None = None
        self._run_lock = threading.Lock()
        self._current: tuple[str, threading.Event] | None = None

    # -- public API -----------------------------------------------------------------------------

    def validate(self, workflow: Workflow | dict, targets: Iterable[str] | None = None,
                 extra_data: dict | None = None, *, partial: bool = False) -> Plan:
        """Check a workflow (and the policies it asks for) in one walk; return its plan or raise
        :class:`ValidationFailed` with every error.

        ``partial``: as ComfyUI's ``POST /prompt``, an output whose branch holds an error is left out
        and the others run; the plan's ``node_errors`` then lists the errors of the outputs left out.
        It still raises when no output is left, or an error concerns the whole prompt
        (:data:`~nodegraph.validation.PROMPT_KINDS`)."""
        plan = validate(workflow, self.registry, targets, self.paths, partial=partial)
        names = requested_policies(self.policies, extra_data)
        if not names:
            return plan
        try:
            check_policies(plan, self.registry, names)
        except ValidationFailed as exc:
            kept = keep_valid_outputs(plan, exc.errors) if partial else None
            if kept is None:
                raise ValidationFailed(plan.node_errors + exc.errors) from None
            try:
                check_policies(kept, self.registry, names)
            except ValidationFailed:
                raise ValidationFailed(plan.node_errors + exc.errors) from None
            kept.node_errors = plan.node_errors + exc.errors
            plan = kept
        return plan

    def run(self, workflow: Workflow | dict | Any, *, prompt_id: str | None = None,
            extra_data: dict | None = None, targets: Iterable[str] | None = None,
            listeners: Iterable[EventListener] = ()) -> RunResult:
        """Validate and run. Raises :class:`ValidationFailed`; node failures are in the result."""
        if hasattr(workflow, "to_api") and not isinstance(workflow, Workflow):
            workflow = workflow.to_api()
        plan = self.validate(workflow, targets, extra_data)
        return self.execute(plan, prompt_id=prompt_id, extra_data=extra_data, listeners=listeners)

    def execute(self, plan: Plan, *, prompt_id: str | None = None, extra_data: dict | None = None,
                listeners: Iterable[EventListener] = (), defer_cache: bool = False) -> RunResult:
        """Run a validated plan. ``defer_cache``: the results go into the output cache only when the
        caller passes the returned result to :meth:`store_results` (a server runner does so after it has
        told the client the prompt ended: ~5 µs a node off the prompt's latency) — if the cache holds
        at most half its RAM budget when the run starts; a fuller cache stores as the run goes, so that
        its evictions make room while the run holds its results (a deferred run adds at most what it
        makes to a half-full cache: within the budget plus the job's working set)."""
        prompt_id = prompt_id or uuid.uuid4().hex
        defer_cache = defer_cache and self._cache_has_room()
        unsubscribe = [self.bus.subscribe(listener) for listener in listeners]
        try:
            with self._run_lock:
                interrupt = threading.Event()
                self._current = (prompt_id, interrupt)
                try:
                    run = RunContext(prompt_id, self.bus, interrupt, self.paths, self.device, self.services,
                                     extra_data or {})
                    return _Run(self, plan, run, extra_data or {}, defer_cache).execute()
                finally:
                    self._current = None
        finally:
            for undo in unsubscribe:
                undo()

    def _cache_has_room(self) -> bool:
        """Whether the output cache holds at most half its RAM budget (a cache without stats: no)."""
        stats = getattr(self.cache, "stats", None)
        if stats is None:
            return False
        held = stats()
        return held.ram_bytes * 2 <= held.ram_budget

    def store_results(self, result: RunResult) -> None:
        """Put the results a ``defer_cache`` run left out into the output cache (oldest first, as the run
        made them); gives freed heap memory back to the OS when that evicted a lot."""
        writes, result.unstored = result.unstored, []
        if not writes:
            return
        cache = self.cache
        evicted_before = getattr(cache, "evicted_bytes", 0)
        for write in writes:
            cache.put(write.signature, write.outputs, write.ui)
        if getattr(cache, "evicted_bytes", 0) - evicted_before > TRIM_SLACK:
            release_free_memory()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given)."""
        current = self._current
        if current is None or (prompt_id is not None and current[0] != prompt_id):
            return False
        current[1].set()
        return True

    @property
    def running_prompt(self) -> str | None:
        current = self._current
        return current[0] if current else None

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """``POST /free``: drop the cached outputs (``free_memory``), unload every model manager's
        models (``unload_models``), then hand freed GPU memory back to the driver. Call between runs."""
        if free_memory:
            self.cache.clear()
        if unload_models:
            from .models import ModelManager

            for service in self.services.values():
                if isinstance(service, ModelManager):
                    service.free(unload=True)
        gc.collect()
        self.release_memory(slack=0)
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # a broken CUDA set-up must not fail the request
            pass

    def release_memory(self, slack: int | None = None, keep: int = 0) -> bool:
        """Give the C heap's freed memory back to the OS (:mod:`nodegraph.heap`), all but ``keep``
        bytes at its top; a runner calls it between jobs, so that RSS follows what the cache and the
        models hold. ``True`` if it trimmed."""
        from .heap import TRIM_SLACK, release_free_memory

        return release_free_memory(TRIM_SLACK if slack is None else slack, keep)

    def device_stats(self) -> SystemStats:
        """This machine's RAM, torch's version and each device's memory (``GET /system_stats``)."""
        return read_system_stats()

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="nodegraph")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _Run:
    """The state of one run; all bookkeeping happens on the dispatching thread."""

    def __init__(self, engine: Engine, plan: Plan, run: RunContext, extra_data: dict,
                 defer_cache: bool = False) -> None:
        self.engine = engine
        self.plan = plan
        self.run = run
        self.extra_data = extra_data
        self.bus = run.bus
        self.cache = engine.cache
        self.signatures = dict(plan.signatures) if plan.signatures is not None else \
            compute_signatures(plan.nodes, plan.order, paths=engine.paths)
        self.results: dict[str, NodeOutputs] = {}
        self.ui: dict[str, dict] = {}
        self.requested: set[str] = set()
        self.waiting: dict[str, set[str]] = {}
        self.dependents: dict[str, list[str]] = {}
        self.ready: list[str] = []
        self.instances: dict[str, Node] = {}
        self.expansions: dict[str, list[tuple[int, Any, tuple]]] = {}
        #: in-prompt deduplication: signature → the node computing it; that node → its waiting twins
        self.computing: dict[bytes, str] = {}
        self.twins: dict[str, list[str]] = {}
        self.done = queue.SimpleQueue()
        self.in_flight = 0
        self.result = RunResult(run.prompt_id, "success")
        #: where finished results go instead of the cache when the caller stores them later
        self.unstored: list[CacheWrite] | None = self.result.unstored if defer_cache else None
        self.stop = False
        self._prompt_json: dict | None = None
        self._evicted_mark = getattr(self.cache, "evicted_bytes", 0)

    # -- main loop --------------------------------------------------------------------------------

    def execute(self) -> RunResult:
        start = time.perf_counter()
        bus = self.bus
        if bus.active:
            bus.emit(ExecutionStarted(self.run.prompt_id, len(self.plan.nodes)))
        self.request(self.plan.outputs, initial=True)
        self.loop()
        self.result.values = self.results
        self.result.seconds = time.perf_counter() - start
        if bus.active:
            bus.emit(ExecutionDone(self.run.prompt_id, self.result.status, self.result.seconds,
                                   len(self.result.executed), len(self.result.cached)))
        return self.result

    def loop(self) -> None:
        interrupt = self.run.interrupt
        threads = self.engine.threads
        while True:
            while self.ready and not self.stop and self.in_flight < threads:
                if interrupt.is_set():
                    self.mark_interrupted(None)
                    break
                node_id = self.ready.pop()
                if node_id in self.expansions:
                    self.finish_expansion(node_id)
                    continue
                if self.in_flight == 0 and not self.ready:  # a lone ready node: run it here
                    self.run_inline(node_id)
                    continue
                task = self.prepare(node_id)  # others are ready or running: to the pool
                if task is None:
                    continue
                self.in_flight += 1
                self.engine.pool().submit(self._call_async, task)
            if self.in_flight == 0:
                if not self.ready or self.stop:
                    break
                continue
            self.complete(self.done.get())
            self.in_flight -= 1

    def _call_async(self, task: tuple) -> None:
        self.done.put(self.call(*task))

    # -- requesting ---------------------------------------------------------------------------

    def request(self, roots: Iterable[str], initial: bool = False) -> None:
        """Make ``roots`` and what they eagerly need come to exist (from cache or by running)."""
        nodes = self.plan.nodes
        fresh: list[str] = []
        cached: list[str] = []
        computing = self.computing
        stack = list(roots)
        while stack:
            node_id = stack.pop()
            if node_id in self.results or node_id in self.requested:
                continue
            if self.serve_from_cache(node_id):
                cached.append(node_id)
                continue
            if not nodes[node_id].cls.output_node:
                signature = self.signatures[node_id]
                twin = computing.setdefault(signature, node_id)
                if twin != node_id:  # the same computation is requested already: share its result
                    self.requested.add(node_id)
                    if twin in self.results:
                        cached += self.serve_twin(node_id, twin)
                    else:
                        self.twins.setdefault(twin, []).append(node_id)
                    continue
            self.requested.add(node_id)
            fresh.append(node_id)
            for _, link in nodes[node_id].eager_links:
                stack.append(link.node_id)
        results = self.results
        for node_id in fresh:
            pending = set()
            for _, link in nodes[node_id].eager_links:
                if link.node_id not in results:
                    pending.add(link.node_id)
            self.wait_for(node_id, pending)
        if fresh and self.bus.active:
            self.bus.emit(NodesQueued(self.run.prompt_id, tuple(fresh)))
        if cached and self.bus.active:
            reported = self.cached_ancestry(cached) if initial else cached
            self.bus.emit(NodesCached(self.run.prompt_id, tuple(reported)))
            for node_id in cached:
                self.emit_finished(node_id, 0.0, cached=True)

    def cached_ancestry(self, served: list[str]) -> list[str]:
        """The served nodes plus their ancestors whose results are cached too (ComfyUI reports every
        cached node of the prompt in ``execution_cached``, though only the served ones are read)."""
        nodes, signatures, cache = self.plan.nodes, self.signatures, self.cache
        seen = set(served)
        stack = list(served)
        while stack:
            for link in nodes[stack.pop()].links.values():
                src = link.node_id
                if src not in seen and src not in self.requested and signatures[src] in cache:
                    seen.add(src)
                    stack.append(src)
        return [nid for nid in self.plan.order if nid in seen] + [nid for nid in served if nid not in self.plan.order]

    def serve_twin(self, node_id: str, twin: str) -> list[str]:
        """Give ``node_id`` the result its twin (same signature) computed in this run, and its
        ancestors (which nothing else requested) those of the twin's matching ancestors, so that every
        node of the prompt is reported. Returns the nodes served, producers first."""
        nodes, results, requested, ui = self.plan.nodes, self.results, self.requested, self.ui
        served: list[str] = []
        stack = [(node_id, twin)]
        requested.add(node_id)
        while stack:
            nid, source = stack.pop()
            results[nid] = results[source]
            shown = ui.get(source)
            if shown is not None:
                ui[nid] = shown
            served.append(nid)
            source_links = nodes[source].links
            for name, link in nodes[nid].links.items():
                src = link.node_id
                if src in results or src in requested or nodes[src].cls.output_node:
                    continue
                match = source_links.get(name)
                if match is None or match.node_id not in results:  # e.g. a lazy input never evaluated
                    continue
                requested.add(src)
                stack.append((src, match.node_id))
        served.reverse()
        self.result.cached += served
        return served

    def finish_twins(self, node_id: str) -> None:
        """``node_id`` has its result: serve the twins waiting for it, then release their consumers."""
        twins = self.twins.pop(node_id, None)
        if not twins:
            return
        served: list[str] = []
        for twin in twins:
            served += self.serve_twin(twin, node_id)
        if self.bus.active:
            self.bus.emit(NodesCached(self.run.prompt_id, tuple(served)))
            for nid in served:
                self.emit_finished(nid, 0.0, cached=True)
        for nid in served:
            self.release(nid)

    def wait_for(self, node_id: str, pending: set[str]) -> None:
        if not pending:
            self.ready.append(node_id)
            return
        self.waiting[node_id] = pending
        for producer in pending:
            self.dependents.setdefault(producer, []).append(node_id)

    def serve_from_cache(self, node_id: str) -> bool:
        entry = self.cache.get(self.signatures[node_id])
        if entry is None:
            return False
        self.results[node_id] = entry.outputs
        if entry.ui is not None:
            self.ui[node_id] = entry.ui
            if self.plan.nodes[node_id].cls.output_node:
                self.result.outputs[node_id] = entry.ui
        self.result.cached.append(node_id)
        return True

    # -- one node ---------------------------------------------------------------------------------

    def instance(self, node: PlannedNode) -> Node:
        inst = self.instances.get(node.id)
        if inst is None:
            ctx = NodeContext(self.run, node.id, node.class_type, node.display_node)
            inst = self.instances[node.id] = node.cls(ctx)
        return inst

    def gather(self, node: PlannedNode) -> dict[str, list]:
        kwargs: dict[str, list] = {name: [value] for name, value in node.constants.items()}
        results = self.results
        for name, link in node.links.items():
            produced = results.get(link.node_id)
            kwargs[name] = produced[link.output] if produced is not None else [None]
        for hidden in node.cls.hidden:
            if hidden == "prompt":
                if self._prompt_json is None:
                    self._prompt_json = self.plan.to_api()
                kwargs["prompt"] = [self._prompt_json]
            elif hidden == "extra_pnginfo":
                kwargs["extra_pnginfo"] = [self.extra_data.get("extra_pnginfo")]
            elif hidden == "unique_id":
                kwargs["unique_id"] = [node.id]
        return kwargs

    def prepare(self, node_id: str) -> tuple | None:
        """Return the call to make, or ``None`` when the node now waits for lazy inputs."""
        node = self.plan.nodes[node_id]
        instance = self.instance(node)
        kwargs = self.gather(node)
        if node.lazy_links:
            first = {k: (v if node.cls.takes_lists else (v[0] if v else None)) for k, v in kwargs.items()}
            wanted = instance.check_lazy(**first)
            pending = {node.lazy_links[name].node_id for name in wanted
                       if name in node.lazy_links and node.lazy_links[name].node_id not in self.results}
            if pending:
                self.request(pending)
                pending = {p for p in pending if p not in self.results}
                if pending:
                    self.wait_for(node_id, pending)
                    return None
                kwargs = self.gather(node)
        if self.bus.active:
            self.bus.node_started(self.run.prompt_id, node_id, node.class_type, node.display_node)
        return node, instance, kwargs

    def call(self, node: PlannedNode, instance: Node, kwargs: dict[str, list]) -> _Outcome:
        start = time.perf_counter()
        try:
            if self.run.interrupt.is_set():
                instance.ctx.check_interrupted()
            returned = _call_mapped(instance, node.cls, kwargs, lambda block: self.blocked(node, block))
            outputs, ui, expansions = _merge_returns(node, returned)
            return _Outcome(node.id, outputs, ui, expansions, seconds=time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, none kills the engine
            return _Outcome(node.id, error=exc, trace=traceback.format_exception(exc), inputs=kwargs,
                            seconds=time.perf_counter() - start)

    def run_inline(self, node_id: str) -> None:
        """Run ``node_id`` on this thread: :meth:`prepare`, :meth:`call` and :meth:`complete` in one,
        without their lists of one item and outcome record for the usual node (no lazy or hidden
        inputs, not fed lists or blockers, returns a plain tuple): on a chain this is the per-node
        cost of the engine."""
        node = self.plan.nodes[node_id]
        simple = node.plain_call
        if simple:
            kwargs = dict(node.constants)
            results = self.results
            for name, link in node.links.items():
                produced = results.get(link.node_id)
                items = produced[link.output] if produced is not None else _MISSING
                if len(items) != 1 or isinstance(items[0], ExecutionBlocker):
                    simple = False
                    break
                kwargs[name] = items[0]
        if not simple:
            task = self.prepare(node_id)
            if task is not None:
                self.complete(self.call(*task))
            return
        instance = self.instance(node)
        bus = self.bus
        if bus.active:
            bus.node_started(self.run.prompt_id, node_id, node.class_type, node.display_node)
        start = time.perf_counter()
        try:
            if self.run.interrupt.is_set():
                instance.ctx.check_interrupted()
            value = instance.execute(**kwargs)
            if type(value) is tuple and node.plain_outputs and len(value) == len(node.cls.outputs):
                outputs = ([value[0]],) if len(value) == 1 else tuple([item] for item in value)
                ui = expansions = None
            else:
                outputs, ui, expansions = _merge_returns(node, [value])
        except BaseException as exc:  # noqa: BLE001 - as call(): reported, never fatal to the engine
            self.complete(_Outcome(node_id, error=exc, trace=traceback.format_exception(exc),
                                   inputs={name: [value] for name, value in kwargs.items()},
                                   seconds=time.perf_counter() - start))
            return
        seconds = time.perf_counter() - start
        if expansions:
            self.complete(_Outcome(node_id, outputs, ui, expansions, seconds=seconds))
            return
        result = self.result
        result.timings[node_id] = seconds
        result.executed.append(node_id)
        self.finish(node_id, outputs, ui, seconds, node)

    def blocked(self, node: PlannedNode, block: ExecutionBlocker) -> ExecutionBlocker:
        """A call of ``node`` met ``block``: report its message (once) and pass on a silent blocker."""
        if block.message is None:
            return block
        if self.bus.active:
            self.bus.emit(ExecutionBlocked(self.run.prompt_id, node.id, node.class_type, str(block.message),
                                           tuple(self.result.executed)))
        return ExecutionBlocker(None)

    def complete(self, outcome: _Outcome) -> None:
        node_id = outcome.node_id
        if outcome.error is not None:
            if isinstance(outcome.error, Interrupted):
                self.mark_interrupted(node_id)
            else:
                self.mark_failed(outcome)
            return
        self.result.timings[node_id] = outcome.seconds
        self.result.executed.append(node_id)
        if outcome.expansions:
            try:
                self.expand(node_id, outcome)
            except ExpansionError as exc:
                self.mark_failed(_Outcome(node_id, error=exc, trace=[f"ExpansionError: {exc}\n"],
                                          inputs={}, seconds=outcome.seconds))
            return
        self.finish(node_id, outcome.outputs, outcome.ui, outcome.seconds)

    def finish(self, node_id: str, outputs: NodeOutputs, ui: dict | None, seconds: float,
               node: PlannedNode | None = None) -> None:
        self.results[node_id] = outputs
        if node is None:
            node = self.plan.nodes[node_id]
        if ui is not None:
            self.ui[node_id] = ui
            if node.cls.output_node:
                self.result.outputs[node_id] = ui
        if self.unstored is not None:
            self.unstored.append(CacheWrite(self.signatures[node_id], outputs, ui))
        else:
            self.store(node_id, outputs, ui)
        if self.bus.active:
            self.bus.node_finished(self.run.prompt_id, node_id, node.class_type, node.display_node, seconds, False,
                                   ui, node.cls.output_node)
        self.release(node_id)
        if self.twins:
            self.finish_twins(node_id)

    def store(self, node_id: str, outputs: NodeOutputs, ui: dict | None) -> None:
        """Put ``node_id``'s result into the cache now (a run that does not defer its cache writes)."""
        cache = self.cache
        cache.put(self.signatures[node_id], outputs, ui)
        if getattr(cache, "evicted_bytes", 0) - self._evicted_mark > TRIM_SLACK:
            # the cache let go of a lot in this run: give what is now free back to the OS before the
            # run allocates more (a heap left to fragment grows RSS past the cache's budget)
            self._evicted_mark = cache.evicted_bytes
            release_free_memory()

    def release(self, node_id: str) -> None:
        """``node_id``'s result exists: its consumers waiting for nothing else become ready."""
        for consumer in self.dependents.pop(node_id, ()):
            pending = self.waiting[consumer]
            pending.discard(node_id)
            if not pending:
                del self.waiting[consumer]
                self.ready.append(consumer)

    def emit_finished(self, node_id: str, seconds: float, cached: bool) -> None:
        node = self.plan.nodes[node_id]
        self.bus.node_finished(self.run.prompt_id, node_id, node.class_type, node.display_node, seconds, cached,
                               self.ui.get(node_id), node.cls.output_node)

    def mark_interrupted(self, node_id: str | None) -> None:
        if self.result.status == "interrupted":
            return
        self.stop = True
        self.result.status = "interrupted"
        self.result.interrupted_at = node_id
        if self.bus.active:
            node = self.plan.nodes.get(node_id) if node_id else None
            self.bus.emit(ExecutionInterrupted(self.run.prompt_id, node_id,
                                               node.class_type if node else None,
                                               tuple(self.result.executed)))

    def mark_failed(self, outcome: _Outcome) -> None:
        self.stop = True
        if self.result.failure is not None:
            return
        node = self.plan.nodes[outcome.node_id]
        exc = outcome.error
        exc_type = type(exc)
        qualified = exc_type.__name__ if exc_type.__module__ == "builtins" else \
            f"{exc_type.__module__}.{exc_type.__name__}"
        failure = NodeFailure(outcome.node_id, node.class_type, qualified, str(exc), outcome.trace or [],
                              summarize_inputs(outcome.inputs or {}))
        self.result.failure = failure
        self.result.status = "error"
        if self.bus.active:
            self.bus.emit(NodeFailed(self.run.prompt_id, failure.node_id, failure.class_type,
                                     failure.exception_type, failure.exception_message,
                                     tuple(failure.traceback), failure.inputs,
                                     tuple(self.result.executed)))

    # -- run-time expansion -----------------------------------------------------------------------

    def expand(self, parent_id: str, outcome: _Outcome) -> None:
        parent = self.plan.nodes[parent_id]
        added: dict[str, WorkflowNode] = {}
        calls: list[tuple[int, Any, tuple]] = []
        for call_index, graph, outs in outcome.expansions or ():
            prefix = f"{parent_id}.{call_index}."
            sub = Workflow.from_api(graph.to_api() if hasattr(graph, "to_api") else graph)
            local = set(sub.nodes)

            def relink(value: Any) -> Any:
                value = parse_input_value(value) if isinstance(value, list) else value
                if isinstance(value, Link) and value.node_id in local:
                    return Link(prefix + value.node_id, value.output)
                return value

            for local_id, wn in sub.nodes.items():
                new_id = prefix + local_id
                if new_id in self.plan.nodes or new_id in added:
                    raise ExpansionError(f"node {parent_id} expanded into id '{new_id}', which exists")
                added[new_id] = WorkflowNode(new_id, wn.class_type, {k: relink(v) for k, v in wn.inputs.items()},
                                             wn.title, wn.is_changed, wn.problem, parent_id, parent.display_node)
            calls.append((call_index, None, tuple(relink(v) for v in outs)))
        planned = self.plan_expansion(parent_id, added)
        wanted = [l.node_id for _, _, outs in calls for l in outs if isinstance(l, Link)]
        wanted += [nid for nid, p in planned.items() if p.cls.output_node]
        for nid in wanted:
            if nid not in self.plan.nodes:
                raise ExpansionError(f"node {parent_id} returned a link to '{nid}', which is neither in "
                                     "its expansion nor in the workflow")
        self.expansions[parent_id] = calls
        self.request(wanted)
        self.wait_for(parent_id, {nid for nid in wanted if nid not in self.results})

    def plan_expansion(self, parent_id: str, added: dict[str, WorkflowNode]) -> dict[str, PlannedNode]:
        view = Workflow({**{nid: WorkflowNode(nid, n.class_type) for nid, n in self.plan.nodes.items()},
                         **added})
        planned: dict[str, PlannedNode] = {}
        problems: list[str] = []
        waiting: set[str] | None = None
        for nid, wn in added.items():
            for _, link in wn.links():
                src = link.node_id
                if src in added or src in self.results:
                    continue
                if src not in self.plan.nodes:
                    problems.append(f"node {nid} links to '{src}', which is neither in the expansion nor "
                                    "in the workflow")
                    continue
                if waiting is None:
                    waiting = self.waiting_for_expansion(parent_id)
                if src in waiting:
                    problems.append(f"node {nid} links to '{src}', which waits for node {parent_id}'s "
                                    "expansion itself")
            p, errors = validate_node(wn, view, self.engine.registry, self.engine.paths)
            problems += [e.message for e in errors]
            if p is not None:
                planned[nid] = p
        order = topological_order(view, list(added)) if not problems else []
        if order is None:
            problems.append("the expansion's links form a cycle")
        if problems:
            raise ExpansionError(f"node {parent_id}'s expansion is invalid: " + "; ".join(problems))
        self.plan.nodes.update(planned)
        compute_signatures(self.plan.nodes, order, self.signatures, self.engine.paths)
        return planned

    def waiting_for_expansion(self, parent_id: str) -> set[str]:
        """The nodes that wait for ``parent_id``'s expansion: the expanding node, the nodes it expanded
        from, and everything downstream of them (an expansion linking to one of them would never run)."""
        import networkx as nx

        chain: list[str] = []
        node_id: str | None = parent_id
        while node_id is not None and node_id in self.plan.nodes:
            chain.append(node_id)
            node_id = self.plan.nodes[node_id].parent
        graph = self.plan.graph()
        waiting = set(chain)
        for node_id in chain:
            waiting |= nx.descendants(graph, node_id)
        return waiting

    def finish_expansion(self, parent_id: str) -> None:
        node = self.plan.nodes[parent_id]
        calls = self.expansions.pop(parent_id)
        outputs = tuple([] for _ in node.cls.outputs)
        for _, _, outs in calls:
            for index, value in enumerate(outs[: len(outputs)]):
                if isinstance(value, Link):
                    outputs[index].extend(self.results[value.node_id][value.output])
                else:
                    outputs[index].append(value)
        self.finish(parent_id, outputs, self.ui.get(parent_id), self.result.timings.get(parent_id, 0.0))


def _call_mapped(instance: Node, cls: type[Node], kwargs: dict[str, list],
                 blocked: Callable[[ExecutionBlocker], ExecutionBlocker]) -> list:
    """Call ``execute`` once (whole lists, or single items) or once per list item (ComfyUI rule).

    A call with a blocked input is not made: ``blocked(blocker)`` stands for its result."""
    if cls.takes_lists:
        block = find_blocker(kwargs.values(), whole_lists=True)
        return [blocked(block) if block is not None else instance.execute(**kwargs)]
    # the usual case first: one item per input, none of them a blocker — one call, no list bookkeeping
    single = {}
    for name, items in kwargs.items():
        if len(items) != 1 or isinstance(items[0], ExecutionBlocker):
            break
        single[name] = items[0]
    else:
        return [instance.execute(**single)]
    lengths = [len(v) for v in kwargs.values()]
    count = max(lengths) if lengths else 1
    if lengths and min(lengths) == 0:
        count = 0
    if count == 1:
        single = {k: v[0] for k, v in kwargs.items()}
        block = find_blocker(single.values(), whole_lists=False)
        return [blocked(block) if block is not None else instance.execute(**single)]
    returned = []
    for i in range(count):
        instance.ctx.check_interrupted()
        one = {k: v[i if i < len(v) else -1] for k, v in kwargs.items()}
        block = find_blocker(one.values(), whole_lists=False)
        returned.append(blocked(block) if block is not None else instance.execute(**one))
    return returned


def _merge_returns(node: PlannedNode, returned: list) -> tuple[NodeOutputs, dict | None, list | None]:
    declared = node.cls.outputs
    if len(returned) == 1:  # the usual case first: one call returned a plain tuple, one value per output
        value = returned[0]
        if type(value) is tuple and len(value) == len(declared):
            for out in declared:
                if out.is_list:
                    break
            else:
                return tuple([item] for item in value), None, None
    outputs: NodeOutputs = tuple([] for _ in declared)
    ui: dict | None = None
    expansions: list | None = None
    for call_index, value in enumerate(returned):
        values, call_ui, graph = _normalize_return(node, value)
        if call_ui:
            ui = ui if ui is not None else {}
            for key, items in call_ui.items():
                ui.setdefault(key, []).extend(items if isinstance(items, list) else [items])
        if graph is not None:
            expansions = expansions or []
            expansions.append((call_index, graph, tuple(values)))
            continue
        for index, out in enumerate(declared):
            if out.is_list and not isinstance(values[index], ExecutionBlocker):
                outputs[index].extend(values[index])
            else:
                outputs[index].append(values[index])
    return outputs, ui, expansions


def _normalize_return(node: PlannedNode, value: Any) -> tuple[tuple, dict | None, Any]:
    if isinstance(value, NodeResult):
        values, ui, graph = value.outputs, value.ui, value.expand
    elif isinstance(value, ExecutionBlocker):
        return (value,) * len(node.cls.outputs), None, None
    elif isinstance(value, dict) and value.keys() <= {"result", "ui", "expand"}:
        values, ui, graph = value.get("result", ()), value.get("ui"), value.get("expand")
    elif value is None:
        values, ui, graph = (), None, None
    elif isinstance(value, (tuple, list)):
        values, ui, graph = value, None, None
    else:
        raise TypeError(f"node {node.id} ({node.class_type}) returned {type(value).__name__}; execute() "
                        "must return a tuple with one value per output, or a NodeResult")
    if isinstance(values, ExecutionBlocker):
        return (values,) * len(node.cls.outputs), ui, graph
    values = tuple(values or ())
    declared = len(node.cls.outputs)
    if not values and declared and node.cls.output_node and graph is None:
        values = (None,) * declared  # an output node that only reports UI data
    elif len(values) != declared:
        raise TypeError(f"node {node.id} ({node.class_type}) returned {len(values)} value(s) but declares "
                        f"{declared} output(s)")
    return values, ui, graph


def summarize_inputs(kwargs: dict[str, list]) -> dict[str, list[str]]:
    """A short, JSON-safe description of each input (tensors by shape and dtype)."""
    return {name: [_summarize(v) for v in values[:8]] for name, values in kwargs.items()}


def _summarize(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__}(shape={list(shape)}, dtype={value.dtype})"
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)
    text = repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


def run(graph: Any, **engine_options: Any) -> RunResult:
    """Run a graph (builder, Workflow or API dict) on a fresh engine; raise if it failed."""
    extra = {k: engine_options.pop(k) for k in ("prompt_id", "extra_data", "targets", "listeners")
             if k in engine_options}
    engine = Engine(**engine_options)
    try:
        return engine.run(graph, **extra).raise_for_status()
    finally:
        engine.close()
