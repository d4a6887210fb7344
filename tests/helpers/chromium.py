"""The system Chromium, driven through Playwright's sync API (never ``playwright install``).

Playwright's sync API runs one instance per thread, so a test session launches Chromium once: the
``browser`` fixture of ``tests/conftest.py`` does, for every suite that drives a page.
"""

from __future__ import annotations

import os
import pathlib
from contextlib import contextmanager

import pytest

CHROMIUM = os.environ.get("NODEGRAPH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def launch_chromium():
    """A headless Chromium; fails (never skips) saying what to install when Chromium or Playwright is missing."""
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
        try:
            yield chromium
        finally:
            chromium.close()
