"""ComfyUI's audio file nodes: LoadAudio, SaveAudio (flac), SaveAudioMP3, SaveAudioOpus, SaveAudioAdvanced,
PreviewAudio, TrimAudioDuration.

Names, inputs, defaults and the ``{"audio": [...]}`` ui record follow ComfyUI (``comfy_extras/
nodes_audio.py``; SaveAudioAdvanced's ``format`` is a DynamicCombo whose option shows ``format.quality``
for mp3 and opus). Each batch item becomes one file ``<prefix>_<counter:05>_.<ext>`` with the workflow in
the file's tags (JSON per key, as ComfyUI writes them). Opus keeps rates Opus takes and resamples others
up to the next one (48 kHz at most); FFmpeg's Opus decoder always gives 48 kHz back on loading.

Stricter than ComfyUI: more than two channels cannot be saved (ComfyUI wrote them as stereo), a quality
the chosen format does not offer is an error, an empty or misshapen AUDIO is an error naming the input.
LoadAudio reads any audio or video file FFmpeg reads; RecordAudio (:mod:`.record_audio`) loads the
recording the ComfyUI frontend makes and uploads.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from nodegraph.context import Paths
from nodegraph.node import COMBO, FLOAT, STRING, Input, Node, NodeResult, Output
from nodegraph.user_files import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, folder_of, resolve_annotated

from .audio import AUDIO, check_audio, make_audio, trim_samples
from .codec import MediaError, decode_audio, encode_audio
from .video_nodes import container_metadata, input_file_fingerprint, output_file, removed_on_media_error

MP3_QUALITIES = ["V0", "128k", "320k"]
OPUS_QUALITIES = ["64k", "96k", "128k", "192k", "320k"]
ADVANCED_OPUS_QUALITIES = ["64k", "128k", "192k", "256k", "320k"]


def list_input_audio(paths: Paths) -> list[str]:
    """Audio and video files at the top level of the input folder, sorted (LoadAudio's choices)."""
    wanted = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS
    try:
        return sorted(p.name for p in paths.input_dir.iterdir() if p.is_file() and p.suffix.lower() in wanted)
    except OSError:
        return []


def read_audio_file(path: Path, node_name: str) -> dict:
    """The AUDIO value of the audio file at ``path`` (its first audio stream); a MediaError becomes a
    ValueError naming ``node_name``'s ``audio`` input."""
    try:
        waveform, rate = decode_audio(path)
    except MediaError as exc:
        raise ValueError(f"{node_name}: input 'audio': {exc}") from None
    return make_audio(waveform, rate)


def save_audio(node: Node, node_name: str, audio: Any, filename_prefix: str, format: str, quality: str | None,
               folder_type: str, prompt: dict | None, extra_pnginfo: dict | None) -> NodeResult:
    """Write each batch item of ``audio`` as a ``format`` file; ComfyUI's ``{"audio": [...]}`` ui record."""
    waveform, rate = check_audio(audio, node_name)
    metadata = container_metadata(prompt, extra_pnginfo)
    base = folder_of(node.ctx.paths, folder_type)
    results = []
    for batch_number, item in enumerate(waveform.detach().cpu()):
        prefix = filename_prefix.replace("%batch_num%", str(batch_number))
        path, name, subfolder = output_file(base, prefix, 0, 0, format)
        with removed_on_media_error(path, node_name):
            path.write_bytes(encode_audio(item, rate, format, quality, metadata))
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
    return NodeResult(outputs=(), ui={"audio": results})


class _AudioSaver(Node):
    # shared inputs of the save nodes; no docstring (Node copies a docstring into ``description``)
    abstract = True
    category = "audio"
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    audio = Input(AUDIO)
    filename_prefix = Input(STRING, default="audio/ComfyUI")


class SaveAudio(_AudioSaver):
    """Saves the audio as FLAC files in the output folder, the workflow in their tags."""

    display_name = "Save Audio (FLAC)"

    def execute(self, audio: Any, filename_prefix: str = "audio/ComfyUI", prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        return save_audio(self, "SaveAudio", audio, filename_prefix, "flac", None, "output", prompt, extra_pnginfo)


class SaveAudioMP3(_AudioSaver):
    """Saves the audio as MP3 files in the output folder (V0 variable rate, 128k or 320k)."""

    display_name = "Save Audio (MP3)"
    quality = Input(COMBO, choices=MP3_QUALITIES, default="V0")

    def execute(self, audio: Any, filename_prefix: str = "audio/ComfyUI", quality: str = "V0",
                prompt: dict | None = None, extra_pnginfo: dict | None = None) -> NodeResult:
        return save_audio(self, "SaveAudioMP3", audio, filename_prefix, "mp3", quality, "output", prompt,
                          extra_pnginfo)


class SaveAudioOpus(_AudioSaver):
    """Saves the audio as Opus (Ogg) files in the output folder at the chosen bit rate."""

    display_name = "Save Audio (Opus)"
    quality = Input(COMBO, choices=OPUS_QUALITIES, default="128k")

    def execute(self, audio: Any, filename_prefix: str = "audio/ComfyUI", quality: str = "128k",
                prompt: dict | None = None, extra_pnginfo: dict | None = None) -> NodeResult:
        return save_audio(self, "SaveAudioOpus", audio, filename_prefix, "opus", quality, "output", prompt,
                          extra_pnginfo)


class SaveAudioAdvanced(_AudioSaver):
    """Saves the audio in the output folder as FLAC, MP3 (quality V0, 128k, 320k) or Opus (64k … 320k);
    outputs the audio unchanged. Stricter than ComfyUI: a quality the format does not offer is an error."""

    display_name = "Save Audio"
    dynamic_combos = {"format": {"flac": (), "mp3": ("format.quality",), "opus": ("format.quality",)}}
    format = Input(COMBO, choices=["flac", "mp3", "opus"], tooltip="The file format to save the audio in.")
    vars().update({"format.quality": Input(COMBO, choices=list(dict.fromkeys(MP3_QUALITIES + ADVANCED_OPUS_QUALITIES)),
                                           optional=True, tooltip="mp3: V0, 128k or 320k; opus: a bit rate.")})
    outputs = (Output(AUDIO, "audio"),)

    def execute(self, audio: Any, filename_prefix: str = "audio/ComfyUI", format: str = "flac",
                prompt: dict | None = None, extra_pnginfo: dict | None = None, **fields: Any) -> NodeResult:
        offered = {"flac": [], "mp3": MP3_QUALITIES, "opus": ADVANCED_OPUS_QUALITIES}
        if format not in offered:
            raise ValueError(f"SaveAudioAdvanced: input 'format' is {format!r}; use one of flac, mp3, opus")
        quality = fields.get("format.quality")
        if format == "flac":
            quality = None
        elif quality is None:
            quality = offered[format][0] if format == "mp3" else "128k"
        elif quality not in offered[format]:
            raise ValueError(f"SaveAudioAdvanced: input 'format.quality' is {quality!r}, which {format} does not "
                             f"offer; use one of {', '.join(offered[format])}")
        result = save_audio(self, "SaveAudioAdvanced", audio, filename_prefix, format, quality, "output", prompt,
                            extra_pnginfo)
        return NodeResult(outputs=(audio,), ui=result.ui)


class PreviewAudio(Node):
    """Saves the audio as FLAC in the temp folder for playback on the node."""

    category = "audio"
    display_name = "Preview Audio"
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    audio = Input(AUDIO)

    def execute(self, audio: Any, prompt: dict | None = None, extra_pnginfo: dict | None = None) -> NodeResult:
        suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        return save_audio(self, "PreviewAudio", audio, "ComfyUI" + suffix, "flac", None, "temp", prompt,
                          extra_pnginfo)


class LoadAudio(Node):
    """Loads the first audio stream of an audio or video file in the input folder."""

    category = "audio"
    display_name = "Load Audio"
    audio = Input(COMBO, choices=list_input_audio, audio_upload=True)
    outputs = (Output(AUDIO),)

    @classmethod
    def validate_inputs(cls, audio: str, paths: Paths) -> bool | str:
        try:
            path = resolve_annotated(str(audio), paths)
        except ValueError as exc:
            return f"Invalid audio file: {exc}"
        if not path.is_file():
            return f"Invalid audio file: {audio} (not found in {path.parent})"
        return True

    @classmethod
    def fingerprint(cls, paths: Paths, audio: str | None = None, **_: Any) -> Any:
        return input_file_fingerprint(paths, audio)

    def execute(self, audio: str) -> tuple:
        path = resolve_annotated(audio, self.ctx.paths)
        if not path.is_file():
            raise FileNotFoundError(f"LoadAudio: input 'audio': {audio!r} does not exist in the input folder "
                                    f"({self.ctx.paths.input_dir})")
        return (read_audio_file(Path(path), "LoadAudio"),)


class TrimAudioDuration(Node):
    """Trim audio tensor into chosen time range."""

    category = "audio"
    display_name = "Trim Audio Duration"
    audio = Input(AUDIO)
    start_index = Input(FLOAT, default=0.0, min=-0xffffffffffffffff, max=0xffffffffffffffff, step=0.01,
                        tooltip="Start time in seconds, can be negative to count from the end (supports "
                                "sub-seconds).")
    duration = Input(FLOAT, default=60.0, min=0.0, step=0.01, tooltip="Duration in seconds")
    outputs = (Output(AUDIO),)

    def execute(self, audio: Any, start_index: float = 0.0, duration: float = 60.0) -> tuple:
        waveform, rate = check_audio(audio, "TrimAudioDuration")
        length = waveform.shape[-1]
        first, end = trim_samples(length, rate, start_index, duration)
        first = min(first, max(0, length - 1))  # ComfyUI keeps the start inside the audio
        end = max(end, min(length, first + int(round(duration * rate))))
        if first >= end:
            raise ValueError(f"TrimAudioDuration: start {start_index:g} s and duration {duration:g} s leave no "
                             f"audio of the {length / rate:.3f} s given; the start must lie before the end")
        return ({**audio, "waveform": waveform[..., first:end]},)
