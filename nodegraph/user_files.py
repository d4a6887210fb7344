"""Folders of user files (input, output, temp): ComfyUI's annotated names and containment checks.

Engine core: nodes, the server's ``/view`` and ``/upload`` routes and the cluster's file shipping all
resolve user-given names here, so a name can never lead outside its folder (``..``, absolute paths,
symbolic links). Rules follow ComfyUI (COMFY_COMPAT §4, §8): a `` [input]``/`` [output]``/`` [temp]``
suffix names the folder; subfolders are allowed.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from .context import Paths

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".tif",
                              ".tiff", ".ico", ".apng", ".avif", ".jxl", ".heic", ".heif", ".tga"})
#: video and audio files (LoadVideo's and LoadAudio's choices, uploads checked by PyAV instead of Pillow)
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".mpeg", ".mpg", ".ogv"})
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma"})
FOLDER_SUFFIXES = {"[input]": "input", "[output]": "output", "[temp]": "temp"}


def folder_of(paths: Paths, kind: str) -> Path:
    return {"input": paths.input_dir, "output": paths.output_dir, "temp": paths.temp_dir}[kind]


def split_annotation(name: str, default: str = "input") -> tuple[str, str]:
    """``"x.png [output]"`` → ``("x.png", "output")``; no suffix → the default folder."""
    stripped = name.rstrip()
    for suffix, kind in FOLDER_SUFFIXES.items():
        if stripped.endswith(suffix):
            return stripped[: -len(suffix)].rstrip(), kind
    return name, default


def resolve_inside(base: Path, relative: str, what: str = "folder") -> Path:
    """``base / relative``, refusing names that are empty, absolute, use ``..`` or resolve outside."""
    if not relative or not relative.strip():
        raise ValueError(f"no file name given for the {what}")
    if "\0" in relative:
        raise ValueError(f"file name {relative!r} contains a NUL character")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor:
        raise ValueError(f"file name {relative!r} is an absolute path; give a name inside the {what}")
    if ".." in relative.replace("\\", "/").split("/"):
        raise ValueError(f"file name {relative!r} uses '..'; only names inside the {what} are allowed")
    candidate = base / relative
    if not candidate.resolve().is_relative_to(base.resolve()):
        raise ValueError(f"file name {relative!r} leads outside the {what} (through a symbolic link)")
    return candidate


def resolve_annotated(name: str, paths: Paths) -> Path:
    """The file an annotated name (``sub/x.png``, ``x.png [output]``) refers to; checks containment."""
    relative, kind = split_annotation(name)
    return resolve_inside(folder_of(paths, kind), relative, f"{kind} folder")
