"""FreeU and FreeU_V2 (Si et al. 2023, ComfyUI's nodes): in the UNet's decoder, where backbone features
``h`` meet the skip features ``hsp`` of the encoder, scale the first half of ``h``'s channels by ``b``
and damp the lowest frequencies of ``hsp`` by ``s`` (an FFT filter: the centre 2×2 of the shifted
spectrum times ``s``).

ComfyUI's rule for *where*: at every decoder block whose ``h`` has ``4 × model_channels`` channels the
pair ``(b1, s1)`` applies, where it has ``2 × model_channels`` the pair ``(b2, s2)`` (``model_channels``:
the UNet's first block width, 320 for SD 1.x). This is not diffusers' ``enable_freeu`` rule (first and
second up *stage*), so results differ from a diffusers pipeline with FreeU on; the Fourier filter is
the same as diffusers' ``fourier_filter``.

FreeU_V2 scales by ``1 + (b − 1) · m`` instead of ``b``, where ``m`` is ``h``'s channel mean normalised
to [0, 1] per image.

On a diffusers ``UNet2DConditionModel`` the patch is a forward pre-hook on each decoder resnet, whose
input is ``cat([h, hsp])``: the split is known from the block widths. Hooks are in place for one run.
Two FreeU nodes in a row both apply (in order), as in ComfyUI.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from nodegraph.node import FLOAT, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun, require_unet


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """``x`` with the centre ``2·threshold`` square of its shifted 2-D spectrum multiplied by ``scale``."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape[-2:], device=x.device)
    cy, cx = h // 2, w // 2
    mask[cy - threshold:cy + threshold, cx - threshold:cx + threshold] = scale
    out = torch.fft.ifftn(torch.fft.ifftshift(freq * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)


def _backbone_factor(h: torch.Tensor, b: float, v2: bool):
    if not v2:
        return b
    mean = h.mean(1, keepdim=True)
    flat = mean.reshape(mean.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (b - 1.0) * ((mean - lo) / (hi - lo)) + 1.0


def freeu_pair(h: torch.Tensor, hsp: torch.Tensor, b: float, s: float, v2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder junction: ``h``'s first half of channels scaled, ``hsp`` filtered."""
    half = h.shape[1] // 2
    h = torch.cat([h[:, :half] * _backbone_factor(h, b, v2), h[:, half:]], dim=1)
    return h, fourier_filter(hsp, 1, s)


def _decoder_junctions(unet) -> list[tuple[torch.nn.Module, int]]:
    """Each decoder resnet with the channel count of the backbone part of its input."""
    out = []
    prev = unet.config.block_out_channels[-1]
    for block in unet.up_blocks:
        for resnet in block.resnets:
            out.append((resnet, prev))
            prev = resnet.out_channels
    return out


@dataclass(eq=False)
class FreeUPatch(ModelPatch):
    key = "freeu"
    b1: float
    b2: float
    s1: float
    s2: float
    v2: bool = False
    where: str = "FreeU"

    def __post_init__(self) -> None:
        self.key = f"freeu:{id(self)}"  # FreeU nodes stack, as ComfyUI's output block patches do

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        unet = require_unet(run.network, f"{self.where}.model")
        channels = int(unet.config.block_out_channels[0])
        scales = {channels * 4: (self.b1, self.s1), channels * 2: (self.b2, self.s2)}
        handles = []
        for resnet, h_channels in _decoder_junctions(unet):
            pair = scales.get(int(h_channels))
            if pair is None:
                continue

            def hook(module, args, h_channels=h_channels, pair=pair):
                x = args[0]
                h, hsp = freeu_pair(x[:, :h_channels], x[:, h_channels:], pair[0], pair[1], self.v2)
                return (torch.cat([h, hsp], dim=1),) + tuple(args[1:])
            handles.append(resnet.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class _FreeUNode(Node):
    abstract = True
    category = "model_patches/unet"
    v2 = False
    model = Input(MODEL)
    outputs = (Output(MODEL),)

    def execute(self, model, b1: float, b2: float, s1: float, s2: float) -> tuple:
        name = type(self).__name__
        model = require_sampling_model(model, f"{name}.model")
        patch = FreeUPatch(b1, b2, s1, s2, self.v2, name)
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch)),)


def _b(default: float) -> Input:
    return Input(FLOAT, default=default, min=0.0, max=10.0, step=0.01)


class FreeU(_FreeUNode):
    """FreeU: stronger UNet backbone features, damped low frequencies of the skip features (UNet models
    only; stricter than ComfyUI, which silently does nothing on other models: here that is an error)."""

    b1, b2, s1, s2 = _b(1.1), _b(1.2), _b(0.9), _b(0.2)


class FreeU_V2(_FreeUNode):
    """FreeU v2: the backbone scaling follows each image's normalised channel mean (UNet models only;
    an error on other models, where ComfyUI silently does nothing)."""

    v2 = True
    b1, b2, s1, s2 = _b(1.3), _b(1.4), _b(0.9), _b(0.2)
