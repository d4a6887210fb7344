"""KSampler and KSamplerAdvanced: denoise a latent with a MODEL and positive/negative conditioning.

Both are a thin composition of the sampling core (:mod:`nodegraph_nodes.sampling`), exactly what
``SamplerCustomAdvanced(RandomNoise(seed), CFGGuider(model, positive, negative, cfg),
KSamplerSelect(sampler_name), BasicScheduler(model, scheduler, steps, denoise))`` computes, plus
KSampler's own schedule rules (:func:`~nodegraph_nodes.sampling.sigmas.ksampler_sigmas`: the samplers
that drop the penultimate sigma, KSamplerAdvanced's step window and ``return_with_leftover_noise``).

One exception, kept for the models this project loads with a diffusers scheduler config: the
``normal`` scheduler with a sampler diffusers implements samples as diffusers' ``StableDiffusionPipeline``
does with that config (:mod:`.sampler`: the scheduler class's own timestep spacing and initial noise),
which is what the engine has always promised for ``normal`` and what the built-in shapes generator
was tuned with. A ``ModelSampling*`` or CFG patch on the model, or any other scheduler, goes through
the core. Progress is reported per step (also where an interrupt lands); previews every few steps.
"""

from __future__ import annotations

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, LATENT, MODEL, UINT64_MAX

from nodegraph_nodes.diffusion.sampler import SampleRequest, sample as pipeline_sample
from nodegraph_nodes.diffusion.schedulers import PIPELINE_SAMPLERS
from nodegraph_nodes.sampling import guiders, run
from nodegraph_nodes.sampling.model import SamplingPatches, require_sampling_model
from nodegraph_nodes.sampling.noise import EmptyNoise, RandomNoise
from nodegraph_nodes.sampling.samplers import SAMPLER_NAMES, sampler_object
from nodegraph_nodes.sampling.sigmas import SCHEDULER_NAMES, StepWindow, ksampler_sigmas


def uses_pipeline_schedule(model, sampler_name: str, scheduler: str) -> bool:
    """Whether KSampler samples like diffusers' pipeline for the model's scheduler config (see module doc)."""
    return (scheduler == "normal" and sampler_name in PIPELINE_SAMPLERS
            and getattr(model, "scheduler_config", None) is not None
            and getattr(model, "sampling", None) is None
            and getattr(model, "sampling_patches", SamplingPatches()) == SamplingPatches())


def ksample(ctx, model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: list,
            negative: list, latent: dict, denoise: float = 1.0, add_noise: bool = True,
            window: StepWindow = StepWindow(), where: str = "KSampler") -> dict:
    """KSampler's work: the new LATENT dict (other keys carried over)."""
    require_sampling_model(model, f"{where}.model")
    sigmas = ksampler_sigmas(model.model_sampling, sampler_name, scheduler, steps, denoise, window)
    if sigmas is None:
        return latent
    noise = RandomNoise(seed) if add_noise else EmptyNoise(seed)
    guider = guiders.CFGGuider(model, positive, negative, cfg)
    return run.sample(ctx, guider, sampler_object(sampler_name), sigmas, latent, noise, where=where).output


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
        if uses_pipeline_schedule(model, sampler_name, scheduler):
            req = SampleRequest(seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                                denoise=denoise)
            return (pipeline_sample(self.ctx, model, positive, negative, latent_image, req),)
        return (ksample(self.ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                        latent_image, denoise),)


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
        if uses_pipeline_schedule(model, sampler_name, scheduler):
            req = SampleRequest(seed=noise_seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                                start_step=start_at_step, end_step=end_at_step, add_noise=add_noise == "enable",
                                return_leftover_noise=return_with_leftover_noise == "enable")
            return (pipeline_sample(self.ctx, model, positive, negative, latent_image, req),)
        window = StepWindow(start_at_step, end_at_step, force_full_denoise=return_with_leftover_noise != "enable")
        return (ksample(self.ctx, model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                        latent_image, add_noise=add_noise == "enable", window=window, where="KSamplerAdvanced"),)
