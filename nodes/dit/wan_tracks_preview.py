"""ComfyUI's ``WanMoveVisualizeTracks``: point tracks (:mod:`.wan_tracks`) drawn over video frames, to check them
before sampling.

Facts (ComfyUI's, after Wan-Move's visualizer):

* Frames: with fewer images than track frames, the batch is repeated (whole times) to cover them; one output frame
  per image, in ``[0, 1]`` after rounding to 8 bits. Without tracks the images pass unchanged.
* Track ``n`` has colour ``n mod 5`` of (102, 153, 255), (0, 255, 255), (255, 255, 0), (255, 102, 204),
  (0, 255, 0); positions are truncated to whole pixels.
* On each frame ``t``: a disc of radius ``circle_size`` at each track visible on it (colour at ``opacity``, discs
  painted over each other on one layer, the layer blended over the frame); then each such track's trail over frames
  ``t - line_resolution … t`` on a second layer: walked back from the current point, one pixel stamp per pixel of
  length, with alpha ``opacity · (1 - s)`` and width ``max(line_width · (1 - s), 1)`` (``s`` the walked fraction of
  the trail's length), composited onto that layer and the layer blended over the frame.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from nodegraph.node import FLOAT, INT, Input, Node, Output
from nodegraph.types import IMAGE

from nodegraph_nodes.dit.wan_tracks import TRACKS, Tracks

COLOURS = ((102, 153, 255), (0, 255, 255), (255, 255, 0), (255, 102, 204), (0, 255, 0))


def _blend(frame: np.ndarray, layer: Image.Image) -> np.ndarray:
    rgba = np.asarray(layer, dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    return rgba[..., :3] * alpha + frame * (1 - alpha)


def _trail(layer: Image.Image, points: np.ndarray, colour: tuple[int, int, int], width: int, opacity: float) -> None:
    """The fading, narrowing trail from ``points[-1]`` (now) back to ``points[0]``."""
    draw = ImageDraw.Draw(layer, "RGBA")
    points = points[::-1].astype(np.float64)
    lengths = np.hypot(*(points[1:] - points[:-1]).T)
    total = lengths.sum()
    if total == 0:
        return
    walked = 0.0
    for (x0, y0), (x1, y1), length in zip(points[:-1], points[1:], lengths):
        steps = max(int(length), 1)
        for i in range(steps):
            s = (walked + i / steps * length) / total
            x, y = int(x0 + (x1 - x0) * i / steps), int(y0 + (y1 - y0) * i / steps)
            draw.line([(x, y), (x + 1, y)], fill=(*colour, int(255 * (1 - s) * opacity)),
                      width=max(int(width * (1 - s)), 1))
        walked += length


def draw_tracks(images: torch.Tensor, tracks: Tracks, trail: int, radius: int, opacity: float,
                width: int) -> torch.Tensor:
    """``images`` ``[F, H, W, C]`` with ``tracks`` drawn on: ``[F, H, W, 3]``."""
    frames = (images[..., :3].float() * 255).to(torch.uint8).cpu().numpy()
    if frames.shape[0] != tracks.frames and frames.shape[0] < tracks.frames:
        frames = np.concatenate([frames] * (tracks.frames // frames.shape[0]))
    path = tracks.path.long().cpu().numpy()
    seen = tracks.visibility.cpu().numpy()
    count, (h, w) = path.shape[1], frames.shape[1:3]
    disc_alpha = int(255 * opacity)
    out = []
    for t in range(min(frames.shape[0], path.shape[0])):
        frame = frames[t].astype(np.float32)
        discs = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        draw = ImageDraw.Draw(discs)
        trails = []
        for n in range(count):
            if not seen[t, n]:
                continue
            x, y = path[t, n]
            colour = COLOURS[n % len(COLOURS)]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(*colour, disc_alpha))
            recent = path[max(t - trail, 0):t + 1, n]
            if len(recent) > 1:
                trails.append((recent, colour))
        frame = _blend(frame, discs)
        if trails:
            layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            for recent, colour in trails:
                _trail(layer, recent, colour, width, opacity)
            frame = _blend(frame, layer)
        out.append(frame.astype(np.uint8))
    return torch.from_numpy(np.stack(out)).float() / 255.0


class WanMoveVisualizeTracks(Node):
    """The tracks drawn over the frames: a disc where each track is and its fading trail."""

    category = "conditioning/video_models"
    images = Input(IMAGE)
    tracks = Input(TRACKS, optional=True)
    line_resolution = Input(INT, default=24, min=1, max=1024)
    circle_size = Input(INT, default=12, min=1, max=128)
    opacity = Input(FLOAT, default=0.75, min=0.0, max=1.0, step=0.01)
    line_width = Input(INT, default=16, min=1, max=128)
    outputs = (Output(IMAGE),)

    def execute(self, images: torch.Tensor, line_resolution: int, circle_size: int, opacity: float, line_width: int,
                tracks: Tracks | None = None) -> tuple:
        if tracks is None:
            return (images,)
        return (draw_tracks(images, tracks, line_resolution, circle_size, opacity, line_width),)
