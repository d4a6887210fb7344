"""Mask nodes (category ``mask``): convert to and from images, fill, invert, crop, feather, grow,
threshold and combine ``MASK`` tensors. Names, inputs, defaults and outputs are ComfyUI's.

Stricter than ComfyUI where it silently gives something surprising: a crop or composite placed
outside the mask is an error (ComfyUI returns an empty mask / leaves it unchanged), ``alpha`` of an
image without one is an error, mismatched batches are errors (see :mod:`.tensors`). FeatherMask
ramps the right and bottom edges as the mirror image of the left and top ones (ComfyUI's loop is
off by one there: it scales the first column/row too and starts the ramp at 2/right).
"""

from __future__ import annotations

import torch

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import IMAGE, MASK
from nodegraph_nodes.image.operations import MAX_RESOLUTION

from .tensors import as_images, as_masks, edge_ramp, grow, paired_batch, to_batch

CATEGORY = "mask"
CHANNELS = ["red", "green", "blue", "alpha"]
OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


class MaskToImage(Node):
    """A mask as a grey RGB image (the mask value in all three channels)."""

    category = CATEGORY
    display_name = "Convert Mask to Image"
    mask = Input(MASK)
    outputs = (Output(IMAGE),)

    def execute(self, mask: torch.Tensor) -> tuple:
        masks = as_masks(mask)
        return (masks.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(),)


class ImageToMask(Node):
    """One channel of an image as a mask. 'alpha' of an image without an alpha channel is an error."""

    category = CATEGORY
    display_name = "Convert Image to Mask"
    image = Input(IMAGE)
    channel = Input(COMBO, choices=CHANNELS)
    outputs = (Output(MASK),)

    def execute(self, image: torch.Tensor, channel: str) -> tuple:
        image = as_images(image)
        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"input 'channel' is {channel!r}, but the image has {image.shape[-1]} "
                             "channel(s) and no alpha; pick red, green or blue")
        return (image[..., index].clone(),)


class SolidMask(Node):
    """A width×height mask filled with one value."""

    category = CATEGORY
    display_name = "Solid Mask"
    value = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    width = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    height = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    outputs = (Output(MASK),)

    def execute(self, value: float, width: int, height: int) -> tuple:
        return (torch.full((1, height, width), float(value), dtype=torch.float32),)


class InvertMask(Node):
    """1 − mask."""

    category = CATEGORY
    display_name = "Invert Mask"
    mask = Input(MASK)
    outputs = (Output(MASK),)

    def execute(self, mask: torch.Tensor) -> tuple:
        return (1.0 - as_masks(mask),)


class CropMask(Node):
    """The width×height region at (x, y); a region reaching past the edge stops at the edge. A corner
    outside the mask is an error (ComfyUI returns an empty mask)."""

    category = CATEGORY
    display_name = "Crop Mask"
    mask = Input(MASK)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    width = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    height = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    outputs = (Output(MASK),)

    def execute(self, mask: torch.Tensor, x: int, y: int, width: int, height: int) -> tuple:
        masks = as_masks(mask)
        mask_h, mask_w = masks.shape[-2:]
        if x >= mask_w or y >= mask_h:
            raise ValueError(f"inputs 'x', 'y' are ({x}, {y}), outside the {mask_w}×{mask_h} mask; "
                             f"use x < {mask_w} and y < {mask_h}")
        return (masks[:, y:y + height, x:x + width].clone(),)


class FeatherMask(Node):
    """Fades the mask linearly to the edges over left/top/right/bottom pixels (the outermost pixel gets
    1/n of its value, the n-th 1). Right and bottom mirror left and top exactly (see module notes)."""

    category = CATEGORY
    display_name = "Feather Mask"
    mask = Input(MASK)
    left = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    top = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    right = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    bottom = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    outputs = (Output(MASK),)

    def execute(self, mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> tuple:
        masks = as_masks(mask)
        height, width = masks.shape[-2:]
        columns = edge_ramp(width, min(left, width), min(right, width)).to(masks)
        rows = edge_ramp(height, min(top, height), min(bottom, height)).to(masks)
        return (masks * rows[:, None] * columns[None, :],)


class GrowMask(Node):
    """Grows (expand > 0) or shrinks (< 0) the mask by that many pixels: grey dilation/erosion with a
    3×3 cross (tapered corners) or square."""

    category = CATEGORY
    display_name = "Grow Mask"
    mask = Input(MASK)
    expand = Input(INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1)
    tapered_corners = Input(BOOLEAN, default=True)
    outputs = (Output(MASK),)

    def execute(self, mask: torch.Tensor, expand: int, tapered_corners: bool = True) -> tuple:
        masks = as_masks(mask)
        if expand == 0:
            return (masks,)
        return (grow(masks.float(), expand, tapered_corners),)


class ThresholdMask(Node):
    """1 where the mask is above value, else 0."""

    category = CATEGORY
    display_name = "Threshold Mask"
    mask = Input(MASK)
    value = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01)
    outputs = (Output(MASK),)

    def execute(self, mask: torch.Tensor, value: float) -> tuple:
        return ((as_masks(mask) > value).float(),)


class MaskComposite(Node):
    """Combines source into destination at (x, y) — multiply, add, subtract, or the logical and/or/xor
    of the rounded masks — and clamps to 0..1. A position outside the destination and mismatched
    batches are errors."""

    category = CATEGORY
    display_name = "Mask Composite"
    destination = Input(MASK)
    source = Input(MASK)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    operation = Input(COMBO, choices=OPERATIONS)
    outputs = (Output(MASK),)

    def execute(self, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                operation: str) -> tuple:
        dest, src = as_masks(destination, "destination"), as_masks(source, "source").to(destination.device)
        height, width = dest.shape[-2:]
        if x >= width or y >= height:
            raise ValueError(f"inputs 'x', 'y' are ({x}, {y}), outside the {width}×{height} destination; "
                             f"use x < {width} and y < {height}")
        batch = paired_batch(dest.shape[0], "destination", src.shape[0], "source")
        output = to_batch(dest, batch).clone()
        bottom, right = min(y + src.shape[-2], height), min(x + src.shape[-1], width)
        under = output[:, y:bottom, x:right]
        over = to_batch(src, batch)[:, :bottom - y, :right - x]
        if operation == "multiply":
            combined = under * over
        elif operation == "add":
            combined = under + over
        elif operation == "subtract":
            combined = under - over
        elif operation in ("and", "or", "xor"):
            a, b = under.round().bool(), over.round().bool()
            combined = {"and": a & b, "or": a | b, "xor": a ^ b}[operation].float()
        else:
            raise ValueError(f"input 'operation' is {operation!r}; use one of {', '.join(OPERATIONS)}")
        output[:, y:bottom, x:right] = combined
        return (output.clamp(0.0, 1.0),)
