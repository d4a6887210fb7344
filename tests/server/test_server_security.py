"""Each attack is tried against a real server and refused with the right status; nothing outside the
input/output/temp folders is ever read or written."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from nodegraph.server import ServerConfig
from nodegraph.server.config import is_loopback

from tests.helpers.http_client import multipart

SECRET = b"TOP-SECRET-CONTENT"
PROMPT = {"1": {"class_type": "PreviewAny", "inputs": {"source": "hi"}}}


def png_bytes(size=(8, 8), color=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client, filename: str, data: bytes, **fields):
    body, headers = multipart(fields, filename, data)
    return client.request("POST", "/upload/image", body, headers)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    return path


# -- Host / Origin ----------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:8188", "127.0.0.1.evil.example",
                                  "localhost.evil.example:80", "10.0.0.5:8188"])
def test_dns_rebinding_hosts_are_refused(client, host):
    reply = client.get("/queue", headers={"Host": host})
    assert reply.status == 403 and reply.json()["error"]["type"] == "forbidden_host"
    assert client.post_json("/prompt", {"prompt": PROMPT}, headers={"Host": host}).status == 403


@pytest.mark.parametrize("host", ["localhost", "localhost:9999", "127.0.0.1:1", "[::1]:8188", "[::1]"])
def test_loopback_hosts_are_accepted(client, host):
    assert client.get("/queue", headers={"Host": host}).status == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://127.0.0.1.evil.example",
                                    "file://", "http://127.0.0.1:1"])
def test_cross_site_origins_are_refused(client, origin):
    assert client.get("/history", headers={"Origin": origin}).status == 403
    reply = client.post_json("/prompt", {"prompt": PROMPT}, headers={"Origin": origin})
    assert reply.status == 403 and reply.json()["error"]["type"] == "forbidden_origin"
    assert client.get("/queue").json()["queue_pending"] == []


def test_same_origin_is_accepted(client):
    origin = f"http://127.0.0.1:{client.port}"
    assert client.post_json("/prompt", {"prompt": PROMPT}, headers={"Origin": origin}).status == 200
    assert client.get("/queue", headers={"Origin": f"http://localhost:{client.port}",
                                         "Host": f"localhost:{client.port}"}).status == 200


def test_websocket_checks_origin(server):
    url = f"ws://127.0.0.1:{server.port}/ws?clientId=a"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin="http://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403
    with connect(url, origin=f"http://127.0.0.1:{server.port}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"


# -- content types and sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None,
                                   "multipart/form-data; boundary=x"])
def test_simple_form_posts_are_refused(client, ctype):
    """From a browser (even our own page): only JSON. Scripts: tests/server/test_comfy_clients.py."""
    headers = {"Content-Type": ctype} if ctype else {}
    headers["Sec-Fetch-Site"] = "same-origin"
    body = json.dumps({"prompt": PROMPT}).encode()
    for path in ("/prompt", "/api/prompt", "/queue", "/history", "/interrupt", "/free"):
        reply = client.request("POST", path, body, headers)
        assert reply.status == 415, path
        assert reply.json()["error"]["type"] == "unsupported_media_type"
    assert client.get("/queue").json()["queue_pending"] == []


def test_upload_must_be_multipart(client):
    assert client.request("POST", "/upload/image", png_bytes(), {"Content-Type": "image/png"}).status == 415
    assert client.post_json("/upload/image", {"image": "x"}).status == 415


def test_body_over_the_cap_is_refused_before_reading(start_server):
    server = start_server(max_body_bytes=1024 * 1024)
    client = server.client()
    big = b'{"prompt": "' + b"x" * (100 * 1024 * 1024) + b'"}'
    reply = client.request("POST", "/prompt", big, {"Content-Type": "application/json"})
    assert reply.status == 413 and reply.json()["error"]["type"] == "request_too_large"
    assert client.queue(PROMPT)["prompt_id"]


def test_chunked_body_over_the_cap_is_refused(start_server):
    import http.client

    server = start_server(max_body_bytes=1024 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"x" * 65536 for _ in range(64))  # 4 MiB, no Content-Length
    conn.request("POST", "/prompt", body=chunks, headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_queue_length_cap(start_server):
    server = start_server(max_queue=2)
    client = server.client()
    slow = {"1": {"class_type": "SlowNode", "inputs": {"seconds": 30, "steps": 3000, "tag": "hold"}}}
    client.queue(slow)
    client.queue(PROMPT)
    reply = client.post_json("/prompt", {"prompt": {"1": {"class_type": "PreviewAny", "inputs": {"source": 2}}}})
    assert reply.status == 503 and reply.json()["error"]["type"] == "queue_full"
    assert "limit 2" in reply.json()["error"]["message"] and reply.headers.get("retry-after")
    client.post_json("/interrupt", {})


# -- token ------------------------------------------------------------------------------------------

def test_non_loopback_bind_requires_a_token():
    with pytest.raises(ValueError, match="token"):
        ServerConfig(host="0.0.0.0").check()
    config, generated = ServerConfig(host="0.0.0.0").resolved()
    assert generated and len(config.auth_token) >= 32
    assert ServerConfig(host="127.0.0.1").resolved() == (ServerConfig(host="127.0.0.1"), False)
    assert is_loopback("::1") and is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")


def test_token_is_checked_on_http_and_websocket(start_server):
    server = start_server(auth_token="s3cret-token")
    anonymous = server.client()
    for path in ("/queue", "/object_info", "/view?filename=x.png", "/history"):
        reply = anonymous.get(path)
        assert reply.status == 401 and reply.json()["error"]["type"] == "unauthorized", path
    assert anonymous.get("/queue", headers={"Authorization": "Bearer wrong"}).status == 401
    assert anonymous.post_json("/prompt", {"prompt": PROMPT}).status == 401
    assert server.client(token="s3cret-token").get("/queue").status == 200
    assert anonymous.get("/queue?token=s3cret-token").status == 200
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{server.port}/ws?clientId=a", open_timeout=10)
    assert refused.value.response.status_code == 401
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId=a&token=s3cret-token", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"


# -- /view ------------------------------------------------------------------------------------------

def test_view_serves_files_inside_the_folders(server, client):
    paths = server.server.engine.paths
    (paths.output_dir / "sub").mkdir(parents=True)
    (paths.output_dir / "sub" / "a.png").write_bytes(png_bytes())
    (paths.input_dir / "b.png").write_bytes(png_bytes(color=(0, 0, 255)))
    reply = client.get("/view", query={"filename": "a.png", "subfolder": "sub"})
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    assert reply.body == png_bytes()
    assert client.get("/view", query={"filename": "b.png", "type": "input"}).body == png_bytes(color=(0, 0, 255))
    assert client.get("/view", query={"filename": "b.png [input]"}).status == 200
    preview = client.get("/view", query={"filename": "b.png", "type": "input", "preview": "jpeg;80"})
    assert preview.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(preview.body)).format == "JPEG"
    rgb = client.get("/view", query={"filename": "b.png", "type": "input", "channel": "rgb"})
    assert Image.open(io.BytesIO(rgb.body)).mode == "RGB"
    assert client.get("/view", query={"filename": "missing.png"}).status == 404


@pytest.mark.parametrize("query,status", [
    ({"filename": "../secret.txt"}, 400),
    ({"filename": "../../secret.txt"}, 400),
    ({"filename": "/etc/passwd"}, 400),
    ({"filename": "..\\secret.txt"}, 400),
    ({"filename": "a\x00.png"}, 400),
    ({"filename": "secret.txt", "subfolder": ".."}, 403),
    ({"filename": "secret.txt", "subfolder": "../.."}, 403),
    ({"filename": "passwd", "subfolder": "/etc"}, 403),
    ({"filename": "secret.txt", "type": "../.."}, 400),
    ({"filename": "secret.txt", "type": "models"}, 400),
    ({"filename": "%2e%2e/secret.txt"}, 404),  # decoded once: a literal name that does not exist
])
def test_view_refuses_escapes(client, secret, query, status):
    reply = client.get("/view", query=query)
    assert reply.status == status, reply.body
    assert SECRET not in reply.body


def test_view_percent_encoded_traversal_in_raw_url(client, secret):
    for raw in ("/view?filename=%2e%2e%2fsecret.txt", "/view?filename=..%2F..%2Fsecret.txt",
                "/view?filename=secret.txt&subfolder=%2e%2e", "/api/view?filename=%2E%2E%5Csecret.txt"):
        reply = client.get(raw)
        assert reply.status in (400, 403), raw
        assert SECRET not in reply.body


def test_view_refuses_symlinks_out(server, client, secret):
    paths = server.server.engine.paths
    (paths.output_dir / "link.txt").symlink_to(secret)
    (paths.output_dir / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    for query in ({"filename": "link.txt"}, {"filename": "secret.txt", "subfolder": "linkdir"}):
        reply = client.get("/view", query=query)
        assert reply.status in (400, 403)
        assert SECRET not in reply.body


def test_view_never_serves_html_as_html(server, client):
    (server.server.engine.paths.output_dir / "x.html").write_text("<script>alert(1)</script>")
    reply = client.get("/view", query={"filename": "x.html"})
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["x-content-type-options"] == "nosniff"


# -- /upload/image ----------------------------------------------------------------------------------

def test_upload_then_load_image_runs(server, client):
    reply = upload(client, "cat.png", png_bytes(color=(0, 255, 0)))
    assert reply.status == 200 and reply.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
    assert upload(client, "cat.png", png_bytes(color=(0, 255, 0))).json()["name"] == "cat.png"  # same bytes
    assert upload(client, "cat.png", png_bytes(color=(1, 2, 3))).json()["name"] == "cat (1).png"
    assert upload(client, "cat.png", png_bytes(color=(9, 9, 9)), overwrite="true").json()["name"] == "cat.png"
    sub = upload(client, "dog.png", png_bytes(), subfolder="pets", type="temp").json()
    assert sub == {"name": "dog.png", "subfolder": "pets", "type": "temp"}
    assert (server.server.engine.paths.temp_dir / "pets" / "dog.png").read_bytes() == png_bytes()
    choices = client.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert "cat.png" in choices and "cat (1).png" in choices


@pytest.mark.parametrize("filename,fields", [
    ("../evil.png", {}), ("..\\\\evil.png", {}), ("/tmp/evil.png", {}), ("sub/evil.png", {}),
    ("ok.png", {"subfolder": "../.."}), ("ok.png", {"subfolder": "/tmp"}), ("ok.png", {"type": "models"}),
    ("ok.png", {"subfolder": "a/../../.."}), ("evil.html", {}), ("evil.py", {}),
])
def test_upload_refuses_escapes_and_non_images(server, client, tmp_path, filename, fields):
    before = sorted(p for p in tmp_path.rglob("*") if "data" not in p.parts)
    reply = upload(client, filename, png_bytes(), **fields)
    assert reply.status == 400, reply.body
    after = sorted(p for p in tmp_path.rglob("*") if "data" not in p.parts)
    assert after == before


def test_upload_refuses_symlink_targets(server, client, secret):
    paths = server.server.engine.paths
    (paths.input_dir / "link.png").symlink_to(secret)
    (paths.input_dir / "outdir").symlink_to(secret.parent, target_is_directory=True)
    assert upload(client, "link.png", png_bytes(), overwrite="true").status == 400
    assert upload(client, "link.png", png_bytes()).status == 400
    assert upload(client, "x.png", png_bytes(), subfolder="outdir").status == 400
    assert secret.read_bytes() == SECRET and not (secret.parent / "x.png").exists()


def test_upload_verifies_images(client):
    reply = upload(client, "fake.png", b"this is not an image, only text\n" * 8)
    assert reply.status == 400 and reply.json()["error"]["type"] == "bad_image"
    import pickle

    reply = upload(client, "model.png", pickle.dumps({"x": 1}))
    assert reply.status == 400


def _png_with_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_upload_refuses_decompression_bombs(client):
    reply = upload(client, "bomb.png", _png_with_size(60000, 60000))
    assert reply.status == 413 and reply.json()["error"]["type"] == "image_too_large"


def test_upload_size_cap(start_server):
    server = start_server(max_upload_bytes=32 * 1024)
    client = server.client()
    big = png_bytes(size=(512, 512)) + os.urandom(64 * 1024)
    reply = upload(client, "big.png", big)
    assert reply.status == 413
    assert not (server.server.engine.paths.input_dir / "big.png").exists()
    assert client.get("/features").json()["max_upload_size"] == 32 * 1024
    assert upload(client, "small.png", png_bytes()).status == 200
