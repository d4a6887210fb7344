"""ComfyUI's official frontend (the ``comfyui-frontend-package`` distribution) served as static files.

``pip install 'nodegraph[frontend]'`` installs the package; its ``static/`` folder (``index.html``,
``assets/``, ``scripts/``, ``extensions/``, ``fonts/``, …) is found through the importable module
``comfyui_frontend_package``, as ComfyUI finds it. Where the page is served (:func:`mount`):

* ``nodegraph serve --frontend comfyui``: at ``/``, where ComfyUI serves it; our canvas moves to
  ``/builtin/``.
* ``--frontend builtin`` (the default): our canvas stays at ``/`` and ComfyUI's frontend, when
  installed, answers at ``/comfyui/``. The page computes its API base from its own path (everything
  before the last ``/``), so under ``/comfyui/`` it calls ``/comfyui/api/…``, ``/comfyui/ws``,
  ``/comfyui/internal/…`` and ``/comfyui/templates/…``; the application registers those aliases too
  (:func:`nodegraph.server.comfy_frontend.api_prefixes`). A few images the page asks for by absolute
  path (``/assets/images/…``) are served at ``/assets/`` as well.

Files are read-only and confined to the package's folder (aiohttp's static resource: no ``..``, no
symbolic links out). ``index.html`` is sent with ``Cache-Control: no-cache``; the hashed files under
``assets/`` may be cached. The page also links a ``user.css`` next to itself (ComfyUI's web root has
none, and answers 404): here it is an empty style sheet, so a fresh page logs no failed request.
"""

from __future__ import annotations

import html
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

log = logging.getLogger("nodegraph.server")

#: the distribution and module that carry the frontend
DISTRIBUTION = "comfyui-frontend-package"
MODULE = "comfyui_frontend_package"
#: the version nodegraph is tested with (pyproject's ``frontend`` extra pins it)
TESTED_VERSION = "1.58.1"
INSTALL_HINT = "pip install 'nodegraph[frontend]'"
NO_CACHE = {"Cache-Control": "no-cache"}
FRONTEND_CHOICES = ("builtin", "comfyui")


@dataclass(frozen=True)
class FrontendPackage:
    """An installed ``comfyui-frontend-package``: its ``static`` folder and version."""

    static_dir: Path
    version: str

    @property
    def index(self) -> Path:
        return self.static_dir / "index.html"


def find_frontend() -> FrontendPackage | None:
    """The installed frontend package, or ``None`` (not installed, or without its ``static/index.html``)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        static = Path(location) / "static"
        if (static / "index.html").is_file():
            from importlib.metadata import PackageNotFoundError, version

            try:
                found = version(DISTRIBUTION)
            except PackageNotFoundError:
                found = "unknown"
            return FrontendPackage(static, found)
    return None


def not_installed_page(base: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>nodegraph: ComfyUI's "
            "frontend is not installed</title></head>\n<body><h1>ComfyUI's frontend is not installed</h1>\n"
            f"<p>This server would serve ComfyUI's official frontend at <code>{html.escape(base or '/')}</code>, "
            f"but the <code>{DISTRIBUTION}</code> package is not installed.</p>\n"
            f"<p>Fix: <code>{html.escape(INSTALL_HINT)}</code> and restart <code>nodegraph serve</code>. "
            "nodegraph's own canvas works without it.</p>\n</body></html>\n")


class FrontendPage:
    """The handlers serving one installed frontend under ``base`` (``""`` or ``"/comfyui"``)."""

    def __init__(self, package: FrontendPackage | None, base: str) -> None:
        self.package = package
        self.base = base

    async def index(self, request: web.Request) -> web.StreamResponse:
        if self.package is None:
            return web.Response(text=not_installed_page(self.base), status=404, content_type="text/html",
                                headers=NO_CACHE)
        return web.FileResponse(self.package.index, headers={**NO_CACHE, "Content-Type": "text/html"})

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(f"{self.base}/{query}")

    async def user_css(self, request: web.Request) -> web.Response:
        return web.Response(text="/* nodegraph: no site-wide user.css */\n", content_type="text/css",
                            headers=NO_CACHE)

    async def file(self, request: web.Request) -> web.StreamResponse:
        assert self.package is not None
        name = request.match_info["name"]
        path = self.package.static_dir / name
        return web.FileResponse(path, headers=NO_CACHE)


def mount(frontend: str) -> str:
    """Where ComfyUI's frontend is served for ``serve --frontend <frontend>``: ``""`` (at ``/``) or
    ``"/comfyui"``."""
    if frontend not in FRONTEND_CHOICES:
        raise ValueError(f"unknown frontend {frontend!r}; choose one of {', '.join(FRONTEND_CHOICES)}")
    return "" if frontend == "comfyui" else "/comfyui"


def add_page_routes(app: web.Application, package: FrontendPackage | None, base: str) -> None:
    """Register the page at ``base + "/"`` and its static files under ``base``."""
    page = FrontendPage(package, base)
    app.router.add_get(f"{base}/", page.index)
    if base:
        app.router.add_get(base, page.redirect)
    else:
        app.router.add_get("/index.html", page.index)
    if package is None:
        return
    app.router.add_get(f"{base}/user.css", page.user_css)
    for entry in sorted(package.static_dir.iterdir()):
        if entry.name.startswith(".") or entry.name == "index.html":
            continue
        if entry.is_dir():
            app.router.add_static(f"{base}/{entry.name}", entry, follow_symlinks=False,
                                  append_version=False)
        elif entry.is_file():
            app.router.add_get(f"{base}/{{name:{_literal(entry.name)}}}", page.file)
    if base and (package.static_dir / "assets").is_dir():
        # the page also asks for a few images by absolute path (/assets/images/…: the favicon's
        # progress frames, provider logos); nothing of ours lives under /assets
        app.router.add_static("/assets", package.static_dir / "assets", follow_symlinks=False)


def _literal(name: str) -> str:
    """A route pattern matching exactly ``name`` (aiohttp's ``{var:regex}``)."""
    import re

    return re.escape(name).replace("{", "\\{").replace("}", "\\}")


def check_frontend(frontend: str) -> FrontendPackage | None:
    """The package to serve, after checking the choice: ``--frontend comfyui`` without the package is an
    error naming the fix; a version other than the tested one is logged."""
    mount(frontend)
    package = find_frontend()
    if package is None:
        if frontend == "comfyui":
            raise ValueError(f"--frontend comfyui needs ComfyUI's frontend package: {INSTALL_HINT} "
                             "(or use --frontend builtin, nodegraph's own canvas)")
        return None
    if package.version not in ("unknown", TESTED_VERSION):
        log.info("ComfyUI frontend %s found (nodegraph is tested with %s)", package.version, TESTED_VERSION)
    return package
