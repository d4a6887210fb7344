"""ComfyUI's AUDIO value: ``{"waveform": [B, C, T] float tensor, "sample_rate": int}``, checked.

The dict layout is ComfyUI's (custom nodes read ``audio["waveform"]`` and ``audio["sample_rate"]``), so
AUDIO stays a plain dict; :func:`check_audio` is the one place that verifies it and names the input
that is wrong. :func:`make_audio` builds one, :func:`trim_samples` cuts it by time.
"""

from __future__ import annotations

from typing import Any

import torch

AUDIO = "AUDIO"


def make_audio(waveform: torch.Tensor, sample_rate: int) -> dict[str, Any]:
    """An AUDIO dict; ``waveform`` ``[C, T]`` gains the batch dimension."""
    if waveform.ndim == 2:
        waveform = waveform.unsqueeze(0)
    return {"waveform": waveform, "sample_rate": int(sample_rate)}


def check_audio(audio: Any, node: str, input_name: str = "audio") -> tuple[torch.Tensor, int]:
    """``(waveform [B, C, T] float, sample_rate)`` of an AUDIO value, or a clear error."""
    where = f"{node}: input '{input_name}'"
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise TypeError(f"{where} must be AUDIO ({{'waveform': [B, C, T] tensor, 'sample_rate': int}}), "
                        f"got {type(audio).__name__}")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3:
        shape = list(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"{where}: waveform must be a [batch, channels, samples] tensor, got {shape}")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise ValueError(f"{where}: sample_rate must be a positive whole number, got {rate!r}")
    if not waveform.is_floating_point():
        raise ValueError(f"{where}: waveform must hold floats in -1..1, got dtype {waveform.dtype}")
    return waveform, rate


def trim_samples(length: int, sample_rate: int, start: float, duration: float | None) -> tuple[int, int]:
    """Sample range ``[first, end)`` for ``start`` seconds (negative: from the end) and ``duration``
    seconds (``None``: to the end), clamped to ``length``, rounded as ComfyUI rounds."""
    first = int(round(start * sample_rate))
    if start < 0:
        first += length
    first = max(0, min(first, length))
    end = length if duration is None else first + int(round(duration * sample_rate))
    return first, max(first, min(end, length))
