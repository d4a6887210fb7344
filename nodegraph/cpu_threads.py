"""One CPU thread for small tensor work.

On the CPU torch spreads every convolution and matrix product over its intra-op threads. For a tiny
model — the built-in shapes generator's UNet runs on 16×16 latents with 32 channels — each op is
microseconds of work, and starting and joining the threads costs more than it saves: on this project's
2-core machine 20 KSampler steps took 1.02 s with 2 threads and 0.46 s with 1 (``bench/RESULTS.md``).
:func:`small_work_threads` runs such work on one thread and restores the count afterwards. torch's
intra-op thread count (OpenMP's) belongs to the calling thread, so other engine workers are unaffected.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: Work whose widest full-resolution activation has at most this many elements counts as small.
SMALL_WORK_ELEMENTS = 65_536


def is_small_work(device: str, elements: int, limit: int = SMALL_WORK_ELEMENTS) -> bool:
    return str(device).startswith("cpu") and elements <= limit


@contextmanager
def small_work_threads(device: str, elements: int, limit: int = SMALL_WORK_ELEMENTS) -> Iterator[None]:
    """One intra-op thread in the calling thread while small CPU work runs; else no change."""
    if not is_small_work(device, elements, limit):
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
