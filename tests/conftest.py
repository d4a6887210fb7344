"""Shared fixtures: an engine with the built-in nodes plus the test nodes, on temp folders; live servers
(``tests.helpers.live_server``) for the suites that need one; the session's one Chromium; and the markers that follow from a test's
fixtures (:data:`MARKED_BY_FIXTURE`)."""

from __future__ import annotations

import pytest

from nodegraph import Engine, OutputCache, Paths

from tests.engine_nodes import LOG, TEST_NODES
from tests.helpers.chromium import launch_chromium
from tests.helpers.direct_nodes import make, paths  # noqa: F401  (fixtures: node instances on temp folders)
from tests.helpers.engines import registry_with
from tests.helpers.live_server import LiveServer, LiveServers, ServerSetup

#: marker → the fixtures whose users get it (directly or through another fixture): ``browser`` drives the
#: system Chromium (tests/web), ``ray_cluster`` starts a local Ray cluster (tests/cluster); ``llm_cache``
#: converts the built-in LLM (half a minute, and each run of the model takes seconds more), ``tiny_gguf``
#: tests convert a GGUF in fresh processes (tests/defaults). Modules slow as a whole say so themselves
#: (``pytestmark = pytest.mark.slow``).
MARKED_BY_FIXTURE = {"browser": ("browser",), "cluster": ("ray_cluster",), "slow": ("llm_cache", "tiny_gguf")}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKED_BY_FIXTURE.items():
            if used.intersection(fixtures):
                item.add_marker(marker)


@pytest.fixture
def registry():
    return registry_with(TEST_NODES)


@pytest.fixture
def log():
    LOG.calls.clear()
    LOG.spans.clear()
    return LOG


@pytest.fixture
def engine(registry, tmp_path, log):
    eng = Engine(registry, paths=Paths.under(tmp_path), device="cpu", threads=2,
                 cache=OutputCache(ram_budget=256 << 20))
    yield eng
    eng.close()


@pytest.fixture
def server_setup() -> ServerSetup:
    """What this suite's live servers are; tests/server, tests/web and tests/cluster override it."""
    return ServerSetup()


@pytest.fixture
def start_server(server_setup, tmp_path):
    """``start_server(runner=None, **config_overrides)`` → a started :class:`LiveServer` (folders under
    ``tmp_path``); every server started is stopped when the test ends."""
    servers = LiveServers(server_setup, tmp_path)
    yield servers.start
    servers.stop_all()


@pytest.fixture
def server(start_server) -> LiveServer:
    return start_server()


@pytest.fixture(scope="session")
def browser():
    """The session's headless Chromium (Playwright's sync API allows one per thread, so every suite shares
    it); its users are marked ``browser``."""
    with launch_chromium() as chromium:
        yield chromium
