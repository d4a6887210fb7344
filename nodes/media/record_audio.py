"""ComfyUI's RecordAudio: loads the microphone recording a canvas made and uploaded.

In ComfyUI the recording happens in the browser: the official frontend shows a recorder for an input whose
type is ``AUDIO_RECORD`` (its widget registry keys on that type string), uploads the clip as
``recording-<time>.wav`` to the ``audio`` subfolder of the temp folder and gives the node the annotated name
``audio/recording-<time>.wav [temp]``. The node then loads that file like LoadAudio. ``/object_info`` here
publishes the input as ``["AUDIO_RECORD", {}]`` exactly as ComfyUI does, so the official frontend shows its
recorder; the value is a file name (a constant), so internally the input is declared ``*`` and kept among
the canvas's widgets.

Like LoadAudio: names that leave their folder are refused, a missing file is an error naming the node and
input, and the file must be audio PyAV decodes. Stricter than ComfyUI: an empty name (nothing recorded) is an
error saying so. nodegraph's own canvas (``web/``) has no recorder; there, record elsewhere and use
LoadAudio, or type the name of a file already in the input or temp folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodegraph.context import Paths
from nodegraph.node import Input, Node, Output
from nodegraph.types import ANY
from nodegraph.user_files import resolve_annotated

from .audio import AUDIO
from .audio_nodes import read_audio_file
from .video_nodes import input_file_fingerprint

AUDIO_RECORD = "AUDIO_RECORD"


@dataclass(slots=True)
class RecordInput(Input):
    """An ``AUDIO_RECORD`` input: published under that type, taking a file name as its constant."""

    def spec(self, paths: Paths | None = None) -> list[Any]:
        return [AUDIO_RECORD, self.options(paths)]


def _check_name(audio: Any, paths: Paths) -> Path:
    """The recorded file ``audio`` names; ValueError / FileNotFoundError naming the input."""
    if not isinstance(audio, str) or not audio.strip():
        raise ValueError("RecordAudio: input 'audio' is empty; record a clip on the node first (the ComfyUI "
                         "frontend uploads it when the prompt is queued)")
    try:
        path = resolve_annotated(audio, paths)
    except ValueError as exc:
        raise ValueError(f"RecordAudio: input 'audio': {exc}") from None
    if not path.is_file():
        raise FileNotFoundError(f"RecordAudio: input 'audio': {audio!r} does not exist ({path.parent}); record "
                                "again or upload the file")
    return path


class RecordAudio(Node):
    """Loads the audio recorded on the node (the ComfyUI frontend records from the microphone and uploads the
    clip). nodegraph's own canvas cannot record: use LoadAudio there, or give the name of an uploaded file."""

    category = "audio"
    display_name = "Record Audio"
    canvas_widgets = ("audio",)
    audio = RecordInput(ANY, tooltip="The recording's file name, e.g. 'audio/recording-1.wav [temp]'.")
    outputs = (Output(AUDIO),)

    @classmethod
    def validate_inputs(cls, audio: Any, paths: Paths) -> bool | str:
        try:
            _check_name(audio, paths)
        except (ValueError, FileNotFoundError) as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint(cls, paths: Paths, audio: str | None = None, **_: Any) -> Any:
        return input_file_fingerprint(paths, audio)

    def execute(self, audio: str) -> tuple:
        path = _check_name(audio, self.ctx.paths)
        return (read_audio_file(path, "RecordAudio"),)
