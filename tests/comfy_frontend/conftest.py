"""Fixtures for the ComfyUI-frontend suite: live servers (``tests/conftest.py``) on the slow/failing test
nodes of ``tests.server.slow_nodes`` with the user folder at hand, a standard-library HTTP client, and
the session's headless Chromium (``browser`` in ``tests/conftest.py``, which marks its tests ``browser``)."""

from __future__ import annotations

import pathlib

import pytest

from tests.helpers.http_client import Client
from tests.helpers.live_server import LiveServer, ServerSetup


class FrontendServer(LiveServer):
    @property
    def data_dir(self) -> pathlib.Path:
        return pathlib.Path(self.config.data_dir)

    @property
    def user_root(self) -> pathlib.Path:
        """The user folder the frontend's settings and saved workflows go to."""
        return self.data_dir / "user" / "default"


@pytest.fixture
def server_setup() -> ServerSetup:
    return ServerSetup(nodes_modules=("tests.server.slow_nodes",), server_class=FrontendServer)


@pytest.fixture
def client(server) -> Client:
    return server.client()
