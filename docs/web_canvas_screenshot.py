"""Regenerate docs/web_canvas.png: the canvas running a ready workflow on a throw-away server,
captured with the system Chromium.

    python docs/web_canvas_screenshot.py [workflows/NAME.json] [docs/web_canvas.png]

The default is workflows/txt2img_sd15.ui.json with the tiny random-weight SD model the diffusion tests
build (tests/helpers/tiny_sd.py), captured mid-sampling (progress, live preview); any other
workflow is captured after its run.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test helpers: tests.web, tests.helpers

from nodegraph.context import Paths  # noqa: E402
from nodegraph.server import ServerConfig  # noqa: E402

from tests.web.web_helpers import CHROMIUM, CHROMIUM_ARGS, WebServer  # noqa: E402


def main() -> None:
    workflow = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "workflows" / "txt2img_sd15.ui.json")
    target = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "docs" / "web_canvas.png")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        txt2img = workflow.name.startswith("txt2img")
        if txt2img:
            from tests.helpers.tiny_sd import build_sd1

            build_sd1(tmp)      # tmp/models/checkpoints/tiny_sd15.safetensors (random weights)
        server = WebServer(ServerConfig(host="127.0.0.1", port=0, paths=Paths.under(tmp), data_dir=tmp / "data",
                                        device="cpu")).start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 2000, "height": 880})
                page.goto(server.page_url())
                page.wait_for_function("document.body.dataset.ready === '1'")
                page.evaluate("(d) => window.app.load(d, 'workflow')", json.loads(workflow.read_text()))
                # image_basics.ui.json stacks Size on top of Save: give the side branch its own row
                page.evaluate("""() => { const g = window.app.graph;
                    for (const n of g._nodes) if (n.type === 'GetImageSize' || n.type === 'PreviewAny')
                        for (const o of g._nodes) if (o !== n && o.type === 'SaveImage' && o.pos[0] === n.pos[0] && o.pos[1] === n.pos[1] ||
                                                      (n.type === 'PreviewAny' && o.type === 'GetImageSize' && o.pos[1] !== n.pos[1]))
                            n.pos = [n.pos[0], n.pos[1] + 420];
                    window.app.fitView(30); }""")
                page.click("#btn-panel")
                if txt2img:
                    page.evaluate("""() => { const set = (type, name, v) => window.app.graph._nodes
                        .filter(n => n.type === type).forEach(n => n.widgets.find(w => w.name === name).value = v);
                        set('CheckpointLoaderSimple', 'ckpt_name', 'tiny_sd15.safetensors');
                        set('KSampler', 'steps', 400);
                        set('EmptyLatentImage', 'width', 64); set('EmptyLatentImage', 'height', 64); }""")
                    page.click("#btn-queue")     # a first run fills the history panel
                    page.wait_for_function("document.getElementById('overall-text').textContent === 'done'",
                                           timeout=300_000)
                    page.wait_for_function("[...window.app.states.values()].some(s => (s.images || [])[0]?.naturalWidth)")
                    page.click("#btn-queue")     # the seed randomized: a fresh run to catch mid-sampling
                    page.wait_for_function("""() => { const id = window.app.runningNodeId;
                        const s = id && window.app.states.get(id);
                        return window.app.node(id)?.type === 'KSampler' && s.progress > 0.4 && s.preview; }""",
                                           timeout=300_000)
                else:
                    page.click("#btn-queue")
                    page.wait_for_function("document.getElementById('overall-text').textContent === 'done'")
                    page.wait_for_function("[...window.app.states.values()].some(s => (s.images || [])[0]?.naturalWidth)")
                page.wait_for_function("document.querySelectorAll('#history-list .job').length > 0")
                page.evaluate("() => { document.querySelectorAll('.toast').forEach(t => t.remove()); "
                              "window.app.fitView(30); }")
                page.click("#palette summary >> text=image")
                page.wait_for_timeout(300)
                page.screenshot(path=str(target))
                browser.close()
        finally:
            server.stop()
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
