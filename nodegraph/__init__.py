"""nodegraph: a ComfyUI-compatible node-graph engine for language-and-vision pipelines.

The engine (this package) knows nothing about diffusion: node API, registry, workflow formats,
validation, executor, cache, events, CLI. The node library lives in the ``nodes`` package.
"""

from .builder import Graph, NodeRef
from .cache import OutputCache
from .context import Paths
from .errors import ExecutionFailed, Interrupted, NodeError, ValidationFailed, WorkflowFormatError
from .executor import Engine, RunResult, run
from .node import Input, Node, NodeResult, Output
from .registry import NodeRegistry, default_registry

__version__ = "0.1.0"

__all__ = ["Graph", "NodeRef", "OutputCache", "Paths", "ExecutionFailed", "Interrupted", "NodeError",
           "ValidationFailed", "WorkflowFormatError", "Engine", "RunResult", "run", "Input", "Node",
           "NodeResult", "Output", "NodeRegistry", "default_registry", "__version__"]
