"""ComfyUI's ``comfy_api.v0_0_1``: the same surface as ``comfy_api.latest`` in nodegraph."""

from comfy_api.latest import ComfyAPI, ComfyAPISync, ComfyExtension, Input, io, ui  # noqa: F401

__all__ = ["ComfyAPI", "ComfyAPISync", "ComfyExtension", "Input", "io", "ui"]
