"""ComfyUI's V3 resize nodes: ResizeImageMaskNode, ResizeAndPadImage, ImageScaleToMaxDimension.

Names, inputs, defaults and outputs are ComfyUI's. ResizeImageMaskNode's ``resize_type`` is a
DynamicCombo: as in ComfyUI's API prompts, the chosen option is ``resize_type`` and its fields are the
flat inputs ``resize_type.width``, ``resize_type.crop``, … (declared optional; only the chosen option's
fields are read). Its ``input`` takes an IMAGE or a MASK and the output has the input's kind.

Stricter than ComfyUI: a size that rounds to 0 pixels, linked values outside the widget's range, and
"scale to multiple" on an image smaller than the multiple are errors naming the node and the input
(ComfyUI crashes inside the resampler or returns the input unchanged).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import IMAGE

from .checks import choice, float_in_range, image_input, image_or_mask, int_in_range, node_error
from .operations import CROP_METHODS, MAX_RESOLUTION, UPSCALE_METHODS, common_upscale

IMAGE_OR_MASK = "IMAGE,MASK"

#: ResizeImageMaskNode's resize types, in ComfyUI's option order
RESIZE_TYPES = ["scale dimensions", "scale by multiplier", "scale longer dimension", "scale shorter dimension",
                "scale width", "scale height", "scale total pixels", "match size", "scale to multiple"]
#: the fields each resize type reads (flat input names without the ``resize_type.`` prefix)
RESIZE_FIELDS = {
    "scale dimensions": ("width", "height", "crop"), "scale by multiplier": ("multiplier",),
    "scale longer dimension": ("longer_size",), "scale shorter dimension": ("shorter_size",),
    "scale width": ("width",), "scale height": ("height",), "scale total pixels": ("megapixels",),
    "match size": ("match", "crop"), "scale to multiple": ("multiple",),
}
#: ResizeAndPadImage's interpolation choices, in ComfyUI's order
PAD_INTERPOLATIONS = ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"]
#: ImageScaleToMaxDimension's choices exactly as ComfyUI lists them ("bilinear" appears twice there)
MAX_DIMENSION_METHODS = ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]


def resize_planar(tensor: torch.Tensor, is_image: bool, width: int, height: int, method: str,
                  crop: str = "disabled", node: str = "", field: str = "") -> torch.Tensor:
    """Resize an IMAGE ``[B,H,W,C]`` or MASK ``[B,H,W]`` to ``width``×``height``; a 0 side is an error."""
    if width < 1 or height < 1:
        raise node_error(node, f"the new size {width}×{height} has no pixels; raise {field or 'the size'}")
    planar = tensor.movedim(-1, 1) if is_image else tensor.unsqueeze(1)
    out = common_upscale(planar, width, height, method, crop)
    return out.movedim(1, -1) if is_image else out.squeeze(1)


def longer_side_size(height: int, width: int, longer: int) -> tuple[int, int]:
    """``(width, height)`` with the longer side ``longer`` and the aspect ratio kept (ComfyUI's rounding)."""
    if height > width:
        return round(width / height * longer), longer
    if width > height:
        return longer, round(height / width * longer)
    return longer, longer


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side ``shorter`` and the aspect ratio kept."""
    if height < width:
        return round(width / height * shorter), shorter
    if width < height:
        return shorter, round(height / width * shorter)
    return shorter, shorter


def multiple_cover(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """``(scaled_w, scaled_h, target_w, target_h)``: scale to cover the largest size divisible by
    ``multiple`` inside the image, then centre-crop to it (ComfyUI's "scale to multiple")."""
    target_w, target_h = width // multiple * multiple, height // multiple * multiple
    s_w, s_h = target_w / width, target_h / height
    if s_w >= s_h:
        return target_w, max(target_h, math.ceil(height * s_w)), target_w, target_h
    return max(target_w, math.ceil(width * s_h)), target_h, target_w, target_h


class ResizeImageMaskNode(Node):
    """Resize an image or mask using various scaling methods. Stricter than ComfyUI: a size that rounds
    to 0 pixels, a linked value outside its widget's range, or "scale to multiple" with a multiple larger
    than a side is an error naming the input."""

    category = "transform"
    display_name = "Resize Image/Mask"
    dynamic_combos = {"resize_type": {kind: tuple(f"resize_type.{f}" for f in fields)
                                      for kind, fields in RESIZE_FIELDS.items()}}
    input = Input(IMAGE_OR_MASK)
    resize_type = Input(COMBO, choices=RESIZE_TYPES,
                        tooltip="Select how to resize: by exact dimensions, scale factor, matching another "
                                "image, etc.")
    scale_method = Input(COMBO, choices=UPSCALE_METHODS, default="area",
                         tooltip="Interpolation algorithm. 'area' is best for downscaling, 'lanczos' for "
                                 "upscaling, 'nearest-exact' for pixel art.")
    vars().update({
        "resize_type.width": Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=1, optional=True,
                                   tooltip="Target width in pixels (0: from the height, keeping the aspect "
                                           "ratio)."),
        "resize_type.height": Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=1, optional=True,
                                    tooltip="Target height in pixels (0: from the width, keeping the aspect "
                                            "ratio)."),
        "resize_type.crop": Input(COMBO, choices=CROP_METHODS, default="center", optional=True,
                                  tooltip="How to handle aspect ratio mismatch: 'disabled' stretches to fit, "
                                          "'center' crops to maintain aspect ratio."),
        "resize_type.multiplier": Input(FLOAT, default=1.0, min=0.01, max=8.0, step=0.01, optional=True,
                                        tooltip="Scale factor (e.g., 2.0 doubles size, 0.5 halves size)."),
        "resize_type.longer_size": Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=1, optional=True,
                                         tooltip="The longer edge will be resized to this value."),
        "resize_type.shorter_size": Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=1, optional=True,
                                          tooltip="The shorter edge will be resized to this value."),
        "resize_type.megapixels": Input(FLOAT, default=1.0, min=0.01, max=16.0, step=0.01, optional=True,
                                        tooltip="Target total megapixels (1.0 ≈ 1024×1024)."),
        "resize_type.match": Input(IMAGE_OR_MASK, optional=True,
                                   tooltip="Resize input to match the dimensions of this image or mask."),
        "resize_type.multiple": Input(INT, default=8, min=1, max=MAX_RESOLUTION, step=1, optional=True,
                                      tooltip="Resize so width and height are divisible by this number."),
    })
    outputs = (Output(IMAGE_OR_MASK, "resized"),)

    def execute(self, input: Any, resize_type: str, scale_method: str = "area", **fields: Any) -> tuple:
        node = "ResizeImageMaskNode"
        tensor, is_image = image_or_mask(node, "input", input)
        kind = choice(node, "resize_type", resize_type, RESIZE_TYPES)
        method = choice(node, "scale_method", scale_method, UPSCALE_METHODS)
        values = {}
        for field in RESIZE_FIELDS[kind]:
            value = fields.get(f"resize_type.{field}")
            if value is None:
                raise node_error(node, f"resize type {kind!r} needs input 'resize_type.{field}'")
            values[field] = value
        height, width = tensor.shape[1], tensor.shape[2]

        def resized(w: int, h: int, crop: str = "disabled", field: str = "") -> tuple:
            return (resize_planar(tensor, is_image, w, h, method, crop, node, field),)

        if kind == "scale by multiplier":
            factor = float_in_range(node, "resize_type.multiplier", values["multiplier"], 0.01, 8.0)
            return resized(round(width * factor), round(height * factor), field="'resize_type.multiplier'")
        if kind in ("scale dimensions", "scale width", "scale height"):
            want_w = int_in_range(node, "resize_type.width", values["width"], 0, MAX_RESOLUTION) \
                if "width" in values else 0
            want_h = int_in_range(node, "resize_type.height", values["height"], 0, MAX_RESOLUTION) \
                if "height" in values else 0
            crop = choice(node, "resize_type.crop", values.get("crop", "disabled"), CROP_METHODS)
            if want_w == 0 and want_h == 0:
                return (tensor,)
            if want_w == 0:
                want_w = max(1, round(width * want_h / height))
            elif want_h == 0:
                want_h = max(1, round(height * want_w / width))
            return resized(want_w, want_h, crop)
        if kind == "scale longer dimension":
            size = int_in_range(node, "resize_type.longer_size", values["longer_size"], 0, MAX_RESOLUTION)
            return resized(*longer_side_size(height, width, size), field="'resize_type.longer_size'")
        if kind == "scale shorter dimension":
            size = int_in_range(node, "resize_type.shorter_size", values["shorter_size"], 0, MAX_RESOLUTION)
            return resized(*shorter_side_size(height, width, size), field="'resize_type.shorter_size'")
        if kind == "scale total pixels":
            megapixels = float_in_range(node, "resize_type.megapixels", values["megapixels"], 0.01, 16.0)
            scale = math.sqrt(int(megapixels * 1024 * 1024) / (width * height))
            return resized(round(width * scale), round(height * scale), field="'resize_type.megapixels'")
        if kind == "match size":
            match, _ = image_or_mask(node, "resize_type.match", values["match"])
            crop = choice(node, "resize_type.crop", values["crop"], CROP_METHODS)
            return resized(int(match.shape[2]), int(match.shape[1]), crop)
        multiple = int_in_range(node, "resize_type.multiple", values["multiple"], 1, MAX_RESOLUTION)
        if multiple == 1 or (width % multiple == 0 and height % multiple == 0):
            return (tensor,)
        if width < multiple or height < multiple:
            raise node_error(node, f"the {width}×{height} input is smaller than 'resize_type.multiple' "
                                   f"({multiple}) on a side; use a multiple of at most {min(width, height)}")
        scaled_w, scaled_h, target_w, target_h = multiple_cover(height, width, multiple)
        out = resize_planar(tensor, is_image, scaled_w, scaled_h, method)
        x0, y0 = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
        return (out[:, y0:y0 + target_h, x0:x0 + target_w],)


class ResizeAndPadImage(Node):
    """Scales the image to fit inside target_width×target_height keeping its aspect ratio, then pads the
    rest with white or black, centred. Stricter than ComfyUI: a fit that rounds a side to 0 pixels is an
    error."""

    category = "image/transform"
    display_name = "Resize And Pad Image"
    image = Input(IMAGE)
    target_width = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    target_height = Input(INT, default=512, min=1, max=MAX_RESOLUTION, step=1)
    padding_color = Input(COMBO, choices=["white", "black"])
    interpolation = Input(COMBO, choices=PAD_INTERPOLATIONS)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, target_width: int, target_height: int, padding_color: str = "white",
                interpolation: str = "area") -> tuple:
        node = "ResizeAndPadImage"
        image = image_input(node, "image", image)
        target_width = int_in_range(node, "target_width", target_width, 1, MAX_RESOLUTION)
        target_height = int_in_range(node, "target_height", target_height, 1, MAX_RESOLUTION)
        fill = 0.0 if choice(node, "padding_color", padding_color, ["white", "black"]) == "black" else 1.0
        method = choice(node, "interpolation", interpolation, PAD_INTERPOLATIONS)
        batch, height, width, channels = image.shape
        scale = min(target_width / width, target_height / height)
        new_w, new_h = int(width * scale), int(height * scale)
        resized = resize_planar(image, True, new_w, new_h, method, node=node,
                                field="'target_width'/'target_height'")
        out = torch.full((batch, target_height, target_width, channels), fill, dtype=image.dtype,
                         device=image.device)
        y0, x0 = (target_height - new_h) // 2, (target_width - new_w) // 2
        out[:, y0:y0 + new_h, x0:x0 + new_w] = resized
        return (out,)


class ImageScaleToMaxDimension(Node):
    """Scales the image so its longer side is largest_size, keeping the aspect ratio. Stricter than
    ComfyUI: largest_size 0 (or a side rounding to 0) is an error instead of a crash."""

    category = "image/upscaling"
    display_name = "Scale Image to Max Dimension"
    image = Input(IMAGE)
    upscale_method = Input(COMBO, choices=MAX_DIMENSION_METHODS)
    largest_size = Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=1)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, upscale_method: str, largest_size: int) -> tuple:
        node = "ImageScaleToMaxDimension"
        image = image_input(node, "image", image)
        method = choice(node, "upscale_method", upscale_method, MAX_DIMENSION_METHODS)
        size = int_in_range(node, "largest_size", largest_size, 0, MAX_RESOLUTION)
        width, height = longer_side_size(image.shape[1], image.shape[2], size)
        return (resize_planar(image, True, width, height, method, node=node, field="'largest_size'"),)
