"""Model folders, dtypes and tensor preprocessing for VL nodes (input checks: nodegraph.value_checks).

Models for these nodes are transformers folders (``config.json`` + weights + tokenizer/processor files)
under ``models/<kind>/<folder>``: ``llm``, ``captioners``, ``clip_vision``, ``safety`` — or under any
other folder :meth:`Paths.model_dirs <nodegraph.context.Paths.model_dirs>` gives for the kind (an
existing ComfyUI install's, from ``extra_model_paths.yaml``). They are loaded
with ``local_files_only=True`` — nothing is fetched from a hub — and once per (folder, class, dtype)
through the engine's model manager.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nodegraph.context import Paths
from nodegraph.models import CONSTRUCTION_LOCK

# CLIP's normalisation: the default for processors that ship no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


#: The process-wide model construction lock (see nodegraph.models.CONSTRUCTION_LOCK): model manager
#: loads hold it already; tokenizer and processor loads here take it too.
LOAD_LOCK = CONSTRUCTION_LOCK


class ModelFolderError(ValueError):
    """A model folder is missing, unreadable or not the kind of model the node needs."""


def models_root(paths: Paths, kind: str) -> Path:
    """nodegraph's own folder for ``kind``; models are read from every folder of ``paths.model_dirs(kind)``."""
    return Path(paths.models_dir) / kind


def list_model_folders(paths: Paths, kind: str, files: tuple[str, ...] = ()) -> list[str]:
    """Folders that hold a ``config.json`` under any folder of ``paths.model_dirs(kind)`` (relative to
    it, ``/``-separated, each name once, sorted).

    ``files``: file extensions (``.safetensors``) also listed as single-file models.
    """
    found: set[str] = set()
    for base in paths.model_dirs(kind):
        found.update(_model_folders_under(base, files))
    return sorted(found)


def _model_folders_under(base: Path, files: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    if not base.is_dir():
        return found
    for root, dirs, names in os.walk(base, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        root_path = Path(root)
        if root_path != base and "config.json" in names:
            found.append(root_path.relative_to(base).as_posix())
            dirs[:] = []
            continue
        for name in names:
            if files and Path(name).suffix.lower() in files and not name.startswith("."):
                found.append((root_path / name).relative_to(base).as_posix())
    return found


def resolve_model_path(paths: Paths, kind: str, name: str, input_name: str) -> Path:
    """``<folder>/<name>`` in the first folder of ``paths.model_dirs(kind)`` holding it, refusing
    names outside that folder and missing ones."""
    if not isinstance(name, str) or not name.strip():
        raise ModelFolderError(f"input '{input_name}': no model name given; pick a folder under models/{kind}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\0" in name:
        raise ModelFolderError(f"input '{input_name}': model name {name!r} must be a path inside models/{kind}")
    bases = paths.model_dirs(kind)
    for base in bases:
        path = base / rel
        if path.exists():
            if not path.resolve().is_relative_to(base.resolve()) and not base.is_symlink():
                raise ModelFolderError(f"input '{input_name}': model name {name!r} leads outside {base}")
            return path
    where = " or ".join(str(base) for base in bases)
    raise ModelFolderError(f"input '{input_name}': there is no model {name!r} in {where}; put a "
                           f"transformers model folder there (config.json + weights)")


def read_config(folder: Path, input_name: str) -> dict:
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFolderError(f"input '{input_name}': {folder.name} has no config.json, so it is not a "
                               "transformers model folder")
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"input '{input_name}': {folder}/config.json cannot be read: {exc}") from exc


def pick_dtype(device: str, requested: str = "auto") -> torch.dtype:
    """fp32 on CPU; fp16 on GPUs (bf16 when asked and supported), like the other model loaders."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if requested in table:
        if device == "cpu" and requested == "fp16":
            return torch.float32  # half-precision matmuls on CPU are slow or unsupported
        return table[requested]
    if device.startswith("cuda") or device == "mps":
        return torch.float16
    return torch.float32


DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    if image.shape[-1] == 1:
        return image.expand(*image.shape[:-1], 3)
    return image[..., :3]


def preprocess(image: torch.Tensor, size: int | tuple[int, int], mean, std, *, crop: bool = True,
               device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` → normalised pixel values ``[B,3,h,w]`` (resize shortest side, center crop)."""
    th, tw = (size, size) if isinstance(size, int) else size
    x = to_rgb(image).permute(0, 3, 1, 2).float()
    if crop:
        h, w = x.shape[-2:]
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False,
                                            antialias=True)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
    else:
        x = torch.nn.functional.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False,
                                            antialias=True)
    x = x.clamp(0, 1)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).to(device=device, dtype=dtype)


def image_settings(folder: Path | None, config: dict | None, default_size: int = 224) -> dict:
    """Size, mean and std from a folder's ``preprocessor_config.json``, else from the model config."""
    settings = {"size": default_size, "mean": CLIP_MEAN, "std": CLIP_STD}
    if config:
        vision = config.get("vision_config") or config.get("encoder") or config
        if isinstance(vision, dict) and isinstance(vision.get("image_size"), int):
            settings["size"] = vision["image_size"]
    pre = folder / "preprocessor_config.json" if folder is not None else None
    if pre is not None and pre.is_file():
        try:
            data = json.loads(pre.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        size = data.get("crop_size") or data.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge") or size.get("width")
        if isinstance(size, int):
            settings["size"] = size
        if data.get("image_mean"):
            settings["mean"] = tuple(data["image_mean"])
        if data.get("image_std"):
            settings["std"] = tuple(data["image_std"])
    return settings


def load_tokenizer(folder: Path, input_name: str):
    from transformers import AutoTokenizer

    try:
        with LOAD_LOCK:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise ModelFolderError(f"input '{input_name}': the tokenizer in {folder} cannot be loaded "
                               f"({type(exc).__name__}: {exc}); the folder needs tokenizer.json or the "
                               "tokenizer files saved by save_pretrained") from exc


def manager_key(folder: Path, component: str, dtype: torch.dtype) -> tuple:
    """Model-manager key: the folder, what was loaded, the dtype, and the weights' sizes and mtimes."""
    stamp = []
    for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else [folder]:
        try:
            st = p.stat()
            stamp.append((p.name, st.st_size, st.st_mtime_ns))
        except OSError:
            pass
    return ("langvision", str(folder.resolve()), component, str(dtype), tuple(stamp))


def folder_fingerprint(paths: Paths, kind: str, name: str) -> str:
    """Changes when a model folder's files change (the loader's cache key)."""
    try:
        path = resolve_model_path(paths, kind, name, "name")
    except ModelFolderError:
        return ""
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    parts = []
    for q in files:
        try:
            st = q.stat()
        except OSError:
            continue
        parts.append(f"{q.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)
