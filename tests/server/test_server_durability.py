"""The server as a real subprocess: kill -9 mid-run, restart, and every job completes exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


class ServerProcess:
    def __init__(self, tmp: Path, *extra: str, env: dict | None = None) -> None:
        self.tmp = tmp
        environment = {**os.environ, "PYTHONPATH": str(ROOT),
                       "SLOW_NODES_LOG": str(tmp / "runs.log"), **(env or {})}
        args = [sys.executable, "-m", "nodegraph.cli", "serve", "--port", "0", "--data-dir", str(tmp / "data"),
                "--output-dir", str(tmp / "out"), "--input-dir", str(tmp / "in"),
                "--models-dir", str(tmp / "models"), "--device", "cpu", "--nodes-module", "tests.server.slow_nodes", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=environment, cwd=tmp)
        self.lines: list[str] = []
        self.port = 0
        self.token = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if match := re.search(r"auth token \(required on every request\): (\S+)", line):
                self.token = match.group(1)
            if match := re.search(r"listening on http://\S+:(\d+)", line):
                self.port = int(match.group(1))
                return
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    def call(self, method: str, path: str, data: dict | None = None, token: str | None = None):
        body = json.dumps(data).encode() if data is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                         headers={"Content-Type": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            self.proc.stdout.close()


def slow(tag: str, seconds: float = 0.5) -> dict:
    steps = max(1, int(seconds * 50))  # a progress call (where interrupts land) every 20 ms
    return {"1": {"class_type": "SlowNode", "inputs": {"seconds": seconds, "steps": steps, "tag": tag}}}


def runs(tmp: Path) -> list[str]:
    path = tmp / "runs.log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_run_then_restart_completes_each_job_once(tmp_path):
    server = ServerProcess(tmp_path)
    try:
        ids = [server.call("POST", "/prompt", {"prompt": slow(f"job{i}")})["prompt_id"] for i in range(5)]
        wait_for(lambda: "start job1" in runs(tmp_path), what="job1 to start")
        os.kill(server.proc.pid, signal.SIGKILL)
    finally:
        server.stop(signal.SIGKILL)
    before = runs(tmp_path)
    assert "end job0" in before and "end job1" not in before

    server = ServerProcess(tmp_path)
    try:
        history = wait_for(lambda: len(h := server.call("GET", "/history")) == 5 and h, what="5 history entries")
        assert list(history) == ids
        assert all(entry["status"]["status_str"] == "success" for entry in history.values())
        assert [entry["outputs"]["1"]["text"] for entry in history.values()] == [[f"job{i}"] for i in range(5)]
        restarted = [pid for pid, entry in history.items()
                     if any(m[0] == "execution_restarted" for m in entry["status"]["messages"])]
        assert restarted == [ids[1]]
        assert server.call("GET", "/queue") == {"queue_running": [], "queue_pending": []}
    finally:
        assert server.stop() == 0
    log = runs(tmp_path)
    assert log.count("start job0") == 1 and log.count("end job0") == 1
    assert log.count("start job1") == 2 and log.count("end job1") == 1  # cut short once, then run again
    for i in (2, 3, 4):
        assert log.count(f"start job{i}") == 1 and log.count(f"end job{i}") == 1

    server = ServerProcess(tmp_path)  # history survives restarts; nothing runs again
    try:
        assert list(server.call("GET", "/history")) == ids
        assert list(server.call("GET", "/history?max_items=2&offset=3")) == ids[3:]
        time.sleep(0.3)
    finally:
        server.stop()
    assert runs(tmp_path) == log


def test_graceful_stop_requeues_the_running_job(tmp_path):
    server = ServerProcess(tmp_path)
    try:
        pid = server.call("POST", "/prompt", {"prompt": slow("long", 30)})["prompt_id"]
        wait_for(lambda: "start long" in runs(tmp_path), what="the job to start")
    finally:
        assert server.stop(signal.SIGTERM) == 0
    server = ServerProcess(tmp_path)
    try:
        queue = server.call("GET", "/queue")
        assert [item[1] for item in queue["queue_running"] + queue["queue_pending"]] == [pid]
        assert server.call("GET", "/history") == {}
        wait_for(lambda: runs(tmp_path).count("start long") == 2, what="the job to start again")
        assert server.call("POST", "/interrupt", {"prompt_id": pid}) == {"interrupted": True}
        entry = wait_for(lambda: server.call("GET", f"/history/{pid}"), what="history")[pid]
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    finally:
        server.stop()


def test_public_bind_generates_and_requires_a_token(tmp_path):
    server = ServerProcess(tmp_path, "--host", "0.0.0.0")
    try:
        assert server.token and len(server.token) >= 32
        with pytest.raises(urllib.error.HTTPError) as refused:
            server.call("GET", "/queue")
        assert refused.value.code == 401
        assert server.call("GET", "/queue", token=server.token)["queue_pending"] == []
    finally:
        server.stop()
