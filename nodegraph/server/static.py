"""The web canvas's files and the ready workflows, served read-only next to the API.

* ``GET /`` — ``web/index.html``. When the page was opened with ``?token=…`` (a server with an auth
  token), the token is written into the asset URLs and into an import map that appends it to every
  module under ``web/src/``: browsers send no ``Authorization`` header for ``<script>``, ``<link>`` or
  ``import``, and the security middleware wants the token on every request. When canvas files are
  missing, ``/`` is a short HTML page naming them and the fix (and :func:`add_static_routes` logs the
  same warning at start-up) instead of a blank canvas. The import map also points ComfyUI's
  ``/scripts/app.js`` and ``/scripts/api.js`` at ``web/src/comfy_app.js`` / ``comfy_api.js``, for the
  frontend extensions of custom node packs (``web/src/extensions.js``).
* ``GET /src/{name}.js``, ``GET /style.css`` — our ES modules and style sheet (flat folder, no
  sub-paths).
* ``GET /lib/litegraph.core.js``, ``GET /lib/litegraph.css`` — litegraph.js's built files, vendored in
  ``web/vendor/litegraph/`` (no npm step).
* ``GET /workflows`` — ``[{"name", "format": "ui" | "api"}]`` for each ``*.json`` in ``workflows/``;
  ``GET /workflows/{name}`` — one of them. Names are a single safe file name; resolved paths must stay
  inside the folder (symlinks out of it are refused).

The folders are found by :mod:`nodegraph.assets`: inside the installed package (a wheel) or the
clone's ``web/`` and ``workflows/`` (an editable install). Everything here only reads files; the
security middleware (Host, Origin, token) applies as to every other route.
"""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from ..assets import MissingCanvas, missing_canvas_files, web_dir, workflows_dir

log = logging.getLogger("nodegraph.server")

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
LIB_FILES = {
    "litegraph.core.js": ("vendor/litegraph/litegraph.core.js", "text/javascript"),
    "litegraph.css": ("vendor/litegraph/litegraph.css", "text/css"),
}
NO_CACHE = {"Cache-Control": "no-cache"}


def _not_found(what: str) -> web.Response:
    return web.json_response({"error": {"type": "not_found", "message": f"{what} not found",
                                        "details": "", "extra_info": {}}}, status=404)


def _inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` if ``name`` is a plain safe file name and the real path stays in ``folder``."""
    if not SAFE_NAME.match(name):
        return None
    path = (folder / name)
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_file() or not real.is_relative_to(folder.resolve()):
        return None
    return real


def render_index(text: str, token: str | None, modules: list[str]) -> str:
    """``index.html`` with ``{{q}}`` replaced by the token query and the import map filled in."""
    query = f"?token={quote(token, safe='')}" if token else ""
    imports = {f"/src/{name}": f"/src/{name}{query}" for name in modules} if token else {}
    # a pack's frontend extension imports ComfyUI's app and api modules: ours stand in (web/src/extensions.js)
    imports.update({f"/scripts/{name}.js": f"/src/comfy_{name}.js{query}" for name in ("app", "api")
                    if f"comfy_{name}.js" in modules})
    importmap = json.dumps({"imports": imports}).replace("<", "\\u003c")
    return (text.replace("{{q}}", html.escape(query, quote=True))
                .replace("{{importmap}}", importmap))


def missing_page(missing: MissingCanvas) -> str:
    """The page ``/`` serves when the canvas files are missing: what is missing, where, and the fix."""
    items = "".join(f"<li><code>{html.escape(name)}</code></li>" for name in missing.missing)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>nodegraph: canvas files "
            "missing</title></head>\n<body><h1>The web canvas's files are missing</h1>\n"
            f"<p>nodegraph's server is running (its HTTP API works), but these files are not in "
            f"<code>{html.escape(str(missing.folder))}</code>:</p>\n<ul>{items}</ul>\n"
            f"<p>Fix: {html.escape(missing.fix)}.</p>\n</body></html>\n")


class StaticFiles:
    def __init__(self, web_dir: Path, workflows_dir: Path) -> None:
        self.web_dir = web_dir
        self.src_dir = web_dir / "src"
        self.workflows_dir = workflows_dir

    async def index(self, request: web.Request) -> web.Response:
        missing = missing_canvas_files(self.web_dir)
        if missing is not None:
            return web.Response(text=missing_page(missing), status=500, content_type="text/html",
                                headers=NO_CACHE)
        path = self.web_dir / "index.html"
        modules = sorted(p.name for p in self.src_dir.glob("*.js"))
        body = render_index(path.read_text("utf-8"), request.query.get("token") or None, modules)
        return web.Response(text=body, content_type="text/html", headers=NO_CACHE)

    async def module(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = _inside(self.src_dir, name) if name.endswith(".js") else None
        if path is None:
            return _not_found(f"module {name!r}")
        return web.FileResponse(path, headers={**NO_CACHE, "Content-Type": "text/javascript"})

    async def style(self, request: web.Request) -> web.StreamResponse:
        path = _inside(self.web_dir, "style.css")
        if path is None:
            return _not_found("style.css")
        return web.FileResponse(path, headers={**NO_CACHE, "Content-Type": "text/css"})

    async def lib(self, request: web.Request) -> web.StreamResponse:
        entry = LIB_FILES.get(request.match_info["name"])
        if entry is None:
            return _not_found("library file")
        path = self.web_dir / entry[0]
        if not path.is_file():
            missing = missing_canvas_files(self.web_dir)
            fix = missing.fix if missing is not None else "reinstall nodegraph"
            return web.json_response({"error": {
                "type": "not_installed", "message": f"litegraph.js's {entry[0]} is missing: {fix}",
                "details": str(path), "extra_info": {}}}, status=404)
        return web.FileResponse(path, headers={"Content-Type": entry[1], "Cache-Control": "max-age=3600"})

    async def list_workflows(self, request: web.Request) -> web.Response:
        items = []
        if self.workflows_dir.is_dir():
            for path in sorted(self.workflows_dir.glob("*.json")):
                real = _inside(self.workflows_dir, path.name)
                if real is None:
                    continue
                try:
                    data = json.loads(real.read_text("utf-8"))
                except (OSError, ValueError):
                    continue
                fmt = "ui" if isinstance(data, dict) and isinstance(data.get("nodes"), list) else "api"
                items.append({"name": path.name, "format": fmt})
        return web.json_response(items)

    async def workflow(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = _inside(self.workflows_dir, name) if name.endswith(".json") else None
        if path is None:
            return _not_found(f"workflow {name!r}")
        return web.FileResponse(path, headers={**NO_CACHE, "Content-Type": "application/json"})


def add_static_routes(app: web.Application, web_folder: Path | None = None,
                      workflows_folder: Path | None = None, page_base: str = "") -> None:
    """Register the page, its modules, litegraph's files and the workflow routes on ``app``.

    The folders default to :func:`nodegraph.assets.web_dir` / :func:`~nodegraph.assets.workflows_dir`.
    Missing canvas files are logged here (a warning on stderr at start-up), and ``/`` says so too.
    ``page_base``: where the page is, ``""`` (at ``/``) or e.g. ``"/builtin"`` (at ``/builtin/``, when
    ComfyUI's frontend takes ``/``); its modules and files keep their absolute paths either way.
    """
    web_folder = web_dir() if web_folder is None else Path(web_folder)
    workflows_folder = workflows_dir() if workflows_folder is None else Path(workflows_folder)
    missing = missing_canvas_files(web_folder)
    if missing is not None:
        log.warning("warning: %s", missing.message())
    files = StaticFiles(web_folder, workflows_folder)
    app.router.add_get(f"{page_base}/", files.index)
    if page_base:
        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{page_base}/" + (f"?{request.query_string}" if request.query_string else ""))

        app.router.add_get(page_base, redirect)
    else:
        app.router.add_get("/index.html", files.index)
    app.router.add_get("/style.css", files.style)
    app.router.add_get("/src/{name}", files.module)
    app.router.add_get("/lib/{name}", files.lib)
    app.router.add_get("/workflows", files.list_workflows)
    app.router.add_get("/workflows/{name}", files.workflow)
