"""Mask nodes: ``MASK`` tensors (float ``[B,H,W]`` in 0..1) made, edited, combined, loaded and previewed,
and the image nodes that composite through a mask or an alpha channel.

Registered through the ``nodegraph.nodes`` entry point ``mask`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import compositing, files, operations, sam3_detect, sam3_track, scail2_mask

    return [operations, compositing, files, sam3_detect, sam3_track, scail2_mask]
