"""ComfyUI's WebSocket messages as runners send them: ``{"type": …, "data": …}`` JSON text, and the
binary image frames. The same ``[type, data]`` pairs are kept in a job's history.

Binary frames (ComfyUI's framing, big-endian):

* ``PREVIEW_IMAGE`` (1): ``uint32 1``, ``uint32 format`` (1 JPEG, 2 PNG), the image bytes — what a
  client that announced nothing gets (ComfyUI's ``script_examples`` strip the first 8 bytes);
* ``PREVIEW_IMAGE_WITH_METADATA`` (4): ``uint32 4``, ``uint32 n``, ``n`` bytes of JSON (``node_id``,
  ``display_node_id``, ``parent_node_id``, ``real_node_id``, ``prompt_id``, ``image_type``), the image
  bytes — for clients that announced ``supports_preview_metadata`` (ComfyUI's frontend, our canvas).

What a client understands is what it announces in its first WebSocket message,
``{"type": "feature_flags", "data": {...}}`` (:class:`ClientFeatures`).
"""

from __future__ import annotations

import io
import json
import struct
import time
from dataclasses import dataclass
from typing import Any, Mapping

from .. import jsontext

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
#: the format numbers of a ``PREVIEW_IMAGE`` frame, by PIL format name
IMAGE_FORMATS = {"JPEG": 1, "PNG": 2}
JPEG, PNG = IMAGE_FORMATS["JPEG"], IMAGE_FORMATS["PNG"]
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}

#: ComfyUI's per-prompt live preview switch, ``extra_data.preview_method`` (its frontend's "Live
#: preview method" setting): these values ask for previews, ``none`` refuses them, ``default`` (or
#: nothing) leaves it to the server, whose default, like ComfyUI's without ``--preview-method``, is none
PREVIEW_METHODS_ON = frozenset({"auto", "latent2rgb", "taesd"})
PREVIEW_METHOD_OFF = "none"


@dataclass(frozen=True)
class ClientFeatures:
    """What one WebSocket client announced it understands (all off until it says so).

    ``preview_metadata``: ComfyUI's ``supports_preview_metadata`` — image frames come as
    ``PREVIEW_IMAGE_WITH_METADATA``. ``previews``: ours, ``nodegraph_previews`` — live previews for
    every prompt of this client (as ComfyUI's ``--preview-method auto`` does for everyone).
    ``extra_events``: ours, ``nodegraph_events`` — nodegraph's own messages (``node_finished``), which
    ComfyUI's clients do not know (its frontend logs each as an error)."""

    preview_metadata: bool = False
    previews: bool = False
    extra_events: bool = False

    #: the ``feature_flags`` keys read, by field
    FLAGS = {"preview_metadata": "supports_preview_metadata", "previews": "nodegraph_previews",
             "extra_events": "nodegraph_events"}

    @classmethod
    def from_flags(cls, flags: Any) -> "ClientFeatures":
        """From the ``data`` of a client's ``feature_flags`` message (a flag counts only when ``true``)."""
        if not isinstance(flags, Mapping):
            return cls()
        return cls(**{name: flags.get(key) is True for name, key in cls.FLAGS.items()})


def wants_previews(features: ClientFeatures | None, extra_data: Mapping[str, Any] | None) -> bool:
    """Whether a prompt's client gets live previews: the prompt's ``extra_data.preview_method`` when it
    names one (``auto``/``latent2rgb``/``taesd`` on, ``none`` off), else the client's announcement;
    nobody gets them when the client is not connected."""
    if features is None:
        return False
    method = (extra_data or {}).get("preview_method")
    if isinstance(method, str):
        method = method.strip().lower()
        if method in PREVIEW_METHODS_ON:
            return True
        if method == PREVIEW_METHOD_OFF:
            return False
    return features.previews


_encode_string = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str (ensure_ascii)


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(type_: str, data: dict) -> str:
    """A WebSocket text message; what JSON cannot hold is written as its ``str`` (compact, UTF-8:
    :mod:`nodegraph.jsontext`)."""
    return jsontext.dumps({"type": type_, "data": data}, default=str)


def executing(node: str | None, display_node: str | None, prompt_id: str) -> str:
    """``encode("executing", {"node": …, "display_node": …, "prompt_id": …})``, built directly: it is
    sent once per node, so its cost is a per-node cost of the server."""
    return executing_with(node, display_node, executing_tail(prompt_id))


def executing_tail(prompt_id: str) -> str:
    """The end of every ``executing`` message of one prompt (its id, encoded once per prompt)."""
    return f',"prompt_id":{_string(prompt_id)}}}}}'


def executing_with(node: str | None, display_node: str | None, tail: str) -> str:
    """:func:`executing` with the prompt's :func:`executing_tail`."""
    encoded = _string(node)
    shown = encoded if display_node == node else _string(display_node)
    return f'{{"type":"executing","data":{{"node":{encoded},"display_node":{shown}{tail}'


def _string(value: str | None) -> str:
    """A JSON string (``null`` for ``None``), escaped as ``json.dumps`` does."""
    return "null" if value is None else _encode_string(value)


def status(queue_remaining: int, sid: str | None = None) -> str:
    """The ``status`` message (``sid`` only in the greeting of a new connection, as ComfyUI)."""
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return encode("status", data)


def image_frame(image: bytes, image_format: str, metadata: dict | None = None) -> bytes:
    """A binary frame holding encoded ``image`` (``image_format`` ``"JPEG"`` or ``"PNG"``):
    ``PREVIEW_IMAGE_WITH_METADATA`` when ``metadata`` is given (``image_type`` is added), else
    ``PREVIEW_IMAGE``."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image frames carry JPEG or PNG, not {image_format!r}")
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS[image_format]) + image
    meta = json.dumps({**metadata, "image_type": MIME_TYPES[image_format]}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image


def encode_jpeg(image: Any, max_size: int) -> bytes:
    """JPEG bytes of a float ``[H,W,C]`` image (0..1), scaled down to fit ``max_size`` × ``max_size``."""
    from PIL import Image

    from ..pngmeta import to_uint8

    pil = Image.fromarray(to_uint8(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    pil.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def encode_preview(image: Any, max_size: int, metadata: dict | None = None) -> bytes:
    """A live preview's frame: the image as JPEG, framed by :func:`image_frame`."""
    return image_frame(encode_jpeg(image, max_size), "JPEG", metadata)
