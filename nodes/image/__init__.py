"""Image operations on ``IMAGE`` tensors: create, transform, filter, resize, batch, seeded augmentation.

Registered through the ``nodegraph.nodes`` entry point ``image`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import augment, batch, bounding_boxes, color, layout, moge, operations, painter, resize

    return [operations, augment, resize, batch, layout, color, bounding_boxes, painter, moge]
