"""Fixtures for the ComfyUI-frontend suite: live servers (``tests/conftest.py``) on the slow/failing test
nodes of ``tests.server.slow_nodes`` with the user folder at hand, a standard-library HTTP client, and a
headless Chromium (``browser``, which marks its tests ``browser``)."""

from __future__ import annotations

import pathlib

import pytest

from tests.helpers.http_client import Client
from tests.helpers.live_server import LiveServer, ServerSetup
from tests.web.web_helpers import CHROMIUM, CHROMIUM_ARGS


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


@pytest.fixture(scope="session")
def browser():
    if not pathlib.Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: install it with 'apt-get update && apt-get install -y "
                    "chromium' (bash scripts/test does) — the browser tests never skip")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install -e '.[dev]' (never 'playwright install'; the system "
                    "Chromium is used)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()
