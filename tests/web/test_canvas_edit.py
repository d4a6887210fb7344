"""Editing on the canvas in a real Chromium: loading cleanly, the palette, the search box, typed
sockets that refuse wrong connections, and widgets whose edits reach the queued prompt."""

from __future__ import annotations

import json

from tests.web.web_helpers import ui_workflow


def blank(page) -> None:
    page.js("() => { window.app.graph.clear(); window.app.persist(true); }")


def add(page, type_: str, x: float, y: float) -> int:
    return page.js("([t, x, y]) => window.app.addNode(t, [x, y]).id", [type_, x, y])


def test_page_loads_without_console_errors_and_builds_palette(server, open_page):
    page = open_page(server)
    info = page.js("() => window.app.objectInfo")
    registered = page.js("() => Object.keys(LiteGraph.registered_node_types)")
    assert set(info) <= set(registered)
    # categories from /object_info, display names and descriptions as tooltips
    page.page.locator('#palette-tree > details[data-category="image"] > summary').click()  # not api/image
    entry = page.page.locator('#palette .pal-node[data-type="SaveImage"]')
    assert entry.inner_text() == "Save Image"
    assert entry.get_attribute("title") == info["SaveImage"]["description"]
    assert page.js("() => LiteGraph.registered_node_types['ImageBlur'].category") == "image/postprocessing"
    # sockets are coloured by type
    colors = page.js("() => [LGraphCanvas.link_type_colors.IMAGE, LGraphCanvas.link_type_colors.MASK]")
    assert colors[0] and colors[1] and colors[0] != colors[1]
    page.page.wait_for_selector("#conn.conn-on")
    assert page.console_errors == []


def test_search_box_adds_nodes_by_class_and_display_name(server, open_page):
    page = open_page(server)
    blank(page)
    box = page.page.locator("#graph-canvas").bounding_box()
    page.page.mouse.dblclick(box["x"] + 400, box["y"] + 300)
    page.page.wait_for_selector("#search input")
    page.page.keyboard.type("blur")
    first = page.page.locator("#search .result").first
    assert first.get_attribute("data-type") == "ImageBlur"
    page.page.keyboard.press("Enter")
    assert page.node_ids("ImageBlur") == [1]
    # display names match too ("Save Image" is SaveImage's)
    page.page.mouse.dblclick(box["x"] + 700, box["y"] + 500)
    page.page.wait_for_selector("#search input")
    page.page.keyboard.type("save image")
    page.page.keyboard.press("Enter")
    assert len(page.node_ids("SaveImage")) == 1
    # the node lands where the search box was opened
    pos = page.js("() => window.app.node(2).pos")
    assert 600 < pos[0] + 200 and pos[1] > 300
    assert page.console_errors == []


def test_wrong_type_connection_is_refused_and_right_one_made(server, open_page):
    page = open_page(server)
    blank(page)
    size = add(page, "GetImageSize", 60, 80)       # outputs INT width, height, batch_size
    empty = add(page, "EmptyImage", 60, 320)        # outputs IMAGE
    invert = add(page, "ImageInvert", 520, 200)     # input IMAGE
    page.drag(page.slot_point(size, 0, False), page.slot_point(invert, 0, True))
    assert page.js("(id) => window.app.node(id).inputs[0].link", invert) is None
    refusal = page.js("() => window.app.lastRefusal")
    assert refusal["from"] == "INT" and refusal["to"] == "IMAGE"
    assert "Cannot connect INT to IMAGE" in page.page.locator(".toast.error").first.inner_text()
    page.drag(page.slot_point(empty, 0, False), page.slot_point(invert, 0, True))
    link = page.js("(id) => { const n = window.app.node(id); return window.app.graph.links[n.inputs[0].link]; }", invert)
    assert link["origin_id"] == empty and link["type"] == "IMAGE"
    assert page.console_errors == []


def edit_number(page, node_id: int, name: str, text: str) -> None:
    x, y = page.widget_point(node_id, name)
    page.page.mouse.click(x, y)
    dialog = page.page.locator(".graphdialog input")
    dialog.wait_for()
    dialog.fill(text)
    dialog.press("Enter")


def test_widget_edits_reach_the_queued_prompt(server, open_page):
    page = open_page(server)
    page.load(ui_workflow("image_basics.ui.json"))
    blur = page.node_ids("ImageBlur")[0]
    noise = page.node_ids("ImageAddNoise")[0]
    edit_number(page, blur, "blur_radius", "7.6")          # INT: rounded
    assert page.js("(id) => window.app.node(id).widgets[0].value", blur) == 8
    edit_number(page, blur, "sigma", "99")                  # FLOAT max 10: clamped
    assert page.js("(id) => window.app.node(id).widgets[1].value", blur) == 10
    # the seed randomizes after each queue: the prompt carries the value shown before
    page.js("""(id) => { const n = window.app.node(id);
        n.widgets.find(w => w.name === 'control_after_generate').value = 'randomize'; }""", noise)
    seed_before = page.js("(id) => window.app.node(id).widgets[0].value", noise)
    with page.page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as request:
        page.page.click("#btn-queue")
    body = json.loads(request.value.post_data)
    assert body["client_id"] == page.js("() => window.app.api.clientId")
    assert body["prompt"][str(blur)]["inputs"]["blur_radius"] == 8
    assert body["prompt"][str(blur)]["inputs"]["sigma"] == 10
    assert body["prompt"][str(noise)]["inputs"]["seed"] == seed_before
    workflow = body["extra_data"]["extra_pnginfo"]["workflow"]
    assert {n["id"] for n in workflow["nodes"]} == {n["id"] for n in page.workflow()["nodes"]}
    page.page.wait_for_function(f"window.app.node({noise}).widgets[0].value !== {seed_before}")
    page.page.wait_for_function("document.getElementById('overall-text').textContent === 'done'")
    assert page.console_errors == []


def test_text_toggle_combo_and_upload_widgets(server, open_page, tmp_path):
    from PIL import Image

    page = open_page(server)
    blank(page)
    text = add(page, "PrimitiveStringMultiline", 60, 60)
    flag = add(page, "PrimitiveBoolean", 60, 260)
    load = add(page, "LoadImage", 420, 60)
    # multi-line text: a textarea editor
    page.page.mouse.click(*page.widget_point(text, "value"))
    area = page.page.locator(".graphdialog textarea")
    area.fill("a red fox\nin the snow")
    page.page.locator(".graphdialog button").click()
    assert page.js("(id) => window.app.node(id).widgets[0].value", text) == "a red fox\nin the snow"
    # toggle
    page.page.mouse.click(*page.widget_point(flag, "value"))
    assert page.js("(id) => window.app.node(id).widgets[0].value", flag) is True
    # image upload: the button posts the file to /upload/image and selects it in the combo
    png = tmp_path / "cat.png"
    Image.new("RGB", (32, 24), (200, 40, 40)).save(png)
    with page.page.expect_file_chooser() as chooser:
        page.page.mouse.click(*page.widget_point(load, "choose file to upload"))
    with page.page.expect_response(lambda r: "/upload/image" in r.url) as response:
        chooser.value.set_files(str(png))
    assert response.value.status == 200
    page.page.wait_for_function(f"window.app.node({load}).widgets[0].value === 'cat.png'")
    page.page.wait_for_function(f"window.app.states.get('{load}').images[0].naturalWidth === 32")
    assert page.js(f"() => window.app.node({load}).serialize().widgets_values") == ["cat.png", "image"]
    assert page.console_errors == []
