"""ComfyUI's video nodes: LoadVideo, SaveVideo, CreateVideo, GetVideoComponents, Video Slice, SaveWEBM.

Names, inputs, defaults and outputs follow ComfyUI (``comfy_extras/nodes_video.py``; SaveVideo and SaveWEBM
pass their input on, as today's ComfyUI does). Saved files are ``<prefix>_<counter:05>_.<ext>`` in the
output folder and reported as ComfyUI's video preview: ``{"images": [file], "animated": [True]}``.
Workflow metadata (``prompt`` and the canvas's ``workflow``) is written into the container's tags.

Differences, stricter or documented: SaveVideo's codec choices add ``vp9`` (webm/mkv) beside ``h264``
and ``av1``; auto picks mp4 + H.264 (webm + AV1 for ``av1``, webm for ``vp9``); a codec the container
cannot hold, odd frame sizes for 4:2:0 codecs, and more than two audio channels are errors naming the
node. LoadVideo's fingerprint is the file's SHA-256 (ComfyUI uses the modification time). CreateVideo
takes ``bit_depth`` 8 (or auto) and ``color_space`` sRGB only: 10-bit and HDR are refused.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import torch

from nodegraph.context import Paths
from nodegraph.node import BOOLEAN, COMBO, FLOAT, STRING, Input, Node, NodeResult, Output
from nodegraph.types import ANY, IMAGE
from nodegraph.user_files import VIDEO_EXTENSIONS, resolve_annotated
from nodegraph.value_checks import check_image
from nodegraph_nodes.io.files import expand_prefix_vars, file_sha256, next_counter, split_prefix, write_numbered

from .audio import AUDIO, check_audio, make_audio
from .codec import MediaError, encode_video
from .video import (CODECS, CONTAINERS, VIDEO, Video, VideoComponents, VideoFromComponents, VideoFromFile,
                    resolve_format)


def list_input_videos(paths: Paths) -> list[str]:
    """Video files at the top level of the input folder, sorted (LoadVideo's choices)."""
    try:
        return sorted(p.name for p in paths.input_dir.iterdir()
                      if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    except OSError:
        return []


def output_file(base: Path, prefix: str, width: int, height: int, extension: str) -> tuple[Path, str, str]:
    """``(path, file name, subfolder)`` of the next ``<prefix>_<counter:05>_.<extension>``, reserved
    exclusively so concurrent saves never share a name."""
    if "%" in prefix:
        prefix = expand_prefix_vars(prefix, width, height)
    folder, stem, subfolder = split_prefix(prefix, base)
    folder.mkdir(parents=True, exist_ok=True)
    name, _ = write_numbered(folder, lambda c: f"{stem}_{c:05}_.{extension}", next_counter(folder, stem), b"")
    return folder / name, name, subfolder


@contextmanager
def removed_on_media_error(path: Path, node_name: str) -> Iterator[None]:
    """Around writing ``path``: a MediaError removes the partial file and becomes ``ValueError("<node_name>:
    <message>")``."""
    try:
        yield
    except MediaError as exc:
        path.unlink(missing_ok=True)
        raise ValueError(f"{node_name}: {exc}") from None


def container_metadata(prompt: dict | None, extra_pnginfo: dict | None) -> dict[str, Any] | None:
    """The tags ComfyUI writes: the extra PNG info's keys (``workflow``) and ``prompt``."""
    metadata: dict[str, Any] = dict(extra_pnginfo or {})
    if prompt is not None:
        metadata["prompt"] = prompt
    return metadata or None


def input_file_fingerprint(paths: Paths, name: Any) -> Any:
    """The loaders' fingerprint: the sha256 of the file ``name`` names (annotated names such as
    ``x.wav [temp]`` allowed); NaN (never equal to itself, so the node runs) when it cannot be read."""
    try:
        return file_sha256(resolve_annotated(str(name), paths))
    except (OSError, ValueError):
        return math.nan


def check_video(video: Any, node: str, input_name: str = "video") -> Video:
    if not isinstance(video, Video):
        raise TypeError(f"{node}: input '{input_name}' must be a VIDEO, got {type(video).__name__}")
    return video


def video_ui(name: str, subfolder: str, kind: str = "output") -> dict[str, list]:
    """ComfyUI's PreviewVideo ui record."""
    return {"images": [{"filename": name, "subfolder": subfolder, "type": kind}], "animated": [True]}


class LoadVideo(Node):
    """Loads a video file from the input folder; frames are decoded only when a node asks for them."""

    category = "image/video"
    display_name = "Load Video"
    file = Input(COMBO, choices=list_input_videos, video_upload=True)
    outputs = (Output(VIDEO),)

    @classmethod
    def validate_inputs(cls, file: str, paths: Paths) -> bool | str:
        try:
            path = resolve_annotated(str(file), paths)
        except ValueError as exc:
            return f"Invalid video file: {exc}"
        if not path.is_file():
            return f"Invalid video file: {file} (not found in {path.parent})"
        return True

    @classmethod
    def fingerprint(cls, paths: Paths, file: str | None = None, **_: Any) -> Any:
        return input_file_fingerprint(paths, file)

    def execute(self, file: str) -> tuple:
        path = resolve_annotated(file, self.ctx.paths)
        if not path.is_file():
            raise FileNotFoundError(f"LoadVideo: input 'file': {file!r} does not exist in the input folder "
                                    f"({self.ctx.paths.input_dir})")
        try:
            return (VideoFromFile(path),)
        except MediaError as exc:
            raise ValueError(f"LoadVideo: input 'file': {exc}") from None


class SaveVideo(Node):
    """Saves the input videos to your ComfyUI output directory (mp4, mkv or webm; H.264, AV1 or VP9) with
    the workflow in the container's tags; outputs the video unchanged. The codec may come as today's
    ComfyUI nests it under the format (format.codec, format.codec.encoding, format.codec.encoding.crf) or
    as the older flat codec input; the nested one wins. Always re-encodes (ComfyUI's auto encoding copies
    a compatible source stream)."""

    category = "image/video"
    display_name = "Save Video"
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    _codec_options = {"auto": (), "h264": ("format.codec.encoding",), "av1": ("format.codec.encoding",),
                      "vp9": ("format.codec.encoding",)}
    dynamic_combos = {
        "format": {name: ("format.codec",) for name in CONTAINERS},
        "format.codec": _codec_options,
        "format.codec.encoding": {"auto": (), "re-encode": ("format.codec.encoding.crf",)},
    }
    video = Input(VIDEO, tooltip="The video to save.")
    filename_prefix = Input(STRING, default="video/ComfyUI",
                            tooltip="The prefix for the file to save. This may include formatting information "
                                    "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values "
                                    "from nodes.")
    format = Input(COMBO, choices=list(CONTAINERS), default="auto",
                   tooltip="The output container. Auto uses MP4 for Auto/H.264 and WebM for AV1 and VP9.")
    vars().update({
        "format.codec": Input(COMBO, choices=list(CODECS), default="auto", optional=True,
                              tooltip="The output video codec (webm: av1 or vp9)."),
        "format.codec.encoding": Input(COMBO, choices=["auto", "re-encode"], default="auto", optional=True,
                                       tooltip="re-encode applies the crf below."),
        "format.codec.encoding.crf": Input(FLOAT, default=23.0, min=0.0, max=63.0, step=1.0, optional=True,
                                           tooltip="Lower values produce higher quality and larger files."),
    })
    codec = Input(COMBO, choices=list(CODECS), default="auto", optional=True,
                  tooltip="The codec to use for the video (older layout; format.codec wins).")
    outputs = (Output(VIDEO, "video", tooltip="The input video, unchanged."),)

    def execute(self, video: Video, filename_prefix: str = "video/ComfyUI", format: str = "auto",
                codec: str | None = None, prompt: dict | None = None, extra_pnginfo: dict | None = None,
                **fields: Any) -> NodeResult:
        video = check_video(video, "SaveVideo")
        codec = fields.get("format.codec") or codec or "auto"
        crf = None
        if fields.get("format.codec.encoding") == "re-encode":
            crf = fields.get("format.codec.encoding.crf")
            crf = 23.0 if crf is None else crf
        try:
            container, _ = resolve_format(format, codec)
        except ValueError as exc:
            raise ValueError(f"SaveVideo: {exc}") from None
        width, height = video.get_dimensions()
        path, name, subfolder = output_file(self.ctx.paths.output_dir, filename_prefix, width, height, container)
        with removed_on_media_error(path, "SaveVideo"):
            video.save_to(path, format=format, codec=codec, metadata=container_metadata(prompt, extra_pnginfo),
                          crf=crf)
        return NodeResult(outputs=(video,), ui=video_ui(name, subfolder))


class SaveWEBM(Node):
    """Saves the images as one WebM video (VP9 or AV1) in the output folder; outputs the images unchanged."""

    category = "image/video"
    display_name = "Save WEBM"
    experimental = True
    output_node = True
    hidden = ("prompt", "extra_pnginfo")
    images = Input(IMAGE)
    filename_prefix = Input(STRING, default="ComfyUI")
    codec = Input(COMBO, choices=["vp9", "av1"])
    fps = Input(FLOAT, default=24.0, min=0.01, max=1000.0, step=0.01)
    crf = Input(FLOAT, default=32.0, min=0, max=63.0, step=1,
                tooltip="Higher crf means lower quality with a smaller file size, lower crf means higher quality "
                        "higher filesize.")
    outputs = (Output(IMAGE, "images"),)

    def execute(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", codec: str = "vp9",
                fps: float = 24.0, crf: float = 32.0, prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        images = check_image(images, "images")
        path, name, subfolder = output_file(self.ctx.paths.output_dir, filename_prefix, int(images.shape[2]),
                                            int(images.shape[1]), "webm")
        with removed_on_media_error(path, "SaveWEBM"):
            encode_video(path, images, Fraction(fps).limit_denominator(1000), None, "webm", codec,
                         container_metadata(prompt, extra_pnginfo), crf)
        return NodeResult(outputs=(images,), ui=video_ui(name, subfolder))


class CreateVideo(Node):
    """Create a video from images (and optional audio) at a frame rate."""

    category = "image/video"
    display_name = "Create Video"
    images = Input(IMAGE, tooltip="The images to create a video from.")
    fps = Input(FLOAT, default=30.0, min=1.0, max=120.0, step=1.0)
    audio = Input(AUDIO, optional=True, tooltip="The audio to add to the video.")
    #: ComfyUI's choices are "auto", 8 and 10 (numbers in a combo): declared ``*`` and kept among the
    #: canvas's widgets, checked by ``validate_inputs``
    canvas_widgets = ("bit_depth",)
    bit_depth = Input(ANY, default="auto", optional=True,
                      tooltip="auto, 8 or 10: 8-bit only here (auto means 8-bit for sRGB); 10 is refused.")
    color_space = Input(COMBO, choices=["sRGB", "HDR", "HDR PQ"], default="sRGB", optional=True,
                        tooltip="Colorspace of the input images; only sRGB is supported here.")
    outputs = (Output(VIDEO),)

    @classmethod
    def validate_inputs(cls, bit_depth: Any = "auto") -> bool | str:
        if bit_depth is not None and str(bit_depth) not in ("auto", "8", "10"):
            return f"bit_depth {bit_depth!r} is not one of auto, 8, 10"
        return True

    def execute(self, images: torch.Tensor, fps: float = 30.0, audio: dict | None = None,
                bit_depth: Any = "auto", color_space: str = "sRGB") -> tuple:
        images = check_image(images, "images")
        if str(bit_depth) not in ("auto", "8"):
            raise ValueError(f"CreateVideo: input 'bit_depth' is {bit_depth!r}; only 8-bit (or auto) video is "
                             "supported")
        if color_space != "sRGB":
            raise ValueError(f"CreateVideo: input 'color_space' is {color_space!r}; only sRGB is supported")
        if audio is not None:
            waveform, rate = check_audio(audio, "CreateVideo")
            audio = make_audio(waveform[:1], rate)
        return (VideoFromComponents(VideoComponents(images[..., :3], Fraction(fps).limit_denominator(1000),
                                                    audio)),)


class GetVideoComponents(Node):
    """Extracts all components from a video: frames, audio, and framerate (plus bit depth and colour
    space, 8 and sRGB here)."""

    category = "image/video"
    display_name = "Get Video Components"
    video = Input(VIDEO, tooltip="The video to extract components from.")
    outputs = (Output(IMAGE, "images"), Output(AUDIO, "audio"), Output(FLOAT, "fps"),
               Output(COMBO, "bit_depth"), Output(COMBO, "color_space"))

    def execute(self, video: Video) -> tuple:
        video = check_video(video, "GetVideoComponents")
        try:
            parts = video.get_components()
        except MediaError as exc:
            raise ValueError(f"GetVideoComponents: {exc}") from None
        return parts.images, parts.audio, float(parts.frame_rate), 8, "sRGB"


class VideoSlice(Node):
    """Keeps the part of a video from start_time (negative: counted from the end) lasting duration
    seconds (0: to the end); its audio is cut alike."""

    CLASS_TYPE = "Video Slice"
    category = "image/video"
    display_name = "Video Slice"
    video = Input(VIDEO)
    start_time = Input(FLOAT, default=0.0, min=-1e5, max=1e5, step=0.001, tooltip="Start time in seconds")
    duration = Input(FLOAT, default=0.0, min=0.0, step=0.001,
                     tooltip="Duration in seconds, or 0 for unlimited duration")
    strict_duration = Input(BOOLEAN, default=False,
                            tooltip="If True, when the specified duration is not possible, an error will be raised.")
    outputs = (Output(VIDEO),)

    def execute(self, video: Video, start_time: float = 0.0, duration: float = 0.0,
                strict_duration: bool = False) -> tuple:
        video = check_video(video, "Video Slice")
        trimmed = video.as_trimmed(start_time, duration, strict_duration=strict_duration)
        if trimmed is None:
            raise ValueError(f"Video Slice: failed to slice the video: it lasts {video.get_duration():.3f} s; "
                             f"start_time {start_time:g} s, duration {duration:g} s"
                             + (" (strict_duration)" if strict_duration else ""))
        return (trimmed,)
