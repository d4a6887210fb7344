"""ComfyUI's official frontend (comfyui-frontend-package, the version pyproject's ``frontend`` extra pins)
in a headless Chromium against ``nodegraph serve --frontend comfyui``, on the built-in shapes-world
models (so runs are real and take seconds).

Every test also checks that the page logged no failed request to our server and no console error
caused by us (:class:`~tests.comfy_frontend.comfy_page.ComfyPage`; what it lets pass, and why, is
listed there: one 404 ComfyUI gives too, and the frontend's own requests to other hosts)."""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import pytest

from nodegraph.registry import default_registry
from nodegraph.server.comfy_frontend import templates
from nodegraph.workflow.ui_format import ui_to_api
from tests.helpers.live_server import LiveServers, ServerSetup
from tests.comfy_frontend.comfy_page import ComfyPage
from tests.comfy_frontend.conftest import FrontendServer
from tests.comfy_frontend.test_frontend_workflows import FIXTURE, FRONTEND_PROMPT, strip_meta

pytestmark = pytest.mark.browser


@pytest.fixture
def open_page(browser):
    contexts = []

    def open_page(server, path: str = "/") -> ComfyPage:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        return ComfyPage(context.new_page(), server).open(path)

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One ``nodegraph serve --frontend comfyui`` for the module: its engine keeps the shapes-world
    models loaded from one test to the next. ComfyUI's template packages, when installed here (bench/
    templates.py reads them), are left out: their categories would open the first-visit dialog instead of
    ours."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(templates, "package_template_dirs", lambda: ())
        servers = LiveServers(ServerSetup(server_class=FrontendServer), tmp_path_factory.mktemp("comfy"))
        yield servers.start(frontend="comfyui")
        servers.stop_all()


@pytest.fixture
def comfy_server(shared_server):
    """The shared server with an empty user folder: each test is a first visit (no settings, no saved
    workflows)."""
    root = shared_server.user_root
    shutil.rmtree(root, ignore_errors=True)
    (root / "workflows").mkdir(parents=True)
    (root / "subgraphs").mkdir()
    return shared_server


def wait_until(check, timeout: float = 30, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_first_visit_shows_our_templates_and_nodes(comfy_server, open_page):
    page = open_page(comfy_server)
    dialog = page.page.get_by_role("dialog")
    dialog.get_by_text("txt2img", exact=True).wait_for(timeout=30_000)  # first run: the templates dialog
    assert dialog.get_by_text("design loop", exact=True).is_visible()
    classes = set(comfy_server.client().get("/api/object_info").json())
    registered = set(page.js("() => Object.keys(window.LiteGraph.registered_node_types)"))
    assert classes <= registered, sorted(classes - registered)[:10]
    page.page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.page.locator("[data-testid=node-library-tab-button]").click()
    page.page.get_by_placeholder("Search Nodes").fill("PromptRewrite")
    page.page.get_by_text("PromptRewrite", exact=True).first.wait_for(timeout=10_000)
    assert page.problems() == []


def test_a_template_runs_into_its_node_and_the_job_queue(comfy_server, open_page):
    page = open_page(comfy_server)
    page.page.get_by_role("dialog").get_by_text("txt2img", exact=True).click(timeout=30_000)
    page.page.wait_for_function("() => window.app.graph.nodes.length === 7")
    page.run()
    src = page.wait_for_image(9)
    job = comfy_server.client().get("/api/jobs?status=completed&limit=1").json()["jobs"][0]
    filename = job["preview_output"]["filename"]
    assert f"/api/view?filename={filename}" in src and "type=output" in src and filename.startswith("txt2img_")
    assert (pathlib.Path(comfy_server.config.paths.output_dir) / filename).is_file()
    page.page.locator("[data-testid=queue-overlay-toggle]").click()
    page.page.get_by_text(filename, exact=True).first.wait_for(timeout=15_000)  # the job queue panel
    assert page.problems() == []


def test_a_saved_workflow_reopens_in_a_new_session(comfy_server, open_page):
    page = open_page(comfy_server)
    page.page.get_by_role("dialog").get_by_text("txt2img", exact=True).click(timeout=30_000)
    page.page.wait_for_function("() => window.app.graph.nodes.length === 7")
    template_types = sorted(page.node_types())
    page.page.mouse.click(700, 780)  # the canvas has the focus, as after any edit
    page.page.keyboard.press("Control+s")
    page.page.get_by_role("dialog").locator("input").fill("My shapes")
    page.page.keyboard.press("Enter")
    saved = comfy_server.user_root / "workflows" / "My shapes.json"
    wait_until(saved.is_file, what=str(saved))
    stored = json.loads(wait_until(lambda: saved.read_text() or None, what="the saved file's content"))
    assert sorted(n["type"] for n in stored["nodes"]) == template_types

    again = open_page(comfy_server)  # a new browser session: nothing but the server remembers the file
    again.page.locator("[data-testid=workflows-tab-button]").click()
    again.page.get_by_text("My shapes", exact=True).first.click(timeout=15_000)
    again.page.wait_for_function("() => window.app.graph.nodes.length === 7")
    assert sorted(again.node_types()) == template_types
    assert again.js("() => window.app.extensionManager.workflow.activeWorkflow.path") == "workflows/My shapes.json"
    assert page.problems() == [] and again.problems() == []


def test_settings_persist_across_sessions(comfy_server, open_page):
    page = open_page(comfy_server)
    page.page.get_by_role("dialog").get_by_text("txt2img", exact=True).wait_for(timeout=30_000)  # first run
    page.page.keyboard.press("Escape")
    page.js("() => window.app.extensionManager.setting.set('Comfy.Sidebar.Location', 'right')")
    settings_file = comfy_server.user_root / "comfy.settings.json"
    wait_until(lambda: json.loads(settings_file.read_text() or "{}").get("Comfy.Sidebar.Location") == "right",
               what="the setting in comfy.settings.json")

    again = open_page(comfy_server)
    assert again.js("() => window.app.extensionManager.setting.get('Comfy.Sidebar.Location')") == "right"
    box = again.page.locator("[data-testid=node-library-tab-button]").bounding_box()
    assert box["x"] > 1000  # the sidebar is on the right
    time.sleep(1)
    assert not again.page.get_by_role("dialog").get_by_text("txt2img", exact=True).is_visible()  # not a first run
    assert page.problems() == [] and again.problems() == []


def test_a_workflow_with_nested_subgraphs_runs(comfy_server, open_page):
    """The frontend-made fixture, opened from the user's workflows: what the page posts equals our
    library's conversion of the file, runs to an image, and a second Run posts the incremented seed."""
    (comfy_server.user_root / "workflows" / "features.json").write_text(FIXTURE.read_text())
    page = open_page(comfy_server)
    page.page.keyboard.press("Escape")
    page.page.get_by_role("dialog").wait_for(state="hidden")
    page.page.locator("[data-testid=workflows-tab-button]").click()
    page.page.get_by_text("features", exact=True).first.click(timeout=15_000)
    page.page.wait_for_function("() => window.app.graph.nodes.length === 10")
    done = comfy_server.client().get("/api/jobs?status=completed").json()["pagination"]["total"]
    page.run()
    assert "/api/view?filename=txt2img_" in page.wait_for_image(9)
    posted = page.posted_prompts[0]["prompt"]
    assert strip_meta(posted) == FRONTEND_PROMPT
    assert strip_meta(posted) == strip_meta(ui_to_api(json.loads(FIXTURE.read_text()), default_registry()))
    page.run()
    wait_until(lambda: len(page.posted_prompts) == 2, what="the second run")
    assert page.posted_prompts[1]["prompt"]["14:15:3"]["inputs"]["seed"] == 8  # control_after_generate
    client = comfy_server.client()
    wait_until(lambda: client.get("/api/jobs?status=completed").json()["pagination"]["total"] == done + 2,
               timeout=120, what="both runs to complete")
    assert page.problems() == []


def test_default_builtin_serves_it_under_comfyui(start_server, open_page):
    server = start_server()  # --frontend builtin: our canvas at /
    page = open_page(server, "/comfyui/")
    page.page.get_by_role("dialog").get_by_text("txt2img", exact=True).wait_for(timeout=30_000)
    assert page.js("() => window.comfyAPI.api.api.api_base") == "/comfyui"
    assert b"<title>nodegraph</title>" in server.client().get("/").body
    assert page.problems() == []

