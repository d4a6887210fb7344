"""Workflows in and out of the canvas in a real Chromium: the ready-workflow menu, save → reload →
identical workflow, API export equal to the library's conversion, a generated PNG dropped on the
canvas restoring its workflow, and the page working behind an auth token."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

from nodegraph.pngmeta import read_png_text
from nodegraph.registry import default_registry
from nodegraph.workflow.ui_format import ui_to_api

from tests.web import web_test_nodes
from tests.web.web_helpers import ROOT, ui_workflow


def registry():
    reg = default_registry()
    reg.add_module(web_test_nodes)
    return reg


def open_from_menu(page, name: str) -> None:
    page.js("() => window.app.graph.clear()")  # so the wait below cannot see the previous file's graph
    page.page.click("#btn-file")
    page.page.click(f'#workflow-list [data-workflow="{name}"]')
    # wait for this file's nodes (ids and types), not just as many nodes
    want = json.dumps(sorted(f"{n['id']}:{n['type']}" for n in ui_workflow(name)["nodes"]), separators=(",", ":"))
    page.page.wait_for_function(
        "want => JSON.stringify(window.app.graph._nodes.map(n => `${n.id}:${n.type}`).sort()) === want", arg=want)


def download(page, button: str) -> dict:
    page.page.click("#btn-file")
    with page.page.expect_download() as info:
        page.page.click(button)
    return json.loads(open(info.value.path()).read())


def test_save_reload_gives_the_identical_workflow(server, open_page):
    page = open_page(server)
    open_from_menu(page, "image_basics.ui.json")
    shown = page.workflow()
    saved = download(page, "#btn-save")
    assert saved == shown
    assert saved["version"] == 0.4 and all(isinstance(n["pos"], list) and isinstance(n["size"], list)
                                           for n in saved["nodes"])
    # the library converts what the canvas saved into the same prompt as the original file
    original = ui_workflow("image_basics.ui.json")
    assert ui_to_api(saved, registry()) == ui_to_api(original, registry())
    # the API export is the library's conversion of the saved canvas workflow
    exported = download(page, "#btn-export-api")
    assert exported == ui_to_api(saved, registry())
    page.page.reload()
    page.page.wait_for_function("document.body.dataset.ready === '1'")
    assert page.workflow() == shown
    # loading the saved file through the file picker gives it back unchanged too
    page.page.click("#btn-file")
    page.page.click("#btn-new")
    page.page.click("#btn-file")
    with page.page.expect_file_chooser() as chooser:
        page.page.click("#btn-open")
    chooser.value.set_files(files=[{"name": "wf.json", "mimeType": "application/json",
                                     "buffer": json.dumps(saved).encode()}])
    page.page.wait_for_function("window.app.graph._nodes.length === 8")
    assert page.workflow() == shown
    assert page.console_errors == []


def drop_file(page, name: str, mime: str, data: bytes) -> None:
    page.js("""([name, mime, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: mime }));
        const canvas = window.app.canvasEl, r = canvas.getBoundingClientRect();
        for (const type of ['dragenter', 'dragover', 'drop']) {
            canvas.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true,
                                                       clientX: r.left + r.width - 40, clientY: r.top + r.height - 40 }));
        }
    }""", [name, mime, base64.b64encode(data).decode()])


def test_dropping_a_generated_png_restores_its_workflow(server, open_page):
    page = open_page(server)
    open_from_menu(page, "image_basics.ui.json")
    page.page.click("#btn-queue")
    page.page.wait_for_function("document.getElementById('overall-text').textContent === 'done'", timeout=30_000)
    queued = page.js("() => window.app.lastPrompt.workflow")
    pngs = sorted(server.output_dir.rglob("*.png"))
    assert pngs, "the run saved no PNG"
    data = pngs[0].read_bytes()
    assert json.loads(read_png_text(data)["workflow"]) == queued
    page.page.click("#btn-file")
    page.page.click("#btn-new")
    assert page.js("() => window.app.graph._nodes.length") == 0
    drop_file(page, "image_basics_00001_.png", "image/png", data)
    page.page.wait_for_function("window.app.graph._nodes.length === 8")
    restored = page.workflow()
    assert restored["nodes"] == queued["nodes"] and restored["links"] == queued["links"]
    # a dropped .json works the same way
    page.page.click("#btn-file")
    page.page.click("#btn-new")
    drop_file(page, "wf.json", "application/json", json.dumps(queued).encode())
    page.page.wait_for_function("window.app.graph._nodes.length === 8")
    assert page.workflow()["nodes"] == queued["nodes"]
    assert page.console_errors == []


def test_api_format_workflow_opens_laid_out(server, open_page):
    page = open_page(server)
    page.page.click("#btn-file")
    page.page.click('#workflow-list [data-workflow="image_basics.json"]')
    api = json.loads((server_root() / "workflows" / "image_basics.json").read_text())
    page.page.wait_for_function(f"window.app.graph._nodes.length === {len(api)}")
    exported = download(page, "#btn-export-api")
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa: E731
    assert strip(exported) == strip(api)
    positions = {tuple(n["pos"]) for n in page.workflow()["nodes"]}
    assert len(positions) == len(api)   # laid out, not stacked
    assert page.console_errors == []


def server_root():
    return ROOT


def test_page_works_with_an_auth_token(start_server, open_page):
    server = start_server(auth_token="s3cret-token")
    try:
        urllib.request.urlopen(f"{server.url}/")
        raise AssertionError("the page opened without the token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    page = open_page(server)                      # opens /?token=s3cret-token
    page.page.wait_for_selector("#conn.conn-on")
    page.load({"1": {"class_type": "EmptyImage", "inputs": {"width": 20, "height": 10}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tok"}}})
    page.page.click("#btn-queue")
    page.page.wait_for_function("document.getElementById('overall-text').textContent === 'done'", timeout=30_000)
    page.page.wait_for_function("(window.app.states.get('2')?.images || [])[0]?.naturalWidth === 20")
    assert "token=s3cret-token" in page.js("() => window.app.states.get('2').imageUrls[0]")
    page.page.click("#btn-file")
    assert page.page.locator('#workflow-list [data-workflow="image_basics.ui.json"]').count() == 1
    assert page.console_errors == []


def test_every_ready_canvas_workflow_converts_like_the_library(server, open_page):
    """Each workflows/*.ui.json opened on the canvas gives the prompt the library makes of the file."""
    page = open_page(server)
    names = sorted(p.name for p in (server_root() / "workflows").glob("*.ui.json"))
    assert "image_basics.ui.json" in names
    reg = registry()
    for name in names:
        original = ui_workflow(name)
        open_from_menu(page, name)
        in_page = page.js("() => window.app.lastPromptPreview()")
        assert in_page == ui_to_api(original, reg), name
    assert page.console_errors == []
