"""Server benchmarks, through ``nodegraph serve`` over HTTP + WebSocket, as a client sees it.

    python bench/server.py [queue] [--clients 20] [--prompts 200] [--long-blurs 12]
    python bench/server.py cases [--repeats 15] [--case chain-400 ...] [--client aiohttp] [--json out.json]
    python bench/server.py soak [--soak-prompts 2000] [--cache-ram 1.0]

Each mode starts ``nodegraph serve`` as a subprocess on a free port with a temporary data/output
folder (``--pythonpath DIR`` puts another source tree first, to compare versions; ``--serve-arg`` passes
extra flags; ``--profile FILE`` runs the server under cProfile on every thread and writes the merged
stats there when it stops).

``queue`` (the default): one client queues a long CPU-bound job (a chain of 1024x1024 Gaussian blurs);
then ``--clients`` clients, each with its own WebSocket, queue ``--prompts`` small prompts between them
(EmptyImage → ImageInvert → SaveImage, all different so none is cached) and follow their events until
each prompt's ``executing {node: null}``. Meanwhile a poller process calls ``GET /queue`` every 10 ms
over one keep-alive connection, from before the long job is queued until the last prompt is done. At
the end it checks that every prompt is in history exactly once with status success and that the files
exist, and prints the figures (latencies in milliseconds). Exit code 1 if a check fails or the
``GET /queue`` p99 is 50 ms or more.

``cases``: comfybench's shapes, one prompt at a time from one client (a keep-alive HTTP connection and
a WebSocket that announces no features, as ComfyUI's script examples), timed from the POST to the
prompt's ``executing {node: null}``; medians of ``--repeats`` after ``--warmups``. Every repetition
changes a constant so that nothing is cached unless the case says so: ``one-node`` (PreviewAny of a
number), ``chain-N`` (EmptyImage 64 px → N−1 ImageInvert → ImageCrop → GetImageSize → PreviewAny: N+3
nodes), ``cachehit-chain-400`` (the last chain-400 again: all cached), ``tail-change-400`` (its crop's
place changed: 3 nodes run), ``wide-100`` (EmptyImage → 100 × ImageCrop(placeᵢ) → ImageInvert →
PreviewImage: 301 nodes) and ``wide-100-identical`` (the same with one place: 103 distinct
computations). The crop is the varied node because it is cheap and runs no torch kernel, whose
threads would measure the machine's load rather than the server. Before and after the cases it times
a fixed pure-Python loop (:func:`python_loop_ms`, median of 5) in the client with the server idle: on a
virtual machine whose speed moves from minute to minute, it says how fast the machine was then (this
project's 2-core machine: ~37 ms in its fast minutes, 50–60 in its slow ones). ``--client aiohttp``
reads the events with aiohttp's client instead of ``websockets``' (:class:`AiohttpCaseClient`): a
third of the client's CPU, which on a 2-core machine is CPU left to the server.

``soak``: ``--soak-prompts`` varied prompts (chains and fans of 64–768 px images, identical branches,
1-node prompts, repeats of earlier prompts; seeded), four in flight, with the server's RSS and the temp
folder's file count sampled every second; prints RSS at start (after one warm-up prompt of each node
type), after 200 prompts, peak and end against baseline + cache budget + the largest job's working set. Exit code 1 if a prompt fails or a bound is
broken.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[index]


#: runs ``nodegraph.cli.main`` with a cProfile profiler on every thread; merged stats go to argv[1]
PROFILE_WRAPPER = """
import cProfile, pstats, sys, threading
profilers = [cProfile.Profile()]
def _start(*_):
    sys.setprofile(None)
    profiler = cProfile.Profile()
    profilers.append(profiler)
    profiler.enable()
threading.setprofile(_start)
from nodegraph.cli import main
profilers[0].enable()
try:
    main(sys.argv[2:])
finally:
    profilers[0].disable()
    merged = None
    for profiler in profilers:
        try:
            stats = pstats.Stats(profiler)
        except TypeError:  # a thread that never ran Python code
            continue
        merged = stats if merged is None else merged.add(stats)
    merged.dump_stats(sys.argv[1])
"""


def start_server(tmp: Path, extra: list[str] = (), pythonpath: list[str] = (),
                 profile: Path | None = None) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*pythonpath, str(ROOT)])}
    serve = ["serve", "--port", "0", "--device", "cpu", "--data-dir", str(tmp / "data"), "--output-dir",
             str(tmp / "out"), "--input-dir", str(tmp / "in"), "--models-dir", str(tmp / "models"), *extra]
    head = [sys.executable, "-c", PROFILE_WRAPPER, str(profile.resolve())] if profile else \
        [sys.executable, "-m", "nodegraph.cli"]
    proc = subprocess.Popen(head + serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tmp)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("mode", nargs="?", default="queue", choices=("queue", "cases", "soak"))
    parser.add_argument("--clients", type=int, default=20, help="queue: clients")
    parser.add_argument("--prompts", type=int, default=200, help="queue: small prompts")
    parser.add_argument("--long-blurs", type=int, default=12, help="queue: blur nodes in the long job")
    parser.add_argument("--repeats", type=int, default=15, help="cases: timed runs per case")
    parser.add_argument("--warmups", type=int, default=3, help="cases: untimed runs per case first")
    parser.add_argument("--case", action="append", default=[], help="cases: only these (repeatable)")
    parser.add_argument("--client", choices=("websockets", "aiohttp"), default="websockets",
                        help="cases: the client library (default: websockets, as in every earlier figure)")
    parser.add_argument("--json", type=Path, help="cases/soak: also write the figures here")
    parser.add_argument("--soak-prompts", type=int, default=2000, help="soak: prompts")
    parser.add_argument("--cache-ram", type=float, default=1.0, help="soak: the server's --cache-ram (GiB)")
    parser.add_argument("--seed", type=int, default=16, help="soak: the prompts' random seed")
    parser.add_argument("--pythonpath", action="append", default=[], metavar="DIR",
                        help="put DIR first on the server's PYTHONPATH (another source tree)")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for nodegraph serve (repeatable)")
    parser.add_argument("--profile", type=Path, help="run the server under cProfile (all threads); stats here")
    args = parser.parse_args()

    extra = list(args.serve_arg)
    if args.mode == "soak":
        extra += ["--cache-ram", str(args.cache_ram)]
    with tempfile.TemporaryDirectory(prefix="nodegraph-bench-") as tmp_name:
        tmp = Path(tmp_name)
        proc, port = start_server(tmp, extra, args.pythonpath, args.profile)
        try:
            if args.mode == "cases":
                return run_cases(args, port, proc.pid)
            if args.mode == "soak":
                return run_soak(args, port, tmp, proc.pid)
            return run(args, port, tmp)
        finally:
            proc.terminate()
            proc.wait(120 if args.profile else 30)


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


# -- cases -------------------------------------------------------------------------------------------

def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def python_loop_ms(steps: int = 1_000_000, repeats: int = 5) -> float:
    """Median ms of a fixed pure-Python loop: how fast this machine runs Python right now."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(steps):
            total += i
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def crop(image: str, offset: int) -> dict:
    """ImageCrop 48×48 at a position given by ``offset`` (one of 17×17 places): a cheap node with a
    constant to change (no torch kernel whose threads would time the machine's load instead)."""
    return {"class_type": "ImageCrop", "inputs": {"image": [image, 0], "width": 48, "height": 48,
                                                  "x": offset % 17, "y": offset // 17 % 17}}


def chain_prompt(length: int, color: int, offset: int = 0, size: int = 64) -> dict:
    """EmptyImage → ``length``−1 ImageInvert → ImageCrop(offset) → GetImageSize → PreviewAny."""
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                           "color": color}}}
    for i in range(1, length):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt[str(length)] = crop(str(length - 1), offset)
    prompt["size"] = {"class_type": "GetImageSize", "inputs": {"image": [str(length), 0]}}
    prompt["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["size", 0]}}
    return prompt


def wide_prompt(branches: int, color: int, identical: bool, size: int = 64) -> dict:
    """EmptyImage → ``branches`` × (ImageCrop(placeᵢ) → ImageInvert → PreviewImage)."""
    prompt = {"src": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                             "color": color}}}
    for i in range(branches):
        prompt[f"b{i}"] = crop("src", 0 if identical else i)
        prompt[f"i{i}"] = {"class_type": "ImageInvert", "inputs": {"image": [f"b{i}", 0]}}
        prompt[f"p{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"i{i}", 0]}}
    return prompt


class CaseClient:
    """One client: a keep-alive HTTP connection and a WebSocket; runs one prompt at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client_id = uuid.uuid4().hex
        self._ws = connect(f"ws://127.0.0.1:{port}/ws?clientId={self.client_id}", open_timeout=30,
                           max_size=None)
        self.ws = self._ws.__enter__()
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def close(self) -> None:
        self._ws.__exit__(None, None, None)
        self.http.close()

    def post(self, body: bytes) -> dict:
        self.http.request("POST", "/prompt", body, {"Content-Type": "application/json"})
        response = self.http.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /prompt: {response.status} {data[:300]!r}")
        return json.loads(data)

    def run(self, prompt: dict) -> tuple[float, int, int, bool]:
        """``(ms from POST to executing null, nodes executed, nodes reported cached, success)``."""
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        start = time.perf_counter()
        tally = EventTally(self.post(body)["prompt_id"])
        while not tally.ends_with(self.ws.recv(timeout=300)):
            pass
        return (time.perf_counter() - start) * 1000, tally.executed, len(tally.cached), tally.ok


@dataclass
class EventTally:
    """What a case client counts of one prompt's messages, up to its ``executing`` with node null."""

    prompt_id: str
    executed: int = 0
    cached: set = field(default_factory=set)
    ok: bool = False

    def ends_with(self, message: str | bytes) -> bool:
        """Count ``message``; ``True`` when it ends the prompt."""
        if not isinstance(message, str) or self.prompt_id not in message:
            return False
        if message.startswith('{"type":"executing"'):
            if '"node":null' in message:
                return True
            self.executed += 1
        elif message.startswith('{"type":"execution_cached"'):
            self.cached.update(json.loads(message)["data"]["nodes"])
        elif message.startswith('{"type":"execution_success"'):
            self.ok = True
        return False


class AiohttpCaseClient:
    """:class:`CaseClient` on aiohttp's client (ComfyUI's own HTTP library; its WebSocket frame reader is
    compiled): the same requests and the same reading of every message, at about a third of the
    client's CPU. On a 2-core machine the client shares the cores with the server, and the
    ``websockets`` client's reader thread (one hand-off per message) takes a quarter of them on a
    400-node prompt: this client measures more of the server and less of itself."""

    def __init__(self, port: int) -> None:
        import asyncio

        import aiohttp

        self.port = port
        self.client_id = uuid.uuid4().hex
        self._loop = asyncio.new_event_loop()
        self._session = self._loop.run_until_complete(self._open(aiohttp))

    async def _open(self, aiohttp):
        session = aiohttp.ClientSession()
        self.ws = await session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                           max_msg_size=0)
        return session

    def close(self) -> None:
        async def close():
            await self.ws.close()
            await self._session.close()
        self._loop.run_until_complete(close())
        self._loop.close()

    def run(self, prompt: dict) -> tuple[float, int, int, bool]:
        return self._loop.run_until_complete(self._run(prompt))

    async def _run(self, prompt: dict) -> tuple[float, int, int, bool]:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        start = time.perf_counter()
        async with self._session.post(f"http://127.0.0.1:{self.port}/prompt", data=body,
                                      headers={"Content-Type": "application/json"}) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"POST /prompt: {response.status} {data[:300]!r}")
        tally = EventTally(json.loads(data)["prompt_id"])
        while not tally.ends_with((await self.ws.receive(timeout=300)).data):
            pass
        return (time.perf_counter() - start) * 1000, tally.executed, len(tally.cached), tally.ok


#: ``cases --client``: which client library sends the prompts and reads the events
CASE_CLIENTS = {"websockets": CaseClient, "aiohttp": AiohttpCaseClient}


@dataclass
class CaseFigure:
    case: str
    nodes: int
    executed: int
    cached: int
    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    #: the server process's CPU time (user + system, all threads) per run: steadier than wall time on
    #: a loaded machine, where waiting for a core is counted in the wall time but not here
    server_cpu_ms: float = 0.0


def case_prompts(counter) -> dict:
    """Each case: a function of the repetition number giving its prompt."""
    tail_color = 0x10000 + next(counter)
    last_chain: dict = {}

    def chain(n: int):
        def make(_: int) -> dict:
            prompt = chain_prompt(n, 0x20000 + next(counter))
            if n == 400:
                last_chain["prompt"] = prompt
            return prompt
        return make

    return {
        "one-node": lambda _: {"1": {"class_type": "PreviewAny", "inputs": {"source": next(counter)}}},
        "chain-10": chain(10),
        "chain-100": chain(100),
        "chain-400": chain(400),
        "cachehit-chain-400": lambda _: last_chain.get("prompt") or chain(400)(0),
        "tail-change-400": lambda _: chain_prompt(400, tail_color, offset=next(counter)),
        "wide-100": lambda _: wide_prompt(100, 0x30000 + next(counter), identical=False),
        "wide-100-identical": lambda _: wide_prompt(100, 0x40000 + next(counter), identical=True),
    }


def run_cases(args, port: int, pid: int) -> int:
    import itertools

    import psutil

    server = psutil.Process(pid)

    def cpu() -> float:
        times = server.cpu_times()
        return times.user + times.system

    counter = itertools.count(1)
    makers = case_prompts(counter)
    wanted = args.case or list(makers)
    unknown = [c for c in wanted if c not in makers]
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(makers)}")
    client = CASE_CLIENTS[args.client](port)
    figures: list[CaseFigure] = []
    load_before = load_average()
    speed_before = python_loop_ms()
    failures = []
    try:
        for case in wanted:
            make = makers[case]
            times, executed, cached, nodes = [], 0, 0, 0
            cpu_start = 0.0
            for rep in range(args.warmups + args.repeats):
                prompt = make(rep)
                if rep == args.warmups:
                    cpu_start = cpu()
                ms, executed, cached, ok = client.run(prompt)
                if not ok:
                    failures.append(f"{case}: a run did not succeed")
                if rep >= args.warmups:
                    times.append(ms)
                nodes = len(prompt)
            cpu_ms = (cpu() - cpu_start) * 1000 / len(times)
            figures.append(CaseFigure(case, nodes, executed, cached, statistics.median(times),
                                      percentile(times, 90), min(times), len(times), cpu_ms))
    finally:
        client.close()
    load_after = load_average()
    speed_after = python_loop_ms()
    print(f"server cases ({args.client} client; POST → executing null, ms; medians of {args.repeats} after "
          f"{args.warmups} warm-ups; "
          f"load average before {load_before}, after {load_after}; machine speed, a 10⁶-step Python loop: "
          f"{speed_before:.1f} ms before, {speed_after:.1f} ms after)")
    print(f"{'case':22} {'nodes':>6} {'executed':>9} {'cached':>7} {'median':>8} {'p90':>8} {'min':>8} "
          f"{'server CPU':>11}")
    for f in figures:
        print(f"{f.case:22} {f.nodes:6} {f.executed:9} {f.cached:7} {f.median_ms:8.2f} {f.p90_ms:8.2f} "
              f"{f.min_ms:8.2f} {f.server_cpu_ms:11.2f}")
    if args.json:
        args.json.write_text(json.dumps({"client": args.client, "load_before": load_before, "load_after": load_after,
                                         "python_loop_ms_before": speed_before, "python_loop_ms_after": speed_after,
                                         "figures": [asdict(f) for f in figures]}, indent=1))
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


# -- soak --------------------------------------------------------------------------------------------

IMAGE_OPS = (("ImageInvert", {}), ("ImageFlip", {"flip_method": "x-axis: vertically"}),
             ("ImageAddNoise", {"strength": 0.1}))


def image_bytes(size: int) -> int:
    return size * size * 3 * 4


def soak_prompt(rng, index: int, history: list) -> tuple[dict, int]:
    """A varied prompt and its working set (bytes of the images it holds while it runs)."""
    kind = rng.choices(("chain", "wide", "identical", "tiny", "repeat"), (35, 25, 10, 15, 15))[0]
    if kind == "repeat" and history:
        return rng.choice(history[-50:])
    if kind in ("chain", "repeat"):
        size, length = rng.choice((64, 128, 256, 512, 768)), rng.randint(5, 60)
        prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                               "color": rng.randrange(1 << 24)}}}
        for i in range(1, length):
            name, inputs = rng.choice(IMAGE_OPS)
            inputs = dict(inputs, image=[str(i - 1), 0])
            if name == "ImageAddNoise":
                inputs["seed"] = rng.randrange(1000)
            prompt[str(i)] = {"class_type": name, "inputs": inputs}
        if rng.random() < 0.3:
            prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": [str(length - 1), 0]}}
        else:
            prompt["size"] = {"class_type": "GetImageSize", "inputs": {"image": [str(length - 1), 0]}}
            prompt["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["size", 0]}}
        return prompt, length * image_bytes(size)
    if kind in ("wide", "identical"):
        size, branches = rng.choice((64, 128, 256)), rng.randint(2, 30)
        prompt = {"src": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                                 "color": rng.randrange(1 << 24)}}}
        for i in range(branches):
            seed = 7 if kind == "identical" else rng.randrange(1 << 20)
            prompt[f"n{i}"] = {"class_type": "ImageAddNoise", "inputs": {"image": ["src", 0], "seed": seed,
                                                                         "strength": 0.2}}
            prompt[f"i{i}"] = {"class_type": "ImageInvert", "inputs": {"image": [f"n{i}", 0]}}
            prompt[f"p{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"i{i}", 0]}}
        return prompt, (1 + 2 * branches) * image_bytes(size)
    return {"1": {"class_type": "PreviewAny", "inputs": {"source": f"soak {index} {rng.random()}"}}}, 0


def warm_up(port: int) -> None:
    """Run each node type of the soak once on an 8 px image, and wait for it."""
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}}}
    for i, (name, inputs) in enumerate(IMAGE_OPS, start=1):
        prompt[str(i)] = {"class_type": name, "inputs": dict(inputs, image=[str(i - 1), 0],
                                                               **({"seed": 1} if name == "ImageAddNoise" else {}))}
    last = str(len(IMAGE_OPS))
    prompt["p"] = {"class_type": "PreviewImage", "inputs": {"images": [last, 0]}}
    prompt["s"] = {"class_type": "GetImageSize", "inputs": {"image": [last, 0]}}
    prompt["a"] = {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}
    prompt_id = post(port, "/prompt", {"prompt": prompt})["prompt_id"]
    deadline = time.monotonic() + 120
    while prompt_id not in get(port, f"/history/{prompt_id}"):
        if time.monotonic() > deadline:
            raise SystemExit("the warm-up prompt did not finish")
        time.sleep(0.05)


class Sampler(threading.Thread):
    """Samples the server's RSS and the temp folder's file count every second."""

    def __init__(self, pid: int, temp: Path) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.temp = temp
        self.rss: list[tuple[float, int]] = []
        self.temp_files: list[int] = []
        self.stop = threading.Event()

    def sample(self) -> int:
        rss = self.process.memory_info().rss
        self.rss.append((time.monotonic(), rss))
        try:
            self.temp_files.append(sum(1 for _ in self.temp.iterdir()))
        except FileNotFoundError:
            self.temp_files.append(0)
        return rss

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()


def run_soak(args, port: int, tmp: Path, pid: int) -> int:
    import random

    rng = random.Random(args.seed)
    sampler = Sampler(pid, tmp / "out" / "temp")
    warm_up(port)  # the libraries each node type loads on first use belong to the baseline
    time.sleep(1.0)
    baseline = sampler.sample()
    sampler.start()
    client_id = uuid.uuid4().hex
    http_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    history: list = []
    largest = 0
    in_flight: set[str] = set()
    done = failed = 0
    rss_at_200 = None
    start = time.monotonic()
    with connect(f"ws://127.0.0.1:{port}/ws?clientId={client_id}", open_timeout=30, max_size=None) as ws:
        submitted = 0
        while done < args.soak_prompts:
            while submitted < args.soak_prompts and len(in_flight) < 4:
                prompt, working_set = soak_prompt(rng, submitted, history)
                history.append((prompt, working_set))
                largest = max(largest, working_set)
                http_conn.request("POST", "/prompt", json.dumps({"prompt": prompt, "client_id": client_id}),
                                  {"Content-Type": "application/json"})
                response = http_conn.getresponse()
                reply = json.loads(response.read())
                if response.status != 200:
                    raise SystemExit(f"prompt {submitted} refused: {reply}")
                in_flight.add(reply["prompt_id"])
                submitted += 1
            message = ws.recv(timeout=300)
            if isinstance(message, bytes):
                continue
            if message.startswith('{"type":"execution_error"'):
                failed += 1
            elif message.startswith('{"type":"executing"') and '"node":null' in message:
                prompt_id = json.loads(message)["data"]["prompt_id"]
                if prompt_id in in_flight:
                    in_flight.discard(prompt_id)
                    done += 1
                    if done == 200:
                        rss_at_200 = sampler.sample()
                    if done % 250 == 0:
                        print(f"  {done} prompts, RSS {sampler.rss[-1][1] / 2**20:.0f} MiB, "
                              f"temp files {sampler.temp_files[-1]}, load {load_average()}", flush=True)
    seconds = time.monotonic() - start
    time.sleep(2.0)
    end = sampler.sample()
    sampler.stop.set()
    http_conn.close()
    history_ok = get(port, "/history?max_items=10000")
    statuses = [entry["status"]["status_str"] for entry in history_ok.values()]
    budget = int(args.cache_ram * 2**30)
    peak = max(rss for _, rss in sampler.rss)
    bound = baseline + budget + largest
    mib = 2**20
    print(f"soak: {args.soak_prompts} prompts in {seconds:.0f} s ({args.soak_prompts / seconds:.1f}/s), "
          f"cache budget {budget / mib:.0f} MiB, largest job ~{largest / mib:.0f} MiB, load {load_average()}")
    print(f"  RSS MiB: start {baseline / mib:.0f}, after 200 prompts {rss_at_200 / mib:.0f}, peak {peak / mib:.0f}, "
          f"end {end / mib:.0f}; bound (start + budget + largest job) {bound / mib:.0f}")
    print(f"  temp folder files: max {max(sampler.temp_files)}, end {sampler.temp_files[-1]}; "
          f"history {len(statuses)} entries (the warm-up's included), {statuses.count('success')} success, "
          f"{failed} execution errors")
    failures = []
    if peak > bound:
        failures.append(f"peak RSS {peak / mib:.0f} MiB above the bound {bound / mib:.0f} MiB")
    if rss_at_200 and abs(end - rss_at_200) > 0.1 * rss_at_200:
        failures.append(f"end RSS {end / mib:.0f} MiB not within 10% of {rss_at_200 / mib:.0f} MiB (after 200)")
    if failed or statuses.count("success") != args.soak_prompts + 1:  # the warm-up prompt too
        failures.append(f"{failed} failed, {statuses.count('success')} of {args.soak_prompts + 1} successful")
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "after_200": rss_at_200, "peak": peak, "end": end,
                                         "bound": bound, "budget": budget, "largest_job": largest,
                                         "rss": sampler.rss, "temp_files": sampler.temp_files,
                                         "seconds": seconds}, indent=1))
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
