"""What crosses between the server and its Ray engine actors: small typed, picklable records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..context import Paths
from ..events import Event


@dataclass(frozen=True)
class ActorSettings:
    """How an actor builds its engine. ``paths`` are the server's (absolute); an actor on another
    machine takes its models and inputs folders from ``NODEGRAPH_MODELS`` / ``NODEGRAPH_INPUT_DIR``
    in its own environment when set. ``threads``: the engine's thread pool. ``node_modules`` pairs a
    module name with the folder it was found in on the server (added to ``sys.path`` when the actor
    cannot import it otherwise). ``ship_outputs``: ``None`` ships output files as bytes only when the
    actor runs on another Ray node than the server; ``True`` / ``False`` force it. ``custom_nodes``:
    the folders of ComfyUI custom node packs the server loaded (the same paths must exist where the
    actor runs), ``disabled_custom_nodes`` the pack names it left out."""

    paths: Paths
    device: str | None = None
    threads: int = 2
    node_modules: tuple[tuple[str, str | None], ...] = ()
    policies: tuple[str, ...] = ()
    server_node_id: str | None = None
    ship_outputs: bool | None = None
    custom_nodes: tuple[str, ...] = ()
    disabled_custom_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """One job for an actor: the durable queue's job, minus what only the server needs."""

    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]


@dataclass(frozen=True)
class ActorState:
    """What an actor holds after a job: for routing the next ones."""

    actor_id: str
    node_id: str | None
    pid: int
    model_files: frozenset[str] = frozenset()
    cache_keys: frozenset[bytes] = frozenset()
    jobs_done: int = 0


@dataclass(frozen=True)
class ShippedFile:
    """An output file returned as bytes (``kind`` is ``output`` or ``temp``)."""

    kind: str
    subfolder: str
    filename: str
    data: bytes


@dataclass(slots=True, unsafe_hash=True)
class FilesShipped(Event):
    """Sent just before a node's ``NodeFinished`` when the actor ships files: what it wrote."""

    node_id: str = ""
    files: tuple[ShippedFile, ...] = ()


@dataclass(frozen=True)
class EventBatch:
    """Executor events in the order they were emitted (previews carry uint8 arrays, never GPU tensors);
    the last batch of a job carries its outcome."""

    events: tuple[Event, ...]
    outcome: "JobOutcome | None" = None


@dataclass
class JobOutcome:
    """The last item of a job's stream."""

    prompt_id: str
    status: str  # success | error | interrupted | invalid
    outputs: dict[str, dict] = field(default_factory=dict)
    meta: dict[str, dict] = field(default_factory=dict)
    validation_error: dict[str, Any] | None = None  # node_id, class_type, exception_type, message
    state: ActorState | None = None


def absolute_paths(paths: Paths) -> Paths:
    """``paths`` with every folder absolute (actors run in other working directories)."""
    return Paths(output_dir=Path(paths.output_dir).resolve(), input_dir=Path(paths.input_dir).resolve(),
                 temp_dir=Path(paths.temp_dir).resolve(), models_dir=Path(paths.models_dir).resolve(),
                 extra_model_dirs=paths.extra_model_dirs)  # already absolute (nodegraph.model_folders)
