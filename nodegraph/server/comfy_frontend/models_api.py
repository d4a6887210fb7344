"""The model library's routes: ``/experiment/models`` (+ ``/{folder}``), ``/view_metadata/{folder}`` and
``/internal/folder_paths``, in ComfyUI's shapes.

A model kind's folders are :meth:`nodegraph.context.Paths.model_dirs` (our models folder, its ComfyUI
alias subfolders, the folders of ``extra_model_paths.yaml``), in search order; the kinds are those
``/models`` lists.

* ``GET /experiment/models`` — ``[{"name": kind, "folders": [absolute paths]}]``, less ``configs``
  and ``custom_nodes`` (as ComfyUI);
* ``GET /experiment/models/{folder}`` — ``[{"name": path relative to its folder, "pathIndex": index
  of that folder, "modified", "created", "size"}]`` (404 for an unknown kind);
* ``GET /view_metadata/{folder}?filename=`` — the ``__metadata__`` object of a ``.safetensors``
  file's header (read without loading the tensors; headers over 100 MB are refused), the file found
  in the kind's folders in order; 404 when the kind or file is unknown, the file is not
  ``.safetensors`` or has no metadata. The name is resolved inside each folder with
  :func:`nodegraph.user_files.resolve_inside` (403 when it leads out);
* ``GET /internal/folder_paths`` — ``{kind: [absolute paths]}``.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

from aiohttp import web

from ...user_files import resolve_inside
from .common import RouteError
from .state import FrontendState

HIDDEN_FOLDERS = ("configs", "custom_nodes")
MAX_HEADER = 100 * 1024 * 1024


def safetensors_metadata(path: Path) -> dict | None:
    """The ``__metadata__`` of a ``.safetensors`` header, ``None`` when it has none."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is too short to be a .safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            raise ValueError(f"{path.name}'s header is {length} bytes; more than {MAX_HEADER} are refused")
        header = json.loads(handle.read(length))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


class ModelsApi:
    def __init__(self, state: FrontendState) -> None:
        self.state = state

    @property
    def paths(self):
        return self.state.paths

    def kinds(self) -> list[str]:
        return list(self.state.model_kinds(self.paths))

    def folders(self, kind: str) -> tuple[Path, ...]:
        if kind not in self.kinds():
            raise RouteError(404, "not_found", f"unknown model folder {kind!r}")
        return self.paths.model_dirs(kind)

    def _absolute(self, kind: str) -> list[str]:
        return [str(Path(folder).resolve()) for folder in self.folders(kind)]

    async def list_folders(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": kind, "folders": self._absolute(kind)}
                                  for kind in self.kinds() if kind not in HIDDEN_FOLDERS])

    async def files(self, request: web.Request) -> web.Response:
        folders = self.folders(request.match_info["folder"])
        return web.json_response(await asyncio.get_running_loop().run_in_executor(None, self._describe, folders))

    def _describe(self, folders: tuple[Path, ...]) -> list[dict]:
        entries = []
        for index, folder in enumerate(folders):
            for name in self.state.list_models(Path(folder)):
                try:
                    stat = (Path(folder) / name).stat()
                except OSError:
                    continue
                entries.append({"name": name, "pathIndex": index, "modified": stat.st_mtime,
                                "created": stat.st_ctime, "size": stat.st_size})
        return entries

    async def folder_paths(self, request: web.Request) -> web.Response:
        return web.json_response({kind: self._absolute(kind) for kind in self.kinds()})

    def locate(self, kind: str, filename: str) -> Path:
        for folder in self.folders(kind):
            try:
                path = resolve_inside(Path(folder), filename, f"{kind} folder")
            except ValueError as exc:
                raise RouteError(403, "bad_path", str(exc)) from None
            if path.is_file():
                return path
        raise RouteError(404, "not_found", f"no {kind} folder holds {filename}")

    async def view_metadata(self, request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        filename = request.query.get("filename", "")
        if not filename.endswith(".safetensors"):
            self.folders(kind)
            raise RouteError(404, "not_found", "metadata is read from .safetensors files only")
        path = self.locate(kind, filename)
        try:
            metadata = await asyncio.get_running_loop().run_in_executor(None, safetensors_metadata, path)
        except (OSError, ValueError) as exc:
            raise RouteError(400, "bad_file", f"cannot read {filename}'s header: {exc}") from None
        if metadata is None:
            raise RouteError(404, "not_found", f"{filename} has no metadata")
        return web.json_response(metadata)
