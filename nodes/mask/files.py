"""Mask file nodes: LoadImageMask (one channel of an input image as a mask) and MaskPreview (shows a
mask on the node through a temp PNG). Names and inputs are ComfyUI's; file rules are LoadImage's and
PreviewImage's (:mod:`nodegraph_nodes.io.files`).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps

from nodegraph.node import COMBO, Input, Node, NodeResult, Output
from nodegraph.pngmeta import comfy_text_chunks
from nodegraph.types import MASK
from nodegraph.user_files import folder_of, resolve_annotated
from nodegraph_nodes.io.files import InputImageNode, save_images

from .tensors import as_masks

#: LoadImageMask's channel choices, in ComfyUI's order
MASK_CHANNELS = ["alpha", "red", "green", "blue"]


def load_mask_file(path, channel: str) -> torch.Tensor:
    """One channel of the image at ``path`` (its first frame) as ``[1,H,W]``; alpha is inverted
    (mask = 1 − alpha), and an image without alpha counts as opaque."""
    try:
        with Image.open(path) as img:
            frame = ImageOps.exif_transpose(img)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            if frame.getbands() != ("R", "G", "B", "A"):
                frame = frame.convert("RGBA")
            band = np.asarray(frame.getchannel(channel[0].upper()), dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot load image {path.name}: {exc}") from None
    mask = torch.from_numpy(band.copy())
    if channel == "alpha":
        mask = 1.0 - mask
    return mask.unsqueeze(0)


class LoadImageMask(InputImageNode):
    """Loads one channel of an image from the input folder as a mask (alpha becomes 1 − alpha)."""

    category = "mask"
    display_name = "Load Image (as Mask)"
    channel = Input(COMBO, choices=MASK_CHANNELS)
    outputs = (Output(MASK),)

    def execute(self, image: str, channel: str) -> tuple:
        if channel not in MASK_CHANNELS:
            raise ValueError(f"input 'channel' is {channel!r}; use one of {', '.join(MASK_CHANNELS)}")
        path = resolve_annotated(image, self.ctx.paths)
        if not path.is_file():
            raise FileNotFoundError(f"input 'image': {image!r} does not exist in the input folder "
                                    f"({self.ctx.paths.input_dir})")
        return (load_mask_file(path, channel),)


class MaskPreview(Node):
    """Previews the mask on the node (saved as a grey PNG in the temp folder); outputs the same mask
    unchanged."""

    category = "mask"
    display_name = "Preview Mask"
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    mask = Input(MASK)
    #: today's ComfyUI passes the mask through (outputs=[IO.Mask.Output(display_name="mask")])
    outputs = (Output(MASK, "mask"),)

    def execute(self, mask: torch.Tensor, prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        masks = as_masks(mask).clamp(0.0, 1.0)
        preview = masks.unsqueeze(-1).expand(-1, -1, -1, 3)
        suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        results = save_images(preview, "ComfyUI" + suffix, folder_of(self.ctx.paths, "temp"), "temp", 1,
                              comfy_text_chunks(prompt, extra_pnginfo))
        return NodeResult(outputs=(mask,), ui={"images": results})
