"""ComfyUI's ``WanDancerPadKeyframes`` and ``WanDancerPadKeyframesList``: the global Wan-Dancer video's frames
spread as keyframes over the local segments, each segment padded with black frames, with its mask and audio slice.

Wan-Dancer (Wan-Video/Wan-Dancer, Apache-2.0) makes a long dance in two stages: a *global* video of keyframes
for the whole track, then 149-frame *local* segments at 30 fps that start from those keyframes. The official
``gen_video_local.py`` (``process_global_video_firstlastframe``) places the global video's ``N`` frames over
``total`` output frames ``interval = total / N`` apart: in each segment of ``L`` frames, keyframe ``c`` at
``ceil(c · interval)`` for ``c · interval < end - interval``, and one more at the segment's ``end`` (``L - 1``,
or in the last segment the last output frame), which is the next segment's first keyframe; the global frames are
used in order across the segments.

ComfyUI's node (its facts): ``total = segments · L`` with ``segments = int((seconds - 0.2) / (L / 30)) + 1`` for
audio longer than 0.2 s (the count of 0.2 s-trimmed ``L``-frame audio clips the official script cuts; 0 without
audio time), keyframes past the images or the segment dropped; the segment's audio is
``[index · L / 30, min(start + L / 30, seconds))`` seconds of the AUDIO (samples ``int(t · rate)``).
The mask is ``[L, H, W]``: 1 on keyframes, 0 elsewhere; the padded frames are zeros (black).

The List node emits ``num_segments`` of them as lists. Its ``audio`` is optional: without it (ComfyUI would fail)
``total = num_segments · L`` and the audio outputs are ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import IMAGE, MASK

from nodegraph_nodes.media.audio import AUDIO, check_audio

FPS = 30
#: seconds the official script leaves off the end of the track when it cuts the segments
TAIL = 0.2


@dataclass(frozen=True)
class SegmentPlan:
    """Where one segment's keyframes go: ``(position in the segment, index of the global frame)`` pairs."""

    placements: tuple[tuple[int, int], ...]


def audio_segments(seconds: float, length: int) -> int:
    """How many ``length``-frame segments the audio makes (ComfyUI's count; 0 when ``seconds ≤ 0.2``)."""
    if seconds <= TAIL:
        return 0
    return int((seconds - TAIL) / (length / FPS)) + 1


def _segment_end(total: int, length: int, index: int, count: int) -> int:
    return total - length * index - 1 if index == count - 1 else length - 1


def _inner_keyframes(interval: float, end: int) -> int:
    """How many keyframes go before the segment's end frame: ``c`` with ``c · interval < end - interval``."""
    count = 0
    while count * interval < end - interval:
        count += 1
    return count


def plan_segment(images: int, total: int, length: int, index: int) -> SegmentPlan:
    """The keyframes of segment ``index`` for ``images`` global frames over ``total`` output frames."""
    if total <= 0 or images <= 0:
        return SegmentPlan(())
    interval = float(total) / images
    count = math.ceil(total / length)
    used = sum(_inner_keyframes(interval, _segment_end(total, length, k, count)) for k in range(index))
    end = _segment_end(total, length, index, count)
    inner = _inner_keyframes(interval, end)
    pairs = [(int(math.ceil(interval * c)), used + c) for c in range(inner)] + [(end, used + inner)]
    return SegmentPlan(tuple((pos, img) for pos, img in pairs if img < images and 0 <= pos < length))


def pad_segment(images: torch.Tensor, plan: SegmentPlan, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keyframes [L, H, W, C], mask [L, H, W])`` for ``plan``: the planned frames in place, zeros elsewhere."""
    _, h, w, c = images.shape
    frames = torch.zeros((length, h, w, c), dtype=images.dtype, device=images.device)
    mask = torch.zeros((length, h, w), dtype=images.dtype, device=images.device)
    if plan.placements:
        pos = torch.tensor([p for p, _ in plan.placements], dtype=torch.long, device=images.device)
        idx = torch.tensor([i for _, i in plan.placements], dtype=torch.long, device=images.device)
        frames[pos] = images[idx]
        mask[pos] = 1.0
    return frames, mask


def audio_slice(audio: dict, length: int, index: int) -> dict:
    """Segment ``index``'s audio: ``[index · L / 30, min(start + L / 30, seconds))`` seconds."""
    waveform, rate = audio["waveform"], audio["sample_rate"]
    seconds = waveform.shape[-1] / rate
    start = index * (length / FPS)
    end = min(start + length / FPS, seconds)
    return {"waveform": waveform[..., int(start * rate):max(int(start * rate), int(end * rate))], "sample_rate": rate}


def pad_keyframes(images: torch.Tensor, length: int, index: int, audio: dict | None,
                  total: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """One segment: ``(keyframes, mask, audio slice)``; ``total`` output frames from the audio unless given."""
    if total is None:
        total = audio_segments(audio["waveform"].shape[-1] / audio["sample_rate"], length) * length
    frames, mask = pad_segment(images, plan_segment(images.shape[0], total, length, index), length)
    return frames, mask, (audio_slice(audio, length, index) if audio is not None else None)


def _check_images(images, where: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"{where}.images: an IMAGE batch [B, H, W, C] is needed")
    return images


class WanDancerPadKeyframes(Node):
    """One local segment of a Wan-Dancer video: the global video's frames as keyframes in ``segment_length``
    black frames, where they fall in this segment; a mask of them and the segment's audio."""

    category = "image/video"
    images = Input(IMAGE)
    segment_length = Input(INT, default=149, min=1, max=10000)
    segment_index = Input(INT, default=0, min=0, max=100)
    audio = Input(AUDIO)
    outputs = (Output(IMAGE, "keyframes_sequence"), Output(MASK, "keyframes_mask"), Output(AUDIO, "audio_segment"))

    def execute(self, images, segment_length: int, segment_index: int, audio) -> tuple:
        images = _check_images(images, "WanDancerPadKeyframes")
        check_audio(audio, "WanDancerPadKeyframes")
        return pad_keyframes(images, segment_length, segment_index, audio)


class WanDancerPadKeyframesList(Node):
    """``num_segments`` local segments of a Wan-Dancer video at once, as lists (one item per segment)."""

    category = "image/video"
    images = Input(IMAGE)
    segment_length = Input(INT, default=149, min=1, max=10000)
    num_segments = Input(INT, default=1, min=1, max=100)
    audio = Input(AUDIO, optional=True)
    outputs = (Output(IMAGE, "keyframes_sequence", is_list=True), Output(MASK, "keyframes_mask", is_list=True),
               Output(AUDIO, "audio_segment", is_list=True))

    def execute(self, images, segment_length: int, num_segments: int, audio=None) -> tuple:
        images = _check_images(images, "WanDancerPadKeyframesList")
        total = None
        if audio is None:
            total = num_segments * segment_length
        else:
            check_audio(audio, "WanDancerPadKeyframesList")
        out = [pad_keyframes(images, segment_length, i, audio, total) for i in range(num_segments)]
        frames, masks, clips = zip(*out)
        return list(frames), list(masks), list(clips)
