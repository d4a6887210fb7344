"""What a running node can reach: its ids, the device, folders, progress/preview reporting, interruption.

Nothing here is global: the executor builds one :class:`NodeContext` per node call from the run's
:class:`RunContext`, so tests can replace any part (folders, device, services, event bus).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Interrupted
from .events import EventBus, NodeImage, NodePreview, NodeProgress, NodeWarning
from .model_folders import LEGACY_SUBFOLDERS, ModelFolder, canonical_kind


@dataclass(frozen=True)
class Paths:
    """The folders a run reads and writes."""

    output_dir: Path = Path("outputs")
    input_dir: Path = Path("inputs")
    temp_dir: Path = Path("outputs/temp")
    models_dir: Path = Path("models")
    #: Where converted default models are kept (None: ``$NODEGRAPH_CACHE_DIR``, else the user cache dir).
    cache_dir: Path | None = None
    #: More folders per model kind (an existing ComfyUI install's, from ``extra_model_paths.yaml``:
    #: :mod:`nodegraph.model_folders`); see :meth:`model_dirs`.
    extra_model_dirs: tuple[ModelFolder, ...] = ()

    def model_dirs(self, kind: str) -> tuple[Path, ...]:
        """Every folder holding models of ``kind``, in the order they are searched — the one place
        model folders are decided; every loader's choices and ``/models/{folder}`` go through it.

        ``<models_dir>/<kind>`` and its ComfyUI alias subfolders (``diffusion_models`` also reads
        ``unet/``, ``text_encoders`` ``clip/``), then the extra folders declared for the kind (those of
        an ``is_default`` section come first of all). ``kind`` may be a ComfyUI legacy name (``unet``,
        ``clip``). Folders need not exist; a folder listed twice appears once."""
        kind = canonical_kind(kind)
        models = Path(self.models_dir)
        own = [models / kind] + [models / alias for alias in LEGACY_SUBFOLDERS.get(kind, ())]
        extra = [folder for folder in self.extra_model_dirs if folder.kind == kind]
        ordered = ([f.path for f in extra if f.first] + own + [f.path for f in extra if not f.first])
        unique: dict[str, Path] = {}
        for folder in ordered:
            unique.setdefault(os.path.normpath(os.path.abspath(folder)), Path(folder))
        return tuple(unique.values())

    def model_kinds(self) -> tuple[str, ...]:
        """The kinds the extra folders declare (ComfyUI lists such kinds in ``/models`` too)."""
        return tuple(dict.fromkeys(folder.kind for folder in self.extra_model_dirs))

    @classmethod
    def under(cls, root: Path | str) -> "Paths":
        root = Path(root)
        return cls(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                   models_dir=root / "models")


def pick_device(requested: str | None = None) -> str:
    """``cuda`` / ``mps`` when present (or as requested), else ``cpu``."""
    import torch

    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
        if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was requested but MPS is not available; use --device cpu")
        if requested not in ("cpu", "mps") and not requested.startswith("cuda"):
            raise ValueError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or mps")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class RunContext:
    """Shared by every node of one run."""

    prompt_id: str
    bus: EventBus
    interrupt: threading.Event
    paths: Paths
    device: str = "cpu"
    services: dict[str, Any] = field(default_factory=dict)
    #: the prompt's extra data as queued (``client_id``, ``extra_pnginfo``, …)
    extra_data: dict[str, Any] = field(default_factory=dict)


class NodeContext:
    """Handed to a node instance as ``self.ctx``."""

    __slots__ = ("run", "node_id", "display_node", "class_type")

    def __init__(self, run: RunContext, node_id: str, class_type: str, display_node: str | None = None):
        self.run = run
        self.node_id = node_id
        self.class_type = class_type
        self.display_node = display_node or node_id

    @property
    def prompt_id(self) -> str:
        return self.run.prompt_id

    @property
    def device(self) -> str:
        return self.run.device

    @property
    def paths(self) -> Paths:
        return self.run.paths

    def service(self, name: str) -> Any:
        """A shared service (model manager, ...) registered on the engine, by name."""
        try:
            return self.run.services[name]
        except KeyError:
            raise RuntimeError(f"node {self.node_id} ({self.class_type}) needs the '{name}' service, "
                               "which this engine was not configured with") from None

    def check_interrupted(self) -> None:
        """Raise :class:`Interrupted` if the run was interrupted; long nodes call this in loops."""
        if self.run.interrupt.is_set():
            raise Interrupted(f"interrupted in node {self.node_id} ({self.class_type})")

    def progress(self, value: int, total: int) -> None:
        """Report progress (``value`` of ``total`` steps); also a point where interruption lands."""
        self.check_interrupted()
        if self.run.bus.active:
            self.run.bus.emit(NodeProgress(self.run.prompt_id, self.node_id, int(value), int(total)))

    def preview(self, image: Any) -> None:
        """Send a preview image (float ``[H,W,C]`` or ``[B,H,W,C]`` tensor, 0..1)."""
        if self.run.bus.active:
            if getattr(image, "ndim", 0) == 4:
                image = image[0]
            self.run.bus.emit(NodePreview(self.run.prompt_id, self.node_id, image))

    def warn(self, message: str) -> None:
        """A warning for the user: logged (``nodegraph.nodes``, so the server's log and the frontend's logs
        panel show it) and sent as a :class:`~nodegraph.events.NodeWarning` event."""
        logging.getLogger("nodegraph.nodes").warning("node %s (%s): %s", self.display_node, self.class_type, message)
        if self.run.bus.active:
            self.run.bus.emit(NodeWarning(self.run.prompt_id, self.node_id, self.class_type, str(message)))

    def send_image(self, data: bytes, image_format: str = "PNG") -> None:
        """Send an encoded image (``PNG`` or ``JPEG`` file bytes) to the client that queued the prompt,
        as a result rather than a preview (ComfyUI's ``SaveImageWebsocket``)."""
        if image_format not in ("PNG", "JPEG"):
            raise ValueError(f"node {self.node_id} ({self.class_type}): images are sent as PNG or JPEG, "
                             f"not {image_format!r}")
        if self.run.bus.active:
            self.run.bus.emit(NodeImage(self.run.prompt_id, self.node_id, bytes(data), image_format))
