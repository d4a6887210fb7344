"""ComfyUI's official frontend previews our video and audio outputs: SaveVideo's file under ``images`` with
``animated`` becomes a <video>, PreviewAudio's ``audio`` file an <audio> player, both fetched through
/api/view (which answers their range requests)."""

from __future__ import annotations

import pytest

from tests.comfy_frontend.comfy_page import ComfyPage
from tests.comfy_frontend.conftest import FrontendServer
from tests.helpers.live_server import LiveServers, ServerSetup
from tests.web.test_canvas_media import WORKFLOW, write_inputs

pytestmark = pytest.mark.browser


@pytest.fixture
def comfy_server(tmp_path):
    servers = LiveServers(ServerSetup(server_class=FrontendServer), tmp_path)
    yield servers.start(frontend="comfyui")
    servers.stop_all()


def test_video_and_audio_outputs_preview_in_comfyui_frontend(comfy_server, browser):
    write_inputs(comfy_server.config.paths.input_dir)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = ComfyPage(context.new_page(), comfy_server).open()
        page.page.keyboard.press("Escape")  # the first visit's templates dialog
        page.js("(prompt) => window.app.loadApiJson(prompt, 'media.json')", WORKFLOW)
        page.page.wait_for_function("() => window.app.graph.nodes.length === 4")
        page.run()
        page.page.wait_for_function("""() => { const v = document.querySelector('video[src*="web_00001_.webm"]');
                                              return !!v && v.readyState >= 2 && v.videoWidth === 64; }""",
                                    timeout=60_000)
        page.page.wait_for_function("""() => { const a = document.querySelector('audio[src*="type=temp"]');
                                              return !!a && a.duration > 0.9 && a.duration < 1.1; }""",
                                    timeout=60_000)
        outputs = next(iter(comfy_server.client().get("/api/history").json().values()))["outputs"]
        assert set(outputs) == {"2", "4"}  # the frontend's extra 'video-preview' input is no error
        assert "/api/view?" in page.js("() => document.querySelector('video[src*=\"web_00001_.webm\"]').src")
        # nothing about the media failed (the templates dialog's thumbnails are another test's subject)
        ours = [p for p in page.problems() if "/templates/" not in p and "GraphView" not in p]
        assert ours == []
    finally:
        context.close()
