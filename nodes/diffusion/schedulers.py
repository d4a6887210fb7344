"""ComfyUI sampler names → the diffusers scheduler classes that implement them, for KSampler's
``normal`` scheduler on models that carry a diffusers scheduler config (see :mod:`.ksampler`).

``make_scheduler`` builds the class from the model's own config (``Cls.from_config(config)``, so the
class's default timestep spacing applies when the config names none), which is exactly what
diffusers' ``StableDiffusionPipeline`` samples with. Every other scheduler name, and the samplers
diffusers does not implement, go through the sampling core (:mod:`nodegraph_nodes.sampling`).
"""

from __future__ import annotations

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

#: sampler names KSampler samples with diffusers' own scheduler under ``normal``
PIPELINE_SAMPLERS = frozenset(_SAMPLERS)

#: Schedulers whose latents live in sigma space (x0 + σ·ε); the others use x_t = √ᾱ·x0 + √(1-ᾱ)·ε.
SIGMA_SPACE = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
               "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
               "DPMSolverSDEScheduler"}


class SchedulerChoiceError(ValueError):
    pass


def make_scheduler(base_config: dict, sampler_name: str, scheduler_name: str = "normal"):
    """A fresh diffusers scheduler for a ComfyUI ``sampler_name`` on the model's own schedule."""
    import diffusers

    if sampler_name not in _SAMPLERS:
        raise SchedulerChoiceError(f"sampler {sampler_name!r} has no diffusers scheduler; "
                                   f"choose one of {sorted(_SAMPLERS)}")
    if scheduler_name != "normal":
        raise SchedulerChoiceError(f"the diffusers path samples the model's own ('normal') schedule, "
                                   f"not {scheduler_name!r}")
    cls_name, options = _SAMPLERS[sampler_name]
    cls = getattr(diffusers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    overrides = dict(options)
    config = {k: v for k, v in base_config.items() if k not in ("_class_name", "_diffusers_version")}
    if cls_name in ("DPMSolverMultistepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler") \
            and "lower_order_final" in params:
        overrides.setdefault("lower_order_final", True)
    return cls.from_config(config, **overrides)


def in_sigma_space(scheduler) -> bool:
    return type(scheduler).__name__ in SIGMA_SPACE
