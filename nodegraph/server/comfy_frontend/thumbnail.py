"""A picture of a UI-format workflow's graph (node boxes and links), the templates dialog's thumbnail.

Our ready workflows ship no preview images; ComfyUI's template index wants one per template. This
draws the workflow as the canvas lays it out: every node's box at its saved position and size (title
bar coloured by what the node does), each link a line from its source's right edge to its target's
left edge, all scaled to fit. Subgraph definitions are not drawn (their node is one box, as on the
canvas). PNG, deterministic for a given file.
"""

from __future__ import annotations

import io
from typing import Any

WIDTH, HEIGHT = 512, 384
MARGIN = 24
BACKGROUND = (30, 30, 34)
BODY = (53, 53, 58)
OUTLINE = (90, 90, 98)
LINK = (150, 160, 175)
#: title-bar colours by a word in the node's type (the first match wins)
TITLE_COLOURS = (("Save", (60, 120, 70)), ("Preview", (60, 120, 70)), ("Load", (70, 90, 140)),
                 ("Sampler", (130, 80, 140)), ("Encode", (140, 110, 50)), ("Decode", (140, 110, 50)),
                 ("Prompt", (140, 110, 50)), ("Note", (110, 110, 60)))
DEFAULT_TITLE = (80, 80, 90)
TITLE_HEIGHT = 30


def _xy(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    """``[x, y]`` or litegraph's ``{"0": x, "1": y}``."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    if isinstance(value, (list, tuple)) and len(value) >= 2 and all(isinstance(v, (int, float)) for v in value[:2]):
        return float(value[0]), float(value[1])
    return default


def _colour(node_type: str) -> tuple[int, int, int]:
    for word, colour in TITLE_COLOURS:
        if word in node_type:
            return colour
    return DEFAULT_TITLE


def render_graph(workflow: dict) -> bytes:
    """The PNG bytes of ``workflow``'s graph."""
    from PIL import Image, ImageDraw

    boxes: dict[Any, tuple[float, float, float, float, str]] = {}
    for node in workflow.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        x, y = _xy(node.get("pos"), (0.0, 0.0))
        w, h = _xy(node.get("size"), (200.0, 100.0))
        boxes[node.get("id")] = (x, y - TITLE_HEIGHT, max(w, 40.0), max(h, 20.0) + TITLE_HEIGHT,
                                 str(node.get("type", "")))
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    if not boxes:
        return _png(image)
    left = min(b[0] for b in boxes.values())
    top = min(b[1] for b in boxes.values())
    right = max(b[0] + b[2] for b in boxes.values())
    bottom = max(b[1] + b[3] for b in boxes.values())
    scale = min((WIDTH - 2 * MARGIN) / max(right - left, 1.0), (HEIGHT - 2 * MARGIN) / max(bottom - top, 1.0))
    off_x = (WIDTH - (right - left) * scale) / 2 - left * scale
    off_y = (HEIGHT - (bottom - top) * scale) / 2 - top * scale

    def at(x: float, y: float) -> tuple[float, float]:
        return x * scale + off_x, y * scale + off_y

    draw = ImageDraw.Draw(image)
    for link in workflow.get("links") or []:
        source, target = _link_ends(link)
        if source in boxes and target in boxes:
            sx, sy, sw, sh, _ = boxes[source]
            tx, ty, _, th, _ = boxes[target]
            draw.line([at(sx + sw, sy + TITLE_HEIGHT + 10), at(tx, ty + TITLE_HEIGHT + 10)], fill=LINK,
                      width=max(1, round(2 * scale + 0.5)))
    for x, y, w, h, node_type in boxes.values():
        x0, y0 = at(x, y)
        x1, y1 = at(x + w, y + h)
        draw.rectangle([x0, y0, x1, y1], fill=BODY, outline=OUTLINE)
        draw.rectangle([x0, y0, x1, min(y1, y0 + TITLE_HEIGHT * scale)], fill=_colour(node_type))
    return _png(image)


def _link_ends(link: Any) -> tuple[Any, Any]:
    """A link's ``(origin node id, target node id)``: the array form or the object form of schema 1."""
    if isinstance(link, list) and len(link) >= 5:
        return link[1], link[3]
    if isinstance(link, dict):
        return link.get("origin_id"), link.get("target_id")
    return None, None


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
