"""Editing comforts of the canvas in a real Chromium: undo/redo (keys and the Edit menu), save-as with a
typed file name, a run counter that counts a loop's rounds and never shows more done than total, the
node and canvas context menus listing each entry once, the output gallery of this page's images, and
the `?` keyboard help."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from nodegraph.registry import default_registry
from nodegraph.workflow.ui_format import ui_to_api

from tests.web import web_test_nodes
from tests.web.web_helpers import ui_workflow

pytestmark = pytest.mark.browser

# A design-loop-shaped workflow of cheap built-in nodes (as tests/test_cli_output.py's): three rounds,
# each growing a text, showing it and saving a small picture coloured by the round's index.
ROUND_BODY = {
    "value": {"class_type": "LoopInput", "inputs": {"name": "value"}},
    "index": {"class_type": "LoopInput", "inputs": {"name": "index"}},
    "grow": {"class_type": "StringConcat", "inputs": {"a": ["value", 0], "b": "x", "separator": "-"}},
    "show": {"class_type": "ShowText", "inputs": {"text": ["grow", 0]}},
    "canvas": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                      "color": ["index", 0]}},
    "save": {"class_type": "SaveImage", "inputs": {"images": ["canvas", 0], "filename_prefix": "loop/round"}},
    "next": {"class_type": "LoopOutput", "inputs": {"value": ["grow", 0]}},
}


def loop_workflow(rounds: int = 3) -> dict:
    return {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "s"}},
        "2": {"class_type": "Repeat", "inputs": {"initial": ["1", 0], "rounds": rounds, "body": json.dumps(ROUND_BODY)}},
        "3": {"class_type": "ShowText", "inputs": {"text": ["2", 0]}},
    }


def image_workflow() -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 16, "batch_size": 1, "color": 0xC04020}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "gallery"}}}


def new_workflow(page) -> None:
    page.page.click("#btn-file")
    page.page.click("#btn-new")
    assert page.js("() => window.app.graph._nodes.length") == 0


def focus_canvas(page) -> None:
    """Give the canvas the keyboard (a click could be read as the second half of a double-click, which
    opens the node search)."""
    page.page.locator("#graph-canvas").focus()


def types(page) -> list[str]:
    return sorted(page.js("() => window.app.graph._nodes.map(n => n.type)"))


def edit_number(page, node_id: int, name: str, text: str) -> None:
    page.page.mouse.click(*page.widget_point(node_id, name))
    dialog = page.page.locator(".graphdialog input")
    dialog.wait_for()
    dialog.fill(text)
    dialog.press("Enter")


def done(page, text: str = "done", timeout: int = 30_000) -> None:
    page.page.wait_for_function(f"document.getElementById('overall-text').textContent === '{text}'", timeout=timeout)
    page.page.wait_for_function("window.app.activePrompt === null", timeout=timeout)


def menu_entries(page) -> list[str]:
    menu = page.page.locator(".litecontextmenu").first
    menu.wait_for()
    entries = page.js("""() => [...document.querySelector('.litecontextmenu').querySelectorAll('.litemenu-entry')]
        .filter(e => !e.classList.contains('separator')).map(e => e.textContent.trim())""")
    page.js("() => LiteGraph.closeAllContextMenus(window)")
    return entries


# -- undo / redo -------------------------------------------------------------------------------------

def test_undo_redo_node_add_widget_edit_move_and_link(server, open_page):
    page = open_page(server)
    new_workflow(page)
    # add a node from the palette, undo removes it, redo (both key spellings) brings it back
    page.page.fill("#palette-filter", "ImageBlur")
    page.page.click('#palette .pal-node[data-type="ImageBlur"]')
    assert types(page) == ["ImageBlur"]
    blur = page.node_ids("ImageBlur")[0]
    focus_canvas(page)
    page.page.keyboard.press("Control+z")
    assert types(page) == []
    page.page.keyboard.press("Control+Shift+z")
    assert types(page) == ["ImageBlur"] and page.node_ids("ImageBlur") == [blur]
    page.page.keyboard.press("Control+z")
    page.page.keyboard.press("Control+y")
    assert types(page) == ["ImageBlur"]
    # a widget value edited in its dialog: undo restores the old value, the Edit menu's Redo the new one
    before = page.js("(id) => window.app.node(id).widgets[0].value", blur)
    edit_number(page, blur, "blur_radius", "9")
    assert page.js("(id) => window.app.node(id).widgets[0].value", blur) == 9 != before
    focus_canvas(page)
    page.page.keyboard.press("Control+z")
    assert page.js("(id) => window.app.node(id).widgets[0].value", blur) == before
    page.page.click("#btn-edit")
    page.page.click("#btn-redo")
    assert page.js("(id) => window.app.node(id).widgets[0].value", blur) == 9
    # a move is one step, recorded when the drag ends
    start = page.js("(id) => [...window.app.node(id).pos]", blur)
    title = page.client_point(blur, (60, -10))
    page.drag(title, (title[0] + 150, title[1] + 90))
    moved = page.js("(id) => [...window.app.node(id).pos]", blur)
    assert moved != start
    focus_canvas(page)
    page.page.keyboard.press("Control+z")
    assert page.js("(id) => [...window.app.node(id).pos]", blur) == start
    page.page.keyboard.press("Control+Shift+z")
    assert page.js("(id) => [...window.app.node(id).pos]", blur) == moved
    # a link made by dragging, undone and redone
    empty = page.js("(id) => { const p = window.app.node(id).pos; return window.app.addNode('EmptyImage', [p[0] - 320, p[1]]).id; }", blur)
    page.drag(page.slot_point(empty, 0, False), page.slot_point(blur, 0, True))
    assert page.js("(id) => window.app.node(id).inputs[0].link", blur) is not None
    focus_canvas(page)
    page.page.keyboard.press("Control+z")
    assert page.js("(id) => window.app.node(id).inputs[0].link", blur) is None
    assert page.js("() => Object.keys(window.app.graph.links).length") == 0
    page.page.keyboard.press("Control+Shift+z")
    link = page.js("(id) => window.app.graph.links[window.app.node(id).inputs[0].link]", blur)
    assert link["origin_id"] == empty and link["target_id"] == blur
    # undo all the way back: New's empty graph; one more undo brings back the graph before New
    for _ in range(20):
        if page.js("() => !window.app.undo.stack.canUndo"):
            break
        page.page.click("#btn-edit")
        page.page.click("#btn-undo")
    assert page.js("() => document.getElementById('btn-undo').disabled") is True
    assert page.console_errors == []


def test_undo_history_is_bounded_and_a_new_edit_drops_redo(server, open_page):
    page = open_page(server)
    new_workflow(page)
    node = page.js("() => window.app.addNode('PrimitiveInt', [0, 0]).id")
    page.js("(id) => { for (let i = 1; i <= 130; i++) { window.app.node(id).widgets[0].value = i; window.app.undo.check(); } }", node)
    stack = page.js("() => ({ n: window.app.undo.stack.items.length, limit: window.app.undo.stack.limit })")
    assert stack["n"] == stack["limit"] == 100
    focus_canvas(page)
    for _ in range(3):
        page.page.keyboard.press("Control+z")
    assert page.js("(id) => window.app.node(id).widgets[0].value", node) == 127
    page.js("(id) => { window.app.node(id).widgets[0].value = 500; }", node)
    page.page.keyboard.press("Control+Shift+z")            # the edit ended the redo branch
    assert page.js("(id) => window.app.node(id).widgets[0].value", node) == 500
    assert page.js("() => window.app.undo.stack.canRedo") is False
    # typing in a text field keeps the field's own undo: the graph is not touched
    before = page.js("(id) => window.app.node(id).widgets[0].value", node)
    page.page.click("#palette-filter")
    page.page.keyboard.press("Control+z")
    assert page.js("(id) => window.app.node(id).widgets[0].value", node) == before
    assert page.console_errors == []


# -- save as ------------------------------------------------------------------------------------------

def save_download(page, action):
    with page.page.expect_download() as info:
        action()
    download = info.value
    return download.suggested_filename, json.loads(open(download.path()).read())


def test_save_as_asks_for_a_name_and_remembers_it(server, open_page):
    page = open_page(server)
    page.page.click("#btn-file")
    page.page.click('#workflow-list [data-workflow="image_basics.ui.json"]')
    page.page.wait_for_function("window.app.workflowName === 'image_basics'")
    shown = page.workflow()
    # Save as… offers the current name, and the download gets the typed one
    page.page.click("#btn-file")
    page.page.click("#btn-save-as")
    name_input = page.page.locator("#save-as-input")
    name_input.wait_for()
    assert name_input.input_value() == "image_basics.json"
    name_input.fill("my blurry flow")
    name, saved = save_download(page, lambda: name_input.press("Enter"))
    assert name == "my blurry flow.json"
    assert saved == shown
    assert page.js("() => window.app.workflowName") == "my blurry flow"
    assert page.page.locator("#save-as").count() == 0
    # Save (Ctrl+S) now saves under that name without asking
    focus_canvas(page)
    name, _ = save_download(page, lambda: page.page.keyboard.press("Control+s"))
    assert name == "my blurry flow.json"
    # the queued prompt carries the new name (the history panel shows it)
    with page.page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as request:
        page.page.click("#btn-queue")
    assert json.loads(request.value.post_data)["extra_data"]["workflow_name"] == "my blurry flow"
    done(page)
    # an edit undone after save-as keeps the saved name: the name belongs to the workflow, not the step
    node = page.node_ids("ImageBlur")[0]
    edit_number(page, node, "blur_radius", "5")
    focus_canvas(page)
    page.page.keyboard.press("Control+z")
    assert page.js("() => window.app.workflowName") == "my blurry flow"
    # Ctrl+Shift+S asks again; a typed name with folders or odd characters is cleaned, .json added
    name, _ = save_download(page, lambda: (page.page.keyboard.press("Control+Shift+s"),
                                           page.page.locator("#save-as-input").fill('sub/dir/fin:al?'),
                                           page.page.locator("#save-as .ask-ok").click()))
    assert name == "final.json"
    # an unnamed workflow asks on Save; Escape cancels without a download
    new_workflow(page)
    downloads = []
    page.page.on("download", lambda d: downloads.append(d))
    page.page.click("#btn-file")
    page.page.click("#btn-save")
    page.page.locator("#save-as-input").wait_for()
    assert page.page.locator("#save-as-input").input_value() == "workflow.json"
    page.page.keyboard.press("Escape")
    assert page.page.locator("#save-as").count() == 0
    page.page.wait_for_timeout(300)
    assert downloads == [] and page.js("() => window.app.workflowName") is None
    assert page.console_errors == []


# -- run counter --------------------------------------------------------------------------------------

COUNT = re.compile(r"^(\d+)/(\d+) nodes · (\d+)%$")


def record_counter(page) -> None:
    page.js("""() => {
        if (window.__counter) window.__counter.disconnect();
        const counts = window.__counts = [];
        const text = document.getElementById('overall-text');
        window.__counter = new MutationObserver(() => counts.push(text.textContent));
        window.__counter.observe(text, { childList: true, characterData: true, subtree: true });
    }""")


def run_ids(page, prompt_id: str) -> set[str]:
    """Every node id the server reported for a prompt (started, cached or finished)."""
    ids = set()
    for event in page.js("() => window.app.events"):
        data = event.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if event["type"] in ("executing", "node_finished") and data.get("node") is not None:
            ids.add(str(data["node"]))
        elif event["type"] == "execution_cached":
            ids.update(str(n) for n in data.get("nodes") or [])
    return ids


def counted_run(page, expect_prefix: str) -> None:
    record_counter(page)
    prompt_id = page.js("() => window.app.queuePrompt().then(a => a.prompt_id)")
    done(page)
    counts = [COUNT.match(t) for t in page.js("() => window.__counts")]
    counts = [(int(m[1]), int(m[2]), int(m[3])) for m in counts if m]
    assert counts, page.js("() => window.__counts")
    for done_, total, percent in counts:
        assert done_ <= total and percent <= 100, counts
    ids = run_ids(page, prompt_id)
    assert any(i.startswith(expect_prefix) for i in ids), ids   # the loop's own nodes were reported
    final = page.js("() => document.getElementById('overall').dataset.count")
    assert final == f"{len(ids)}/{len(ids)}", (final, sorted(ids))
    assert counts[-1] == (len(ids), len(ids), 100), counts   # the last count shown before "done"
    assert len(ids) > 3                                          # more than the prompt's three nodes


def test_run_counter_counts_loop_rounds_and_never_exceeds_its_total(server, open_page):
    page = open_page(server)
    page.load(loop_workflow(3))
    repeat = page.node_ids("Repeat")[0]
    counted_run(page, f"{repeat}.")
    page.page.wait_for_function("window.app.states.get('3')?.text === 's-x-x-x'")
    # one round more: the earlier rounds come from the cache, the counter still ends at N/N
    page.js("(id) => { window.app.node(id).widgets.find(w => w.name === 'rounds').value = 4; }", repeat)
    counted_run(page, f"{repeat}.")
    page.page.wait_for_function("window.app.states.get('3')?.text === 's-x-x-x-x'")
    assert page.console_errors == []


# -- context menus ------------------------------------------------------------------------------------

def test_context_menus_list_each_entry_once(server, open_page):
    page = open_page(server)
    for _ in range(2):    # loading again must not add the entries again
        page.load(ui_workflow("image_basics.ui.json"))
    blur = page.node_ids("ImageBlur")[0]
    page.page.mouse.click(*page.client_point(blur, (80, -10)), button="right")
    entries = menu_entries(page)
    assert entries, "no node menu"
    twice = [e for e, n in Counter(entries).items() if n > 1]
    assert twice == [], entries
    for entry in ("Convert widget to input", "Bypass (Ctrl+B)", "Remove", "Title", "Clone"):
        assert entry in entries, entries
    # the canvas menu: Undo and Redo once each
    box = page.page.locator("#graph-canvas").bounding_box()
    page.page.mouse.click(box["x"] + box["width"] - 30, box["y"] + box["height"] - 30, button="right")
    entries = menu_entries(page)
    assert [e for e, n in Counter(entries).items() if n > 1] == [], entries
    assert "Add Node" in entries and "Undo (Ctrl+Z)" in entries and "Redo (Ctrl+Shift+Z)" in entries
    assert page.console_errors == []


# -- gallery ------------------------------------------------------------------------------------------

def test_gallery_shows_the_images_of_this_pages_runs(server, open_page):
    page = open_page(server)
    assert page.page.locator("#btn-gallery").inner_text() == "Gallery (0)"
    page.load(image_workflow())
    prompt_id = page.js("() => window.app.queuePrompt().then(a => a.prompt_id)")
    done(page)
    page.page.wait_for_function("document.getElementById('btn-gallery').textContent === 'Gallery (1)'")
    page.page.click("#btn-gallery")
    item = page.page.locator("#gallery-list .gallery-item")
    assert item.count() == 1 and item.get_attribute("data-prompt-id") == prompt_id
    page.page.wait_for_function("document.querySelector('#gallery-list img').naturalWidth === 24")
    assert "/view?" in item.get_attribute("data-url") and "type=output" in item.get_attribute("data-url")
    # a loop's rounds each add their picture, newest first
    page.load(loop_workflow(3))
    page.js("() => window.app.queuePrompt()")
    done(page)
    page.page.wait_for_function("document.querySelectorAll('#gallery-list .gallery-item').length === 4")
    # click → the viewer; its link opens the image itself, its button loads the run's workflow
    new_workflow(page)
    page.page.locator("#gallery-list .gallery-item").last.click()
    viewer = page.page.locator("#gallery-viewer")
    viewer.wait_for()
    page.page.wait_for_function("document.querySelector('#gallery-viewer .viewer-image').naturalWidth === 24")
    with page.page.context.expect_page() as tab:
        viewer.locator(".viewer-open").click()
    tab.value.wait_for_load_state()
    assert "/view?" in tab.value.url
    tab.value.close()
    viewer.locator(".viewer-load").click()
    assert page.page.locator("#gallery-viewer").count() == 0
    page.page.wait_for_function("window.app.graph._nodes.map(n => n.type).sort().join() === 'EmptyImage,SaveImage'")
    page.page.wait_for_function("(window.app.states.get('2')?.images || [])[0]?.naturalWidth === 24")
    # G hides the panel again
    focus_canvas(page)
    page.page.keyboard.press("g")
    assert page.page.locator("#gallery-panel").is_hidden()
    assert page.console_errors == []


# -- keyboard help ------------------------------------------------------------------------------------

def test_question_mark_shows_the_keyboard_help(server, open_page):
    page = open_page(server)
    focus_canvas(page)
    page.page.keyboard.press("?")
    help_box = page.page.locator("#help-overlay")
    help_box.wait_for()
    text = help_box.inner_text()
    for shortcut in ("Ctrl+Z", "Ctrl+Y", "Ctrl+Shift+S", "Ctrl+Enter", "Undo", "Redo", "Save as"):
        assert shortcut in text, text
    page.page.keyboard.press("Escape")
    assert help_box.count() == 0
    # the toolbar's ? button opens it too; typing ? in a text field does not
    page.page.click("#btn-help")
    help_box.wait_for()
    page.page.locator("#help-overlay .dialog-close").click()
    page.page.click("#palette-filter")
    page.page.keyboard.press("?")
    assert page.page.locator("#help-overlay").count() == 0
    assert page.page.input_value("#palette-filter") == "?"
    assert page.console_errors == []


# -- loop bodies as graphs --------------------------------------------------------------------------

def body_of(page, node_id: int) -> dict:
    """The loop node's body as the workflow holds it (what save, undo and Queue read)."""
    workflow = page.workflow()
    node = next(n for n in workflow["nodes"] if n["id"] == node_id)
    return json.loads(next(v for v in node["widgets_values"] if isinstance(v, str) and v.startswith("{")))


def shown_point(page, node_id: int, *, widget: str | None = None, slot: int | None = None,
                is_input: bool = False) -> tuple[float, float]:
    """Page coordinates of a widget's middle or a slot of a node of the graph the canvas shows (a loop
    body's nodes are not the workflow's, which conftest's helpers address)."""
    if widget is not None:   # a widget's place is known once the canvas has drawn it
        page.page.wait_for_function("""([id, name]) => {
            const node = window.app.canvas.graph.getNodeById(id);
            const w = node && node.widgets.find(w => w.name === name);
            return !!w && w.last_y !== undefined;
        }""", arg=[node_id, widget])
    return tuple(page.js("""([id, widget, slot, isInput]) => {
        const app = window.app, node = app.canvas.graph.getNodeById(id), ds = app.canvas.ds;
        const rect = app.canvasEl.getBoundingClientRect();
        let p;
        if (widget !== null) {
            const w = node.widgets.find(w => w.name === widget);
            p = [node.pos[0] + node.size[0] / 2, node.pos[1] + w.last_y + LiteGraph.NODE_WIDGET_HEIGHT / 2];
        } else {
            p = node.getConnectionPos(isInput, slot);
        }
        return [rect.left + (p[0] + ds.offset[0]) * ds.scale, rect.top + (p[1] + ds.offset[1]) * ds.scale];
    }""", [node_id, widget, slot, is_input]))


def shown_types(page) -> list[str]:
    return sorted(page.js("() => window.app.canvas.graph._nodes.map(n => n.type)"))


def test_loop_body_is_edited_as_a_graph_not_as_json(server, open_page):
    page = open_page(server)
    page.load(loop_workflow(2))
    repeat = page.node_ids("Repeat")[0]
    assert page.js("(id) => window.app.node(id).widgets.find(w => w.inputName === 'body').type", repeat) == "loopbody"
    # the body widget is a button: it opens the body as a graph with the body's nodes
    page.page.mouse.click(*page.widget_point(repeat, "body"))
    page.page.locator("#loop-body-bar").wait_for()
    assert page.js("() => window.app.canvas.graph !== window.app.graph")
    assert shown_types(page) == sorted(n["class_type"] for n in ROUND_BODY.values())
    # edit a widget of a body node in its dialog: the loop's body JSON follows at once, ids kept
    grow = page.js("() => window.app.canvas.graph._nodes.find(n => n.type === 'StringConcat').id")
    page.page.mouse.click(*shown_point(page, grow, widget="b"))
    area = page.page.locator(".graphdialog textarea")          # StringConcat's b is multi-line text
    area.fill("y")
    page.page.locator(".graphdialog button").click()
    page.page.wait_for_function("() => window.app.canvas.graph._nodes.find(n => n.type === 'StringConcat').widgets[1].value === 'y'")
    body = body_of(page, repeat)    # read through window.app.node: the workflow's node, written back
    assert set(body) == set(ROUND_BODY)
    assert body["grow"]["inputs"] == {**ROUND_BODY["grow"]["inputs"], "b": "y"}
    assert body["canvas"]["inputs"]["color"] == ["index", 0] and body["next"] == ROUND_BODY["next"]
    # a node added from the palette lands in the body, linked by dragging: a new body entry
    steps = page.js("() => window.app.undo.stack.index")
    page.page.fill("#palette-filter", "ShowText")
    page.page.click('#palette .pal-node[data-type="ShowText"]')
    # the addition is its own undo step (recorded after the click's handlers): moving the node before
    # it was recorded would fold the two into one step
    page.page.wait_for_function("(n) => window.app.undo.stack.index > n", arg=steps)
    page.page.fill("#palette-filter", "")
    added = page.js("() => window.app.canvas.graph._nodes.filter(n => n.type === 'ShowText').map(n => n.id).sort((a, b) => b - a)[0]")
    page.js("(id) => { const g = window.app.canvas.graph, grow = g._nodes.find(n => n.type === 'StringConcat');"
            " g.getNodeById(id).pos = [grow.pos[0] + 40, grow.pos[1] + 260]; window.app.undo.check(); }", added)
    page.drag(shown_point(page, grow, slot=0), shown_point(page, added, slot=0, is_input=True))
    page.page.wait_for_function("(id) => window.app.canvas.graph.getNodeById(id).inputs[0].link !== null", arg=added)
    body = body_of(page, repeat)
    assert body[str(added)] == {"class_type": "ShowText", "inputs": {"text": ["grow", 0]}}
    assert page.node_ids("ShowText") == [3]     # the workflow itself gained nothing
    # Escape goes back to the workflow, where Queue runs the edited body
    page.page.locator("#graph-canvas").focus()
    page.page.keyboard.press("Escape")
    assert page.page.locator("#loop-body-bar").count() == 0
    assert page.js("() => window.app.canvas.graph === window.app.graph")
    prompt = page.js("() => window.app.lastPromptPreview()")
    assert json.loads(prompt[str(repeat)]["inputs"]["body"]) == body
    # the saved workflow (body's canvas form in the loop node's properties) converts as the page does
    registry = default_registry()
    registry.add_module(web_test_nodes)
    saved = page.workflow()
    assert "body_canvas" in next(n for n in saved["nodes"] if n["id"] == repeat)["properties"]
    assert ui_to_api(saved, registry) == prompt
    page.js("() => window.app.queuePrompt()")
    done(page)
    page.page.wait_for_function("window.app.states.get('3')?.text === 's-y-y'")
    # undo restores the body's earlier JSON; reopening shows the body where it was left
    focus_canvas(page)
    page.page.keyboard.press("Control+z")                      # the link
    assert body_of(page, repeat)[str(added)]["inputs"] == {}
    page.page.keyboard.press("Control+z")                      # the move
    page.page.keyboard.press("Control+z")                      # the added node
    assert str(added) not in body_of(page, repeat)
    assert body_of(page, repeat)["grow"]["inputs"]["b"] == "y"
    for _ in range(3):
        page.page.keyboard.press("Control+Shift+z")
    assert body_of(page, repeat)[str(added)]["inputs"] == {"text": ["grow", 0]}
    page.page.mouse.click(*page.widget_point(repeat, "body"))
    page.page.locator("#loop-body-bar").wait_for()
    assert page.js("(id) => window.app.canvas.graph.getNodeById(id)?.type", added) == "ShowText"
    # undo inside the body: the body is put back and stays open
    empty = page.js("() => window.app.canvas.graph._nodes.find(n => n.type === 'EmptyImage').id")
    page.page.mouse.click(*shown_point(page, empty, widget="width"))
    width = page.page.locator(".graphdialog input")
    width.fill("16")
    width.press("Enter")
    assert body_of(page, repeat)["canvas"]["inputs"]["width"] == 16
    focus_canvas(page)
    page.page.keyboard.press("Control+z")
    assert page.page.locator("#loop-body-bar").count() == 1
    assert page.js("() => window.app.canvas.graph._nodes.find(n => n.type === 'EmptyImage').widgets[0].value") == 8
    assert body_of(page, repeat)["canvas"]["inputs"]["width"] == 8
    page.page.click("#btn-loop-back")
    assert page.console_errors == []


def test_ready_design_loop_body_opens_and_closes_unchanged(server, open_page):
    page = open_page(server)
    page.page.click("#btn-file")
    page.page.click('#workflow-list [data-workflow="design_loop.ui.json"]')
    page.page.wait_for_function("window.app.workflowName === 'design_loop'")
    repeat = page.node_ids("Repeat")[0]
    before = page.js("(id) => window.app.node(id).widgets.find(w => w.inputName === 'body').value", repeat)
    prompt = page.js("() => window.app.lastPromptPreview()")
    page.js("(id) => window.app.loops.open(window.app.node(id))", repeat)
    assert len(page.js("() => window.app.canvas.graph._nodes")) == len(json.loads(before))
    # moving a body node is remembered with the loop node (its canvas form), the JSON stays as it was
    node = page.js("() => window.app.canvas.graph._nodes.find(n => n.type === 'KSampler').id")
    title = shown_point(page, node, slot=0, is_input=True)           # just left of the first input
    title = (title[0] + 40, title[1] - 30)                             # …up in the title bar
    page.drag(title, (title[0] + 80, title[1] + 40))
    moved = page.js("(id) => [...window.app.canvas.graph.getNodeById(id).pos]", node)
    page.page.click("#btn-loop-back")
    assert page.js("(id) => window.app.node(id).widgets.find(w => w.inputName === 'body').value", repeat) == before
    assert page.js("() => window.app.lastPromptPreview()") == prompt
    page.js("(id) => window.app.loops.open(window.app.node(id))", repeat)
    assert page.js("(id) => [...window.app.canvas.graph.getNodeById(id).pos]", node) == moved
    page.page.click("#btn-loop-back")
    assert page.console_errors == []
