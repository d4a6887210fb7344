"""Browser fixtures: live servers (``tests/conftest.py``) on the model-free test nodes of ``web_test_nodes``,
and pages of the canvas in the session's headless Chromium (``browser``, ``tests/conftest.py``).

Nothing is skipped: without Chromium at /usr/bin/chromium, Playwright or litegraph's file (vendored in
``web/vendor/litegraph/``) the tests fail and say what to install.
"""

from __future__ import annotations

import pytest

from tests.helpers.live_server import ServerSetup
from tests.web.web_helpers import LITEGRAPH, WebServer


@pytest.fixture
def server_setup() -> ServerSetup:
    return ServerSetup(nodes_modules=("tests.web.web_test_nodes",), server_class=WebServer)


@pytest.fixture(scope="session")
def litegraph():
    """The vendored canvas library the page loads: the canvas tests fail (never skip) without it."""
    if not LITEGRAPH.is_file():
        pytest.fail(f"litegraph.js is missing ({LITEGRAPH}): it is vendored in the repository; "
                    "restore it with 'git checkout -- web/vendor'")
    return LITEGRAPH


class AppPage:
    """A Playwright page on the canvas, with the console errors it logged and small helpers."""

    def __init__(self, page, server: WebServer) -> None:
        self.page = page
        self.server = server
        self.console_errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        page.on("pageerror", lambda exc: self.console_errors.append(f"pageerror: {exc}"))

    def open(self, url: str | None = None) -> "AppPage":
        self.page.goto(url or self.server.page_url())
        self.page.wait_for_function("document.body.dataset.ready === '1'", timeout=20_000)
        # events of a prompt go only to its client's socket: queue nothing before it is connected
        self.page.wait_for_function("window.app.api.connected", timeout=20_000)
        return self

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def workflow(self) -> dict:
        return self.js("() => window.app.workflow()")

    def load(self, data: dict) -> None:
        self.js("(data) => window.app.load(data, 'test')", data)
        self.wait_drawn()

    def wait_drawn(self) -> None:
        """Wait until the canvas has drawn the graph as it is now: a load moves and sizes nodes, and
        their widgets' places are known only from a draw, so a click right after a load can miss."""
        self.js("""() => new Promise(done => {
            window.app.canvas.setDirty(true, true);
            requestAnimationFrame(() => requestAnimationFrame(() => done(true)));
        })""")
        self.page.wait_for_function("""() => window.app.graph._nodes.every(
            n => (n.flags && n.flags.collapsed) || !n.widgets || n.widgets.every(w => w.last_y !== undefined))""")

    def node_ids(self, type_: str) -> list[int]:
        return self.js("(t) => window.app.graph._nodes.filter(n => n.type === t).map(n => n.id)", type_)

    def client_point(self, node_id: int, local: tuple[float, float]) -> tuple[float, float]:
        """Page coordinates of a point given relative to a node's top-left corner (canvas units)."""
        return tuple(self.js("""([id, lx, ly]) => {
            const app = window.app, node = app.node(id), ds = app.canvas.ds;
            const rect = app.canvasEl.getBoundingClientRect();
            return [rect.left + (node.pos[0] + lx + ds.offset[0]) * ds.scale,
                    rect.top + (node.pos[1] + ly + ds.offset[1]) * ds.scale];
        }""", [node_id, local[0], local[1]]))

    def slot_point(self, node_id: int, slot: int, is_input: bool) -> tuple[float, float]:
        return tuple(self.js("""([id, slot, isInput]) => {
            const app = window.app, node = app.node(id), ds = app.canvas.ds;
            const rect = app.canvasEl.getBoundingClientRect();
            const p = node.getConnectionPos(isInput, slot);
            return [rect.left + (p[0] + ds.offset[0]) * ds.scale, rect.top + (p[1] + ds.offset[1]) * ds.scale];
        }""", [node_id, slot, is_input]))

    def widget_point(self, node_id: int, name: str) -> tuple[float, float]:
        """The middle of a widget (away from the number arrows), once the canvas has drawn it (a widget's
        place is known from its first draw: right after a load the next frame may not have come yet)."""
        self.page.wait_for_function("""([id, name]) => {
            const node = window.app.node(id);
            const w = node && node.widgets.find(w => w.name === name);
            return !!w && w.last_y !== undefined;
        }""", arg=[node_id, name])
        ly = self.js("""([id, name]) => {
            const node = window.app.node(id);
            const w = node.widgets.find(w => w.name === name);
            return w.last_y + LiteGraph.NODE_WIDGET_HEIGHT / 2;
        }""", [node_id, name])
        width = self.js("(id) => window.app.node(id).size[0]", node_id)
        return self.client_point(node_id, (width / 2, ly))

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=5)
        mouse.move(*end, steps=5)
        mouse.up()


@pytest.fixture
def open_page(browser, litegraph):
    contexts = []

    def open_page(server: WebServer, url: str | None = None) -> AppPage:
        context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        contexts.append(context)
        return AppPage(context.new_page(), server).open(url)

    yield open_page
    for context in contexts:
        context.close()


