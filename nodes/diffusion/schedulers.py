"""ComfyUI sampler / scheduler names → diffusers scheduler classes and options.

Only pairs diffusers really implements are offered: ``SAMPLER_NAMES`` lists the samplers available
here (``dpmpp_sde`` only with ``torchsde`` installed) and ``SCHEDULER_NAMES`` the sigma schedules.
``normal`` keeps the model's own scheduler config (so sampling equals the diffusers pipeline with
``Cls.from_config(pipe.scheduler.config)``); ``karras`` / ``exponential`` / ``beta`` set diffusers'
``use_*_sigmas``; ``simple`` and ``sgm_uniform`` use ``trailing`` timestep spacing, ``ddim_uniform``
``leading``. A pair the class does not support (``ddim`` + ``karras``) is refused with a clear message.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "ddpm": ("DDPMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}
_SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "simple": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading"},
}
#: Schedulers whose latents live in sigma space (x0 + σ·ε); the others use x_t = √ᾱ·x0 + √(1-ᾱ)·ε.
SIGMA_SPACE = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
               "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
               "DPMSolverSDEScheduler"}


def _available(name: str) -> bool:
    if name == "dpmpp_sde":
        return importlib.util.find_spec("torchsde") is not None
    if name == "beta":
        return importlib.util.find_spec("scipy") is not None
    return True


SAMPLER_NAMES = [n for n in _SAMPLERS if _available(n)]
SCHEDULER_NAMES = [n for n in _SCHEDULES if _available(n)]


class SchedulerChoiceError(ValueError):
    pass


def make_scheduler(base_config: dict, sampler_name: str, scheduler_name: str):
    """A fresh diffusers scheduler for a ComfyUI ``sampler_name`` × ``scheduler`` pair."""
    import diffusers

    if sampler_name not in _SAMPLERS or not _available(sampler_name):
        raise SchedulerChoiceError(f"sampler {sampler_name!r} is not available; choose one of {SAMPLER_NAMES}")
    if scheduler_name not in _SCHEDULES or not _available(scheduler_name):
        raise SchedulerChoiceError(f"scheduler {scheduler_name!r} is not available; choose one of {SCHEDULER_NAMES}")
    cls_name, options = _SAMPLERS[sampler_name]
    cls = getattr(diffusers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    overrides = dict(options)
    for key, value in _SCHEDULES[scheduler_name].items():
        if key not in params:
            raise SchedulerChoiceError(f"sampler {sampler_name!r} ({cls_name}) does not support the "
                                       f"{scheduler_name!r} schedule; use 'normal' or another sampler")
        overrides[key] = value
    config = {k: v for k, v in base_config.items() if k not in ("_class_name", "_diffusers_version")}
    if cls_name in ("DPMSolverMultistepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler") \
            and "lower_order_final" in params:
        overrides.setdefault("lower_order_final", True)
    return cls.from_config(config, **overrides)


def in_sigma_space(scheduler) -> bool:
    return type(scheduler).__name__ in SIGMA_SPACE
