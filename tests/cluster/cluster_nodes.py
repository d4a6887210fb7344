"""Node classes for the scale-out tests (``nodes_modules=("tests.cluster.cluster_nodes",)``; Ray actors
import it by that name).

``TinyModelLoader`` loads ``models/tiny/<name>`` (a safetensors ``torch.nn.Linear``) through the
engine's model manager — the entry routing looks for; ``TinyModelApply`` runs it. ``Spin`` burns CPU
in steps with progress (where interrupts land) and optional previews, optionally appending ``start``/``end`` lines to a log
file. Output nodes report the actor's process id in their UI text so tests can see where a job ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nodegraph.context import Paths
from nodegraph.models import ManagerOwned
from nodegraph.node import COMBO, Input, Node, NodeResult, Output
from nodegraph.types import BOOLEAN, FLOAT, INT, STRING

TINY_MODEL = "TINY_MODEL"
IN_FEATURES = 4


def tiny_model_names(paths: Paths) -> list[str]:
    folder = Path(paths.models_dir) / "tiny"
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def save_tiny_model(path: Path, seed: int) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    layer = torch.nn.Linear(IN_FEATURES, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in layer.state_dict().items()}, str(path))


class TinyModel(ManagerOwned):
    def __init__(self, entry) -> None:
        self.entry = entry


class TinyModelLoader(Node):
    """Loads a tiny linear model from ``models/tiny`` (once per actor, through the model manager)."""

    category = "test"
    model_name = Input(COMBO, choices=tiny_model_names)
    outputs = (Output(TINY_MODEL, "model"),)

    def execute(self, model_name: str) -> tuple:
        from safetensors.torch import load_file

        path = (Path(self.ctx.paths.models_dir) / "tiny" / model_name).resolve()

        def load() -> torch.nn.Module:
            layer = torch.nn.Linear(IN_FEATURES, 1)
            layer.load_state_dict(load_file(str(path)))
            return layer

        stat = path.stat()
        entry = self.ctx.service("models").load((str(path), "tiny", stat.st_size, stat.st_mtime_ns), load)
        return (TinyModel(entry),)


class TinyModelApply(Node):
    """``model(x·ones)``; shows the value and the actor's pid."""

    category = "test"
    output_node = True
    model = Input(TINY_MODEL)
    x = Input(FLOAT, default=1.0, min=-1e6, max=1e6)
    outputs = (Output(FLOAT, "y"),)

    def execute(self, model: TinyModel, x: float) -> NodeResult:
        with self.ctx.service("models").use(model.entry) as layer, torch.no_grad():
            y = float(layer(torch.full((1, IN_FEATURES), float(x)))[0, 0])
        return NodeResult(outputs=(y,), ui={"text": [f"{y:.6f}"], "pid": [os.getpid()]})


class Spin(Node):
    """Burns CPU for ``iterations`` in ``steps`` steps (progress each step); shows ``tag`` and the pid."""

    category = "test"
    output_node = True
    iterations = Input(INT, default=100_000, min=0, max=10**10)
    steps = Input(INT, default=10, min=1, max=100_000)
    tag = Input(STRING, default="")
    log_path = Input(STRING, default="")
    preview = Input(BOOLEAN, default=False)
    outputs = (Output(INT, "total"),)

    def execute(self, iterations: int, steps: int, tag: str, log_path: str, preview: bool) -> NodeResult:
        _log(log_path, f"start {tag} {os.getpid()}")
        total, per_step = 0, iterations // steps
        for step in range(steps):
            for i in range(per_step):
                total += i & 7
            if preview:
                self.ctx.preview(torch.full((12, 16, 3), step / steps))
            self.ctx.progress(step + 1, steps)
        _log(log_path, f"end {tag} {os.getpid()}")
        return NodeResult(outputs=(total,), ui={"text": [tag], "pid": [os.getpid()]})


def _log(path: str, line: str) -> None:
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
