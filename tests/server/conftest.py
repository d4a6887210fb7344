"""Server fixtures: live servers (``tests/conftest.py``) on the test nodes of ``slow_nodes``, a real SQLite
file in a temp folder, and a small standard-library HTTP client."""

from __future__ import annotations

import pytest

from tests.helpers.http_client import Client
from tests.helpers.live_server import ServerSetup


@pytest.fixture
def server_setup() -> ServerSetup:
    return ServerSetup(nodes_modules=("tests.server.slow_nodes",))


@pytest.fixture
def client(server) -> Client:
    return server.client()
