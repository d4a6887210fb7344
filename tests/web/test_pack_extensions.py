"""Custom node packs' frontend extensions on our canvas (issue 20 point 5): a pack's WEB_DIRECTORY
script, listed by GET /extensions, is imported by the page with ComfyUI's ``app`` / ``api`` modules
standing in (the import map points /scripts/app.js and /scripts/api.js at ours); its
beforeRegisterNodeDef patches a node class, nodeCreated and setup run, and a listener added with
``api.addEventListener`` receives the pack's ``send_sync`` message from a run; ``app.ui.settings`` gives
an extension's declared default. A script that needs a part of ComfyUI's frontend we do not have, or
that patches litegraph's classes, is skipped and the canvas still starts."""

from __future__ import annotations

import json
import textwrap

import pytest

from nodegraph.server.static import render_index

PACK = '''
import server


class Ping:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}
    RETURN_TYPES = ()
    FUNCTION = "ping"
    OUTPUT_NODE = True

    def ping(self, text):
        server.PromptServer.instance.send_sync("ngext.ping", {"text": text})
        return {}


WEB_DIRECTORY = "./js"
NODE_CLASS_MAPPINGS = {"NgExtPing": Ping}
'''

EXTENSION = '''
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

window.ngExt = { defs: [], created: [], setup: 0, messages: [] };
app.registerExtension({
  name: "ngtest.ext",
  async beforeRegisterNodeDef(nodeType, nodeData, theApp) {
    if (nodeData.name !== "NgExtPing") return;
    window.ngExt.defs.push([nodeData.name, theApp === app]);
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      created?.apply(this, arguments);
      this.color = "#335533";
      this.ngMarked = true;
    };
  },
  nodeCreated(node) {
    window.ngExt.created.push([node.type, node.comfyClass]);
  },
  settings: [{ id: "ngtest.greeting", defaultValue: "hello" }],
  setup() {
    window.ngExt.setup += 1;
    window.ngExt.greeting = app.ui.settings.getSettingValue("ngtest.greeting", "none");
    window.ngExt.viaGlobal = window.comfyAPI.app.app === app && window.comfyAPI.api.api === api;
    api.addEventListener("ngext.ping", (event) => {
      window.ngExt.messages.push(event.detail);
      const node = app.graph._nodes.find((n) => n.type === "NgExtPing");
      if (node) node.title = "pinged: " + event.detail.text;
    });
  },
});
'''

NEEDS_MORE = 'import { ComfyWidgets } from "../../scripts/widgets.js";\nwindow.ngWidgets = ComfyWidgets;\n'
# patches ComfyUI's litegraph: would stop our canvas drawing if it ran; it is read and not imported
PATCHES_LITEGRAPH = 'window.ngPatched = true;\nLGraphCanvas.prototype.drawNode = null;\n'


@pytest.fixture
def pack_server(start_server, tmp_path):
    pack = tmp_path / "custom_nodes" / "ngext"
    (pack / "js").mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent(PACK).lstrip())
    (pack / "js" / "ext.js").write_text(textwrap.dedent(EXTENSION).lstrip())
    (pack / "js" / "needs_more.js").write_text(NEEDS_MORE)
    (pack / "js" / "patches_litegraph.js").write_text(PATCHES_LITEGRAPH)
    return start_server(custom_nodes_dirs=(tmp_path / "custom_nodes",))


def test_the_import_map_points_comfyuis_app_and_api_modules_at_ours():
    modules = ["api.js", "comfy_api.js", "comfy_app.js", "main.js"]
    assert json.loads(render_index("{{importmap}}", None, modules))["imports"] == {
        "/scripts/app.js": "/src/comfy_app.js", "/scripts/api.js": "/src/comfy_api.js"}
    with_token = json.loads(render_index("{{importmap}}", "t", modules))["imports"]
    assert with_token["/scripts/app.js"] == "/src/comfy_app.js?token=t"


def test_a_packs_extension_hooks_the_canvas_and_hears_its_messages(pack_server, open_page):
    page = open_page(pack_server)
    assert page.js("() => window.ngExt.defs") == [["NgExtPing", True]]
    assert page.js("() => window.ngExt.setup") == 1
    assert page.js("() => [window.ngExt.greeting, window.ngExt.viaGlobal]") == ["hello", True]
    failed = dict(page.js("() => window.app.extensions.failed.map(f => [f.url, f.error])"))
    assert set(failed) == {"/extensions/ngext/needs_more.js", "/extensions/ngext/patches_litegraph.js"}
    assert "a patch of LGraphCanvas.prototype.drawNode" in failed["/extensions/ngext/patches_litegraph.js"]
    assert page.js("() => window.ngPatched === undefined && typeof LGraphCanvas.prototype.drawNode") == "function"
    page.load({"1": {"class_type": "NgExtPing", "inputs": {"text": "from the pack"}}})
    node = page.node_ids("NgExtPing")[0]
    assert page.js("(id) => window.app.node(id).ngMarked", node) is True
    assert ["NgExtPing", "NgExtPing"] in page.js("() => window.ngExt.created")
    page.page.click("#btn-queue")
    page.page.wait_for_function("window.ngExt.messages.length === 1", timeout=30_000)
    assert page.js("() => window.ngExt.messages") == [{"text": "from the pack"}]
    assert page.js("(id) => window.app.node(id).title", node) == "pinged: from the pack"
    assert not [e for e in page.console_errors if not e.startswith("Failed to load resource")]  # widgets.js: 404
