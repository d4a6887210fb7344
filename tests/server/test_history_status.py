"""Run records in history, through a real server: the run status (success / error / interrupted /
cancelled) next to ComfyUI's ``status_str``, start/end times and duration, the workflow's name, and a
store written by the old schema (before run records) opening with its history kept."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from nodegraph.queue import JobStore
from nodegraph.queue.schema import VERSION

GOOD = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
FAILING = {"1": {"class_type": "FailingNode", "inputs": {"message": "kaput"}}}


def slow(tag: str, seconds: float = 60) -> dict:
    return {"1": {"class_type": "SlowNode", "inputs": {"seconds": seconds, "steps": max(1, int(seconds * 100)),
                                                       "tag": tag}}}


def wait_for(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_done(client, prompt_id: str) -> dict:
    return wait_for(lambda: client.get(f"/history/{prompt_id}").json(), f"{prompt_id} in history")[prompt_id]


def wait_running(client, prompt_id: str) -> None:
    wait_for(lambda: [i for i in client.get("/queue").json()["queue_running"] if i[1] == prompt_id],
             f"{prompt_id} to run")


def message(entry: dict, type_: str) -> dict:
    return next(data for kind, data in entry["status"]["messages"] if kind == type_)


def assert_times(record: dict) -> None:
    """Start, end and duration present and consistent (no wall-clock bounds)."""
    assert isinstance(record["create_time"], int) and isinstance(record["start_time"], int)
    assert isinstance(record["end_time"], int)
    assert record["create_time"] <= record["start_time"] <= record["end_time"]
    assert record["duration_ms"] == record["end_time"] - record["start_time"]


def test_success_has_times_and_the_workflow_name(client):
    prompt_id = client.queue(GOOD, extra_data={"workflow_name": "image basics"})["prompt_id"]
    entry = wait_done(client, prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    record = entry["nodegraph"]
    assert record["status"] == "success" and record["workflow_name"] == "image basics"
    assert record["attempts"] == 1
    assert_times(record)
    # the same instants as ComfyUI's own messages (what ComfyUI's jobs API reads)
    assert record["start_time"] == message(entry, "execution_start")["timestamp"]
    assert record["end_time"] == message(entry, "execution_success")["timestamp"]
    assert client.get("/history").json()[prompt_id] == entry


def test_workflow_name_from_the_ui_workflow(client):
    named = {"nodes": [], "links": [], "extra": {"name": "from the canvas"}}
    first = client.queue(GOOD, extra_data={"extra_pnginfo": {"workflow": named}})["prompt_id"]
    second = client.queue(GOOD)["prompt_id"]
    assert wait_done(client, first)["nodegraph"]["workflow_name"] == "from the canvas"
    assert wait_done(client, second)["nodegraph"]["workflow_name"] is None


def test_interrupted_job_is_interrupted_not_error(client):
    prompt_id = client.queue(slow("long"), extra_data={"workflow_name": "long one"})["prompt_id"]
    wait_running(client, prompt_id)
    assert client.post_json("/interrupt", {"prompt_id": prompt_id}).json() == {"interrupted": True}
    entry = wait_done(client, prompt_id)
    assert entry["nodegraph"]["status"] == "interrupted"
    assert entry["nodegraph"]["status"] != "error"
    # ComfyUI's reading is unchanged: status_str "error", not completed, execution_interrupted last
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert entry["nodegraph"]["workflow_name"] == "long one"
    assert_times(entry["nodegraph"])
    assert entry["nodegraph"]["end_time"] == message(entry, "execution_interrupted")["timestamp"]


def test_failing_node_is_error(client):
    entry = wait_done(client, client.queue(FAILING)["prompt_id"])
    assert entry["nodegraph"]["status"] == "error"
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert_times(entry["nodegraph"])
    assert entry["nodegraph"]["end_time"] == message(entry, "execution_error")["timestamp"]


def test_cancelled_job_is_kept_out_of_comfyui_history(client):
    hold = client.queue(slow("hold"))["prompt_id"]
    wait_running(client, hold)
    gone = client.queue(GOOD, extra_data={"workflow_name": "never ran"})["prompt_id"]
    cleared = client.queue(GOOD)["prompt_id"]
    assert client.post_json("/queue", {"delete": [gone]}).json() == {"deleted": [gone]}
    assert client.post_json("/queue", {"clear": True}).json() == {"cleared": 1}
    client.post_json("/interrupt", {"prompt_id": hold})
    wait_done(client, hold)

    # ComfyUI keeps no history for a prompt deleted from the queue; neither does GET /history
    assert list(client.get("/history").json()) == [hold]
    assert client.get(f"/history/{gone}").json() == {}
    everything = client.get("/history", query={"include_cancelled": "1"}).json()
    assert list(everything) == [gone, cleared, hold]
    for pid in (gone, cleared):
        record = everything[pid]["nodegraph"]
        assert record["status"] == "cancelled"
        assert record["start_time"] is None and record["duration_ms"] is None
        assert record["end_time"] >= record["create_time"]
        assert everything[pid]["status"] == {"status_str": "error", "completed": False, "messages": []}
    assert everything[gone]["nodegraph"]["workflow_name"] == "never ran"
    assert client.get(f"/history/{gone}", query={"include_cancelled": "true"}).json()[gone] == everything[gone]

    # a cancelled prompt may be queued again under its id; then it is an ordinary run
    assert client.post_json("/prompt", {"prompt": GOOD, "prompt_id": gone}).status == 200
    assert wait_done(client, gone)["nodegraph"]["status"] == "success"
    assert len(client.get("/history", query={"include_cancelled": "1"}).json()) == 3


# -- a store written by the old schema ----------------------------------------------------------

#: the tables as nodegraph wrote them before run records (nodegraph/server/jobs.py, HEAD~8 of this change)
#: (written out, not imported from nodegraph.queue.schema: this file must stay what old nodegraphs wrote
#: whatever the schema module later holds)
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL,
    client_id TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_order ON jobs (state, number, seq);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    outputs TEXT NOT NULL,
    status TEXT NOT NULL,
    completed INTEGER NOT NULL,
    messages TEXT NOT NULL,
    meta TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def write_old_store(path) -> None:
    """An old-schema file: three finished prompts (success, interrupted, failed) and one still queued."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    start = {"prompt_id": "", "timestamp": 1_700_000_000_000}

    def history(seq, pid, status, messages, extra):
        conn.execute("INSERT INTO history (prompt_id, number, prompt, extra_data, outputs_to_execute, outputs, "
                     "status, completed, messages, meta, attempts, finished) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (pid, seq, json.dumps(GOOD), json.dumps(extra), '["2"]', '{"2": {"text": ["x"]}}', status,
                      int(status == "success"), json.dumps(messages), "{}", 1, 1_700_000_001.5))

    history(1, "old-ok", "success", [["execution_start", {**start, "prompt_id": "old-ok"}],
                                     ["execution_success", {"prompt_id": "old-ok", "timestamp": 1_700_000_001_000}]],
            {"workflow_name": "old flow"})
    history(2, "old-stop", "error", [["execution_start", {**start, "prompt_id": "old-stop"}],
                                     ["execution_interrupted", {"prompt_id": "old-stop", "node_id": "1",
                                                                "node_type": "SlowNode", "executed": [],
                                                                "timestamp": 1_700_000_001_000}]],
            {"extra_pnginfo": {"workflow": {"nodes": [], "extra": {"title": "ui flow"}}}})
    history(3, "old-bad", "error", [["execution_error", {"prompt_id": "old-bad", "exception_type": "RuntimeError",
                                                         "timestamp": 1_700_000_001_000}]], {})
    conn.execute("INSERT INTO jobs (prompt_id, number, prompt, extra_data, outputs, client_id, state, attempts, "
                 "created) VALUES ('old-queued', 4, ?, ?, '[\"2\"]', NULL, 'pending', 0, 1700000002.0)",
                 (json.dumps(GOOD), json.dumps({"workflow_name": "queued flow"})))
    conn.execute("INSERT INTO counters (name, value) VALUES ('number', 5)")
    conn.commit()
    conn.close()


def test_old_schema_store_migrates_and_keeps_its_history(start_server, tmp_path):
    data_dir = tmp_path / "old-data"
    db_path = data_dir / "nodegraph.sqlite3"
    write_old_store(db_path)
    server = start_server(data_dir=data_dir)
    assert server.config.db_path == db_path
    client = server.client()

    queued = wait_done(client, "old-queued")  # the job queued under the old schema runs
    assert queued["nodegraph"]["status"] == "success" and queued["nodegraph"]["workflow_name"] == "queued flow"
    assert queued["nodegraph"]["create_time"] == 1_700_000_002_000
    history = client.get("/history").json()
    assert list(history) == ["old-ok", "old-stop", "old-bad", "old-queued"]
    assert history["old-ok"]["outputs"] == {"2": {"text": ["x"]}}
    records = {pid: entry["nodegraph"] for pid, entry in history.items()}
    assert [records[p]["status"] for p in ("old-ok", "old-stop", "old-bad")] == ["success", "interrupted", "error"]
    assert [history[p]["status"]["status_str"] for p in ("old-ok", "old-stop", "old-bad")] == \
        ["success", "error", "error"]
    assert records["old-ok"]["workflow_name"] == "old flow" and records["old-stop"]["workflow_name"] == "ui flow"
    assert records["old-bad"]["workflow_name"] is None
    assert records["old-ok"]["start_time"] == 1_700_000_000_000
    assert records["old-ok"]["end_time"] == 1_700_000_001_500
    assert records["old-ok"]["duration_ms"] == 1_500
    assert records["old-bad"]["start_time"] is None and records["old-bad"]["duration_ms"] is None
    assert records["old-ok"]["create_time"] is None  # the old schema did not keep it
    # the number counter carried over; and the file says which schema it has now
    assert client.queue(GOOD)["number"] == 5
    assert sqlite3.connect(db_path).execute("PRAGMA user_version").fetchone()[0] == VERSION


def test_store_refuses_a_file_from_a_newer_schema(tmp_path):
    path = tmp_path / "future.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer nodegraph"):
        JobStore(path)
