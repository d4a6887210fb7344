"""The route table and the OpenAPI 3 description built from it (``GET /openapi.json``).

``app.py`` registers exactly the routes listed in :data:`ROUTES` (each also under ``/api``) and
``comfy_frontend`` those of its ``FRONTEND_ROUTES``; both are described here, so the description
cannot drift from what the server answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: str  # method name on the Api object
    summary: str
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
    body: dict[str, Any] | None = None  # JSON schema of a JSON body
    multipart: dict[str, Any] | None = None
    responses: dict[int, str] = field(default_factory=lambda: {200: "OK"})


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


STR, BOOL, NUM, INT_ = {"type": "string"}, {"type": "boolean"}, {"type": "number"}, {"type": "integer"}
IDS = {"type": "array", "items": STR}
ERR = {400: "invalid request (ComfyUI error shape: {error, node_errors})", 401: "token required",
       403: "refused Host or Origin", 413: "body too large", 415: "not application/json"}

ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/ws", "websocket", "WebSocket of ComfyUI events for one client",
              query=(("clientId", "your client id; events of prompts you queue with it come here"),),
              responses={101: "switching protocols"}),
    RouteSpec("POST", "/prompt", "post_prompt", "Queue a prompt (API-format or canvas workflow)",
              body=_obj(prompt={"type": "object"}, client_id=STR, prompt_id=STR, extra_data={"type": "object"},
                        front=BOOL, number=NUM, partial_execution_targets=IDS),
              responses={200: "{prompt_id, number, node_errors}", **ERR,
                         503: "queue full"}),
    RouteSpec("GET", "/prompt", "get_prompt", "Queue size: {exec_info: {queue_remaining}}"),
    RouteSpec("GET", "/queue", "get_queue", "Running and pending prompts"),
    RouteSpec("POST", "/queue", "post_queue", "Clear the queue or cancel queued prompts by id",
              body=_obj(clear=BOOL, delete=IDS), responses={200: "OK", **ERR}),
    RouteSpec("GET", "/history", "get_history", "Finished prompts, oldest first",
              query=(("max_items", "newest N (or N after offset)"), ("offset", "skip this many (oldest first)"),
                     ("include_cancelled", "1: also the prompts deleted from the queue before they ran"))),
    RouteSpec("GET", "/history/{prompt_id}", "get_history_item", "One finished prompt, or {}",
              query=(("include_cancelled", "1: also if it was deleted from the queue before it ran"),)),
    RouteSpec("POST", "/history", "post_history", "Clear history or delete entries by id",
              body=_obj(clear=BOOL, delete=IDS), responses={200: "OK", **ERR}),
    RouteSpec("POST", "/interrupt", "post_interrupt", "Interrupt the running prompt (only it, if prompt_id given)",
              body=_obj(prompt_id=STR), responses={200: "OK", **ERR}),
    RouteSpec("POST", "/free", "post_free", "Free memory after the current prompt",
              body=_obj(unload_models=BOOL, free_memory=BOOL), responses={200: "OK", **ERR}),
    RouteSpec("GET", "/object_info", "get_object_info", "Every node class, in ComfyUI's shape"),
    RouteSpec("GET", "/object_info/{node_class}", "get_object_info_one", "One node class, or {}"),
    RouteSpec("GET", "/system_stats", "get_system_stats", "System and device information"),
    RouteSpec("GET", "/features", "get_features", "Server feature flags"),
    RouteSpec("POST", "/upload/image", "post_upload_image", "Upload an image to the input/temp/output folder",
              multipart=_obj(image={"type": "string", "format": "binary"}, type=STR, subfolder=STR, overwrite=STR),
              responses={200: "{name, subfolder, type}", **ERR}),
    RouteSpec("GET", "/view", "get_view", "Download a file from the output/input/temp folder",
              query=(("filename", "file name (may end ' [input]' etc.)"), ("type", "output (default), input, temp"),
                     ("subfolder", "subfolder"), ("preview", "webp;90 or jpeg;80"), ("channel", "rgba, rgb or a")),
              responses={200: "the file", 400: "bad name or type", 403: "outside the folder", 404: "not found"}),
    RouteSpec("GET", "/models", "get_models", "Model folder names"),
    RouteSpec("GET", "/models/{folder}", "get_models_folder", "Model files in a folder",
              responses={200: "file names", 404: "unknown folder"}),
    RouteSpec("GET", "/embeddings", "get_embeddings", "Embedding names"),
    RouteSpec("GET", "/extensions", "get_extensions", "Frontend extension scripts"),
    RouteSpec("GET", "/openapi.json", "get_openapi", "This description"),
)


def openapi_document(version: str, more: tuple[RouteSpec, ...] = ()) -> dict[str, Any]:
    """The description of :data:`ROUTES` and ``more`` (``app.py`` passes the routes ComfyUI's frontend
    calls, ``comfy_frontend.FRONTEND_ROUTES``)."""
    paths: dict[str, Any] = {}
    for route in ROUTES + tuple(more):
        op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler,
                              "responses": {str(code): {"description": text}
                                            for code, text in route.responses.items()}}
        params = [{"name": name, "in": "query", "required": False, "description": text,
                   "schema": {"type": "string"}} for name, text in route.query]
        params += [{"name": part.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
                   for part in route.path.split("/") if part.startswith("{")]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": False, "content": {"application/json": {"schema": route.body}}}
        if route.multipart is not None:
            op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": route.multipart}}}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "nodegraph", "version": version,
                 "description": "ComfyUI-compatible API. Every path also answers under /api. When the "
                                "server has a token, send 'Authorization: Bearer <token>' or '?token='."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "token": {"type": "apiKey", "in": "query", "name": "token"}}},
        "security": [{}, {"bearer": []}, {"token": []}],
        "paths": paths,
    }
