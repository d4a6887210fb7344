"""Point tracks for trajectory-conditioned Wan image-to-video (ATI, Wan-Move): ComfyUI's JSON track strings, the
``TRACKS`` value and the nodes that make one (``GenerateTracks``, ``WanMoveTracksFromCoords``,
``WanMoveConcatTrack``). The conditioning nodes that use them: :mod:`.wan_ati`, :mod:`.wan_move`.

Facts (ComfyUI's):

* Track strings: JSON (single quotes read as double ones) of a list of tracks, each a list of ``{"x", "y"}``
  points in pixels, one per frame; a single track may stand alone; ATI's node also takes a list of such lists
  (one per batch entry). Text that is not JSON is no tracks.
* ``TRACKS``: the path ``[frames, tracks, 2]`` (x, y in pixels) and the visibility ``[frames, tracks]``.
* GenerateTracks: the centre path runs from the start to the end point (fractions of width and height) along a
  line or a quadratic Bézier through the mid point, timed by ``t`` (``linspace(0, 1, num_frames)``): linear ``t``,
  ease in ``t²``, ease out ``1 - (1 - t)²``, ease in-out ``t²(3 - 2t)``, constant ``0``. The ``num_tracks`` tracks
  lie on the path's normal (the tangent turned by +90°; along x where the tangent is zero), ``track_spread ·
  (width + height) / 2`` pixels apart, centred on the path. With ``track_mask``, a frame is visible where its mask
  has any nonzero pixel.
* WanMoveConcatTrack: both inputs' tracks side by side (the second's after the first's).

Differences from ComfyUI: a mask's visibility ``[frames, 1]`` is widened to every track here (ComfyUI keeps one
column, which Wan-Move's conditioning then indexes per track and fails on with more than one track); a one-frame
mask stands for every frame (ComfyUI's fails past its first frame).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import MASK

TRACKS = "TRACKS"

INTERPOLATIONS = ("linear", "ease_in", "ease_out", "ease_in_out", "constant")

#: a track: one ``{"x", "y"}`` point per frame
Track = list


@dataclass(frozen=True)
class Tracks:
    """The ``TRACKS`` value: point paths in pixels and where they are visible."""

    #: ``[frames, tracks, 2]`` (x, y)
    path: torch.Tensor
    #: ``[frames, tracks]`` bool
    visibility: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.path.shape[0])

    @property
    def count(self) -> int:
        return int(self.path.shape[1])


def parse_json_tracks(text) -> list:
    """ComfyUI's reading of a track string (or a list of them): a list of tracks, or (ATI's batched form) a list
    of lists of tracks; ``[]`` where the text is not JSON."""
    data: list = []
    try:
        if isinstance(text, str):
            data.extend(json.loads(text.replace("'", '"')))
        else:
            for part in text:
                data.append(json.loads(part.replace("'", '"')))
    except json.JSONDecodeError:
        return []
    if data and isinstance(data[0], dict) and "x" in data[0]:
        data = [data]  # a single track
    return data


def visibility_of(track_mask: torch.Tensor | None, frames: int, count: int, where: str) -> torch.Tensor:
    """All visible, or visible on the frames where ``track_mask`` has any nonzero pixel, for every track (a
    one-frame mask for every frame)."""
    if track_mask is None:
        return torch.ones((frames, count), dtype=torch.bool)
    mask = track_mask.reshape(-1, *track_mask.shape[-2:])
    if mask.shape[0] not in (1, frames):
        raise ValueError(f"{where}.track_mask: {mask.shape[0]} frames for {frames} track frames; give one mask per "
                         "frame (or one for all)")
    return (mask > 0).any(dim=(1, 2))[:, None].expand(frames, count).clone()


def _timing(t: torch.Tensor, interpolation: str) -> torch.Tensor:
    if interpolation == "constant":
        return torch.zeros_like(t)
    if interpolation == "ease_in":
        return t ** 2
    if interpolation == "ease_out":
        return 1 - (1 - t) ** 2
    if interpolation == "ease_in_out":
        return t * t * (3 - 2 * t)
    if interpolation == "linear":
        return t
    raise ValueError(f"GenerateTracks.interpolation: {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")


def generate_path(width: int, height: int, start: tuple[float, float], end: tuple[float, float],
                  mid: tuple[float, float] | None, num_frames: int, num_tracks: int, spread: float,
                  interpolation: str) -> torch.Tensor:
    """GenerateTracks' paths ``[num_frames, num_tracks, 2]`` in pixels; ``mid``: the Bézier control point, or
    ``None`` for a straight line (all as fractions of width and height)."""
    t = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    s = _timing(t, interpolation)
    size = torch.tensor([width, height], dtype=torch.float64)
    p0, p2 = torch.tensor(start, dtype=torch.float64) * size, torch.tensor(end, dtype=torch.float64) * size
    if mid is None:
        centre = p0 + (p2 - p0) * s[:, None]
        tangent = (p2 - p0).expand(num_frames, 2)
    else:
        p1 = torch.tensor(mid, dtype=torch.float64) * size
        u = (1 - s)[:, None]
        centre = u ** 2 * p0 + 2 * u * s[:, None] * p1 + s[:, None] ** 2 * p2
        tangent = 2 * u * (p1 - p0) + 2 * s[:, None] * (p2 - p1)
    length = tangent.norm(dim=-1, keepdim=True)
    normal = torch.where(length > 0, torch.stack([-tangent[:, 1], tangent[:, 0]], dim=-1) / length.clamp_min(1e-300),
                         torch.tensor([1.0, 0.0], dtype=torch.float64))
    offsets = (torch.arange(num_tracks, dtype=torch.float64) - (num_tracks - 1) / 2) * spread * (width + height) / 2
    return (centre[:, None] + normal[:, None] * offsets[None, :, None]).float()


class GenerateTracks(Node):
    """Parallel point tracks along a line or Bézier path (Wan-Move's ``TRACKS``) and their frame count."""

    category = "conditioning/video_models"
    display_name = "Generate Video Tracks"
    width = Input(INT, default=832, min=16, max=4096, step=16)
    height = Input(INT, default=480, min=16, max=4096, step=16)
    start_x = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Normalized X coordinate (0-1) for start position.")
    start_y = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Normalized Y coordinate (0-1) for start position.")
    end_x = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Normalized X coordinate (0-1) for end position.")
    end_y = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Normalized Y coordinate (0-1) for end position.")
    num_frames = Input(INT, default=81, min=1, max=1024)
    num_tracks = Input(INT, default=5, min=1, max=100)
    track_spread = Input(FLOAT, default=0.025, min=0.0, max=1.0, step=0.001,
                         tooltip="Normalized distance between tracks. Tracks are spread perpendicular to the motion direction.")
    bezier = Input(BOOLEAN, default=False, tooltip="Enable Bezier curve path using the mid point as control point.")
    mid_x = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01,
                  tooltip="Normalized X control point for Bezier curve. Only used when 'bezier' is enabled.")
    mid_y = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01,
                  tooltip="Normalized Y control point for Bezier curve. Only used when 'bezier' is enabled.")
    interpolation = Input(COMBO, choices=list(INTERPOLATIONS), default="linear",
                          tooltip="Controls the timing/speed of movement along the path.")
    track_mask = Input(MASK, optional=True, tooltip="Optional mask to indicate visible frames.")
    outputs = (Output(TRACKS), Output(INT, "track_length"))

    def execute(self, width: int, height: int, start_x: float, start_y: float, end_x: float, end_y: float,
                num_frames: int, num_tracks: int, track_spread: float, bezier: bool = False, mid_x: float = 0.5,
                mid_y: float = 0.5, interpolation: str = "linear", track_mask: torch.Tensor | None = None) -> tuple:
        path = generate_path(width, height, (start_x, start_y), (end_x, end_y), (mid_x, mid_y) if bezier else None,
                             num_frames, num_tracks, track_spread, interpolation)
        return Tracks(path, visibility_of(track_mask, num_frames, num_tracks, "GenerateTracks")), num_frames


class WanMoveTracksFromCoords(Node):
    """``TRACKS`` from a JSON list of tracks (each a list of ``{"x", "y"}`` points, one per frame) and their frame
    count."""

    category = "conditioning/video_models"
    track_coords = Input(STRING, default="[]", force_input=True, optional=True)
    track_mask = Input(MASK, optional=True)
    outputs = (Output(TRACKS), Output(INT, "track_length"))

    def execute(self, track_coords: str = "[]", track_mask: torch.Tensor | None = None) -> tuple:
        tracks = parse_json_tracks(track_coords)
        if not tracks or not isinstance(tracks[0], list) or not tracks[0] or not isinstance(tracks[0][0], dict):
            raise ValueError("WanMoveTracksFromCoords.track_coords: no tracks; give a JSON list of tracks, each a list "
                             'of {"x": …, "y": …} points (one per frame)')
        frames = len(tracks[0])
        if any(len(track) != frames for track in tracks):
            raise ValueError(f"WanMoveTracksFromCoords.track_coords: the tracks have different lengths "
                             f"({sorted({len(t) for t in tracks})}); each needs one point per frame")
        path = torch.tensor([[[float(track[f]["x"]), float(track[f]["y"])] for track in tracks]
                             for f in range(frames)], dtype=torch.float32)
        return Tracks(path, visibility_of(track_mask, frames, len(tracks), "WanMoveTracksFromCoords")), frames


class WanMoveConcatTrack(Node):
    """Two sets of tracks as one (the second's tracks after the first's); the first alone without a second."""

    category = "conditioning/video_models"
    tracks_1 = Input(TRACKS)
    tracks_2 = Input(TRACKS, optional=True)
    outputs = (Output(TRACKS),)

    def execute(self, tracks_1: Tracks, tracks_2: Tracks | None = None) -> tuple:
        if tracks_2 is None:
            return (tracks_1,)
        if tracks_1.frames != tracks_2.frames:
            raise ValueError(f"WanMoveConcatTrack: tracks_1 has {tracks_1.frames} frames, tracks_2 {tracks_2.frames}; "
                             "tracks side by side need the same frame count")
        return (Tracks(torch.cat([tracks_1.path, tracks_2.path], dim=1),
                       torch.cat([tracks_1.visibility, tracks_2.visibility], dim=-1)),)
