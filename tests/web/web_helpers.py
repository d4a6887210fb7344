"""Helpers of the browser tests: the system Chromium's path and flags, the live server the browser is
pointed at, and the ready workflows (also used by ``docs/web_canvas_screenshot.py``)."""

from __future__ import annotations

import json
import os
import pathlib

from tests.helpers.live_server import LiveServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("NODEGRAPH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LITEGRAPH = ROOT / "web" / "vendor" / "litegraph" / "litegraph.core.js"


class WebServer(LiveServer):
    """A live server the browser tests point Chromium at."""

    def page_url(self) -> str:
        token = self.config.auth_token
        return f"{self.url}/?token={token}" if token else f"{self.url}/"

    @property
    def output_dir(self) -> pathlib.Path:
        return pathlib.Path(self.config.paths.output_dir)


def ui_workflow(name: str) -> dict:
    return json.loads((ROOT / "workflows" / name).read_text())
