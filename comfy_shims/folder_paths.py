"""ComfyUI's ``folder_paths``: where models, inputs, outputs and temp files are, for custom node packs.

The folders are the engine's (:class:`nodegraph.context.Paths`): a model kind lists every folder
nodegraph searches for it (ComfyUI's aliases and an ``extra_model_paths.yaml``'s folders included);
inside a running node, that run's folders. ``folder_names_and_paths`` is a dict packs may read and
extend (``add_model_folder_path``, or assigning a new kind); what packs add is kept when the engine's
folders are bound again.
"""

from __future__ import annotations

import mimetypes
import os
import threading
import time
from collections.abc import Collection
from typing import Any

from nodegraph.comfy_compat.host import HOST
from ._attrs import missing_attribute

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

#: ComfyUI's model kinds (and nodegraph's own) with the file extensions they list
KNOWN_KINDS: dict[str, Any] = {
    "checkpoints": supported_pt_extensions, "configs": {".yaml"}, "loras": supported_pt_extensions,
    "vae": supported_pt_extensions, "text_encoders": supported_pt_extensions,
    "diffusion_models": supported_pt_extensions, "clip_vision": supported_pt_extensions,
    "style_models": supported_pt_extensions, "embeddings": supported_pt_extensions, "diffusers": {"folder"},
    "vae_approx": supported_pt_extensions, "controlnet": supported_pt_extensions,
    "gligen": supported_pt_extensions, "upscale_models": supported_pt_extensions, "custom_nodes": set(),
    "hypernetworks": supported_pt_extensions, "photomaker": supported_pt_extensions, "classifiers": {""},
    "model_patches": supported_pt_extensions, "audio_encoders": supported_pt_extensions,
    "llm": set(), "captioners": set(), "safety": set(), "ipadapter": supported_pt_extensions,
}
LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}

_lock = threading.RLock()
_overrides: dict[str, str] = {}


def map_legacy(folder_name: str) -> str:
    return LEGACY.get(folder_name, folder_name)


class _FolderTable(dict):
    """``{kind: ([folders], extensions)}``, kept in step with the engine's folders (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._bound: Any = None
        self._base: dict[str, list[str]] = {}

    def sync(self) -> None:
        paths = HOST.current_paths()
        dirs = HOST.custom_nodes_dirs
        key = (paths, dirs)
        if key == self._bound:
            return
        with _lock:
            for kind, extensions in KNOWN_KINDS.items():
                base = [str(d) for d in dirs] if kind == "custom_nodes" else \
                    [os.path.abspath(p) for p in paths.model_dirs(kind)]
                old = dict.get(self, kind)
                added = [p for p in old[0] if p not in self._base.get(kind, [])] if old else []
                extensions = old[1] if old else extensions
                dict.__setitem__(self, kind, (base + [p for p in added if p not in base], extensions))
                self._base[kind] = base
            self._bound = key

    def __getitem__(self, kind: str) -> Any:
        self.sync()
        return dict.__getitem__(self, kind)

    def get(self, kind: str, default: Any = None) -> Any:
        self.sync()
        return dict.get(self, kind, default)

    def __contains__(self, kind: object) -> bool:
        self.sync()
        return dict.__contains__(self, kind)

    def __iter__(self):
        self.sync()
        return dict.__iter__(self)

    def keys(self):
        self.sync()
        return dict.keys(self)

    def items(self):
        self.sync()
        return dict.items(self)

    def values(self):
        self.sync()
        return dict.values(self)


folder_names_and_paths: dict[str, tuple[list[str], Any]] = _FolderTable()


def _directory(kind: str) -> str:
    if kind in _overrides:
        return _overrides[kind]
    paths = HOST.current_paths()
    folder = {"output": paths.output_dir, "input": paths.input_dir, "temp": paths.temp_dir}[kind]
    return os.path.abspath(folder)


def get_output_directory() -> str:
    return _directory("output")


def get_input_directory() -> str:
    return _directory("input")


def get_temp_directory() -> str:
    return _directory("temp")


def get_user_directory() -> str:
    return _overrides.get("user") or os.path.abspath("user")


def set_output_directory(output_dir: str) -> None:
    _overrides["output"] = output_dir


def set_input_directory(input_dir: str) -> None:
    _overrides["input"] = input_dir


def set_temp_directory(temp_dir: str) -> None:
    _overrides["temp"] = temp_dir


def set_user_directory(user_dir: str) -> None:
    _overrides["user"] = user_dir


def get_directory_by_type(type_name: str) -> str | None:
    if type_name in ("output", "input", "temp"):
        return _directory(type_name)
    return None


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """``"x.png [output]"`` → ``("x.png", the output folder)``; no annotation → ``(name, None)``."""
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], _directory(kind)
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base = annotated_filepath(name)
    return os.path.join(base or default_dir or get_input_directory(), name)


def exists_annotated_filepath(name: str) -> bool:
    name, base = annotated_filepath(name)
    return os.path.exists(os.path.join(base or get_input_directory(), name))


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    kind = map_legacy(folder_name)
    with _lock:
        entry = folder_names_and_paths.get(kind)
        if entry is None:
            dict.__setitem__(folder_names_and_paths, kind, ([full_folder_path], set()))
            return
        folders = entry[0]
        if full_folder_path in folders:
            if is_default and folders[0] != full_folder_path:
                folders.remove(full_folder_path)
                folders.insert(0, full_folder_path)
        elif is_default:
            folders.insert(0, full_folder_path)
        else:
            folders.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[map_legacy(folder_name)][0])


def recursive_search(directory: str, excluded_dir_names: list[str] | None = None) -> tuple[list[str], dict[str, float]]:
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or ())
    files: list[str] = []
    folders: dict[str, float] = {directory: os.path.getmtime(directory)}
    for root, subdirs, names in os.walk(directory, followlinks=True):
        subdirs[:] = [d for d in subdirs if d not in excluded]
        files.extend(os.path.relpath(os.path.join(root, n), directory) for n in names)
        for d in subdirs:
            try:
                folders[os.path.join(root, d)] = os.path.getmtime(os.path.join(root, d))
            except OSError:
                continue
    return files, folders


def filter_files_extensions(files: Collection[str], extensions: Collection[str]) -> list[str]:
    return sorted(f for f in files if not extensions or os.path.splitext(f)[-1].lower() in extensions)


def filter_files_content_types(files: list[str], content_types: list[str]) -> list[str]:
    """The files whose guessed MIME type's first part is one of ``content_types`` (image, video, …)."""
    found = []
    for name in files:
        mime, _ = mimetypes.guess_type(name, strict=False)
        if mime and mime.split("/")[0] in content_types:
            found.append(name)
    return found


def get_full_path(folder_name: str, filename: str) -> str | None:
    kind = map_legacy(folder_name)
    entry = folder_names_and_paths.get(kind)
    if entry is None:
        return None
    relative = os.path.relpath(os.path.join("/", filename), "/")  # no way out of the folder
    for folder in entry[0]:
        candidate = os.path.join(folder, relative)
        if os.path.isfile(candidate):
            return candidate
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    found = get_full_path(folder_name, filename)
    if found is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return found


def get_filename_list_(folder_name: str) -> tuple[list[str], dict[str, float], float]:
    kind = map_legacy(folder_name)
    folders, extensions = folder_names_and_paths[kind]
    names: set[str] = set()
    seen: dict[str, float] = {}
    for folder in folders:
        files, dirs = recursive_search(folder, excluded_dir_names=[".git"])
        names.update(filter_files_extensions(files, extensions))
        seen.update(dirs)
    return sorted(names), seen, time.perf_counter()


def get_filename_list(folder_name: str) -> list[str]:
    """The files of a model kind in all its folders (relative names, sorted); ``[]`` for no file."""
    return get_filename_list_(folder_name)[0]


def cached_filename_list_(folder_name: str) -> tuple[list[str], dict[str, float], float] | None:
    return None  # nodegraph lists the folders each time


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    """``(folder, file stem, next counter, subfolder, prefix)`` for saving under ``output_dir``, as
    ComfyUI computes them (``%width%``, ``%height%``, ``%year%`` … replaced; no way out of the folder)."""
    if "%" in filename_prefix:
        now = time.localtime()
        for key, value in (("%width%", image_width), ("%height%", image_height), ("%year%", now.tm_year),
                           ("%month%", f"{now.tm_mon:02d}"), ("%day%", f"{now.tm_mday:02d}"),
                           ("%hour%", f"{now.tm_hour:02d}"), ("%minute%", f"{now.tm_min:02d}"),
                           ("%second%", f"{now.tm_sec:02d}")):
            filename_prefix = filename_prefix.replace(key, str(value))
    normalized = os.path.normpath(filename_prefix)
    subfolder, filename = os.path.dirname(normalized), os.path.basename(normalized)
    output_dir = os.path.abspath(output_dir)
    folder = os.path.abspath(os.path.join(output_dir, subfolder))
    if os.path.commonpath((output_dir, folder)) != output_dir:
        raise ValueError(f"saving outside the output folder is not allowed: {folder} is not inside {output_dir}")
    counter = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    stem = os.path.normcase(filename)
    for name in names:
        head = name[: len(filename) + 1]
        if os.path.normcase(head[:-1]) != stem or not head.endswith("_"):
            continue
        try:
            counter = max(counter, int(name[len(filename) + 1:].split("_")[0]))
        except ValueError:
            continue
    return folder, filename, counter + 1, subfolder, filename_prefix


def get_input_subfolders() -> list[str]:
    base = get_input_directory()
    found = []
    for root, dirs, _ in os.walk(base):
        for d in dirs:
            found.append(os.path.relpath(os.path.join(root, d), base).replace(os.sep, "/"))
    return sorted(found)


def __getattr__(name: str) -> Any:
    # ComfyUI's module-level folder variables, read from the engine's folders each time
    if name == "output_directory":
        return get_output_directory()
    if name == "input_directory":
        return get_input_directory()
    if name == "temp_directory":
        return get_temp_directory()
    if name == "user_directory":
        return get_user_directory()
    if name == "models_dir":
        return os.path.abspath(HOST.current_paths().models_dir)
    if name == "base_path":
        return os.path.dirname(os.path.abspath(HOST.current_paths().models_dir))
    return missing_attribute("folder_paths", name)
