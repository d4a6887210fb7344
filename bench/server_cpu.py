"""Where the server's CPU goes per prompt — figures that hold on a machine too busy for wall-clock medians.

    python bench/server_cpu.py threads [--tree DIR] [--repeats 30] [--case chain-400 ...]
    python bench/server_cpu.py pair --base DIR [--repeats 30] [--case chain-400 ...]
    python bench/server_cpu.py engine [--tree DIR] [--repeats 30] [--case chain-400 ...]

``threads``: the server runs in this process (``create_app`` on a free port, ``gc.freeze`` and the
collector's threshold as ``nodegraph serve`` sets them), on the ``nodegraph`` package of ``--tree``
when given (e.g. a ``git archive`` of an older commit); the client of ``bench/server.py cases`` runs in
a subprocess and sends each case's prompts (same shapes: ``chain-400`` is the issue's 403-node chain).
Over the timed repetitions it prints, per prompt: the wall time (POST → ``executing`` null), the CPU of
each server thread (``/proc/self/task/*/schedstat``, nanoseconds; user/system from ``stat`` ticks)
with its minor page faults, the CPU spent inside the main functions of the path (``time.thread_time``
around each call: POST handling, validation or the plan memo, the job store, the engine, the
reporter, the WebSocket hub; the wrapper adds about a microsecond per call; ``--wall``: the wall time
inside them instead, waits included) and the garbage
collector's collections and time (``gc.callbacks``). Functions the tree lacks are left out.

``pair``: two ``nodegraph serve`` processes, ``--base DIR``'s tree and this one; every prompt goes to
both, one after the other (alternating which goes first), so that both see the same machine; prints the
median CPU (all threads of the process, including what runs after the prompt's end) and wall time
of each. This is the comparison to trust on a loaded machine.

``threads`` and ``engine`` first re-execute this process with the glibc heap tunables that ``nodegraph
serve`` starts with (huge pages, one arena: ``nodegraph/heap.py``) unless ``--plain-heap`` is given
or ``GLIBC_TUNABLES`` already sets them.

``engine``: the engine alone on the same prompts, built as the server builds it (its registry, cache
budget and threads): ``Engine.validate`` then ``Engine.execute`` in this process, no reporter, no queue;
median CPU (``time.process_time``, all threads) and wall per prompt, with the minor page faults.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CASES = ["one-node", "chain-400", "cachehit-chain-400", "tail-change-400"]

#: ``module:qualified name`` of the functions timed in ``threads`` mode
TIMED = ("nodegraph.server.app:parse_json", "nodegraph_nodes.image.operations:ImageInvert.execute", "nodegraph.queue.base:RunnerBase._record",
         "nodegraph.queue.store:JobStore.finish", "nodegraph.queue.local:LocalRunner._run", "nodegraph.server.app:Api.accept_prompt",
         "nodegraph.executor:Engine.validate", "nodegraph.plan_memo:PlanMemo.plan",
         "nodegraph.queue.store:JobStore.enqueue", "nodegraph.queue.store:JobStore.claim_next",
         "nodegraph.executor:compute_signatures", "nodegraph.executor:Engine.execute",
         "nodegraph.queue.reporter:RunReporter.__call__", "nodegraph.server.ws:WebSocketHub.post",
         "nodegraph.server.ws:WebSocketHub._deliver_pending", "nodegraph.queue.base:RunnerBase.finish",
         "nodegraph.heap:release_free_memory")

CLIENT = r'''
import itertools, statistics, sys
sys.path.insert(0, sys.argv[1])
from server import CaseClient, case_prompts
port, repeats, warmups = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
makers = case_prompts(itertools.count(1))
client = CaseClient(port)
for case in sys.argv[5:]:
    make = makers[case]
    for rep in range(warmups):
        client.run(make(rep))
    print("start", case, flush=True); sys.stdin.readline()
    times = []
    for rep in range(repeats):
        ms, executed, cached, ok = client.run(make(rep))
        assert ok, case
        times.append(ms)
    print("stop", case, statistics.median(times), executed, cached, flush=True); sys.stdin.readline()
client.close()
print("done", flush=True)
'''


def thread_cpu() -> dict[int, tuple[int, int, int, int]]:
    """Per thread of this process: CPU ns, minor faults, user ticks, system ticks."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(open(f"/proc/self/task/{tid}/schedstat").read().split()[0])
            stat = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[int(tid)] = (ns, int(stat[7]), int(stat[11]), int(stat[12]))
        except OSError:
            pass
    return out


class Timers:
    """CPU time (``thread_time``) inside the :data:`TIMED` functions, wrapped in place; with
    ``clock=time.perf_counter`` the wall time instead (waits for locks, other threads and the GIL)."""

    def __init__(self, clock=time.thread_time) -> None:
        self.spent: dict[str, list] = {}
        self.clock = clock

    def install(self, names=TIMED) -> None:
        import importlib

        for item in names:
            module_name, qualified = item.split(":")
            try:
                owner = importlib.import_module(module_name)
                parts = qualified.split(".")
                for part in parts[:-1]:
                    owner = getattr(owner, part)
                original = getattr(owner, parts[-1])
            except (ImportError, AttributeError):
                continue
            record = self.spent[item] = [0, 0.0]

            def timed(*args, __original=original, __record=record, __clock=self.clock, **kwargs):
                start = __clock()
                try:
                    return __original(*args, **kwargs)
                finally:
                    __record[0] += 1
                    __record[1] += __clock() - start

            setattr(owner, parts[-1], timed)

    def reset(self) -> None:
        for record in self.spent.values():
            record[:] = [0, 0.0]


class GcStats:
    def __init__(self) -> None:
        self.spent: dict[int, list] = {}
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict) -> None:
        tid = threading.get_native_id()
        if phase == "start":
            self._started[tid] = time.thread_time()
        else:
            record = self.spent.setdefault(info["generation"], [0, 0.0])
            record[0] += 1
            record[1] += time.thread_time() - self._started.get(tid, time.thread_time())


async def run_threads(args) -> None:
    import gc

    from aiohttp import web

    from nodegraph.context import Paths
    from nodegraph.server import freeze_startup_objects
    from nodegraph.server.app import create_app
    from nodegraph.server.config import ServerConfig

    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))  # as serve_forever
    timers, gc_stats = Timers(time.perf_counter if args.wall else time.thread_time), GcStats()
    timers.install()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="server_cpu_"))
    config = ServerConfig(port=0, paths=Paths(output_dir=tmp / "out", input_dir=tmp / "in",
                                              models_dir=tmp / "models", temp_dir=tmp / "out" / "temp"),
                          data_dir=tmp / "data", device="cpu")
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    freeze_startup_objects()
    gc.callbacks.append(gc_stats)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(ROOT / "bench"), str(port), str(args.repeats), str(args.warmups),
        *args.case, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    print(f"server CPU per prompt (ms), tree {args.tree or ROOT}, {args.repeats} prompts per case after "
          f"{args.warmups} warm-ups, load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    before = {}
    try:
        while True:
            words = (await client.stdout.readline()).decode().split()
            if not words or words[0] == "done":
                break
            if words[0] == "start":
                timers.reset()
                gc_stats.spent.clear()
                before = thread_cpu()
            elif words[0] == "stop":
                report(words, before, thread_cpu(), timers, gc_stats, args.repeats)
            client.stdin.write(b"\n")
            await client.stdin.drain()
        await client.wait()
    finally:
        gc.callbacks.remove(gc_stats)
        await runner.cleanup()


def report(words, before, after, timers: Timers, gc_stats: GcStats, n: int) -> None:
    names = {t.native_id: t.name for t in threading.enumerate()}
    names[os.getpid()] = "event loop (main)"
    per: dict[str, list[float]] = {}
    for tid, now in after.items():
        then = before.get(tid, (0, 0, 0, 0))
        delta = [(now[0] - then[0]) / 1e6 / n, (now[1] - then[1]) / n, (now[2] - then[2]) * 10 / n,
                 (now[3] - then[3]) * 10 / n]
        if delta[0] > 0.02:
            totals = per.setdefault(names.get(tid, f"thread {tid}"), [0.0] * 4)
            for i, value in enumerate(delta):
                totals[i] += value
    case, wall, executed, cached = words[1], float(words[2]), words[3], words[4]
    print(f"{case}: median wall {wall:.2f} ms, server CPU {sum(v[0] for v in per.values()):.2f} ms "
          f"({executed} executed, {cached} cached)")
    for name, (ms, faults, user, system) in sorted(per.items(), key=lambda kv: -kv[1][0]):
        print(f"    thread {name:30} {ms:7.2f}   user {user:5.2f} sys {system:5.2f}   {faults:6.0f} minor faults")
    for item, (calls, seconds) in timers.spent.items():
        if calls:
            print(f"    in {item.split(':')[1]:32} {seconds * 1000 / n:7.3f}   ({calls / n:.1f} calls)")
    for generation, (count, seconds) in sorted(gc_stats.spent.items()):
        print(f"    gc generation {generation:<18} {seconds * 1000 / n:7.3f}   ({count / n:.2f} collections)")


def proc_cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return total


def run_pair(args) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import server as bench

    servers = {}
    try:
        for name, tree in (("base", args.base), ("this", None)):
            tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"server_cpu_{name}_"))
            proc, port = bench.start_server(tmp, [], [str(tree)] if tree else [])
            servers[name] = (proc, bench.CaseClient(port))
        makers = bench.case_prompts(itertools.count(1))
        print(f"base {args.base} vs this tree; median server CPU (all threads) and wall per prompt, ms; "
              f"{args.repeats} prompts per case; load average before {bench.load_average()}")
        for case in args.case:
            cpu = {name: [] for name in servers}
            wall = {name: [] for name in servers}
            for rep in range(args.warmups + args.repeats):
                prompt = makers[case](rep)
                for name in (list(servers) if rep % 2 == 0 else list(reversed(servers))):
                    proc, client = servers[name]
                    start = proc_cpu_ns(proc.pid)
                    ms, _, _, ok = client.run(prompt)
                    time.sleep(0.02)  # the runner's work after the prompt's end falls in the window
                    if not ok:
                        raise SystemExit(f"{case}: a run on {name} did not succeed")
                    if rep >= args.warmups:
                        cpu[name].append((proc_cpu_ns(proc.pid) - start) / 1e6)
                        wall[name].append(ms)
            ratio = statistics.median(this / base for base, this in zip(cpu["base"], cpu["this"]))
            wall_ratio = statistics.median(this / base for base, this in zip(wall["base"], wall["this"]))
            print(f"{case:20} " + "   ".join(f"{name}: CPU {statistics.median(cpu[name]):7.2f} wall "
                                              f"{statistics.median(wall[name]):7.2f}" for name in servers)
                  + f"   this/base, median of the pairs: CPU {ratio:.2f}, wall {wall_ratio:.2f}")
        print(f"load average after {bench.load_average()}")
    finally:
        for proc, client in servers.values():
            client.close()
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(30)


def run_engine(args) -> None:
    import gc
    import resource

    sys.path.insert(0, str(ROOT / "bench"))
    import server as bench

    from nodegraph.context import Paths
    from nodegraph.server.app import build_engine
    from nodegraph.server.config import ServerConfig

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="server_cpu_engine_"))
    engine = build_engine(ServerConfig(paths=Paths(output_dir=tmp / "out", input_dir=tmp / "in",
                                                   models_dir=tmp / "models", temp_dir=tmp / "out" / "temp"),
                                       device="cpu"))
    gc.collect()
    gc.freeze()
    makers = bench.case_prompts(itertools.count(1))
    print(f"engine alone (validate + execute), tree {args.tree or ROOT}; median per prompt of {args.repeats}; "
          f"load average {bench.load_average()}")
    for case in args.case:
        cpu, wall, faults = [], [], []
        for rep in range(args.warmups + args.repeats):
            prompt = makers[case](rep)
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            start_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            result = engine.execute(engine.validate(prompt, None, {}, partial=True))
            if not result.ok:
                raise SystemExit(f"{case}: the run failed")
            if rep >= args.warmups:
                cpu.append((time.process_time() - start_cpu) * 1000)
                wall.append((time.perf_counter() - start_wall) * 1000)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults)
        print(f"{case:20} CPU {statistics.median(cpu):7.2f}  wall {statistics.median(wall):7.2f}  "
              f"minor faults {statistics.median(faults):6.0f}")
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("threads", "pair", "engine"))
    parser.add_argument("--case", action="append", help="bench/server.py's case names (repeatable)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--tree", type=pathlib.Path, help="threads/engine: the source tree whose nodegraph to run")
    parser.add_argument("--base", type=pathlib.Path, help="pair: the source tree to compare with")
    parser.add_argument("--wall", action="store_true",
                        help="threads: the wall time inside the timed functions, not their thread's CPU")
    parser.add_argument("--plain-heap", action="store_true",
                        help="threads/engine: glibc's default heap, not the huge-page tunables that "
                             "`nodegraph serve` starts with (nodegraph/heap.py)")
    args = parser.parse_args()
    args.case = args.case or DEFAULT_CASES
    if args.mode == "pair":
        if args.base is None:
            parser.error("pair needs --base DIR")
        run_pair(args)
        return
    if not args.plain_heap:  # the heap as `nodegraph serve` sets it up (huge pages: nodegraph/heap.py)
        import importlib.util

        # loaded by file, not as nodegraph.heap: the --tree's nodegraph package must be the one imported
        spec = importlib.util.spec_from_file_location("_nodegraph_heap", ROOT / "nodegraph" / "heap.py")
        heap = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(heap)
        heap.exec_with_heap_tunables()
    sys.path.insert(0, str(args.tree or ROOT))
    if not args.plain_heap and heap._reexecuted:  # tell the tree's own heap module, as `serve`'s does
        import nodegraph.heap  # (the job runner then prefaults / populates the heap as under `serve`)

        nodegraph.heap._reexecuted = True
    if args.mode == "engine":
        run_engine(args)
    else:
        asyncio.run(run_threads(args))


if __name__ == "__main__":
    main()
