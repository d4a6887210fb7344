"""Small pieces the ComfyUI-frontend route modules share: error answers, JSON bodies, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from ..comfy_errors import bad_request
from ..request_json import JsonBodyError, parse_json


class RouteError(Exception):
    """An answer other than 200, with our error body (``{"error": {type, message, …}}``)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message

    def response(self) -> web.Response:
        return web.json_response(bad_request(self.type, self.message), status=self.status)


def answering_errors(handler):
    """``handler`` with a :class:`RouteError` it raises turned into its answer."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RouteError as exc:
            return exc.response()

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped


async def json_body(request: web.Request) -> Any:
    """The body as JSON whatever its Content-Type (ComfyUI's frontend posts settings as ``text/plain``)."""
    raw = await request.read()
    if not raw.strip():
        raise RouteError(400, "empty_body", "the request needs a JSON body")
    try:
        return parse_json(raw)
    except JsonBodyError as exc:
        raise RouteError(400, exc.kind, exc.message) from None


def query_flag(request: web.Request, name: str, default: bool = False) -> bool:
    """ComfyUI's query booleans: ``"true"`` (any case) is true; absent → ``default``."""
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.lower() == "true"


def query_int(request: web.Request, name: str, default: int | None, minimum: int = 0) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RouteError(400, "invalid_request", f"'{name}' must be an integer, not {raw!r}") from None
    if value < minimum:
        raise RouteError(400, "invalid_request", f"'{name}' must be {minimum} or more, not {value}")
    return value


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a reader
    never sees half a file and a crash never leaves one."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_file(path: Path, default: Any) -> Any:
    """A JSON file's value; ``default`` when it does not exist. A damaged file is an error naming it."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RouteError(500, "damaged_file", f"{path} is not valid JSON ({exc}); fix or delete it") from None
