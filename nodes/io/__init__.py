"""Files in and out: load images from the input folder, save/preview PNGs, show values, export datasets,
send images to the client over its WebSocket.

Registered through the ``nodegraph.nodes`` entry point ``io`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import compare, dataset, files, output_files, websocket

    return [files, dataset, websocket, compare, output_files]
