"""ComfyUI's SaveImageAdvanced (PNG 8/16-bit, EXR, AVIF) and LoadImageOutput (load from the output folder).

SaveImageAdvanced's ``format`` is a DynamicCombo (with a nested one, ``save_mode``, for AVIF): as in
ComfyUI's API prompts the chosen format is ``format`` and its fields are the flat inputs
``format.bit_depth``, ``format.input_color_space``, ``format.crf``, ``format.save_mode``,
``format.save_mode.fps`` and ``format.save_mode.loop_count``. The combos list the union of every format's
choices; a choice that does not belong to the chosen format is an error, and a missing one takes that
format's default (png 8-bit, exr 32-bit float, avif auto; sRGB). Files are ``<prefix>_<counter:05>.<ext>``
in the output folder, as in ComfyUI.

LoadImageOutput follows LoadImage (:mod:`nodegraph_nodes.io.files`) with the output folder: its choices
are the output folder's images, newest first, written ``name [output]``; a bare name also means the
output folder, and the containment rules of :mod:`nodegraph.user_files` apply (no ``..``, no absolute
paths, no symbolic links out).

Stricter than ComfyUI: SaveImageAdvanced never overwrites a file (ComfyUI's counter does not see names
without the trailing ``_``, so a second run wrote over the first); 10-bit and HDR AVIF are refused
(Pillow's AVIF encoder is 8-bit); LoadImageOutput refuses names annotated ``[input]`` or ``[temp]``
(ComfyUI's bare names would even resolve in the input folder).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import COMBO, FLOAT, INT, STRING, Input, Node, NodeResult, Output
from nodegraph.types import IMAGE, MASK
from nodegraph.user_files import IMAGE_EXTENSIONS, resolve_inside, split_annotation
from nodegraph.value_checks import check_image

from .encoders import EncodeError, encode_avif, encode_exr, encode_png_depth
from .files import (check_image_choice, expand_prefix_vars, image_choice_fingerprint, load_image_file, split_prefix,
                    write_numbered)

FORMATS = ["png", "exr", "avif"]
#: each format's bit depths (first = default) and input colour spaces, in ComfyUI's order
BIT_DEPTHS = {"png": ["8-bit", "16-bit"], "exr": ["32-bit float"], "avif": ["auto", "8-bit YUV420", "10-bit YUV420"]}
COLOR_SPACES = {"png": ["sRGB"], "exr": ["sRGB", "HDR", "linear"], "avif": ["sRGB", "HDR", "HDR PQ"]}
SAVE_MODES = ["still images", "animated"]


def _union(table: dict[str, list[str]]) -> list[str]:
    return list(dict.fromkeys(choice for choices in table.values() for choice in choices))


def next_free_counter(folder: Path, stem: str) -> int:
    """1 + the largest counter among ``<stem>_<digits>`` files (any ending after the digits), else 1."""
    pattern = re.compile(re.escape(stem) + r"_(\d+)(?:[_.]|$)")
    best = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 1
    for name in names:
        match = pattern.match(name)
        if match:
            best = max(best, int(match.group(1)))
    return best + 1


def write_exclusive(folder: Path, stem: str, counter: int, extension: str, data: bytes) -> tuple[str, int]:
    """Create ``<stem>_<counter:05>.<extension>``, bumping the counter while the name is taken."""
    return write_numbered(folder, lambda c: f"{stem}_{c:05}.{extension}", counter, data)


class SaveImageAdvanced(Node):
    """Saves the input images to your ComfyUI output directory: PNG (8 or 16 bits per channel), EXR
    (32-bit float, scene-linear) or AVIF (8-bit; still images or one animation). Passes the images on.
    Stricter than ComfyUI: never overwrites an existing file, and a bit depth or colour space that the
    chosen format does not offer is an error."""

    category = "image"
    display_name = "Save Image (Advanced)"
    output_node = True
    dynamic_combos = {
        "format": {"png": ("format.bit_depth", "format.input_color_space"),
                   "exr": ("format.bit_depth", "format.input_color_space"),
                   "avif": ("format.bit_depth", "format.input_color_space", "format.crf", "format.save_mode")},
        "format.save_mode": {"still images": (), "animated": ("format.save_mode.fps", "format.save_mode.loop_count")},
    }
    hidden = ("prompt", "extra_pnginfo")
    images = Input(IMAGE, tooltip="The images to save.")
    filename_prefix = Input(STRING, default="ComfyUI",
                            tooltip="The prefix for the file to save. May include formatting tokens such as "
                                    "%date:yyyy-MM-dd% or %Empty Latent Image.width%.")
    format = Input(COMBO, choices=FORMATS, tooltip="The file format in which to save the image.")
    vars().update({
        "format.bit_depth": Input(COMBO, choices=_union(BIT_DEPTHS), optional=True,
                                  tooltip="png: 8-bit or 16-bit; exr: 32-bit float; avif: auto (8-bit for "
                                          "sRGB), 8-bit YUV420 or 10-bit YUV420."),
        "format.input_color_space": Input(COMBO, choices=_union(COLOR_SPACES), default="sRGB", optional=True,
                                          tooltip="Colorspace of the input tensor (png: sRGB; exr: sRGB, HDR, "
                                                  "linear; avif: sRGB, HDR, HDR PQ)."),
        "format.crf": Input(INT, default=18, min=1, max=63, optional=True,
                            tooltip="AVIF: lower values produce higher quality and larger files."),
        "format.save_mode": Input(COMBO, choices=SAVE_MODES, optional=True, tooltip="AVIF: still images or one "
                                                                                    "animation."),
        "format.save_mode.fps": Input(FLOAT, default=6.0, min=0.01, max=1000.0, step=0.01, optional=True),
        "format.save_mode.loop_count": Input(INT, default=0, min=0, max=1000, optional=True,
                                             tooltip="Number of times to loop the animation. 0 loops forever."),
    })
    outputs = (Output(IMAGE, "images"),)

    def execute(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", format: str = "png",
                prompt: dict | None = None, extra_pnginfo: dict | None = None, **fields: Any) -> NodeResult:
        node = "SaveImageAdvanced"
        images = check_image(images, "images")
        if format not in FORMATS:
            raise ValueError(f"{node}: input 'format' is {format!r}; use one of {', '.join(FORMATS)}")
        bit_depth = fields.get("format.bit_depth") or BIT_DEPTHS[format][0]
        colorspace = fields.get("format.input_color_space") or "sRGB"
        if bit_depth not in BIT_DEPTHS[format]:
            raise ValueError(f"{node}: input 'format.bit_depth' is {bit_depth!r}, which {format} does not offer; "
                             f"use one of {', '.join(BIT_DEPTHS[format])}")
        if colorspace not in COLOR_SPACES[format]:
            raise ValueError(f"{node}: input 'format.input_color_space' is {colorspace!r}, which {format} does "
                             f"not offer; use one of {', '.join(COLOR_SPACES[format])}")
        height, width = int(images.shape[1]), int(images.shape[2])
        prefix = expand_prefix_vars(filename_prefix, width, height) if "%" in filename_prefix else filename_prefix
        folder, stem, subfolder = split_prefix(prefix, self.ctx.paths.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {}
        if prompt is not None:
            metadata["prompt"] = prompt
        metadata.update(extra_pnginfo or {})
        counter = next_free_counter(folder, stem)
        try:
            if format == "avif":
                blobs, animated = self.avif_files(images, bit_depth, colorspace, fields, metadata)
            else:
                blobs, animated = [self.encode(image, format, bit_depth, colorspace, metadata) for image in images], False
        except EncodeError as exc:
            raise ValueError(f"{node}: {exc}") from None
        results = []
        for batch_number, data in enumerate(blobs):
            name, counter = write_exclusive(folder, stem.replace("%batch_num%", str(batch_number)), counter,
                                            format, data)
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        ui: dict[str, list] = {"images": results}
        if animated:
            ui["animated"] = [True]
        return NodeResult(outputs=(images,), ui=ui)

    @staticmethod
    def encode(image: torch.Tensor, format: str, bit_depth: str, colorspace: str, metadata: dict) -> bytes:
        if format == "png":
            text = {key: json.dumps(value) for key, value in metadata.items()}
            return encode_png_depth(image, 16 if bit_depth == "16-bit" else 8, text)
        return encode_exr(image, colorspace, metadata)

    @staticmethod
    def avif_files(images: torch.Tensor, bit_depth: str, colorspace: str, fields: dict,
                   metadata: dict) -> tuple[list[bytes], bool]:
        if colorspace != "sRGB" or bit_depth == "10-bit YUV420":
            raise EncodeError("10-bit and HDR AVIF need an SVT-AV1 encoder this install lacks (Pillow's AVIF is "
                              "8-bit); use bit_depth 8-bit YUV420 with sRGB, or save HDR as exr")
        crf = fields.get("format.crf")
        crf = 18 if crf is None else crf
        if isinstance(crf, bool) or not isinstance(crf, int) or not 1 <= crf <= 63:
            raise EncodeError(f"input 'format.crf' is {crf!r}; use a whole number from 1 to 63")
        mode = fields.get("format.save_mode") or "still images"
        if mode not in SAVE_MODES:
            raise EncodeError(f"input 'format.save_mode' is {mode!r}; use one of {', '.join(SAVE_MODES)}")
        if mode == "still images":
            return [encode_avif(image.unsqueeze(0), crf, None, None, metadata) for image in images], False
        fps = fields.get("format.save_mode.fps")
        fps = 6.0 if fps is None else fps
        loop = fields.get("format.save_mode.loop_count")
        loop = 0 if loop is None else loop
        if not isinstance(fps, (int, float)) or not 0.01 <= fps <= 1000.0:
            raise EncodeError(f"input 'format.save_mode.fps' is {fps!r}; use a number from 0.01 to 1000")
        if isinstance(loop, bool) or not isinstance(loop, int) or not 0 <= loop <= 1000:
            raise EncodeError(f"input 'format.save_mode.loop_count' is {loop!r}; use a whole number from 0 to 1000")
        return [encode_avif(images, crf, float(fps), loop, metadata)], images.shape[0] > 1


# -- LoadImageOutput --------------------------------------------------------------------------------

def list_output_images(paths: Paths) -> list[str]:
    """Image files at the top level of the output folder, newest first, as ``name [output]``."""
    try:
        entries = [entry for entry in os.scandir(paths.output_dir)
                   if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS]
    except OSError:
        return []
    entries.sort(key=lambda entry: -entry.stat().st_mtime)
    return [f"{entry.name} [output]" for entry in entries]


def resolve_output_image(name: str, paths: Paths) -> Path:
    """The file ``name`` (``x.png``, ``sub/x.png`` or ``x.png [output]``) names in the output folder."""
    relative, kind = split_annotation(str(name), default="output")
    if kind != "output":
        raise ValueError(f"{name!r} names the {kind} folder; LoadImageOutput loads from the output folder only")
    return resolve_inside(paths.output_dir, relative, "output folder")


class LoadImageOutput(Node):
    """Load an image from the output folder. When the refresh button is clicked, the node will update the
    image list and automatically select the first image, allowing for easy iteration. Stricter than
    ComfyUI: a name annotated [input] or [temp] is refused."""

    category = "image"
    display_name = "Load Image (from Outputs)"
    experimental = True
    image = Input(COMBO, choices=list_output_images, image_upload=True)
    outputs = (Output(IMAGE), Output(MASK))

    @classmethod
    def validate_inputs(cls, image: str, paths: Paths) -> bool | str:
        return check_image_choice(image, paths, resolve_output_image)

    @classmethod
    def fingerprint(cls, paths: Paths, image: str | None = None, **_: Any) -> Any:
        """SHA-256 of the file; NaN (always re-run) when it cannot be read."""
        return image_choice_fingerprint(image, paths, resolve_output_image)

    def execute(self, image: str) -> tuple:
        try:
            path = resolve_output_image(image, self.ctx.paths)
        except ValueError as exc:
            raise ValueError(f"LoadImageOutput: input 'image': {exc}") from None
        if not path.is_file():
            raise FileNotFoundError(f"LoadImageOutput: input 'image': {image!r} does not exist in the output "
                                    f"folder ({self.ctx.paths.output_dir})")
        return load_image_file(path)
