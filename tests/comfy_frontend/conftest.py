"""Fixtures for the ComfyUI-frontend routes: a real server on a free loopback port (temp folders, a
real SQLite store), the standard-library HTTP client of the server tests, and the slow/failing test
nodes; the browser tests add Chromium (``frontend_browser``)."""

from __future__ import annotations

import pathlib

import pytest

from nodegraph.context import Paths
from nodegraph.server import ServerConfig

from tests.helpers.http_client import Client
from tests.helpers.live_server import LiveServer


class FrontendServer(LiveServer):
    stopped = False

    def stop(self) -> None:
        if not self.stopped:  # a test may stop it early (to restart on the same folders)
            self.stopped = True
            super().stop()

    def client(self, **kwargs) -> Client:
        return Client("127.0.0.1", self.port, **kwargs)

    @property
    def data_dir(self) -> pathlib.Path:
        return pathlib.Path(self.config.data_dir)

    @property
    def user_root(self) -> pathlib.Path:
        return self.data_dir / "user" / "default"


def make_config(tmp_path: pathlib.Path, **overrides) -> ServerConfig:
    options = dict(host="127.0.0.1", port=0, paths=Paths.under(tmp_path), data_dir=tmp_path / "data",
                   device="cpu", threads=2, nodes_modules=("tests.server.slow_nodes",))
    options.update(overrides)
    return ServerConfig(**options)


@pytest.fixture
def start_server(tmp_path):
    started: list[FrontendServer] = []

    def start(**overrides) -> FrontendServer:
        server = FrontendServer(make_config(tmp_path, **overrides)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server) -> FrontendServer:
    return start_server()


@pytest.fixture
def client(server) -> Client:
    return server.client()
