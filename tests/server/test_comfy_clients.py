"""ComfyUI's protocol as its clients use it, against a real server: how scripts post, what a browser
page from another site cannot do, which WebSocket frames a client gets (only what it asked for, a
node's images never before its first ``progress``), and ``SaveImageWebsocket``'s PNG frames."""

from __future__ import annotations

import http.client
import io
import json
import struct
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.helpers.comfy_client import ComfyClient
from tests.helpers.http_client import multipart
from tests.server.script_client import ScriptClient

PROMPT = {"1": {"class_type": "PreviewAny", "inputs": {"source": "hi"}}}


def invert_prompt(color: int = 0xFF0000) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "script"}}}


def previewing_prompt(steps: int = 4, nodes: tuple[str, ...] = ("1",)) -> dict:
    """Nodes that preview then report progress at each step, as a sampler does."""
    return {n: {"class_type": "SlowNode", "inputs": {"seconds": 0.02 * steps, "steps": steps, "tag": n,
                                                     "preview": True}} for n in nodes}


def raw_post(port: int, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    """A POST with exactly these headers (http.client adds only Host, Accept-Encoding and Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def frame_parts(frame: bytes) -> tuple[int, dict | None, bytes]:
    """``(event type, metadata or None, image bytes)`` of a binary frame."""
    event, second = struct.unpack(">II", frame[:8])
    if event == 4:
        return event, json.loads(frame[8:8 + second]), frame[8 + second:]
    return event, {"format": second}, frame[8:]


# -- requests from scripts and from browsers -------------------------------------------------------

def test_urllib_post_with_its_default_content_type_is_accepted(server):
    """ComfyUI's script examples: urllib labels the JSON application/x-www-form-urlencoded, no Origin."""
    data = json.dumps({"prompt": PROMPT, "client_id": "script"}).encode()
    request = urllib.request.Request(f"{server.url}/prompt", data=data)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert json.loads(response.read())["prompt_id"]
    assert request.get_header("Content-type") == "application/x-www-form-urlencoded"
    assert not request.has_header("Origin")


@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
def test_post_without_content_type_is_accepted(server, path):
    """requests.post(url, data=json_string) sends no Content-Type; its interrupt posts an empty body."""
    status, body = raw_post(server.port, path, json.dumps({"prompt": PROMPT}).encode(), {})
    assert status == 200 and json.loads(body)["prompt_id"]
    assert raw_post(server.port, "/interrupt", b"", {})[0] == 200
    status, body = raw_post(server.port, "/queue", b"{not json", {"Content-Type": "text/plain"})
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_json"


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain", "Origin": "http://evil.example"},
    {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
    {"Content-Type": "text/plain", "Origin": "http://127.0.0.1:1"},  # another port is another site
    {"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"},  # the Origin was stripped
    {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site",
     "Sec-Fetch-Mode": "navigate"},
    {"Content-Type": "text/plain", "Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_cross_site_simple_posts_are_refused(server, client, headers):
    body = json.dumps({"prompt": PROMPT}).encode()
    for path in ("/prompt", "/api/prompt", "/queue", "/interrupt", "/free"):
        status, reply = raw_post(server.port, path, body, headers)
        assert status == 403, (path, reply)
        assert json.loads(reply)["error"]["type"] == "forbidden_origin"
    assert client.get("/queue").json()["queue_pending"] == []


def test_browser_requests_keep_the_json_rule(server, client):
    """A browser that sends no Origin but says it is on this site still posts JSON only (415)."""
    body = json.dumps({"prompt": PROMPT}).encode()
    for headers in ({"Content-Type": "text/plain", "Sec-Fetch-Site": "same-origin"},
                    {"Content-Type": "text/plain", "Origin": server.url},
                    {"Sec-Fetch-Mode": "no-cors"}):
        status, reply = raw_post(server.port, "/prompt", body, headers)
        assert status == 415 and json.loads(reply)["error"]["type"] == "unsupported_media_type"
    status, _ = raw_post(server.port, "/prompt", body, {"Content-Type": "application/json",
                                                      "Sec-Fetch-Site": "same-origin"})
    assert status == 200
    # a link from another site still opens the canvas and reads (navigation is a GET)
    assert client.get("/queue", headers={"Sec-Fetch-Site": "cross-site"}).status == 200


def test_scripts_still_upload_as_multipart_only(server, client):
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(png, format="PNG")
    assert raw_post(server.port, "/upload/image", png.getvalue(), {"Content-Type": "image/png"})[0] == 415
    body, headers = multipart({}, "s.png", png.getvalue())
    assert raw_post(server.port, "/upload/image", body, headers)[0] == 200


# -- what a client gets over the WebSocket ----------------------------------------------------------

def test_script_example_runs_a_workflow_end_to_end(server):
    """websockets_api_example.py: queue, wait for executing null, read history, download through /view."""
    script = ScriptClient(f"127.0.0.1:{server.port}")
    with script.connect() as ws:
        run = script.run(ws, invert_prompt(0xFF0000))
    assert run.order[0] == "status"
    [png] = run.images["3"]
    assert Image.open(io.BytesIO(png)).convert("RGB").getpixel((3, 3)) == (0, 255, 255)  # red inverted
    kinds = set(run.order)
    assert {"execution_start", "executing", "executed", "execution_success"} <= kinds
    assert "node_finished" not in kinds and "feature_flags" not in kinds and not run.frames


def test_a_client_that_did_not_ask_gets_no_previews_and_no_nodegraph_events(server):
    script = ScriptClient(f"127.0.0.1:{server.port}", api_prefix="/api")
    with script.connect() as ws:
        run = script.run(ws, previewing_prompt())
    assert run.frames == []
    progress = [m["data"]["value"] for m in run.messages if m["type"] == "progress"]
    assert progress == [1, 2, 3, 4]  # progress is still reported
    assert "node_finished" not in run.order


@pytest.mark.parametrize("features,extra_data,previews", [
    ({"nodegraph_previews": True}, None, True),                       # our canvas's announcement
    (None, {"preview_method": "auto"}, True),                         # ComfyUI's per-prompt setting
    ({"supports_preview_metadata": True}, {"preview_method": "taesd"}, True),  # ComfyUI's frontend
    ({"supports_preview_metadata": True}, {"preview_method": "default"}, False),  # its default
    ({"supports_preview_metadata": True}, None, False),
    ({"nodegraph_previews": True}, {"preview_method": "none"}, False),  # the prompt's own choice wins
    ({"nodegraph_previews": "yes"}, None, False),                      # only true counts
])
def test_previews_only_for_clients_that_ask(server, features, extra_data, previews):
    comfy = ComfyClient(f"127.0.0.1:{server.port}", features=features)
    body = {"prompt": previewing_prompt(), "client_id": comfy.client_id}
    if extra_data is not None:
        body["extra_data"] = extra_data
    with comfy.connect() as ws:
        status, reply = raw_post(server.port, "/prompt", json.dumps(body).encode(), {})
        assert status == 200
        frames, _ = follow(ws, json.loads(reply)["prompt_id"])
        prompt_id = json.loads(reply)["prompt_id"]
    assert len(frames) == (4 if previews else 0)
    if previews and features and features.get("supports_preview_metadata"):
        event, meta, image = frame_parts(frames[0])
        assert event == 4 and meta["node_id"] == "1" and meta["prompt_id"] == prompt_id
        assert meta["image_type"] == "image/jpeg" and Image.open(io.BytesIO(image)).format == "JPEG"
    elif previews:
        assert frame_parts(frames[0])[:2] == (1, {"format": 1})


def follow(ws, prompt_id: str, timeout: float = 60) -> tuple[list[bytes], list[dict]]:
    """Binary frames and text messages until ``executing`` null of ``prompt_id``."""
    frames, texts = [], []
    while True:
        out = ws.recv(timeout=timeout)
        if isinstance(out, bytes):
            frames.append(out)
            continue
        texts.append(json.loads(out))
        data = texts[-1]["data"]
        if texts[-1]["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return frames, texts


def test_node_finished_only_for_clients_that_announce_it(server):
    comfy = ComfyClient(f"127.0.0.1:{server.port}", features={"nodegraph_events": True})
    with comfy.connect() as ws:
        _, texts = follow(ws, comfy.queue_prompt(invert_prompt())["prompt_id"])
    assert [m["data"]["node"] for m in texts if m["type"] == "node_finished"] == ["1", "2", "3"]
    reply = next(m for m in texts if m["type"] == "feature_flags")["data"]
    assert reply["supports_preview_metadata"] is True and reply["max_upload_size"] > 0


@pytest.mark.parametrize("metadata", [False, True])
def test_binary_frames_never_precede_their_nodes_first_progress(server, metadata):
    """Two sampler-like nodes run at once (the engine has two threads); each preview follows a
    progress message of its own node, as ComfyUI pairs them."""
    comfy = ComfyClient(f"127.0.0.1:{server.port}",
                        features={"nodegraph_previews": True, "supports_preview_metadata": metadata})
    with comfy.connect() as ws:
        prompt_id = comfy.queue_prompt(previewing_prompt(steps=6, nodes=("a", "b")))["prompt_id"]
        sequence = []
        while True:
            out = ws.recv(timeout=60)
            if isinstance(out, bytes):
                sequence.append(("frame", frame_parts(out)[1]))
                continue
            message = json.loads(out)
            sequence.append((message["type"], message["data"]))
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    frames = [i for i, (kind, _) in enumerate(sequence) if kind == "frame"]
    assert len(frames) == 12
    for i in frames:
        previous_kind, previous = sequence[i - 1]
        assert previous_kind == "progress" and previous["prompt_id"] == prompt_id
        if metadata:  # the frame names its node: the progress just before is that node's
            assert sequence[i][1]["node_id"] == previous["node"]
    for node in ("a", "b"):
        first_progress = next(i for i, (kind, data) in enumerate(sequence)
                              if kind == "progress" and data["node"] == node)
        if metadata:
            first_frame = next(i for i, (kind, data) in enumerate(sequence)
                               if kind == "frame" and data["node_id"] == node)
            assert first_progress < first_frame


# -- SaveImageWebsocket ----------------------------------------------------------------------------

@pytest.fixture
def noise_png(server):
    """A random-noise PNG uploaded to the input folder; returns its pixels."""
    pixels = np.random.default_rng(7).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    body, headers = multipart({}, "noise.png", buffer.getvalue())
    assert raw_post(server.port, "/upload/image", body, headers)[0] == 200
    return pixels


def ws_image_prompt() -> dict:
    """ComfyUI's ws_images example, on an uploaded image: the image and its inverse, as a batch of two."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "noise.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
            "save_image_websocket_node": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["3", 0]}}}


def test_ws_images_example_gets_the_pngs(server, noise_png):
    script = ScriptClient(f"127.0.0.1:{server.port}", api_prefix="/api")
    with script.connect() as ws:
        run = script.run(ws, ws_image_prompt())
        again = script.run(ws, ws_image_prompt())  # never cached: a rerun sends the images again
    images = run.ws_images["save_image_websocket_node"]
    assert len(images) == 2 and len(again.ws_images["save_image_websocket_node"]) == 2
    decoded = [Image.open(io.BytesIO(data)) for data in images]
    assert all(image.format == "PNG" for image in decoded)
    assert np.array_equal(np.asarray(decoded[0].convert("RGB")), noise_png)
    inverse = np.asarray(decoded[1].convert("RGB")).astype(int)  # 255·(1 − x/255), truncated as ComfyUI
    assert np.abs(inverse - (255 - noise_png.astype(int))).max() <= 1
    assert [frame_parts(f)[:2] for f in run.frames] == [(1, {"format": 2})] * 2  # PREVIEW_IMAGE, PNG
    # as in ComfyUI: progress (the image's index of the batch), then its frame (only this node reports)
    assert [t for t in run.order if t in ("progress", "<binary>")] == ["progress", "<binary>"] * 2
    progress = [m["data"] for m in run.messages if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(0, 2, "save_image_websocket_node"),
                                                                     (1, 2, "save_image_websocket_node")]
    assert run.images == {}  # nothing saved, nothing in history's outputs


def test_save_image_websocket_frames_carry_metadata_when_asked(server, noise_png):
    comfy = ComfyClient(f"127.0.0.1:{server.port}", features={"supports_preview_metadata": True})
    with comfy.connect() as ws:
        frames, _ = follow(ws, comfy.queue_prompt(ws_image_prompt())["prompt_id"])
    parts = [frame_parts(f) for f in frames]
    assert [(event, meta["node_id"], meta["image_type"]) for event, meta, _ in parts] == [
        (4, "save_image_websocket_node", "image/png")] * 2
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(parts[0][2])).convert("RGB")), noise_png)


def test_save_image_websocket_sends_to_the_submitting_client_only(server, noise_png):
    owner, other = ScriptClient(f"127.0.0.1:{server.port}"), ScriptClient(f"127.0.0.1:{server.port}")
    with owner.connect() as ws, other.connect() as ws_other:
        run = owner.run(ws, ws_image_prompt())
        seen = []
        while True:
            try:
                seen.append(ws_other.recv(timeout=0.5))
            except TimeoutError:
                break
    assert len(run.ws_images["save_image_websocket_node"]) == 2
    assert not [m for m in seen if isinstance(m, bytes)]
