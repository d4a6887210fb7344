"""Server benchmark: many clients queue many small prompts while a long job runs.

    python bench/server.py [--clients 20] [--prompts 200] [--long-blurs 12]

Starts ``nodegraph serve`` as a subprocess on a free port with a temporary data/output folder. One
client queues a long CPU-bound job (a chain of 1024x1024 Gaussian blurs); then ``--clients`` clients,
each with its own WebSocket, queue ``--prompts`` small prompts between them (EmptyImage → ImageInvert →
SaveImage, all different so none is cached) and follow their events until each prompt's
``executing {node: null}``. Meanwhile a poller process calls ``GET /queue`` every 10 ms over one
keep-alive connection, from before the long job is queued until the last prompt is done. At the end it checks that every prompt is in history exactly once with status success and
that the files exist, and prints the figures (latencies in milliseconds). Exit code 1 if a check fails
or the ``GET /queue`` p99 is 50 ms or more.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[index]


def start_server(tmp: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nodegraph.cli", "serve", "--port", "0", "--device", "cpu",
                             "--data-dir", str(tmp / "data"), "--output-dir", str(tmp / "out"),
                             "--input-dir", str(tmp / "in"), "--models-dir", str(tmp / "models")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
    for line in proc.stdout:
        if match := re.search(r"listening on http://\S+:(\d+)", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(match.group(1))
    raise SystemExit("server did not start")


def post(port: int, path: str, data: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(data), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
        return json.loads(body)
    finally:
        conn.close()


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def long_prompt(blurs: int) -> dict:
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1,
                                                           "color": 0x336699}}}
    for i in range(1, blurs + 1):
        prompt[str(i)] = {"class_type": "ImageBlur", "inputs": {"image": [str(i - 1), 0], "blur_radius": 15,
                                                                "sigma": 1.0 + i / 10}}
    prompt["out"] = {"class_type": "SaveImage", "inputs": {"images": [str(blurs), 0], "filename_prefix": "long"}}
    return prompt


def small_prompt(index: int, client: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                         "color": 1000 + index}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"c{client}/p"}}}


class Client(threading.Thread):
    """Queues its share of prompts, then follows its WebSocket until each one is done."""

    def __init__(self, port: int, number: int, indices: list[int], submit_latencies: list[float]) -> None:
        super().__init__(daemon=True)
        self.port, self.number, self.indices = port, number, indices
        self.client_id = uuid.uuid4().hex
        self.submit_latencies = submit_latencies
        self.prompt_ids: list[str] = []
        self.done: set[str] = set()
        self.messages = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", open_timeout=30) as ws:
                for index in self.indices:
                    start = time.perf_counter()
                    reply = post(self.port, "/prompt", {"prompt": small_prompt(index, self.number),
                                                        "client_id": self.client_id})
                    self.submit_latencies.append((time.perf_counter() - start) * 1000)
                    self.prompt_ids.append(reply["prompt_id"])
                wanted = set(self.prompt_ids)
                while not wanted <= self.done:
                    message = ws.recv(timeout=600)
                    if isinstance(message, bytes):
                        continue
                    self.messages += 1
                    data = json.loads(message)
                    if data["type"] == "executing" and data["data"]["node"] is None:
                        self.done.add(data["data"]["prompt_id"])
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def poll_queue(port: int, stop, results, interval: float = 0.01) -> None:
    """``GET /queue`` in a loop over one keep-alive connection, in its own process so that the
    clients' threads in this process do not delay it (the figure is the server's, not our GIL's)."""
    latencies, max_pending = [], 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        start = time.perf_counter()
        conn.request("GET", "/queue")
        body = conn.getresponse().read()
        latencies.append((time.perf_counter() - start) * 1000)
        max_pending = max(max_pending, len(json.loads(body)["queue_pending"]))
        time.sleep(interval)
    conn.close()
    results.put((latencies, max_pending))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--long-blurs", type=int, default=12, help="blur nodes in the long job")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nodegraph-bench-") as tmp_name:
        tmp = Path(tmp_name)
        proc, port = start_server(tmp)
        try:
            return run(args, port, tmp)
        finally:
            proc.terminate()
            proc.wait(30)


def run(args, port: int, tmp: Path) -> int:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    poller = context.Process(target=poll_queue, args=(port, stop, results), daemon=True)
    poller.start()
    t0 = time.perf_counter()
    long_id = post(port, "/prompt", {"prompt": long_prompt(args.long_blurs)})["prompt_id"]
    while not get(port, "/queue")["queue_running"]:
        time.sleep(0.01)
    submit_latencies: list[float] = []
    clients = [Client(port, c, list(range(c, args.prompts, args.clients)), submit_latencies)
               for c in range(args.clients)]
    t_submit = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    t_end = time.perf_counter()
    stop.set()
    latencies, max_pending = results.get(timeout=60)
    poller.join(30)

    failures = [f"client {c.number}: {c.error!r}" for c in clients if c.error]
    history = get(port, "/history")
    all_ids = [long_id] + [pid for c in clients for pid in c.prompt_ids]
    if len(set(all_ids)) != len(all_ids):
        failures.append("duplicate prompt ids")
    missing = [pid for pid in all_ids if pid not in history]
    not_ok = [pid for pid in all_ids if pid in history and history[pid]["status"]["status_str"] != "success"]
    extra = [pid for pid in history if pid not in set(all_ids)]
    files = sum(1 for _ in (tmp / "out").rglob("p_*.png"))
    if missing or not_ok or extra:
        failures.append(f"history: {len(missing)} missing, {len(not_ok)} not successful, {len(extra)} unknown")
    if files != args.prompts:
        failures.append(f"{files} output files for {args.prompts} prompts")
    queue = get(port, "/queue")
    if queue["queue_running"] or queue["queue_pending"]:
        failures.append("queue not empty at the end")
    long_entry = history.get(long_id, {})
    long_messages = long_entry.get("status", {}).get("messages", [])
    stamps = [m[1]["timestamp"] for m in long_messages if m[0] in ("execution_start", "execution_success")]
    long_seconds = (stamps[-1] - stamps[0]) / 1000 if len(stamps) == 2 else float("nan")

    lat = latencies
    p99 = percentile(lat, 99)
    print(f"server bench: {args.clients} clients, {args.prompts} small prompts queued while a long job "
          f"({args.long_blurs} 1024x1024 blurs) runs")
    print(f"  long job: {long_seconds:.2f} s; everything done {t_end - t0:.2f} s after it was queued; "
          f"small prompts queued and finished in {t_end - t_submit:.2f} s "
          f"({args.prompts / (t_end - t_submit):.1f} prompts/s including the wait for the long job)")
    print(f"  POST /prompt latency ms: p50 {percentile(submit_latencies, 50):.1f}  "
          f"p99 {percentile(submit_latencies, 99):.1f}  max {max(submit_latencies):.1f}")
    print(f"  GET /queue latency ms ({len(lat)} calls, up to {max_pending} pending): "
          f"p50 {percentile(lat, 50):.1f}  p95 {percentile(lat, 95):.1f}  p99 {p99:.1f}  max {max(lat):.1f}  "
          f"mean {statistics.fmean(lat):.1f}")
    print(f"  history: {len(history)} entries, {len(all_ids) - len(missing) - len(not_ok)} of {len(all_ids)} "
          f"successful, none lost: {not (missing or extra)}; {files} output files; "
          f"{sum(c.messages for c in clients)} WS text messages to the clients")
    if p99 >= 50:
        failures.append(f"GET /queue p99 {p99:.1f} ms ≥ 50 ms")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
