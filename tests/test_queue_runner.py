"""The queue package without the server: the local runner takes jobs from a real SQLite store, runs
them on a real engine and reports through any :class:`EventSink` (here one that keeps what it gets);
the Ray runner and the server's hub satisfy the same protocols."""

from __future__ import annotations

import json
import threading
import time

from nodegraph.queue import EventSink, Job, JobRunner, JobStore, LocalRunner
from nodegraph.queue.messages import ClientFeatures


class KeepingSink:
    """An event sink that keeps every message (the server's hub delivers them over WebSockets)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str | None, dict]] = []
        self.statuses = 0
        self.lock = threading.Lock()

    def post(self, client_id, message, *, ends_prompt=False) -> None:
        with self.lock:
            self.messages.append((client_id, json.loads(message)))

    def post_status(self) -> None:
        with self.lock:
            self.statuses += 1

    def is_connected(self, client_id: str) -> bool:
        return True

    def client_features(self, client_id: str) -> ClientFeatures:
        return ClientFeatures(extra_events=True)  # a client that understands every message

    def types(self, client_id: str) -> list[str]:
        with self.lock:
            return [m["type"] for c, m in self.messages if c == client_id]


PROMPT = {"1": {"class_type": "Number", "inputs": {"value": 2}},
          "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}


def wait_history(store: JobStore, prompt_id: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = store.history(prompt_id)
        if entry is not None:
            return entry
        time.sleep(0.02)
    raise AssertionError(f"{prompt_id} did not finish in {timeout}s")


def test_local_runner_runs_a_job_and_reports_through_the_sink(engine, tmp_path):
    store, sink = JobStore(tmp_path / "q.sqlite3"), KeepingSink()
    runner = LocalRunner(engine, store, sink)
    assert isinstance(runner, JobRunner) and isinstance(sink, EventSink)
    runner.start()
    try:
        store.enqueue(Job("p1", 0, PROMPT, {"client_id": "alice"}, ["2"], "alice"))
        runner.notify()
        entry = wait_history(store, "p1")
        assert entry.status == "success" and entry.outputs == {"2": {"value": [2]}}
        assert entry.meta["2"]["display_node"] == "2"
        deadline = time.monotonic() + 10
        while sink.types("alice")[-1:] != ["executing"] and time.monotonic() < deadline:
            time.sleep(0.02)
        kinds = sink.types("alice")
        assert kinds[0] == "execution_start" and "execution_success" in kinds
        assert sink.messages[-1] == ("alice", {"type": "executing", "data": {"node": None, "prompt_id": "p1"}})
        assert [m[0] for m in entry.messages] == ["execution_start", "execution_cached", "execution_success"]
        assert sink.statuses >= 2 and runner.queue_remaining() == 0
        assert json.loads(runner.status_message())["data"]["status"]["exec_info"]["queue_remaining"] == 0
    finally:
        runner.stop()
        store.close()


def test_a_job_that_keeps_being_interrupted_is_given_up(engine, tmp_path):
    store, sink = JobStore(tmp_path / "q.sqlite3"), KeepingSink()
    store.enqueue(Job("p1", 0, PROMPT, {}, ["2"], "bob"))
    for _ in range(3):  # three runs cut short by a "crash": claimed, then recovered at the next start
        assert store.claim_next() is not None
        store.recover()
    runner = LocalRunner(engine, store, sink, max_attempts=3)
    runner.start()
    try:
        entry = wait_history(store, "p1")
    finally:
        runner.stop()
        store.close()
    assert entry.status == "error" and entry.attempts == 4
    restarted, error = entry.messages
    assert restarted[0] == "execution_restarted" and restarted[1]["attempt"] == 4
    assert error[1]["exception_type"] == "TooManyAttempts"
    assert error[1]["exception_message"].startswith("the server stopped 3 times while running this prompt")


def test_the_ray_runner_and_the_hub_satisfy_the_protocols(engine, tmp_path):
    from nodegraph.cluster import RayRunner, RaySettings
    from nodegraph.server.ws import WebSocketHub

    hub = WebSocketHub()
    store = JobStore(tmp_path / "q.sqlite3")
    try:
        runner = RayRunner(engine, store, hub, settings=RaySettings(actors=2))  # not started: no Ray needed
        assert isinstance(hub, EventSink) and isinstance(runner, JobRunner)
        assert runner.actor_settings.threads == engine.threads
    finally:
        store.close()
