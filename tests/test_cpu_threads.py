"""nodegraph.cpu_threads: one intra-op thread while small CPU work runs, the count restored after, and
other threads unaffected."""

from __future__ import annotations

import threading

import torch

from nodegraph.cpu_threads import small_work_threads


def test_small_cpu_work_runs_on_one_thread_and_restores():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with small_work_threads("cpu", 1000, limit=1000):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with small_work_threads("cpu", 1001, limit=1000):  # large work keeps every thread
            assert torch.get_num_threads() == 2
        with small_work_threads("cuda", 10, limit=1000):  # other devices are not touched
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_another_thread_keeps_its_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = {}
    try:
        def worker():
            torch.set_num_threads(2)
            with small_work_threads("cpu", 1):
                seen["inside"] = torch.get_num_threads()
            seen["after"] = torch.get_num_threads()

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert seen["inside"] == 1 and seen["after"] == 2
        assert torch.get_num_threads() == 2  # the main thread's count never changed
    finally:
        torch.set_num_threads(before)
