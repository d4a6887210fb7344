"""SAM 3 video tracking nodes (ComfyUI's names, inputs and outputs): ``SAM3_VideoTrack`` → ``SAM3_TRACK_DATA``,
``SAM3_TrackToMask`` (chosen objects → one mask per frame) and ``SAM3_TrackPreview`` (a coloured, numbered
overlay video in the temp folder).

ComfyUI tracks with SAM 3's memory tracker (the checkpoint's ``tracker.`` weights), detecting new objects
with the text prompts every ``detect_interval`` frames. The loader here reads the detector only, so
``SAM3_VideoTrack`` tracks by detection: on detection frames every text prompt runs the detector
(:func:`.sam3_detect.detect`, all queries above ``detection_threshold``), detections are matched to the
tracked objects by mask IoU (greedy, best first, IoU > 0.1), unmatched ones become new objects up to
``max_objects`` (0: 64), and objects not found are empty on that frame; between detection frames masks
are carried over. ``initial_mask`` objects (one mask per object, the first frame) come first, keep their
mask on frame 0 and score 1.0. Tracking from ``initial_mask`` alone needs the memory tracker: an error
says so. The node warns that it tracks by detection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F

from nodegraph.node import FLOAT, INT, STRING, Input, Node, NodeResult, Output
from nodegraph.types import CONDITIONING, IMAGE, MASK, MODEL

from .sam3_detect import TextPrompt, check_model, detect, prepare_frames, text_prompts

SAM3_TRACK_DATA = "SAM3_TRACK_DATA"
#: the object cap when ``max_objects`` is 0 (ComfyUI's internal cap)
MAX_OBJECTS = 64
#: least mask IoU for a detection to continue a tracked object
MATCH_IOU = 0.1


@dataclass(frozen=True, eq=False)
class Sam3TrackData:
    """Tracked objects: ``masks`` bool ``[frames, objects, H, W]``, one score per object (1.0 for the
    initial masks), the frames' size and count."""

    masks: torch.Tensor
    scores: tuple[float, ...]
    orig_size: tuple[int, int]
    n_frames: int

    @property
    def n_objects(self) -> int:
        return int(self.masks.shape[1])

    def cache_size(self) -> tuple[int, int]:
        return self.masks.numel() * self.masks.element_size(), 0


def check_track(track_data, node: str) -> Sam3TrackData:
    if not isinstance(track_data, Sam3TrackData):
        raise TypeError(f"{node}: input 'track_data' must come from SAM3_VideoTrack, got {type(track_data).__name__}")
    return track_data


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each mask of ``a`` ``[A, H, W]`` with each of ``b`` ``[B, H, W]`` (bool): ``[A, B]``."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / union.clamp(min=1)


class _Tracker:
    """Objects' masks frame by frame, continued by matching detections."""

    def __init__(self, frames: int, height: int, width: int, cap: int) -> None:
        self.frames, self.size, self.cap = frames, (height, width), cap
        self.tracks: list[list[torch.Tensor]] = []
        self.scores: list[float] = []

    def seed(self, masks: torch.Tensor) -> None:
        for m in masks[:self.cap]:
            self.tracks.append([m])
            self.scores.append(1.0)

    def carry(self, t: int) -> None:
        for track in self.tracks:
            if len(track) == t:
                track.append(track[-1] if track else torch.zeros(self.size, dtype=torch.bool))

    def _last_seen(self, masks: list[torch.Tensor]) -> torch.Tensor:
        """An object's latest non-empty mask (what a lost object is matched again by)."""
        return next((m for m in reversed(masks) if m.any()), masks[-1])

    def update(self, t: int, masks: torch.Tensor, scores: torch.Tensor) -> None:
        """Frame ``t``'s detections (best first) continue objects or start new ones."""
        live = [i for i, tr in enumerate(self.tracks) if len(tr) == t or (t == 0 and len(tr) == 1)]
        matched_det: set[int] = set()
        if live and len(masks):
            last = torch.stack([self._last_seen(self.tracks[i][:t] if t else self.tracks[i]) for i in live])
            iou = _iou(last, masks)
            while True:
                best = float(iou.max()) if iou.numel() else 0.0
                if best <= MATCH_IOU:
                    break
                r, c = divmod(int(iou.argmax()), iou.shape[1])
                obj = live[r]
                if len(self.tracks[obj]) == t:  # initial masks keep their own mask on frame 0
                    self.tracks[obj].append(masks[c])
                matched_det.add(c)
                iou[r, :] = -1
                iou[:, c] = -1
        for obj in live:
            if len(self.tracks[obj]) == t:
                self.tracks[obj].append(torch.zeros(self.size, dtype=torch.bool))
        for c in range(len(masks)):
            if c not in matched_det and len(self.tracks) < self.cap:
                self.tracks.append([torch.zeros(self.size, dtype=torch.bool)] * t + [masks[c]])
                self.scores.append(float(scores[c]))

    def result(self) -> Sam3TrackData:
        h, w = self.size
        if not self.tracks:
            masks = torch.zeros(self.frames, 0, h, w, dtype=torch.bool)
        else:
            masks = torch.stack([torch.stack(tr) for tr in self.tracks], dim=1)
        return Sam3TrackData(masks, tuple(self.scores), (h, w), self.frames)


class SAM3_VideoTrack(Node):
    """Track objects across video frames using SAM3's memory-based tracker."""

    category = "detection"
    display_name = "SAM3 Video Track"
    images = Input(IMAGE, tooltip="Video frames as batched images")
    model = Input(MODEL)
    initial_mask = Input(MASK, optional=True, tooltip="Mask(s) for the first frame to track (one per object)")
    conditioning = Input(CONDITIONING, optional=True,
                         tooltip="Text conditioning for detecting new objects during tracking")
    detection_threshold = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01,
                                tooltip="Score threshold for text-prompted detection")
    max_objects = Input(INT, default=4, min=0, max=MAX_OBJECTS,
                        tooltip="Max tracked objects. Initial masks count toward this limit. 0 uses the internal "
                                "cap of 64.")
    detect_interval = Input(INT, default=1, min=1,
                            tooltip="Run detection every N frames (1=every frame). Higher values save compute.")
    outputs = (Output(SAM3_TRACK_DATA, "track_data"),)

    def execute(self, images: torch.Tensor, model, initial_mask: torch.Tensor | None = None,
                conditioning: list | None = None, detection_threshold: float = 0.5, max_objects: int = 4,
                detect_interval: int = 1) -> tuple:
        node = "SAM3_VideoTrack"
        sam = check_model(model, node)
        frames, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        prompts = text_prompts(conditioning, node) if conditioning else []
        if not prompts:
            if initial_mask is None:
                raise ValueError(f"{node}: Either initial_mask or conditioning must be provided")
            raise NotImplementedError(f"{node}: tracking from initial_mask alone needs SAM 3's memory tracker, which "
                                      "this engine does not load yet; connect a text conditioning too")
        self.ctx.warn(f"{node}: tracking by detection (text prompts matched frame to frame by mask IoU); SAM 3's "
                      "memory tracker is not loaded yet")
        tracker = _Tracker(frames, height, width, max_objects or MAX_OBJECTS)
        if initial_mask is not None:
            init = initial_mask if initial_mask.ndim == 3 else initial_mask[None]
            if init.shape[-2:] != (height, width):
                init = F.interpolate(init[:, None].float(), size=(height, width), mode="bilinear")[:, 0]
            tracker.seed(init > 0.5)
        manager = self.ctx.service("models")
        with manager.use(sam.handle, self.ctx.device) as net:
            size = int(net.config.vision_config.image_size)
            for t in range(frames):
                self.ctx.check_interrupted()
                if t % detect_interval:
                    tracker.carry(t)
                else:
                    frame = prepare_frames(images[t:t + 1], size).to(self.ctx.device)
                    vision = net.get_vision_features(pixel_values=frame.to(next(net.parameters()).dtype))
                    found = [detect(net, frame, TextPrompt(p.hidden, p.mask, MAX_OBJECTS), None, detection_threshold,
                                    height, width, vision=vision) for p in prompts]
                    masks = torch.cat([d.masks for d in found]) > 0
                    scores = torch.cat([d.scores for d in found])
                    order = scores.argsort(descending=True)
                    tracker.update(t, masks[order], scores[order])
                self.ctx.progress(t + 1, frames)
        return (tracker.result(),)


def selected_objects(text: str, count: int) -> list[int]:
    """ComfyUI's ``object_indices``: comma-separated indices (non-numbers and ones out of range skipped);
    empty means every object."""
    if not text.strip():
        return list(range(count))
    picked = [int(p.strip()) for p in text.split(",") if p.strip().isdigit()]
    return [i for i in picked if 0 <= i < count]


class SAM3_TrackToMask(Node):
    """Select tracked objects by index and output as mask."""

    category = "detection"
    display_name = "SAM3 Track to Mask"
    track_data = Input(SAM3_TRACK_DATA)
    object_indices = Input(STRING, default="",
                           tooltip="Comma-separated object indices to include (e.g. '0,2,3'). Empty = all objects.")
    outputs = (Output(MASK, "masks"),)

    def execute(self, track_data, object_indices: str = "") -> tuple:
        data = check_track(track_data, "SAM3_TrackToMask")
        h, w = data.orig_size
        picked = selected_objects(object_indices, data.n_objects)
        if not picked:
            return (torch.zeros(data.n_frames, h, w),)
        return (data.masks[:, picked].any(dim=1).float(),)


#: the overlay colours of the objects (ComfyUI's palette, cycled)
COLORS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
          (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
          (0.94, 0.76, 0.06), (0.42, 0.68, 0.84))
# 3 x 5 digits, one string of 15 bits per digit (rows top to bottom)
_DIGITS = ("111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
           "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111")


def draw_number(frame: torch.Tensor, number: int, cx: int, cy: int, color: tuple, scale: int = 3) -> None:
    """Write ``number`` centred at (cx, cy) on ``frame`` ``[H, W, 3]`` in ``color``, outlined in black."""
    h, w = frame.shape[:2]
    digits = str(number)
    gw, gh = 3 * scale, 5 * scale
    x0 = cx - (len(digits) * (gw + scale) - scale) // 2
    y0 = cy - gh // 2
    for i, d in enumerate(digits):
        glyph = torch.tensor([int(b) for b in _DIGITS[int(d)]], dtype=torch.bool).view(5, 3)
        glyph = glyph.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        outline = F.max_pool2d(F.pad(glyph.float()[None, None], (1, 1, 1, 1)), 3, stride=1, padding=1)[0, 0] > 0
        for pattern, value in ((outline, (0.0, 0.0, 0.0)), (glyph, color)):
            px, py = x0 + i * (gw + scale) - (1 if pattern is outline else 0), y0 - (1 if pattern is outline else 0)
            ys, xs = torch.nonzero(pattern, as_tuple=True)
            ys, xs = ys + py, xs + px
            ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            frame[ys[ok], xs[ok]] = torch.tensor(value, dtype=frame.dtype)


def preview_frames(data: Sam3TrackData, images: torch.Tensor | None, opacity: float) -> torch.Tensor:
    """The overlay frames ``[N, H, W, 3]``: each object's pixels tinted with its colour (the first object wins
    where they overlap) and its index written at its centroid (its score under it, when below 1)."""
    h, w = (int(images.shape[1]), int(images.shape[2])) if images is not None else data.orig_size
    out = []
    colors = torch.tensor([COLORS[i % len(COLORS)] for i in range(max(1, data.n_objects))])
    for t in range(data.n_frames):
        have = images is not None and t < images.shape[0]
        frame = images[t, ..., :3].float().clone() if have else torch.zeros(h, w, 3)
        if data.n_objects:
            masks = data.masks[t]
            if masks.shape[-2:] != (h, w):
                masks = F.interpolate(masks[None].float(), size=(h, w), mode="nearest")[0] > 0.5
            any_mask = masks.any(dim=0)
            tint = colors[masks.to(torch.uint8).argmax(dim=0)]
            frame = torch.where(any_mask[..., None], frame * (1 - opacity) + tint * opacity, frame)
            for obj in range(data.n_objects):
                ys, xs = torch.nonzero(masks[obj], as_tuple=True)
                if len(ys) > 1:
                    cx, cy = int(xs.float().mean()), int(ys.float().mean())
                    draw_number(frame, obj, cx, cy, COLORS[obj % len(COLORS)])
                    if data.scores[obj] < 1.0:
                        draw_number(frame, int(data.scores[obj] * 100), cx, cy + 18, COLORS[obj % len(COLORS)], 2)
        out.append(frame.clamp(0, 1))
    return torch.stack(out)


class SAM3_TrackPreview(Node):
    """Visualize tracked objects with distinct colors as a video preview. No tensor output — saves to temp video."""

    category = "detection"
    display_name = "SAM3 Track Preview"
    output_node = True
    track_data = Input(SAM3_TRACK_DATA)
    images = Input(IMAGE, optional=True)
    opacity = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.05)
    fps = Input(FLOAT, default=24.0, min=1.0, max=120.0, step=1.0)
    outputs = ()

    def execute(self, track_data, images: torch.Tensor | None = None, opacity: float = 0.5,
                fps: float = 24.0) -> NodeResult:
        from nodegraph_nodes.media.codec import encode_video
        from nodegraph_nodes.media.video_nodes import video_ui

        data = check_track(track_data, "SAM3_TrackPreview")
        frames = preview_frames(data, images, opacity)
        frames = F.pad(frames, (0, 0, 0, frames.shape[2] % 2, 0, frames.shape[1] % 2))  # h264 4:2:0: even sides
        name = f"sam3_track_preview_{uuid.uuid4().hex[:8]}.mp4"
        folder = self.ctx.paths.temp_dir
        folder.mkdir(parents=True, exist_ok=True)
        encode_video(folder / name, frames, Fraction(round(fps * 1000), 1000), None, "mp4", "h264", None)
        return NodeResult(outputs=(), ui=video_ui(name, "", "temp"))
