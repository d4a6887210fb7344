"""``/userdata``: the files the frontend keeps in the user folder (saved workflows, subgraph blueprints,
``user.css``, node templates), with ComfyUI's routes, parameters and answers.

| route | does |
|---|---|
| ``GET /userdata?dir=D`` | the files under ``D``: paths relative to ``D`` (``recurse=true`` goes into subfolders); ``full_info=true`` → ``[{path, size, modified, created}]`` (ms since the epoch); else ``split=true`` → ``[[path, part, …]]``. 400 without ``dir``, 404 when ``D`` does not exist |
| ``GET /v2/userdata?path=P`` | everything under ``P`` (default: the user folder): ``[{name, path, type: "file"/"directory", size?, modified?}]``, folders first; ``path`` relative to the user folder |
| ``GET /userdata/{file}`` | the file (``Content-Disposition: attachment``; ``user.css`` inline as ``text/css``); 404 when missing |
| ``POST /userdata/{file}`` | stores the raw body (any Content-Type); ``overwrite=false`` → 409 if it exists (default: overwrite); answers the path relative to the user folder, or with ``full_info=true`` ``{path, size, modified, created}`` |
| ``DELETE /userdata/{file}`` | 204; 404 when missing |
| ``POST /userdata/{file}/move/{dest}`` | rename; ``overwrite=false`` → 409 if ``dest`` exists; answers as ``POST`` |

``{file}`` is the frontend's ``encodeURIComponent(path)``: aiohttp decodes it once (``%2F`` → ``/``)
and it is never decoded again (ComfyUI decodes a second time when it sees a ``%``; here a name may
contain ``%``). Every path goes through :func:`nodegraph.user_files.resolve_inside`, the rule ``/view``
uses: no absolute paths, no ``..``, no symbolic link leading out of the user folder (403 otherwise).
Listings leave out hidden files (names starting with ``.``, as ComfyUI's ``glob`` does) and anything
whose real path is outside the folder. Writes go through a temporary file and a rename.

One deviation: a root ``user.css`` that does not exist is answered as an empty style sheet instead of
a 404 — the page links it on every load, and an empty sheet is what a missing one means.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

from aiohttp import web

from ...user_files import resolve_inside
from ..files import UNSAFE_TYPES
from .common import RouteError, query_flag, write_atomic
from .state import FrontendState

USER_CSS = "user.css"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def file_info(path: Path, relative_to: Path) -> dict:
    """ComfyUI's ``full_info`` record of one file."""
    stat = path.stat()
    return {"path": path.relative_to(relative_to).as_posix(), "size": stat.st_size,
            "modified": _ms(stat.st_mtime), "created": _ms(stat.st_ctime)}


def walk_files(folder: Path, recurse: bool, root: Path) -> list[Path]:
    """The visible files under ``folder`` (sorted), each really inside ``root``."""
    found: list[Path] = []
    real_root = root.resolve()
    for current, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recurse else []
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(current, name)
            if path.is_file() and path.resolve().is_relative_to(real_root):
                found.append(path)
    return sorted(found)


class UserData:
    def __init__(self, state: FrontendState) -> None:
        self.state = state

    @property
    def root(self) -> Path:
        return self.state.user_root

    def resolve(self, relative: str) -> Path:
        try:
            return resolve_inside(self.root, relative, "user folder")
        except ValueError as exc:
            raise RouteError(403, "bad_path", str(exc)) from None

    def target(self, request: web.Request, key: str = "file") -> Path:
        name = request.match_info.get(key, "")
        if not name:
            raise RouteError(400, "bad_path", "give a file name")
        return self.resolve(name)

    def answer(self, path: Path, full_info: bool) -> web.Response:
        if full_info:
            return web.json_response(file_info(path, self.root))
        return web.json_response(path.relative_to(self.root).as_posix())

    # -- listing ------------------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        directory = request.query.get("dir", "")
        if not directory:
            raise RouteError(400, "bad_path", "give the folder to list: ?dir=<folder>")
        folder = self.resolve(directory)
        if not folder.is_dir():
            raise RouteError(404, "not_found", f"the user folder has no folder {directory!r}")
        recurse, full, split = (query_flag(request, "recurse"), query_flag(request, "full_info"),
                                query_flag(request, "split"))
        files = await _in_thread(walk_files, folder, recurse, self.root)
        if full:
            return web.json_response([file_info(p, folder) for p in files])
        relative = [p.relative_to(folder).as_posix() for p in files]
        if split:
            return web.json_response([[r, *r.split("/")] for r in relative])
        return web.json_response(relative)

    async def list_v2(self, request: web.Request) -> web.Response:
        relative = request.query.get("path", "")
        folder = self.resolve(relative) if relative.strip("/") else self.root
        if not folder.exists():
            raise RouteError(404, "not_found", f"the user folder has nothing at {relative!r}")
        if not folder.is_dir():
            raise RouteError(400, "bad_path", f"{relative!r} is a file, not a folder")
        return web.json_response(await _in_thread(self._entries, folder))

    def _entries(self, folder: Path) -> list[dict]:
        entries = []
        real_root = self.root.resolve()
        for current, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in dirs:
                path = Path(current, name)
                entries.append({"name": name, "path": path.relative_to(self.root).as_posix(), "type": "directory"})
            for name in files:
                path = Path(current, name)
                if name.startswith(".") or not path.resolve().is_relative_to(real_root):
                    continue
                stat = path.stat()
                entries.append({"name": name, "path": path.relative_to(self.root).as_posix(), "type": "file",
                                "size": stat.st_size, "modified": stat.st_mtime})
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return entries

    # -- one file -----------------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        path = self.target(request)
        is_user_css = path == self.root / USER_CSS
        if not path.is_file():
            if is_user_css:
                return web.Response(text="", content_type="text/css", headers={"Cache-Control": "no-cache"})
            raise RouteError(404, "not_found", f"the user folder has no file {request.match_info['file']!r}")
        if is_user_css:
            ctype, disposition = "text/css", "inline"
        else:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype in UNSAFE_TYPES:
                ctype = "application/octet-stream"
            disposition = "attachment"
        return web.FileResponse(path, headers={"Content-Type": ctype, "Content-Disposition": disposition,
                                               "Cache-Control": "no-cache"})

    async def post(self, request: web.Request) -> web.Response:
        path = self.target(request)
        overwrite = request.query.get("overwrite", "true") != "false"
        if path.is_dir():
            raise RouteError(400, "bad_path", f"{request.match_info['file']!r} is a folder")
        if path.exists() and not overwrite:
            raise RouteError(409, "file_exists", f"{request.match_info['file']!r} exists already "
                             "(send overwrite=true to replace it)")
        body = await request.read()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(path, body)
        except OSError as exc:
            raise RouteError(400, "bad_path", f"cannot write {request.match_info['file']!r}: {exc.strerror}") from None
        return self.answer(path, query_flag(request, "full_info"))

    async def delete(self, request: web.Request) -> web.Response:
        path = self.target(request)
        if not path.exists() and not path.is_symlink():
            raise RouteError(404, "not_found", f"the user folder has no file {request.match_info['file']!r}")
        if path.is_dir() and not path.is_symlink():
            raise RouteError(400, "bad_path", f"{request.match_info['file']!r} is a folder; delete its files")
        path.unlink()
        return web.Response(status=204)

    async def move(self, request: web.Request) -> web.Response:
        source = self.target(request)
        dest = self.target(request, "dest")
        if not source.exists():
            raise RouteError(404, "not_found", f"the user folder has no file {request.match_info['file']!r}")
        overwrite = request.query.get("overwrite", "true") != "false"
        if dest.exists() and (not overwrite or dest.is_dir()):
            raise RouteError(409, "file_exists", f"{request.match_info['dest']!r} exists already"
                             + ("" if dest.is_dir() else " (send overwrite=true to replace it)"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        return self.answer(dest, query_flag(request, "full_info"))


async def _in_thread(func, *args):
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, func, *args)
