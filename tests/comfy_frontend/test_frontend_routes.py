"""The other routes ComfyUI's frontend calls: templates (our ready workflows, ComfyUI's template
packages' folders), global subgraph blueprints, the model library, safetensors metadata, i18n, the
log panel (with its WebSocket subscription) and the mask editor's upload."""

from __future__ import annotations

import io
import json
import pathlib

import pytest

from nodegraph.assets import workflows_dir
from nodegraph.server.comfy_frontend.templates import TemplateLibrary
from tests.helpers.aio import run_coroutine


def test_our_ready_workflows_are_templates(client):
    index = client.get("/templates/index.json").json()
    assert index[0]["moduleName"] == "default" and index[0]["title"] == "nodegraph"
    templates = {t["name"]: t for t in index[0]["templates"]}
    ui_files = sorted(p.name.removesuffix(".ui.json") for p in workflows_dir().glob("*.ui.json"))
    assert sorted(templates) == ui_files
    txt2img = templates["txt2img"]
    assert txt2img["mediaType"] == "image" and txt2img["mediaSubtype"] == "png"
    assert "KSampler" in txt2img["description"]
    workflow = client.get("/templates/txt2img.json")
    assert workflow.headers["content-type"].startswith("application/json")
    assert workflow.json() == json.loads((workflows_dir() / "txt2img.ui.json").read_text())
    thumbnail = client.get("/templates/txt2img-1.png")
    assert thumbnail.status == 200 and thumbnail.headers["content-type"] == "image/png"
    from PIL import Image

    with Image.open(io.BytesIO(thumbnail.body)) as image:
        assert image.size == (512, 384)
    assert client.get("/templates/index.fr.json").json()[0]["templates"] == index[0]["templates"]
    # logos come only from installed template packages (none in CI; bench/templates.py's may be here)
    assert client.get("/templates/index_logo.json").json() == TemplateLibrary().logos()
    assert client.get("/api/workflow_templates").json() == {}
    for missing in ("nothing.json", "..%2Fsecret.json", "txt2img-2.png"):
        assert client.get(f"/templates/{missing}").status == 404


def test_installed_template_packages_follow_ours(tmp_path):
    """A folder laid out as ComfyUI's template packages lay theirs out (index.json, workflow files,
    thumbnails): its categories come after ours, its files are served, ours win on a name clash."""
    package = tmp_path / "comfyui_workflow_templates_json" / "templates"
    package.mkdir(parents=True)
    category = {"moduleName": "default", "title": "Basics", "type": "image",
                "templates": [{"name": "flux_dev", "mediaType": "image", "mediaSubtype": "webp", "description": "x"}]}
    (package / "index.json").write_text(json.dumps([category]))
    (package / "index.zh.json").write_text(json.dumps([{**category, "title": "基础"}]))
    (package / "index_logo.json").write_text(json.dumps({"BFL": "logo/bfl.png"}))
    (package / "flux_dev.json").write_text('{"nodes": []}')
    (package / "flux_dev-1.webp").write_bytes(b"RIFF0000WEBP")
    (package / "txt2img.json").write_text('{"theirs": true}')
    library = TemplateLibrary(package_dirs=(package,))
    index = library.index()
    assert [c["title"] for c in index] == ["nodegraph", "Basics"]
    assert library.index("index.zh.json")[1]["title"] == "基础"
    assert library.logos() == {"BFL": "logo/bfl.png"}
    assert library.file("flux_dev.json") == (package / "flux_dev.json", "application/json")
    assert library.file("flux_dev-1.webp") == (package / "flux_dev-1.webp", "image/webp")
    assert library.file("txt2img.json")[0] == workflows_dir() / "txt2img.ui.json"
    assert library.file("../flux_dev.json") is None


def test_global_subgraphs_from_the_blueprint_folder(server, client):
    folder = server.data_dir / "subgraphs"
    folder.mkdir()
    blueprint = {"nodes": [], "definitions": {"subgraphs": [{"id": "abc", "name": "Blur twice"}]}}
    (folder / "Blur twice.json").write_text(json.dumps(blueprint))
    listing = client.get("/api/global_subgraphs").json()
    (bid, entry), = listing.items()
    assert entry == {"source": "nodegraph", "name": "Blur twice", "path": "subgraphs/Blur twice.json",
                     "info": {"node_pack": "nodegraph"}}
    one = client.get(f"/api/global_subgraphs/{bid}").json()
    assert json.loads(one["data"]) == blueprint
    assert client.get("/api/global_subgraphs/unknown").status == 404
    assert client.get("/api/global_subgraphs").json().keys() == listing.keys()  # ids are stable


def test_model_library(start_server, tmp_path):
    """Our models folder and an extra_model_paths.yaml folder (ComfyUI's format): each file with the
    index of the folder it is in."""
    from dataclasses import replace

    from nodegraph.context import Paths
    from nodegraph.model_folders import load_extra_model_paths

    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    (comfy / "models" / "checkpoints" / "theirs.safetensors").write_bytes(b"1" * 4)
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text(f"comfyui:\n  base_path: {comfy}\n  checkpoints: models/checkpoints\n")
    paths = replace(Paths.under(tmp_path), extra_model_dirs=load_extra_model_paths(yaml_file))
    server = start_server(paths=paths)
    client = server.client()
    ours = pathlib.Path(paths.models_dir) / "checkpoints"
    (ours / "sd").mkdir(parents=True)
    (ours / "sd" / "tiny.safetensors").write_bytes(b"0" * 10)
    (ours / "notes.txt").write_text("not a model")
    folders = client.get("/api/experiment/models").json()
    names = [f["name"] for f in folders]
    assert "checkpoints" in names and "configs" not in names and "custom_nodes" not in names
    expected_folders = [str(ours.resolve()), str((comfy / "models" / "checkpoints").resolve())]
    assert folders[names.index("checkpoints")]["folders"] == expected_folders
    files = client.get("/api/experiment/models/checkpoints").json()
    assert [(f["name"], f["pathIndex"], f["size"]) for f in files] == [("sd/tiny.safetensors", 0, 10),
                                                                       ("theirs.safetensors", 1, 4)]
    assert client.get("/api/experiment/models/nope").status == 404
    assert client.get("/internal/folder_paths").json()["checkpoints"] == expected_folders


def test_view_metadata_reads_the_safetensors_header(server, client):
    import torch
    from safetensors.torch import save_file

    folder = pathlib.Path(server.config.paths.models_dir) / "loras"
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "style.safetensors"), metadata={"ss_network_dim": "8"})
    save_file({"w": torch.zeros(2)}, str(folder / "bare.safetensors"))
    assert client.get("/api/view_metadata/loras?filename=style.safetensors").json() == {"ss_network_dim": "8"}
    assert client.get("/api/view_metadata/loras?filename=bare.safetensors").status == 404
    assert client.get("/api/view_metadata/loras?filename=missing.safetensors").status == 404
    assert client.get("/api/view_metadata/loras?filename=style.ckpt").status == 404
    assert client.get("/api/view_metadata/nope?filename=style.safetensors").status == 404
    assert client.get("/api/view_metadata/loras?filename=..%2F..%2Fx.safetensors").status == 403


def test_i18n_is_an_empty_translation_map(client):
    assert client.get("/api/i18n").json() == {}


def test_log_panel_and_its_subscription(server, client):
    import logging

    import aiohttp

    async def scenario():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{client.base}/ws?clientId=logger") as ws:
                await ws.receive(timeout=10)  # status
                reply = await session.patch(f"{client.base}/internal/logs/subscribe",
                                            json={"enabled": True, "clientId": "logger"})
                assert reply.status == 200
                logging.getLogger("nodegraph.test").warning("hello from the test")
                while True:
                    message = json.loads((await ws.receive(timeout=10)).data)
                    if message["type"] == "logs":
                        return message["data"]

    data = run_coroutine(scenario())
    assert "hello from the test" in data["entries"][0]["m"] and data["size"]["cols"] > 0
    raw = client.get("/internal/logs/raw").json()
    assert any("hello from the test" in e["m"] for e in raw["entries"])
    assert "hello from the test" in client.get("/internal/logs").json()
    assert client.request("PATCH", "/internal/logs/subscribe", b"{}",
                          {"Content-Type": "application/json"}).status == 400


def _png(size=(8, 6), colour=(200, 10, 10, 255), text: dict | None = None) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGBA", size, colour).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _multipart(fields: dict, file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "nodegraphboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file_name}"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_upload_mask_puts_the_painted_alpha_on_the_original(server, client):
    from PIL import Image

    original = pathlib.Path(server.config.paths.output_dir) / "pic.png"
    original.write_bytes(_png(text={"workflow": '{"nodes": []}'}))
    mask = Image.new("RGBA", (8, 6), (0, 0, 0, 255))
    mask.putpixel((1, 1), (0, 0, 0, 0))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    body, ctype = _multipart({"type": "input", "subfolder": "clipspace",
                              "original_ref": json.dumps({"filename": "pic.png", "type": "output"})},
                             "clipspace-mask-1.png", buffer.getvalue())
    reply = client.request("POST", "/api/upload/mask", body, {"Content-Type": ctype})
    assert reply.status == 200, reply.body
    assert reply.json() == {"name": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"}
    stored = pathlib.Path(server.config.paths.input_dir) / "clipspace" / "clipspace-mask-1.png"
    with Image.open(stored) as image:
        assert image.mode == "RGBA" and image.text["workflow"] == '{"nodes": []}'
        assert image.getpixel((0, 0)) == (200, 10, 10, 255) and image.getpixel((1, 1)) == (200, 10, 10, 0)


@pytest.mark.parametrize("ref, status", [(None, 400), ("not json", 400), ({"filename": "missing.png"}, 404),
                                         ({"filename": "../x.png"}, 400),
                                         ({"filename": "x.png", "subfolder": "../.."}, 403)])
def test_upload_mask_refuses_bad_references(client, ref, status):
    fields = {} if ref is None else {"original_ref": ref if isinstance(ref, str) else json.dumps(ref)}
    body, ctype = _multipart(fields, "m.png", _png())
    assert client.request("POST", "/api/upload/mask", body, {"Content-Type": ctype}).status == status


def test_upload_mask_size_mismatch_is_400(server, client):
    (pathlib.Path(server.config.paths.output_dir) / "pic.png").write_bytes(_png(size=(8, 6)))
    body, ctype = _multipart({"original_ref": json.dumps({"filename": "pic.png"})}, "m.png", _png(size=(4, 4)))
    reply = client.request("POST", "/api/upload/mask", body, {"Content-Type": ctype})
    assert reply.status == 400 and "4x4" in reply.json()["error"]["message"]


def test_every_new_route_is_in_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/jobs", "/jobs/{job_id}", "/settings/{id}", "/userdata/{file}/move/{dest}", "/templates/{name}",
                 "/global_subgraphs", "/experiment/models/{folder}", "/view_metadata/{folder}", "/upload/mask",
                 "/internal/logs/subscribe", "/i18n", "/users"):
        assert path in paths, path


def test_node_help_pages_are_written_from_our_classes(client):
    page = client.get("/docs/PromptRewrite/en.md")
    assert page.status == 200 and page.headers["content-type"].startswith("text/markdown")
    text = page.body.decode()
    assert text.startswith("# ") and "## Inputs" in text and "| temperature | FLOAT |" in text
    assert "The most tokens to generate." in text and "## Outputs" in text
    assert client.get("/docs/PromptRewrite/fr.md").status == 200  # no translations: the same page
    assert client.get("/docs/NoSuchNode/en.md").status == 404
    assert client.get("/docs/..%2F..%2Fsecret/en.md").status == 404
    assert client.get("/docs/KSampler/en.md.html").status == 404


def test_embedded_docs_pages_come_first(tmp_path, server):
    """A folder laid out as the comfyui-embedded-docs package lays out its docs/ (one folder per class,
    a page per locale): its pages are served, English when the locale has none; classes it lacks get
    the generated page."""

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from nodegraph.server.comfy_frontend.common import answering_errors
    from nodegraph.server.comfy_frontend.node_docs import NodeDocs
    from nodegraph.server.comfy_frontend.state import FrontendState

    docs = tmp_path / "docs" / "KSampler"
    docs.mkdir(parents=True)
    (docs / "en.md").write_text("# KSampler (ComfyUI's page)")
    (docs / "ja.md").write_text("# KSampler (日本語)")
    state = FrontendState(server.server, tmp_path, lambda paths: [], lambda folder: [])
    app = web.Application()
    app.router.add_get("/docs/{node}/{file}", answering_errors(NodeDocs(state, tmp_path / "docs").get))

    async def scenario():
        async with TestClient(TestServer(app)) as http:
            pages = {}
            for node, file in (("KSampler", "ja.md"), ("KSampler", "de.md"), ("PromptRewrite", "en.md")):
                reply = await http.get(f"/docs/{node}/{file}")
                pages[node, file] = (reply.status, await reply.text())
            return pages

    pages = run_coroutine(scenario())
    assert pages["KSampler", "ja.md"] == (200, "# KSampler (日本語)")
    assert pages["KSampler", "de.md"] == (200, "# KSampler (ComfyUI's page)")
    assert pages["PromptRewrite", "en.md"][1].startswith("# PromptRewrite")
