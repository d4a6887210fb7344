"""The web canvas's files and the ready workflows, served read-only next to the API.

* ``GET /`` — ``web/index.html``. When the page was opened with ``?token=…`` (a server with an auth
  token), the token is written into the asset URLs and into an import map that appends it to every
  module under ``web/src/``: browsers send no ``Authorization`` header for ``<script>``, ``<link>`` or
  ``import``, and the security middleware wants the token on every request.
* ``GET /src/{name}.js``, ``GET /style.css`` — our ES modules and style sheet (flat folder, no
  sub-paths).
* ``GET /lib/litegraph.core.js``, ``GET /lib/litegraph.css`` — litegraph.js's built files from
  ``web/node_modules`` (``npm ci --prefix web``).
* ``GET /workflows`` — ``[{"name", "format": "ui" | "api"}]`` for each ``*.json`` in ``workflows/``;
  ``GET /workflows/{name}`` — one of them. Names are a single safe file name; resolved paths must stay
  inside the folder (symlinks out of it are refused).

Everything here only reads files; the security middleware (Host, Origin, token) applies as to every
other route.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "web"
WORKFLOWS_DIR = ROOT / "workflows"

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
LIB_FILES = {
    "litegraph.core.js": ("node_modules/litegraph.js/build/litegraph.core.js", "text/javascript"),
    "litegraph.css": ("node_modules/litegraph.js/css/litegraph.css", "text/css"),
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
    importmap = json.dumps({"imports": imports}).replace("<", "\\u003c")
    return (text.replace("{{q}}", html.escape(query, quote=True))
                .replace("{{importmap}}", importmap))


class StaticFiles:
    def __init__(self, web_dir: Path, workflows_dir: Path) -> None:
        self.web_dir = web_dir
        self.src_dir = web_dir / "src"
        self.workflows_dir = workflows_dir

    async def index(self, request: web.Request) -> web.Response:
        path = self.web_dir / "index.html"
        if not path.is_file():
            return _not_found("web/index.html")
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
            return web.json_response({"error": {
                "type": "not_installed", "message": "litegraph.js is not installed: run "
                "'npm ci --prefix web'", "details": str(path), "extra_info": {}}}, status=404)
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


def add_static_routes(app: web.Application, web_dir: Path = WEB_DIR,
                      workflows_dir: Path = WORKFLOWS_DIR) -> None:
    """Register the page, its modules, litegraph's files and the workflow routes on ``app``."""
    files = StaticFiles(web_dir, workflows_dir)
    app.router.add_get("/", files.index)
    app.router.add_get("/index.html", files.index)
    app.router.add_get("/style.css", files.style)
    app.router.add_get("/src/{name}", files.module)
    app.router.add_get("/lib/{name}", files.lib)
    app.router.add_get("/workflows", files.list_workflows)
    app.router.add_get("/workflows/{name}", files.workflow)
