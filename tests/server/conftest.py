"""Server fixtures: a real aiohttp server on 127.0.0.1 (free port) in a background thread, a real
SQLite file in a temp folder, and a small standard-library HTTP client."""

from __future__ import annotations

import asyncio
import pathlib
import sys
import threading

import pytest

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

from nodegraph.context import Paths  # noqa: E402
from nodegraph.server import ServerConfig, create_app  # noqa: E402

from http_client import Client  # noqa: E402


class ServerThread:
    """``create_app(config)`` served on its own event loop thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.app = None
        self.runner = None
        self.port = 0

    def start(self) -> "ServerThread":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    async def _start(self) -> None:
        from aiohttp import web

        self.app = create_app(self.config)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def server(self):
        from nodegraph.server.app import SERVER

        return self.app[SERVER]

    def client(self, **kwargs) -> Client:
        return Client("127.0.0.1", self.port, **kwargs)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def make_config(tmp_path: pathlib.Path, **overrides) -> ServerConfig:
    options = dict(host="127.0.0.1", port=0, paths=Paths.under(tmp_path), data_dir=tmp_path / "data",
                   device="cpu", workers=2, nodes_modules=("slow_nodes",))
    options.update(overrides)
    return ServerConfig(**options)


@pytest.fixture
def start_server(tmp_path):
    started: list[ServerThread] = []

    def start(**overrides) -> ServerThread:
        server = ServerThread(make_config(tmp_path, **overrides)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server) -> ServerThread:
    return start_server()


@pytest.fixture
def client(server) -> Client:
    return server.client()
