"""Node classes for server tests, loaded with ``nodegraph serve --nodes-module tests.server.slow_nodes``.

``SlowNode`` sleeps in small steps and reports progress through ``self.ctx.progress`` (where an
interrupt lands). With ``SLOW_NODES_LOG`` set, it appends ``start <tag>`` / ``end <tag>`` lines there.
"""

from __future__ import annotations

import os
import time

import torch

from nodegraph.node import Input, Node, NodeResult
from nodegraph.types import BOOLEAN, FLOAT, INT, STRING


def _log(line: str) -> None:
    path = os.environ.get("SLOW_NODES_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class SlowNode(Node):
    """Sleeps ``seconds`` in ``steps`` steps, reporting progress; shows ``tag`` as text."""

    category = "test"
    output_node = True
    seconds = Input(FLOAT, default=1.0, min=0.0, max=600.0)
    steps = Input(INT, default=10, min=1, max=100_000)
    tag = Input(STRING, default="")
    preview = Input(BOOLEAN, default=False)
    outputs = ()

    def execute(self, seconds: float, steps: int, tag: str, preview: bool) -> NodeResult:
        _log(f"start {tag}")
        for step in range(steps):
            time.sleep(seconds / steps)
            if preview:
                self.ctx.preview(torch.full((16, 24, 3), step / steps))
            self.ctx.progress(step + 1, steps)
        _log(f"end {tag}")
        return NodeResult(ui={"text": [tag]})


class FailingNode(Node):
    """Raises ``RuntimeError(message)``."""

    category = "test"
    output_node = True
    message = Input(STRING, default="boom")
    outputs = ()

    def execute(self, message: str) -> NodeResult:
        raise RuntimeError(message)
