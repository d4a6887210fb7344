"""The server's path per prompt (issue 16, point 1): one validation walk, frames written in bursts but
still one JSON message per WebSocket frame (as ComfyUI's clients parse them), the job store's batched
durability, history rows copied from the queued job. Real server, real SQLite, real WebSocket client."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from websockets.sync.client import connect

from nodegraph.queue.store import DuplicatePrompt, Job, JobStore


def chain(length: int, color: int) -> dict:
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                           "color": color}}}
    for i in range(1, length):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt["show"] = {"class_type": "PreviewAny", "inputs": {"source": [str(length - 1), 0]}}
    return prompt


def follow(ws, prompt_id: str) -> list[dict]:
    """Every text frame up to the prompt's ``executing`` null; each must be exactly one JSON message."""
    messages = []
    while True:
        frame = ws.recv(timeout=30)
        if isinstance(frame, bytes):
            continue
        message = json.loads(frame)  # raises if a frame held two messages
        assert isinstance(message, dict) and set(message) == {"type", "data"}
        messages.append(message)
        data = message["data"]
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return messages


def test_each_message_is_its_own_frame_in_order(server, client):
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId=frames", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"
        for run in range(3):
            prompt_id = client.queue(chain(60, color=run), client_id="frames")["prompt_id"]
            mine = [m for m in follow(ws, prompt_id) if m["data"].get("prompt_id") == prompt_id]
            kinds = [m["type"] for m in mine]
            assert kinds[:2] == ["execution_start", "execution_cached"]
            assert kinds[-2:] == ["execution_success", "executing"]
            executing = [m["data"]["node"] for m in mine if m["type"] == "executing"][:-1]
            assert executing == [str(i) for i in range(60)] + ["show"]  # every node, in order
            assert kinds.count("executed") == 1


def test_two_clients_get_only_their_own_prompts(server, client):
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId=a", open_timeout=10) as a, \
            connect(f"ws://127.0.0.1:{server.port}/ws?clientId=b", open_timeout=10) as b:
        for ws in (a, b):
            ws.recv(timeout=10)
        first = client.queue(chain(30, 1), client_id="a")["prompt_id"]
        second = client.queue(chain(30, 2), client_id="b")["prompt_id"]
        got_a, got_b = follow(a, first), follow(b, second)
        assert {m["data"].get("prompt_id") for m in got_a} <= {first, None}
        assert {m["data"].get("prompt_id") for m in got_b} <= {second, None}


def test_a_prompt_is_validated_once(server, client):
    engine = server.server.engine
    calls = []
    original = engine.validate

    def counting(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return original(*args, **kwargs)

    engine.validate = counting
    try:
        for run in range(3):  # three graphs (not one with other constants: its plan would be reused)
            prompt_id = client.queue(chain(20 + run, 10))["prompt_id"]
            deadline = time.monotonic() + 30
            while not client.get(f"/history/{prompt_id}").json():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert client.get(f"/history/{prompt_id}").json()[prompt_id]["status"]["status_str"] == "success"
    finally:
        engine.validate = original
    assert len(calls) == 3  # at POST only: the runner ran the plan it was handed
    assert "nodegraph-jobs" not in calls


def test_a_graph_queued_again_reuses_its_plan_and_runs_its_new_constants(server, client):
    """The same prompt again, then the same graph with another width: validated once (plan_memo), and
    each run shows its own width."""
    engine = server.server.engine
    calls = []
    original = engine.validate
    engine.validate = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)

    def sized(width: int) -> dict:
        prompt = chain(8, 7)
        prompt["0"]["inputs"]["width"] = width
        prompt["size"] = {"class_type": "GetImageSize", "inputs": {"image": ["7", 0]}}
        prompt["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["size", 0]}}
        return prompt

    shown = []
    try:
        for width in (16, 16, 24):
            prompt_id = client.queue(sized(width))["prompt_id"]
            deadline = time.monotonic() + 30
            while not client.get(f"/history/{prompt_id}").json():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            entry = client.get(f"/history/{prompt_id}").json()[prompt_id]
            assert entry["status"]["status_str"] == "success"
            shown.append(entry["outputs"]["show"]["text"])
    finally:
        engine.validate = original
    assert shown == [["16"], ["16"], ["24"]]
    assert len(calls) == 1


def test_a_refused_prompt_never_replaces_the_queued_one(server, client):
    """A second prompt under a queued prompt's id is refused; the first runs as it was sent."""
    hold = client.queue({"1": {"class_type": "SlowNode", "inputs": {"seconds": 0.5, "steps": 5, "tag": "h"}}})
    first = client.post_json("/prompt", {"prompt": chain(3, 99), "prompt_id": "dup"})
    assert first.status == 200
    again = client.post_json("/prompt", {"prompt": chain(5, 98), "prompt_id": "dup"})
    assert again.status == 400 and again.json()["error"]["type"] == "duplicate_prompt_id"
    deadline = time.monotonic() + 30
    while not client.get("/history/dup").json():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    entry = client.get("/history/dup").json()["dup"]
    assert entry["status"]["status_str"] == "success" and len(entry["prompt"][2]) == 4  # chain(3): 4 nodes
    assert "dup" not in server.server.runner._plans and hold


# -- the job store ------------------------------------------------------------------------------------

def synchronous_mode(store: JobStore) -> int:
    return store._write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.parametrize("sync_commits,mode", [(False, 1), (True, 2)])  # 1 NORMAL, 2 FULL
def test_store_durability_modes(tmp_path, sync_commits, mode):
    store = JobStore(tmp_path / "q.sqlite3", sync_commits=sync_commits)
    try:
        assert synchronous_mode(store) == mode
        assert (store._syncer is None) == sync_commits
        store.enqueue(Job("a", 0, {"1": {"class_type": "X", "inputs": {}}}, {"k": "v"}, ["1"], "c"))
        if store._syncer is not None:
            store._syncer.sync()  # the WAL flush the syncer makes within SYNC_DELAY
    finally:
        store.close()
    # committed writes are in the file for any other connection (a restarted server)
    conn = sqlite3.connect(tmp_path / "q.sqlite3")
    assert conn.execute("SELECT prompt_id, extra_data FROM jobs").fetchall() == [("a", '{"k":"v"}')]
    conn.close()


def test_finish_copies_the_queued_prompt_into_history(tmp_path):
    from nodegraph.queue.store import HistoryEntry

    store = JobStore(tmp_path / "q.sqlite3")
    try:
        prompt = {"1": {"class_type": "PreviewAny", "inputs": {"source": "é ü"}}}
        store.enqueue(Job("p", 0, prompt, {"extra_pnginfo": {"w": 1}}, ["1"], "c"))
        job = store.claim_next()
        assert store.finish(HistoryEntry(job.prompt_id, job.number, {}, {}, [], {"1": {"text": ["x"]}}))
        entry = store.history("p")
        assert entry.prompt == prompt and entry.extra_data == {"extra_pnginfo": {"w": 1}}
        assert entry.outputs_to_execute == ["1"] and entry.outputs == {"1": {"text": ["x"]}}
        assert entry.created == job.created and entry.started is None
        assert not store.finish(HistoryEntry("p", 1, {}, {}, []))  # no longer running
    finally:
        store.close()


def test_serve_flag_turns_on_synchronous_commits():
    from nodegraph.cli import build_parser

    assert build_parser().parse_args(["serve", "--sync-commits"]).sync_commits is True
    assert build_parser().parse_args(["serve"]).sync_commits is False


def test_sync_commits_config_reaches_the_store(start_server):
    server = start_server(sync_commits=True)
    assert synchronous_mode(server.server.store) == 2


@pytest.mark.parametrize("size", [10, 200, 70_000, 300_000])
def test_frames_of_every_length_class_arrive_intact(server, client, size):
    """Text frames are written by the hub itself: 7-bit, 16-bit and 64-bit payload lengths."""
    text = "é" * (size // 2) + "x" * (size % 2)
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId=big", open_timeout=10, max_size=None) as ws:
        ws.recv(timeout=10)
        prompt_id = client.queue({"1": {"class_type": "PreviewAny", "inputs": {"source": text}}},
                                 client_id="big")["prompt_id"]
        executed = [m for m in follow(ws, prompt_id) if m["type"] == "executed"]
        assert executed[0]["data"]["output"] == {"text": [text]}


def test_frame_encoding_matches_rfc_6455():
    from nodegraph.server.ws import frame

    for size, header in ((0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"),
                         (65535, b"\x81\x7e\xff\xff"), (65536, b"\x81\x7f" + (65536).to_bytes(8, "big"))):
        data = frame("a" * size)
        assert data[:len(header)] == header and len(data) == len(header) + size
    assert frame(b"\x00\x01")[:2] == b"\x82\x02"  # binary


def test_a_claimed_job_takes_the_prompt_its_caller_parsed(tmp_path):
    """The local runner hands the store the prompts the server parsed: their text is not decoded again."""
    store = JobStore(tmp_path / "q.sqlite3")
    try:
        for pid in ("a", "b"):
            store.enqueue(Job(pid, 0, chain(3, 1), {}, ["show"], None))
        parsed = chain(3, 1)
        job = store.claim_next(known=lambda pid: parsed if pid == "a" else None)
        assert job.prompt_id == "a" and job.prompt is parsed
        job = store.claim_next(known=lambda pid: None)
        assert job.prompt_id == "b" and job.prompt == chain(3, 1) and job.prompt is not parsed
    finally:
        store.close()


def test_writes_from_many_threads_each_commit_once_in_a_consistent_order(tmp_path):
    """Writes on the caller's thread (nothing queued) and writes batched by the writer thread (while
    another commits) mix: every job is queued once with its own number, claimed exactly once, and a
    refused write (a duplicate id) loses nothing else."""
    store = JobStore(tmp_path / "q.sqlite3")
    errors: list[BaseException] = []
    claimed: list[str] = []
    lock = threading.Lock()

    def queue_jobs(worker: int) -> None:
        try:
            for i in range(40):
                store.enqueue(Job(f"{worker}-{i}", 0, {"1": {"class_type": "X", "inputs": {}}}, {}, ["1"], None))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def claim_jobs() -> None:
        while True:
            job = store.claim_next()
            if job is None:
                return
            with lock:
                claimed.append(job.prompt_id)

    try:
        threads = [threading.Thread(target=queue_jobs, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        with pytest.raises(DuplicatePrompt):  # the same id again: refused, the rest stays
            store.enqueue(Job("0-0", 0, {}, {}, [], None))
        numbers = [job.number for job in store.jobs("pending")]
        assert len(numbers) == 240 and len(set(numbers)) == 240
        threads = [threading.Thread(target=claim_jobs) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(claimed) == sorted(f"{w}-{i}" for w in range(6) for i in range(40))
        assert store.counts() == (240, 0)
    finally:
        store.close()


def test_bulk_framing_writes_the_same_bytes_as_one_frame_per_message():
    from nodegraph.server.ws import frame, frame_parts

    messages = ["", "x" * 125, "é" * 63, "y" * 126, "z" * 70000, b"\x00\x01", b"\x02" * 200, '{"type":"executing"}']
    assert b"".join(frame_parts(messages)) == b"".join(frame(m) for m in messages)


def test_the_hub_hands_each_client_its_messages_in_order():
    """Messages posted for several clients, interleaved, reach each client in the order posted (runs of
    one client's messages are handed over at once); a client that is gone gets nothing."""
    from collections import deque

    from nodegraph.server.ws import WebSocketHub, WsClient

    hub = WebSocketHub()
    hub.clients = {"a": WsClient("a", None), "b": WsClient("b", None)}
    posted = [("a", "1"), ("a", "2"), ("b", "3"), ("gone", "4"), ("a", "5"), ("b", "6"), ("b", "7")]
    hub._pending = deque(posted)
    hub._deliver_pending()
    assert list(hub.clients["a"].outbox) == ["1", "2", "5"]
    assert list(hub.clients["b"].outbox) == ["3", "6", "7"]
    assert not hub._pending
