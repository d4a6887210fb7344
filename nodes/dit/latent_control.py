"""What the transformer families' latent-input ControlNets share during a run (Qwen-Image InstantX,
:mod:`.qwen_controlnet`; Flux InstantX / AliMama, :mod:`.flux_controlnet`): the ControlNet modules on the
run's device, the schedule range of the current step, and each hint's packed latent.

The hint latent, as ComfyUI's ControlNet builds it: the hint image (``[B, C, H, W]`` in 0..1) resized
(``nearest-exact``, centre crop) to the latent's pixel size, encoded with the apply node's VAE and brought
to the model's latent space; the extra channels (ControlNetInpaintingAliMamaApply's ``1 - mask``; ones when
an inpainting ControlNet gets none) resized the same way to the latent size and concatenated; padded to even
sides and packed in 2×2 patches.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import torch


class EncodeContext:
    """What :func:`~nodegraph_nodes.diffusion.latent.vae_encode` needs of a node context during a run: the model
    manager and the run's device."""

    def __init__(self, manager, device: str):
        self._manager = manager
        self.device = device

    def service(self, name: str):
        if name != "models":
            raise KeyError(name)
        return self._manager


class LatentControl:
    """One run's ControlNets of one family (``family``) and their hint latents."""

    family: str = ""

    def __init__(self, manager, device: str, stack: ExitStack, process_in: Callable[[torch.Tensor], torch.Tensor],
                 latent_channels: int):
        self.manager = manager
        self.device = device
        self.stack = stack
        self.process_in = process_in
        self.latent_channels = latent_channels
        self.in_range: Callable[[float, float], bool] = lambda start, end: True
        self._nets: dict[int, Any] = {}
        self._conds: dict[tuple, torch.Tensor] = {}

    def begin_step(self, in_range: Callable[[float, float], bool]) -> None:
        self.in_range = in_range

    def active(self, hint) -> list:
        """The hints of ``hint``'s chain (earliest first) that act at this step."""
        return [h for h in hint.chain() if self.in_range(h.start_percent, h.end_percent) and h.strength != 0]

    def net(self, hint):
        if hint.net.family != self.family:
            raise ValueError(f"ControlNet {hint.net.name} is a {hint.net.family} ControlNet; this MODEL is {self.family}")
        key = id(hint.net.handle)
        if key not in self._nets:
            self._nets[key] = self.stack.enter_context(self.manager.use(hint.net.handle, self.device))
        return self._nets[key]

    def cond(self, hint, extra: int, h: int, w: int, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """The hint's packed latent ``[rows, tokens, 4·(channels + extra)]`` for an ``h``×``w`` latent
        (``extra`` mask channels)."""
        key = (id(hint), h, w, rows)
        if key not in self._conds:
            from nodegraph_nodes.diffusion.control_run import fit_rows
            from nodegraph_nodes.diffusion.latent import vae_encode
            from nodegraph_nodes.dit.model import pack_latents
            from nodegraph_nodes.dit.runner_common import pad_even
            from nodegraph_nodes.image.operations import common_upscale

            if hint.vae is None:
                raise ValueError(f"ControlNet {hint.net.name} works on latents: connect a VAE to the apply node")
            scale = int(getattr(hint.vae, "scale_factor", 8))
            image = common_upscale(hint.image.float(), w * scale, h * scale, "nearest-exact", "center")
            latent = self.process_in(vae_encode(EncodeContext(self.manager, self.device), hint.vae,
                                                image.movedim(1, -1)).float())
            if latent.ndim == 5:
                latent = latent[:, :, 0]
            parts = [latent]
            if extra:
                for c in list(hint.extra_concat) or [torch.ones(1, 1, 1, 1)]:
                    c = common_upscale(c.float(), latent.shape[-1], latent.shape[-2], "nearest-exact", "center")
                    parts.append(fit_rows(c, latent.shape[0]) if c.shape[0] != latent.shape[0] else c)
            cond = torch.cat(parts, dim=1)
            if cond.shape[1] != self.latent_channels + extra:
                raise ValueError(f"ControlNet {hint.net.name} takes {self.latent_channels + extra} latent channels, "
                                 f"the hint has {cond.shape[1]} (is its VAE the model's?)")
            self._conds[key] = pack_latents(fit_rows(pad_even(cond), rows)).to(self.device, dtype)
        return self._conds[key]


def per_block(samples, blocks: int) -> list[torch.Tensor]:
    """Control outputs spread over ``blocks`` transformer blocks: block ``i`` gets output
    ``i // ceil(blocks / outputs)`` (diffusers' rule; ComfyUI's for latent-input ControlNets of the full-size
    models)."""
    import math

    interval = math.ceil(blocks / len(samples))
    return [samples[i // interval] for i in range(blocks)]
