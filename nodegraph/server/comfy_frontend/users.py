"""``GET /users``: which user profiles the server keeps, in ComfyUI's single-user answer.

ComfyUI without ``--multi-user`` answers ``{"storage": "server", "migrated": <user folder exists>}``;
the frontend then keeps settings and workflows on the server (``/settings``, ``/userdata``) and shows
no user picker. nodegraph is always single-user and its user folder is created at start-up, so
``migrated`` is true.
"""

from __future__ import annotations

from aiohttp import web

from .state import FrontendState


class Users:
    def __init__(self, state: FrontendState) -> None:
        self.state = state

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": self.state.user_root.is_dir()})
