"""Terminal progress for the CLI, and the per-node timing report (text and JSON), from the event stream."""

from __future__ import annotations

import threading
from typing import IO, Any

from .events import (Event, ExecutionDone, ExecutionInterrupted, NodeFailed, NodeFinished,
                     NodeProgress, NodeStarted)


class ProgressPrinter:
    """An event listener drawing ``[done/total] node (class) step k/n`` on a stream, and printing the
    text that output nodes show (ShowText, reports) as soon as they finish."""

    def __init__(self, stream: IO[str], total: int, enabled: bool = True, width: int = 24) -> None:
        self.stream = stream
        self.total = max(total, 1)
        self.enabled = enabled
        self.width = width
        self.done = 0
        self.current = ""
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.lock = threading.Lock()
        self._drawn = False

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        with self.lock:
            if isinstance(event, NodeStarted):
                self.current = f"node {event.node_id} ({event.class_type})"
                self._draw(self.current)
            elif isinstance(event, NodeProgress):
                self._draw(f"{self.current} step {event.value}/{event.max}", step=True)
            elif isinstance(event, NodeFinished):
                self.done = min(self.done + 1, self.total)
                if not self.tty and not event.cached:
                    self._line(f"node {event.node_id} ({event.class_type}) done in {event.seconds:.3f}s")
                if event.output_node and event.ui and event.ui.get("text"):
                    self._texts(event.node_id, event.ui["text"])
                self._draw(self.current)
            elif isinstance(event, (NodeFailed, ExecutionInterrupted, ExecutionDone)):
                self.close()

    def _bar(self) -> str:
        filled = int(self.width * self.done / self.total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}"

    def _draw(self, text: str, step: bool = False) -> None:
        if self.tty:
            self.stream.write(f"\r\x1b[K{self._bar()} {text}")
            self.stream.flush()
            self._drawn = True

    def _texts(self, node_id: str, texts: list) -> None:
        """What an output node shows as text (ShowText …), printed as it comes, above the bar."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
        for text in texts:
            lines = str(text).splitlines() or [""]
            self.stream.write(f"[{node_id}] {lines[0]}\n" + "".join(f"  {line}\n" for line in lines[1:]))
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(f"{self._bar()} {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def format_timing_report(result: Any, plan: Any) -> str:
    """A table of the nodes that ran, slowest first, plus cached ones and totals."""
    rows = sorted(result.timings.items(), key=lambda kv: kv[1], reverse=True)
    lines = [f"{'node':>10}  {'class':28} {'seconds':>9}"]
    for node_id, seconds in rows:
        node = plan.nodes.get(node_id)
        lines.append(f"{node_id:>10}  {node.class_type if node else '?':28} {seconds:9.4f}")
    node_time = sum(result.timings.values())
    lines.append(f"{len(result.executed)} node(s) ran, {len(result.cached)} from cache; "
                 f"{node_time:.3f}s in nodes, {result.seconds:.3f}s in all ({result.status})")
    return "\n".join(lines)


def report_dict(result: Any, plan: Any) -> dict[str, Any]:
    """The JSON report ``nodegraph run --report`` writes."""
    nodes = []
    for node_id in result.executed:
        node = plan.nodes.get(node_id)
        nodes.append({"id": node_id, "class_type": node.class_type if node else None,
                      "seconds": result.timings.get(node_id), "cached": False})
    for node_id in result.cached:
        node = plan.nodes.get(node_id)
        nodes.append({"id": node_id, "class_type": node.class_type if node else None,
                      "seconds": 0.0, "cached": True})
    failure = None
    if result.failure is not None:
        f = result.failure
        failure = {"node_id": f.node_id, "class_type": f.class_type, "exception_type": f.exception_type,
                   "exception_message": f.exception_message, "traceback": f.traceback, "inputs": f.inputs}
    return {"prompt_id": result.prompt_id, "status": result.status, "seconds": result.seconds,
            "nodes": nodes, "outputs": result.outputs, "failure": failure}
