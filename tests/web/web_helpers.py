"""Helpers of the browser tests: the live server the browser is pointed at, the vendored canvas file and the
ready workflows (also used by ``docs/web_canvas_screenshot.py``, with the Chromium path and flags)."""

from __future__ import annotations

import json
import pathlib

from tests.helpers.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: F401 - the screenshot script's too
from tests.helpers.live_server import LiveServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
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
