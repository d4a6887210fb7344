"""ComfyUI's SaveAnimatedWEBP and SaveAnimatedPNG: a batch of images as one animated WebP or APNG.

Inputs, defaults and the ui record (``{"images": [file], "animated": [flag]}``) follow ComfyUI
(``comfy_extras/nodes_images.py``). The workflow goes where ComfyUI puts it: in the WebP's EXIF, the
prompt as tag 0x0110 (Model) ``"prompt:<json>"`` and each extra key downward from 0x010F (Make)
``"<key>:<json>"``; in the APNG as ``comf`` chunks after the image data (``<key>\\0<json>``).
Frame duration is ``int(1000 / fps)`` milliseconds, as in ComfyUI. Files never overwrite another.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, STRING, Input, Node, NodeResult
from nodegraph.pngmeta import to_uint8
from nodegraph.types import IMAGE
from nodegraph.value_checks import check_image

from .video_nodes import output_file

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _frames(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(to_uint8(image)) for image in images]


def webp_exif(prompt: dict | None, extra_pnginfo: dict | None) -> Image.Exif:
    exif = Image.Exif()
    if prompt is not None:
        exif[0x0110] = "prompt:" + json.dumps(prompt)
    tag = 0x010F
    for key, value in (extra_pnginfo or {}).items():
        exif[tag] = f"{key}:{json.dumps(value)}"
        tag -= 1
    return exif


def apng_info(prompt: dict | None, extra_pnginfo: dict | None) -> PngInfo:
    info = PngInfo()
    fields = ({"prompt": prompt} if prompt is not None else {}) | dict(extra_pnginfo or {})
    for key, value in fields.items():
        info.add(b"comf", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"), after_idat=True)
    return info


class _AnimationSaver(Node):
    abstract = True
    category = "image/animation"
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    images = Input(IMAGE)
    filename_prefix = Input(STRING, default="ComfyUI")
    fps = Input(FLOAT, default=6.0, min=0.01, max=1000.0, step=0.01)

    def write(self, images: torch.Tensor, filename_prefix: str, extension: str, save: Any) -> dict[str, Any]:
        path, name, subfolder = output_file(self.ctx.paths.output_dir, filename_prefix, int(images.shape[2]),
                                            int(images.shape[1]), extension)
        buffer = io.BytesIO()
        frames = _frames(images)
        save(frames, buffer)
        path.write_bytes(buffer.getvalue())
        return {"filename": name, "subfolder": subfolder, "type": "output"}


class SaveAnimatedWEBP(_AnimationSaver):
    """Saves the images as one animated WebP in the output folder (lossless or at a quality)."""

    display_name = "SaveAnimatedWEBP"
    lossless = Input(BOOLEAN, default=True)
    quality = Input(INT, default=80, min=0, max=100)
    method = Input(COMBO, choices=list(WEBP_METHODS))

    def execute(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", fps: float = 6.0,
                lossless: bool = True, quality: int = 80, method: str = "default", prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        images = check_image(images, "images")
        exif = webp_exif(prompt, extra_pnginfo)

        def save(frames: list[Image.Image], out: io.BytesIO) -> None:
            frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], duration=int(1000.0 / fps),
                           exif=exif, lossless=lossless, quality=quality, method=WEBP_METHODS[method], loop=0)

        result = self.write(images, filename_prefix, "webp", save)
        return NodeResult(outputs=(), ui={"images": [result], "animated": [images.shape[0] != 1]})


class SaveAnimatedPNG(_AnimationSaver):
    """Saves the images as one animated PNG (APNG) in the output folder."""

    display_name = "SaveAnimatedPNG"
    compress_level = Input(INT, default=4, min=0, max=9)

    def execute(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", fps: float = 6.0,
                compress_level: int = 4, prompt: dict | None = None, extra_pnginfo: dict | None = None) -> NodeResult:
        images = check_image(images, "images")
        info = apng_info(prompt, extra_pnginfo)

        def save(frames: list[Image.Image], out: io.BytesIO) -> None:
            frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:], duration=int(1000.0 / fps),
                           pnginfo=info, compress_level=compress_level)

        result = self.write(images, filename_prefix, "png", save)
        return NodeResult(outputs=(), ui={"images": [result], "animated": [True]})
