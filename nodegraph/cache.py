"""The output cache: node results keyed by content signature, bounded by bytes.

RAM and VRAM have separate budgets. Least-recently-used entries go first; an entry holding GPU
tensors is first spilled to CPU (moving its bytes from the VRAM to the RAM budget) and only dropped
when RAM is over budget too. An entry larger than the RAM budget is not stored.

What an entry holds is counted by :func:`footprint`, which walks its values: a tensor by its whole
storage (a view keeps all of it alive), each storage once however many tensors, outputs or entries
share it (the cache keeps a count per storage, so a node that passes its input through costs nothing
more); arrays and other objects with an integer ``nbytes``; objects that know their size through
``cache_size() -> (ram_bytes, vram_bytes)`` (model handles say 0: the model manager owns them);
containers, strings and numbers by ``sys.getsizeof``; other Python objects (dataclasses, plain
objects) by their size plus what their attributes hold. The budgets' defaults come from the machine
(:func:`default_ram_budget`: a quarter of its RAM, at most 4 GiB).
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

GiB = 1024**3
#: the most the default budgets take, however big the machine
DEFAULT_CAP = 4 * GiB
#: the walk of one value stops counting objects' insides past this many objects (an estimate then)
MAX_OBJECTS = 200_000

#: a tensor storage: (device index, -1 for the CPU; address) → bytes; shared by every tensor viewing it
StorageKey = tuple[int, int]

_getsizeof = sys.getsizeof

def machine_ram() -> int:
    """This machine's RAM in bytes, or the memory limit of the cgroup (container) if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_ram_budget() -> int:
    """A quarter of the machine's RAM, at most 4 GiB."""
    return min(machine_ram() // 4, DEFAULT_CAP)


def default_vram_budget() -> int:
    """A quarter of the first GPU's memory, at most 4 GiB; 2 GiB when there is no CUDA GPU (nothing is
    then kept in VRAM; the figure only matters on another device type)."""
    try:
        if torch.cuda.is_available():
            return min(torch.cuda.get_device_properties(0).total_memory // 4, DEFAULT_CAP)
    except Exception:  # a broken CUDA set-up must not stop the engine
        pass
    return 2 * GiB


@dataclass(slots=True)
class CachedResult:
    """A node's outputs (one list per output) and its UI data.

    ``ram_bytes`` / ``vram_bytes``: what the entry holds on its own (its storages counted in full);
    the cache's totals count a storage shared with other entries once."""

    outputs: tuple[list, ...]
    ui: dict | None = None
    ram_bytes: int = 0
    vram_bytes: int = 0
    #: bytes outside tensor storages (Python objects, arrays), and the storages it holds
    object_ram: int = 0
    object_vram: int = 0
    storages: tuple[StorageKey, ...] = ()


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


@dataclass(slots=True)
class Footprint:
    """What a value holds: bytes of Python objects and arrays (``ram``/``vram``), and its tensor storages
    (each once) with their sizes and whether they are on a GPU."""

    ram: int = 0
    vram: int = 0
    storages: dict[StorageKey, tuple[int, bool]] = field(default_factory=dict)

    def totals(self) -> tuple[int, int]:
        ram, vram = self.ram, self.vram
        for nbytes, on_gpu in self.storages.values():
            if on_gpu:
                vram += nbytes
            else:
                ram += nbytes
        return ram, vram


_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None), memoryview, range)
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, type(threading.Lock()), type(threading.RLock()), threading.Thread,
           threading.Event, threading.Condition)


def _add_tensor(fp: Footprint, tensor: torch.Tensor) -> None:
    try:
        if tensor.is_cpu:  # the usual case first (a CPU tensor is on device -1 and not on meta)
            storage = tensor.untyped_storage()
            key = (-1, storage.data_ptr())
            if key not in fp.storages:
                fp.storages[key] = (storage.nbytes(), False)
            return
        if tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        key = (tensor.get_device(), storage.data_ptr())
        if key not in fp.storages:
            fp.storages[key] = (storage.nbytes(), not tensor.is_cpu)
    except Exception:  # sparse, nested or other storage-less layouts: their elements, unshared
        fp.storages[(tensor.get_device(), -id(tensor))] = (tensor.numel() * tensor.element_size(),
                                                           not tensor.is_cpu)


def footprint(value: Any) -> Footprint:
    """What ``value`` holds (see the module docstring); iterative, each object once."""
    fp = Footprint()
    _walk([value], fp)
    return fp


def result_footprint(outputs: tuple[list, ...], ui: dict | None) -> Footprint:
    """:func:`footprint` of a node result, with a fast path for its usual shape (lists of tensors)."""
    fp = Footprint()
    getsizeof = sys.getsizeof
    ram = getsizeof(outputs)
    rest: list = []
    for items in outputs:
        ram += getsizeof(items)
        for item in items:
            if type(item) is torch.Tensor:
                _add_tensor(fp, item)
            else:
                rest.append(item)
    fp.ram = ram
    if ui is not None:
        rest.append(ui)
    if rest:
        _walk(rest, fp)
    return fp


def _walk(stack: list, fp: Footprint) -> None:
    """Add what the values on ``stack`` hold to ``fp`` (consumes the stack)."""
    seen: set[int] = set()
    walked = 0
    getsizeof = sys.getsizeof
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        kind = type(item)
        if kind is torch.Tensor or isinstance(item, torch.Tensor):
            _add_tensor(fp, item)
            continue
        if kind in _SCALARS:
            fp.ram += getsizeof(item)
            continue
        if kind is list or kind is tuple or kind is set or kind is frozenset:
            fp.ram += getsizeof(item)
            stack.extend(item)
            continue
        if kind is dict:
            fp.ram += getsizeof(item)
            stack.extend(item.keys())
            stack.extend(item.values())
            continue
        if isinstance(item, _OPAQUE):
            continue
        sizer = getattr(item, "cache_size", None)
        if callable(sizer):
            ram, vram = sizer()
            fp.ram, fp.vram = fp.ram + int(ram), fp.vram + int(vram)
            continue
        nbytes = getattr(item, "nbytes", None)
        if isinstance(nbytes, int):
            device = getattr(item, "device", None)
            if device is not None and getattr(device, "type", "cpu") not in ("cpu", "meta"):
                fp.vram += nbytes
            else:
                fp.ram += nbytes
            continue
        fp.ram += getsizeof(item)
        walked += 1
        if walked > MAX_OBJECTS:
            continue  # an estimate from here on: sizes of the objects themselves only
        if isinstance(item, (list, tuple, set, frozenset)):  # subclasses (named tuples …)
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        attributes = getattr(item, "__dict__", None)
        if type(attributes) is dict:
            fp.ram += getsizeof(attributes)
            stack.extend(attributes.values())
        for cls in kind.__mro__:
            for name in getattr(cls, "__slots__", ()):
                if isinstance(name, str) and name not in ("__dict__", "__weakref__"):
                    attribute = getattr(item, name, None)
                    if attribute is not None:
                        stack.append(attribute)


def measure(value: Any) -> tuple[int, int]:
    """Estimated ``(ram_bytes, vram_bytes)`` held by a value (each tensor storage once)."""
    return footprint(value).totals()


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
    """LRU cache of node results with RAM and VRAM byte budgets. Thread-safe.

    ``ram_budget`` / ``vram_budget``: bytes; ``None`` takes the machine's defaults
    (:func:`default_ram_budget`, :func:`default_vram_budget`); 0 keeps nothing (``--cache-none``)."""

    def __init__(self, ram_budget: int | None = None, vram_budget: int | None = None) -> None:
        self.ram_budget = int(default_ram_budget() if ram_budget is None else ram_budget)
        self.vram_budget = int(default_vram_budget() if vram_budget is None else vram_budget)
        self._entries: OrderedDict[bytes, CachedResult] = OrderedDict()
        #: every storage the entries hold: [bytes, on a GPU, how many entries hold it]
        self._storages: dict[StorageKey, list] = {}
        self._lock = threading.Lock()
        self._ram = 0
        self._vram = 0
        self._hits = self._misses = self._evictions = self._spills = self._rejected = 0
        #: bytes of the entries evicted so far (the executor gives freed memory back to the OS after a
        #: burst of evictions, see :mod:`nodegraph.heap`)
        self.evicted_bytes = 0

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
        if ui is None and len(outputs) == 1:  # the usual result first: one output, one CPU tensor
            items = outputs[0]
            if len(items) == 1 and type(items[0]) is torch.Tensor and items[0].is_cpu:
                try:
                    storage = items[0].untyped_storage()
                except Exception:  # a storage-less layout: the general walk below
                    pass
                else:
                    nbytes, object_ram = storage.nbytes(), _getsizeof(outputs) + _getsizeof(items)
                    return self._store(key, outputs, None, object_ram + nbytes, 0, object_ram, 0,
                                       {(-1, storage.data_ptr()): (nbytes, False)})
        fp = result_footprint(outputs, ui)
        ram, vram = fp.totals()
        return self._store(key, outputs, ui, ram, vram, fp.ram, fp.vram, fp.storages)

    def _store(self, key: bytes, outputs: tuple[list, ...], ui: dict | None, ram: int, vram: int,
               object_ram: int, object_vram: int, storages: dict[StorageKey, tuple[int, bool]]) -> bool:
        """:meth:`put` once the result's footprint is known (``ram``/``vram``: its bytes, storages in
        full; ``object_*``: outside its tensor storages)."""
        if ram > self.ram_budget or (vram > self.vram_budget and ram + vram > self.ram_budget):
            with self._lock:
                self._rejected += 1
            return False
        entry = CachedResult(outputs, ui, ram, vram, object_ram, object_vram, tuple(storages))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._release(old)
            self._hold(entry, storages)
            self._entries[key] = entry
            self._enforce_budgets()
        return True

    def _hold(self, entry: CachedResult, storages: dict[StorageKey, tuple[int, bool]]) -> None:
        """Count ``entry``: its object bytes, and each storage no other entry holds yet."""
        self._ram += entry.object_ram
        self._vram += entry.object_vram
        held = self._storages
        for storage, (nbytes, on_gpu) in storages.items():
            record = held.get(storage)
            if record is not None:
                record[2] += 1
                continue
            held[storage] = [nbytes, on_gpu, 1]
            if on_gpu:
                self._vram += nbytes
            else:
                self._ram += nbytes

    def _release(self, entry: CachedResult) -> None:
        """Stop counting ``entry``; a storage's bytes go when no other entry holds it."""
        self._ram -= entry.object_ram
        self._vram -= entry.object_vram
        held = self._storages
        for storage in entry.storages:
            record = held[storage]
            record[2] -= 1
            if record[2] == 0:
                del held[storage]
                if record[1]:
                    self._vram -= record[0]
                else:
                    self._ram -= record[0]

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
            self._release(entry)
            self._evictions += 1
            self.evicted_bytes += entry.ram_bytes

    def _spill(self, entry: CachedResult) -> None:
        self._release(entry)
        entry.outputs = to_cpu(entry.outputs)
        entry.ui = to_cpu(entry.ui)
        fp = result_footprint(entry.outputs, entry.ui)
        entry.ram_bytes, entry.vram_bytes = fp.totals()
        entry.object_ram, entry.object_vram, entry.storages = fp.ram, fp.vram, tuple(fp.storages)
        self._hold(entry, fp.storages)
        self._spills += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._storages.clear()
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
