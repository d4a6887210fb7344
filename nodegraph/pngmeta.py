"""PNG files with workflow metadata, written and read the way ComfyUI does (COMFY_COMPAT §4).

Writing: :func:`encode_png` stores each text chunk as ``tEXt`` before ``IDAT`` (Pillow's ``PngInfo``);
:func:`comfy_text_chunks` builds them from a prompt and ``extra_pnginfo`` (``prompt`` first, then
one chunk per extra key, JSON with ``ensure_ascii``). Reading: :func:`read_png_text` walks the chunk
list itself, so it never decodes pixels and sees text chunks on either side of ``IDAT``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Largest decompressed zTXt/iTXt text accepted (guards against zip bombs).
MAX_TEXT_BYTES = 64 * 1024 * 1024


def to_uint8(image: Any) -> np.ndarray:
    """A float 0..1 image (``[H,W,C]``/``[H,W]`` tensor or array) as uint8: ×255, clip, truncate."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    return np.clip(255.0 * array, 0, 255).astype(np.uint8)


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = to_uint8(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def comfy_text_chunks(prompt: Mapping[str, Any] | None,
                      extra_pnginfo: Mapping[str, Any] | None) -> dict[str, str]:
    """The text chunks SaveImage writes: ``prompt`` then each ``extra_pnginfo`` key, as JSON."""
    chunks: dict[str, str] = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        chunks[str(key)] = json.dumps(value)
    return chunks


def encode_png(image: Any, text_chunks: Mapping[str, str] | None = None, compress_level: int = 4) -> bytes:
    """PNG bytes of ``image`` (uint8 array, float 0..1 array/tensor or PIL image) with ``tEXt`` chunks.

    Keywords must be 1–79 Latin-1 characters; values that are not Latin-1 become ``iTXt`` (Pillow's rule).
    """
    info = PngInfo()
    for key, value in (text_chunks or {}).items():
        _check_keyword(key)
        info.add_text(key, value)
    buffer = io.BytesIO()
    _as_pil(image).save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def _check_keyword(key: str) -> None:
    try:
        encoded = key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"PNG text keyword {key!r} must be Latin-1") from None
    if not 1 <= len(encoded) <= 79 or b"\0" in encoded:
        raise ValueError(f"PNG text keyword {key!r} must be 1 to 79 characters without NUL")


# -- reading ----------------------------------------------------------------------------------------

def read_png_text(source: str | Path | bytes) -> dict[str, str]:
    """Every ``tEXt``/``zTXt``/``iTXt`` chunk of a PNG as ``{keyword: text}`` (first wins on repeats).

    Raises ``ValueError`` naming the file when it is not a PNG, is truncated or a chunk is corrupt.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else _read_file(Path(source))
    texts: dict[str, str] = {}
    try:
        for kind, payload in iter_chunks(data):
            decoded = _decode_text_chunk(kind, payload)
            if decoded is not None:
                texts.setdefault(*decoded)
    except ValueError as exc:
        raise ValueError(f"cannot read PNG metadata from {name}: {exc}") from None
    return texts


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read PNG metadata from {path}: {exc.strerror or exc}") from None


def iter_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(type, payload)`` of each chunk up to ``IEND``, checking lengths and CRCs."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ValueError("file is truncated (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"file is truncated inside the {kind!r} chunk")
        payload = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(kind + payload) != crc:
            raise ValueError(f"the {kind.decode('latin-1')} chunk is corrupt (CRC mismatch)")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end + 4


def _decode_text_chunk(kind: bytes, payload: bytes) -> tuple[str, str] | None:
    if kind == b"tEXt":
        key, _, text = payload.partition(b"\0")
        return key.decode("latin-1"), text.decode("latin-1")
    if kind == b"zTXt":
        key, _, rest = payload.partition(b"\0")
        if not rest or rest[0] != 0:
            raise ValueError("zTXt chunk uses an unknown compression method")
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    if kind == b"iTXt":
        return _decode_itxt(payload)
    return None


def _decode_itxt(payload: bytes) -> tuple[str, str]:
    key, _, rest = payload.partition(b"\0")
    if len(rest) < 2:
        raise ValueError("iTXt chunk is too short")
    compressed, method, rest = rest[0], rest[1], rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        if method != 0:
            raise ValueError("iTXt chunk uses an unknown compression method")
        text = _inflate(text)
    try:
        return key.decode("latin-1"), text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"iTXt chunk {key!r} is not valid UTF-8") from None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error as exc:
        raise ValueError(f"compressed text chunk is corrupt ({exc})") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"compressed text chunk is larger than {MAX_TEXT_BYTES} bytes")
    return out


__all__ = ["encode_png", "read_png_text", "comfy_text_chunks", "to_uint8", "iter_chunks"]
