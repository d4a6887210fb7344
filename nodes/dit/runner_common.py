"""What the DiT families' runners share: the base of a runner (network, device, compute dtype, no per-step
state), the even-size padding of latents for 2×2 patches, and opening a run (the network placed on the run's
device, LoRA patches added, inference mode, the CPU thread choice). Each family keeps its own ``__call__``.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch

from nodegraph.cpu_threads import small_work_threads


class NetRunner:
    """A runner's common part: ``net`` on ``device``, computing in its parameters' dtype; ``begin_step``
    does nothing (families with per-step state override it)."""

    def __init__(self, net, device: str):
        self.net = net
        self.device = device
        self.dtype = next(net.parameters()).dtype

    def begin_step(self, sigma: torch.Tensor, in_range: Callable[[float, float], bool]) -> None:
        pass


def pad_even(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its last two sides padded (circularly, at the end) to even sizes for 2×2 patches."""
    ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="circular") if ph or pw else x


def work_elements(net, latent_shape: tuple) -> int:
    """Elements of one step's widest activation (CFG batch × tokens × width) for the thread choice; the
    width is heads × head size (``dim`` where a config has no head size)."""
    cfg = net.config
    heads = int(getattr(cfg, "num_attention_heads", 1))
    width = heads * int(getattr(cfg, "attention_head_dim", getattr(cfg, "dim", 1)))
    return 2 * latent_shape[0] * (latent_shape[-2] * latent_shape[-1] // 4) * width


@contextmanager
def open_runner(model, ctx, latent_shape: tuple, runner_cls, *args) -> Iterator[Any]:
    """Load ``model``'s network on the run's device for one run and yield ``runner_cls(net, device, *args)``."""
    manager = ctx.service("models")
    with ExitStack() as stack:
        net = stack.enter_context(manager.use(model.handle, ctx.device))
        if getattr(model, "patches", ()):  # LoRAs (LoraLoader): added to the weights for this run
            from nodegraph_nodes.diffusion.lora import patched

            stack.enter_context(patched(net, model.patches))
        stack.enter_context(torch.inference_mode())
        stack.enter_context(small_work_threads(ctx.device, work_elements(net, latent_shape)))
        yield runner_cls(net, ctx.device, *args)
