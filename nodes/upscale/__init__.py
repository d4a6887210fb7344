"""Model upscaling (ComfyUI's UpscaleModelLoader / ImageUpscaleWithModel): built-in ncnn Real-ESRGAN
models and PyTorch upscalers, run tile by tile.

Registered through the ``nodegraph.nodes`` entry point ``upscale`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import upscale

    return [upscale]
