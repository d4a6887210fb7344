"""File nodes: load images from the input folder, save/preview PNGs, show any value as text.

Folder rules follow ComfyUI (COMFY_COMPAT §4, §8): file names may carry a `` [input]``/`` [output]``/
`` [temp]`` suffix naming the folder, subfolders are allowed, anything leading outside the folder
(``..``, absolute paths, symlinks) is refused. Saved names are ``<stem>_<counter:05>_.png`` with
ComfyUI's counter; files are created exclusively, so concurrent saves never overwrite each other.

At run time nodes use ``self.ctx.paths``; class-level hooks (the combo list, ``validate_inputs``,
``fingerprint``) declare a ``paths`` parameter and get the engine's folders.

Previews (PNGs saved to the temp folder: PreviewImage, MaskPreview) are bounded: each temp folder
keeps at most :data:`PREVIEW_MAX_FILES` preview files and :data:`PREVIEW_MAX_BYTES` bytes, the oldest
removed first (:class:`PreviewFolder`), so a long-running server's temp folder does not grow without
end. A cached preview node re-served long after its file was removed shows a missing image, as it
would after ComfyUI empties its temp folder at start.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence

from nodegraph.context import Paths
from nodegraph.node import COMBO, STRING, Input, Node, NodeResult, Output
from nodegraph.pngmeta import comfy_text_chunks, encode_png
from nodegraph.types import ANY, IMAGE, MASK
from nodegraph.user_files import IMAGE_EXTENSIONS, folder_of, resolve_annotated



def _list_input_images(paths: Paths) -> list[str]:
    """Image files at the top level of the input folder, sorted (LoadImage's combo choices)."""
    folder = paths.input_dir
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- loading ----------------------------------------------------------------------------------------

def _frame_to_rgb(frame: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frame as ``[H,W,3]`` float and its mask ``[H,W]`` (1 − alpha), or ``None`` without alpha."""
    frame = ImageOps.exif_transpose(frame)
    if frame.mode == "I":
        frame = frame.point(lambda v: v * (1 / 255))
    rgb = torch.from_numpy(np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0)
    alpha = None
    if "A" in frame.getbands():
        alpha = frame.getchannel("A")
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = frame.convert("RGBA").getchannel("A")
    if alpha is None:
        return rgb, None
    return rgb, 1.0 - torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(IMAGE [B,H,W,3], MASK [B,H,W])``; frames of the first frame's size form the batch.

    Without any alpha the mask is zeros ``[B,64,64]`` (ComfyUI's placeholder).
    """
    try:
        with Image.open(path) as img:
            frames = [_frame_to_rgb(f) for f in ImageSequence.Iterator(img)]
            if img.format == "MPO":
                frames = frames[:1]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot load image {path.name}: {exc}") from None
    size = frames[0][0].shape[:2]
    frames = [f for f in frames if f[0].shape[:2] == size]
    images = torch.stack([rgb for rgb, _ in frames])
    if all(mask is None for _, mask in frames):
        return images, torch.zeros((len(frames), 64, 64), dtype=torch.float32)
    masks = [mask if mask is not None else torch.zeros(size) for _, mask in frames]
    return images, torch.stack(masks)


def check_image_choice(image: str, paths: Paths, resolve: Callable[[str, Paths], Path]) -> bool | str:
    """An image combo's check at validation: True when ``resolve(image, paths)`` is a file, else the
    message."""
    try:
        path = resolve(image, paths)
    except ValueError as exc:
        return f"Invalid image file: {exc}"
    if not path.is_file():
        return f"Invalid image file: {image} (not found in {path.parent})"
    return True


def image_choice_fingerprint(image: Any, paths: Paths, resolve: Callable[[str, Paths], Path]) -> Any:
    """SHA-256 of the image combo's file; NaN (always re-run) when it cannot be resolved or read."""
    try:
        return file_sha256(resolve(str(image), paths))
    except (OSError, ValueError):
        return math.nan


class InputImageNode(Node):
    """Base of the nodes that load a file from the input folder (LoadImage, LoadImageMask): the ``image``
    combo with upload, its check at validation and the file's hash as the fingerprint."""

    abstract = True
    image = Input(COMBO, choices=_list_input_images, image_upload=True)

    @classmethod
    def validate_inputs(cls, image: str, paths: Paths) -> bool | str:
        return check_image_choice(str(image), paths, resolve_annotated)

    @classmethod
    def fingerprint(cls, paths: Paths, image: str | None = None, **_: Any) -> Any:
        """SHA-256 of the file; NaN (always re-run) when it cannot be read."""
        return image_choice_fingerprint(image, paths, resolve_annotated)


class LoadImage(InputImageNode):
    """Loads an image from the input folder; its alpha channel becomes the mask (1 − alpha)."""

    category = "image"
    display_name = "Load Image"
    outputs = (Output(IMAGE), Output(MASK))

    def execute(self, image: str) -> tuple:
        path = resolve_annotated(image, self.ctx.paths)
        if not path.is_file():
            raise FileNotFoundError(f"image {image!r} does not exist in the input folder "
                                    f"({self.ctx.paths.input_dir})")
        return load_image_file(path)


# -- saving -----------------------------------------------------------------------------------------

def expand_prefix_vars(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """Replace ``%width%``, ``%height%``, ``%year%`` … ``%second%`` as ComfyUI's server does."""
    now = now or time.localtime()
    values = {"width": str(width), "height": str(height), "year": str(now.tm_year),
              "month": f"{now.tm_mon:02}", "day": f"{now.tm_mday:02}", "hour": f"{now.tm_hour:02}",
              "minute": f"{now.tm_min:02}", "second": f"{now.tm_sec:02}"}
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    return prefix


def split_prefix(prefix: str, base: Path) -> tuple[Path, str, str]:
    """``(folder, stem, subfolder)`` for a prefix like ``a/b/stem``; refuses leaving ``base``."""
    normalized = os.path.normpath(prefix)
    subfolder, stem = os.path.dirname(normalized), os.path.basename(normalized)
    folder = base / subfolder
    if os.path.isabs(normalized) or not folder.resolve().is_relative_to(base.resolve()):
        raise ValueError(f"filename_prefix {prefix!r} would save outside the output folder; "
                         "use a relative name such as 'renders/fox'")
    return folder, stem, subfolder


def next_counter(folder: Path, stem: str) -> int:
    """1 + the largest counter among files named ``<stem>_<digits>…`` (ComfyUI's rule), else 1."""
    best = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 1
    wanted = os.path.normcase(stem)
    for name in names:
        head = name[:len(stem) + 1]
        if os.path.normcase(head[:-1]) != wanted or head[-1:] != "_":
            continue
        try:
            best = max(best, int(name[len(stem) + 1:].split("_")[0]))
        except ValueError:
            continue
    return best + 1


def write_numbered(folder: Path, name_of: Callable[[int], str], counter: int, data: bytes) -> tuple[str, int]:
    """Create the file ``name_of(counter)`` exclusively, bumping the counter while names are taken; the
    name written and its counter."""
    while True:
        name = name_of(counter)
        try:
            with open(folder / name, "xb") as handle:
                handle.write(data)
            return name, counter
        except FileExistsError:
            counter += 1


def write_new_file(folder: Path, stem: str, counter: int, data: bytes) -> tuple[str, int]:
    """Create ``<stem>_<counter:05>_.png`` exclusively, bumping the counter while names are taken."""
    return write_numbered(folder, lambda c: f"{stem}_{c:05}_.png", counter, data)


#: what one temp folder keeps of previews at most; the oldest files go first
PREVIEW_MAX_FILES = 1000
PREVIEW_MAX_BYTES = 256 * 1024 * 1024


class PreviewFolder:
    """The preview files of one temp folder, oldest first, kept under a file count and a byte bound.

    The folder is listed once (files a previous run left are the oldest); after that each saved
    preview is added as it is written, so keeping the bound costs no directory listing."""

    def __init__(self, folder: Path, max_files: int = PREVIEW_MAX_FILES,
                 max_bytes: int = PREVIEW_MAX_BYTES) -> None:
        self.folder = Path(folder)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.files: OrderedDict[Path, int] = OrderedDict()
        self.bytes = 0
        self.removed = 0
        self._lock = threading.Lock()
        self._listed = False

    def _list(self) -> None:
        found = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if "_temp_" in entry.name and entry.name.endswith(".png") and entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                found.append((stat.st_mtime, Path(entry.path), stat.st_size))
        for _, path, size in sorted(found):
            self.files[path] = size
            self.bytes += size
        self._listed = True

    def add(self, written: list[tuple[Path, int]]) -> None:
        """Count files just written (path, bytes); remove the oldest others while over a bound."""
        with self._lock:
            if not self._listed:
                self._list()
            for path, size in written:
                self.bytes += size - self.files.pop(path, 0)
                self.files[path] = size
            keep = len(written)
            while len(self.files) > keep and (len(self.files) > self.max_files or self.bytes > self.max_bytes):
                path, size = self.files.popitem(last=False)
                self.bytes -= size
                try:
                    path.unlink()
                    self.removed += 1
                except FileNotFoundError:
                    pass


_PREVIEW_FOLDERS: dict[Path, PreviewFolder] = {}
_PREVIEW_FOLDERS_LOCK = threading.Lock()


def preview_folder(folder: Path) -> PreviewFolder:
    """The one :class:`PreviewFolder` of ``folder`` in this process."""
    key = Path(os.path.abspath(folder))
    with _PREVIEW_FOLDERS_LOCK:
        bound = _PREVIEW_FOLDERS.get(key)
        if bound is None:
            bound = _PREVIEW_FOLDERS[key] = PreviewFolder(key, PREVIEW_MAX_FILES, PREVIEW_MAX_BYTES)
        return bound


def save_images(images: torch.Tensor, prefix: str, base: Path, kind: str, compress_level: int,
                text_chunks: dict[str, str]) -> list[dict[str, str]]:
    """Write each image of the batch as a PNG; the ``ui`` records ComfyUI returns.

    Previews (``kind`` ``temp``) are counted in their folder's :class:`PreviewFolder` bound; their
    names carry a random part, so the counter starts at 1 instead of listing the folder."""
    height, width = int(images.shape[1]), int(images.shape[2])
    if "%" in prefix:
        prefix = expand_prefix_vars(prefix, width, height)
    folder, stem, subfolder = split_prefix(prefix, base)
    folder.mkdir(parents=True, exist_ok=True)
    preview = kind == "temp"
    counter = 1 if preview else next_counter(folder, stem)
    results = []
    written: list[tuple[Path, int]] = []
    for batch_number, image in enumerate(images):
        data = encode_png(image, text_chunks, compress_level)
        stem_b = stem.replace("%batch_num%", str(batch_number))
        name, counter = write_new_file(folder, stem_b, counter, data)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        written.append((folder / name, len(data)))
        counter += 1
    if preview:
        preview_folder(folder).add(written)
    return results


class _ImageSaver(Node):
    # Shared by SaveImage and PreviewImage. No docstring on purpose: Node copies a docstring into
    # ``description``, which subclasses would then inherit instead of using their own.

    abstract = True
    output_node = True
    category = "image"
    hidden = ("prompt", "extra_pnginfo")
    images = Input(IMAGE, tooltip="The images to save.")
    #: today's ComfyUI passes the images through (RETURN_TYPES ("IMAGE",), RETURN_NAMES ("images",));
    #: workflows link from it, e.g. into ImageCompare
    outputs = (Output(IMAGE, "images"),)

    folder_type = "output"
    compress_level = 4

    def prefix_suffix(self) -> str:
        return ""

    def save(self, images: torch.Tensor, filename_prefix: str, prompt: dict | None,
             extra_pnginfo: dict | None) -> NodeResult:
        base = folder_of(self.ctx.paths, self.folder_type)
        chunks = comfy_text_chunks(prompt, extra_pnginfo)
        results = save_images(images, filename_prefix + self.prefix_suffix(), base, self.folder_type,
                              self.compress_level, chunks)
        return NodeResult(outputs=(images,), ui={"images": results})


class SaveImage(_ImageSaver):
    """Saves the input images to your ComfyUI output directory; outputs the same images unchanged."""

    display_name = "Save Image"
    filename_prefix = Input(STRING, default="ComfyUI",
                            tooltip="The prefix for the file to save. This may include formatting "
                                    "information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% "
                                    "to include values from nodes.")

    def execute(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        return self.save(images, filename_prefix, prompt, extra_pnginfo)


class PreviewImage(_ImageSaver):
    """Saves the input images to the temp folder for display (fast compression, random name); outputs
    the same images unchanged."""

    display_name = "Preview Image"
    folder_type = "temp"
    compress_level = 1
    images = Input(IMAGE)

    def prefix_suffix(self) -> str:
        return "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    def execute(self, images: torch.Tensor, prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        return self.save(images, "ComfyUI", prompt, extra_pnginfo)


# -- text preview -----------------------------------------------------------------------------------

def preview_text(source: Any) -> str:
    """PreviewAny's rendering, as today's ComfyUI does it: strings as is, numbers/bools via ``str``,
    else JSON indented by 4, else ``str`` (tensors with 6 items shown at each edge)."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    try:
        return json.dumps(source, indent=4)
    except Exception:
        try:
            if isinstance(source, torch.Tensor):
                with torch._tensor_str.printoptions(edgeitems=6):
                    return str(source)
            return str(source)
        except Exception:
            return "source exists, but could not be serialized."


class PreviewAny(Node):
    """Shows any value as text on the node and outputs that text as a STRING."""

    category = "utils"
    display_name = "Preview Any"
    output_node = True
    source = Input(ANY)
    #: today's ComfyUI returns the shown text (RETURN_TYPES (STRING,)); workflows link from it
    outputs = (Output(STRING, "STRING"),)

    def execute(self, source: Any = None) -> NodeResult:
        text = preview_text(source)
        return NodeResult(outputs=(text,), ui={"text": [text]})
