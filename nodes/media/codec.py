"""Encoding and decoding with PyAV (FFmpeg's libraries; no ffmpeg binary needed).

Video: :func:`probe_video` reads a file's size, rate, frame count and duration without decoding,
:func:`decode_video` decodes frames (and audio) of a time window, :func:`encode_video` writes frames and
audio into mp4/mkv (H.264 + AAC, or AV1) or webm (AV1 or VP9 + Opus). Audio: :func:`decode_audio`,
:func:`encode_audio` (flac, wav, mp3, opus). Workflow metadata goes into the container's tags as
ComfyUI writes it: each key's value JSON-encoded (``prompt``, ``workflow``), MP4 with
``movflags=use_metadata_tags`` so the tags survive.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

#: container → (its codec choices' encoder names, the audio encoder)
VIDEO_ENCODERS = {"h264": "libx264", "av1": "libsvtav1", "vp9": "libvpx-vp9"}
CONTAINER_CODECS = {"mp4": ("h264", "av1"), "mkv": ("h264", "av1", "vp9"), "webm": ("av1", "vp9")}
AUDIO_IN_CONTAINER = {"mp4": "aac", "mkv": "aac", "webm": "libopus"}
#: sample rates the Opus encoder takes
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class MediaError(ValueError):
    """A file that cannot be read or written, in words for the node's error."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, read from its headers (no decoding)."""

    width: int
    height: int
    frame_rate: Fraction
    frame_count: int
    duration: float
    has_audio: bool
    metadata: dict[str, str]


def _open(path: Path | str) -> Any:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open {Path(path).name}: {exc}") from None


def probe_video(path: Path | str) -> VideoInfo:
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{Path(path).name} has no video stream")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate or 1)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        frames = stream.frames
        if not frames:  # Matroska/WebM headers carry no count: count the packets (no decoding)
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        if not duration and frames:
            duration = float(frames / rate)
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, rate, frames, duration,
                         bool(container.streams.audio), dict(container.metadata))


def _audio_array(frames: list[Any], channels: int) -> torch.Tensor:
    if not frames:
        return torch.zeros((channels, 0), dtype=torch.float32)
    return torch.from_numpy(np.concatenate(frames, axis=1).astype(np.float32, copy=False))


def decode_audio_stream(container: Any, start: float = 0.0, end: float | None = None) -> tuple[torch.Tensor, int] | None:
    """The first audio stream as ``([C, T] float32, sample_rate)`` for ``[start, end)`` seconds; ``None``
    without audio."""
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    rate = stream.codec_context.sample_rate or stream.rate
    channels = stream.codec_context.channels or 1
    resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
    chunks: list[np.ndarray] = []
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(channels, -1))
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(channels, -1))
    wave = _audio_array(chunks, channels)
    first = int(round(start * rate))
    last = wave.shape[1] if end is None else int(round(end * rate))
    return wave[:, first:last].contiguous(), int(rate)


def decode_audio(path: Path | str) -> tuple[torch.Tensor, int]:
    """An audio (or video) file's first audio stream: ``([C, T] float32, sample_rate)``."""
    with _open(path) as container:
        try:
            found = decode_audio_stream(container)
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode the audio of {Path(path).name}: {exc}") from None
    if found is None:
        raise MediaError(f"{Path(path).name} has no audio stream")
    return found


def decode_video(path: Path | str, start: float = 0.0, end: float | None = None
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, int] | None, Fraction, dict[str, str]]:
    """Frames ``[N, H, W, 3]`` float32 in 0..1 whose time lies in ``[start, end)`` seconds, the audio of
    that window (or ``None``), the frame rate and the container's tags."""
    info = probe_video(path)
    images: list[np.ndarray] = []
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else index / float(info.frame_rate)
                index += 1
                if t < start - 1e-6:
                    continue
                if end is not None and t >= end - 1e-6:
                    break
                images.append(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode {Path(path).name}: {exc}") from None
    window_end = start + len(images) / float(info.frame_rate)
    with _open(path) as container:
        # AAC and Opus pad their last frame: audio past the last video frame is that padding
        audio = decode_audio_stream(container, start, window_end if end is None else min(end, window_end))
    if not images:
        raise MediaError(f"{Path(path).name} has no frames between {start:g} s and "
                         f"{'the end' if end is None else f'{end:g} s'}")
    frames = torch.from_numpy(np.stack(images)).to(torch.float32).div_(255.0)
    return frames, audio, info.frame_rate, {key.lower(): value for key, value in info.metadata.items()}


def _tags(metadata: dict[str, Any] | None) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in (metadata or {}).items()}


def _uint8_frames(images: torch.Tensor) -> np.ndarray:
    return (images[..., :3].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def _audio_frame(waveform: torch.Tensor, rate: int) -> Any:
    """One planar float frame of ``[C, T]``."""
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform.to(torch.float32).cpu().numpy()),
                                       format="fltp", layout=layout)
    frame.sample_rate = rate
    frame.pts = 0
    return frame


def _check_channels(waveform: torch.Tensor) -> None:
    if waveform.shape[0] not in (1, 2):
        raise MediaError(f"audio has {waveform.shape[0]} channels; mono or stereo can be saved")


def _resample(waveform: torch.Tensor, rate: int, new_rate: int) -> torch.Tensor:
    """Resample ``[C, T]`` with FFmpeg's resampler (for encoders with fixed rates, such as Opus)."""
    if rate == new_rate:
        return waveform
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=new_rate)
    chunks = [f.to_ndarray() for f in resampler.resample(_audio_frame(waveform, rate))]
    chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return _audio_array(chunks, waveform.shape[0])


def opus_rate(rate: int) -> int:
    """The Opus rate a sample rate is saved at: itself when Opus takes it, else the next higher (48 kHz
    at most), as ComfyUI chooses."""
    return next((r for r in OPUS_RATES if r >= rate), 48000)


def encode_video(path: Path, images: torch.Tensor, frame_rate: Fraction, audio: tuple[torch.Tensor, int] | None,
                 container_format: str, codec: str, metadata: dict[str, Any] | None, crf: float | None = None) -> None:
    """Write ``images`` ``[N, H, W, C]`` (and ``audio`` ``([C, T], rate)``, cut to the video's length) to
    ``path`` as ``container_format`` with the ``codec`` video encoder (``h264``, ``av1``, ``vp9``)."""
    if codec not in CONTAINER_CODECS[container_format]:
        raise MediaError(f"codec {codec!r} cannot go into {container_format}; use one of "
                         f"{', '.join(CONTAINER_CODECS[container_format])}")
    height, width = int(images.shape[1]), int(images.shape[2])
    if width % 2 or height % 2:
        raise MediaError(f"frames are {width}x{height}; {codec} with 4:2:0 colour needs an even width and height "
                         "(crop or pad the images by one pixel)")
    rate = Fraction(round(Fraction(frame_rate) * 1000), 1000)
    if codec == "av1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise (errors only)
    fmt = {"mkv": "matroska"}.get(container_format, container_format)
    options = {"movflags": "use_metadata_tags"} if container_format == "mp4" else {}
    try:
        with av.open(str(path), mode="w", format=fmt, options=options) as out:
            for key, value in _tags(metadata).items():
                out.metadata[key] = value
            video = out.add_stream(VIDEO_ENCODERS[codec], rate=rate)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            opts = {}
            if crf is not None:
                opts["crf"] = str(int(crf))
            if codec == "av1":
                opts.setdefault("preset", "8")
            if codec == "vp9":
                video.bit_rate = 0
                opts.setdefault("crf", "32")
            video.options = opts
            audio_stream = None
            if audio is not None:
                wave, audio_rate = audio
                _check_channels(wave)
                encoder = AUDIO_IN_CONTAINER[container_format]
                if encoder == "libopus":
                    wave, audio_rate = _resample(wave, audio_rate, opus_rate(audio_rate)), opus_rate(audio_rate)
                wave = wave[:, :math.ceil(audio_rate * images.shape[0] / rate)]
                audio_stream = out.add_stream(encoder, rate=audio_rate, layout="mono" if wave.shape[0] == 1 else "stereo")
            for pixels in _uint8_frames(images):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            if audio_stream is not None and wave.shape[1]:
                out.mux(audio_stream.encode(_audio_frame(wave, audio_rate)))
                out.mux(audio_stream.encode(None))
    except av.error.FFmpegError as exc:
        path.unlink(missing_ok=True)
        raise MediaError(f"cannot encode {container_format}/{codec}: {exc}") from None


#: audio format → (container, encoder)
AUDIO_FORMATS = {"flac": ("flac", "flac"), "wav": ("wav", "pcm_s16le"), "mp3": ("mp3", "libmp3lame"),
                 "opus": ("opus", "libopus")}
BITRATES = {"64k": 64000, "96k": 96000, "128k": 128000, "192k": 192000, "256k": 256000, "320k": 320000}


def encode_audio(waveform: torch.Tensor, rate: int, format: str, quality: str | None,
                 metadata: dict[str, Any] | None) -> bytes:
    """One ``[C, T]`` waveform as a file of ``format`` (flac, wav, mp3, opus); bytes.

    ``quality``: mp3 ``V0`` (variable, best), ``128k``, ``320k``; opus a bit rate. Opus needs one of its
    rates: others are resampled up (:func:`opus_rate`)."""
    _check_channels(waveform)
    container_format, encoder = AUDIO_FORMATS[format]
    if format == "opus" and rate not in OPUS_RATES:
        waveform, rate = _resample(waveform, rate, opus_rate(rate)), opus_rate(rate)
    buffer = io.BytesIO()
    try:
        with av.open(buffer, mode="w", format=container_format) as out:
            for key, value in _tags(metadata).items():
                out.metadata[key] = value
            stream = out.add_stream(encoder, rate=rate, layout="mono" if waveform.shape[0] == 1 else "stereo")
            if format == "mp3" and quality == "V0":
                stream.codec_context.qscale = 1
            elif quality in BITRATES and format in ("mp3", "opus"):
                stream.bit_rate = BITRATES[quality]
            if waveform.shape[1]:
                out.mux(stream.encode(_audio_frame(waveform, rate)))
            out.mux(stream.encode(None))
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot encode {format}: {exc}") from None
    return buffer.getvalue()
