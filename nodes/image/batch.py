"""ComfyUI's image batch nodes: ImageFromBatch, BatchImagesNode, RepeatImageBatch, RebatchImages.

Names, inputs, defaults and outputs are ComfyUI's. BatchImagesNode's growable ``images`` group is
declared as the flat inputs its API prompts carry: ``images.image0`` … ``images.image49`` (ComfyUI's
autogrow, prefix ``image``, up to 50 inputs). ComfyUI now shows the first two as required (``min=2``),
but its own workflow templates (saved when the minimum was 1) often connect only ``images.image0``; here
only that one is required, and a single image passes through as a batch.

Stricter than ComfyUI: ImageFromBatch refuses an index outside the batch (ComfyUI moves it to the
nearest end silently; ``length`` stays an upper bound, as ComfyUI's templates use it: 4096 = the rest); BatchImagesNode refuses mixing 1-channel images with colour images (ComfyUI pads one
channel and then fails in ``torch.cat``); RebatchImages refuses images of different sizes in one new
batch with a message naming them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import IMAGE

from .checks import image_input, int_in_range, node_error
from .operations import MAX_RESOLUTION, resize_image

#: BatchImagesNode's autogrow slots (ComfyUI: prefix "image", min 2, max 50)
BATCH_SLOTS = tuple(f"images.image{i}" for i in range(50))


def batch_images(images: list[tuple[str, torch.Tensor]], node: str) -> torch.Tensor:
    """Join ``(input name, IMAGE)`` pairs into one batch: channels padded with an opaque alpha to the
    most channels, sizes resized to the first image's (bilinear, centre crop) as ComfyUI does."""
    channels = {image.shape[-1] for _, image in images}
    if 1 in channels and len(channels) > 1:
        names = ", ".join(f"'{name}' ({image.shape[-1]})" for name, image in images)
        raise node_error(node, f"inputs mix 1-channel and colour images: {names}; convert them first "
                               "(e.g. MaskToImage or ImageToMask)")
    wanted = max(channels)
    first = images[0][1]
    height, width = first.shape[1], first.shape[2]
    out = []
    for _, image in images:
        image = image.to(first.device, first.dtype)
        if image.shape[-1] < wanted:
            image = F.pad(image, (0, wanted - image.shape[-1]), value=1.0)
        if image.shape[1:3] != (height, width):
            image = resize_image(image, width, height, "bilinear", "center")
        out.append(image)
    return torch.cat(out, dim=0)


class ImageFromBatch(Node):
    """Takes up to length images starting at batch_index (negative counts from the end; a length past
    the end takes the rest). Stricter than ComfyUI: an index outside the batch is an error, not moved
    to the nearest end."""

    category = "image/batch"
    display_name = "Get Image from Batch"
    image = Input(IMAGE)
    batch_index = Input(INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION)
    length = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, batch_index: int, length: int) -> tuple:
        node = "ImageFromBatch"
        image = image_input(node, "image", image)
        size = image.shape[0]
        index = int_in_range(node, "batch_index", batch_index, -MAX_RESOLUTION, MAX_RESOLUTION)
        length = int_in_range(node, "length", length, 1, 4096)
        start = index + size if index < 0 else index
        if not 0 <= start < size:
            raise node_error(node, f"input 'batch_index' is {index}, outside the batch of {size}; "
                                   f"use {-size} to {size - 1}")
        return (image[start:start + length].clone(),)


class BatchImagesNode(Node):
    """Joins up to 50 images into one batch; every image is resized (bilinear, centre crop) to the first
    one's size and RGB images get an opaque alpha next to RGBA ones. Stricter than ComfyUI: mixing
    1-channel and colour images is an error naming the inputs."""

    category = "image"
    display_name = "Batch Images"
    vars().update({name: Input(IMAGE, optional=i >= 1) for i, name in enumerate(BATCH_SLOTS)})
    outputs = (Output(IMAGE),)

    def execute(self, **images: Any) -> tuple:
        node = "BatchImagesNode"
        given = [(name, image_input(node, name, images[name])) for name in BATCH_SLOTS
                 if images.get(name) is not None]
        if not given:
            raise node_error(node, "connect an image to 'images.image0'")
        return (batch_images(given, node),)


class RepeatImageBatch(Node):
    """Repeats the whole batch amount times (a batch of B becomes B × amount images)."""

    category = "image/batch"
    display_name = "Repeat Image Batch"
    image = Input(IMAGE)
    amount = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, amount: int) -> tuple:
        node = "RepeatImageBatch"
        image = image_input(node, "image", image)
        amount = int_in_range(node, "amount", amount, 1, 4096)
        return (image.repeat((amount, 1, 1, 1)),)


class RebatchImages(Node):
    """Takes a list of image batches and regroups their images, in order, into batches of batch_size
    (the last one may be smaller); outputs a list. Stricter than ComfyUI: images of different sizes
    falling into one new batch are an error naming their positions."""

    category = "image/batch"
    display_name = "Rebatch Images"
    takes_lists = True
    images = Input(IMAGE)
    batch_size = Input(INT, default=1, min=1, max=4096)
    outputs = (Output(IMAGE, is_list=True),)

    def execute(self, images: list, batch_size: list) -> tuple:
        node = "RebatchImages"
        size = int_in_range(node, "batch_size", batch_size[0] if isinstance(batch_size, list) else batch_size,
                            1, 4096)
        singles: list[torch.Tensor] = []
        for number, batch in enumerate(images if isinstance(images, list) else [images]):
            batch = image_input(node, f"images (list item {number})", batch)
            singles.extend(batch[i:i + 1] for i in range(batch.shape[0]))
        out = []
        for start in range(0, len(singles), size):
            group = singles[start:start + size]
            shapes = {tuple(item.shape[1:]) for item in group}
            if len(shapes) > 1:
                raise node_error(node, f"images {start}..{start + len(group) - 1} have different sizes "
                                       f"{sorted(shapes)}; resize them to one size before rebatching")
            out.append(torch.cat(group, dim=0))
        return (out,)
