"""The sigma-space sampling core every model family uses, and ComfyUI's custom-sampling nodes.

Core (no nodes): :mod:`.model_sampling` (sigma ↔ timestep, parameterizations, the ``ModelSampling*``
settings), :mod:`.sigmas` (schedulers), :mod:`.samplers` with :mod:`.dpm_solver`, :mod:`.unipc`,
:mod:`.sa_solver`, :mod:`.deis` (sampler step functions), :mod:`.noise`, :mod:`.model` (the protocol a
MODEL implements), :mod:`.cond_batch` and :mod:`.guiders` (conditioning and guidance), :mod:`.run` (one
sampling run). Nodes: :mod:`.custom_sampling` (SamplerCustom/Advanced, noise, guiders, KSamplerSelect),
:mod:`.scheduler_nodes` (schedulers and sigma tools), :mod:`.sampler_nodes` (the ``Sampler…`` option
nodes), :mod:`.model_patches` (``ModelSampling*``, RescaleCFG, CFGNorm, CFGZeroStar). Per-run patches on the
network (:mod:`.run_patches`): :mod:`.step_cache` (EasyCache, LazyCache), :mod:`.freeu` (FreeU, FreeU_V2),
:mod:`.attention_guidance` (PerturbedAttentionGuidance, SelfAttentionGuidance), :mod:`.speed_patches`
(TorchCompileModel, ModelAttentionBackend), :mod:`.differential_diffusion`, :mod:`.attention_multiply`
(UNetTemporalAttentionMultiply), :mod:`.context_windows` (ContextWindowsManual).

Registered through the ``nodegraph.nodes`` entry point ``sampling`` (``pyproject.toml``), like any pack.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import (attention_guidance, attention_multiply, context_windows, custom_sampling, differential_diffusion,
                   freeu, model_patches, sampler_nodes, scheduler_nodes, speed_patches, step_cache)

    return [custom_sampling, scheduler_nodes, sampler_nodes, model_patches, step_cache, freeu, attention_guidance,
            speed_patches, differential_diffusion, attention_multiply, context_windows]
