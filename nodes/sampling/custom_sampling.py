"""ComfyUI's custom-sampling nodes: the run (SamplerCustom, SamplerCustomAdvanced), its noise
(RandomNoise, DisableNoise, AddNoise), its guider (CFGGuider, BasicGuider, DualCFGGuider) and the
sampler by name (KSamplerSelect). Names, inputs and outputs are ComfyUI's; the work is
:mod:`nodegraph_nodes.sampling.run`.
"""

from __future__ import annotations

import torch

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, LATENT, MODEL, UINT64_MAX

from nodegraph_nodes.sampling import guiders, run
from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.noise import EmptyNoise, RandomNoise as RandomNoiseSource
from nodegraph_nodes.sampling.samplers import SAMPLER_NAMES, sampler_object
from nodegraph_nodes.sampling.types import GUIDER, NOISE, SAMPLER, SIGMAS


class SamplerCustom(Node):
    """Samples a latent with classifier-free guidance, a SAMPLER and a SIGMAS schedule; also returns
    the last denoised prediction."""

    category = "sampling/custom_sampling"
    model = Input(MODEL)
    add_noise = Input(BOOLEAN, default=True)
    noise_seed = Input(INT, default=0, min=0, max=UINT64_MAX, control_after_generate=True)
    cfg = Input(FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    sampler = Input(SAMPLER)
    sigmas = Input(SIGMAS)
    latent_image = Input(LATENT)
    outputs = (Output(LATENT, "output"), Output(LATENT, "denoised_output"))

    def execute(self, model, add_noise: bool, noise_seed: int, cfg: float, positive: list, negative: list,
                sampler, sigmas: torch.Tensor, latent_image: dict) -> tuple:
        require_sampling_model(model, "SamplerCustom.model")
        noise = RandomNoiseSource(noise_seed) if add_noise else EmptyNoise(noise_seed)
        guider = guiders.CFGGuider(model, positive, negative, cfg)
        result = run.sample(self.ctx, guider, sampler, sigmas, latent_image, noise, where="SamplerCustom")
        return (result.output, result.denoised)


class SamplerCustomAdvanced(Node):
    """Samples a latent from separate NOISE, GUIDER, SAMPLER and SIGMAS; also returns the last denoised
    prediction."""

    category = "sampling/custom_sampling"
    noise = Input(NOISE)
    guider = Input(GUIDER)
    sampler = Input(SAMPLER)
    sigmas = Input(SIGMAS)
    latent_image = Input(LATENT)
    outputs = (Output(LATENT, "output"), Output(LATENT, "denoised_output"))

    def execute(self, noise, guider, sampler, sigmas: torch.Tensor, latent_image: dict) -> tuple:
        result = run.sample(self.ctx, guider, sampler, sigmas, latent_image, noise, where="SamplerCustomAdvanced")
        return (result.output, result.denoised)


class KSamplerSelect(Node):
    """A SAMPLER by KSampler's sampler name, with its default options."""

    category = "sampling/custom_sampling/samplers"
    sampler_name = Input(COMBO, choices=SAMPLER_NAMES)
    outputs = (Output(SAMPLER),)

    def execute(self, sampler_name: str) -> tuple:
        return (sampler_object(sampler_name),)


class DisableNoise(Node):
    """No initial noise: the latent is sampled as it is."""

    category = "sampling/custom_sampling/noise"
    outputs = (Output(NOISE),)

    def execute(self) -> tuple:
        return (EmptyNoise(),)


class RandomNoise(Node):
    """Seeded initial noise (the same as ComfyUI's for a seed)."""

    category = "sampling/custom_sampling/noise"
    noise_seed = Input(INT, default=0, min=0, max=UINT64_MAX, control_after_generate=True)
    outputs = (Output(NOISE),)

    def execute(self, noise_seed: int) -> tuple:
        return (RandomNoiseSource(noise_seed),)


class AddNoise(Node):
    """Adds noise to a latent at the level the sigmas span (first − last), without denoising."""

    category = "_for_testing/custom_sampling/noise"
    model = Input(MODEL)
    noise = Input(NOISE)
    sigmas = Input(SIGMAS)
    latent_image = Input(LATENT)
    outputs = (Output(LATENT),)

    def execute(self, model, noise, sigmas: torch.Tensor, latent_image: dict) -> tuple:
        model = require_sampling_model(model, "AddNoise.model")
        if len(sigmas) == 0:
            return (latent_image,)
        samples = latent_image["samples"]
        noisy = noise.generate(latent_image)
        ms = model.model_sampling
        scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
        if bool(samples.any()):
            samples = model.process_latent_in(samples)
        noisy = model.process_latent_out(ms.noise_scaling(scale, noisy, samples))
        out = dict(latent_image)
        out["samples"] = torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)
        return (out,)


class CFGGuider(Node):
    """Classifier-free guidance between a positive and a negative conditioning."""

    category = "sampling/custom_sampling/guiders"
    model = Input(MODEL)
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    cfg = Input(FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    outputs = (Output(GUIDER),)

    def execute(self, model, positive: list, negative: list, cfg: float) -> tuple:
        require_sampling_model(model, "CFGGuider.model")
        return (guiders.CFGGuider(model, positive, negative, cfg),)


class BasicGuider(Node):
    """The model on one conditioning, no guidance (for guidance-distilled models such as Flux)."""

    category = "sampling/custom_sampling/guiders"
    model = Input(MODEL)
    conditioning = Input(CONDITIONING)
    outputs = (Output(GUIDER),)

    def execute(self, model, conditioning: list) -> tuple:
        require_sampling_model(model, "BasicGuider.model")
        return (guiders.BasicGuider(model, conditioning),)


class DualCFGGuider(Node):
    """Guidance with two positive conditionings and a negative: ``cfg_conds`` between cond1 and cond2,
    ``cfg_cond2_negative`` between cond2 and the negative (``nested``: the first inside the second)."""

    category = "sampling/custom_sampling/guiders"
    model = Input(MODEL)
    cond1 = Input(CONDITIONING)
    cond2 = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    cfg_conds = Input(FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    cfg_cond2_negative = Input(FLOAT, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    style = Input(COMBO, choices=["regular", "nested"])
    outputs = (Output(GUIDER),)

    def execute(self, model, cond1: list, cond2: list, negative: list, cfg_conds: float,
                cfg_cond2_negative: float, style: str = "regular") -> tuple:
        require_sampling_model(model, "DualCFGGuider.model")
        return (guiders.DualCFGGuider(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative,
                                      nested=style == "nested"),)
