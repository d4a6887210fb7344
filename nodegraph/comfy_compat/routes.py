"""The HTTP routes custom node packs add (``@PromptServer.instance.routes.get("/my/path")``), recorded
without aiohttp: the engine core does not import the web framework. The server turns each
:class:`RecordedRoute` into an aiohttp route when it builds its application (and, as ComfyUI does,
also under ``/api``); a pack's static folders become static routes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class RecordedRoute:
    """``method`` ``path`` → ``handler`` (an aiohttp handler); ``kind`` ``"static"`` serves the folder
    ``handler`` under the prefix ``path``; ``kind`` ``"raw"`` is an aiohttp route object a pack built
    itself (``handler``)."""

    method: str
    path: str
    handler: Any
    kwargs: dict = field(default_factory=dict)
    kind: str = "route"


class RouteRecorder:
    """What ``PromptServer.instance.routes`` is: aiohttp's ``RouteTableDef`` decorators, recorded."""

    def __init__(self) -> None:
        self._routes: list[RecordedRoute] = []
        self._lock = threading.Lock()

    def add(self, route: RecordedRoute) -> None:
        with self._lock:
            self._routes.append(route)

    def route(self, method: str, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        def register(handler: Any) -> Any:
            self.add(RecordedRoute(method.upper(), path, handler, dict(kwargs)))
            return handler
        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("DELETE", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("HEAD", path, **kwargs)

    def view(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("*", path, **kwargs)

    def static(self, prefix: str, path: Any, **kwargs: Any) -> None:
        self.add(RecordedRoute("GET", prefix, str(path), dict(kwargs), kind="static"))

    def raw(self, route: Any) -> None:
        self.add(RecordedRoute("", "", route, kind="raw"))

    def __iter__(self) -> Iterator[RecordedRoute]:
        with self._lock:
            return iter(list(self._routes))

    def __len__(self) -> int:
        return len(self._routes)
