"""Video and audio: ComfyUI's VIDEO and AUDIO types, their file nodes (load, save, preview, trim) and
animated WebP/PNG, decoded and encoded with PyAV.

Registered through the ``nodegraph.nodes`` entry point ``media`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import animated, audio_concat, audio_latent, audio_nodes, record_audio, video_nodes

    return [video_nodes, audio_nodes, audio_concat, animated, audio_latent, record_audio]
