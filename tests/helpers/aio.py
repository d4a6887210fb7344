"""Run a coroutine to completion from a test, whatever else the session has started.

Playwright's sync API (the session's one Chromium) keeps an event loop running on the main thread once
a browser test has run, and ``asyncio.run()`` refuses to start there; a thread of its own always can.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` on a fresh thread; its result or its exception."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
