"""ComfyUI's V3 UI outputs (``comfy_api.latest.ui``): what a V3 node shows on the canvas and keeps in
history. ``PreviewImage`` / ``PreviewMask`` save through our PreviewImage node (the temp folder, the
prompt in the PNG's metadata from ``cls.hidden``); ``PreviewText``, ``SavedImages``, ``SavedResult``
are the records ComfyUI returns."""

from __future__ import annotations

from typing import Any

from ._io import FolderType, _UIOutput


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type: FolderType) -> None:
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    def __init__(self, results: list, is_animated: bool = False) -> None:
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict:
        data: dict[str, Any] = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


def _preview(images: Any, cls: Any) -> list:
    from nodegraph.comfy_compat.host import HOST
    from nodegraph.comfy_compat.native import run_native

    node = HOST.registry.get("PreviewImage") if HOST.registry is not None else None
    if node is None:
        from nodegraph.comfy_compat.unsupported import NotSupportedByNodegraph

        raise NotSupportedByNodegraph("comfy_api.latest.ui.PreviewImage (no PreviewImage node is registered)")
    hidden = getattr(cls, "hidden", None)
    kwargs = {"images": images}
    if hidden is not None:
        kwargs.update(prompt=hidden.prompt, extra_pnginfo=hidden.extra_pnginfo)
    return run_native(node, "PreviewImage", kwargs)["ui"]["images"]


class PreviewImage(_UIOutput):
    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        self.values = _preview(image, cls)
        self.animated = animated

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    def __init__(self, mask: Any, animated: bool = False, cls: Any = None, **kwargs: Any) -> None:
        preview = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(preview, animated, cls, **kwargs)


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs: Any) -> None:
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


class PreviewVideo(_UIOutput):
    def __init__(self, values: list, **kwargs: Any) -> None:
        self.values = values

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (True,)}


def __getattr__(name: str) -> Any:
    from nodegraph.comfy_compat.unsupported import unsupported_attribute

    return unsupported_attribute("comfy_api.latest.ui", name)


__all__ = ["SavedResult", "SavedImages", "PreviewImage", "PreviewMask", "PreviewText", "PreviewVideo"]
