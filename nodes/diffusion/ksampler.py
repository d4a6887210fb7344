"""KSampler and KSamplerAdvanced: denoise a latent with a MODEL and positive/negative conditioning.

Sampler and scheduler names are ComfyUI's, mapped to diffusers schedulers
(:mod:`nodegraph_nodes.diffusion.schedulers`; only pairs that exist are offered). Progress is reported per
step (``ctx.progress``, also where an interrupt lands); latent previews go out every few steps.
"""

from __future__ import annotations

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, LATENT, MODEL, UINT64_MAX

from nodegraph_nodes.diffusion.sampler import SampleRequest, sample
from nodegraph_nodes.diffusion.schedulers import SAMPLER_NAMES, SCHEDULER_NAMES


class KSampler(Node):
    """Uses the provided model, positive and negative conditioning to denoise the latent image."""

    category = "sampling"
    model = Input(MODEL)
    seed = Input(INT, default=0, min=0, max=UINT64_MAX, control_after_generate=True)
    steps = Input(INT, default=20, min=1, max=10000)
    cfg = Input(FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    sampler_name = Input(COMBO, choices=SAMPLER_NAMES)
    scheduler = Input(COMBO, choices=SCHEDULER_NAMES)
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    latent_image = Input(LATENT)
    denoise = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01)
    outputs = (Output(LATENT),)

    def execute(self, model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                positive: list, negative: list, latent_image: dict, denoise: float = 1.0) -> tuple:
        if denoise <= 0:
            return (latent_image,)
        req = SampleRequest(seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                            denoise=denoise)
        return (sample(self.ctx, model, positive, negative, latent_image, req),)


class KSamplerAdvanced(Node):
    """KSampler with control over the steps run, the initial noise and the noise left at the end."""

    category = "sampling"
    display_name = "KSampler (Advanced)"
    model = Input(MODEL)
    add_noise = Input(COMBO, choices=["enable", "disable"])
    noise_seed = Input(INT, default=0, min=0, max=UINT64_MAX, control_after_generate=True)
    steps = Input(INT, default=20, min=1, max=10000)
    cfg = Input(FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    sampler_name = Input(COMBO, choices=SAMPLER_NAMES)
    scheduler = Input(COMBO, choices=SCHEDULER_NAMES)
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    latent_image = Input(LATENT)
    start_at_step = Input(INT, default=0, min=0, max=10000)
    end_at_step = Input(INT, default=10000, min=0, max=10000)
    return_with_leftover_noise = Input(COMBO, choices=["disable", "enable"])
    outputs = (Output(LATENT),)

    def execute(self, model, add_noise: str, noise_seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, positive: list, negative: list, latent_image: dict, start_at_step: int,
                end_at_step: int, return_with_leftover_noise: str) -> tuple:
        req = SampleRequest(seed=noise_seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                            start_step=start_at_step, end_step=end_at_step, add_noise=add_noise == "enable",
                            return_leftover_noise=return_with_leftover_noise == "enable")
        return (sample(self.ctx, model, positive, negative, latent_image, req),)
