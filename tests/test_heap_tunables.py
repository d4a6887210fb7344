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

