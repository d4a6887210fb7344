"""Scale-out benchmark: the same server in-process and on 1 and 2 Ray actors.

    python bench/scale.py [--jobs 12] [--blurs 4] [--size 768] [--latency-jobs 40]

For each mode it starts ``nodegraph serve`` as a subprocess (``--ray auto --ray-actors N`` starts a
local Ray cluster with this machine's CPUs; every Ray actor reserves one CPU, so its torch uses one
thread) and, through HTTP and one WebSocket, measures:

* **latency**: ``--latency-jobs`` tiny prompts (64x64 EmptyImage → ImageInvert → SaveImage, all
  different) one after the other, from ``POST /prompt`` to that prompt's ``executing {node: null}``;
  the Ray overhead is the median of Ray-1-actor minus the median in-process;
* **throughput**: ``--jobs`` CPU-bound prompts (a ``--size``² image through ``--blurs`` Gaussian blurs of
  radius 15, all different so nothing is cached) queued at once, timed until the last is done, after
  one warm-up prompt per actor.

Prints the figures; checks that every prompt succeeded. The in-process server runs one job at a time
with its own thread pool (torch may use every core), shown for reference.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
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


def start_server(tmp: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nodegraph.cli", "serve", "--port", "0", "--device", "cpu",
                             "--data-dir", str(tmp / "data"), "--output-dir", str(tmp / "out"),
                             "--input-dir", str(tmp / "in"), "--models-dir", str(tmp / "models"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if match := re.search(r"listening on http://\S+:(\d+)", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(match.group(1))
    raise SystemExit("server did not start:\n" + "".join(lines[-30:]))


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()


class Session:
    """One WebSocket client of a server: queue prompts, wait for them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client_id = uuid.uuid4().hex
        self._socket = connect(f"ws://127.0.0.1:{port}/ws?clientId={self.client_id}", open_timeout=60,
                               max_size=None)
        self.ws = self._socket.__enter__()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def queue(self, prompt: dict) -> str:
        self.conn.request("POST", "/prompt", json.dumps({"prompt": prompt, "client_id": self.client_id}),
                          {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"/prompt: {response.status} {body[:300]!r}")
        return json.loads(body)["prompt_id"]

    def wait(self, prompt_ids: set[str], timeout: float = 1200) -> None:
        pending = set(prompt_ids)
        while pending:
            message = self.ws.recv(timeout=timeout)
            if isinstance(message, bytes):
                continue
            data = json.loads(message)
            if data["type"] == "executing" and data["data"]["node"] is None:
                pending.discard(data["data"]["prompt_id"])

    def history(self) -> dict:
        self.conn.request("GET", "/history")
        return json.loads(self.conn.getresponse().read())

    def close(self) -> None:
        self._socket.__exit__(None, None, None)
        self.conn.close()


def tiny_prompt(index: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                         "color": 1000 + index}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tiny"}}}


def blur_prompt(index: int, blurs: int, size: int) -> dict:
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                           "color": 0x336699 + index}}}
    for i in range(1, blurs + 1):
        prompt[str(i)] = {"class_type": "ImageBlur", "inputs": {"image": [str(i - 1), 0], "blur_radius": 15,
                                                                "sigma": 1.0 + i / 10}}
    prompt["out"] = {"class_type": "SaveImage", "inputs": {"images": [str(blurs), 0], "filename_prefix": "blur"}}
    return prompt


def measure(name: str, extra: list[str], warmups: int, args: argparse.Namespace, base: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="nodegraph-scale-") as tmp:
        proc, port = start_server(Path(tmp), *extra)
        try:
            session = Session(port)
            session.wait({session.queue(tiny_prompt(base - 1))})  # first-job imports
            latencies = []
            for i in range(args.latency_jobs):
                start = time.perf_counter()
                session.wait({session.queue(tiny_prompt(base + i))})
                latencies.append((time.perf_counter() - start) * 1000)
            session.wait({session.queue(blur_prompt(base - 1 - w, args.blurs, args.size)) for w in range(warmups)})
            start = time.perf_counter()
            ids = {session.queue(blur_prompt(base + i, args.blurs, args.size)) for i in range(args.jobs)}
            session.wait(ids)
            seconds = time.perf_counter() - start
            history = session.history()
            ok = all(history[pid]["status"]["status_str"] == "success" for pid in ids)
            session.close()
        finally:
            stop_server(proc)
    return {"name": name, "latency_ms": latencies, "seconds": seconds, "ok": ok,
            "jobs_per_s": args.jobs / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=12, help="CPU-bound prompts per mode")
    parser.add_argument("--blurs", type=int, default=4, help="blur nodes per CPU-bound prompt")
    parser.add_argument("--size", type=int, default=768, help="image side of the CPU-bound prompts")
    parser.add_argument("--latency-jobs", type=int, default=40, help="tiny prompts timed one by one")
    parser.add_argument("--skip-inprocess", action="store_true")
    args = parser.parse_args()
    modes = [] if args.skip_inprocess else [("in-process", [], 1)]
    modes += [("ray 1 actor", ["--ray", "auto", "--ray-actors", "1"], 1),
              ("ray 2 actors", ["--ray", "auto", "--ray-actors", "2"], 2)]
    print(f"scale bench: {args.jobs} CPU-bound prompts ({args.size}x{args.size}, {args.blurs} blurs r15) per mode; "
          f"{args.latency_jobs} tiny prompts one by one; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    results = {}
    for number, (name, extra, warmups) in enumerate(modes):
        r = results[name] = measure(name, extra, warmups, args, base=100_000 * (number + 1))
        lat = r["latency_ms"]
        print(f"  {name:14s} throughput {r['jobs_per_s']:.3f} jobs/s ({r['seconds']:.2f} s)   "
              f"tiny-job latency ms: median {statistics.median(lat):.1f}  p90 "
              f"{sorted(lat)[int(0.9 * (len(lat) - 1))]:.1f}  min {min(lat):.1f}   all ok: {r['ok']}", flush=True)
    one, two = results["ray 1 actor"], results["ray 2 actors"]
    print(f"  speed-up 2 vs 1 Ray actors: {two['jobs_per_s'] / one['jobs_per_s']:.2f}x")
    if "in-process" in results:
        added = statistics.median(one["latency_ms"]) - statistics.median(results["in-process"]["latency_ms"])
        print(f"  added latency per job through Ray (median, 1 actor vs in-process): {added:.1f} ms")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
