"""Safety: image and prompt classifiers, the built-in Open-NSFW model, the ``require_safety`` policy.

Registered through the ``nodegraph.nodes`` entry point ``safety`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import safety

    return [safety]
