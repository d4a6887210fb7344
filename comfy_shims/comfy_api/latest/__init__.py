"""ComfyUI's ``comfy_api.latest`` for V3 packs: ``io`` (the node schema), ``ui`` (preview outputs),
``ComfyExtension`` (what ``comfy_entrypoint`` returns) and ``ComfyAPI`` / ``ComfyAPISync``
(``execution.set_progress``). The schema surface is ComfyUI's ``comfy_api`` 0.0.2 / latest as of the
ComfyUI commit nodegraph follows (docs/custom-nodes.md)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from nodegraph.comfy_compat.current import current_node

from . import _io as io
from . import _ui as ui

comfy_io = io
IO = io
UI = ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called once when the pack loads."""

    @abstractmethod
    async def get_node_list(self) -> list:
        """The pack's V3 node classes."""


class _Execution:
    def set_progress(self, value: float, max_value: float, node_id: str | None = None,
                     preview_image: Any = None, ignore_size_limit: bool = False) -> None:
        ctx = current_node()
        if ctx is None:
            return
        if preview_image is not None:
            from comfy.utils import _preview_tensor

            image = _preview_tensor(preview_image)
            if image is not None:
                ctx.preview(image[0] if image.ndim == 4 else image)
        ctx.progress(int(value), int(max_value))


class _AsyncExecution(_Execution):
    async def set_progress(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _Execution.set_progress(self, *args, **kwargs)


class ComfyAPISync:
    VERSION = "latest"
    STABLE = False

    def __init__(self) -> None:
        self.execution = _Execution()


class ComfyAPI(ComfyAPISync):
    def __init__(self) -> None:
        self.execution = _AsyncExecution()


ComfyAPI_latest = ComfyAPI


class Input:
    Image = io.Image.Type
    Mask = io.Mask.Type
    Latent = io.Latent.Type
    Audio = io.Audio.Type
    Video = io.Video.Type


def __getattr__(name: str) -> Any:
    from nodegraph.comfy_compat.unsupported import unsupported_attribute

    return unsupported_attribute("comfy_api.latest", name)


__all__ = ["io", "ui", "IO", "UI", "ComfyExtension", "ComfyAPI", "ComfyAPISync", "Input"]
