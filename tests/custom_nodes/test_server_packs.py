"""Custom node packs on a real server: pack nodes in /object_info, a pack's HTTP route, its web folder
under /extensions, ``send_sync`` reaching the right WebSocket client (from a node and from a route),
and a pack that fails to import, a node that raises and a node calling an unsupported internal each
leaving the server and the other packs working."""

from __future__ import annotations

import json

import pytest

from tests.custom_nodes.packs import EXTENSION_JS, write_packs
from tests.helpers.comfy_client import ComfyClient


@pytest.fixture
def pack_server(start_server, tmp_path):
    folder = write_packs(tmp_path / "custom_nodes")
    return start_server(custom_nodes_dirs=(folder,))


def drain(ws, seconds: float = 0.3) -> list[dict]:
    """The text messages that arrive within ``seconds``."""
    found = []
    while True:
        try:
            out = ws.recv(timeout=seconds)
        except TimeoutError:
            return found
        if isinstance(out, str):
            found.append(json.loads(out))


def test_pack_nodes_routes_and_web_folder_are_served(pack_server):
    client = pack_server.client()
    info = client.get("/object_info/NgAdd").json()["NgAdd"]
    assert info["python_module"] == "custom_nodes.ngtest_protocol"
    every = client.get("/api/object_info").json()
    assert {"NgAdd", "NgPing", "NgHello", "KSampler"} <= set(every) and "NgNoFunction" not in every
    assert client.get("/ngroutes/hello?name=pack").json() == {"hello": "pack"}
    assert client.get("/api/ngroutes/hello").json() == {"hello": "world"}
    assert client.get("/extensions").json() == ["/extensions/ngroutes/ext.js"]
    script = client.get("/extensions/ngroutes/ext.js")
    assert script.status == 200 and script.body.decode() == EXTENSION_JS


def test_send_sync_reaches_the_client_that_queued_the_prompt(pack_server):
    address = f"127.0.0.1:{pack_server.port}"
    mine, other = ComfyClient(address), ComfyClient(address)
    with mine.connect() as ws_mine, other.connect() as ws_other:
        drain(ws_other)
        prompt = {"1": {"class_type": "NgPing", "inputs": {"text": "hello"}}}
        prompt_id, messages, _, _ = mine.run(ws_mine, prompt)
        pings = [m for m in messages if m["type"] == "ngroutes.ping"]
        assert pings == [{"type": "ngroutes.ping",
                          "data": {"text": "hello", "node": "1", "client": mine.client_id}}]
        types = [m["type"] for m in messages]
        assert types.index("executing") < types.index("ngroutes.ping") < types.index("executed")
        assert not [m for m in drain(ws_other) if m["type"].startswith("ngroutes.")]
        history = mine.get_history(prompt_id)[prompt_id]
        assert history["status"]["status_str"] == "success"
        # from a pack's route (outside any node): to the client it names, only
        reply = pack_server.client().post_json("/ngroutes/ping", {"value": 5, "sid": other.client_id})
        assert reply.json() == {"sent": True}
        assert [m for m in drain(ws_other) if m["type"] == "ngroutes.pong"] == [
            {"type": "ngroutes.pong", "data": {"got": 5}}]
        assert not [m for m in drain(ws_mine) if m["type"] == "ngroutes.pong"]


def test_failing_nodes_leave_the_server_and_other_packs_working(pack_server):
    client = ComfyClient(f"127.0.0.1:{pack_server.port}")
    with client.connect() as ws:
        _, messages, _, _ = client.run(ws, {"1": {"class_type": "NgRaise", "inputs": {"value": 4}},
                                            "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}})
        [error] = [m["data"] for m in messages if m["type"] == "execution_error"]
        assert (error["node_id"], error["exception_type"]) == ("1", "ValueError")
        assert error["exception_message"] == "the pack refuses 4"
        _, messages, _, _ = client.run(ws, {"1": {"class_type": "NgUnsupported", "inputs": {}},
                                            "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}})
        [error] = [m["data"] for m in messages if m["type"] == "execution_error"]
        assert "not supported by nodegraph: comfy.sd.load_checkpoint_guess_config" in error["exception_message"]
        _, messages, _, _ = client.run(ws, {"1": {"class_type": "NgHello", "inputs": {"name": "after"}},
                                            "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}}})
        [done] = [m["data"] for m in messages if m["type"] == "executed"]
        assert done["output"] == {"text": [repr("hello after")]}


def test_a_blocked_branch_reports_once_and_the_prompt_succeeds(pack_server):
    client = ComfyClient(f"127.0.0.1:{pack_server.port}")
    with client.connect() as ws:
        prompt = {"1": {"class_type": "NgBlock", "inputs": {"message": "no input image"}},
                  "2": {"class_type": "NgShow", "inputs": {"value": ["1", 0]}},
                  "3": {"class_type": "NgAdd", "inputs": {"a": 1, "b": 1}},
                  "4": {"class_type": "NgShow", "inputs": {"value": ["3", 0]}}}
        prompt_id, messages, _, _ = client.run(ws, prompt)
        [error] = [m["data"] for m in messages if m["type"] == "execution_error"]
        assert (error["node_id"], error["exception_type"]) == ("2", "ExecutionBlocked")
        assert error["exception_message"] == "Execution Blocked: no input image"
        assert "execution_success" in [m["type"] for m in messages]
        outputs = client.get_history(prompt_id)[prompt_id]["outputs"]
        assert set(outputs) == {"4"}


def test_no_packs_without_a_folder_and_none_through_the_api(start_server):
    server = start_server()
    client = server.client()
    assert client.get("/extensions").json() == []
    assert "NgAdd" not in client.get("/object_info").json()
