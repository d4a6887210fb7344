"""Constant values (int, float, string, boolean), text, regex, number and logic utilities.

Registered through the ``nodegraph.nodes`` entry point ``primitives`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import camera_angle, logic, numbers, regex, strings, text_ops, values

    return [values, strings, text_ops, regex, numbers, logic, camera_angle]
