"""Error types. Each names what went wrong, where (node, input) and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class NodegraphError(Exception):
    """Base of all errors the engine raises on purpose."""


class WorkflowFormatError(NodegraphError):
    """A workflow file or object cannot be read at all (malformed JSON, wrong top-level shape...)."""


@dataclass(frozen=True, slots=True)
class NodeError:
    """One validation problem, tied to a node and (usually) an input.

    ``kind`` is machine-readable (``required_input_missing``, ``value_above_max``, ...); ``message`` is a
    sentence for people that names the node, the input and the fix.
    """

    kind: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "node_id": self.node_id,
                "class_type": self.class_type, "input_name": self.input_name, "extra": self.extra}


class ValidationFailed(NodegraphError):
    """The workflow is invalid; ``errors`` holds every problem found, not just the first."""

    def __init__(self, errors: list[NodeError]):
        self.errors = list(errors)
        lines = [f"  - {e.message}" for e in self.errors]
        super().__init__(f"workflow is invalid ({len(self.errors)} error(s)):\n" + "\n".join(lines))


class Interrupted(NodegraphError):
    """Raised inside a node (by ``ctx.check_interrupted()``) when the run was interrupted."""


@dataclass
class NodeFailure:
    """What the executor reports about a node that raised."""

    node_id: str
    class_type: str
    exception_type: str
    exception_message: str
    traceback: list[str]
    inputs: dict[str, list[str]]


class ExecutionFailed(NodegraphError):
    """A node raised while running; ``failure`` says which, with traceback and inputs."""

    def __init__(self, failure: NodeFailure):
        self.failure = failure
        super().__init__(f"node {failure.node_id} ({failure.class_type}) failed: "
                         f"{failure.exception_type}: {failure.exception_message}")
