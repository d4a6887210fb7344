"""The model manager: loads each model once, knows its size, moves it between devices, frees it.

Model-agnostic: a model is whatever a loader callable returns (usually a ``torch.nn.Module``). Entries
are keyed by what makes them distinct — typically ``(path, component, dtype)`` plus the file's size and
modification time, so an edited file is reloaded. Models rest on the *offload device* (CPU) and are
moved to the compute device by :meth:`ModelManager.use`; when the compute device is a GPU and a VRAM
budget is set (low-VRAM mode), least-recently-used models are sent back to the CPU to make room, and
in low-VRAM mode every model goes back right after use. :meth:`free` drops everything not in use (the
server's ``POST /free``); a freed model is reloaded on its next use by the loader it was created with.

Big models (``load(..., compute_dtype=...)``, the flow transformers and their text encoders) are
*placed* instead of moved (:mod:`nodegraph.offload`): their weights stay the loaded CPU tensors
(memory-mapped from ``.safetensors``, in the file's dtype where :meth:`ModelManager.storage_dtype` says so)
and copies are materialised on the compute device, in the compute dtype; a model larger than the budget
left to it keeps what fits and streams the rest block by block. ``--vram-budget-gb`` is that budget
(on the CPU it caps the weights cast to the compute dtype), ``--lowvram`` streams every block and
releases all after each use. :attr:`ModelManager.memory` counts the materialised bytes and their peak.

Registered on the engine as the ``"models"`` service; nodes reach it with ``self.ctx.service("models")``.
"""

from __future__ import annotations

import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator


#: transformers and diffusers build models inside process-wide context managers (the "meta device"
#: initialisation), which are not thread-safe: two models built at once on parallel branches can end
#: up with empty weights. Every model construction in the process goes through this one lock.
CONSTRUCTION_LOCK = threading.RLock()


class ManagerOwned:
    """Mixin for values that wrap model-manager entries (MODEL, CLIP, LLM, …): the manager owns their
    memory, so output caches count them as zero bytes (and never spill them)."""

    def cache_size(self) -> tuple[int, int]:
        return 0, 0


def module_bytes(model: Any) -> int:
    """Bytes held by a module's parameters and buffers; for other objects (an ONNX Runtime session
    wrapper, an ncnn net) their integer ``nbytes`` attribute if they have one, else 0."""
    nbytes = getattr(model, "nbytes", None)
    if isinstance(nbytes, int) and not callable(getattr(model, "parameters", None)):
        return nbytes
    total = 0
    for getter in ("parameters", "buffers"):
        fn = getattr(model, getter, None)
        if callable(fn):
            for tensor in fn():
                total += tensor.numel() * tensor.element_size()
    return total


def _device_of(model: Any) -> str:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return str(p.device)
    return "cpu"


@dataclass(eq=False)
class ManagedModel:
    """One loaded model. ``lock`` serialises users that patch weights in place (LoRA)."""

    key: Hashable
    loader: Callable[[], Any]
    manager: "ModelManager"
    model: Any = None
    size: int = 0
    device: str = "cpu"
    last_used: float = 0.0
    users: int = 0
    loads: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: set for placed entries (see the module docstring): the dtype the model computes in
    compute_dtype: Any = None
    placed: bool = False
    placement: Any = None  # nodegraph.offload.Placement, built on first use

    @property
    def device_bytes(self) -> int:
        """Bytes this entry holds on its compute device now (materialised copies for placed entries;
        the whole model for others away from the offload device)."""
        if self.model is None:
            return 0
        if self.placed:
            plan = self.placement.attached if self.placement is not None else None
            return 0 if plan is None else plan.resident_cost + plan.kept_cost
        return self.size if self.device != self.manager.offload_device else 0

    def get(self) -> Any:
        """The model object, loading it again if it was freed."""
        with self.lock:
            if self.model is None:
                with CONSTRUCTION_LOCK:
                    self.model = self.loader()
                self.size = module_bytes(self.model)
                self.device = _device_of(self.model)
                self.placement = None
                self.loads += 1
            return self.model

    def cache_size(self) -> tuple[int, int]:
        # the manager owns this memory; output caches must not count (or spill) it again
        return 0, 0


class ModelManager:
    """Loads models once per key and places them on devices under an optional VRAM budget."""

    def __init__(self, device: str = "cpu", *, vram_budget: int | None = None, low_vram: bool = False,
                 allow_pickle: bool = False, offload_device: str = "cpu") -> None:
        self.device = device
        self.vram_budget = vram_budget
        self.low_vram = low_vram
        self.allow_pickle = allow_pickle
        self.offload_device = offload_device
        self._memory = None
        self._models: dict[Hashable, ManagedModel] = {}
        self._lock = threading.RLock()

    # -- loading ------------------------------------------------------------------------------------

    def load(self, key: Hashable, loader: Callable[[], Any], *, compute_dtype: Any = None,
             placed: bool | None = None) -> ManagedModel:
        """The entry for ``key``, created (and loaded) by ``loader`` the first time only. ``compute_dtype``
        (a ``torch.dtype``) makes it a *placed* entry (streamed under the budget, see the module
        docstring); ``placed=True`` does so keeping the storage dtype."""
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                entry = ManagedModel(key, loader, self, compute_dtype=compute_dtype,
                                     placed=bool(placed if placed is not None else compute_dtype is not None))
                self._models[key] = entry
        entry.get()
        return entry

    @property
    def streams(self) -> bool:
        """Whether a budget or ``--lowvram`` is set: big models are then placed block by block."""
        return self.low_vram or self.vram_budget is not None

    def storage_dtype(self, file_dtype: Any, compute_dtype: Any) -> Any:
        """The dtype a loader should keep a placed model's weights in: the file's own (memory-mapped, no
        converted copy in RAM; cast when placed) when streaming or computing on a GPU, else (the CPU
        without a budget) the compute dtype, cast once at load: that copy is the one computed with."""
        if file_dtype is not None and (self.streams or self.device != self.offload_device):
            return file_dtype
        return compute_dtype

    @property
    def memory(self):
        """The :class:`~nodegraph.offload.ComputeMemory` of the placed entries."""
        if self._memory is None:
            from .offload import ComputeMemory

            self._memory = ComputeMemory()
        return self._memory

    def __contains__(self, key: Hashable) -> bool:
        return key in self._models

    def loaded(self) -> list[dict[str, Any]]:
        """What is loaded now: key, bytes, device."""
        return [{"key": e.key, "bytes": e.size, "device": e.device, "loads": e.loads}
                for e in list(self._models.values()) if e.model is not None]

    def total_bytes(self, device_prefix: str | None = None) -> int:
        return sum(e.size for e in list(self._models.values())
                   if e.model is not None and (device_prefix is None or e.device.startswith(device_prefix)))

    # -- placement ----------------------------------------------------------------------------------

    @contextmanager
    def use(self, entry: ManagedModel, device: str | None = None) -> Iterator[Any]:
        """Hold ``entry``'s model on ``device`` (the manager's compute device by default)."""
        device = device or self.device
        if entry.placed:
            with self._use_placed(entry, device) as model:
                yield model
            return
        with entry.lock:
            model = entry.get()
            entry.users += 1
            try:
                if entry.device != device:
                    if device != "cpu":
                        self._make_room(entry.size, device, keep=entry)
                    self._move(entry, device)
                entry.last_used = time.monotonic()
                yield model
            finally:
                entry.users -= 1
                if self.low_vram and device != self.offload_device and entry.users == 0:
                    self._move(entry, self.offload_device)

    @contextmanager
    def _use_placed(self, entry: ManagedModel, device: str) -> Iterator[Any]:
        from .offload import Placement

        with entry.lock:
            model = entry.get()
            entry.users += 1
            try:
                if entry.placement is None:
                    entry.placement = Placement(model, entry.compute_dtype)
                current = entry.placement.attached
                if current is None or current.device != device:
                    if current is not None:
                        self._move(entry, self.offload_device)
                    need = entry.placement.full_cost(device)
                    budget = self.vram_budget
                    if budget is not None:
                        self._make_room(min(need, budget), device, keep=entry)
                        budget = max(0, budget - sum(e.device_bytes for e in list(self._models.values())
                                                     if e is not entry and e.model is not None and e.device == device))
                    plan = entry.placement.plan(device, budget, stream_all=self.low_vram and budget is None)
                    entry.placement.attach(plan, self.memory)
                    entry.device = device
                entry.last_used = time.monotonic()
                yield model
            finally:
                entry.users -= 1
                plan = entry.placement.attached if entry.placement is not None else None
                if entry.users == 0 and plan is not None and (plan.streams or self.low_vram):
                    self._move(entry, self.offload_device)

    def _move(self, entry: ManagedModel, device: str) -> None:
        if entry.placed:
            if entry.placement is not None and entry.placement.attached is not None:
                entry.placement.detach()
            entry.device = _device_of(entry.model) if entry.placement is None else self.offload_device
            return
        if hasattr(entry.model, "to"):
            entry.model.to(device)
        entry.device = device

    def _make_room(self, need: int, device: str, keep: ManagedModel) -> None:
        if self.vram_budget is None:
            return
        on_device = sorted((e for e in list(self._models.values())
                            if e is not keep and e.device == device and e.users == 0 and e.device_bytes),
                           key=lambda e: e.last_used)
        used = sum(e.device_bytes for e in on_device)
        for victim in on_device:
            if used + need <= self.vram_budget:
                break
            with victim.lock:
                if victim.users == 0:
                    freed = victim.device_bytes
                    self._move(victim, self.offload_device)
                    used -= freed

    # -- freeing ------------------------------------------------------------------------------------

    def free(self, unload: bool = True) -> int:
        """Drop (``unload``) or offload every model not in use; returns the bytes released."""
        released = 0
        with self._lock:
            for key, entry in list(self._models.items()):
                if entry.users:
                    continue
                with entry.lock:
                    if entry.model is None:
                        continue
                    if unload:
                        released += entry.size
                        if entry.placement is not None and entry.placement.attached is not None:
                            entry.placement.detach()
                        entry.placement = None
                        entry.model = None
                        entry.device = "cpu"
                    elif entry.device != self.offload_device or (entry.placement and entry.placement.attached):
                        released += entry.device_bytes
                        self._move(entry, self.offload_device)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
        return released
