"""The user folder's routes (/users, /settings, /userdata, /v2/userdata) against a real server: ComfyUI's
shapes and parameters, the frontend's text/plain bodies, persistence across restarts, and containment."""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest


def same_origin(client) -> dict:
    """The headers ComfyUI's page sends with its fetch() POSTs (text/plain body, its own Origin)."""
    return {"Origin": client.base, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors",
            "Content-Type": "text/plain;charset=UTF-8"}


def post_text(client, path: str, text: str, **query):
    return client.request("POST", path, text.encode(), same_origin(client), query=query or None)


def enc(path: str) -> str:
    return urllib.parse.quote(path, safe="")


def test_users_is_one_server_side_user(client):
    assert client.get("/api/users").json() == {"storage": "server", "migrated": True}


def test_settings_round_trip_and_survive_a_restart(start_server):
    server = start_server()
    client = server.client()
    assert client.get("/api/settings").json() == {}
    assert client.get("/api/settings/Comfy.ColorPalette").json() is None
    assert post_text(client, f"/api/settings/{enc('Comfy.ColorPalette')}", json.dumps("light")).status == 200
    assert post_text(client, "/api/settings/Comfy.Sidebar.Size", json.dumps({"w": 3})).status == 200
    reply = client.request("POST", "/api/settings", json.dumps({"Comfy.Locale": "en", "Comfy.X": [1, 2]}).encode(),
                           same_origin(client))
    assert reply.status == 200
    expected = {"Comfy.ColorPalette": "light", "Comfy.Sidebar.Size": {"w": 3}, "Comfy.Locale": "en", "Comfy.X": [1, 2]}
    assert client.get("/api/settings").json() == expected
    assert client.get("/api/settings/Comfy.X").json() == [1, 2]
    stored = json.loads((server.user_root / "comfy.settings.json").read_text())
    assert stored == expected
    server.stop()
    again = start_server().client()
    assert again.get("/api/settings").json() == expected


def test_settings_refuse_what_is_not_json_or_not_an_object(client):
    assert post_text(client, "/api/settings/a", "{not json").status == 400
    reply = post_text(client, "/api/settings", json.dumps([1, 2]))
    assert reply.status == 400 and "object" in reply.json()["error"]["message"]


def test_a_cross_site_page_cannot_change_settings(client):
    evil = {"Origin": "http://evil.example:8188", "Content-Type": "text/plain"}
    assert client.request("POST", "/api/settings/a", b"1", evil).status == 403
    stripped = {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
    assert client.request("POST", "/api/settings/a", b"1", stripped).status == 403
    assert client.get("/api/settings").json() == {}


def test_text_plain_from_the_page_is_accepted_only_on_raw_body_routes(client):
    """The frontend's text/plain bodies are fine for /settings and /userdata; a browser's form-type
    POST to /prompt is still refused (415), as the security rules say."""
    reply = client.request("POST", "/api/prompt", b'{"prompt": {}}', same_origin(client))
    assert reply.status == 415


def test_userdata_listing_shapes(client, server):
    root = server.user_root
    (root / "workflows" / "sub").mkdir(parents=True, exist_ok=True)
    (root / "workflows" / "a.json").write_text("{}")
    (root / "workflows" / "sub" / "b.json").write_text("[1]")
    (root / "workflows" / ".hidden.json").write_text("{}")
    assert client.get("/api/userdata?dir=workflows").json() == ["a.json"]
    assert client.get("/api/userdata?dir=workflows&recurse=true").json() == ["a.json", "sub/b.json"]
    assert client.get("/api/userdata?dir=workflows&recurse=true&split=true").json() == [
        ["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]
    full = client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
    assert [f["path"] for f in full] == ["a.json", "sub/b.json"]
    assert full[1]["size"] == 3 and isinstance(full[1]["modified"], int) and full[1]["modified"] > 1e12
    assert client.get("/api/userdata").status == 400
    assert client.get("/api/userdata?dir=nothing").status == 404
    assert client.get("/api/userdata?dir=subgraphs&recurse=true&full_info=true").json() == []
    v2 = client.get("/api/v2/userdata?path=workflows").json()
    assert [(e["name"], e["type"]) for e in v2] == [("sub", "directory"), ("a.json", "file"), ("b.json", "file")]
    assert v2[2]["path"] == "workflows/sub/b.json"


def test_userdata_save_open_move_delete_as_the_frontend_does(client, server):
    name = enc("workflows/My flow.json")
    body = json.dumps({"nodes": [], "links": []})
    reply = post_text(client, f"/api/userdata/{name}", body, overwrite="false", full_info="true")
    assert reply.status == 200
    info = reply.json()
    assert info["path"] == "workflows/My flow.json" and info["size"] == len(body)
    assert (server.user_root / "workflows" / "My flow.json").read_text() == body
    again = post_text(client, f"/api/userdata/{name}", "{}", overwrite="false")
    assert again.status == 409
    assert post_text(client, f"/api/userdata/{name}", body, overwrite="true").json() == "workflows/My flow.json"
    got = client.get(f"/api/userdata/{name}")
    assert got.status == 200 and json.loads(got.body) == json.loads(body)
    assert got.headers["content-disposition"] == "attachment"
    moved = client.request("POST", f"/api/userdata/{name}/move/{enc('workflows/Renamed.json')}?overwrite=false")
    assert moved.status == 200 and moved.json() == "workflows/Renamed.json"
    assert client.get(f"/api/userdata/{name}").status == 404
    post_text(client, f"/api/userdata/{enc('workflows/Other.json')}", "{}")
    clash = client.request("POST", f"/api/userdata/{enc('workflows/Other.json')}/move/"
                           f"{enc('workflows/Renamed.json')}?overwrite=false")
    assert clash.status == 409
    assert client.request("DELETE", f"/api/userdata/{enc('workflows/Renamed.json')}").status == 204
    assert client.request("DELETE", f"/api/userdata/{enc('workflows/Renamed.json')}").status == 404
    assert client.get("/api/userdata?dir=workflows").json() == ["Other.json"]


def test_user_css_is_inline_css_and_empty_when_absent(client, server):
    reply = client.get("/api/userdata/user.css")
    assert reply.status == 200 and reply.body == b"" and reply.headers["content-type"].startswith("text/css")
    (server.user_root / "user.css").write_text("body { color: red }")
    reply = client.get("/api/userdata/user.css")
    assert reply.body == b"body { color: red }" and reply.headers["content-disposition"] == "inline"


def test_risky_types_are_downloads(client, server):
    (server.user_root / "x.html").write_text("<script>alert(1)</script>")
    reply = client.get("/api/userdata/x.html")
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["content-disposition"] == "attachment"


@pytest.mark.parametrize("name", ["../secret.txt", "workflows/../../secret.txt", "/etc/passwd", "..",
                                  "workflows/..\\..\\secret.txt"])
def test_userdata_stays_inside_the_user_folder(client, server, name):
    (server.data_dir / "secret.txt").write_text("secret")
    assert client.get(f"/api/userdata/{enc(name)}").status in (403, 404)
    assert post_text(client, f"/api/userdata/{enc(name)}", "x").status in (400, 403)
    assert client.request("DELETE", f"/api/userdata/{enc(name)}").status in (403, 404)
    assert client.get(f"/api/userdata?dir={enc(name)}").status in (403, 404)
    assert (server.data_dir / "secret.txt").read_text() == "secret"


def test_a_symlink_out_of_the_user_folder_is_refused(client, server):
    outside = server.data_dir / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"secret": 1}')
    os.symlink(outside, server.user_root / "link")
    os.symlink(outside / "secret.json", server.user_root / "workflows" / "leak.json")
    assert client.get(f"/api/userdata/{enc('link/secret.json')}").status == 403
    assert client.get(f"/api/userdata/{enc('workflows/leak.json')}").status == 403
    assert post_text(client, f"/api/userdata/{enc('link/new.json')}", "{}").status == 403
    assert not (outside / "new.json").exists()
    assert client.get("/api/userdata?dir=workflows&recurse=true").json() == []


def test_names_are_decoded_once(client, server):
    """``%252e%252e`` arrives as the literal name ``%2e%2e`` (ComfyUI would decode it again to ``..``)."""
    reply = post_text(client, "/api/userdata/workflows%2F%252e%252e.json", "{}")
    assert reply.status == 200 and reply.json() == "workflows/%2e%2e.json"
    assert (server.user_root / "workflows" / "%2e%2e.json").is_file()
