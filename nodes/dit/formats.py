"""The flow-transformer families' fixed facts: latent formats (ComfyUI's scale and shift factors, preview
colours) and default sampling settings, per family.

A LATENT holds the VAE's raw 16-channel latents (ComfyUI's convention); the model works on
``(latent - shift) * scale`` (:meth:`LatentFormat.process_in`) and the sampler hands back
``latent / scale + shift``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nodegraph_nodes.sampling import model_sampling as msl


@dataclass(frozen=True)
class LatentFormat:
    channels: int
    scale: float
    shift: float
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float]

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift) * self.scale

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale + self.shift

    def preview(self, latent: torch.Tensor) -> torch.Tensor:
        """A cheap RGB image ``[h, w, 3]`` in 0..1 of the first latent of a batch (raw VAE latents)."""
        factors = torch.tensor(self.rgb_factors, dtype=torch.float32, device=latent.device)
        bias = torch.tensor(self.rgb_bias, dtype=torch.float32, device=latent.device)
        rgb = torch.einsum("chw,cr->hwr", latent[0].float(), factors) + bias
        return ((rgb + 1) / 2).clamp(0, 1).cpu()


SD3 = LatentFormat(16, 1.5305, 0.0609, (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
), (0.2394, 0.2135, 0.1925))

FLUX = LatentFormat(16, 0.3611, 0.1159, (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
), (-0.0329, -0.0718, -0.0851))

#: ComfyUI's default guidance for Flux models with a guidance embedding when the conditioning sets none
FLUX_DEFAULT_GUIDANCE = 3.5


def latent_format(family: str) -> LatentFormat:
    return SD3 if family == "sd3" else FLUX


def default_sampling(family: str, variant: str = "", shift: float | None = None) -> msl.ModelSampling:
    """ComfyUI's sampling settings of a family: SD3/SD3.5 flow shift 3; Flux dev 1.15, schnell 1.0
    (``shift`` overrides, e.g. from a diffusers scheduler config)."""
    if family == "sd3":
        return msl.sd3_flow(3.0 if shift is None else shift, 1000.0)
    if shift is None:
        shift = 1.0 if variant == "schnell" else 1.15
    return msl.flux_flow(shift)
