"""``POST /upload/mask``: the mask editor's result, stored as ComfyUI stores it.

The form is ``/upload/image``'s (``image`` file, ``type``, ``subfolder``, ``overwrite``) plus
``original_ref``, a JSON text ``{"filename", "subfolder"?, "type"? (default "output")}`` naming the
image that was painted on. The stored file is that image (RGBA, its PNG text chunks — the workflow —
kept) with its alpha channel taken from the uploaded picture's alpha, saved under the upload's name
with ``/upload/image``'s rules (same name and bytes reused, else ``name (1).png``…). The original is
found with ``/view``'s rules (annotated names, subfolders confined to the folder); both images pass
the same decompression-bomb limit as uploads. Answer: ``{"name", "subfolder", "type"}``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from aiohttp import web

from ..files import FileError, locate, upload_image, verify_image


def compose(original: Path, mask: Path, scratch: Path, max_pixels: int) -> Path:
    """A PNG in ``scratch``: ``original`` as RGBA with ``mask``'s alpha; text chunks kept."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    verify_image(original, max_pixels)
    verify_image(mask, max_pixels)
    with Image.open(original) as source, Image.open(mask) as painted:
        info = PngInfo()
        for key, value in (getattr(source, "text", None) or {}).items():
            info.add_text(key, value)
        image = source.convert("RGBA")
        alpha = painted.convert("RGBA").getchannel("A")
        if alpha.size != image.size:
            raise FileError(400, "bad_image", f"the mask is {alpha.size[0]}x{alpha.size[1]} pixels but "
                            f"{original.name} is {image.size[0]}x{image.size[1]}")
        image.putalpha(alpha)
        fd, tmp = tempfile.mkstemp(prefix=".mask-", suffix=".png", dir=scratch)
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", compress_level=4, pnginfo=info)
    return Path(tmp)


def parse_ref(text: str | None) -> tuple[str, str, str]:
    """``(filename, type, subfolder)`` of ``original_ref``."""
    if not text:
        raise FileError(400, "no_reference", "the form has no 'original_ref' (the image the mask belongs to)")
    try:
        ref = json.loads(text)
    except ValueError:
        raise FileError(400, "no_reference", "'original_ref' is not JSON") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise FileError(400, "no_reference", "'original_ref' must be {\"filename\", \"subfolder\"?, \"type\"?}")
    kind, subfolder = ref.get("type") or "output", ref.get("subfolder") or ""
    if not isinstance(kind, str) or not isinstance(subfolder, str):
        raise FileError(400, "no_reference", "'original_ref' type and subfolder must be strings")
    return ref["filename"], kind, subfolder


async def upload_mask(request: web.Request, paths, scratch: Path, max_bytes: int,
                      max_pixels: int) -> web.Response:
    """``/upload/image`` with the stored file made by :func:`compose` from the image ``original_ref`` names."""
    def compose_with_original(form) -> Path:
        filename, kind, subfolder = parse_ref(form.original_ref)
        original = locate(paths, filename, kind, subfolder)
        return compose(original, form.data_path, scratch, max_pixels)

    return await upload_image(request, paths, scratch, max_bytes, max_pixels, transform=compose_with_original)
