"""The page's files and the ready-workflow routes over plain HTTP: what is served, with which type,
the token written into asset URLs, and names confined to their folders."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from nodegraph.server.static import render_index
from tests.helpers.aio import run_coroutine


def get(url: str, token: str | None = None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_page_modules_and_litegraph_are_served(server):
    status, ctype, body = get(f"{server.url}/")
    assert status == 200 and ctype.startswith("text/html")
    assert b'src="/lib/litegraph.core.js"' in body and b"{{" not in body
    for path, kind in [("/src/main.js", "text/javascript"), ("/src/api.js", "text/javascript"),
                       ("/style.css", "text/css"), ("/lib/litegraph.core.js", "text/javascript"),
                       ("/lib/litegraph.css", "text/css")]:
        status, ctype, body = get(server.url + path)
        assert status == 200 and ctype.startswith(kind), path
    assert get(f"{server.url}/src/nope.js")[0] == 404
    assert get(f"{server.url}/lib/litegraph.js")[0] == 404


@pytest.mark.parametrize("path", ["/src/..%2Fpackage.json", "/src/%2E%2E%2Findex.html", "/workflows/..%2Fpyproject.toml",
                                  "/workflows/.hidden.json", "/workflows/a%2Fb.json", "/workflows/README.md"])
def test_names_outside_their_folder_are_refused(server, path):
    assert get(server.url + path)[0] == 404


def test_workflow_list_and_files(server, tmp_path):
    status, _, body = get(f"{server.url}/workflows")
    items = json.loads(body)
    names = {i["name"]: i["format"] for i in items}
    assert names["image_basics.ui.json"] == "ui" and names["image_basics.json"] == "api"
    status, ctype, body = get(f"{server.url}/workflows/image_basics.ui.json")
    assert status == 200 and json.loads(body)["version"] == 0.4


def test_symlinks_out_of_the_workflow_folder_are_refused(tmp_path):
    from nodegraph.server.static import _inside

    folder = tmp_path / "workflows"
    folder.mkdir()
    (tmp_path / "secret.json").write_text("{}")
    os.symlink(tmp_path / "secret.json", folder / "link.json")
    (folder / "ok.json").write_text("{}")
    assert _inside(folder, "ok.json") is not None
    assert _inside(folder, "link.json") is None
    assert _inside(folder, "../secret.json") is None


def test_token_goes_into_asset_urls_and_the_import_map():
    html = render_index('<link href="/style.css{{q}}"><script type="importmap">{{importmap}}</script>',
                        "a b&c", ["api.js", "main.js"])
    assert 'href="/style.css?token=a%20b%26c"' in html
    imports = json.loads(html.split('importmap">')[1].split("</script>")[0])["imports"]
    assert imports == {"/src/api.js": "/src/api.js?token=a%20b%26c", "/src/main.js": "/src/main.js?token=a%20b%26c"}
    assert json.loads(render_index("{{importmap}}", None, ["api.js"])) == {"imports": {}}


def test_token_is_required_for_the_page_and_its_files(start_server):
    server = start_server(auth_token="tok")
    assert get(f"{server.url}/")[0] == 401
    assert get(f"{server.url}/src/main.js")[0] == 401
    status, _, body = get(f"{server.url}/?token=tok")
    assert status == 200 and b"/src/main.js?token=tok" in body
    assert get(f"{server.url}/src/main.js?token=tok")[0] == 200
    assert get(f"{server.url}/workflows", token="tok")[0] == 200


def test_missing_canvas_files_are_reported_at_start_up_and_on_the_page(tmp_path, caplog):
    """A web folder without litegraph's files: a warning naming them when the routes are added (the
    server's start-up), and ``/`` is a page saying so, not a blank canvas. The other routes still work."""
    import logging

    import aiohttp
    from aiohttp import web

    from nodegraph.server.static import add_static_routes

    folder = tmp_path / "web"
    (folder / "src").mkdir(parents=True)
    (folder / "index.html").write_text("<html>{{importmap}}</html>")
    (folder / "style.css").write_text("")
    (folder / "src" / "main.js").write_text("")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "a.json").write_text("{}")
    app = web.Application()
    with caplog.at_level(logging.WARNING, logger="nodegraph.server"):
        add_static_routes(app, folder, tmp_path / "workflows")
    assert "vendor/litegraph/litegraph.core.js, vendor/litegraph/litegraph.css" in caplog.text
    assert str(folder) in caplog.text and "reinstall nodegraph" in caplog.text

    async def fetch(paths):
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                got = []
                for path in paths:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        got.append((response.status, response.content_type, await response.text()))
                return got
        finally:
            await runner.cleanup()

    page, lib, flows = run_coroutine(fetch(["/", "/lib/litegraph.core.js", "/workflows"]))
    assert page[0] == 500 and page[1] == "text/html"
    assert "canvas" in page[2] and "<code>vendor/litegraph/litegraph.core.js</code>" in page[2]
    assert "reinstall nodegraph" in page[2]
    assert lib[0] == 404 and "litegraph" in json.loads(lib[2])["error"]["message"]
    assert flows[0] == 200 and json.loads(flows[2]) == [{"name": "a.json", "format": "api"}]
