"""The HTTP/WebSocket server: ComfyUI's API over the durable job queue (:mod:`nodegraph.queue`), safe
by default. No torch here, and no runner chosen here: ``create_app`` takes a runner factory.

Modules, one job each: ``config`` (settings), ``app`` (routes), ``security`` (Host/Origin/token/
content-type/size checks), ``ws`` (WebSocket delivery; the runners' event sink), ``features`` (the
feature flags), ``files`` (``/view`` and uploads), ``comfy_errors`` (validation errors in ComfyUI's
shape), ``openapi`` (route table and ``/openapi.json``), ``static`` (the canvas and the workflows);
``comfy_frontend/`` (ComfyUI's official frontend and the routes only it calls).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TextIO

from ..queue import RunnerFactory
from .app import create_app
from .config import ServerConfig


async def serve_forever(config: ServerConfig, stream: TextIO = sys.stdout,
                        stop: asyncio.Event | None = None, make_runner: RunnerFactory | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); prints the address it listens on. ``make_runner``:
    see :func:`~nodegraph.server.app.create_app` (default: the local runner)."""
    from aiohttp import web

    # Threads (engine, validation, database writer) hand the GIL back to the event loop sooner:
    # request latency during a run matters more here than a little throughput.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    app = create_app(config, make_runner=make_runner)
    app_runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await app_runner.setup()
    site = web.TCPSite(app_runner, config.host, config.port, shutdown_timeout=5)
    await site.start()
    port = app_runner.addresses[0][1] if app_runner.addresses else config.port
    freeze_startup_objects()
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
        await app_runner.cleanup()


#: the collector's first threshold while serving (Python's default: 700 allocations)
GC_THRESHOLD0 = 10_000


def freeze_startup_objects() -> None:
    """Move what start-up created (torch, the node library, aiohttp: a few hundred thousand objects
    that live as long as the process) out of the garbage collector's view: a full collection no longer
    walks them, which took tens of milliseconds in the middle of a prompt every few prompts (Python's
    ``gc.freeze`` recipe for servers). Garbage made by start-up is collected first.

    The youngest generation is then collected every :data:`GC_THRESHOLD0` allocations instead of 700:
    a 400-node prompt made ~8 young collections and most of a full one per prompt (2.4 ms of its CPU),
    walking the run's results that are still alive each time; now ~0.4 (1 ms). Cyclic garbage waits a
    little longer for its collection; reference counting frees everything else at once, as before."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD0, *gc.get_threshold()[1:])


__all__ = ["ServerConfig", "create_app", "serve_forever"]
