"""Painter: the image and mask drawn on the node's canvas (ComfyUI's ``comfy_extras/nodes_painter.py``).

ComfyUI's frontend paints on a canvas the size of the base ``image`` (or ``width`` × ``height`` filled with
``bg_color``) and uploads the strokes as an RGBA PNG whose name is the ``mask`` value. The node composites
that PNG over the base (RGB × alpha + base × (1 − alpha), the PNG resized with Lanczos when its size differs)
and outputs the alpha as the MASK; with no painting the base is returned and the mask is zeros. Only the first
image of a batch is the base, as in ComfyUI. The result is previewed on the node.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from PIL import Image

from nodegraph.context import Paths
from nodegraph.node import INT, STRING, Input, Node, NodeResult, Output
from nodegraph.pngmeta import comfy_text_chunks
from nodegraph.types import ANY, IMAGE, MASK
from nodegraph.user_files import folder_of, resolve_annotated
from nodegraph_nodes.io.files import file_sha256, save_images

from .checks import image_input, node_error

NODE = "Painter"


class _SocketlessInput(Input):
    """A widget input ComfyUI marks socketless, with the extra spec options its frontend reads."""

    def options(self, paths: Paths | None = None) -> dict[str, Any]:
        opts = super().options(paths)
        opts["socketless"] = True
        if self.name == "mask":
            opts["widgetType"] = "PAINTER"
        else:
            opts["hidden"] = True
        return opts


class _ColorInput(Input):
    """ComfyUI's ``COLOR`` widget (a ``#rrggbb`` string), held here as a canvas widget of type ``*``."""

    def spec(self, paths: Paths | None = None) -> list[Any]:
        return ["COLOR", self.options(paths)]


def hex_rgb(value: Any) -> tuple[float, float, float]:
    """``#rrggbb`` as 0..1 floats; anything else is black, as in ComfyUI."""
    text = str(value or "").lstrip("#")
    if len(text) != 6:
        return (0.0, 0.0, 0.0)
    try:
        return tuple(int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        return (0.0, 0.0, 0.0)


def painted_layer(path, width: int, height: int) -> np.ndarray:
    """The painting PNG at ``path`` as float RGBA ``[H, W, 4]`` of the canvas size."""
    try:
        with Image.open(path) as img:
            rgba = img.convert("RGBA")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise node_error(NODE, f"input 'mask': cannot read the painting {path.name}: {exc}") from None
    if rgba.size != (width, height):
        rgba = rgba.resize((width, height), Image.LANCZOS)
    return np.asarray(rgba, dtype=np.float32) / 255.0


class Painter(Node):
    """Paints on a blank canvas or over an image; outputs the composited image and the painted alpha as mask."""

    category = "image"
    display_name = "Painter"
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    canvas_widgets = ("bg_color",)
    image = Input(IMAGE, optional=True, tooltip="Optional base image to paint over")
    mask = _SocketlessInput(STRING, default="", image_upload=True)
    width = _SocketlessInput(INT, default=512, min=64, max=4096, step=64)
    height = _SocketlessInput(INT, default=512, min=64, max=4096, step=64)
    bg_color = _ColorInput(ANY, default="#000000")
    outputs = (Output(IMAGE, "IMAGE"), Output(MASK, "MASK"))

    @classmethod
    def fingerprint(cls, paths: Paths, mask: str | None = None, **_: Any) -> Any:
        """The painting file's SHA-256; "" without a painting or when it cannot be read (ComfyUI's rule)."""
        if not mask or not str(mask).strip():
            return ""
        try:
            return file_sha256(resolve_annotated(str(mask), paths))
        except (OSError, ValueError):
            return ""

    def execute(self, mask: str = "", width: int = 512, height: int = 512, bg_color: Any = "#000000",
                image: torch.Tensor | None = None, prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        if image is not None:
            base = image_input(NODE, "image", image)[:1].float()
            if base.shape[-1] == 1:
                base = base.expand(-1, -1, -1, 3)
            base = base[..., :3]
            h, w = int(base.shape[1]), int(base.shape[2])
        else:
            h, w = int(height), int(width)
            base = torch.tensor(hex_rgb(bg_color), dtype=torch.float32).expand(1, h, w, 3).clone()
        if mask and str(mask).strip():
            try:
                path = resolve_annotated(str(mask), self.ctx.paths)
            except ValueError as exc:
                raise node_error(NODE, f"input 'mask': {exc}") from None
            if not path.is_file():
                raise FileNotFoundError(f"{NODE}: input 'mask': the painting {mask!r} does not exist "
                                        f"({path.parent}); paint on the node again")
            layer = torch.from_numpy(painted_layer(path, w, h).copy())
            alpha = layer[..., 3:4]
            out = layer[..., :3] * alpha + base[0].cpu() * (1.0 - alpha)
            out_image, out_mask = out.unsqueeze(0), layer[..., 3].unsqueeze(0)
        else:
            out_image, out_mask = base, torch.zeros((1, h, w), dtype=torch.float32)
        suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        results = save_images(out_image.clamp(0.0, 1.0), "ComfyUI" + suffix, folder_of(self.ctx.paths, "temp"),
                              "temp", 1, comfy_text_chunks(prompt, extra_pnginfo))
        return NodeResult(outputs=(out_image, out_mask), ui={"images": results})
