"""The model library's routes: ``/experiment/models`` (+ ``/{folder}``), ``/view_metadata/{folder}`` and
``/internal/folder_paths``, in ComfyUI's shapes.

* ``GET /experiment/models`` — ``[{"name": folder, "folders": [absolute paths]}]`` for the model
  folders ``/models`` lists, less ``configs`` and ``custom_nodes`` (as ComfyUI);
* ``GET /experiment/models/{folder}`` — ``[{"name": relative path, "pathIndex": 0, "modified",
  "created", "size"}]`` of the model files in it (404 for an unknown folder);
* ``GET /view_metadata/{folder}?filename=`` — the ``__metadata__`` object of a ``.safetensors``
  file's header (read without loading the tensors; headers over 100 MB are refused); 404 when the
  folder or file is unknown, the file is not ``.safetensors`` or has no metadata. The name is
  resolved inside the folder with :func:`nodegraph.user_files.resolve_inside` (403 when it leads out);
* ``GET /internal/folder_paths`` — ``{folder: [absolute paths]}``.
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

    def folder(self, name: str) -> Path:
        if name not in self.state.model_folders:
            raise RouteError(404, "not_found", f"unknown model folder {name!r}")
        return Path(self.state.paths.models_dir) / name

    async def folders(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": name, "folders": [str(self.folder(name).resolve())]}
                                  for name in self.state.model_folders if name not in HIDDEN_FOLDERS])

    async def files(self, request: web.Request) -> web.Response:
        folder = self.folder(request.match_info["folder"])
        return web.json_response(await asyncio.get_running_loop().run_in_executor(None, self._describe, folder))

    def _describe(self, folder: Path) -> list[dict]:
        entries = []
        for name in self.state.list_models(folder):
            try:
                stat = (folder / name).stat()
            except OSError:
                continue
            entries.append({"name": name, "pathIndex": 0, "modified": stat.st_mtime, "created": stat.st_ctime,
                            "size": stat.st_size})
        return entries

    async def folder_paths(self, request: web.Request) -> web.Response:
        return web.json_response({name: [str(self.folder(name).resolve())] for name in self.state.model_folders})

    async def view_metadata(self, request: web.Request) -> web.Response:
        folder = self.folder(request.match_info["folder"])
        filename = request.query.get("filename", "")
        if not filename.endswith(".safetensors"):
            raise RouteError(404, "not_found", "metadata is read from .safetensors files only")
        try:
            path = resolve_inside(folder, filename, f"{folder.name} folder")
        except ValueError as exc:
            raise RouteError(403, "bad_path", str(exc)) from None
        if not path.is_file():
            raise RouteError(404, "not_found", f"{folder.name}/{filename} does not exist")
        try:
            metadata = await asyncio.get_running_loop().run_in_executor(None, safetensors_metadata, path)
        except (OSError, ValueError) as exc:
            raise RouteError(400, "bad_file", f"cannot read {filename}'s header: {exc}") from None
        if metadata is None:
            raise RouteError(404, "not_found", f"{filename} has no metadata")
        return web.json_response(metadata)
