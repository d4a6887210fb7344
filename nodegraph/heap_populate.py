"""Populating the C heap's fresh memory in the background, while a job runs on another thread.

A node result the output cache keeps lives in fresh heap pages, and the kernel zeroes each page at
its first touch: in the job's own thread, in the middle of its run (a 403-node chain of 64 px images
keeps ~20 MiB a prompt; zeroing it is a quarter of the run's CPU on this project's machine).
:func:`nodegraph.heap.prefault_heap` does that touching while the runner waits for the next job, but a
client that sends its next prompt as soon as the last one ends leaves it no time.

This module moves the zeroing to a second core instead. ``nodegraph serve`` starts with glibc's heap
growing by :data:`~nodegraph.heap.RESERVE_LIMIT` more than it needs each time it grows
(``glibc.malloc.top_pad``, :data:`~nodegraph.heap.HEAP_TUNABLES`); while a job runs,
:class:`HeapPopulator`'s thread looks at the program break every :attr:`HeapPopulator.INTERVAL` seconds
and, when the heap has grown past what it populated before, has the kernel populate the new part with
``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+): pages are mapped writable and zeroed as by a write, and
what they hold is never changed, so memory the job has already handed out is safe, and a page the job
touches first is simply skipped. The call lets go of the GIL for its whole length. The heap's middle
(memory :func:`~nodegraph.heap.release_free_memory` handed back) is never populated again: only what
lies above the highest address populated so far. Where ``madvise`` refuses (older kernels) or there is
no ``[heap]`` mapping, :attr:`HeapPopulator.supported` turns ``False`` and the runner keeps the idle-time
prefault.
"""

from __future__ import annotations

import ctypes
import threading

from . import heap

MADV_POPULATE_WRITE = 23
#: populated ranges start on this boundary (a huge page: the kernel maps 2 MiB per fault there)
_ALIGN = 2 << 20


def heap_start() -> int | None:
    """The start address of this process's ``[heap]`` mapping (``/proc/self/maps``), if it has one."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[heap]"):
                    return int(line.split("-", 1)[0], 16)
    except (OSError, ValueError):
        return None
    return None


class HeapPopulator:
    """Populates the heap's newly grown top on a thread of its own while jobs run (module docstring).

    ``job_started()`` / ``job_finished()`` bracket each job; ``close()`` stops the thread."""

    #: how often (seconds) the break is looked at while a job runs and its heap grows; each look that
    #: finds no growth doubles the wait, up to :attr:`MAX_INTERVAL` (a long model job costs nothing).
    #: Each look takes the GIL from the job's thread; the heap grows a whole reserve at a time, so a look
    #: every 8 ms keeps ahead of a 400-node chain (2 ms: the job's thread lost ~3 % more CPU to hand-offs)
    INTERVAL = 0.008
    MAX_INTERVAL = 0.064
    #: the most one look populates (a heap that grew more than this at once is populated from its top)
    LIMIT = 64 << 20

    def __init__(self) -> None:
        self._libc = heap._glibc()
        self._base = heap_start() if self._libc is not None else None
        #: ``None`` until the first ``madvise`` said whether the kernel can; then ``True`` / ``False``
        self.supported: bool | None = None if self._libc is not None and self._base is not None else False
        #: the highest heap address populated (or seen in use) so far
        self._high = 0
        self._running = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        #: bytes populated so far (for tests and benchmarks)
        self.populated = 0
        if self.supported is not False:  # the top glibc keeps free (``top_pad``) is fresh too
            self._high = max(self._base, self._break() - heap.RESERVE_LIMIT)

    def _break(self) -> int:
        return int(self._libc.sbrk(0) or 0)

    def job_started(self) -> None:
        if self.supported is False or self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="nodegraph-heap", daemon=True)
            self._thread.start()
        self._running.set()
        self._wake.set()

    def job_finished(self) -> None:
        self._running.clear()
        if self.supported is not False:
            self._wake.set()  # one more look: what the job's last results grew is ready for the next job

    def close(self) -> None:
        self._closed = True
        self._running.clear()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def populate_new(self) -> int:
        """Populate the heap between the highest address populated so far and the break; returns the
        bytes asked for (0 when the heap did not grow, or populating is not supported)."""
        if self.supported is False:
            return 0
        end = self._break()
        if end <= self._high:
            self._high = end  # the heap was trimmed: what it grows into next is new again
            return 0
        start = max(max(self._high, end - self.LIMIT) & ~(_ALIGN - 1), self._base)
        if self._libc.madvise(ctypes.c_void_p(start), end - start, MADV_POPULATE_WRITE) != 0:
            if self.supported is None:  # the kernel cannot (EINVAL before 5.14): never ask again
                self.supported = False
            self._high = end  # a range that changed under us (trimmed meanwhile): not asked again
            return 0
        self.supported = True
        self._high = end
        self.populated += end - start
        return end - start

    def _main(self) -> None:
        interval = self.INTERVAL
        while not self._closed:
            woken = self._wake.wait(interval if self._running.is_set() else None)
            self._wake.clear()
            if self._closed:
                return
            grew = self.populate_new() > 0
            interval = self.INTERVAL if grew or woken else min(interval * 2, self.MAX_INTERVAL)
