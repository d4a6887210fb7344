"""Server fixtures: a real aiohttp server on 127.0.0.1 (free port) in a background thread, a real
SQLite file in a temp folder, and a small standard-library HTTP client."""

from __future__ import annotations

import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

from nodegraph.context import Paths  # noqa: E402
from nodegraph.server import ServerConfig  # noqa: E402

from http_client import Client  # noqa: E402
from live_server import LiveServer  # noqa: E402


class ServerThread(LiveServer):
    """A live server plus a small standard-library HTTP client for it."""

    def client(self, **kwargs) -> Client:
        return Client("127.0.0.1", self.port, **kwargs)


def make_config(tmp_path: pathlib.Path, **overrides) -> ServerConfig:
    options = dict(host="127.0.0.1", port=0, paths=Paths.under(tmp_path), data_dir=tmp_path / "data",
                   device="cpu", threads=2, nodes_modules=("slow_nodes",))
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
