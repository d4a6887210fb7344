"""ComfyUI's VIDEO value: frames + frame rate + optional audio, decoded only when asked.

:class:`VideoComponents` is the decoded form (ComfyUI's record of the same name: ``images`` ``[N, H, W,
3]``, ``frame_rate``, ``audio`` AUDIO or ``None``, ``metadata``). :class:`Video` is what flows on a VIDEO
link; it offers the methods ComfyUI's ``VideoInput`` offers (``get_components``, ``get_dimensions``,
``get_duration``, ``get_frame_count``, ``get_frame_rate``, ``as_trimmed``, ``save_to``) so pack nodes
that take a VIDEO work on ours. :class:`VideoFromFile` reads only the file's headers until frames are
needed, and a trimmed one decodes only its window; :class:`VideoFromComponents` holds tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from .audio import make_audio, trim_samples
from .codec import CONTAINER_CODECS, decode_video, encode_video, probe_video

VIDEO = "VIDEO"
CONTAINERS = ("auto", "mp4", "mkv", "webm")
CODECS = ("auto", "h264", "av1", "vp9")


@dataclass(frozen=True)
class VideoComponents:
    """A decoded video: frames ``[N, H, W, 3]`` float in 0..1, their rate, AUDIO or ``None``, tags."""

    images: torch.Tensor
    frame_rate: Fraction
    audio: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = field(default=None, compare=False)


def resolve_format(format: str, codec: str) -> tuple[str, str]:
    """``(container, codec)`` for SaveVideo's choices: auto container is mp4, or webm for VP9; auto
    codec is the container's first (H.264 for mp4/mkv, AV1 for webm)."""
    if format not in CONTAINERS:
        raise ValueError(f"format {format!r}; use one of {', '.join(CONTAINERS)}")
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r}; use one of {', '.join(CODECS)}")
    container = format if format != "auto" else ("webm" if codec in ("av1", "vp9") else "mp4")
    chosen = CONTAINER_CODECS[container][0] if codec == "auto" else codec
    return container, chosen


class Video(ABC):
    """A VIDEO value (see the module doc)."""

    @abstractmethod
    def get_components(self) -> VideoComponents:
        """Decode: frames, rate, audio."""

    @abstractmethod
    def get_dimensions(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""

    @abstractmethod
    def get_frame_rate(self) -> Fraction: ...

    @abstractmethod
    def get_frame_count(self) -> int: ...

    def get_duration(self) -> float:
        """Seconds: frame count / frame rate."""
        return self.get_frame_count() / float(self.get_frame_rate())

    @abstractmethod
    def as_trimmed(self, start_time: float = 0.0, duration: float = 0.0,
                   strict_duration: bool = False) -> "Video | None":
        """The part from ``start_time`` (negative: from the end) lasting ``duration`` seconds (0: to the
        end); ``None`` when nothing is left, or when ``strict_duration`` and less than asked is left."""

    def save_to(self, path: str | Path, format: str = "auto", codec: str = "auto",
                metadata: dict[str, Any] | None = None, crf: float | None = None) -> None:
        """Encode to ``path`` (``format``: auto/mp4/mkv/webm; ``codec``: auto/h264/av1/vp9)."""
        container, chosen = resolve_format(str(format), str(codec))
        parts = self.get_components()
        audio = None
        if parts.audio is not None:
            audio = (parts.audio["waveform"][0], int(parts.audio["sample_rate"]))
        encode_video(Path(path), parts.images, parts.frame_rate, audio, container, chosen, metadata, crf)


def _window(count: int, rate: Fraction, start: float, duration: float) -> tuple[int, int]:
    """Frame range ``[first, end)`` of a time window (frame ``i`` is shown at ``i / rate``)."""
    total = count / float(rate)
    if start < 0:
        start = max(0.0, total + start)
    first = min(count, max(0, round(start * float(rate))))  # the frame nearest the start time
    if duration <= 0:
        return first, count
    return first, min(count, first + int(round(duration * float(rate))))


class VideoFromComponents(Video):
    """A video held as tensors (CreateVideo, a trimmed decoded video)."""

    def __init__(self, components: VideoComponents) -> None:
        self.components = components

    def get_components(self) -> VideoComponents:
        return self.components

    def get_dimensions(self) -> tuple[int, int]:
        return int(self.components.images.shape[2]), int(self.components.images.shape[1])

    def get_frame_rate(self) -> Fraction:
        return Fraction(self.components.frame_rate)

    def get_frame_count(self) -> int:
        return int(self.components.images.shape[0])

    def as_trimmed(self, start_time: float = 0.0, duration: float = 0.0,
                   strict_duration: bool = False) -> Video | None:
        parts = self.components
        first, end = _window(self.get_frame_count(), self.get_frame_rate(), start_time, duration)
        if end <= first or (strict_duration and duration > 0 and
                            (end - first) / float(self.get_frame_rate()) < duration - 1e-6):
            return None
        audio = parts.audio
        if audio is not None:
            rate = int(audio["sample_rate"])
            t0 = first / float(self.get_frame_rate())
            a, b = trim_samples(audio["waveform"].shape[-1], rate, t0, (end - first) / float(self.get_frame_rate()))
            audio = make_audio(audio["waveform"][..., a:b], rate)
        return VideoFromComponents(VideoComponents(parts.images[first:end], parts.frame_rate, audio, parts.metadata))


class VideoFromFile(Video):
    """A video file, probed at once and decoded (only the window ``[start, end)``) when frames are asked."""

    def __init__(self, path: str | Path, start: float = 0.0, end: float | None = None) -> None:
        self.path = Path(path)
        self.info = probe_video(self.path)
        self.start = start
        self.end = end

    def get_components(self) -> VideoComponents:
        frames, audio, rate, metadata = decode_video(self.path, self.start, self.end)
        return VideoComponents(frames, rate, make_audio(*audio) if audio is not None else None, metadata)

    def get_dimensions(self) -> tuple[int, int]:
        return self.info.width, self.info.height

    def get_frame_rate(self) -> Fraction:
        return self.info.frame_rate

    def get_frame_count(self) -> int:
        first, end = self._frames()
        return end - first

    def _frames(self) -> tuple[int, int]:
        rate = float(self.info.frame_rate)
        first = int(round(self.start * rate))
        end = self.info.frame_count if self.end is None else min(self.info.frame_count, int(round(self.end * rate)))
        return first, max(first, end)

    def as_trimmed(self, start_time: float = 0.0, duration: float = 0.0,
                   strict_duration: bool = False) -> Video | None:
        first, end = self._frames()
        rate = self.info.frame_rate
        a, b = _window(end - first, rate, start_time, duration)
        if b <= a or (strict_duration and duration > 0 and (b - a) / float(rate) < duration - 1e-6):
            return None
        return VideoFromFile(self.path, (first + a) / float(rate), (first + b) / float(rate))
