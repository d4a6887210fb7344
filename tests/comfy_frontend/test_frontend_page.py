"""Where the pages are: --frontend builtin (our canvas at /, ComfyUI's frontend at /comfyui/ with its
API, WebSocket and template aliases there) and --frontend comfyui (ComfyUI's at /, ours at /builtin/);
the frontend package located as ComfyUI locates it; a clear error and page when it is missing."""

from __future__ import annotations

import pathlib

import pytest
from aiohttp import web

from nodegraph.cli import build_parser
from nodegraph.server.comfy_frontend.page import TESTED_VERSION, add_page_routes, find_frontend
from tests.helpers.aio import run_coroutine

PACKAGE = find_frontend()


def test_the_installed_package_is_the_tested_version():
    assert PACKAGE is not None, "pip install -e '.[frontend]' installs comfyui-frontend-package"
    assert PACKAGE.version == TESTED_VERSION
    assert (PACKAGE.static_dir / "index.html").is_file() and PACKAGE.static_dir.name == "static"


def test_builtin_default_keeps_our_canvas_at_root(client):
    root = client.get("/")
    assert b"<title>nodegraph</title>" in root.body
    comfy = client.get("/comfyui/")
    assert comfy.status == 200 and comfy.body == PACKAGE.index.read_bytes()
    assert comfy.headers["cache-control"] == "no-cache"
    redirect = client.get("/comfyui")
    assert redirect.status == 302 and redirect.headers["location"] == "/comfyui/"
    # the page computes its API base from its path: everything it calls answers under /comfyui too
    assert client.get("/comfyui/api/jobs").json()["jobs"] == []
    assert client.get("/comfyui/api/object_info/SaveImage").json()["SaveImage"]["output_node"] is True
    assert client.get("/comfyui/templates/index.json").json()[0]["title"] == "nodegraph"
    assert client.get("/comfyui/internal/logs/raw").status == 200
    assert client.get("/comfyui/api/settings").json() == {}
    script = next(p for p in (PACKAGE.static_dir / "assets").iterdir() if p.suffix == ".js")
    asset = client.get(f"/comfyui/assets/{script.name}")
    assert asset.status == 200 and asset.body == script.read_bytes()
    assert client.get(f"/assets/{script.name}").status == 200  # the page asks for /assets/images/… by absolute path
    assert client.get("/comfyui/user.css").headers["content-type"].startswith("text/css")
    assert client.get("/builtin/").status == 404


def test_comfyui_frontend_at_root_and_ours_at_builtin(start_server):
    client = start_server(frontend="comfyui").client()
    assert client.get("/").body == PACKAGE.index.read_bytes()
    assert client.get("/index.html").body == PACKAGE.index.read_bytes()
    ours = client.get("/builtin/")
    assert ours.status == 200 and b"<title>nodegraph</title>" in ours.body
    assert client.get("/builtin").headers["location"] == "/builtin/"
    assert client.get("/src/main.js").status == 200 and client.get("/lib/litegraph.core.js").status == 200
    assert client.get("/materialdesignicons.min.css").status == 200
    assert client.get("/extensions/core/groupNode.js").status == 200
    assert client.get("/extensions").json() == []  # the API route, not the folder
    assert client.get("/comfyui/").status == 404
    assert client.get("/assets/..%2F..%2F__init__.py").status in (403, 404)


def test_unknown_choice_and_missing_package(start_server, monkeypatch):
    with pytest.raises(ValueError, match="unknown frontend"):
        start_server(frontend="vue")
    monkeypatch.setattr("nodegraph.server.comfy_frontend.page.find_frontend", lambda: None)
    with pytest.raises(ValueError, match=r"nodegraph\[frontend\]"):
        start_server(frontend="comfyui")


def test_not_installed_page_names_the_fix():
    async def scenario():
        from aiohttp.test_utils import TestClient, TestServer

        app = web.Application()
        add_page_routes(app, None, "/comfyui")
        async with TestClient(TestServer(app)) as http:
            reply = await http.get("/comfyui/")
            return reply.status, await reply.text()

    status, text = run_coroutine(scenario())
    assert status == 404 and "pip install &#x27;nodegraph[frontend]&#x27;" in text


def test_cli_flag():
    parser = build_parser()
    assert parser.parse_args(["serve"]).frontend == "builtin"
    assert parser.parse_args(["serve", "--frontend", "comfyui"]).frontend == "comfyui"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--frontend", "other"])


def test_pyproject_pins_the_tested_frontend():
    text = (pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'"comfyui-frontend-package=={TESTED_VERSION}"' in text
