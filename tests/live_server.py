"""A real nodegraph server (``create_app(config)``) on 127.0.0.1, on its own event-loop thread.

Shared by the server tests and the browser tests.
"""

from __future__ import annotations

import asyncio
import threading

from nodegraph.server import ServerConfig, create_app


class LiveServer:
    """Serves ``create_app(config, make_runner=make_runner)`` on a free loopback port until :meth:`stop`."""

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
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
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

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
