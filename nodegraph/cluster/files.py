"""Output files of an actor that shares no disk with the server: read there, written here.

A job's UI data names its files (``{"filename", "subfolder", "type"}`` items, ComfyUI's shape). The
actor reads those under its own output/temp folders and returns them as :class:`ShippedFile`; the
server writes each one into its own folder (names confined by the same rule as ``/view``), renaming
``name (n).ext`` when another actor's file already took the name, and rewrites UI entries to match.
Files are shipped per node, just before its ``NodeFinished`` event, so a client that reads a file on
``executed`` finds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ..context import Paths
from .records import ShippedFile

SHIPPED_KINDS = ("output", "temp")


def file_refs(outputs: dict[str, dict]) -> Iterator[dict]:
    """Every file reference in a job's outputs (``{node: {key: [items]}}``)."""
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str) \
                        and item.get("type", "output") in SHIPPED_KINDS:
                    yield item


def _folder(paths: Paths, kind: str) -> Path:
    return Path(paths.output_dir if kind == "output" else paths.temp_dir)


def collect_files(outputs: dict[str, dict], paths: Paths, remove: bool = True) -> list[ShippedFile]:
    """Read the files ``outputs`` names under ``paths`` (and delete them there when ``remove``)."""
    from ..user_files import resolve_inside

    shipped = []
    for ref in file_refs(outputs):
        kind, subfolder = ref.get("type", "output"), ref.get("subfolder") or ""
        base = _folder(paths, kind)
        folder = resolve_inside(base, subfolder, f"{kind} folder") if subfolder else base
        path = resolve_inside(folder, ref["filename"], f"{kind} folder")
        if not path.is_file():
            continue
        shipped.append(ShippedFile(kind, subfolder, ref["filename"], path.read_bytes()))
        if remove:
            path.unlink()
    return shipped


def place_files(files: list[ShippedFile], paths: Paths) -> dict[tuple[str, str, str], str]:
    """Write shipped files under the server's ``paths``; returns the renames made on collision
    (``(kind, subfolder, name)`` → new name)."""
    from ..user_files import resolve_inside

    renamed: dict[tuple[str, str, str], str] = {}
    for shipped in files:
        base = _folder(paths, shipped.kind)
        folder = resolve_inside(base, shipped.subfolder, f"{shipped.kind} folder") if shipped.subfolder else base
        folder.mkdir(parents=True, exist_ok=True)
        stem, ext = os.path.splitext(shipped.filename)
        name, counter = shipped.filename, 1
        while True:
            target = resolve_inside(folder, name, f"{shipped.kind} folder")
            try:
                with open(target, "xb") as handle:  # exclusive: never replaces another actor's file
                    handle.write(shipped.data)
                break
            except FileExistsError:
                name = f"{stem} ({counter}){ext}"
                counter += 1
        if name != shipped.filename:
            renamed[(shipped.kind, shipped.subfolder, shipped.filename)] = name
    return renamed


def apply_renames(renames: dict[tuple[str, str, str], str], outputs: dict[str, dict]) -> None:
    """Point ``outputs``' file references at the names the server gave the files."""
    if not renames:
        return
    for ref in file_refs(outputs):
        key = (ref.get("type", "output"), ref.get("subfolder") or "", ref["filename"])
        if key in renames:
            ref["filename"] = renames[key]
