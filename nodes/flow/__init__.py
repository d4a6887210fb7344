"""Flow control: the lazy Switch and loops on the engine's run-time expansion (Repeat, ForEach, and
ComfyUI's Start Loop / End Loop).

Registered through the ``nodegraph.nodes`` entry point ``flow`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import switch, loops, comfy_loops

    return [switch, loops, comfy_loops]
