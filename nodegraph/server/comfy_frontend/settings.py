"""``/settings`` and ``/settings/{id}``: the frontend's settings, kept on the server as ComfyUI keeps them.

One JSON object in the user folder, ``comfy.settings.json`` (ComfyUI's file name, so a ComfyUI user
folder can be copied in). ``GET /settings`` returns it (``{}`` before anything was saved);
``GET /settings/{id}`` one value (``null`` when unset); ``POST /settings`` merges an object into it;
``POST /settings/{id}`` sets one value. The frontend posts values as ``text/plain`` JSON, so bodies are
read as JSON whatever their Content-Type. Each change is a read-modify-write done on the event loop
with no await in between (the frontend sends many at once; none is lost) and written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from .common import RouteError, json_body, read_json_file, write_atomic
from .state import FrontendState

SETTINGS_FILE = "comfy.settings.json"


class Settings:
    def __init__(self, state: FrontendState) -> None:
        self.state = state

    @property
    def path(self) -> Path:
        return self.state.user_root / SETTINGS_FILE

    def load(self) -> dict:
        value = read_json_file(self.path, {})
        if not isinstance(value, dict):
            raise RouteError(500, "damaged_file", f"{self.path} does not hold a JSON object; fix or delete it")
        return value

    def save(self, settings: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(settings, indent=4, ensure_ascii=False).encode("utf-8"))

    async def get_all(self, request: web.Request) -> web.Response:
        return web.json_response(self.load())

    async def get_one(self, request: web.Request) -> web.Response:
        return web.json_response(self.load().get(request.match_info["id"]))

    async def post_all(self, request: web.Request) -> web.Response:
        values = await json_body(request)
        if not isinstance(values, dict):
            raise RouteError(400, "invalid_request", "send a JSON object of settings ({\"id\": value, …})")
        self.save({**self.load(), **values})
        return web.json_response({})

    async def post_one(self, request: web.Request) -> web.Response:
        setting_id = request.match_info["id"]
        value = await json_body(request)
        settings = self.load()
        settings[setting_id] = value
        self.save(settings)
        return web.json_response({})
