"""Image file encoders for SaveImageAdvanced: PNG at 8 or 16 bits, OpenEXR (32-bit float, scene-linear)
and AVIF (through Pillow's libavif), each with ComfyUI's metadata.

Written here from the file format specifications (PNG: W3C PNG 3rd edition; OpenEXR: "OpenEXR File
Layout"), so saving needs no PyAV/FFmpeg:

* PNG: greyscale, RGB or RGBA, values × 255 (or × 65535) clamped and truncated as ComfyUI quantises;
  ``prompt`` and each ``extra_pnginfo`` key as ``tEXt`` chunks right after ``IHDR``.
* EXR: scanline file, no compression, one FLOAT channel per image channel (``Y``, or ``R G B`` with
  ``A``), a ``chromaticities`` attribute (Rec.709, or Rec.2020 for HDR) and the metadata as ``string``
  attributes. The input is turned scene-linear first: inverse sRGB curve, inverse HLG OETF, or as is.
* AVIF: 8-bit 4:2:0 only (Pillow's encoder has no 10-bit path); ComfyUI's ``crf`` is mapped onto
  libavif's quality (quantiser ≈ crf). Metadata goes into EXIF as ComfyUI writes it (``prompt:…`` in
  tag 0x0110, the other keys ``key:…`` from tag 0x010F downwards).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXR_MAGIC = b"\x76\x2f\x31\x01"
#: CIE xy of the red, green, blue primaries and the D65 white, as OpenEXR's chromaticities attribute
CHROMATICITIES = {
    "Rec.709": (0.6400, 0.3300, 0.3000, 0.6000, 0.1500, 0.0600, 0.3127, 0.3290),
    "Rec.2020": (0.7080, 0.2920, 0.1700, 0.7970, 0.1310, 0.0460, 0.3127, 0.3290),
}
_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991072928


class EncodeError(ValueError):
    """A format, bit depth or channel count the encoder cannot write."""


def _pixels(image: torch.Tensor) -> torch.Tensor:
    """``[H,W,C]`` float (a ``[H,W]`` plane gets its channel axis); C must be 1, 3 or 4."""
    image = image.detach().cpu().float()
    if image.ndim == 2:
        image = image.unsqueeze(-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise EncodeError(f"cannot encode an image of shape {list(image.shape)}: supported channel counts are "
                          "1 (grayscale), 3 (RGB) and 4 (RGBA)")
    return image


# -- PNG --------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png_depth(image: torch.Tensor, bits: int, text: Mapping[str, str] | None = None,
                     compress_level: int = 4) -> bytes:
    """PNG of ``[H,W,C]`` at 8 or 16 bits per channel, with ``tEXt`` chunks after ``IHDR``."""
    pixels = _pixels(image)
    height, width, channels = pixels.shape
    scale, dtype = (255.0, ">u1") if bits == 8 else (65535.0, ">u2")
    if bits not in (8, 16):
        raise EncodeError(f"PNG bit depth must be 8 or 16, not {bits}")
    values = (pixels * scale).clamp(0, scale).to(torch.int32).numpy().astype(dtype)
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = values.reshape(height, width * channels).view(np.uint8).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    chunks = [png_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        chunks.append(png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")))
    chunks.append(png_chunk(b"IDAT", zlib.compress(raw, compress_level)))
    chunks.append(png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


# -- EXR --------------------------------------------------------------------------------------------

def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse sRGB transfer curve on the colour channels; an alpha channel passes unchanged."""
    if rgb.shape[-1] == 4:
        return torch.cat([srgb_to_linear(rgb[..., :3]), rgb[..., 3:]], dim=-1)
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp(min=0.0) + 0.055) / 1.055) ** 2.4)


def hlg_to_linear(signal: torch.Tensor) -> torch.Tensor:
    """Inverse HLG OETF (BT.2100) to scene-linear light; an alpha channel passes unchanged."""
    if signal.shape[-1] == 4:
        return torch.cat([hlg_to_linear(signal[..., :3]), signal[..., 3:]], dim=-1)
    low = signal ** 2 / 3.0
    high = (torch.exp((signal.clamp(min=0.5) - _HLG_C) / _HLG_A) + _HLG_B) / 12.0
    return torch.where(signal <= 0.5, low, high)


def _exr_attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _exr_channel_names(channels: int) -> list[str]:
    return {1: ["Y"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}[channels]


def encode_exr(image: torch.Tensor, colorspace: str, metadata: Mapping[str, Any] | None = None) -> bytes:
    """Uncompressed scanline OpenEXR of ``[H,W,C]`` as 32-bit floats, made scene-linear from
    ``colorspace`` ("sRGB", "HDR" = HLG Rec.2020, "linear"); values are not clamped."""
    pixels = _pixels(image)
    if colorspace == "sRGB":
        pixels = srgb_to_linear(pixels)
    elif colorspace == "HDR":
        pixels = hlg_to_linear(pixels)
    elif colorspace != "linear":
        raise EncodeError(f"EXR input colour space must be sRGB, HDR or linear, not {colorspace!r}")
    height, width, channels = pixels.shape
    names = _exr_channel_names(channels)
    order = sorted(range(channels), key=lambda i: names[i])        # EXR stores channels by name
    chlist = b"".join(names[i].encode() + b"\0" + struct.pack("<iB3xii", 2, 0, 1, 1) for i in order) + b"\0"
    box = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header = [
        _exr_attribute("channels", "chlist", chlist),
        _exr_attribute("compression", "compression", b"\0"),
        _exr_attribute("dataWindow", "box2i", box),
        _exr_attribute("displayWindow", "box2i", box),
        _exr_attribute("lineOrder", "lineOrder", b"\0"),
        _exr_attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _exr_attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
        _exr_attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
        _exr_attribute("chromaticities", "chromaticities",
                       struct.pack("<8f", *CHROMATICITIES["Rec.2020" if colorspace == "HDR" else "Rec.709"])),
    ]
    for key, value in (metadata or {}).items():
        header.append(_exr_attribute(str(key), "string", json.dumps(value).encode("utf-8")))
    head = EXR_MAGIC + struct.pack("<I", 2) + b"".join(header) + b"\0"
    planes = pixels.numpy().astype("<f4")
    line_bytes = width * channels * 4
    table_end = len(head) + 8 * height
    offsets = [table_end + y * (8 + line_bytes) for y in range(height)]
    lines = [struct.pack("<ii", y, line_bytes) + b"".join(planes[y, :, i].tobytes() for i in order)
             for y in range(height)]
    return head + struct.pack(f"<{height}Q", *offsets) + b"".join(lines)


# -- AVIF -------------------------------------------------------------------------------------------

def avif_exif(metadata: Mapping[str, Any]) -> bytes:
    """ComfyUI's AVIF metadata as EXIF bytes: ``prompt:<json>`` in 0x0110, others from 0x010F down."""
    exif = Image.Exif()
    if "prompt" in metadata:
        exif[0x0110] = f"prompt:{json.dumps(metadata['prompt'])}"
    tag = 0x010F
    for key, value in metadata.items():
        if key != "prompt":
            exif[tag] = f"{key}:{json.dumps(value)}"
            tag -= 1
    return exif.tobytes()


def crf_to_quality(crf: int) -> int:
    """libavif quality whose quantiser is about ``crf`` (both 0..63 scales, lower is better)."""
    return max(0, min(100, round(100 - crf * 100 / 63)))


def encode_avif(images: torch.Tensor, crf: int, fps: float | None, loop: int | None,
                metadata: Mapping[str, Any] | None) -> bytes:
    """8-bit 4:2:0 AVIF of ``[N,H,W,C]`` (C = 1 or 3): one still image, or an animation when ``fps``."""
    frames = []
    for image in images:
        pixels = _pixels(image)
        if pixels.shape[-1] == 4:
            raise EncodeError("AVIF saving supports 1-channel grayscale and 3-channel RGB images, not RGBA; "
                              "remove the alpha first (ImageRemoveAlpha) or save as png")
        array = (pixels * 255.0).clamp(0, 255).to(torch.uint8).numpy()
        frames.append(Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB"))
    options: dict[str, Any] = {"quality": crf_to_quality(crf), "subsampling": "4:2:0", "range": "limited"}
    if metadata:
        options["exif"] = avif_exif(metadata)
    if fps is not None and len(frames) > 1:
        options.update(save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=loop or 0)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="AVIF", **options)
    return buffer.getvalue()
