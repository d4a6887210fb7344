"""ComfyUI's ``comfy.samplers`` as far as packs read it: the sampler and scheduler names
(``KSampler.SAMPLERS`` / ``SCHEDULERS``, the lists our KSampler accepts). Sampling internals
(``CFGGuider``, ``sampler_object``, …) are placeholders."""

from __future__ import annotations

from typing import Any

from nodegraph.comfy_compat.host import HOST
from .._attrs import missing_attribute

#: ComfyUI's lists (COMFY_COMPAT §8), used when no KSampler is registered
COMFY_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
COMFY_SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                    "linear_quadratic", "kl_optimal"]


def _choices(name: str, fallback: list[str]) -> list[str]:
    registry = HOST.registry
    cls = registry.get("KSampler") if registry is not None else None
    spec = cls.INPUTS.get(name) if cls is not None else None
    return list(spec.current_choices()) if spec is not None else list(fallback)


SAMPLER_NAMES = KSAMPLER_NAMES = _choices("sampler_name", COMFY_SAMPLERS)
SCHEDULER_NAMES = _choices("scheduler", COMFY_SCHEDULERS)


class KSampler:
    SAMPLERS = SAMPLER_NAMES
    SCHEDULERS = SCHEDULER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from nodegraph.comfy_compat.unsupported import NotSupportedByNodegraph

        raise NotSupportedByNodegraph("comfy.samplers.KSampler()")


def __getattr__(name: str) -> Any:
    return missing_attribute("comfy.samplers", name)
