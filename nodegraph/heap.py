"""Giving the C heap's free memory back to the operating system between jobs.

Tensors of a few MiB are allocated by the C library's ``malloc``; once freed, glibc keeps their pages
for reuse, and with several threads and many sizes the heap fragments so that the process's RSS grows
far past what it holds: 400 varied prompts with a 1 GiB output cache measured 2.4 GiB RSS, against
1.27 GiB with :func:`release_free_memory` after each job (``malloc_trim`` hands every free page back).
The call costs about a millisecond, more on a large fragmented heap, so it is made only when enough
memory sits free. Without glibc (macOS, musl, Windows) it does nothing.

Asking how much sits free (``mallinfo2``) walks the heap's free lists too: one to two milliseconds per
job on a server whose cache holds a few thousand results, more than a small prompt's whole run.
:class:`TrimGate` says when the question is worth asking: only when the resident memory the cache does
not account for has grown by :data:`TRIM_SLACK` since it was last asked (memory can only sit free in
the heap if the process grew, or the cache let go of something), or after :data:`TrimGate.MAX_INTERVAL`.

Fresh memory costs more than the work done in it: a node result the cache keeps lives in pages the
kernel hands over one 4 KiB fault at a time (a 64 px image, 48 KiB: 12 faults; a 403-node chain, ~4,900
faults and a third of the engine's CPU). ``nodegraph serve`` therefore starts the server with glibc's
heap on transparent huge pages (:data:`HEAP_TUNABLES`: ``glibc.malloc.hugetlb=1`` madvises the heap so
that one fault maps 2 MiB, where the kernel's THP mode is ``madvise`` or ``always``;
``glibc.malloc.arena_max=1`` keeps every thread on that heap, since glibc madvises only the main
arena). glibc reads tunables when the process starts, so :func:`exec_with_heap_tunables` re-executes
the process once with them in ``GLIBC_TUNABLES``; nothing happens where they are set already, where
``NODEGRAPH_HEAP_TUNABLES=0``, or without glibc and THP. Even 2 MiB at a time, the kernel zeroes every
fresh page at its first touch; :mod:`nodegraph.heap_populate` has a thread of its own populate the
heap's new top while the job runs (``glibc.malloc.top_pad`` makes the heap grow :data:`RESERVE_LIMIT`
ahead of need), and where the kernel cannot, :func:`prefault_heap` lets the job runner do that touching
while it waits for the next job, for as many bytes as the last job's results took (:data:`RESERVE_LIMIT`
at most).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import threading
import time
from typing import Mapping

#: trim only when at least this much freed memory sits in the heap
TRIM_SLACK = 32 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_libc = None
_loaded = False
_lock = threading.Lock()


def _glibc():
    global _libc, _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                libc.mallinfo2.restype = _MallInfo2
                libc.malloc.argtypes = [ctypes.c_size_t]
                libc.malloc.restype = ctypes.c_void_p
                libc.free.argtypes = [ctypes.c_void_p]
                libc.free.restype = None
                libc.sbrk.argtypes = [ctypes.c_ssize_t]  # the heap populator's (nodegraph.heap_populate)
                libc.sbrk.restype = ctypes.c_void_p
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                libc.madvise.restype = ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):  # not glibc, or older than 2.33 (no mallinfo2)
                _libc = None
    return _libc


def free_heap_bytes() -> int | None:
    """Bytes freed but still held by the C heap (all arenas); ``None`` without glibc."""
    libc = _glibc()
    return None if libc is None else int(libc.mallinfo2().fordblks)


def release_free_memory(slack: int = TRIM_SLACK, keep: int = 0) -> bool:
    """Return the heap's free pages to the OS if more than ``slack`` bytes sit free, keeping ``keep``
    bytes free at the heap's top (ready for the next results); ``True`` if it did."""
    libc = _glibc()
    if libc is None:
        return False
    if libc.mallinfo2().fordblks < slack + keep:
        return False
    libc.malloc_trim(keep)
    return True


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """The process's resident memory (``/proc/self/statm``); ``None`` where there is no such file."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class TrimGate:
    """When a job runner should check the heap for free memory to give back (module docstring).

    ``due(held)`` before the check, ``checked(held)`` after it; ``held``: the bytes the output cache
    holds now."""

    #: check at least this often (seconds) while jobs run, whatever the memory did
    MAX_INTERVAL = 10.0

    def __init__(self, slack: int = TRIM_SLACK) -> None:
        self.slack = slack
        #: resident bytes the cache did not account for, at the last check
        self._loose: int | None = None
        self._at = 0.0

    def due(self, held: int) -> bool:
        rss = resident_bytes()
        if rss is None or self._loose is None or time.monotonic() - self._at >= self.MAX_INTERVAL:
            return True
        return rss - held - self._loose >= self.slack

    def checked(self, held: int) -> None:
        rss = resident_bytes()
        self._loose = None if rss is None else rss - held
        self._at = time.monotonic()


#: the most :func:`prefault_heap` keeps ready (under :data:`TRIM_SLACK`, so glibc does not trim it)
RESERVE_LIMIT = 24 << 20
#: below this, a reserve is not worth its calls
RESERVE_MIN = 1 << 20
#: each piece of a reserve: under glibc's fixed 128 KiB mmap threshold, so it comes from the heap
_RESERVE_PIECE = 96 << 10


def started_with_trim_threshold() -> bool:
    """Whether glibc started this process with a raised ``trim_threshold``: the re-execution of
    :func:`exec_with_heap_tunables` happened, or the user's ``GLIBC_TUNABLES`` sets it. Only then does
    freed memory at the heap's top stay for :func:`prefault_heap` to prepare."""
    return _reexecuted or "glibc.malloc.trim_threshold=" in os.environ.get("GLIBC_TUNABLES", "")


def prefault_heap(nbytes: int, stop: threading.Event | None = None) -> int:
    """Have about ``nbytes`` (at most :data:`RESERVE_LIMIT`) of the heap's top touched and free again.

    A result the output cache keeps lives in fresh pages, and the kernel zeroes each one at its first
    touch, in the middle of the next run (a 403-node chain of 64 px images: ~20 MiB, a tenth of its
    run). Called while the runner waits for work, this touches that much heap in small pieces and frees
    it: the pieces merge back into the heap's top, which glibc keeps (under its trim threshold), and
    the next run's results are carved from pages already there. Stops early when ``stop`` is set (a
    job arrived). Returns the bytes touched. The pieces come from glibc's ``malloc`` and are zeroed by
    ``memset``, both called through ctypes, which lets go of the GIL for each call: a prompt arriving
    meanwhile is parsed and validated without waiting for this."""
    nbytes = min(nbytes, RESERVE_LIMIT)
    libc = _glibc()
    if nbytes < RESERVE_MIN or libc is None:
        return 0
    pieces: list[int] = []
    touched = 0
    try:
        while touched < nbytes and not (stop is not None and stop.is_set()):
            address = libc.malloc(_RESERVE_PIECE)
            if not address:
                break
            pieces.append(address)
            ctypes.memset(address, 0, _RESERVE_PIECE)
            touched += _RESERVE_PIECE
    finally:
        for address in pieces:
            libc.free(address)
    return touched


#: glibc tunables :func:`exec_with_heap_tunables` starts the server with (module docstring)
HEAP_TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.arena_max=1",
                 f"glibc.malloc.trim_threshold={TRIM_SLACK}", f"glibc.malloc.top_pad={RESERVE_LIMIT}")
#: ``0`` turns the re-execution off
TUNABLES_SWITCH = "NODEGRAPH_HEAP_TUNABLES"
#: the user's ``GLIBC_TUNABLES`` (maybe empty) before the re-execution, restored for child processes
_BEFORE = "NODEGRAPH_GLIBC_TUNABLES_BEFORE"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
#: whether :func:`exec_with_heap_tunables` ran in the re-executed process (the tunables are in effect)
_reexecuted = False


def _thp_usable() -> bool:
    """Whether the kernel maps huge pages where a process asks (THP mode ``[always]`` or ``[madvise]``)."""
    try:
        with open(_THP_MODE) as mode:
            text = mode.read()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with :data:`HEAP_TUNABLES` added to ``GLIBC_TUNABLES``, or ``None`` when there is
    nothing to do: turned off (``NODEGRAPH_HEAP_TUNABLES=0``), or either tunable already set (by the
    user, or by the first execution)."""
    if environ.get(TUNABLES_SWITCH, "1") == "0":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current or "glibc.malloc.arena_max" in current:
        return None
    env = dict(environ)
    env[_BEFORE] = current
    env["GLIBC_TUNABLES"] = ":".join(part for part in (current, *HEAP_TUNABLES) if part)
    return env


def exec_with_heap_tunables() -> None:
    """Re-execute this process (same interpreter and command line) with :data:`HEAP_TUNABLES`; returns
    without doing anything where :func:`tuned_environment` says so, off Linux/glibc or without THP.
    Call it first thing in a process's entry point, before any thread starts. In the re-executed
    process it puts the user's ``GLIBC_TUNABLES`` back into ``os.environ``, so that the processes it
    starts (ffmpeg, workers) get glibc's defaults as before."""
    global _reexecuted
    before = os.environ.pop(_BEFORE, None)
    if before is not None:  # the re-executed process: glibc has read the tunables already
        _reexecuted = True
        if before:
            os.environ["GLIBC_TUNABLES"] = before
        else:
            os.environ.pop("GLIBC_TUNABLES", None)
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not _thp_usable():
        return
    env = tuned_environment(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
