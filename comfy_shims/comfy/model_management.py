"""ComfyUI's ``comfy.model_management`` for custom node packs: the device helpers, freeing cached
memory and the interrupt, on nodegraph's engine.

The device is the engine's (``--device``); intermediate results live on the CPU, as in ComfyUI.
``interrupt_current_processing`` / ``processing_interrupted`` / ``throw_exception_if_processing_interrupted``
act on the run of the node that calls them; ``InterruptProcessingException`` is nodegraph's
``Interrupted``, so raising it interrupts the run and catching it catches ours. Model loading and
offloading (``load_models_gpu``, ``LoadedModel``, ``ModelPatcher`` …) are placeholders: nodegraph's
model manager does that for its own model objects.
"""

from __future__ import annotations

import enum
from typing import Any

import torch

from nodegraph.comfy_compat.current import current_node
from nodegraph.comfy_compat.host import HOST
from nodegraph.errors import Interrupted
from .._attrs import missing_attribute

InterruptProcessingException = Interrupted
OOM_EXCEPTION = torch.cuda.OutOfMemoryError
XFORMERS_IS_AVAILABLE = False
XFORMERS_ENABLED_VAE = False


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1
    MPS = 2


def get_torch_device() -> torch.device:
    return torch.device(HOST.current_device())


vram_state = VRAMState.NORMAL_VRAM


def __getattr__(name: str) -> Any:
    if name == "cpu_state":
        return CPUState.CPU if get_torch_device().type == "cpu" else \
            CPUState.MPS if get_torch_device().type == "mps" else CPUState.GPU
    return missing_attribute("comfy.model_management", name)


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def intermediate_dtype() -> torch.dtype:
    """The dtype of intermediate results (newer ComfyUI): float32 here."""
    return torch.float32


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_offload_device() -> torch.device:
    return torch.device("cpu")


def vae_offload_device() -> torch.device:
    return torch.device("cpu")


def unet_inital_load_device(parameters: int = 0, dtype: Any = None) -> torch.device:
    return get_torch_device()


def text_encoder_device() -> torch.device:
    return get_torch_device()


def vae_device() -> torch.device:
    return get_torch_device()


def get_autocast_device(dev: Any) -> str:
    return getattr(dev, "type", "cuda")


def is_device_cpu(device: Any) -> bool:
    return torch.device(device).type == "cpu"


def is_device_mps(device: Any) -> bool:
    return torch.device(device).type == "mps"


def is_device_cuda(device: Any) -> bool:
    return torch.device(device).type == "cuda"


def cpu_mode() -> bool:
    return get_torch_device().type == "cpu"


def mps_mode() -> bool:
    return get_torch_device().type == "mps"


def is_nvidia() -> bool:
    return get_torch_device().type == "cuda" and torch.version.cuda is not None


def is_intel_xpu() -> bool:
    return False


def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


def should_use_fp16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    return False


def should_use_bf16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    return False


def unet_dtype(device: Any = None, model_params: int = 0, supported_dtypes: Any = None, weight_dtype: Any = None) -> torch.dtype:
    return torch.float32


def vae_dtype(device: Any = None, allowed_dtypes: Any = None) -> torch.dtype:
    return torch.float32


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    return torch.float32


def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    dev = torch.device(dev) if dev is not None else get_torch_device()
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
    else:
        import psutil

        total = psutil.virtual_memory().total
    return (total, total) if torch_total_too else total


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    dev = torch.device(dev) if dev is not None else get_torch_device()
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return (free, free) if torch_free_too else free


def soft_empty_cache(force: bool = False) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unload_all_models() -> None:
    soft_empty_cache()


def cleanup_models(keep_clone_weights_loaded: bool = False) -> None:
    return None


def cast_to_device(tensor: torch.Tensor, device: Any, dtype: Any, copy: bool = False) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype, copy=copy)


def module_size(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def interrupt_current_processing(value: bool = True) -> None:
    """Interrupt (``value`` true) the run of the node calling it; outside a run it does nothing."""
    ctx = current_node()
    if ctx is not None:
        if value:
            ctx.run.interrupt.set()
        else:
            ctx.run.interrupt.clear()


def processing_interrupted() -> bool:
    ctx = current_node()
    return ctx is not None and ctx.run.interrupt.is_set()


def throw_exception_if_processing_interrupted() -> None:
    ctx = current_node()
    if ctx is not None:
        ctx.check_interrupted()
