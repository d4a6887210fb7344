"""Prompts that are too deep, too big, or wrong in several ways at once: a clean 4xx that says what is
wrong, nothing queued, and the server goes on serving (issue 16, point 5). Real server, real SQLite."""

from __future__ import annotations

import json

from websockets.sync.client import connect

from nodegraph.server.request_json import MAX_JSON_DEPTH

GOOD = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def post_raw(client, body: bytes):
    return client.request("POST", "/prompt", body, {"Content-Type": "application/json"})


def nested(levels: int, leaf: str = "1") -> str:
    """A JSON value nested ``levels`` objects deep (text: deeper than Python's json can build)."""
    return '{"a":' * levels + leaf + "}" * levels


def assert_nothing_queued_and_alive(server, client) -> None:
    queue = client.get("/queue").json()
    assert queue == {"queue_running": [], "queue_pending": []}
    assert server.server.store.history_count(include_cancelled=True) == 0
    reply = client.queue(GOOD)  # still serving: a good prompt runs to the end
    deadline_entry = client.wait_history(reply["prompt_id"])
    assert deadline_entry["status"]["status_str"] == "success"


def check_too_deep(reply) -> None:
    assert reply.status == 400, reply.body[:300]
    payload = reply.json()
    assert payload["error"]["type"] == "json_too_deep"
    assert "deep" in payload["error"]["message"]
    assert payload["node_errors"] == {}


# -- depth --------------------------------------------------------------------------------------------

def test_prompt_nested_100000_levels_is_a_clean_400(server, client):
    body = ('{"prompt": {"1": {"class_type": "PreviewAny", "inputs": {"source": '
            + nested(100_000) + '}}}}').encode()
    check_too_deep(post_raw(client, body))
    check_too_deep(post_raw(client, b"[" * 100_000 + b"]" * 100_000))
    assert_nothing_queued_and_alive(server, client)


def test_depth_the_decoder_accepts_but_walks_would_not(server, client):
    """A few hundred levels parse; the guard refuses them before validation or the store walk them."""
    for levels in (MAX_JSON_DEPTH + 1, 500, 900):
        body = ('{"prompt": {"1": {"class_type": "PreviewAny", "inputs": {"source": '
                + nested(levels) + '}}}}').encode()
        check_too_deep(post_raw(client, body))
    deep_extra = {"prompt": GOOD, "extra_data": json.loads(nested(MAX_JSON_DEPTH + 5))}
    check_too_deep(post_raw(client, json.dumps(deep_extra).encode()))
    assert_nothing_queued_and_alive(server, client)


def test_every_json_route_guards_depth(server, client):
    for path in ("/queue", "/history", "/interrupt", "/free"):
        reply = client.request("POST", path, ("[" * 5000 + "]" * 5000).encode(),
                               {"Content-Type": "application/json"})
        check_too_deep(reply)
    assert_nothing_queued_and_alive(server, client)


def test_reasonable_nesting_still_runs(server, client):
    """A value nested well under the limit is an ordinary input (PreviewAny shows it as JSON)."""
    value = json.loads(nested(MAX_JSON_DEPTH - 10))
    reply = client.queue({"1": {"class_type": "PreviewAny", "inputs": {"source": value}}})
    entry = client.wait_history(reply["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    assert json.loads(entry["outputs"]["1"]["text"][0]) == value    # ComfyUI's JSON: indented by 4


def test_deep_websocket_text_does_not_drop_the_connection(server, client):
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId=deep", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"
        ws.send("[" * 100_000 + "]" * 100_000)
        ws.send(json.dumps({"type": "feature_flags", "data": {}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "feature_flags"


# -- node count --------------------------------------------------------------------------------------

def chain(nodes: int) -> dict:
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    for i in range(1, nodes - 1):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt["out"] = {"class_type": "PreviewAny", "inputs": {"source": [str(nodes - 2), 0]}}
    return prompt


def test_default_cap_is_10000_nodes(server, client):
    assert server.config.max_prompt_nodes == 10_000
    prompt = {str(i): {"class_type": "PreviewAny", "inputs": {"source": i}} for i in range(10_001)}
    reply = client.post_json("/prompt", {"prompt": prompt})
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["type"] == "prompt_too_large"
    assert "10001 nodes" in error["message"] and "at most 10000" in error["message"]
    assert error["extra_info"] == {"count": 10_001, "limit": 10_000}
    assert_nothing_queued_and_alive(server, client)


def test_configured_cap_applies_to_api_and_canvas_workflows(start_server):
    server = start_server(max_prompt_nodes=20)
    client = server.client()
    reply = client.post_json("/prompt", {"prompt": chain(21)})
    assert reply.status == 400 and reply.json()["error"]["type"] == "prompt_too_large"
    ui = {"last_node_id": 21, "last_link_id": 0, "links": [], "version": 0.4,
          "nodes": [{"id": i, "type": "PreviewAny", "inputs": [], "outputs": [], "widgets_values": []}
                    for i in range(1, 22)]}
    reply = client.post_json("/prompt", {"prompt": ui})
    assert reply.status == 400 and reply.json()["error"]["type"] == "prompt_too_large"
    assert "21 nodes" in reply.json()["error"]["message"]
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    entry = client.wait_history(client.queue(chain(20))["prompt_id"])  # at the cap: accepted
    assert entry["status"]["status_str"] == "success"


# -- every error at once ------------------------------------------------------------------------------

def test_unknown_class_and_other_errors_are_all_reported(server, client):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": -3, "height": 8, "batch_size": 1,
                                                           "color": 0}},
              "2": {"class_type": "ImageInvrt", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 99}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
              "5": {"class_type": "ImageFlip", "inputs": {"image": ["1", 0], "flip_method": "diagonal"}},
              "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}
    reply = client.post_json("/prompt", {"prompt": prompt})
    assert reply.status == 400
    payload = reply.json()
    # the top-level error is still ComfyUI's for an unknown class
    assert payload["error"]["type"] == "invalid_prompt"
    assert payload["error"]["message"] == "Cannot execute because node ImageInvrt does not exist."
    errors = payload["node_errors"]
    assert set(errors) == {"1", "2", "3", "5"}
    kinds = {nid: {e["extra_info"]["kind"] for e in entry["errors"]} for nid, entry in errors.items()}
    assert kinds == {"1": {"value_below_min"}, "2": {"unknown_node_type"}, "3": {"value_above_max"},
                     "5": {"value_not_in_list"}}
    assert errors["2"]["class_type"] == "ImageInvrt"
    assert errors["3"]["errors"][0]["extra_info"]["input_name"] == "blur_radius"
    assert errors["1"]["dependent_outputs"] == ["4", "6"]
    assert_nothing_queued_and_alive(server, client)


def test_errors_behind_an_unknown_output_node_are_reported(server, client):
    """The unknown node may be the output: what it links to is checked all the same."""
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                           "color": "red"}},
              "2": {"class_type": "SaveImageWebp", "inputs": {"images": ["1", 0]}}}
    payload = client.post_json("/prompt", {"prompt": prompt}).json()
    assert payload["error"]["extra_info"]["kind"] == "unknown_node_type"
    assert {nid: [e["extra_info"]["kind"] for e in entry["errors"]] for nid, entry in payload["node_errors"].items()} \
        == {"1": ["invalid_value"], "2": ["unknown_node_type"]}
    assert_nothing_queued_and_alive(server, client)
