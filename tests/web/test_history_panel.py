"""The queue & history panel in a real Chromium: each history row shows the workflow's name (the file
the workflow was opened from, sent as extra_data.workflow_name), its start time, its duration and its
run status, with interrupted, error and cancelled runs styled apart."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone


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


def image_then(class_type: str, **inputs):
    return chain(("EmptyImage", {"width": 48, "height": 32, "batch_size": 1, "color": 0x3080E0}),
                 (class_type, {"_socket": "image", **inputs}),
                 ("SaveImage", {"_socket": "images", "filename_prefix": "web"}))


def open_file(page, name: str, workflow: dict) -> None:
    """Open a workflow file through the Workflow menu's file input, as a user picking a file does."""
    page.page.set_input_files("#file-input", files=[{"name": name, "mimeType": "application/json",
                                                      "buffer": json.dumps(workflow).encode()}])
    # the canvas names the workflow after the file as it loads it (an earlier file's graph may have
    # as many nodes, so the node count cannot tell)
    page.page.wait_for_function("(stem) => window.app.workflowName === stem", arg=name.removesuffix(".json"))


def queue(page) -> tuple[str, dict]:
    """Press Queue; the prompt id and the body that was posted."""
    with page.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as reply:
        page.page.click("#btn-queue")
    return reply.value.json()["prompt_id"], json.loads(reply.value.request.post_data)


def row(page, prompt_id: str):
    locator = page.page.locator(f'#history-list .job[data-prompt-id="{prompt_id}"]')
    locator.wait_for(timeout=30_000)
    return locator


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_history_row_shows_name_start_duration_and_status(server, open_page):
    page = open_page(server)
    page.page.click("#btn-panel")
    open_file(page, "shiny_flow.json", image_then("SlowImage", steps=2, seconds=0.2))
    assert page.js("() => window.app.workflowName") == "shiny_flow"
    prompt_id, body = queue(page)
    assert body["extra_data"]["workflow_name"] == "shiny_flow"
    assert body["extra_data"]["extra_pnginfo"]["workflow"]["nodes"]  # the canvas workflow still goes too

    entry = row(page, prompt_id)
    record = page.js("(id) => window.app.api.historyItem(id).then(h => h[id].nodegraph)", prompt_id)
    assert record["status"] == "success" and record["workflow_name"] == "shiny_flow"
    assert entry.get_attribute("class").split() == ["job", "status-success"]
    assert entry.locator(".job-name").inner_text() == "shiny_flow"
    assert entry.locator(".job-status").inner_text() == "success"
    # start time: a <time> carrying the exact instant, shown as a time of day
    time = entry.locator("time.job-time")
    assert time.get_attribute("datetime") == iso(record["start_time"])
    assert re.search(r"\d{1,2}:\d{2}:\d{2}", time.inner_text())
    # duration: the record's, shown in ms / s / min
    duration = entry.locator(".job-duration")
    assert duration.get_attribute("data-ms") == str(record["duration_ms"])
    assert re.fullmatch(r"\d+ ms|\d+\.\d s|\d+ min \d\d s", duration.inner_text())
    assert entry.locator("img").count() == 1  # the saved image's thumbnail, as before

    # the name stays with the canvas across a reload, and comes back when a run is reopened
    page.page.reload()
    page.page.wait_for_function("document.body.dataset.ready === '1'")
    assert page.js("() => window.app.workflowName") == "shiny_flow"
    page.page.click("#btn-file")
    page.page.click("#btn-new")
    assert page.js("() => window.app.workflowName") is None
    page.page.click("#btn-panel")
    row(page, prompt_id).locator(".job-open").click()
    page.page.wait_for_function("window.app.workflowName === 'shiny_flow'")
    assert page.console_errors == []


def test_interrupted_error_and_cancelled_runs_look_different(server, open_page):
    page = open_page(server)
    page.page.click("#btn-panel")

    open_file(page, "broken.json", image_then("FailingImage", message="kaput"))
    failed, _ = queue(page)
    row(page, failed)

    open_file(page, "long_one.json", image_then("SlowImage", steps=300, seconds=30))
    interrupted, _ = queue(page)
    cancelled, _ = queue(page)
    page.page.wait_for_function("window.app.runningNodeId === '2'", timeout=20_000)
    pending = page.page.locator(f'#queue-list .job-pending[data-prompt-id="{cancelled}"]')
    assert pending.locator(".job-name").inner_text() == "long_one"  # queued rows show the name too
    pending.locator(".job-cancel").click()
    pending.wait_for(state="detached")
    page.page.click("#btn-interrupt")

    rows = {pid: row(page, pid) for pid in (failed, interrupted, cancelled)}
    page.page.wait_for_function(f"document.querySelector('#history-list [data-prompt-id=\"{interrupted}\"]')"
                                ".dataset.status === 'interrupted'")
    statuses = {pid: r.locator(".job-status").inner_text() for pid, r in rows.items()}
    assert statuses == {failed: "error", interrupted: "interrupted", cancelled: "cancelled"}
    for pid, status in statuses.items():
        assert f"status-{status}" in rows[pid].get_attribute("class").split()
    assert rows[failed].locator(".job-name").inner_text() == "broken"
    assert rows[interrupted].locator(".job-name").inner_text() == "long_one"
    assert rows[cancelled].locator(".job-duration").inner_text() == "–"  # it never ran
    # ComfyUI's reading of the interrupted run is unchanged: status_str "error"
    comfy = page.js("(id) => window.app.api.historyItem(id).then(h => h[id].status.status_str)", interrupted)
    assert comfy == "error"
    # each status has its own look (border and badge), none the plain row's: interrupted is not an error
    look_of = """(row) => [getComputedStyle(row).borderTopColor, getComputedStyle(row).borderTopStyle,
                           getComputedStyle(row.querySelector('.job-status')).color]"""
    look = {pid: page.js(f"""(id) => ({look_of})(
        document.querySelector(`#history-list [data-prompt-id="${{id}}"]`))""", pid) for pid in rows}
    plain = page.js(f"""() => {{
        const row = document.createElement('div');
        row.className = 'job';
        row.innerHTML = '<div class="job-info"><div class="job-meta"><span class="job-status">x</span></div></div>';
        document.getElementById('history-list').appendChild(row);
        const look = ({look_of})(row);
        row.remove();
        return look;
    }}""")
    assert len({tuple(v) for v in look.values()} | {tuple(plain)}) == 4, (look, plain)
    assert look[cancelled][1] == "dashed"
    # GET /history as ComfyUI clients call it leaves the cancelled job out
    assert cancelled not in page.js("() => window.app.api.history()")
    assert page.console_errors == []
