"""One sampling run: noise, guider, sampler and sigmas applied to a LATENT (what SamplerCustomAdvanced,
SamplerCustom and KSampler execute).

Order of work (ComfyUI's): an empty latent takes the model's channel count; the initial noise comes from
the NOISE source; the model is opened on the device and its per-run patches attached (step caching,
FreeU, attention hooks, …: :mod:`.run_patches`, removed when the run ends); a non-empty latent goes into the model's latent
space; the start is ``noise_scaling(sigmas[0], noise, latent)`` (full variance when the run starts at
the top of the schedule); the positive entries' ControlNets that ControlNetApply gave to the negative too are spread
(:func:`~nodegraph_nodes.sampling.cond_batch.spread_control_to_uncond`); a runner with ``set_latent``
gets the starting latent and noise mask (inpainting UNets take them as input channels);
the sampler walks the sigmas calling the :class:`RunDenoiser`, which checks
for interruption, lets the model's hooks know the step, keeps an inpainting latent's unmasked part on
the original (the mask through the model's ``denoise_mask_function`` where it has one) and asks the
guider (through the patches' predict wrappers); the end is ``inverse_noise_scaling`` and back to VAE latents.
Progress is reported per step, latent previews every ``preview_every`` steps.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from nodegraph_nodes.sampling.cond_batch import spread_control_to_uncond
from nodegraph_nodes.sampling.guiders import Evaluation, Guider
from nodegraph_nodes.sampling.model import require_sampling_model
from nodegraph_nodes.sampling.noise import NoiseSource, SEED_MASK
from nodegraph_nodes.sampling.run_patches import PatchRun, attach_patches
from nodegraph_nodes.sampling.samplers import Sampler, StepInfo


class RunDenoiser:
    """The ``model`` a sampler function calls: ``(x, sigma)`` → guided denoised latent."""

    def __init__(self, ctx, guider: Guider, ev: Evaluation, seed: int | None, latent_image: torch.Tensor,
                 inpaint_noise: torch.Tensor | None, mask: torch.Tensor | None):
        self.ctx = ctx
        self.guider = guider
        self.ev = ev
        self.model_sampling = ev.model_sampling
        self.seed = seed
        self.latent_image = latent_image
        self.inpaint_noise = inpaint_noise
        self.mask = mask
        self.uncond_denoised: torch.Tensor | None = None

    def track_uncond(self) -> None:
        self.ev.force_uncond = True

    def _in_range(self, sigma: float):
        ms = self.model_sampling

        def in_range(start: float, end: float) -> bool:
            return ms.percent_to_sigma(end) <= sigma <= ms.percent_to_sigma(start)
        return in_range

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.ctx is not None:
            self.ctx.check_interrupted()
        begin = getattr(self.ev.runner, "begin_step", None)
        if begin is not None:
            begin(sigma, self._in_range(float(sigma.reshape(-1)[0])))
        mask = self.mask
        mask_function = self.ev.patches.denoise_mask_function
        if mask is not None and mask_function is not None:
            mask = mask_function(sigma, mask, self.ev.patch_run.sigmas, self.model_sampling)
        if mask is not None:
            keep = 1.0 - mask
            s = sigma.reshape([sigma.shape[0]] + [1] * (self.inpaint_noise.ndim - 1))
            x = x * mask + self.model_sampling.noise_scaling(s, self.inpaint_noise, self.latent_image) * keep
        patch_run = self.ev.patch_run
        if patch_run is not None and patch_run.predict_wrappers:
            pred = patch_run.predict(lambda xx, ss: self.guider.predict(self.ev, xx, ss), x, sigma)
        else:
            pred = self.guider.predict(self.ev, x, sigma)
        self.uncond_denoised = pred.uncond
        out = pred.denoised
        if mask is not None:
            out = out * mask + self.latent_image * (1.0 - mask)
        return out


def fit_latent(model, samples: torch.Tensor, where: str) -> torch.Tensor:
    """An empty latent takes the model's channel count; a filled one must already have it."""
    channels = model.latent_channels
    if samples.shape[1] != channels and not bool(samples.any()):
        # ComfyUI also fits an empty latent made for 1/8 of the image size to a model whose VAE compresses
        # more (``empty_latent_scale``: 8 / its factor, e.g. Qwen-Image 2.1's 16× → 0.5)
        scale = getattr(model, "empty_latent_scale", 1)
        size = tuple(max(1, round(s * scale)) for s in samples.shape[2:]) if scale != 1 else tuple(samples.shape[2:])
        return torch.zeros((samples.shape[0], channels, *size), dtype=samples.dtype)
    if samples.shape[1] != channels:
        raise ValueError(f"{where}: the latent has {samples.shape[1]} channels but the model expects {channels}; "
                         "encode the image with this model's VAE")
    return samples


def _mask_for(noise_mask: torch.Tensor, shape: tuple, device) -> torch.Tensor:
    """The noise mask fitted to the latent ``shape`` (ComfyUI's ``reshape_mask``: video latents' 5-D masks
    trilinearly)."""
    if len(shape) == 5:
        mask = noise_mask.float()
        if mask.ndim < 5:
            mask = mask.reshape((1, 1, -1, mask.shape[-2], mask.shape[-1]))
        mask = torch.nn.functional.interpolate(mask, size=shape[2:], mode="trilinear")
    else:
        mask = noise_mask.reshape((-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])).float()
        mask = torch.nn.functional.interpolate(mask, size=shape[2:], mode="bilinear")
    rest = (1,) * (len(shape) - 2)
    if mask.shape[1] < shape[1]:
        mask = mask.repeat(1, shape[1], *rest)[:, :shape[1]]
    if mask.shape[0] < shape[0]:
        mask = mask.repeat((shape[0] + mask.shape[0] - 1) // mask.shape[0], 1, *rest)[:shape[0]]
    return mask[:shape[0]].to(device)


@dataclass
class RunResult:
    """The sampled LATENT and the last denoised prediction as a LATENT (``output``, ``denoised_output``)."""

    output: dict
    denoised: dict


def sample(ctx, guider: Guider, sampler: Sampler, sigmas: torch.Tensor, latent: dict, noise: NoiseSource,
           preview_every: int = 2, where: str = "sampler") -> RunResult:
    """Run ``sampler`` over ``sigmas`` on ``latent`` with ``guider``'s predictions."""
    model = require_sampling_model(guider.model, where)
    bind = getattr(model, "for_latent", None)
    if bind is not None:  # a model whose runner needs the LATENT's layout (LTX-2's packed audio-video latents)
        model = bind(latent)
    out = dict(latent)
    samples = fit_latent(model, latent["samples"], where)
    out["samples"] = samples
    if sigmas.shape[-1] == 0:
        return RunResult(out, dict(out))
    noise_t = noise.generate(out)
    seed = getattr(noise, "seed", None)
    device = ctx.device
    ms = model.model_sampling
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    steps = len(sigmas) - 1
    preview = bool(getattr(getattr(getattr(ctx, "run", None), "bus", None), "active", False))
    last_x0: list[torch.Tensor] = []

    def callback(info: StepInfo) -> None:
        last_x0[:] = [info.denoised]
        if ctx is None:
            return
        done = min(info.i + 1, steps)
        if preview and preview_every and (info.i % preview_every == 0 or done == steps):
            ctx.preview(model.latent_preview(info.denoised))
        ctx.progress(done, steps)

    with model.open_runner(ctx, tuple(samples.shape)) as runner, torch.inference_mode(), ExitStack() as patches:
        set_schedule = getattr(runner, "set_schedule", None)
        if set_schedule is not None:  # runners that read the schedule (FLUX.3's distilled flow map)
            set_schedule(sigmas)
        patch_run = PatchRun(runner, sigmas, ms)  # the model patches (step cache, FreeU, …) for this run
        runner = attach_patches(patches, model.sampling_patches.model_patches, patch_run)
        latent_image = samples.to(device, torch.float32)
        if bool(latent_image.any()):
            latent_image = model.process_latent_in(latent_image)
        noise_t = noise_t.to(device, torch.float32)
        for hook in patch_run.noise_hooks:  # FreeNoise (context windows)
            noise_t = hook(noise_t, int(seed if seed is not None else 0))
        mask = None
        inpaint_noise = None
        if latent.get("noise_mask") is not None:
            mask = _mask_for(latent["noise_mask"], tuple(noise_t.shape), device)
            inpaint_noise = noise_t
            if sampler.random_inpaint_noise:
                gen = torch.Generator("cpu").manual_seed((int(seed if seed is not None else 41) + 1) & SEED_MASK)
                inpaint_noise = torch.randn(noise_t.shape, generator=gen).to(device)
        set_latent = getattr(runner, "set_latent", None)
        if set_latent is not None:  # inpainting UNets take the latent and mask as extra input channels
            set_latent(latent_image, mask)
        conds = spread_control_to_uncond(guider.prepared(tuple(samples.shape), ms, device))
        ev = Evaluation(runner, ms, conds, model.sampling_patches, patch_run=patch_run)
        denoiser = RunDenoiser(ctx, guider, ev, seed, latent_image, inpaint_noise, mask)
        x = ms.noise_scaling(sigmas[0], noise_t, latent_image, ms.max_denoise(sigmas))
        x = sampler.run(denoiser, x, sigmas, callback)
        x = ms.inverse_noise_scaling(sigmas[-1], x)
        result = model.process_latent_out(x.float()).cpu()
        denoised = model.process_latent_out(last_x0[0].float()).cpu() if last_x0 else None
    out["samples"] = result
    den = dict(out)
    if denoised is not None:
        den["samples"] = denoised
    return RunResult(out, den)
