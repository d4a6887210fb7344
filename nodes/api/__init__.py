"""API nodes: ComfyUI's nodes that call a paid model through Comfy.org's API proxy (GeminiNodeV2, GeminiInputFiles).

:mod:`.comfy_org` is the client (the only code in nodegraph that talks to the network, and only for a prompt
that carries the user's Comfy.org credentials); :mod:`.gemini` builds Gemini's requests and reads its answers;
:mod:`.gemini_nodes` holds the node classes. Registered through the ``nodegraph.nodes`` entry point ``api``
(``pyproject.toml``), like any pack: :func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import gemini_nodes

    return [gemini_nodes]
