"""Constant values (int, float, string, boolean) and text utilities.

Registered through the ``nodegraph.nodes`` entry point ``primitives`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import values, strings

    return [values, strings]
