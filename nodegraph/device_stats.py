"""What this machine has: RAM, torch's version and each device's memory (``GET /system_stats``).

The records hold ComfyUI's field names so that the server turns them into its JSON shape unchanged.
Without CUDA the one device is the CPU, with the machine's RAM as its memory (as ComfyUI reports it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceMemory:
    """One device, in bytes; ``torch_vram_*``: what torch's caching allocator holds / holds unused."""

    name: str
    type: str
    index: int | None
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SystemStats:
    ram_total: int
    ram_free: int
    torch_version: str
    devices: tuple[DeviceMemory, ...]


def read_system_stats() -> SystemStats:
    import psutil
    import torch

    memory = psutil.virtual_memory()
    devices = [DeviceMemory("cpu", "cpu", None, memory.total, memory.available, 0, 0)]
    if torch.cuda.is_available():
        devices = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            reserved = torch.cuda.memory_reserved(index)
            devices.append(DeviceMemory(torch.cuda.get_device_name(index), "cuda", index, total, free, reserved,
                                        reserved - torch.cuda.memory_allocated(index)))
    return SystemStats(memory.total, memory.available, torch.__version__, tuple(devices))
