"""``GET /i18n``: translations that node packs add to the frontend, by locale.

ComfyUI merges the ``locales/<lang>/*.json`` files of its custom node folders into
``{locale: {"main": …, "nodeDefs": …, "commands": …, "settings": …}}``. nodegraph's node families
ship no translations (the frontend falls back to the names and descriptions ``/object_info`` gives),
so the answer is an empty object: the shape the frontend expects, with nothing to merge.
"""

from __future__ import annotations

from aiohttp import web


async def get_i18n(request: web.Request) -> web.Response:
    return web.json_response({})
