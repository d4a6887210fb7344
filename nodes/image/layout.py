"""ComfyUI's V3 layout nodes: ImageStitch, ImageCropV2, ImageCropToMask, ImageRemoveAlpha.

Names, inputs, defaults and outputs are ComfyUI's. Two of ComfyUI's widget types have no constant
type in this engine, so they are declared with the nearest one: ImageCropV2's ``crop_region`` (a
``BOUNDING_BOX`` dict ``{"x", "y", "width", "height"}``, ComfyUI's default ``{0, 0, 512, 512}``) as
``*`` and checked at run time, ImageCropToMask's ``background`` (a ``COLOR``) as a ``#RRGGBB`` STRING.

Stricter than ComfyUI: ImageStitch pairs batches only when equal or one of them is a single image
(ComfyUI repeats the last image of the shorter batch); ImageCropV2 refuses a corner outside the image
(ComfyUI moves it to the last pixel); ImageCropToMask refuses a malformed colour (ComfyUI uses black).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, STRING, Input, Node, NodeResult, Output
from nodegraph.pngmeta import comfy_text_chunks
from nodegraph.types import ANY, IMAGE, MASK
from nodegraph.user_files import folder_of
from nodegraph_nodes.io.files import save_images

from .checks import choice, float_in_range, hex_color, image_input, int_in_range, mask_input, node_error
from .operations import MAX_RESOLUTION, common_upscale, lanczos

log = logging.getLogger(__name__)

STITCH_DIRECTIONS = ["right", "down", "left", "up"]
#: ImageStitch's spacing colours: a grey level or an RGB triple
SPACING_COLORS: dict[str, float | tuple[float, float, float]] = {
    "white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
DEFAULT_CROP_REGION = {"x": 0, "y": 0, "width": 512, "height": 512}


def pair_batches(node: str, a: torch.Tensor, name_a: str, b: torch.Tensor, name_b: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two image batches of one size: equal sizes, or a single image repeated for the other's batch."""
    size_a, size_b = a.shape[0], b.shape[0]
    if size_a == size_b:
        return a, b
    if size_a == 1:
        return a.expand(size_b, *a.shape[1:]), b
    if size_b == 1:
        return a, b.expand(size_a, *b.shape[1:])
    raise node_error(node, f"input '{name_a}' has a batch of {size_a} and '{name_b}' a batch of {size_b}; "
                           "give equal batches, or a single image to use for every item")


def pad_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Add opaque (1.0) channels up to ``channels``."""
    have = image.shape[-1]
    return F.pad(image, (0, channels - have), value=1.0) if have < channels else image


def center_pad(image: torch.Tensor, axis: int, size: int, value: float) -> torch.Tensor:
    """Pad ``[B,H,W,C]`` along ``axis`` (1 = height, 2 = width) to ``size``, the extra split around it."""
    extra = size - image.shape[axis]
    if extra <= 0:
        return image
    before, after = extra // 2, extra - extra // 2
    pads = (0, 0, before, after) if axis == 2 else (0, 0, 0, 0, before, after)
    return F.pad(image, pads, mode="constant", value=value)


class ImageStitch(Node):
    """Stitches image2 to image1 in the specified direction.
    If image2 is not provided, returns image1 unchanged.
    Optional spacing can be added between images."""

    category = "image/transform"
    display_name = "Stitch Images"
    image1 = Input(IMAGE)
    direction = Input(COMBO, choices=STITCH_DIRECTIONS, default="right")
    match_image_size = Input(BOOLEAN, default=True)
    spacing_width = Input(INT, default=0, min=0, max=1024, step=2)
    spacing_color = Input(COMBO, choices=list(SPACING_COLORS), default="white")
    image2 = Input(IMAGE, optional=True)
    outputs = (Output(IMAGE),)

    def execute(self, image1: torch.Tensor, direction: str = "right", match_image_size: bool = True,
                spacing_width: int = 0, spacing_color: str = "white", image2: torch.Tensor | None = None) -> tuple:
        node = "ImageStitch"
        image1 = image_input(node, "image1", image1)
        direction = choice(node, "direction", direction, STITCH_DIRECTIONS)
        colour = SPACING_COLORS[choice(node, "spacing_color", spacing_color, list(SPACING_COLORS))]
        spacing_width = int_in_range(node, "spacing_width", spacing_width, 0, 1024)
        if image2 is None:
            return (image1,)
        image2 = image_input(node, "image2", image2).to(image1.device, image1.dtype)
        image1, image2 = pair_batches(node, image1, "image1", image2, "image2")
        sideways = direction in ("left", "right")
        if match_image_size:
            h1, w1 = image1.shape[1:3]
            aspect = image2.shape[2] / image2.shape[1]
            width, height = (int(h1 * aspect), h1) if sideways else (w1, int(w1 / aspect))
            if width < 1 or height < 1:
                raise node_error(node, f"matching image2 to image1 gives {width}×{height} pixels; "
                                       "the images' aspect ratios are too far apart")
            image2 = common_upscale(image2.movedim(-1, 1), width, height, "lanczos", "disabled").movedim(1, -1)
        else:
            fill = colour if isinstance(colour, float) else 0.0
            axis = 1 if sideways else 2
            size = max(image1.shape[axis], image2.shape[axis])
            image1, image2 = center_pad(image1, axis, size, fill), center_pad(image2, axis, size, fill)
        channels = max(image1.shape[-1], image2.shape[-1])
        image1, image2 = pad_channels(image1, channels), pad_channels(image2, channels)
        parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
        if spacing_width > 0:
            spacing_width += spacing_width % 2
            shape = ((image1.shape[0], image1.shape[1], spacing_width, channels) if sideways
                     else (image1.shape[0], spacing_width, image1.shape[2], channels))
            spacing = torch.zeros(shape, dtype=image1.dtype, device=image1.device)
            rgb = colour if isinstance(colour, tuple) else (colour,) * 3
            for index in range(min(3, channels)):
                spacing[..., index] = rgb[index]
            if channels == 4:
                spacing[..., 3] = 1.0
            parts.insert(1, spacing)
        return (torch.cat(parts, dim=2 if sideways else 1),)


@dataclass(frozen=True, slots=True)
class CropRegion:
    """A checked crop box in pixels."""

    x: int
    y: int
    width: int
    height: int


def crop_region_of(node: str, value: Any) -> CropRegion:
    """``crop_region`` (a dict with int x, y, width, height) checked; a clear error otherwise."""
    if not isinstance(value, dict):
        raise node_error(node, f"input 'crop_region' must be a bounding box "
                               f"{{\"x\", \"y\", \"width\", \"height\"}}, got {value!r}")
    unknown = sorted(set(value) - set(DEFAULT_CROP_REGION))
    if unknown:
        raise node_error(node, f"input 'crop_region' has unknown field(s) {', '.join(map(repr, unknown))}; "
                               "it takes x, y, width, height")
    fields = {**DEFAULT_CROP_REGION, **value}
    x = int_in_range(node, "crop_region.x", fields["x"], 0, MAX_RESOLUTION)
    y = int_in_range(node, "crop_region.y", fields["y"], 0, MAX_RESOLUTION)
    width = int_in_range(node, "crop_region.width", fields["width"], 1, MAX_RESOLUTION)
    height = int_in_range(node, "crop_region.height", fields["height"], 1, MAX_RESOLUTION)
    return CropRegion(x, y, width, height)


class ImageCropV2(Node):
    """Crop an image to the specified dimensions. A region reaching past the right or bottom edge stops
    at the edge; the crop is also shown on the node as a preview. Stricter than ComfyUI: a top-left
    corner outside the image is an error."""

    category = "image/transform"
    display_name = "Crop Image"
    hidden = ("prompt", "extra_pnginfo")
    canvas_widgets = ("crop_region",)
    image = Input(IMAGE)
    crop_region = Input(ANY, tooltip="A bounding box {\"x\", \"y\", \"width\", \"height\"} in pixels "
                                     "(ComfyUI's BOUNDING_BOX widget).")
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, crop_region: Any = None, prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        node = "ImageCropV2"
        image = image_input(node, "image", image)
        box = crop_region_of(node, DEFAULT_CROP_REGION if crop_region is None else crop_region)
        height, width = image.shape[1], image.shape[2]
        if box.x >= width or box.y >= height:
            raise node_error(node, f"input 'crop_region' starts at ({box.x}, {box.y}), outside the "
                                   f"{width}×{height} image; use x < {width} and y < {height}")
        cropped = image[:, box.y:box.y + box.height, box.x:box.x + box.width, :]
        suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        previews = save_images(cropped[..., :4], "ComfyUI" + suffix, folder_of(self.ctx.paths, "temp"), "temp", 1,
                               comfy_text_chunks(prompt, extra_pnginfo))
        return NodeResult(outputs=(cropped,), ui={"images": previews})


# -- crop to mask -----------------------------------------------------------------------------------

def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """``[1,1,H,W]`` dilated (``pixels`` > 0) or eroded (< 0) with a (2|p|+1)² square."""
    if pixels == 0:
        return mask
    radius = abs(pixels)
    if pixels > 0:
        return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return 1.0 - F.max_pool2d(1.0 - mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def subject_box(mask: torch.Tensor, aspect: float, pad_factor: float) -> tuple[torch.Tensor, tuple[int, int, int, int] | None]:
    """The (possibly inverted) mask and the crop box ``(x1, y1, x2, y2)`` around its foreground
    (pixels whose 8-bit value is over 204), grown to ``aspect`` (width / height) and by ``pad_factor``;
    ``None`` when the mask has no foreground either way round."""
    alpha = (mask[0, 0].clamp(0, 1) * 255.0).to(torch.uint8)
    found = (alpha > 204).nonzero()
    if found.numel() == 0:
        inverted = ((255 - alpha) > 204).nonzero()
        if inverted.numel() > 0:
            mask, found = 1.0 - mask, inverted
    if found.numel() == 0:
        return mask, None
    y_min, x_min = found.min(dim=0).values.tolist()
    y_max, x_max = found.max(dim=0).values.tolist()
    center_y, center_x = (y_min + y_max) / 2.0, (x_min + x_max) / 2.0
    box_w, box_h = x_max - x_min + 1, y_max - y_min + 1
    if box_w / max(box_h, 1) >= aspect:
        crop_w, crop_h = int(box_w * pad_factor), int(box_w / aspect * pad_factor)
    else:
        crop_h, crop_w = int(box_h * pad_factor), int(box_h * aspect * pad_factor)
    half_w, half_h = math.ceil(crop_w / 2), math.ceil(crop_h / 2)
    x1, y1 = int(center_x - half_w), int(center_y - half_h)
    return mask, (x1, y1, x1 + 2 * half_w, y1 + 2 * half_h)


def crop_subject(image: torch.Tensor, mask: torch.Tensor, max_size: int, pad_factor: float, grow: int,
                 background: tuple[float, float, float], aspect: float) -> torch.Tensor:
    """One ``[H,W,3]`` image and ``[H,W]`` mask → ``[1,3,h,w]``: the subject's box (zero-padded past the
    edges) composited over ``background`` through the mask (ComfyUI's crop-to-mask preprocessing)."""
    img = image.permute(2, 0, 1).unsqueeze(0).float().clamp(0, 1)
    m = mask.unsqueeze(0).unsqueeze(0).float().clamp(0, 1)
    plane = m[0, 0]
    h, w = plane.shape
    border = torch.cat([plane[0, :], plane[-1, :], plane[:, 0], plane[:, -1]])
    centre = plane[h // 4:h - h // 4, w // 4:w - w // 4]
    if float(border.mean()) > 0.5 and float(centre.mean()) < 0.5:
        m = 1.0 - m                                     # a mask marking the background: turn it round
    m = grow_mask(m, grow)
    m = torch.where(m < 0.05, torch.zeros_like(m), m)
    height, width = img.shape[-2:]
    if max(height, width) > max_size:
        scale = max_size / max(height, width)
        width, height = int(width * scale), int(height * scale)
        img, m = lanczos(img, width, height), lanczos(m, width, height)
    m, box = subject_box(m, aspect, pad_factor)
    if box is None:
        log.warning("ImageCropToMask: the mask is empty; using the whole image")
        box = (0, 0, width, height)
    x1, y1, x2, y2 = box
    pads = (max(0, -x1), max(0, x2 - width), max(0, -y1), max(0, y2 - height))
    if any(pads):
        img, m = F.pad(img, pads, value=0.0), F.pad(m, pads, value=0.0)
        x1, x2, y1, y2 = x1 + pads[0], x2 + pads[0], y1 + pads[2], y2 + pads[2]
    img, m = img[..., y1:y2, x1:x2], m[..., y1:y2, x1:x2]
    bg = torch.tensor(background, dtype=img.dtype).view(1, 3, 1, 1)
    return (img * m + bg * (1.0 - m)).clamp(0, 1)


class ImageCropToMask(Node):
    """Crop an image to its mask's bounding box (grown to the output's aspect ratio, with pad_factor
    margin), composite the subject over the background colour through the mask, and resize to
    width×height. Crops past the edges are zero-padded; an inverted mask is turned round. Stricter than
    ComfyUI: background must be #RRGGBB (ComfyUI uses black for anything else)."""

    category = "image/transform"
    display_name = "Crop Image to Mask"
    images = Input(IMAGE)
    masks = Input(MASK)
    width = Input(INT, default=1024, min=64, max=4096, step=8, tooltip="Output width in pixels.")
    height = Input(INT, default=1024, min=64, max=4096, step=8, tooltip="Output height in pixels.")
    pad_factor = Input(FLOAT, default=1.0, min=1.0, max=2.0, step=0.01,
                       tooltip="Extra margin around the mask bounding box as a multiplier.")
    grow_mask = Input(INT, default=0, min=-32, max=32, step=1,
                      tooltip="Grow or shrink the mask by this many pixels before cropping.")
    background = Input(STRING, default="#000000", tooltip="Background color behind the masked subject "
                                                          "(#RRGGBB; ComfyUI's COLOR widget).")
    outputs = (Output(IMAGE, "images"),)

    def execute(self, images: torch.Tensor, masks: torch.Tensor, width: int = 1024, height: int = 1024,
                pad_factor: float = 1.0, grow_mask: int = 0, background: str = "#000000") -> tuple:
        node = "ImageCropToMask"
        images = image_input(node, "images", images)[..., :3]
        masks = mask_input(node, "masks", masks).to(images.device)
        width = int_in_range(node, "width", width, 64, 4096)
        height = int_in_range(node, "height", height, 64, 4096)
        pad_factor = float_in_range(node, "pad_factor", pad_factor, 1.0, 2.0)
        grow = int_in_range(node, "grow_mask", grow_mask, -32, 32)
        colour = hex_color(node, "background", background)
        if images.shape[-1] != 3:
            raise node_error(node, f"input 'images' has {images.shape[-1]} channel(s); it takes RGB or RGBA images")
        batch = images.shape[0]
        if masks.shape[0] == 1 and batch > 1:
            masks = masks.expand(batch, -1, -1)
        elif masks.shape[0] != batch:
            raise node_error(node, f"input 'masks' has a batch of {masks.shape[0]} and 'images' a batch of "
                                   f"{batch}; give one mask per image, or a single mask")
        if masks.shape[-2:] != images.shape[1:3]:
            masks = common_upscale(masks.unsqueeze(1).float(), images.shape[2], images.shape[1], "bilinear",
                                   "disabled").squeeze(1)
        out = []
        for index in range(batch):
            subject = crop_subject(images[index], masks[index], max(width, height), pad_factor, grow, colour,
                                   width / height)
            out.append(lanczos(subject, width, height).movedim(1, -1))
        return (torch.cat(out, dim=0),)


class ImageRemoveAlpha(Node):
    """Removes the alpha channel: an RGBA image becomes its RGB channels; RGB and greyscale images pass
    through unchanged."""

    category = "image"
    display_name = "Image Remove Alpha"
    image = Input(IMAGE)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor) -> tuple:
        image = image_input("ImageRemoveAlpha", "image", image)
        return (image[..., :3] if image.shape[-1] == 4 else image,)
