"""The output cache alone: LRU order, byte accounting, GPU→CPU spill, stats."""

from __future__ import annotations

import torch

from nodegraph.cache import OutputCache, measure


def test_measure_counts_tensor_bytes_in_containers():
    t = torch.zeros(10, 10)  # 400 bytes
    ram, vram = measure(([t, t], {"samples": torch.zeros(5)}))
    assert ram >= 400 + 20 and vram == 0


def test_lru_eviction_keeps_recent_entries_and_the_budget():
    cache = OutputCache(ram_budget=10_000)
    for i in range(10):
        assert cache.put(bytes([i]), ([bytearray(3000)],))
        cache.get(bytes([0]))  # keep entry 0 hot
        assert cache.stats().ram_bytes <= 10_000
    assert bytes([0]) in cache and bytes([9]) in cache
    assert bytes([1]) not in cache
    stats = cache.stats()
    assert stats.evictions >= 6 and stats.hits == 10


class FakeGpuTensor:
    """Stands in for a CUDA tensor (no GPU here): reports VRAM bytes and moves to CPU."""

    class _Device:
        type = "cuda"

    def __init__(self, n: int) -> None:
        self.n = n
        self.device = self._Device()
        self.nbytes = n * 4

    def to(self, device: str):
        assert device == "cpu"
        return torch.zeros(self.n)


def test_gpu_entries_spill_to_cpu_before_being_dropped():
    cache = OutputCache(ram_budget=1 << 20, vram_budget=10_000)
    cache.put(b"a", ([FakeGpuTensor(2000)],))   # 8000 VRAM bytes
    cache.put(b"b", ([FakeGpuTensor(2000)],))   # over the VRAM budget: "a" spills to CPU
    stats = cache.stats()
    assert stats.spills == 1 and stats.vram_bytes == 8000 and stats.evictions == 0
    spilled = cache.get(b"a").outputs[0][0]
    assert isinstance(spilled, torch.Tensor) and spilled.device.type == "cpu"


def test_clear_empties_everything():
    cache = OutputCache()
    cache.put(b"x", ([1],))
    cache.clear()
    assert len(cache) == 0 and cache.stats().ram_bytes == 0
