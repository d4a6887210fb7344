"""The aiohttp application: ComfyUI's routes (also under ``/api``) wired to the store and the job runner.

``create_app(config, engine=None, make_runner=None)`` builds everything from its arguments — no
module-level state — so tests can start as many servers as they like. Jobs run on the runner (the
local one unless the caller, e.g. the CLI's ``--ray``, passes another factory); handlers only
validate, read and write the store, and talk to the runner through the
:class:`~nodegraph.queue.protocol.JobRunner` protocol. No torch here: engine work goes through
:class:`~nodegraph.executor.Engine`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import platform
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import jsontext
from ..cache import OutputCache
from ..errors import ValidationFailed, WorkflowFormatError
from ..executor import Engine
from ..plan import Plan
from ..plan_memo import PlanMemo
from ..policies import requested_policies
from ..queue import DuplicatePrompt, Job, JobRunner, JobStore, LocalRunner, QueueFull, RunnerFactory
from ..queue import messages
from . import comfy_frontend
from .comfy_errors import bad_request, prompt_error_response
from . import custom_nodes
from .config import ServerConfig
from .features import FEATURES
from .files import clear_previews, upload_image, view
from .openapi import ROUTES, openapi_document
from .request_json import OFF_LOOP_BYTES, JsonBodyError, parse_json
from .security import error_middleware, security_middleware
from .static import add_static_routes
from .ws import WebSocketHub
MODEL_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
                 "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
                 "model_patches", "audio_encoders",
                 # nodegraph's own folders (language/vision nodes, image prompts)
                 "llm", "captioners", "safety", "ipadapter")
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft",
                    ".param")  # ncnn networks (upscale_models): name.param + name.bin, listed as the .param
MAX_HISTORY_PAGE = 10_000
MAX_PROMPT_ID = 200


class BadRequest(Exception):
    def __init__(self, type_: str, message: str, status: int = 400, **extra: Any):
        super().__init__(message)
        self.type, self.message, self.status, self.extra = type_, message, status, extra

    def response(self) -> web.Response:
        return web.json_response(bad_request(self.type, self.message, **self.extra), status=self.status)


@dataclass
class Server:
    """What one running server holds; reachable from handlers as ``request.app[SERVER]``."""

    config: ServerConfig
    engine: Engine
    store: JobStore
    hub: WebSocketHub
    runner: JobRunner
    owns_engine: bool


SERVER = web.AppKey("nodegraph_server", Server)


def build_engine(config: ServerConfig) -> Engine:
    from ..registry import default_registry

    registry = default_registry()
    for name in config.nodes_modules:
        registry.add_module(importlib.import_module(name))
    cache = OutputCache(config.cache_ram_bytes, config.cache_vram_bytes)
    engine = Engine(registry, cache=cache, paths=config.paths, device=config.device, threads=config.threads)
    models = engine.services["models"]
    models.low_vram, models.vram_budget = config.low_vram, config.vram_budget_bytes
    if config.custom_nodes_dirs:
        custom_nodes.load_packs(engine, config.custom_nodes_dirs, config.disabled_custom_nodes)
    return engine


class Api:
    """The route handlers."""

    def __init__(self, server: Server) -> None:
        self.s = server
        self.config = server.config
        self.paths = server.engine.paths
        #: plans of recent prompts, reused when one comes again (the same, or with other constants)
        self.plans = PlanMemo(server.engine.registry, server.engine.paths)

    # -- helpers ----------------------------------------------------------------------------------

    async def json_body(self, request: web.Request, required: bool = True) -> Any:
        raw = await request.read()
        if not raw.strip():
            if required:
                raise BadRequest("empty_body", "the request needs a JSON body")
            return {}
        try:
            if len(raw) >= OFF_LOOP_BYTES:  # a big prompt: parse it without stalling the event loop
                return await self.in_thread(parse_json, raw)
            return parse_json(raw)
        except JsonBodyError as exc:
            raise BadRequest(exc.kind, exc.message) from None

    async def in_thread(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    # -- websocket --------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        def greet(client_id: str) -> list[str]:
            greeting = [messages.status(self.s.runner.queue_remaining(), sid=client_id)]
            for prompt_id, node in self.s.runner.executing_for(client_id):
                greeting.append(messages.encode("executing", {"node": node, "display_node": node,
                                                              "prompt_id": prompt_id}))
            return greeting

        return await self.s.hub.serve(request, greet)

    # -- prompts ----------------------------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("invalid_prompt", "the body must be a JSON object with a 'prompt'")
        status, payload = await self.in_thread(self.accept_prompt, body)
        if status == 200:
            self.s.runner.broadcast_status()
        headers = {"Retry-After": "5"} if status == 503 else None
        return web.json_response(payload, status=status, headers=headers)

    def accept_prompt(self, body: dict) -> tuple[int, dict]:
        """Validate and queue (on a thread: validation may read files, the commit waits for disk)."""
        number = body.get("number")
        store = self.s.store
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            return 400, bad_request("invalid_prompt", "'number' must be a number")
        if "prompt" not in body:
            if number is None:
                store.bump_counter()
            return 400, bad_request("no_prompt", "No prompt provided", "No prompt provided")
        try:
            prompt, extra_data, targets, client_id, prompt_id = self.parse_prompt_body(body)
            prompt_text = jsontext.dumps(prompt)  # the plans' key, and what the job store writes
            plan, node_errors = self.plan_prompt(prompt, targets, extra_data, prompt_text)
        except BadRequest as exc:
            if number is None:
                store.bump_counter()
            return exc.status, bad_request(exc.type, exc.message, **exc.extra)
        except ValidationFailed as exc:
            if number is None:
                store.bump_counter()
            return 400, prompt_error_response(exc.errors, prompt, self.s.engine.registry, self.paths)
        except RecursionError:  # a guard missed a deep structure: still a clean answer
            if number is None:
                store.bump_counter()
            return 400, bad_request("json_too_deep", "the prompt nests its values too deeply to be checked")
        job = Job(prompt_id, 0, prompt, extra_data, plan.outputs, client_id)
        try:
            store.enqueue(job, number=number, front=bool(body.get("front")), max_queue=self.config.max_queue,
                          prompt_text=prompt_text)
        except QueueFull as exc:
            return 503, bad_request("queue_full", str(exc))
        except DuplicatePrompt as exc:
            return 400, bad_request("duplicate_prompt_id", str(exc))
        self.s.runner.prepared(prompt_id, plan, prompt=prompt)
        self.s.runner.notify()  # from this thread: the job starts without waiting for the event loop's turn
        return 200, {"prompt_id": prompt_id, "number": job.number, "node_errors": node_errors}

    def parse_prompt_body(self, body: dict) -> tuple[dict, dict, list[str] | None, str | None, str]:
        prompt = body["prompt"]
        from ..workflow.ui_format import is_ui_workflow, ui_to_api

        extra_data = body.get("extra_data") or {}
        if not isinstance(extra_data, dict):
            raise BadRequest("invalid_prompt", "'extra_data' must be a JSON object")
        extra_data = dict(extra_data)
        if is_ui_workflow(prompt):  # a canvas workflow: convert here, keep it for the PNG metadata
            nodes = prompt.get("nodes")
            self.check_node_count(len(nodes) if isinstance(nodes, list) else 0)
            try:
                converted = ui_to_api(prompt, self.s.engine.registry)
            except (WorkflowFormatError, ValueError, KeyError, TypeError) as exc:
                raise BadRequest("invalid_prompt", f"the canvas workflow cannot be converted: {exc}") from None
            extra_data.setdefault("extra_pnginfo", {}).setdefault("workflow", prompt)
            prompt = converted
        if not isinstance(prompt, dict):
            raise BadRequest("invalid_prompt", "'prompt' must be an API-format workflow: a JSON object of "
                             "nodes keyed by id")
        self.check_node_count(len(prompt))
        client_id = body.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            raise BadRequest("invalid_prompt", "'client_id' must be a string")
        if client_id:
            extra_data["client_id"] = client_id
        prompt_id = body.get("prompt_id") or uuid.uuid4().hex
        if not isinstance(prompt_id, str) or len(prompt_id) > MAX_PROMPT_ID or not prompt_id.isprintable():
            raise BadRequest("invalid_prompt", f"'prompt_id' must be a printable string of at most "
                             f"{MAX_PROMPT_ID} characters")
        targets = body.get("partial_execution_targets")
        if targets is not None:
            if not isinstance(targets, list) or not all(isinstance(t, (str, int)) for t in targets):
                raise BadRequest("invalid_prompt", "'partial_execution_targets' must be a list of node ids")
            targets = [str(t) for t in targets]
        return prompt, extra_data, targets, client_id or None, prompt_id

    def check_node_count(self, count: int) -> None:
        """Refuse a prompt of more than ``max_prompt_nodes`` nodes before any work is done on it."""
        limit = self.config.max_prompt_nodes
        if count > limit:
            raise BadRequest("prompt_too_large", f"the prompt has {count} nodes; this server accepts at most "
                             f"{limit} per prompt (serve --max-prompt-nodes)", count=count, limit=limit)

    def check_prompt(self, prompt: dict, targets: list[str] | None,
                     extra_data: dict | None = None) -> tuple[list[str], dict]:
        """The outputs to run and the node errors of the others (ComfyUI runs the valid outputs);
        raises :class:`ValidationFailed` when none is valid.

        ``extra_data`` may switch on workflow policies (``{"require_safety": true}``)."""
        plan, node_errors = self.plan_prompt(prompt, targets, extra_data)
        return plan.outputs, node_errors

    def plan_prompt(self, prompt: dict, targets: list[str] | None, extra_data: dict | None = None,
                    prompt_text: str | None = None):
        """The plan of the outputs to run (one validation walk; the runner runs it as it is) and the
        node errors of the others, as :meth:`check_prompt`. With ``prompt_text`` (the prompt's JSON),
        a plan kept from an earlier prompt serves when it can (:mod:`nodegraph.plan_memo`)."""
        engine = self.s.engine

        def validate() -> Plan:
            return engine.validate(prompt, targets, extra_data, partial=True)

        if prompt_text is None or requested_policies(engine.policies, extra_data):
            plan = validate()
        else:
            plan = self.plans.plan(prompt, prompt_text, targets, validate)
        if not plan.node_errors:
            return plan, {}
        response = prompt_error_response(plan.node_errors, prompt, engine.registry, self.paths)
        return plan, response["node_errors"]

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.s.runner.queue_remaining()}})

    # -- queue and history ------------------------------------------------------------------------

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.Response(text=self.s.store.queue_json(), content_type="application/json")

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("invalid_request", "send {\"clear\": true} or {\"delete\": [ids]}")
        result: dict[str, Any] = {}
        if body.get("clear"):
            result["cleared"] = await self.in_thread(self.s.store.clear_pending)
        if "delete" in body:
            ids = self._ids(body["delete"])
            result["deleted"] = await self.in_thread(self.s.store.delete_pending, ids)
        self.s.runner.broadcast_status()
        return web.json_response(result)

    @staticmethod
    def _ids(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest("invalid_request", "'delete' must be a list of prompt ids (strings)")
        return value

    async def get_history(self, request: web.Request) -> web.Response:
        """ComfyUI's history, each entry with our run record under ``nodegraph`` (run status, workflow
        name, times: :mod:`nodegraph.queue.run_status`); ``?include_cancelled=1`` adds the jobs deleted
        from the queue before they ran (ComfyUI keeps none, so they are left out by default)."""
        max_items = self._int_query(request, "max_items", None)
        offset = self._int_query(request, "offset", -1)
        if max_items is not None and max_items < 0:
            raise BadRequest("invalid_request", "'max_items' must be 0 or more")
        if max_items is None and offset < 0:
            max_items = MAX_HISTORY_PAGE
        text = self.s.store.history_json(
            max_items=None if max_items is None else min(max_items, MAX_HISTORY_PAGE), offset=offset,
            include_cancelled=self._flag_query(request, "include_cancelled"))
        return web.Response(text=text, content_type="application/json")

    @staticmethod
    def _flag_query(request: web.Request, name: str) -> bool:
        """``?name=1``/``true``/``yes`` (our own query flags; ComfyUI's clients never send them)."""
        return request.query.get(name, "").lower() in ("1", "true", "yes")

    @staticmethod
    def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise BadRequest("invalid_request", f"'{name}' must be an integer, not {raw!r}") from None

    async def get_history_item(self, request: web.Request) -> web.Response:
        text = self.s.store.history_json(prompt_id=request.match_info["prompt_id"],
                                         include_cancelled=self._flag_query(request, "include_cancelled"))
        return web.Response(text=text, content_type="application/json")

    async def post_history(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("invalid_request", "send {\"clear\": true} or {\"delete\": [ids]}")
        result: dict[str, Any] = {}
        if body.get("clear"):
            result["cleared"] = await self.in_thread(self.s.store.clear_history)
        if "delete" in body:
            result["deleted"] = await self.in_thread(self.s.store.delete_history, self._ids(body["delete"]))
        return web.json_response(result)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await self.json_body(request, required=False)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id is not None and not isinstance(prompt_id, str):
            raise BadRequest("invalid_request", "'prompt_id' must be a string")
        return web.json_response({"interrupted": self.s.runner.interrupt(prompt_id)})

    async def post_free(self, request: web.Request) -> web.Response:
        body = await self.json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("invalid_request", "send {\"unload_models\": bool, \"free_memory\": bool}")
        self.s.runner.request_free(bool(body.get("unload_models")), bool(body.get("free_memory")))
        return web.json_response({})

    # -- descriptions -----------------------------------------------------------------------------

    async def get_object_info(self, request: web.Request) -> web.Response:
        info = await self.in_thread(lambda: self.s.engine.registry.object_info(paths=self.paths))
        return web.json_response(info, dumps=_dumps)

    async def get_object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = await self.in_thread(lambda: self.s.engine.registry.object_info(name, paths=self.paths))
        return web.json_response(info, dumps=_dumps)

    async def get_system_stats(self, request: web.Request) -> web.Response:
        from .. import __version__

        stats = await self.in_thread(self.s.engine.device_stats)
        return web.json_response({
            "system": {"os": os.name, "ram_total": stats.ram_total, "ram_free": stats.ram_free,
                       "comfyui_version": f"nodegraph {__version__}", "nodegraph_version": __version__,
                       "required_frontend_version": None, "installed_templates_version": None,
                       "required_templates_version": None, "python_version": sys.version,
                       "pytorch_version": stats.torch_version, "embedded_python": False,
                       "argv": sys.argv, "platform": platform.platform()},
            "devices": [device.to_dict() for device in stats.devices]})

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response({**FEATURES, "max_upload_size": self.config.max_upload_bytes})

    async def get_models(self, request: web.Request) -> web.Response:
        return web.json_response(model_folder_names(self.paths))

    async def get_models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in model_folder_names(self.paths):
            raise BadRequest("not_found", f"unknown model folder {folder!r}", status=404)
        return web.json_response(await self.in_thread(list_model_names, self.paths, folder))

    async def get_embeddings(self, request: web.Request) -> web.Response:
        names = await self.in_thread(list_model_names, self.paths, "embeddings")
        return web.json_response(sorted({os.path.splitext(n)[0] for n in names}))

    async def get_extensions(self, request: web.Request) -> web.Response:
        """The scripts of the custom node packs' web folders (``/extensions/<pack>/…``)."""
        return web.json_response(custom_nodes.extension_urls(custom_nodes.loaded_packs(self.s.engine.registry)))

    async def get_openapi(self, request: web.Request) -> web.Response:
        from .. import __version__

        frontend_routes = tuple(route.spec for route in comfy_frontend.FRONTEND_ROUTES)
        return web.json_response(openapi_document(__version__, frontend_routes))

    # -- files ------------------------------------------------------------------------------------

    async def get_view(self, request: web.Request) -> web.StreamResponse:
        return await view(request, self.paths, self.config.max_image_pixels)

    async def post_upload_image(self, request: web.Request) -> web.Response:
        return await upload_image(request, self.paths, Path(self.config.data_dir) / "uploads",
                                  self.config.max_upload_bytes, self.config.max_image_pixels)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def model_folder_names(paths) -> list[str]:
    """The model folders ``/models`` lists: ComfyUI's and ours, then kinds only the extra model paths
    (``extra_model_paths.yaml``) declare, as ComfyUI lists them."""
    return list(MODEL_FOLDERS) + [kind for kind in paths.model_kinds() if kind not in MODEL_FOLDERS]


def list_model_names(paths, kind: str) -> list[str]:
    """The model files of ``kind`` in every folder of ``paths.model_dirs(kind)`` (nodegraph's own, its
    ComfyUI alias subfolders, the extra model paths), each name once, sorted."""
    return sorted({name for folder in paths.model_dirs(kind) for name in _list_models(folder)})


def _list_models(folder: Path) -> list[str]:
    """Model files under ``folder`` (relative, ``/``-separated, sorted); symlinked files included.

    An ncnn network is two files, ``name.param`` (the graph) and ``name.bin`` (its weights); it is
    listed once, as the ``.param`` — the name the loader nodes take — and its ``.bin`` is left out."""
    if not folder.is_dir():
        return []
    names = []
    for root, _, files in os.walk(folder, followlinks=False):
        present = set(files)
        for name in files:
            stem, ext = os.path.splitext(name)
            if not name.lower().endswith(MODEL_EXTENSIONS):
                continue
            if ext.lower() == ".bin" and stem + ".param" in present:
                continue
            names.append(Path(root, name).relative_to(folder).as_posix())
    return sorted(names)


@web.middleware
async def bad_request_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return exc.response()


def create_app(config: ServerConfig, engine: Engine | None = None, *,
               make_runner: RunnerFactory | None = None) -> web.Application:
    """The application for ``config``; builds an engine (with ``config.nodes_modules``) when not given.

    ``make_runner`` builds the job runner from the engine, the store and the WebSocket hub (the
    runner's event sink); default: :class:`~nodegraph.queue.local.LocalRunner`, this process's engine."""
    config.check()
    package = comfy_frontend.check_frontend(config.frontend)  # before anything starts: a bad choice stops here
    owns_engine = engine is None
    engine = engine if engine is not None else build_engine(config)
    for folder in (engine.paths.output_dir, engine.paths.input_dir, engine.paths.temp_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    clear_previews(engine.paths.temp_dir)
    store = JobStore(config.db_path, max_attempts=config.max_attempts, sync_commits=config.sync_commits)
    hub = WebSocketHub()
    runner = (make_runner or LocalRunner)(engine, store, hub, max_attempts=config.max_attempts,
                                          preview_size=config.preview_size)
    hub.status_source = runner.status_message
    server = Server(config, engine, store, hub, runner, owns_engine)
    api = Api(server)
    frontend = comfy_frontend.setup(server, package, model_folder_names, _list_models)
    uploads = frontend.upload_paths({r.path for r in ROUTES if r.multipart is not None}
                                    | {r.spec.path for r in comfy_frontend.FRONTEND_ROUTES if r.spec.multipart})
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[error_middleware, security_middleware(config, uploads, comfy_frontend.takes_raw_body),
                                       bad_request_middleware])
    app[SERVER] = server
    for route in ROUTES:
        handler = getattr(api, route.handler)
        for prefix in frontend.prefixes:
            app.router.add_route(route.method, prefix + route.path, handler)
    # our canvas at / (at /builtin/ when ComfyUI's frontend takes /) and the ready workflows (static.py)
    add_static_routes(app, page_base="/builtin" if frontend.base == "" else "")
    comfy_frontend.add_routes(app, frontend)  # ComfyUI's frontend and the routes it calls
    # custom node packs' routes and web folders (custom_nodes.py)
    custom_nodes.add_pack_routes(app, custom_nodes.loaded_packs(engine.registry), frontend.prefixes)

    async def on_startup(app: web.Application) -> None:
        hub.bind(asyncio.get_running_loop())
        custom_nodes.bind(hub)
        await asyncio.get_running_loop().run_in_executor(None, runner.start)  # Ray start-up takes seconds

    async def on_shutdown(app: web.Application) -> None:
        custom_nodes.unbind(hub)
        await hub.close_all()

    async def on_cleanup(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, runner.stop)
        if owns_engine:
            engine.close()
        store.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
