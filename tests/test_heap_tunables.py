"""The server's heap tunables (nodegraph/heap.py): huge pages for glibc's heap, set by re-executing
the process once with GLIBC_TUNABLES."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from nodegraph import heap
from nodegraph.heap import HEAP_TUNABLES, tuned_environment


def test_the_tunables_are_added_after_the_users_own():
    env = tuned_environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert env is not None and env["PATH"] == "/bin"
    assert env["GLIBC_TUNABLES"] == ":".join(("glibc.pthread.rseq=0", *HEAP_TUNABLES))
    assert env["NODEGRAPH_GLIBC_TUNABLES_BEFORE"] == "glibc.pthread.rseq=0"
    assert tuned_environment({})["GLIBC_TUNABLES"] == ":".join(HEAP_TUNABLES)
    assert "glibc.malloc.hugetlb=1" in HEAP_TUNABLES and "glibc.malloc.arena_max=1" in HEAP_TUNABLES


@pytest.mark.parametrize("environ", [
    {"NODEGRAPH_HEAP_TUNABLES": "0"},  # turned off
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},  # the user chose otherwise
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"},
    {"GLIBC_TUNABLES": ":".join(HEAP_TUNABLES)},  # the re-executed process: no second execution
])
def test_nothing_to_do(environ):
    assert tuned_environment(environ) is None


# whether the process was executed with GLIBC_TUNABLES (/proc/self/environ; glibc cuts the text there
# while parsing it, so only its presence is compared), and what its children get (os.environ)
CHILD = ("import os, sys; from nodegraph.heap import exec_with_heap_tunables; print('start', flush=True); "
         "exec_with_heap_tunables(); "
         "seen = [e.decode() for e in open('/proc/self/environ', 'rb').read().split(bytes(1)) "
         "if e.startswith(b'GLIBC_TUNABLES=')]; "
         "print('tunables', bool(seen), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def _child(extra_env: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "NODEGRAPH_HEAP_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", CHILD, "--flag", "x"], env={**env, **extra_env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not heap._thp_usable(),
                    reason="needs Linux, glibc and transparent huge pages")
def test_the_process_runs_again_once_with_the_tunables_and_its_arguments():
    assert _child({}) == ["start", "start", "tunables True None ['--flag', 'x']"]
    assert _child({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) == [
        "start", "start", "tunables True glibc.pthread.rseq=0 ['--flag', 'x']"]
    assert _child({"NODEGRAPH_HEAP_TUNABLES": "0"}) == ["start", "tunables False None ['--flag', 'x']"]



# a job's kept results (here 256 tensors of 48 KiB, 12 MiB) in fresh heap memory, with or without
# prefault_heap first; prints the minor page faults the allocations took
FAULTS = ("import resource, sys, torch; from nodegraph.heap import prefault_heap, started_with_trim_threshold; "
          "x = torch.rand(1, 64, 64, 3); torch.rsub(x, 1.0); "
          "touched = prefault_heap(16 << 20) if sys.argv[1] == 'reserve' else 0; "
          "start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
          "kept = [torch.rsub(x, 1.0) for _ in range(256)]; "
          "print(started_with_trim_threshold(), touched, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)")


def _faults(mode: str, tunables: str | None) -> tuple[bool, int, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "NODEGRAPH_HEAP_TUNABLES")}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    kept_flag, touched, faults = done.stdout.split()
    return kept_flag == "True", int(touched), int(faults)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="needs Linux and glibc")
def test_a_prefaulted_heap_top_takes_the_next_results_without_page_faults():
    # 4 KiB pages (no huge pages here), so every fresh page of the 12 MiB is a fault of its own
    tuned = "glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=33554432"
    flag, touched, fresh = _faults("plain", tuned)
    assert flag and touched == 0 and fresh > 2000
    flag, touched, reserved = _faults("reserve", tuned)
    assert flag and touched >= 16 << 20
    assert reserved < fresh // 10, (reserved, fresh)
    assert _faults("plain", None)[0] is False  # glibc's defaults: the runner does not prefault
    assert _faults("plain", "glibc.malloc.arena_max=1")[0] is False


def test_prefault_heap_stops_when_asked_and_skips_small_amounts():
    import threading

    stop = threading.Event()
    stop.set()
    assert heap.prefault_heap(8 << 20, stop) == 0
    assert heap.prefault_heap(heap.RESERVE_MIN - 1) == 0
    assert heap.RESERVE_LIMIT <= heap.prefault_heap(1 << 30) < heap.RESERVE_LIMIT + (1 << 20)
