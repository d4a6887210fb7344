"""ComfyUI's WebSocket messages as runners send them: ``{"type": …, "data": …}`` JSON text, and the
binary preview frame. The same ``[type, data]`` pairs are kept in a job's history."""

from __future__ import annotations

import io
import json
import struct
import time
from typing import Any

PREVIEW_IMAGE = 1
JPEG = 1


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(type_: str, data: dict) -> str:
    return json.dumps({"type": type_, "data": data}, separators=(",", ":"), default=str)


def status(queue_remaining: int, sid: str | None = None) -> str:
    """The ``status`` message (``sid`` only in the greeting of a new connection, as ComfyUI)."""
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return encode("status", data)


def encode_preview(image: Any, max_size: int) -> bytes:
    """Binary frame ``uint32 BE event=1 (PREVIEW_IMAGE)``, ``uint32 BE format=1 (JPEG)``, JPEG bytes."""
    from PIL import Image

    from ..pngmeta import to_uint8

    pil = Image.fromarray(to_uint8(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    pil.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=95)
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + buffer.getvalue()
