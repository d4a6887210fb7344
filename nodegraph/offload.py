"""Placing a big model's weights on the compute device under a byte budget, block by block ("offload").

A :class:`Placement` wraps one ``torch.nn.Module`` whose tensors are the *storage*: CPU tensors as
they were loaded (memory-mapped, copy-on-write, when read from ``.safetensors`` — safetensors maps the
file, so nothing is copied until a tensor is written), in the file's dtype. Placing the module never
replaces the storage: each parameter's ``.data`` is pointed at a *materialised* tensor (on the compute
device, in the compute dtype) and pointed back at the storage when released. So the CPU never holds a
second copy, and a model moved to a GPU and back costs no CPU memory.

:meth:`Placement.plan` splits the module into *blocks* — the children of its outermost ``ModuleList`` /
``Sequential`` containers of composite modules (a diffusers transformer's ``transformer_blocks`` / ``single_transformer_blocks``
/ ``joint_blocks``, a UNet's ``down_blocks`` / ``up_blocks``, T5's ``encoder.block``, CLIP's
``encoder.layers``) — and the *resident* rest (embeddings, norms, projections). Under a budget it keeps
the resident part and as many blocks as fit materialised for the whole use, and *streams* the others:
a forward pre-hook materialises a block just before its forward and a forward hook releases it after.
On CUDA the next streamed block is copied on a side stream while the current one computes (prefetch,
issued once the current block's kernels are queued); the plan then reserves room for two streamed
blocks instead of one. The copies come from the storage as it is (pageable, memory-mapped pages):
pinning it would be a second copy in RAM.

Materialised bytes are counted by a :class:`ComputeMemory` (current and peak): a tensor costs bytes only
when placing it made a new tensor (another device or dtype); a CPU model computing in its storage dtype
costs nothing. On the CPU the budget therefore caps the weights cast to the compute dtype (a bf16 file
computed in fp32), on a GPU the weights in VRAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch


@dataclass
class ComputeMemory:
    """Bytes of weights materialised by placements (copies on the compute device / in the compute
    dtype), now and at the peak since :meth:`reset_peak`."""

    current: int = 0
    peak: int = 0

    def add(self, nbytes: int) -> None:
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def sub(self, nbytes: int) -> None:
        self.current -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.current


@dataclass(frozen=True)
class OffloadPlan:
    """How a module is placed on ``device``: the blocks kept materialised and the ones streamed.

    ``peak_bound``: the most bytes the placement materialises at once (resident part, kept blocks,
    and the streaming window: one streamed block, two with prefetch)."""

    device: str
    dtype: torch.dtype | None
    resident_cost: int
    kept: tuple[str, ...]
    streamed: tuple[str, ...]
    kept_cost: int
    block_cost: int
    prefetch: bool

    @property
    def streams(self) -> bool:
        return bool(self.streamed)

    @property
    def peak_bound(self) -> int:
        window = (2 if self.prefetch else 1) * self.block_cost if self.streamed else 0
        return self.resident_cost + self.kept_cost + window


@dataclass(eq=False)
class _Slot:
    """One parameter or buffer: the tensor object the module uses and its storage tensor."""

    tensor: torch.Tensor
    storage: torch.Tensor
    placed: torch.Tensor | None = None
    cost: int = 0


@dataclass(eq=False)
class _Group:
    name: str
    module: torch.nn.Module | None
    slots: list[_Slot] = field(default_factory=list)
    on: bool = False
    event: Any = None  # CUDA event of a prefetch in flight


def dominant_dtype(tensors: Iterable[Any]) -> torch.dtype | None:
    """The floating dtype holding most bytes among ``tensors`` (a file's weight dtype), or ``None``."""
    sizes: dict[torch.dtype, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel() * t.element_size()
    return max(sizes, key=sizes.get) if sizes else None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def safetensors_dtype(folder: Any) -> torch.dtype | None:
    """The floating dtype holding most bytes in a folder's ``.safetensors`` files (read from their
    headers only), or ``None`` when there are none."""
    from pathlib import Path

    from safetensors import safe_open

    sizes: dict[torch.dtype, int] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                part = fh.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(part.get_dtype())
                if dtype is not None:
                    numel = 1
                    for n in part.get_shape():
                        numel *= n
                    sizes[dtype] = sizes.get(dtype, 0) + numel * dtype.itemsize
    return max(sizes, key=sizes.get) if sizes else None


def find_blocks(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The children of ``module``'s outermost ``ModuleList`` / ``Sequential`` containers of composite
    modules (transformer blocks, UNet stages), in order. Containers of bare layers (an MLP's
    ``Sequential(Linear, SiLU, Linear)``, an attention's ``to_out``) stay with their parent: code reads
    their weights' dtype outside their forward."""
    out: list[tuple[str, torch.nn.Module]] = []

    def walk(prefix: str, mod: torch.nn.Module) -> None:
        for name, child in mod.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) and any(
                    any(True for _ in c.children()) for c in child.children()):
                out.extend((f"{path}.{n}", c) for n, c in child.named_children())
            else:
                walk(path + ".", child)

    walk("", module)
    return out


def _target_dtype(t: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and t.is_floating_point() else t.dtype


def _cost(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> int:
    target = _target_dtype(t, dtype)
    if t.device == device and t.dtype == target:
        return 0
    return t.numel() * target.itemsize


class Placement:
    """Materialises one module on a compute device (whole, or streamed block by block) without ever
    replacing its storage tensors; see the module docstring."""

    def __init__(self, module: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> None:
        self.module = module
        self.compute_dtype = compute_dtype
        blocks = find_blocks(module)
        owners: dict[int, set[int]] = {}
        index_of = {id(m): i for i, (_, b) in enumerate(blocks) for m in b.modules()}
        for mod in module.modules():
            group = index_of.get(id(mod), -1)
            for t in list(mod._parameters.values()) + list(mod._buffers.values()):
                if t is not None:
                    owners.setdefault(id(t), set()).add(group)
        self.resident = _Group("(resident)", None)
        self.blocks = [_Group(name, b) for name, b in blocks]
        seen: set[int] = set()
        for mod in module.modules():
            for t in list(mod._parameters.values()) + list(mod._buffers.values()):
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                groups = owners[id(t)]
                # a tensor shared by two blocks (tied weights) stays resident
                target = self.blocks[next(iter(groups))] if len(groups) == 1 and -1 not in groups else self.resident
                target.slots.append(_Slot(t, t.data))
        self.plan_: OffloadPlan | None = None
        self.memory: ComputeMemory | None = None
        self._hooks: list[Any] = []
        self._stream = None

    # -- planning ---------------------------------------------------------------------------------

    def _group_cost(self, group: _Group, device: torch.device) -> int:
        return sum(_cost(s.storage, device, self.compute_dtype) for s in group.slots)

    def full_cost(self, device: str) -> int:
        """Bytes materialised to place the whole module on ``device``."""
        dev = torch.device(device)
        return sum(self._group_cost(g, dev) for g in [self.resident, *self.blocks])

    def plan(self, device: str, budget: int | None, stream_all: bool = False) -> OffloadPlan:
        """Keep everything when it fits ``budget`` (``None``: no limit) or costs nothing, else the resident
        part and the leading blocks that fit beside the streaming window; ``stream_all`` streams every
        block."""
        dev = torch.device(device)
        prefetch = dev.type == "cuda"
        resident = self._group_cost(self.resident, dev)
        costs = [self._group_cost(b, dev) for b in self.blocks]
        names = [b.name for b in self.blocks]
        fits = budget is None or resident + sum(costs) <= budget
        if not self.blocks or not any(costs) or (not stream_all and fits):  # (placing costs nothing: keep all)
            return OffloadPlan(device, self.compute_dtype, resident, tuple(names), (), sum(costs), 0, False)
        window = (2 if prefetch else 1) * max(costs)
        kept: list[int] = []
        used = resident + window
        if not stream_all and budget is not None:
            for i, c in enumerate(costs):
                if used + c > budget:
                    break
                kept.append(i)
                used += c
        streamed = [i for i in range(len(costs)) if i not in kept]
        return OffloadPlan(device, self.compute_dtype, resident, tuple(names[i] for i in kept),
                           tuple(names[i] for i in streamed), sum(costs[i] for i in kept),
                           max(costs[i] for i in streamed), prefetch)

    # -- attaching ----------------------------------------------------------------------------------

    @property
    def attached(self) -> OffloadPlan | None:
        return self.plan_

    def attach(self, plan: OffloadPlan, memory: ComputeMemory) -> None:
        """Materialise the resident part and the kept blocks; hook the streamed ones."""
        if self.plan_ is not None:
            self.detach()
        self.plan_, self.memory = plan, memory
        self._onload(self.resident)
        by_name = {b.name: b for b in self.blocks}
        for name in plan.kept:
            self._onload(by_name[name])
        streamed = [by_name[n] for n in plan.streamed]
        if not streamed:
            return
        if plan.prefetch:
            self._stream = torch.cuda.Stream(torch.device(plan.device))
        self._streamed = streamed
        for i, group in enumerate(streamed):
            following = streamed[i + 1] if i + 1 < len(streamed) else None
            self._hooks.append(group.module.register_forward_pre_hook(self._pre_hook(group, following)))
            self._hooks.append(group.module.register_forward_hook(self._post_hook(group, following)))
        if self._stream is not None:
            self._hooks.append(self.module.register_forward_pre_hook(lambda *_: self._prefetch(streamed[0])))
        self._hooks.append(self.module.register_forward_hook(lambda *_: self._release(streamed)))

    def detach(self) -> None:
        """Release everything materialised; the module's tensors are the storage again."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._stream is not None:
            self._stream.synchronize()
        for group in [self.resident, *self.blocks]:
            self._offload(group)
        self.plan_, self._stream = None, None

    def _pre_hook(self, group: _Group, following: _Group | None):
        def hook(module, args):
            for other in self._streamed:  # blocks prefetched but skipped (a patch bypassed them) are let go
                if other.on and other is not group:
                    self._offload(other)
            self._onload(group)

        return hook

    def _post_hook(self, group: _Group, following: _Group | None):
        # the block's kernels are queued: release it (its memory is reused only once the compute stream
        # is past it) and copy the next block on the side stream while the GPU computes
        def hook(module, args, output):
            self._offload(group)
            if following is not None and self._stream is not None:
                self._prefetch(following)

        return hook

    def _release(self, groups: list[_Group]) -> None:
        for g in groups:
            self._offload(g)

    # -- moving ---------------------------------------------------------------------------------------

    def _materialise(self, group: _Group, non_blocking: bool) -> None:
        dev = torch.device(self.plan_.device)
        for s in group.slots:
            placed = s.storage.to(dev, _target_dtype(s.storage, self.compute_dtype), non_blocking=non_blocking)
            s.cost = 0 if placed.untyped_storage().data_ptr() == s.storage.untyped_storage().data_ptr() else placed.nbytes
            s.placed = placed
            self.memory.add(s.cost)
        group.on = True

    def _onload(self, group: _Group) -> None:
        if group.event is not None:  # prefetched: wait for the copy, keep memory until this stream is done
            current = torch.cuda.current_stream(torch.device(self.plan_.device))
            current.wait_event(group.event)
            group.event = None
            for s in group.slots:
                if s.cost:
                    s.placed.record_stream(current)
        elif group.on:
            return  # already in place
        else:
            self._materialise(group, non_blocking=True)
        for s in group.slots:
            # the module holds the copy from here on (hooks such as diffusers' layerwise casting may
            # swap it for a converted one: no reference is kept that would pin the old one)
            s.tensor.data = s.placed
            s.placed = None

    def _prefetch(self, group: _Group) -> None:
        if group.on:
            return
        with torch.cuda.stream(self._stream):
            self._materialise(group, non_blocking=True)
            group.event = torch.cuda.Event()
            group.event.record(self._stream)

    def _offload(self, group: _Group) -> None:
        if not group.on:
            return
        if group.event is not None:
            group.event.synchronize()
            group.event = None
        for s in group.slots:
            s.tensor.data = s.storage
            self.memory.sub(s.cost)
            s.placed, s.cost = None, 0
        group.on = False
