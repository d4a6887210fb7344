"""Running from the canvas in a real Chromium: progress and live previews, output images and text on
their nodes, validation and execution errors on the offending node, interrupt, cancelling a queued
job, and reopening a past run from the history panel."""

from __future__ import annotations

import json


def chain(*nodes):
    """An API-format chain: each node's first socket takes the previous node's output 0."""
    prompt = {}
    for i, (class_type, inputs) in enumerate(nodes, start=1):
        inputs = dict(inputs)
        socket = inputs.pop("_socket", None)
        if socket and i > 1:
            inputs[socket] = [str(i - 1), 0]
        prompt[str(i)] = {"class_type": class_type, "inputs": inputs}
    return prompt


def slow_workflow(seconds=1.5, steps=6):
    return chain(("EmptyImage", {"width": 48, "height": 32, "batch_size": 1, "color": 0x3080E0}),
                 ("SlowImage", {"_socket": "image", "steps": steps, "seconds": seconds}),
                 ("SaveImage", {"_socket": "images", "filename_prefix": "web"}))


def done(page, text="done", timeout=30_000):
    page.page.wait_for_function(f"document.getElementById('overall-text').textContent === '{text}'",
                                timeout=timeout)
    page.page.wait_for_function("window.app.activePrompt === null", timeout=timeout)   # executing null came


def test_run_shows_progress_running_node_previews_and_output(server, open_page):
    page = open_page(server)
    page.load(slow_workflow())
    page.page.click("#graph-canvas", position={"x": 900, "y": 700})
    page.page.keyboard.press("Control+Enter")                      # queue with the keyboard
    page.page.wait_for_function("window.app.runningNodeId === '2'", timeout=20_000)
    page.page.wait_for_function("(window.app.states.get('2') || {}).previewCount >= 2")
    page.page.wait_for_function("parseFloat(document.getElementById('overall-bar').style.width) > 0")
    assert page.js("() => window.app.states.get('2').preview.naturalWidth") > 0
    done(page)
    events = page.js("() => window.app.events")
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress and all(p["node"] == "2" for p in progress)
    assert progress[-1]["value"] == progress[-1]["max"] == 6
    executing = [e["data"]["node"] for e in events if e["type"] == "executing"]
    assert executing[:3] == ["1", "2", "3"] and executing[-1] is None
    assert page.js("() => document.getElementById('overall-bar').style.width") == "100%"
    # the saved image is shown on the SaveImage node, fetched through /view
    page.page.wait_for_function("(window.app.states.get('3').images || [])[0]?.naturalWidth === 48")
    url = page.js("() => window.app.states.get('3').imageUrls[0]")
    assert "/view?" in url and "type=output" in url
    assert page.js("() => window.app.runningNodeId") is None
    assert page.console_errors == []


def test_text_output_is_shown_on_its_node(server, open_page):
    page = open_page(server)
    page.load(chain(("EmptyImage", {"width": 40, "height": 30}), ("GetImageSize", {"_socket": "image"}),
                    ("PreviewAny", {"_socket": "source"})))
    page.page.click("#btn-queue")
    done(page)
    page.page.wait_for_function("window.app.states.get('3')?.text === '40'")


def test_validation_error_is_shown_on_the_offending_node(server, open_page):
    page = open_page(server)
    workflow = chain(("EmptyImage", {"width": 32, "height": 32}), ("ImageBlur", {"blur_radius": 2}),
                     ("SaveImage", {"_socket": "images"}))   # the blur's image is not connected
    page.load(workflow)
    with page.page.expect_response(lambda r: r.url.endswith("/prompt")) as response:
        page.page.click("#btn-queue")
    assert response.value.status == 400
    body = response.value.json()
    assert list(body["node_errors"]) == ["2"]
    page.page.wait_for_function("!!window.app.states.get('2')?.error")
    error = page.js("() => window.app.states.get('2').error")
    assert "image" in error
    assert page.js("() => window.app.states.get('1')?.error") is None
    box = page.page.locator("#errors .error-item")
    assert box.count() == 1 and box.get_attribute("data-node") == "2" and "image" in box.inner_text()
    # errors are cleared by the next, valid run
    page.drag(page.slot_point(1, 0, False), page.slot_point(2, 0, True))
    page.page.click("#btn-queue")
    done(page)
    assert page.js("() => window.app.states.get('2').error") is None
    assert page.page.locator("#errors").is_hidden()


def test_execution_error_is_shown_on_the_failing_node(server, open_page):
    page = open_page(server)
    page.load(chain(("EmptyImage", {"width": 16, "height": 16}),
                    ("FailingImage", {"_socket": "image", "message": "kaput here"}),
                    ("SaveImage", {"_socket": "images"})))
    page.page.click("#btn-queue")
    page.page.wait_for_function("!!window.app.states.get('2')?.error")
    assert "kaput here" in page.js("() => window.app.states.get('2').error")
    assert "RuntimeError" in page.page.locator("#errors .error-item").inner_text()
    done(page, "error")
    # the failure is logged on the page, not thrown
    assert page.console_errors == []


def test_interrupt_and_cancel_a_queued_job(server, open_page):
    page = open_page(server)
    page.load(slow_workflow(seconds=30, steps=300))
    page.page.click("#btn-panel")
    first = page.js("() => window.app.queuePrompt().then(a => a.prompt_id)")
    second = page.js("() => window.app.queuePrompt().then(a => a.prompt_id)")
    try:
        page.page.wait_for_function("window.app.runningNodeId === '2'", timeout=20_000)
    except Exception:
        raise AssertionError(f"not running: {page.js('() => window.app.events')}") from None
    # the second job waits in the queue panel; cancel it there
    row = page.page.locator(f'#queue-list .job-pending[data-prompt-id="{second}"]')
    row.wait_for()
    with page.page.expect_request(lambda r: r.url.endswith("/queue") and r.method == "POST") as request:
        row.locator(".job-cancel").click()
    assert json.loads(request.value.post_data) == {"delete": [second]}
    row.wait_for(state="detached")
    # interrupt the running one from the toolbar
    page.page.click("#btn-interrupt")
    page.page.wait_for_function("window.app.events.some(e => e.type === 'execution_interrupted')", timeout=15_000)
    done(page, "interrupted")
    history = page.js("() => window.app.api.history()")
    assert history[first]["status"]["status_str"] == "error"
    assert second not in history
    page.page.wait_for_function("window.app.api.queue().then(q => q.queue_pending.length === 0 && "
                                "q.queue_running.length === 0)")
    assert page.console_errors == []


def test_history_panel_reopens_a_past_run(server, open_page):
    page = open_page(server)
    page.load(slow_workflow(seconds=0.2, steps=2))
    page.page.click("#btn-queue")
    done(page)
    page.page.click("#btn-file")
    page.page.click("#btn-new")
    assert page.js("() => window.app.graph._nodes.length") == 0
    page.page.click("#btn-panel")
    entry = page.page.locator("#history-list .job.status-success").first
    entry.wait_for()
    entry.locator(".job-open").click()
    page.page.wait_for_function("window.app.graph._nodes.length === 3")
    page.page.wait_for_function("(window.app.states.get('3')?.images || [])[0]?.naturalWidth === 48")
    assert [n["type"] for n in page.workflow()["nodes"]] == ["EmptyImage", "SlowImage", "SaveImage"]
    assert page.console_errors == []
