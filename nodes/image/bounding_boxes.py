"""ComfyUI's ``CreateBoundingBoxes``: the boxes drawn on its canvas (or given upstream) as a preview image, a
``BOUNDING_BOX`` list in pixels and an ``ARRAY`` of layout elements for the layout-prompt nodes
(Flux3LayoutPrompt).

Values (ComfyUI's node spec and the boxes its templates save):

* ``editor_state`` (a canvas widget kept in ``widgets_values``): a list of boxes ``{"x", "y", "width",
  "height", "metadata": {"type": "obj" | "text", "text", "desc", "palette"}}`` in pixels of the
  ``width`` × ``height`` canvas.
* ``bboxes`` (optional, linked): a BOUNDING_BOX (one box dict, a list of them, or ComfyUI's per-frame list of
  lists: the first frame is used), an ARRAY of elements, or a JSON string of either. A new upstream value
  replaces the canvas; while it equals ``last_incoming`` the canvas's own boxes win (ComfyUI's rule).
* outputs: ``preview`` (the background, or a dark canvas, with each box outlined and numbered),
  ``bboxes`` (``[[{"x", "y", "width", "height", "metadata"}, …]]``: one frame) and ``elements`` (one
  :class:`LayoutElement` dict per box: ``type``, ``bbox`` = ``[y_min, x_min, y_max, x_max]`` as integers on
  a 0–1000 grid, ``text``, ``desc``, ``palette``). The element keys and the ``yxyx`` order are nodegraph's
  choice (ComfyUI documents "coordinates normalized 0–1000" only); the consumers here read them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import ANY, IMAGE

from .checks import image_input, node_error
from .operations import common_upscale

NODE = "CreateBoundingBoxes"
GRID = 1000
BOUNDING_BOX, ARRAY = "BOUNDING_BOX", "ARRAY"
#: outline colours of the preview, box by box
COLORS = ((230, 57, 70), (42, 157, 143), (233, 196, 106), (69, 123, 157), (244, 162, 97), (131, 56, 236))
BACKDROP = (38, 38, 38)


@dataclass(frozen=True)
class PixelBox:
    """One box in canvas pixels with its metadata."""

    x: int
    y: int
    width: int
    height: int
    kind: str = "obj"
    text: str = ""
    desc: str = ""
    palette: tuple = ()

    def as_bounding_box(self) -> dict:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height,
                "metadata": {"type": self.kind, "text": self.text, "desc": self.desc, "palette": list(self.palette)}}


@dataclass(frozen=True)
class LayoutElement:
    """One element of the ``elements`` ARRAY: ``bbox`` is ``[y_min, x_min, y_max, x_max]`` on 0–1000."""

    type: str
    bbox: list[int]
    text: str = ""
    desc: str = ""
    palette: list = field(default_factory=list)


def _grid(value: float, size: int) -> int:
    return int(round(min(max(value / size, 0.0), 1.0) * GRID))


def to_element(box: PixelBox, width: int, height: int) -> dict:
    return asdict(LayoutElement(box.kind, [_grid(box.y, height), _grid(box.x, width), _grid(box.y + box.height, height),
                                           _grid(box.x + box.width, width)], box.text, box.desc, list(box.palette)))


def _box_from_dict(item: dict, width: int, height: int, where: str) -> PixelBox:
    meta = item.get("metadata") or {}
    kind = str(item.get("type", meta.get("type", "obj")) or "obj")
    text = str(item.get("text", meta.get("text", "")) or "")
    desc = str(item.get("desc", item.get("description", meta.get("desc", ""))) or "")
    palette = tuple(item.get("palette", meta.get("palette", ())) or ())
    if "bbox" in item:  # an element: [y_min, x_min, y_max, x_max] on 0-1000
        try:
            y0, x0, y1, x1 = (float(v) for v in item["bbox"])
        except (TypeError, ValueError):
            raise node_error(NODE, f"{where}: an element's bbox must be [y_min, x_min, y_max, x_max] on 0-1000, "
                                   f"got {item['bbox']!r}") from None
        x, y = round(x0 / GRID * width), round(y0 / GRID * height)
        return PixelBox(x, y, round(x1 / GRID * width) - x, round(y1 / GRID * height) - y, kind, text, desc, palette)
    try:
        return PixelBox(int(round(float(item["x"]))), int(round(float(item["y"]))), int(round(float(item["width"]))),
                        int(round(float(item["height"]))), kind, text, desc, palette)
    except (KeyError, TypeError, ValueError):
        raise node_error(NODE, f"{where}: a box needs numbers x, y, width and height, got {item!r}") from None


def parse_boxes(value: Any, width: int, height: int, where: str) -> list[PixelBox]:
    """Boxes from an editor state, a BOUNDING_BOX (dict, list, per-frame lists), an ARRAY or a JSON string."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise node_error(NODE, f"{where} is a string but not JSON boxes: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise node_error(NODE, f"{where} must be boxes (a list of {{x, y, width, height}} or elements), "
                               f"got {type(value).__name__}")
    if value and all(isinstance(v, (list, tuple)) for v in value):  # per-frame lists: the first frame
        value = value[0]
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise node_error(NODE, f"{where}: each box must be an object, got {item!r}")
        box = _box_from_dict(item, width, height, where)
        if box.width <= 0 or box.height <= 0:
            raise node_error(NODE, f"{where}: box {len(out) + 1} has an empty size ({box.width}x{box.height})")
        out.append(box)
    return out


def preview_image(boxes: list[PixelBox], width: int, height: int, background: torch.Tensor | None) -> torch.Tensor:
    """``[1, height, width, 3]``: the background (stretched to the canvas) or a dark canvas, boxes outlined and
    numbered with their type and description."""
    if background is not None:
        bg = common_upscale(background[:1, ..., :3].movedim(-1, 1).float(), width, height, "bilinear", "disabled")
        pixels = (bg[0].movedim(0, -1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        canvas = Image.fromarray(pixels, "RGB")
    else:
        canvas = Image.new("RGB", (width, height), BACKDROP)
    draw = ImageDraw.Draw(canvas)
    line = max(2, min(width, height) // 256)
    for i, box in enumerate(boxes):
        color = COLORS[i % len(COLORS)]
        draw.rectangle([box.x, box.y, box.x + box.width - 1, box.y + box.height - 1], outline=color, width=line)
        label = f"{i + 1} {box.kind}: {box.text or box.desc}".strip()
        draw.text((box.x + line + 2, box.y + line + 2), label[:60], fill=color)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).unsqueeze(0)


class CreateBoundingBoxes(Node):
    """Draws the canvas's bounding boxes (or the upstream ones) and outputs them as a preview image, pixel
    boxes and layout elements (normalised 0–1000) for the layout-prompt nodes."""

    category = "image/bounding_box"
    display_name = "Create Bounding Boxes"
    canvas_widgets = ("editor_state", "last_incoming")
    background = Input(IMAGE, optional=True, tooltip="Optional image used as background in the canvas and preview.")
    bboxes = Input(f"{BOUNDING_BOX},{ARRAY},STRING", optional=True,
                   tooltip="Bounding boxes, elements, or a JSON string to initialize the canvas.")
    width = Input(INT, default=1024, min=64, max=16384, step=16,
                  tooltip="Width of the canvas and the pixel grid for the bounding boxes.")
    height = Input(INT, default=1024, min=64, max=16384, step=16,
                   tooltip="Height of the canvas and the pixel grid for the bounding boxes.")
    editor_state = Input(ANY, default=[], tooltip="The boxes drawn on the canvas (background first, foreground last).")
    last_incoming = Input(ANY, optional=True, default=[],
                          tooltip="The upstream bboxes value that last initialized the canvas (managed by it).")
    outputs = (Output(IMAGE, "preview"), Output(BOUNDING_BOX, "bboxes"), Output(ARRAY, "elements"))

    def execute(self, width: int, height: int, editor_state: Any = None, background: torch.Tensor | None = None,
                bboxes: Any = None, last_incoming: Any = None) -> tuple:
        if background is not None:
            background = image_input(NODE, "background", background)
        upstream_new = bboxes is not None and bboxes != "" and bboxes != (last_incoming or [])
        source, where = (bboxes, "input 'bboxes'") if upstream_new else (editor_state, "input 'editor_state'")
        boxes = parse_boxes(source, width, height, where)
        return (preview_image(boxes, width, height, background), [[b.as_bounding_box() for b in boxes]],
                [to_element(b, width, height) for b in boxes])
