"""Image compositing through a mask or an alpha channel: ImageCompositeMasked, JoinImageWithAlpha,
SplitImageWithAlpha. Names, inputs, defaults and outputs are ComfyUI's.

ComfyUI's alpha convention: a MASK marks what is hidden, so alpha = 1 − mask when joining and
mask = 1 − alpha when splitting. Stricter than ComfyUI: batches must match or be one (ComfyUI
truncates to the shorter or repeats silently — JoinImageWithAlpha with one mask and four images gave one
image), and a source placed outside the destination is an error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.node import BOOLEAN, INT, Input, Node, Output
from nodegraph.types import IMAGE, MASK
from nodegraph_nodes.image.operations import MAX_RESOLUTION

from .tensors import as_images, as_masks, paired_batch, resize_masks, to_batch


def match_destination_channels(destination: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``source`` with the destination's channel count: extra channels dropped, a missing alpha opaque."""
    wanted, have = destination.shape[-1], source.shape[-1]
    if have > wanted:
        return source[..., :wanted]
    if have < wanted:
        return F.pad(source, (0, wanted - have), value=1.0)
    return source


class ImageCompositeMasked(Node):
    """Pastes source onto destination with its top-left corner at (x, y), through the optional mask
    (1 = source, 0 = destination; resized to the source). resize_source first scales the source to the
    destination's size. The result keeps the destination's channels. Batches must be equal or one;
    a corner outside the destination is an error."""

    category = "image"
    display_name = "Image Composite Masked"
    destination = Input(IMAGE)
    source = Input(IMAGE)
    x = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    y = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=1)
    resize_source = Input(BOOLEAN, default=False)
    mask = Input(MASK, optional=True)
    outputs = (Output(IMAGE),)

    def execute(self, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                resize_source: bool = False, mask: torch.Tensor | None = None) -> tuple:
        dest = as_images(destination, "destination")
        src = match_destination_channels(dest, as_images(source, "source").to(dest.device, dest.dtype))
        height, width = dest.shape[1:3]
        if x >= width or y >= height:
            raise ValueError(f"inputs 'x', 'y' are ({x}, {y}), outside the {width}×{height} destination; "
                             f"use x < {width} and y < {height}")
        if resize_source and src.shape[1:3] != dest.shape[1:3]:
            src = F.interpolate(src.movedim(-1, 1), size=(height, width), mode="bilinear").movedim(1, -1)
        batch = paired_batch(dest.shape[0], "destination", src.shape[0], "source")
        if mask is None:
            weight = torch.ones((1, *src.shape[1:3]), dtype=dest.dtype, device=dest.device)
        else:
            weight = resize_masks(as_masks(mask).to(dest.device, dest.dtype), *src.shape[1:3])
            batch = paired_batch(batch, "destination/source", weight.shape[0], "mask")
        output = to_batch(dest, batch).clone()
        bottom, right = min(y + src.shape[1], height), min(x + src.shape[2], width)
        over = to_batch(src, batch)[:, :bottom - y, :right - x]
        alpha = to_batch(weight, batch)[:, :bottom - y, :right - x, None]
        under = output[:, y:bottom, x:right]
        output[:, y:bottom, x:right] = alpha * over + (1.0 - alpha) * under
        return (output,)


class JoinImageWithAlpha(Node):
    """Adds an alpha channel to an RGB image: alpha = 1 − mask (resized to the image). One mask serves
    every image of the batch; other batch mismatches are errors."""

    category = "mask/compositing"
    display_name = "Join Image with Alpha"
    image = Input(IMAGE)
    alpha = Input(MASK)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, alpha: torch.Tensor) -> tuple:
        images = as_images(image)
        masks = resize_masks(as_masks(alpha, "alpha").to(images.device, images.dtype), *images.shape[1:3])
        batch = paired_batch(images.shape[0], "image", masks.shape[0], "alpha")
        rgb = to_batch(images[..., :3], batch)
        return (torch.cat((rgb, (1.0 - to_batch(masks, batch)).unsqueeze(-1)), dim=-1),)


class SplitImageWithAlpha(Node):
    """Splits an image into its RGB channels and a mask = 1 − alpha (all zeros when it has no alpha)."""

    category = "mask/compositing"
    display_name = "Split Image with Alpha"
    image = Input(IMAGE)
    outputs = (Output(IMAGE), Output(MASK))

    def execute(self, image: torch.Tensor) -> tuple:
        images = as_images(image)
        if images.shape[-1] > 3:
            mask = 1.0 - images[..., 3]
        else:
            mask = torch.zeros(images.shape[:3], dtype=images.dtype, device=images.device)
        return (images[..., :3].clone(), mask)
