"""What ComfyUI's official frontend needs from the server besides the ComfyUI API of ``app.py``.

``nodegraph serve --frontend comfyui`` serves the frontend (``pip install 'nodegraph[frontend]'``) at
``/``; with the default ``--frontend builtin`` it is at ``/comfyui/`` (:mod:`.page` says why). The
routes it calls, with ComfyUI's shapes, one module each:

* :mod:`.page` — the page and its static files;
* :mod:`.users` (``/users``), :mod:`.settings` (``/settings``), :mod:`.userdata` (``/userdata``,
  ``/v2/userdata``) — the user folder ``<data_dir>/user/default/`` (:mod:`.state`);
* :mod:`.jobs_api` (``/jobs``) — the queue and the history as jobs;
* :mod:`.templates` (``/workflow_templates``, ``/templates/…``) and :mod:`.thumbnail` — our ready
  workflows in the templates dialog;
* :mod:`.subgraphs` (``/global_subgraphs``), :mod:`.models_api` (``/experiment/models``,
  ``/view_metadata``, ``/internal/folder_paths``), :mod:`.i18n` (``/i18n``), :mod:`.logs`
  (``/internal/logs``), :mod:`.mask` (``/upload/mask``), :mod:`.node_docs` (``/docs/…``, the node
  help pages).

:data:`FRONTEND_ROUTES` is their route table (also in ``/openapi.json``). Routes marked ``api`` answer
under ``/api`` too, as ComfyUI's; ``/internal/…`` and ``/templates/…`` do not (ComfyUI's do not
either). :func:`add_routes` registers everything on the application.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from ...assets import workflows_dir
from ..openapi import RouteSpec, _obj
from .common import answering_errors
from .i18n import get_i18n
from .jobs_api import JobsApi
from .logs import LogBuffer, Logs
from .models_api import ModelsApi
from .node_docs import NodeDocs
from .page import FrontendPackage, add_page_routes, check_frontend, mount
from .settings import Settings
from .state import FrontendState
from .subgraphs import GlobalSubgraphs
from .templates import TemplateLibrary, Templates
from .userdata import UserData
from .users import Users

__all__ = ["FRONTEND_ROUTES", "FrontendSetup", "add_routes", "api_prefixes", "check_frontend", "setup",
           "takes_raw_body"]

STR, BOOL = {"type": "string"}, {"type": "boolean"}


@dataclass(frozen=True)
class FrontendRoute:
    spec: RouteSpec
    #: also under ``/api`` (ComfyUI's ``routes``); ``False`` for ``/internal`` and ``/templates``
    api: bool = True


def _route(method: str, path: str, handler: str, summary: str, api: bool = True, **kw) -> FrontendRoute:
    return FrontendRoute(RouteSpec(method, path, handler, summary, **kw), api)


FRONTEND_ROUTES: tuple[FrontendRoute, ...] = (
    _route("GET", "/users", "users.get", "User profiles: {storage: 'server', migrated} (one user)"),
    _route("GET", "/settings", "settings.get_all", "The frontend's settings (an object)"),
    _route("POST", "/settings", "settings.post_all", "Merge settings (a JSON object, any Content-Type)",
           body={"type": "object"}),
    _route("GET", "/settings/{id}", "settings.get_one", "One setting's value, or null"),
    _route("POST", "/settings/{id}", "settings.post_one", "Set one setting (a JSON value, any Content-Type)"),
    _route("GET", "/userdata", "userdata.list", "Files in a folder of the user folder",
           query=(("dir", "the folder (required)"), ("recurse", "true: subfolders too"),
                  ("full_info", "true: [{path, size, modified, created}]"),
                  ("split", "true: [[path, part, ...]]")),
           responses={200: "paths", 400: "no dir", 403: "outside the user folder", 404: "no such folder"}),
    _route("GET", "/v2/userdata", "userdata.list_v2", "Files and folders under a path of the user folder",
           query=(("path", "the folder (default: the user folder)"),)),
    _route("GET", "/userdata/{file}", "userdata.get", "A file of the user folder",
           responses={200: "the file", 403: "outside the user folder", 404: "not found"}),
    _route("POST", "/userdata/{file}", "userdata.post", "Store a file in the user folder (the raw body)",
           query=(("overwrite", "false: 409 if it exists (default true)"),
                  ("full_info", "true: answer {path, size, modified, created}")),
           responses={200: "its path", 403: "outside the user folder", 409: "exists"}),
    _route("DELETE", "/userdata/{file}", "userdata.delete", "Delete a file of the user folder",
           responses={204: "deleted", 404: "not found"}),
    _route("POST", "/userdata/{file}/move/{dest}", "userdata.move", "Rename a file of the user folder",
           query=(("overwrite", "false: 409 if dest exists (default true)"), ("full_info", "true: file info")),
           responses={200: "its new path", 404: "not found", 409: "dest exists"}),
    _route("GET", "/jobs", "jobs.list", "Queued, running and finished prompts as jobs",
           query=(("status", "comma list: pending, in_progress, completed, failed, cancelled"),
                  ("workflow_id", "only this UI workflow's jobs"), ("sort_by", "created_at or execution_duration"),
                  ("sort_order", "desc (default) or asc"), ("limit", "page size"), ("offset", "skip this many"))),
    _route("POST", "/jobs/cancel", "jobs.cancel_many", "Cancel queued or running jobs",
           body=_obj(job_ids={"type": "array", "items": STR})),
    _route("GET", "/jobs/{job_id}", "jobs.get", "One job with its outputs and workflow",
           responses={200: "the job", 404: "unknown"}),
    _route("POST", "/jobs/{job_id}/cancel", "jobs.cancel", "Cancel a queued job or interrupt the running one",
           responses={200: "{cancelled: [id]}", 404: "unknown", 409: "finished already"}),
    _route("GET", "/workflow_templates", "templates.workflow_templates", "Node packs' example workflows by pack"),
    _route("GET", "/templates/{name}", "templates.get_file", "Template index, workflows and thumbnails", api=False),
    _route("GET", "/global_subgraphs", "subgraphs.list", "Subgraph blueprints offered to every user"),
    _route("GET", "/global_subgraphs/{id}", "subgraphs.get", "One blueprint with its JSON text (data)"),
    _route("GET", "/experiment/models", "models.list_folders", "Model folders and their paths"),
    _route("GET", "/experiment/models/{folder}", "models.files", "Model files of a folder, with sizes and times"),
    _route("GET", "/view_metadata/{folder}", "models.view_metadata", "A .safetensors file's __metadata__",
           query=(("filename", "the file, relative to the folder"),)),
    _route("GET", "/i18n", "i18n", "Translations node packs add to the frontend"),
    _route("POST", "/upload/mask", "mask", "Store a painted mask as the alpha of an image",
           multipart=_obj(image={"type": "string", "format": "binary"}, original_ref=STR, type=STR,
                          subfolder=STR, overwrite=STR),
           responses={200: "{name, subfolder, type}", 400: "bad form", 404: "no such original"}),
    _route("GET", "/internal/logs", "logs.text", "The server's recent log as text", api=False),
    _route("GET", "/internal/logs/raw", "logs.raw", "The server's recent log entries", api=False),
    _route("PATCH", "/internal/logs/subscribe", "logs.subscribe", "Send new log entries to a WebSocket client",
           api=False, body=_obj(enabled=BOOL, clientId=STR)),
    _route("GET", "/internal/folder_paths", "models.folder_paths", "Model folders' paths", api=False),
    _route("GET", "/docs/{node}/{file}", "docs.get", "A node's help page (Markdown; {file} is <locale>.md)",
           api=False, responses={200: "the page", 404: "no page"}),
)


#: the routes whose POST body is a file or a value (any Content-Type): the frontend sends them as text/plain
RAW_BODY_ROUTES = ("/userdata/", "/settings")


def takes_raw_body(path: str) -> bool:
    """Whether a request path (under any prefix: ``/api``, ``/comfyui``, ``/comfyui/api``) is one of
    :data:`RAW_BODY_ROUTES` (for the security check's Content-Type rule)."""
    for prefix in ("/comfyui", "/api"):
        if path.startswith(prefix + "/"):
            path = path[len(prefix):]
    return path.startswith(RAW_BODY_ROUTES)


def api_prefixes(base: str) -> tuple[str, ...]:
    """The prefixes ComfyUI's API routes answer under: ``""`` and ``/api``, plus ``base`` and
    ``base/api`` when the frontend page is served under ``base`` (it calls its API base-relative)."""
    return ("", "/api") + ((base, f"{base}/api") if base else ())


@dataclass
class FrontendSetup:
    """What :func:`add_routes` decided: where the page is, and the prefixes ``app.py`` registers its
    own routes under."""

    state: FrontendState
    base: str
    prefixes: tuple[str, ...]

    def upload_paths(self, paths: set[str]) -> frozenset[str]:
        """The upload routes' paths under every prefix but ``/api`` (the security check strips that)."""
        return frozenset(prefix + p for p in paths for prefix in self.prefixes if prefix != "/api")


def setup(server: Any, package: FrontendPackage | None, model_kinds: Callable[[Any], list[str]],
          list_models: Callable[[Path], list[str]]) -> FrontendSetup:
    """Build the shared state (the user folder is created) for the package :func:`check_frontend`
    found."""
    config = server.config
    base = mount(config.frontend)
    state = FrontendState(server, Path(config.data_dir) / "user", model_kinds, list_models,
                          blueprint_dirs=(workflows_dir() / "subgraphs", Path(config.data_dir) / "subgraphs"))
    state.ensure_user_folder()
    state.extras["package"] = package
    return FrontendSetup(state, base, api_prefixes(base) if package is not None or not base else ("", "/api"))


def add_routes(app: web.Application, frontend: FrontendSetup) -> None:
    """Register :data:`FRONTEND_ROUTES` and the page on ``app`` (after ``app.py``'s routes)."""
    state = frontend.state
    server = state.server
    buffer = LogBuffer(server.hub.post)
    config = server.config
    scratch = Path(config.data_dir) / "uploads"

    async def mask(request: web.Request) -> web.StreamResponse:
        from .mask import upload_mask

        return await upload_mask(request, state.paths, scratch, config.max_upload_bytes, config.max_image_pixels)

    handlers = {"users": Users(state), "settings": Settings(state), "userdata": UserData(state),
                "jobs": JobsApi(state), "templates": Templates(TemplateLibrary()),
                "subgraphs": GlobalSubgraphs(state), "models": ModelsApi(state), "logs": Logs(state, buffer),
                "docs": NodeDocs(state)}
    functions = {"i18n": get_i18n, "mask": mask}
    plain = tuple(p for p in frontend.prefixes if not p.endswith("/api"))
    for route in FRONTEND_ROUTES:
        owner, _, method = route.spec.handler.partition(".")
        handler = getattr(handlers[owner], method) if method else functions[owner]
        for prefix in (frontend.prefixes if route.api else plain):
            app.router.add_route(route.spec.method, prefix + route.spec.path, answering_errors(handler))
    add_page_routes(app, state.extras["package"], frontend.base)

    async def start_logs(app: web.Application) -> None:
        buffer.install()

    async def stop_logs(app: web.Application) -> None:
        buffer.remove()

    app.on_startup.append(start_logs)
    app.on_cleanup.append(stop_logs)
