"""The HTTP/WebSocket server: ComfyUI's API over a durable SQLite job queue, safe by default.

Modules, one job each: ``config`` (settings), ``app`` (routes), ``security`` (Host/Origin/token/
content-type/size checks), ``jobs`` (SQLite queue and history), ``worker`` (engine thread and event
translation), ``ws`` (WebSocket delivery), ``files`` (``/view`` and uploads), ``comfy_errors``
(validation errors in ComfyUI's shape), ``openapi`` (route table and ``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TextIO

from .app import create_app
from .config import ServerConfig


async def serve_forever(config: ServerConfig, stream: TextIO = sys.stdout,
                        stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); prints the address it listens on."""
    from aiohttp import web

    # Threads (engine, validation, database writer) hand the GIL back to the event loop sooner:
    # request latency during a run matters more here than a little throughput.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, shutdown_timeout=5)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else config.port
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"nodegraph server listening on http://{host}:{port}", file=stream, flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        print("nodegraph server stopping", file=stream, flush=True)
        await runner.cleanup()


__all__ = ["ServerConfig", "create_app", "serve_forever"]
