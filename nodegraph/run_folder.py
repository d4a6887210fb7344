"""Per-run output folders for ``nodegraph run``: ``outputs/<YYYY-MM-DD_HHMMSS>_<workflow-name>/``.

Each run gets a new folder, so the files of one run are found together and numbering starts again
(``round_00001_.png`` is always round 1 of that run). Two runs started in the same second get
``…_<name>``, ``…_<name>-2``, …: the folder is claimed with an atomic ``mkdir``, so even concurrent
runs never share one. A workflow's ``filename_prefix`` (with its subfolders) is relative to the run
folder, as it is to ``--output-dir``.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

#: suffixes stripped from a workflow file's name to get the workflow's name
WORKFLOW_SUFFIXES = (".ui.json", ".json", ".png")
#: what is kept of the name as it is: letters, digits, dot, dash and underscore; the rest becomes "_"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 60


def workflow_name(path: Path | str) -> str:
    """``workflows/design_loop.ui.json`` → ``design_loop``; a name safe in any file system."""
    name = Path(path).name
    for suffix in WORKFLOW_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    name = _UNSAFE.sub("_", name).strip("._-")[:MAX_NAME]
    return name or "workflow"


def create_run_folder(root: Path | str, workflow: Path | str, now: datetime | None = None) -> Path:
    """Create and return a new, empty folder for one run under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H%M%S")
    base = f"{stamp}_{workflow_name(workflow)}"
    for n in range(1, 10_000):
        folder = root / (base if n == 1 else f"{base}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"cannot create a new run folder named {base}-N under {root}: all names are taken")


def remove_if_empty(folder: Path) -> bool:
    """Remove a run folder (and empty subfolders) that the run wrote nothing to; True if removed."""
    if not folder.is_dir():
        return False
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        return False
    return True
