"""ComfyUI's ``comfy`` package for custom node packs: ``comfy.utils``, ``comfy.model_management``,
``comfy.samplers``, ``comfy.cli_args`` and ``comfy.comfy_types`` are nodegraph's own; every other
``comfy.*`` module is a placeholder (``nodegraph.comfy_compat.unsupported``)."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # ``import comfy`` then ``comfy.utils.x``: ComfyUI has the sub-module imported already
    if name.startswith("__"):
        raise AttributeError(name)
    return importlib.import_module(f"comfy.{name}")
