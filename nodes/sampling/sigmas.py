"""Sigma schedules: the noise levels a sampler walks through, highest first, usually ending at 0.

The nine schedulers ComfyUI's ``KSampler``/``BasicScheduler`` offer (``SCHEDULER_NAMES``, same order)
are computed from a :class:`~nodegraph_nodes.sampling.model_sampling.ModelSampling`; the others take
explicit sigma bounds (Karras, exponential, polyexponential, VP, Laplace, Align Your Steps). The
formulas are ComfyUI's / k-diffusion's (learned from their behaviour; the tests hold their values).

:func:`ksampler_sigmas` is the whole KSampler rule: total steps from ``denoise``, the samplers that
drop the penultimate sigma, and KSamplerAdvanced's start/end step window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nodegraph_nodes.sampling.model_sampling import ModelSampling


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


# -- schedulers on a model's sampling -----------------------------------------------------------------

def simple(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Evenly strided entries of the model's sigma table, from the top."""
    table = ms.sigmas
    stride = len(table) / steps
    return torch.FloatTensor([float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


def ddim_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every ``len(table) // steps``-th table entry from index 1 (DDIM's leading spacing)."""
    table = ms.sigmas
    x = 1
    if math.isclose(float(table[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    stride = max(len(table) // steps, 1)
    while x < len(table):
        sigs.append(float(table[x]))
        x += stride
    return torch.FloatTensor(sigs[::-1])


def normal(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced between the model's top and bottom (``sgm``: the bottom excluded)."""
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(t)) for t in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.FloatTensor(sigs)


def sgm_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    return normal(ms, steps, sgm=True)


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Table entries at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024)."""
    import scipy.stats

    total = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta_) * total)
    sigs: list[float] = []
    last = -1
    for t in ts:
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic(ms: ModelSampling, steps: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: linear for the first half, then quadratic; scaled by the model's top sigma."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quad_coef = step_diff / (linear_steps * quadratic_steps ** 2)
        lin_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps ** 2)
        const = quad_coef * (linear_steps ** 2)
        quadratic = [quad_coef * (i ** 2) + lin_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * ms.sigma_max.cpu()


# -- schedulers on explicit bounds ----------------------------------------------------------------------

def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """A polynomial in log sigma."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """A continuous VP schedule."""
    t = torch.linspace(1, eps_s, n)
    return _append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta_: float = 0.5) -> torch.Tensor:
    """Tiankai et al. (2024): Laplace-distributed log sigmas (no trailing zero, as ComfyUI)."""
    x = torch.linspace(0, 1, n)
    lmb = mu - beta_ * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in atan(sigma). One step is ``[sigma_max, 0]`` (ComfyUI's formula divides 0 by 0
    there and returns NaN)."""
    if n == 1:
        return torch.FloatTensor([sigma_max, 0.0])
    idx = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = idx.new_zeros(n + 1)
    sigmas[:-1] = (idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan_()
    return sigmas


def sd_turbo(ms: ModelSampling, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SD Turbo's timesteps 999, 899, …, 99 (from ``10 - int(10 * denoise)``)."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    sigmas = ms.sigma(timesteps)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


#: Align Your Steps' optimised 10-step noise levels (NVIDIA, 2024)
AYS_NOISE_LEVELS = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def _loglinear_interp(values: list[float], num: int) -> np.ndarray:
    xs = np.linspace(0, 1, len(values))
    ys = np.log(values[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


def align_your_steps(model_type: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Align Your Steps: the 10-step levels, log-linearly resampled to ``steps``; the last set to 0."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.FloatTensor([])
        total = round(steps * denoise)
    levels = AYS_NOISE_LEVELS[model_type][:]
    if steps + 1 != len(levels):
        levels = _loglinear_interp(levels, steps + 1)
    levels = levels[-(total + 1):]
    levels[-1] = 0
    return torch.FloatTensor(levels)


# -- by name -----------------------------------------------------------------------------------------

_ON_MODEL = {"simple": simple, "sgm_uniform": sgm_uniform, "ddim_uniform": ddim_uniform, "beta": beta,
             "normal": normal, "linear_quadratic": linear_quadratic}
_ON_BOUNDS = {"karras": karras, "exponential": exponential, "kl_optimal": kl_optimal}

#: ComfyUI's scheduler names, in its order
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


class SchedulerError(ValueError):
    pass


def calculate_sigmas(ms: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """``steps`` steps of the named scheduler on the model's sampling (``steps + 1`` sigmas, mostly)."""
    if scheduler in _ON_MODEL:
        return _ON_MODEL[scheduler](ms, steps)
    if scheduler in _ON_BOUNDS:
        return _ON_BOUNDS[scheduler](n=steps, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max))
    raise SchedulerError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULER_NAMES}")


def basic_scheduler(ms: ModelSampling, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """BasicScheduler: with ``denoise < 1`` the last ``steps`` steps of ``int(steps / denoise)``."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.FloatTensor([])
        total = int(steps / denoise)
    return calculate_sigmas(ms, scheduler, total).cpu()[-(steps + 1):]


#: KSampler computes one step more and drops the penultimate sigma for these samplers
DISCARD_PENULTIMATE_SIGMA = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


@dataclass(frozen=True)
class StepWindow:
    """KSamplerAdvanced's part of the schedule: steps ``[start, end)``; ``force_full_denoise`` sets the
    last sigma of a cut schedule to 0."""

    start: int | None = None
    end: int | None = None
    force_full_denoise: bool = False


def ksampler_sigmas(ms: ModelSampling, sampler_name: str, scheduler: str, steps: int, denoise: float = 1.0,
                    window: StepWindow = StepWindow()) -> torch.Tensor | None:
    """The sigmas KSampler samples over, or ``None`` when the window starts past the end (the latent
    is returned unchanged)."""

    def compute(n: int) -> torch.Tensor:
        if sampler_name in DISCARD_PENULTIMATE_SIGMA:
            sigmas = calculate_sigmas(ms, scheduler, n + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]])
        return calculate_sigmas(ms, scheduler, n)

    if denoise is None or denoise > 0.9999:
        sigmas = compute(steps)
    elif denoise <= 0.0:
        sigmas = torch.FloatTensor([])
    else:
        sigmas = compute(int(steps / denoise))[-(steps + 1):]
    if window.end is not None and window.end < len(sigmas) - 1:
        sigmas = sigmas[:window.end + 1].clone()
        if window.force_full_denoise:
            sigmas[-1] = 0
    if window.start is not None:
        if window.start < len(sigmas) - 1:
            sigmas = sigmas[window.start:]
        else:
            return None
    return sigmas


def split_at(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SplitSigmas: the first ``step`` steps and the rest (they share the sigma at ``step``)."""
    return sigmas[:step + 1], sigmas[step:]


def split_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SplitSigmasDenoise: the low part holds ``round(steps * denoise)`` steps."""
    steps = max(sigmas.shape[-1] - 1, 0)
    total = round(steps * denoise)
    return sigmas[:-total], sigmas[-(total + 1):]


def flip(sigmas: torch.Tensor) -> torch.Tensor:
    """FlipSigmas: reversed; a leading 0 becomes 0.0001."""
    if len(sigmas) == 0:
        return sigmas
    sigmas = sigmas.flip(0).clone()
    if sigmas[0] == 0:
        sigmas[0] = 0.0001
    return sigmas


def extend_intermediate(sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                        spacing: str) -> torch.Tensor:
    """ExtendIntermediateSigmas: ``steps - 1`` extra sigmas inside each step whose sigma lies in
    ``[end_at_sigma, start_at_sigma]`` (``start_at_sigma < 0``: no upper bound)."""
    if start_at_sigma < 0:
        start_at_sigma = float("inf")
    shape = {"linear": lambda x: x, "cosine": lambda x: torch.sin(x * math.pi / 2),
             "sine": lambda x: 1 - torch.cos(x * math.pi / 2)}[spacing]
    fractions = shape(torch.linspace(0, 1, steps + 1)[1:-1])
    out: list[float] = []
    for i in range(len(sigmas) - 1):
        cur, nxt = sigmas[i], sigmas[i + 1]
        out.append(float(cur))
        if end_at_sigma <= cur <= start_at_sigma:
            out.extend((fractions * (nxt - cur) + cur).tolist())
    if len(sigmas) > 0:
        out.append(float(sigmas[-1]))
    return torch.FloatTensor(out)


def parse_manual(text: str) -> torch.Tensor:
    """ManualSigmas: every number in the text (commas, spaces, signs and decimals as written)."""
    import re

    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)
    if not numbers:
        raise ValueError(f"no numbers in sigmas {text!r}; write them like '1, 0.5, 0.1'")
    return torch.FloatTensor([float(n) for n in numbers])
