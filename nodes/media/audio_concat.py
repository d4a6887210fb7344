"""AudioConcat: joins two AUDIO values end to end (ComfyUI's ``comfy_extras/nodes_audio.py`` node).

As in ComfyUI a mono input becomes stereo (its channel doubled) and the input with the lower sample rate is
resampled to the higher one (torchaudio's default sinc resampler, :func:`nodegraph_nodes.dit.audio_encoder.
resample`). Stricter than ComfyUI: inputs of different batch sizes or of more than two channels against a
stereo one are errors that name the inputs, not a bare tensor error.
"""

from __future__ import annotations

from typing import Any

import torch

from nodegraph.node import COMBO, Input, Node, Output

from .audio import AUDIO, check_audio

DIRECTIONS = ["after", "before"]


def _stereo(waveform: torch.Tensor) -> torch.Tensor:
    """A mono ``[B, 1, T]`` waveform with its channel doubled; others unchanged."""
    return waveform.repeat(1, 2, 1) if waveform.shape[1] == 1 else waveform


def concat_audio(audio1: Any, audio2: Any, direction: str, node: str = "AudioConcat") -> dict[str, Any]:
    """``audio2`` after (or before) ``audio1`` at the higher of the two sample rates."""
    if direction not in DIRECTIONS:
        raise ValueError(f"{node}: input 'direction' is {direction!r}; use one of {', '.join(DIRECTIONS)}")
    wave1, rate1 = check_audio(audio1, node, "audio1")
    wave2, rate2 = check_audio(audio2, node, "audio2")
    wave1, wave2 = _stereo(wave1), _stereo(wave2)
    if wave1.shape[:2] != wave2.shape[:2]:
        raise ValueError(f"{node}: inputs 'audio1' ({wave1.shape[0]} items, {wave1.shape[1]} channels) and "
                         f"'audio2' ({wave2.shape[0]} items, {wave2.shape[1]} channels) cannot be joined: "
                         "batch size and channel count must match (mono counts as stereo)")
    if rate1 != rate2:
        from nodegraph_nodes.dit.audio_encoder import resample

        if rate1 > rate2:
            wave2 = resample(wave2, rate2, rate1)
        else:
            wave1 = resample(wave1, rate1, rate2)
    rate = max(rate1, rate2)
    wave2 = wave2.to(device=wave1.device, dtype=wave1.dtype)
    parts = (wave1, wave2) if direction == "after" else (wave2, wave1)
    return {"waveform": torch.cat(parts, dim=2), "sample_rate": rate}


class AudioConcat(Node):
    """Concatenates the audio1 to audio2 in the specified direction."""

    category = "audio"
    display_name = "Audio Concat"
    audio1 = Input(AUDIO)
    audio2 = Input(AUDIO)
    direction = Input(COMBO, choices=DIRECTIONS, default="after",
                      tooltip="Whether to append audio2 after or before audio1.")
    outputs = (Output(AUDIO),)

    def execute(self, audio1: Any, audio2: Any, direction: str = "after") -> tuple:
        return (concat_audio(audio1, audio2, direction),)
