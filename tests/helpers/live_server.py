"""A real nodegraph server (``create_app(config)``) on 127.0.0.1, on its own event-loop thread, and the one
way the test suites start such servers.

:class:`LiveServer` serves one app; :class:`ServerSetup` says what a suite's servers are (its node modules,
its engine threads, its server class, its runner); :class:`LiveServers` starts servers from a setup for one
test and stops them all at its end. The fixtures on top (``server_setup``, ``start_server``, ``server``)
are in ``tests/conftest.py``; the server, browser and scale-out suites override ``server_setup``.
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
from dataclasses import dataclass
from typing import Any, Callable

from nodegraph.context import Paths
from nodegraph.server import ServerConfig, create_app

from tests.helpers.http_client import Client


class LiveServer:
    """Serves ``create_app(config, make_runner=make_runner)`` on a free loopback port until :meth:`stop`."""

    #: seconds :meth:`start` waits for the app (and its runner) to be up
    start_timeout: float = 60
    #: the default timeout of :meth:`client`'s requests
    client_timeout: float = 30

    def __init__(self, config: ServerConfig, make_runner=None) -> None:
        self.config = config
        self.make_runner = make_runner  # None: the local runner
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.app = None
        self.runner = None
        self.port = 0

    def start(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(self.start_timeout)
        return self

    async def _start(self) -> None:
        from aiohttp import web

        self.app = create_app(self.config, make_runner=self.make_runner)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server(self):
        """The app's server object (store, runner, engine)."""
        from nodegraph.server.app import SERVER

        return self.app[SERVER]

    def client(self, **kwargs) -> Client:
        """A small standard-library HTTP client for this server (``token=``, ``timeout=``)."""
        kwargs.setdefault("timeout", self.client_timeout)
        return Client("127.0.0.1", self.port, **kwargs)

    def stop(self) -> None:
        """Stop serving; a second call (a test stopped it already) does nothing."""
        if not self.thread.is_alive():
            return
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


#: ``make_runner(config, options)`` → the runner factory ``create_app`` takes (``None``: the local runner);
#: ``options`` are the ones a test passed as ``start_server(runner=...)``
RunnerMaker = Callable[[ServerConfig, dict[str, Any]], Any]


@dataclass(frozen=True)
class ServerSetup:
    """What one suite's live servers are. ``nodes_modules``: importable module names of its test nodes
    (``tests.server.slow_nodes``; the Ray actors import them by the same name); ``threads``: the engine's
    thread pool; ``server_class``: the :class:`LiveServer` subclass with the suite's own helpers;
    ``make_runner``: the queue runner (``None``: the local one)."""

    nodes_modules: tuple[str, ...] = ()
    threads: int = 2
    server_class: type[LiveServer] = LiveServer
    make_runner: RunnerMaker | None = None

    def config(self, root: pathlib.Path, **overrides) -> ServerConfig:
        """A loopback server on a free port whose folders and SQLite queue are under ``root``."""
        options = dict(host="127.0.0.1", port=0, paths=Paths.under(root), data_dir=root / "data", device="cpu",
                       threads=self.threads, nodes_modules=self.nodes_modules)
        options.update(overrides)
        return ServerConfig(**options)


class LiveServers:
    """Starts servers from one :class:`ServerSetup` under one folder; :meth:`stop_all` stops every one."""

    def __init__(self, setup: ServerSetup, root: pathlib.Path) -> None:
        self.setup = setup
        self.root = root
        self.started: list[LiveServer] = []

    def start(self, runner: dict[str, Any] | None = None, **overrides) -> LiveServer:
        """A started server; ``overrides`` are :class:`ServerConfig` fields, ``runner`` the runner's options."""
        config = self.setup.config(self.root, **overrides)
        make_runner = None
        if self.setup.make_runner is not None:
            make_runner = self.setup.make_runner(config, runner or {})
        elif runner:
            raise ValueError(f"runner options {runner} given, but this suite's servers use the local runner")
        server = self.setup.server_class(config, make_runner).start()
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
