"""KSampler's diffusers-scheduler path: ``normal`` on a model with a diffusers scheduler config samples
like ``StableDiffusionPipeline`` (see :mod:`.ksampler`), with ComfyUI's conditioning semantics (areas,
strengths, timestep ranges, several entries) and interruption.

Latent convention (as ComfyUI): ``LATENT["samples"]`` holds the VAE's raw latents; the model's
``latent_scale`` (VAE ``scaling_factor``) is applied on the way in and removed on the way out. Noise:
:func:`prepare_noise` (ComfyUI's, :mod:`nodegraph_nodes.sampling.noise`) — a CPU generator seeded with
``seed`` draws the initial noise over the latent shape; the same generator then feeds the scheduler's
per-step noise (ancestral / SDE samplers). For the diffusers pipeline that is
``pipe(latents=noise * sigma, generator=<that generator after the draw>)``.

With one positive and one negative entry and no areas or ranges, each step is one batched UNet call on
``[uncond, cond]`` exactly as the pipeline does, so results equal the pipeline's to float precision.

Sampling hooks: a MODEL may carry ``hooks`` (e.g. an IP-Adapter image prompt). Each hook's
``attach(manager, unet, device)`` is a context manager entered after the LoRA patches, under the UNet's
lock, that installs what it needs on the UNet and restores it on exit; it yields a run object with
``begin_step(in_range)`` (called before each step; ``in_range(start, end)`` says whether the step lies in
that fraction of the schedule, the rule of ConditioningSetTimestepRange) and ``added_cond(negative)``
(extra ``added_cond_kwargs`` for a UNet call whose batch rows are negative (True) or positive (False)).
The sampling core's UNet runner (:mod:`.unet_runner`) honours the same hooks. ControlNets and the
input channels of inpainting / InstructPix2Pix UNets come from the conditioning entries, as in the
core (:mod:`.control_run`); a ControlNet's range is checked on the step's timestep like the hooks'.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from nodegraph.cpu_threads import small_work_threads

from nodegraph_nodes.diffusion.control_run import UNetInputs
from nodegraph_nodes.diffusion.lora import patched
from nodegraph_nodes.diffusion.schedulers import in_sigma_space, make_scheduler
from nodegraph_nodes.diffusion.unet_runner import sdxl_added_cond, unet_work_elements
from nodegraph_nodes.sampling.cond_batch import spread_control_to_uncond
from nodegraph_nodes.sampling.noise import prepare_noise

__all__ = ["SampleRequest", "Sampler", "latent_preview", "prepare_noise", "sample"]


@dataclass
class SampleRequest:
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float = 1.0
    start_step: int = 0
    end_step: int | None = None
    add_noise: bool = True
    return_leftover_noise: bool = False
    preview_every: int = 2


def _is_simple(conds: list) -> bool:
    if len(conds) != 1:
        return False
    extras = conds[0][1]
    return ("area" not in extras and "mask" not in extras and extras.get("strength", 1.0) == 1.0
            and extras.get("start_percent", 0.0) <= 0.0 and extras.get("end_percent", 1.0) >= 1.0)


def _area_in_latent(extras: dict, h: int, w: int) -> tuple[int, int, int, int] | None:
    area = extras.get("area")
    if area is None:
        return None
    if area[0] == "percentage":
        ah, aw, ay, ax = (max(1, round(area[1] * h)), max(1, round(area[2] * w)), round(area[3] * h), round(area[4] * w))
    else:
        ah, aw, ay, ax = (int(v) for v in area)
    ay, ax = min(ay, h - 1), min(ax, w - 1)
    return min(ah, h - ay), min(aw, w - ax), ay, ax


def _feather(mult: torch.Tensor, area, h: int, w: int, rr: int = 8) -> torch.Tensor:
    """ComfyUI's soft edges for areas that do not touch the latent border."""
    ah, aw, ay, ax = area
    rr = min(rr, ah // 4, aw // 4) if min(ah, aw) >= 4 else 0
    for t in range(rr):
        f = (1.0 / rr) * (t + 1)
        if ay != 0:
            mult[:, :, t:t + 1, :] *= f
        if ay + ah < h:
            mult[:, :, ah - 1 - t:ah - t, :] *= f
        if ax != 0:
            mult[:, :, :, t:t + 1] *= f
        if ax + aw < w:
            mult[:, :, :, aw - 1 - t:aw - t] *= f
    return mult


class Sampler:
    """One sampling run of a MODEL over a latent batch."""

    def __init__(self, ctx, model, unet, positive: list, negative: list, req: SampleRequest, device: str,
                 hooks: tuple = (), inputs: UNetInputs | None = None):
        self.ctx = ctx
        self.inputs = inputs
        self.hooks = tuple(hooks)
        self.model = model
        self.unet = unet
        self.req = req
        self.device = device
        self.dtype = next(unet.parameters()).dtype
        self.positive = positive
        self.negative = negative
        self.num_train = 1000

    # -- conditioning ----------------------------------------------------------------------------

    def _added(self, extras: dict, batch: int, h: int, w: int, negative: bool) -> dict | None:
        if not self.model.is_sdxl:
            return None
        return sdxl_added_cond(self.model, extras, batch, h, w, negative, self.dtype, self.device)

    def _embeds(self, cond: torch.Tensor, batch: int) -> torch.Tensor:
        return cond.to(self.device, self.dtype).expand(batch, -1, -1)

    def _active(self, extras: dict, t: float) -> bool:
        return self.in_range(t, extras.get("start_percent", 0.0), extras.get("end_percent", 1.0))

    def in_range(self, t, start: float, end: float) -> bool:
        """Whether timestep ``t`` lies in the ``[start, end]`` fraction of the schedule (ComfyUI's rule:
        an end of 0 is an infinite noise level, reached by no step)."""
        if end <= 0:
            return False
        top = math.inf if start <= 0 else (1 - start) * (self.num_train - 1)
        bottom = -math.inf if end >= 1 else (1 - end) * (self.num_train - 1)
        return bottom <= float(t) <= top

    def _unet(self, x, t, embeds, added, negative: list[bool], parts: list[tuple[dict, int]]):
        for hook in self.hooks:
            extra = hook.added_cond(negative)
            if extra:
                added = {**(added or {}), **extra}
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        if self.inputs is not None:  # ControlNet residuals, inpainting / InstructPix2Pix input channels
            kwargs.update(self.inputs.control(x, t, embeds, added, parts))
            x = self.inputs.concat(x, parts)
        return self.unet(x, t, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0]

    def _calc(self, conds: list, x_in: torch.Tensor, t, negative: bool) -> torch.Tensor:
        b, _, h, w = x_in.shape
        out = torch.zeros_like(x_in)
        count = torch.full_like(x_in, 1e-37)
        for cond, extras in conds:
            if not self._active(extras, t):
                continue
            area = _area_in_latent(extras, h, w)
            strength = float(extras.get("strength", 1.0))
            if area is None:
                ah, aw, ay, ax = h, w, 0, 0
            else:
                ah, aw, ay, ax = area
            crop = x_in[:, :, ay:ay + ah, ax:ax + aw]
            pred = self._unet(crop, t, self._embeds(cond, b), self._added(extras, b, h, w, negative), [negative] * b,
                              [(extras, b)])
            mult = torch.full_like(pred, strength)
            if area is not None:
                mult = _feather(mult, area, h, w)
            out[:, :, ay:ay + ah, ax:ax + aw] += pred * mult
            count[:, :, ay:ay + ah, ax:ax + aw] += mult
        return out / count

    def predict(self, latents: torch.Tensor, t, scheduler) -> torch.Tensor:
        cfg = self.req.cfg
        b, _, h, w = latents.shape
        use_uncond = cfg != 1.0
        if _is_simple(self.positive) and (not use_uncond or _is_simple(self.negative)):
            pos, pos_x = self.positive[0]
            if use_uncond:
                neg, neg_x = self.negative[0]
                if neg.shape[1] != pos.shape[1]:
                    n = math.lcm(neg.shape[1], pos.shape[1]) // 77 * 77
                    neg = neg.repeat(1, n // neg.shape[1], 1)
                    pos = pos.repeat(1, n // pos.shape[1], 1)
                x_in = torch.cat([latents] * 2)
                x_in = scheduler.scale_model_input(x_in, t)
                embeds = torch.cat([self._embeds(neg, b), self._embeds(pos, b)])
                added = None
                if self.model.is_sdxl:
                    a_neg = self._added(neg_x, b, h, w, True)
                    a_pos = self._added(pos_x, b, h, w, False)
                    added = {k: torch.cat([a_neg[k], a_pos[k]]) for k in a_pos}
                noise_uncond, noise_text = self._unet(x_in, t, embeds, added, [True] * b + [False] * b,
                                                      [(neg_x, b), (pos_x, b)]).chunk(2)
                return noise_uncond + cfg * (noise_text - noise_uncond)
            x_in = scheduler.scale_model_input(latents, t)
            return self._unet(x_in, t, self._embeds(pos, b), self._added(pos_x, b, h, w, False), [False] * b,
                              [(pos_x, b)])
        x_in = scheduler.scale_model_input(latents, t)
        cond = self._calc(self.positive, x_in, t, False)
        if not use_uncond:
            return cond
        uncond = self._calc(self.negative, x_in, t, True)
        return uncond + cfg * (cond - uncond)

    # -- loop ------------------------------------------------------------------------------------

    def run(self, latent: torch.Tensor, noise: torch.Tensor, generator: torch.Generator,
            mask: torch.Tensor | None = None) -> torch.Tensor:
        req = self.req
        scheduler = make_scheduler(self.model.scheduler_config, req.sampler_name, req.scheduler)
        self.num_train = int(scheduler.config.num_train_timesteps)
        if req.denoise < 1.0:
            total = max(int(req.steps / max(req.denoise, 1e-4)), req.steps)
            first, last = total - req.steps, total
        else:
            total = req.steps
            first = max(0, min(req.start_step, req.steps))
            last = req.steps if req.end_step is None else max(first, min(req.end_step, req.steps))
        scheduler.set_timesteps(total, device=self.device)
        order = scheduler.order
        all_timesteps = scheduler.timesteps
        timesteps = all_timesteps[first * order:last * order]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(first * order)
        x = latent.to(self.device, torch.float32) * self.model.latent_scale
        noise = noise.to(self.device, torch.float32)
        sigma_space = in_sigma_space(scheduler)
        if len(timesteps) == 0:
            return latent
        if req.add_noise:
            if first == 0 and not bool(latent.any()):
                x = noise * scheduler.init_noise_sigma
            else:
                x = scheduler.add_noise(x, noise, timesteps[:1].repeat(x.shape[0]))
        elif first > 0 and not sigma_space:
            x = x * scheduler.alphas_cumprod[int(timesteps[0])].sqrt().to(x)
        original = latent.to(self.device, torch.float32) * self.model.latent_scale
        if self.inputs is not None:
            self.inputs.set_latent(original, mask)
        x = x.to(self.dtype)
        step_kwargs = {}
        import inspect

        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = generator
        n = len(timesteps)
        preview = getattr(self.ctx.run.bus, "active", False) if hasattr(self.ctx, "run") else False
        denoised = None
        for i, t in enumerate(timesteps):
            self.ctx.check_interrupted()
            for hook in self.hooks:
                hook.begin_step(lambda start, end, t=t: self.in_range(t, start, end))
            if self.inputs is not None:
                self.inputs.begin_step(lambda start, end, t=t: self.in_range(t, start, end))
            eps = self.predict(x, t, scheduler)
            out = scheduler.step(eps, t, x, **step_kwargs, return_dict=True)
            x = out.prev_sample
            denoised = getattr(out, "pred_original_sample", None)
            if mask is not None:  # inpainting: keep the unmasked part on the original's noise level
                keep = original if i == n - 1 else scheduler.add_noise(original, noise, timesteps[i + 1:i + 2])
                x = (1 - mask) * keep.to(x.dtype) + mask * x
            if preview and req.preview_every and (i % req.preview_every == 0 or i == n - 1):
                self.ctx.preview(latent_preview(self.model, denoised if denoised is not None else x))
            self.ctx.progress(i + 1, n)
        finished = last >= total
        if not finished and not req.return_leftover_noise and denoised is not None:
            x = denoised
        elif not finished and not sigma_space:
            nxt = int(all_timesteps[min(last * order, len(all_timesteps) - 1)])
            x = x / scheduler.alphas_cumprod[nxt].sqrt().to(x)
        return x.float() / self.model.latent_scale


def latent_preview(model, latent: torch.Tensor) -> torch.Tensor:
    """Cheap latent → RGB: a per-family linear projection (ComfyUI's latent_rgb_factors), 0..1 HWC."""
    x = latent[0].float().cpu()
    factors = torch.tensor(model.rgb_factors, dtype=torch.float32)
    if x.shape[0] != factors.shape[0]:
        return torch.zeros(x.shape[1], x.shape[2], 3)
    rgb = torch.einsum("chw,cr->hwr", x / model.latent_scale * 1.0, factors) + torch.tensor(model.rgb_bias)
    return ((rgb + 1) / 2).clamp(0, 1)


def sample(ctx, model, positive: list, negative: list, latent: dict, req: SampleRequest) -> dict:
    """KSampler's work: returns the new LATENT dict (other keys carried over)."""
    samples = latent["samples"]
    if samples.shape[1] != model.latent_channels and not bool(samples.any()):
        samples = torch.zeros((samples.shape[0], model.latent_channels, *samples.shape[2:]))
    if samples.shape[1] != model.latent_channels:
        raise ValueError(f"the latent has {samples.shape[1]} channels but the model expects "
                         f"{model.latent_channels}; encode the image with this model's VAE")
    if req.add_noise:
        noise, generator = prepare_noise(samples, req.seed, latent.get("batch_index"))
    else:
        noise, generator = torch.zeros_like(samples), torch.Generator("cpu").manual_seed(int(req.seed) & 0xFFFF_FFFF_FFFF_FFFF)
    manager = ctx.service("models")
    device = ctx.device
    with ExitStack() as stack:
        unet = stack.enter_context(manager.use(model.handle, device))
        stack.enter_context(patched(unet, model.patches))
        stack.enter_context(torch.inference_mode())
        hooks = tuple(stack.enter_context(h.attach(manager, unet, device)) for h in getattr(model, "hooks", ()))
        mask = latent.get("noise_mask")
        if mask is not None:
            mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(),
                                                   size=samples.shape[-2:], mode="bilinear")
            mask = mask.expand(samples.shape[0], -1, -1, -1).to(device) if mask.shape[0] == 1 else mask.to(device)
        negative = spread_control_to_uncond({"positive": positive, "negative": negative})["negative"]
        inputs = UNetInputs(model, unet, manager, device, next(unet.parameters()).dtype, stack)
        with small_work_threads(device, unet_work_elements(unet, tuple(samples.shape))):
            result = Sampler(ctx, model, unet, positive, negative, req, device, hooks, inputs).run(
                samples, noise, generator, mask)
    out = dict(latent)
    out["samples"] = result.cpu()
    return out
