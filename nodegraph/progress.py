"""Terminal output of ``nodegraph run``, from the event stream: the progress bar, each output node's
results (printed once, as the node finishes), the per-node timing report (text and JSON), and switching
off the progress bars of libraries (tqdm from transformers, diffusers, huggingface_hub) for ``--quiet``."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator

from .events import (Event, ExecutionBlocked, ExecutionDone, ExecutionInterrupted, NodeFailed, NodeFinished,
                     NodeProgress, NodesQueued, NodeStarted)


def output_lines(node_id: str, ui: dict, output_dir: Path, temp_dir: Path) -> list[str]:
    """What an output node shows, one entry per saved/previewed image (its path) and per text."""
    lines = []
    for image in ui.get("images", []) or []:
        if not isinstance(image, dict) or "filename" not in image:
            continue
        folder = output_dir if image.get("type", "output") == "output" else temp_dir
        lines.append(f"node {node_id}: {Path(folder) / image.get('subfolder', '') / image['filename']}")
    for text in ui.get("text", []) or []:
        lines.append(f"node {node_id}: {text}")
    return lines


class ProgressPrinter:
    """An event listener for the CLI.

    * ``out`` (stdout) gets every output node's results (image paths, texts) once, when the node
      finishes — whether it ran or came from the cache — even when progress is off.
    * ``stream`` (stderr) gets the progress: on a terminal one bar redrawn in place,
      ``[####....] done/total node (class) step k/n``; elsewhere one log line per executed node.
      ``total`` counts the nodes the run has to execute as the run discovers them (the executor's
      :class:`~nodegraph.events.NodesQueued`): the plan, lazy inputs when asked for, and the nodes a
      loop's expansion adds. The bar also advances inside a node that reports steps (samplers).
    """

    #: the least time between two redraws for step progress (node starts/ends always redraw)
    REDRAW_SECONDS = 0.05

    def __init__(self, stream: IO[str], total: int = 0, enabled: bool = True, width: int = 24, *,
                 out: IO[str] | None = None, output_dir: Path = Path("outputs"),
                 temp_dir: Path = Path("outputs/temp")) -> None:
        self.stream = stream
        self.out = out
        self.output_dir = Path(output_dir)
        self.temp_dir = Path(temp_dir)
        self.total_hint = max(int(total), 0)
        self.enabled = enabled
        self.width = width
        self.queued: set[str] = set()
        self.done = 0
        self.steps: dict[str, float] = {}  # running node -> fraction of its steps done
        self.running: dict[str, str] = {}  # running node -> its label, the most recently active last
        self.current = ""
        self.printed: set[str] = set()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.lock = threading.Lock()
        self._drawn = False
        self._last_draw = 0.0

    @property
    def total(self) -> int:
        """Nodes to execute, as known so far (at least the nodes already done)."""
        return max(len(self.queued) or self.total_hint, self.done, 1)

    def __call__(self, event: Event) -> None:
        with self.lock:
            if isinstance(event, NodeFinished):
                self._finished(event)
            elif isinstance(event, ExecutionBlocked):  # printed even with --quiet: it is a result
                self._end_line(clear=True)
                self.stream.write(f"blocked: node {event.node_id} ({event.class_type}) did not run: "
                                  f"{event.message}\n")
                self.stream.flush()
            elif not self.enabled:
                return
            elif isinstance(event, NodesQueued):
                self.queued.update(event.node_ids)
                self._draw()
            elif isinstance(event, NodeStarted):
                self.current = self.running[event.node_id] = f"node {event.node_id} ({event.class_type})"
                self._draw()
            elif isinstance(event, NodeProgress):
                if event.max > 0:
                    self.steps[event.node_id] = min(max(event.value / event.max, 0.0), 1.0)
                label = self.running.pop(event.node_id, None)  # label the step with its own node
                if label is not None:
                    self.running[event.node_id] = self.current = label
                if time.monotonic() - self._last_draw >= self.REDRAW_SECONDS:
                    self._draw(f" step {event.value}/{event.max}")
            elif isinstance(event, (NodeFailed, ExecutionInterrupted, ExecutionDone)):
                self._end_line()

    def _finished(self, event: NodeFinished) -> None:
        if self.enabled and not event.cached:
            self.done += 1
            self.steps.pop(event.node_id, None)
            self.running.pop(event.node_id, None)
            if self.running:  # still running: the most recently active other node
                self.current = next(reversed(self.running.values()))
            if not self.tty:
                self._log(f"node {event.node_id} ({event.class_type}) done in {event.seconds:.3f}s")
        if event.output_node and event.ui:
            self.print_outputs(event.node_id, event.ui)
        if self.enabled:
            self._draw()

    def print_outputs(self, node_id: str, ui: dict) -> None:
        """Print a node's results on ``out`` (once per node), erasing the bar first (it is redrawn
        below them by the next event)."""
        if self.out is None or node_id in self.printed:
            return
        self.printed.add(node_id)
        lines = output_lines(node_id, ui, self.output_dir, self.temp_dir)
        if not lines:
            return
        self._end_line(clear=True)
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def _bar(self) -> str:
        total = self.total
        progress = min(self.done + sum(self.steps.values()), total)
        filled = int(self.width * progress / total)
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{total}"

    def _draw(self, suffix: str = "") -> None:
        if self.tty:
            self.stream.write(f"\r\x1b[K{self._bar()} {self.current}{suffix}")
            self.stream.flush()
            self._drawn = True
            self._last_draw = time.monotonic()

    def _log(self, text: str) -> None:
        self.stream.write(f"{self._bar()} {text}\n")
        self.stream.flush()

    def _end_line(self, clear: bool = False) -> None:
        """Leave the bar's line: erase it (``clear``, before other output) or end it with a newline."""
        if self._drawn:
            self.stream.write("\r\x1b[K" if clear else "\n")
            self.stream.flush()
            self._drawn = False

    def close(self) -> None:
        with self.lock:
            self._end_line()


def format_timing_report(result: Any, plan: Any) -> str:
    """A table of the nodes that ran, slowest first, plus cached ones and totals."""
    rows = sorted(result.timings.items(), key=lambda kv: kv[1], reverse=True)
    width = max([10] + [len(node_id) for node_id, _ in rows])
    lines = [f"{'node':>{width}}  {'class':28} {'seconds':>9}"]
    for node_id, seconds in rows:
        node = plan.nodes.get(node_id)
        lines.append(f"{node_id:>{width}}  {node.class_type if node else '?':28} {seconds:9.4f}")
    lines.append(summary_line(result, node_time=True))
    return "\n".join(lines)


def summary_line(result: Any, node_time: bool = False) -> str:
    """``58 node(s) ran, 9 from cache; 51.384s in all (success)`` (with the time spent in nodes)."""
    in_nodes = f"{sum(result.timings.values()):.3f}s in nodes, " if node_time else ""
    return (f"{len(result.executed)} node(s) ran, {len(result.cached)} from cache; "
            f"{in_nodes}{result.seconds:.3f}s in all ({result.status})")


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


# -- library progress bars -----------------------------------------------------------------------------

#: environment switches read by tqdm (``TQDM_<argument>``, at its import) and huggingface_hub /
#: transformers (at their import); set while quiet so libraries imported during the run stay quiet too
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@contextlib.contextmanager
def library_progress_silenced() -> Iterator[None]:
    """Switch off the progress bars libraries draw (tqdm), restoring everything on exit.

    Covers huggingface_hub, transformers and diffusers through their own switches when they are
    already imported, and through the environment when they are imported later; plain ``tqdm(...)``
    calls (``tqdm.auto``, as transformers' GGUF conversion uses) through tqdm's default ``disable``
    argument, which ``TQDM_DISABLE`` only sets when tqdm is imported after it. Log messages, warnings
    and errors are not touched."""
    undo: list = []
    for key, value in QUIET_ENV.items():
        undo.append(functools.partial(_restore_env, key, os.environ.get(key)))
        os.environ[key] = value
    undo += _disable_tqdm_default()
    undo += _disable_library_switches()
    try:
        yield
    finally:
        for step in reversed(undo):
            step()


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _disable_tqdm_default() -> list:
    """tqdm wraps ``tqdm.__init__`` in a ``functools.partialmethod`` holding its environment defaults
    (``TQDM_*``, read at import); setting ``disable`` there is ``TQDM_DISABLE=1`` after the fact."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return []  # not imported yet: TQDM_DISABLE in the environment applies when it is
    init = std.tqdm.__dict__.get("__init__")
    keywords = getattr(init, "keywords", None)
    if not isinstance(init, functools.partialmethod) or not isinstance(keywords, dict):
        return []
    missing = object()
    before = keywords.get("disable", missing)
    keywords["disable"] = True

    def restore() -> None:
        if before is missing:
            keywords.pop("disable", None)
        else:
            keywords["disable"] = before
    return [restore]


def _disable_library_switches() -> list:
    undo: list = []
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and hasattr(hub, "disable_progress_bars"):
        if not hub.are_progress_bars_disabled():
            hub.disable_progress_bars()
            undo.append(hub.enable_progress_bars)
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "disable_progress_bar") and module.is_progress_bar_enabled():
            module.disable_progress_bar()
            undo.append(module.enable_progress_bar)
    return undo
