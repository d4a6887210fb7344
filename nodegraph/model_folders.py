"""Where models of each kind are: ComfyUI's folder names, and ComfyUI's ``extra_model_paths.yaml``.

nodegraph reads models of a kind (``checkpoints``, ``loras``, ``llm``, …) from ``<models_dir>/<kind>``
(:class:`~nodegraph.context.Paths`). Two things from ComfyUI widen that, here and nowhere else:

* **Folder names.** ComfyUI's older names are aliases: ``unet`` is ``diffusion_models`` and ``clip`` is
  ``text_encoders`` (:data:`LEGACY_NAMES`); a models folder's ``unet/``, ``clip/`` and
  ``t2i_adapter/`` subfolders hold models of ``diffusion_models``, ``text_encoders`` and
  ``controlnet`` too (:data:`LEGACY_SUBFOLDERS`), so a ComfyUI ``models`` folder works as it is.
* **Extra folders**, from files in ComfyUI's ``extra_model_paths.yaml`` format (what its
  ``utils/extra_config.py`` reads), as :class:`ModelFolder` records (:func:`load_extra_model_paths`):

  .. code-block:: yaml

     comfyui:                        # a section; any name; an empty one is skipped
         base_path: ~/ComfyUI/       # optional; ~ and $VARS expanded; relative to the file's folder
         is_default: true            # optional; true: searched before nodegraph's own folder
         checkpoints: models/checkpoints/
         unet: models/unet/          # a legacy name: diffusion_models
         loras: |                    # several folders, one per line
             models/loras
             /mnt/shared/loras

  Every key but ``base_path``/``is_default`` is a folder kind, ComfyUI's or ours (``llm``, …); each
  line of its value is joined to ``base_path``, or, without one, taken relative to the file's folder.

:meth:`Paths.model_dirs <nodegraph.context.Paths.model_dirs>` puts it together: the folders searched
for a kind, in order. The first folder holding a name wins (as ComfyUI's ``get_full_path``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import NodegraphError

#: ComfyUI's old folder names → the kind they name (ComfyUI's ``folder_paths.map_legacy``)
LEGACY_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}
#: subfolders of a models folder that also hold a kind's models (ComfyUI's ``folder_paths``)
LEGACY_SUBFOLDERS = {"diffusion_models": ("unet",), "text_encoders": ("clip",), "controlnet": ("t2i_adapter",)}
#: the file looked for in the working directory (ComfyUI reads it beside its main.py)
CONFIG_NAME = "extra_model_paths.yaml"
#: the keys of a section that are not folder kinds
SECTION_SETTINGS = ("base_path", "is_default")


class ModelPathsError(NodegraphError, ValueError):
    """An ``extra_model_paths.yaml`` that cannot be read; the message names the file and the entry."""


@dataclass(frozen=True)
class ModelFolder:
    """One extra folder holding models of ``kind`` (its canonical name: ``diffusion_models``, not ``unet``).

    ``first``: searched before nodegraph's own folder (the section's ``is_default``). ``source``: where
    it was declared, ``<file>:<section>``."""

    kind: str
    path: Path
    first: bool = False
    source: str = ""


def canonical_kind(kind: str) -> str:
    """``unet`` → ``diffusion_models``, ``clip`` → ``text_encoders``; other names unchanged."""
    return LEGACY_NAMES.get(kind, kind)


def load_extra_model_paths(path: str | Path) -> tuple[ModelFolder, ...]:
    """The folders one ``extra_model_paths.yaml`` declares, in its order."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelPathsError(f"cannot read the model paths file {path}: {exc.strerror or exc}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelPathsError(f"{path} is not valid YAML: {exc}") from None
    if config is None:
        return ()
    if not isinstance(config, dict):
        raise ModelPathsError(f"{path}: expected sections (a mapping of names to folders), found "
                              f"{type(config).__name__}")
    here = path.resolve().parent
    folders: list[ModelFolder] = []
    for section, entries in config.items():
        if entries is None:
            continue
        where = f"{path}:{section}"
        if not isinstance(entries, dict):
            raise ModelPathsError(f"{where}: a section maps folder kinds (checkpoints, loras, …) to paths, "
                                  f"not {type(entries).__name__}")
        base = _base_path(entries.get("base_path"), here, where)
        first = _flag(entries.get("is_default", False), where)
        for kind, value in entries.items():
            if kind in SECTION_SETTINGS:
                continue
            for line in _lines(value, f"{where}.{kind}"):
                folder = Path(_expand(line))
                folder = base / folder if base is not None else (folder if folder.is_absolute() else here / folder)
                folders.append(ModelFolder(canonical_kind(str(kind)), Path(os.path.normpath(folder)), first, where))
    return tuple(folders)


def extra_model_folders(configs: Iterable[str | Path] = (), cwd: str | Path | None = None) -> tuple[ModelFolder, ...]:
    """The folders of ``extra_model_paths.yaml`` in ``cwd`` (the working directory when ``None``), when
    there is one, then of each file in ``configs`` (``--extra-model-paths-config``; each must exist).
    A file named twice is read once."""
    files: list[Path] = []
    found = Path(cwd if cwd is not None else os.getcwd()) / CONFIG_NAME
    if found.is_file():
        files.append(found)
    for config in configs:
        config = Path(config)
        if not config.is_file():
            raise ModelPathsError(f"the model paths file {config} does not exist (--extra-model-paths-config)")
        files.append(config)
    seen: set[Path] = set()
    folders: list[ModelFolder] = []
    for file in files:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            folders += load_extra_model_paths(file)
    return tuple(folders)


def _expand(text: str) -> str:
    return os.path.expandvars(os.path.expanduser(text))


def _base_path(value: Any, here: Path, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ModelPathsError(f"{where}.base_path must be a folder path, not {value!r}")
    base = Path(_expand(str(value).strip()))
    return base if base.is_absolute() else here / base


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ModelPathsError(f"{where}.is_default must be true or false, not {value!r}")
    return value


def _lines(value: Any, where: str) -> list[str]:
    """One path, several one per line (a ``|`` block), or a YAML list of them."""
    items = value if isinstance(value, list) else [value]
    lines: list[str] = []
    for item in items:
        if not isinstance(item, (str, Path)):
            raise ModelPathsError(f"{where} must be a folder path (or several, one per line), not {item!r}")
        lines += [line.strip() for line in str(item).split("\n") if line.strip()]
    return lines
