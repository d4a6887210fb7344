"""The heap populator (nodegraph/heap_populate.py): the heap's fresh top is populated off the job's thread,
so that the job's kept results take no page faults, and nothing the heap holds is changed."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest

from nodegraph.heap import RESERVE_LIMIT

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="needs Linux and glibc")

# 4 KiB pages (no huge pages here), so every fresh page is a fault of its own
TUNABLES = f"glibc.malloc.arena_max=1:glibc.malloc.trim_threshold={32 << 20}:glibc.malloc.top_pad={RESERVE_LIMIT}"

# the heap's top trimmed, then one result: glibc grows the heap by top_pad, all of it fresh; then 256
# results (12 MiB) are kept, with or without the populator's pass first. Prints what the pass asked for,
# the faults of the 256 allocations, and whether earlier results kept their values through a pass over them
SCRIPT = """
import ctypes, resource, sys, torch
from nodegraph import heap
from nodegraph.heap_populate import HeapPopulator
x = torch.rand(1, 64, 64, 3)
earlier = [torch.rsub(x, float(i)) for i in range(32)]
copies = [t.clone() for t in earlier]
heap._glibc().malloc_trim(0)
first = torch.rsub(x, 1.0)
populator = HeapPopulator()
asked = populator.populate_new() if sys.argv[1] == "populate" else 0
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
kept = [torch.rsub(x, 1.0) for _ in range(256)]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
populator._high = populator._base  # a pass over everything in use: contents must not change
populator.populate_new()
same = all(torch.equal(a, b) for a, b in zip(earlier, copies)) and all(torch.equal(k, kept[0]) for k in kept)
print(populator.supported, asked, faults, same)
"""


def _run(mode: str) -> tuple[str, int, int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "NODEGRAPH_HEAP_TUNABLES")}
    env["GLIBC_TUNABLES"] = TUNABLES
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    supported, asked, faults, same = done.stdout.split()
    return supported, int(asked), int(faults), same


def test_a_populated_top_takes_the_next_results_without_page_faults_and_changes_nothing():
    supported, asked, fresh, same = _run("plain")
    assert same == "True" and asked == 0 and fresh > 2000
    supported, asked, populated, same = _run("populate")
    if supported == "False":
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    assert supported == "True" and asked >= 12 << 20
    assert populated < fresh // 10, (populated, fresh)
    assert same == "True"


def test_the_thread_populates_what_a_job_grew_and_stops_on_close():
    from nodegraph.heap_populate import HeapPopulator

    populator = HeapPopulator()
    if populator.supported is False:
        pytest.skip("no [heap] mapping or no glibc")
    populator.job_started()
    grown = [bytearray(64 << 10) for _ in range(512)]  # 32 MiB from the heap: the break moves up
    populator.job_finished()
    deadline = time.monotonic() + 30
    while populator.populated == 0 and populator.supported is not False and time.monotonic() < deadline:
        time.sleep(0.01)
    if populator.supported is False:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    assert populator.populated > 0
    populator.close()
    assert populator._thread is not None and not populator._thread.is_alive()
    assert len(grown) == 512
