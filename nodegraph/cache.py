"""The output cache: node results keyed by content signature, bounded by bytes.

RAM and VRAM have separate budgets. Least-recently-used entries go first; an entry holding GPU
tensors is first spilled to CPU (moving its bytes from the VRAM to the RAM budget) and only dropped
when RAM is over budget too. An entry larger than the RAM budget is not stored. The byte count of an
entry is estimated by walking its values: tensors and arrays by ``nbytes``, containers recursively,
objects that know their size through ``cache_size() -> (ram_bytes, vram_bytes)``.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

GiB = 1024**3


@dataclass(slots=True)
class CachedResult:
    """A node's outputs (one list per output) and its UI data."""

    outputs: tuple[list, ...]
    ui: dict | None = None
    ram_bytes: int = 0
    vram_bytes: int = 0


@dataclass(frozen=True)
class CacheStats:
    entries: int
    ram_bytes: int
    vram_bytes: int
    ram_budget: int
    vram_budget: int
    hits: int
    misses: int
    evictions: int
    spills: int
    rejected: int

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def measure(value: Any, _seen: set[int] | None = None) -> tuple[int, int]:
    """Estimated ``(ram_bytes, vram_bytes)`` held by a value."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0, 0
    seen.add(id(value))
    if type(value) is torch.Tensor:  # the common case, without slow attribute probing
        nbytes = value.untyped_storage().nbytes()  # a view keeps its whole storage alive
        return (nbytes, 0) if value.device.type == "cpu" else (0, nbytes)
    sizer = getattr(value, "cache_size", None)
    if callable(sizer) and not isinstance(value, type):
        ram, vram = sizer()
        return int(ram), int(vram)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        device = getattr(value, "device", None)
        on_gpu = device is not None and getattr(device, "type", "cpu") not in ("cpu", "meta")
        return (0, nbytes) if on_gpu else (nbytes, 0)
    if isinstance(value, (list, tuple, set, frozenset)):
        ram, vram = sys.getsizeof(value), 0
        for item in value:
            r, v = measure(item, seen)
            ram, vram = ram + r, vram + v
        return ram, vram
    if isinstance(value, dict):
        ram, vram = sys.getsizeof(value), 0
        for key, item in value.items():
            r, v = measure(item, seen)
            ram, vram = ram + r + sys.getsizeof(key), vram + v
        return ram, vram
    return sys.getsizeof(value), 0


def to_cpu(value: Any) -> Any:
    """``value`` with every GPU tensor moved to CPU (containers rebuilt, CPU values kept)."""
    device = getattr(value, "device", None)
    if device is not None and callable(getattr(value, "to", None)):
        return value.to("cpu") if getattr(device, "type", "cpu") != "cpu" else value
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value


class OutputCache:
    """LRU cache of node results with RAM and VRAM byte budgets. Thread-safe."""

    def __init__(self, ram_budget: int = 4 * GiB, vram_budget: int = 2 * GiB) -> None:
        self.ram_budget = int(ram_budget)
        self.vram_budget = int(vram_budget)
        self._entries: OrderedDict[bytes, CachedResult] = OrderedDict()
        self._lock = threading.Lock()
        self._ram = 0
        self._vram = 0
        self._hits = self._misses = self._evictions = self._spills = self._rejected = 0

    def get(self, key: bytes) -> CachedResult | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def put(self, key: bytes, outputs: tuple[list, ...], ui: dict | None = None) -> bool:
        """Store a result; ``False`` when it alone is larger than the budgets allow."""
        ram, vram = measure((outputs, ui))
        if ram > self.ram_budget or (vram > self.vram_budget and ram + vram > self.ram_budget):
            with self._lock:
                self._rejected += 1
            return False
        entry = CachedResult(outputs, ui, ram, vram)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._ram -= old.ram_bytes
                self._vram -= old.vram_bytes
            self._entries[key] = entry
            self._ram += ram
            self._vram += vram
            self._enforce_budgets()
        return True

    def _enforce_budgets(self) -> None:
        if self._vram > self.vram_budget:
            for key in list(self._entries):
                if self._vram <= self.vram_budget:
                    break
                entry = self._entries[key]
                if entry.vram_bytes:
                    self._spill(entry)
        while self._ram > self.ram_budget and self._entries:
            _, entry = self._entries.popitem(last=False)
            self._ram -= entry.ram_bytes
            self._vram -= entry.vram_bytes
            self._evictions += 1

    def _spill(self, entry: CachedResult) -> None:
        entry.outputs = to_cpu(entry.outputs)
        entry.ui = to_cpu(entry.ui)
        self._vram -= entry.vram_bytes
        self._ram += entry.vram_bytes
        entry.ram_bytes += entry.vram_bytes
        entry.vram_bytes = 0
        self._spills += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._ram = self._vram = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[bytes]:
        """The signatures held now (a snapshot; a Ray actor reports them for routing)."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self._ram, self._vram, self.ram_budget,
                              self.vram_budget, self._hits, self._misses, self._evictions,
                              self._spills, self._rejected)
