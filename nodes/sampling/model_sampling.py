"""Model sampling: how a model's noise levels (sigmas) relate to its timesteps, and how its raw output
becomes a denoised latent. Every sampler works in sigma space (``x = x0 + sigma * noise`` for the
diffusion families, ``x = (1 - sigma) * x0 + sigma * noise`` for flow matching); a
:class:`ModelSampling` is the one place that knows which.

It is two parts (ComfyUI's ``model_sampling`` object, learned from its behaviour):

* a **noise schedule** — the table or formula of sigmas: :class:`DiscreteSchedule` (DDPM-trained UNets:
  1000 betas; ``zsnr`` rescales to zero terminal SNR), :class:`DistilledSchedule` (LCM's 50 of them),
  :class:`ContinuousEDMSchedule`, :class:`ContinuousVSchedule`, :class:`FlowSchedule` (SD3: shift with
  multiplier 1000; AuraFlow: multiplier 1) and :class:`FluxSchedule`;
* a **parameterization** — what the network predicts: ``eps``, ``v_prediction``, ``edm``, ``x0``,
  ``img_to_img``, ``lcm`` or ``flow`` (a velocity; ComfyUI's ``CONST``).

Interface (used by the sampling loop, the samplers and the schedulers): ``sigmas`` (the table,
ascending), ``sigma_min``/``sigma_max``, ``timestep(sigma)`` (what the network is given),
``sigma(timestep)``, ``percent_to_sigma(p)``, ``calculate_input`` (scale the noisy latent for the
network), ``calculate_denoised`` (network output → x0), ``noise_scaling`` (latent + noise at a sigma)
and ``inverse_noise_scaling``. The builders at the end make the settings of the families and of
ComfyUI's ``ModelSampling*`` nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

PREDICTIONS = ("eps", "v_prediction", "edm", "x0", "img_to_img", "lcm", "flow")


def _view(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-row sigma shaped to broadcast over ``ndim`` dimensions (a scalar stays a scalar)."""
    sigma = torch.as_tensor(sigma)
    if sigma.numel() == 1:
        return sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


# -- noise schedules ---------------------------------------------------------------------------------

def beta_schedule(kind: str, timesteps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2,
                  cosine_s: float = 8e-3) -> torch.Tensor:
    """The betas of a DDPM schedule, in float64, under the LDM names: ``linear`` (linear in sqrt(beta):
    diffusers' ``scaled_linear``), ``sqrt_linear`` (linear in beta: diffusers' ``linear``), ``sqrt``,
    ``cosine`` and ``squaredcos_cap_v2``."""
    if kind == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    if kind == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    if kind == "sqrt":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64) ** 0.5
    if kind == "cosine":
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        return torch.clamp(1 - alphas[1:] / alphas[:-1], min=0, max=0.999)
    if kind == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999) for i in range(timesteps)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; use linear, sqrt_linear, sqrt, cosine or squaredcos_cap_v2")


def zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Rescale a sigma table so that the last step has (almost) zero signal (Lin et al. 2023)."""
    sqrt_ac = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * (first / (first - last))
    alphas_cumprod = sqrt_ac ** 2
    alphas_cumprod[-1] = 4.8973451890853435e-08
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """A table of ``len(sigmas)`` training noise levels (index = timestep). ``sigma(t)`` interpolates
    log-sigma linearly; ``timestep(sigma)`` is the index of the nearest table entry."""

    sigmas: torch.Tensor  # ascending; kept as float32 (the log is taken at the given precision first)
    log_sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_sigmas", self.sigmas.log().float())
        object.__setattr__(self, "sigmas", self.sigmas.float())

    @classmethod
    def from_betas(cls, betas: torch.Tensor, zsnr: bool = False) -> "DiscreteSchedule":
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = zero_terminal_snr(sigmas)
        return cls(sigmas)

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


@dataclass(frozen=True, eq=False)
class DistilledSchedule(DiscreteSchedule):
    """LCM's schedule: every ``skip``-th entry of a 1000-step table (50 of them); timesteps stay on the
    1000-step scale (``index * skip + skip - 1``)."""

    skip: int = 20

    @classmethod
    def from_full(cls, full: DiscreteSchedule, original_timesteps: int = 50) -> "DistilledSchedule":
        skip = full.num_timesteps // original_timesteps
        picked = torch.zeros(original_timesteps, dtype=torch.float32)
        for x in range(original_timesteps):
            picked[original_timesteps - 1 - x] = full.sigmas[full.num_timesteps - 1 - x * skip]
        return cls(picked, skip=skip)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip + (self.skip - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        t = ((timestep.float().to(self.log_sigmas.device) - (self.skip - 1)) / self.skip).float()
        return super().sigma(t).to(timestep.device)


@dataclass(frozen=True, eq=False)
class ContinuousEDMSchedule:
    """Continuous sigmas in [sigma_min, sigma_max]; the network's time is ``0.25 * log(sigma)``."""

    sigma_lo: float = 0.002
    sigma_hi: float = 120.0
    sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", torch.linspace(math.log(self.sigma_lo), math.log(self.sigma_hi), 1000).exp())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.as_tensor(sigma).log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(float(self.sigmas[0]))
        return math.exp((math.log(float(self.sigmas[-1])) - log_min) * (1.0 - percent) + log_min)


@dataclass(frozen=True, eq=False)
class ContinuousVSchedule(ContinuousEDMSchedule):
    """Continuous sigmas whose network time is ``atan(sigma) * 2 / pi``."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma).atan() / math.pi * 2

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep) * math.pi / 2).tan()


def time_snr_shift(alpha: float, t):
    """SD3's timestep shift: ``alpha * t / (1 + (alpha - 1) * t)``."""
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


def flux_time_shift(mu: float, sigma: float, t):
    """Flux's exponential shift: ``e^mu / (e^mu + (1/t - 1)^sigma)``."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


@dataclass(frozen=True, eq=False)
class FlowSchedule:
    """Flow matching with a shifted time: sigma = shift(t), network time = ``sigma * multiplier``."""

    shift: float = 1.0
    multiplier: float = 1000.0
    timesteps: int = 1000
    sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        ts = (torch.arange(1, self.timesteps + 1, 1) / self.timesteps) * self.multiplier
        object.__setattr__(self, "sigmas", self.sigma(ts))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma) * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return time_snr_shift(self.shift, torch.as_tensor(timestep) / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_snr_shift(self.shift, 1.0 - percent))


@dataclass(frozen=True, eq=False)
class FluxSchedule:
    """Flux's flow schedule: sigma = flux_time_shift(shift, 1, t); the network time is sigma itself."""

    shift: float = 1.15
    timesteps: int = 10000
    sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", self.sigma(torch.arange(1, self.timesteps + 1, 1) / self.timesteps))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return flux_time_shift(self.shift, 1.0, torch.as_tensor(timestep))

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, 1.0, 1.0 - percent))


# -- the whole ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ModelSampling:
    """A noise schedule plus a parameterization (see the module docstring)."""

    schedule: Any
    prediction: str = "eps"
    sigma_data: float = 1.0
    #: flow models trained with noise of this standard deviation (HiDream-O1 in pixel space: 8.0; ComfyUI's
    #: ModelNoiseScale sets it): ``noise_scaling`` scales the unit noise by it
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {self.prediction!r}; use one of {PREDICTIONS}")

    # schedule
    @property
    def sigmas(self) -> torch.Tensor:
        return self.schedule.sigmas

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.schedule.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.schedule.sigmas[-1]

    @property
    def is_flow(self) -> bool:
        """Flow matching (x = (1-sigma) x0 + sigma noise): the samplers' RF variants and logit half-log-SNR."""
        return self.prediction == "flow"

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.schedule.timestep(sigma)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.schedule.sigma(timestep)

    def percent_to_sigma(self, percent: float) -> float:
        return self.schedule.percent_to_sigma(percent)

    # parameterization
    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The network's input for the noisy latent ``x`` at ``sigma``."""
        if self.prediction in ("flow", "img_to_img"):
            return x
        sigma = _view(sigma, x.ndim)
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        """x0 from the network's output for the noisy latent ``model_input`` at ``sigma``."""
        p = self.prediction
        if p in ("x0", "img_to_img"):
            return model_output
        s = _view(sigma, model_output.ndim)
        if p in ("eps", "flow"):
            return model_input - model_output * s
        sd2 = self.sigma_data ** 2
        if p == "v_prediction":
            return model_input * sd2 / (s ** 2 + sd2) - model_output * s * self.sigma_data / (s ** 2 + sd2) ** 0.5
        if p == "edm":
            return model_input * sd2 / (s ** 2 + sd2) + model_output * s * self.sigma_data / (s ** 2 + sd2) ** 0.5
        # lcm: eps → x0, then LCM's boundary condition at its scaled timestep
        sigma = torch.as_tensor(sigma)
        timestep = self.timestep(sigma).view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        x0 = model_input - model_output * sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        scaled = timestep * 10.0
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / (scaled ** 2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * model_input

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """The noisy latent at ``sigma`` from clean ``latent_image`` and unit ``noise`` (``max_denoise``:
        sampling starts at the top of the schedule, so the noise gets the full variance ``1 + sigma^2``)."""
        s = _view(sigma, noise.ndim)
        if self.prediction == "flow":
            if self.noise_scale != 1.0:
                noise = noise * self.noise_scale
            return s * noise + (1.0 - s) * latent_image
        noise = noise * torch.sqrt(1.0 + s ** 2.0) if max_denoise else noise * s
        return noise + latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        if self.prediction == "flow":
            return latent / (1.0 - _view(sigma, latent.ndim))
        return latent

    def max_denoise(self, sigmas: torch.Tensor) -> bool:
        """Whether a run over ``sigmas`` starts from pure noise (its first sigma is the schedule's top)."""
        top, first = float(self.sigma_max), float(sigmas[0])
        return math.isclose(top, first, rel_tol=1e-05) or first > top


# -- builders ----------------------------------------------------------------------------------------

#: ComfyUI's default discrete settings (Stable Diffusion 1.x/2.x/XL): LDM "linear" 0.00085 → 0.012
SD_LINEAR_START, SD_LINEAR_END = 0.00085, 0.012


def discrete(prediction: str = "eps", beta_kind: str = "linear", linear_start: float = SD_LINEAR_START,
             linear_end: float = SD_LINEAR_END, timesteps: int = 1000, zsnr: bool = False,
             betas: torch.Tensor | None = None) -> ModelSampling:
    """A DDPM-trained model (ComfyUI's ``ModelSamplingDiscrete``); ``prediction="lcm"`` uses LCM's
    distilled 50-step table."""
    if betas is None:
        betas = beta_schedule(beta_kind, timesteps, linear_start, linear_end)
    schedule = DiscreteSchedule.from_betas(betas.to(torch.float64), zsnr=zsnr)
    if prediction == "lcm":
        schedule = DistilledSchedule.from_full(schedule)
    return ModelSampling(schedule, prediction)


_DIFFUSERS_BETAS = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}
_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v_prediction", "sample": "x0"}


def from_scheduler_config(config: dict) -> ModelSampling:
    """The model sampling a diffusers ``scheduler_config.json`` describes (beta schedule, prediction type,
    zero terminal SNR)."""
    kind = config.get("beta_schedule", "scaled_linear")
    if kind not in _DIFFUSERS_BETAS and config.get("trained_betas") is None:
        raise ValueError(f"scheduler config: beta_schedule {kind!r} is not supported; "
                         f"use one of {sorted(_DIFFUSERS_BETAS)} or trained_betas")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _DIFFUSERS_PREDICTIONS:
        raise ValueError(f"scheduler config: prediction_type {prediction!r} is not supported; "
                         f"use one of {sorted(_DIFFUSERS_PREDICTIONS)}")
    betas = config.get("trained_betas")
    return discrete(_DIFFUSERS_PREDICTIONS[prediction], _DIFFUSERS_BETAS.get(kind, "linear"),
                    float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02)),
                    int(config.get("num_train_timesteps", 1000)), bool(config.get("rescale_betas_zero_snr", False)),
                    torch.tensor(betas, dtype=torch.float64) if betas is not None else None)


def discrete_settings(config: dict | None) -> dict:
    """The beta schedule of a diffusers scheduler config as :func:`discrete` keyword arguments (SD's
    defaults when there is none), for ModelSamplingDiscrete's change of prediction type."""
    if not config:
        return {}
    kind = config.get("beta_schedule", "scaled_linear")
    betas = config.get("trained_betas")
    return {"beta_kind": _DIFFUSERS_BETAS.get(kind, "linear"), "linear_start": float(config.get("beta_start", 0.0001)),
            "linear_end": float(config.get("beta_end", 0.02)),
            "timesteps": int(config.get("num_train_timesteps", 1000)),
            "betas": torch.tensor(betas, dtype=torch.float64) if betas is not None else None}


def continuous_edm(prediction: str = "v_prediction", sigma_min: float = 0.002, sigma_max: float = 120.0,
                   sigma_data: float = 1.0) -> ModelSampling:
    return ModelSampling(ContinuousEDMSchedule(sigma_min, sigma_max), prediction, sigma_data)


def continuous_v(sigma_min: float = 0.03, sigma_max: float = 500.0, sigma_data: float = 1.0) -> ModelSampling:
    return ModelSampling(ContinuousVSchedule(sigma_min, sigma_max), "v_prediction", sigma_data)


def sd3_flow(shift: float = 3.0, multiplier: float = 1000.0) -> ModelSampling:
    """SD3-style flow matching (ComfyUI's ``ModelSamplingSD3``; AuraFlow: ``multiplier=1``)."""
    return ModelSampling(FlowSchedule(shift, multiplier), "flow")


def flux_flow(shift: float = 1.15) -> ModelSampling:
    return ModelSampling(FluxSchedule(shift), "flow")


def flux_shift(width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's resolution-dependent shift: linear in the number of 2×2 latent patches between 256 (base)
    and 4096 (max)."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return (width * height / (8 * 8 * 2 * 2)) * slope + (base_shift - slope * 256)
