"""ComfyUI's ``comfy.comfy_types`` (the names packs import from it)."""

from .node_typing import IO, CheckLazyMixin, ComfyNodeABC, FileLocator, InputTypeDict

__all__ = ["IO", "InputTypeDict", "ComfyNodeABC", "CheckLazyMixin", "FileLocator"]
