"""Differential Diffusion (Levin & Fried 2023, ComfyUI's node): inpainting with a soft mask where the
mask value says *how early* a pixel may change, instead of blending a soft mask every step.

At each model evaluation of a run with a noise mask, the mask is replaced by a binary one: a pixel is
denoised (mask 1) once its mask value reaches the current step's threshold
``(t(sigma) − t(sigma_to)) / (t(sigma_from) − t(sigma_to))``, where ``t`` is the model's network time,
``sigma_from`` the run's first sigma and ``sigma_to`` its last (at least the model's ``sigma_min``).
With ``strength`` below 1 the binary mask is blended with the original: ``strength · binary + (1 −
strength) · mask``. As in ComfyUI, ``strength`` 0 counts as 1 (the binary mask alone).
"""

from __future__ import annotations

import torch

from nodegraph.node import FLOAT, Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.model_sampling import ModelSampling


class DifferentialMask:
    """The denoise-mask function (see the module docstring)."""

    def __init__(self, strength: float):
        self.strength = float(strength)

    def threshold(self, sigma: torch.Tensor, sigmas: torch.Tensor, ms: ModelSampling) -> torch.Tensor:
        sigma_to = ms.sigma_min
        if sigmas[-1] > sigma_to:
            sigma_to = sigmas[-1]
        ts_from = ms.timestep(sigmas[0].reshape(1))
        ts_to = ms.timestep(torch.as_tensor(sigma_to, dtype=torch.float32).reshape(1))
        current = ms.timestep(sigma.reshape(-1)[:1])
        return ((current - ts_to) / (ts_from - ts_to)).reshape(())

    def __call__(self, sigma: torch.Tensor, mask: torch.Tensor, sigmas: torch.Tensor, ms: ModelSampling) -> torch.Tensor:
        threshold = self.threshold(sigma, sigmas, ms).to(mask.device)
        binary = (mask >= threshold).to(mask.dtype)
        if self.strength and self.strength < 1:
            return self.strength * binary + (1 - self.strength) * mask
        return binary


class DifferentialDiffusion(Node):
    """Inpainting with a soft mask as a per-pixel start time (the model samples each pixel from the step
    its mask value allows). Needs a latent noise mask (SetLatentNoiseMask, InpaintModelConditioning)."""

    display_name = "Differential Diffusion"
    category = "_for_testing"
    experimental = True
    model = Input(MODEL)
    strength = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01, optional=True)
    outputs = (Output(MODEL),)

    def execute(self, model, strength: float = 1.0) -> tuple:
        model = require_sampling_model(model, "DifferentialDiffusion.model")
        patches = model.sampling_patches.with_denoise_mask_function(DifferentialMask(strength))
        return (model.with_sampling_patches(patches),)
