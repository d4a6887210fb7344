"""The ComfyUI workflow of a headless client, end to end against a real server."""

from __future__ import annotations

import io
import json
import struct

import pytest
from PIL import Image

from tests.helpers.comfy_client import ComfyClient


def invert_prompt(color: int = 0xFF0000, prefix: str = "inv", width: int = 16, height: int = 8) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                         "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def types(messages: list[dict]) -> list[str]:
    return [m["type"] for m in messages]


def test_example_client_queue_follow_history_view(server):
    comfy = ComfyClient(f"127.0.0.1:{server.port}", features={"nodegraph_events": True})
    with comfy.connect() as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "status" and first["data"]["sid"] == comfy.client_id
        prompt_id, messages, frames, images = comfy.run(ws, invert_prompt())
    seq = [t for t in types(messages) if t not in ("status", "feature_flags")]
    assert seq == ["execution_start", "execution_cached",
                   "executing", "node_finished", "executing", "node_finished", "executing", "executed",
                   "node_finished", "execution_success", "executing"]
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executing == ["1", "2", "3", None]
    assert all(m["data"]["prompt_id"] == prompt_id for m in messages if m["type"] not in ("status", "feature_flags"))
    executed = next(m for m in messages if m["type"] == "executed")["data"]
    assert executed["node"] == "3" and executed["output"]["images"][0]["type"] == "output"
    finished = [m["data"] for m in messages if m["type"] == "node_finished"]
    assert [f["node"] for f in finished] == ["1", "2", "3"]
    assert all(f["cached"] is False and f["seconds"] >= 0 for f in finished)
    assert frames == []
    [png] = images["3"]
    pixel = Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))
    assert pixel == (0, 255, 255)  # red inverted

    history = comfy.get_history(prompt_id)[prompt_id]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    number, pid, prompt, extra, outputs = history["prompt"]
    assert pid == prompt_id and prompt == invert_prompt() and outputs == ["3"]
    assert extra["client_id"] == comfy.client_id
    assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached",
                                                              "execution_success"]
    assert history["meta"]["3"]["node_id"] == "3"


def test_rerun_is_served_from_cache(server):
    comfy = ComfyClient(f"127.0.0.1:{server.port}", features={"nodegraph_events": True})
    with comfy.connect() as ws:
        comfy.run(ws, invert_prompt())
        _, messages, _, images = comfy.run(ws, invert_prompt())
    cached = next(m for m in messages if m["type"] == "execution_cached")["data"]
    # as in ComfyUI, every cached node of the prompt is listed (the output node alone is read)
    assert cached["nodes"] == ["1", "2", "3"]
    assert "executed" in types(messages)  # cached output nodes still report their output
    assert [(m["data"]["node"], m["data"]["cached"]) for m in messages
            if m["type"] == "node_finished"] == [("3", True)]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == [None]
    assert len(images["3"]) == 1


def test_progress_and_binary_preview_frames(server):
    comfy = ComfyClient(f"127.0.0.1:{server.port}", features={"nodegraph_previews": True})
    prompt = {"1": {"class_type": "SlowNode", "inputs": {"seconds": 0.05, "steps": 5, "tag": "p",
                                                         "preview": True}}}
    with comfy.connect() as ws:
        prompt_id, messages, frames, _ = comfy.run(ws, prompt)
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [(p["value"], p["max"]) for p in progress] == [(i, 5) for i in range(1, 6)]
    assert all(p["node"] == "1" and p["prompt_id"] == prompt_id for p in progress)
    assert len(frames) == 5
    for frame in frames:
        event, fmt = struct.unpack(">II", frame[:8])
        assert (event, fmt) == (1, 1)
        image = Image.open(io.BytesIO(frame[8:]))
        assert image.format == "JPEG" and image.size == (24, 16)
    history = comfy.get_history(prompt_id)[prompt_id]
    assert history["outputs"]["1"] == {"text": ["p"]}


def test_events_go_only_to_the_submitting_client(server):
    owner = ComfyClient(f"127.0.0.1:{server.port}")
    other = ComfyClient(f"127.0.0.1:{server.port}")
    with owner.connect() as ws, other.connect() as ws_other:
        owner.run(ws, {"1": {"class_type": "SlowNode", "inputs": {"seconds": 0.02, "steps": 2, "tag": "x"}}})
        seen = []
        while True:
            try:
                seen.append(json.loads(ws_other.recv(timeout=0.5)))
            except TimeoutError:
                break
    assert seen and set(types(seen)) == {"status"}


def test_node_failure_reports_execution_error(server):
    comfy = ComfyClient(f"127.0.0.1:{server.port}")
    prompt = {"1": {"class_type": "FailingNode", "inputs": {"message": "kaput"}}}
    with comfy.connect() as ws:
        prompt_id, messages, _, _ = comfy.run(ws, prompt)
    error = next(m for m in messages if m["type"] == "execution_error")["data"]
    assert error["node_id"] == "1" and error["node_type"] == "FailingNode"
    assert error["exception_type"] == "RuntimeError" and error["exception_message"] == "kaput"
    assert error["traceback"] and "execution_success" not in types(messages)
    history = comfy.get_history(prompt_id)[prompt_id]
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False


def test_interrupt_running_prompt(server, client):
    comfy = ComfyClient(f"127.0.0.1:{server.port}")
    prompt = {"1": {"class_type": "SlowNode", "inputs": {"seconds": 60, "steps": 6000, "tag": "long"}}}
    with comfy.connect() as ws:
        prompt_id = comfy.queue_prompt(prompt)["prompt_id"]
        messages = []
        while True:
            message = json.loads(ws.recv(timeout=30))
            messages.append(message)
            if message["type"] == "progress":
                break
        assert client.post_json("/interrupt", {"prompt_id": "someone-else"}).json() == {"interrupted": False}
        assert client.post_json("/interrupt", {"prompt_id": prompt_id}).status == 200
        while not (message["type"] == "executing" and message["data"]["node"] is None):
            message = json.loads(ws.recv(timeout=30))
            messages.append(message)
    interrupted = next(m for m in messages if m["type"] == "execution_interrupted")["data"]
    assert interrupted["prompt_id"] == prompt_id and interrupted["node_id"] == "1"
    history = comfy.get_history(prompt_id)[prompt_id]
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert history["status"]["messages"][-1][0] == "execution_interrupted"


def test_event_traffic_is_linear_in_nodes(server):
    """A 300-node chain: a handful of small messages per node, no whole-graph progress_state."""
    n = 300
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 7}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt[str(n)] = {"class_type": "PreviewAny", "inputs": {"source": [str(n - 1), 0]}}
    comfy = ComfyClient(f"127.0.0.1:{server.port}")
    with comfy.connect() as ws:
        _, messages, _, _ = comfy.run(ws, prompt)
    assert "progress_state" not in types(messages)
    total = sum(len(json.dumps(m)) for m in messages)
    assert len(messages) <= 3 * (n + 1) + 10
    assert total <= 400 * (n + 1)
