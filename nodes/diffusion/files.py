"""Model files: the models folder layout, listing loader choices, and reading state dicts safely.

Layout under ``Paths.models_dir``: ``checkpoints/``, ``diffusers/``, ``vae/``, ``loras/``,
``text_encoders/``, ``embeddings/``, ``diffusion_models/`` (later ``llm/``, ``captioners/``,
``clip_vision/``, ``upscale_models/``), plus the folders :meth:`Paths.model_dirs
<nodegraph.context.Paths.model_dirs>` adds for a kind (ComfyUI's alias subfolders, an existing ComfyUI
install's folders from ``extra_model_paths.yaml``): choices list the models of all of them, a name is
found in the first that holds it. Safetensors files are read directly; pickle formats (``.ckpt .pt
.bin .pth .pkl .pt2``) can run code when loaded and are refused unless the engine allows pickle
(``--allow-pickle``). Every failure is a :class:`ModelFileError` whose message names the file and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nodegraph.context import Paths

MODEL_FOLDERS = ("checkpoints", "diffusers", "vae", "loras", "text_encoders", "embeddings", "diffusion_models",
                 "llm", "captioners", "clip_vision", "upscale")
SAFE_EXTENSIONS = frozenset({".safetensors", ".sft"})
PICKLE_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl"})
MODEL_EXTENSIONS = SAFE_EXTENSIONS | PICKLE_EXTENSIONS


class ModelFileError(ValueError):
    """A model file is missing, unreadable, refused, or not the kind of model expected."""


def folder(paths: Paths, kind: str) -> Path:
    """nodegraph's own folder for ``kind`` (where new files go); models are read from every folder of
    :meth:`Paths.model_dirs <nodegraph.context.Paths.model_dirs>`."""
    return Path(paths.models_dir) / kind


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def is_modular_folder(path: Path) -> bool:
    """A folder a diffusers modular pipeline saved (``modular_model_index.json``, e.g. FLUX.3's; often without a
    ``model_index.json``): listed as one model, loaded by the family that knows its class."""
    return path.is_dir() and (path / "modular_model_index.json").is_file()


def list_model_files(paths: Paths, kind: str, *, diffusers_folders: bool = False,
                     extensions: frozenset[str] = MODEL_EXTENSIONS) -> list[str]:
    """Model files of ``kind`` in every folder of ``paths.model_dirs(kind)`` (recursive, relative to
    their folder, ``/``-separated, each name once, sorted); optionally diffusers folders."""
    found: set[str] = set()
    for base in paths.model_dirs(kind):
        found.update(_files_under(base, diffusers_folders, extensions))
    return sorted(found)


def _files_under(base: Path, diffusers_folders: bool, extensions: frozenset[str]) -> list[str]:
    found: list[str] = []
    if not base.is_dir():
        return found
    for root, dirs, files in os.walk(base, followlinks=True):
        root_path = Path(root)
        if diffusers_folders and (is_diffusers_folder(root_path) or is_modular_folder(root_path)) \
                and root_path != base:
            found.append(root_path.relative_to(base).as_posix())
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if Path(name).suffix.lower() in extensions and not name.startswith("."):
                found.append((root_path / name).relative_to(base).as_posix())
    return found


def checkpoint_choices(paths: Paths) -> list[str]:
    """Checkpoint files plus diffusers folders from ``checkpoints/`` and ``diffusers/``."""
    names = list_model_files(paths, "checkpoints", diffusers_folders=True)
    names += [n for n in list_model_files(paths, "diffusers", diffusers_folders=True,
                                          extensions=frozenset()) if n not in names]
    return sorted(set(names))


def resolve_model(paths: Paths, kind: str, name: str, *, also: tuple[str, ...] = ()) -> Path:
    """The path of model ``name`` in the first folder of ``kind`` (then of the ``also`` kinds) that
    holds it (:meth:`Paths.model_dirs <nodegraph.context.Paths.model_dirs>`); refuses escapes."""
    if not name or "\0" in name:
        raise ModelFileError(f"no {kind} model name given")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ModelFileError(f"model name {name!r} must be a path inside models/{kind}")
    searched: list[Path] = []
    for k in (kind, *also):
        for base in paths.model_dirs(k):
            searched.append(base)
            candidate = base / rel
            if candidate.exists():
                if not candidate.resolve().is_relative_to(base.resolve()) and not base.is_symlink():
                    raise ModelFileError(f"model name {name!r} leads outside {base}")
                return candidate
    where = ", ".join(str(base) for base in dict.fromkeys(searched))
    raise ModelFileError(f"model file {name!r} was not found in {where} (models folder: {paths.models_dir}); "
                         "put the file there or pick one from the list")


def file_identity(path: Path) -> tuple[str, int, int]:
    """``(resolved path, size, mtime_ns)``: changes when the file is replaced."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def read_state_dict(path: Path, *, allow_pickle: bool = False, dtype: Any = None) -> dict[str, Any]:
    """All tensors of a model file, on the CPU; ComfyUI's quantised layers (``comfy_quant`` markers,
    ``fp8_scaled`` files: :mod:`nodegraph_nodes.diffusion.quantized`) dequantised as they are read, to ``dtype``
    (a dtype or a rule from the file's float dtype, :data:`~nodegraph_nodes.diffusion.quantized.DtypeRule`;
    default the file's float dtype)."""
    from nodegraph_nodes.diffusion.quantized import dequantize_state_dict, read_safetensors

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in SAFE_EXTENSIONS:
        try:
            return read_safetensors(path, dtype)
        except ModelFileError:
            raise
        except Exception as exc:  # safetensors raises its own error types, or OSError / ValueError
            raise ModelFileError(f"{path.name} is not a readable .safetensors file (corrupt or truncated: "
                                 f"{exc}); download it again") from None
    if suffix in PICKLE_EXTENSIONS:
        if not allow_pickle:
            raise ModelFileError(
                f"{path.name} is a pickle file ({suffix}); pickle files can run arbitrary code when loaded, "
                "so they are refused. Convert it to .safetensors, or start the engine with --allow-pickle "
                "if you trust the file")
        import torch

        try:
            data = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelFileError(f"{path.name} could not be read as a PyTorch file: {exc}") from None
        while isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise ModelFileError(f"{path.name} does not hold a state dict")
        return dequantize_state_dict({k: v for k, v in data.items() if hasattr(v, "shape")}, dtype=dtype,
                                     name=path.name)
    raise ModelFileError(f"{path.name}: unknown model file type {suffix!r}; use .safetensors")


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
