"""Running an awaitable to completion from synchronous code (a node's ``execute``, a pack's ``async def``
entry points): on the calling thread when it has no running event loop, else on a helper thread with its own
loop (the caller waits; the awaitable's exception is re-raised on the caller's thread)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


def run_sync(work: Awaitable[T], thread_name: str = "nodegraph-run-sync") -> T:
    """The result of ``work``, run to completion (a helper thread named ``thread_name`` when this thread's event
    loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(work))
    box: dict[str, Any] = {}

    def other_thread() -> None:
        try:
            box["value"] = asyncio.run(_awaited(work))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=other_thread, name=thread_name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _awaited(work: Awaitable[T]) -> T:
    return await work
