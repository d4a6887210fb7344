"""What the sampling core needs from a ``MODEL`` value — the protocol every model family implements.

A MODEL (a UNet family's ``DiffusionModel``, a flow transformer's wrapper, …) provides:

* ``model_sampling`` (:class:`~nodegraph_nodes.sampling.model_sampling.ModelSampling`) and
  ``with_model_sampling(ms)`` (the ``ModelSampling*`` nodes return such a copy);
* ``sampling_patches`` (:class:`SamplingPatches`: CFG functions patched in by RescaleCFG, CFGNorm,
  CFGZeroStar, LatentApplyOperationCFG, …) and ``with_sampling_patches(p)``;
* ``latent_channels``, ``process_latent_in(x)`` / ``process_latent_out(x)`` (a LATENT's raw VAE
  latents ↔ the model's latent space) and ``latent_preview(x)`` (a cheap RGB image for previews);
* ``open_runner(ctx, latent_shape)``: a context manager that loads the network on ``ctx.device`` and
  yields a :class:`ModelRunner`.

A :class:`ModelRunner` evaluates the network once on a batch made of conditioning parts
(:class:`CondPart`: so many rows of the batch under one CONDITIONING entry) and returns the raw
network output; turning it into a denoised latent is the model sampling's job. How a family feeds a
CONDITIONING entry to its network (cross-attention states, pooled vectors, SDXL's size ids, adapters'
extra inputs) stays inside its runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ContextManager, Protocol

import torch

from nodegraph_nodes.sampling.model_sampling import ModelSampling


@dataclass(frozen=True)
class CondPart:
    """``rows`` rows of a model batch conditioned on one CONDITIONING entry (``cond`` tensor plus its
    ``extras`` dict); ``negative`` marks rows of the negative (unconditional) prompt."""

    cond: torch.Tensor
    extras: dict
    rows: int
    negative: bool = False


#: a CFG function: gets a dict with cond, uncond (noise directions), cond_scale, sigma, input,
#: cond_denoised, uncond_denoised, model_sampling; returns the noise direction (x - denoised)
CfgFunction = Callable[[dict], torch.Tensor]
#: a post-CFG function: gets a dict with denoised, cond_denoised, uncond_denoised, cond_scale, sigma,
#: input, model_sampling; returns the new denoised
PostCfgFunction = Callable[[dict], torch.Tensor]
#: a pre-CFG function: gets a dict with conds_out (the list [cond_denoised, uncond_denoised]; zeros for a
#: prediction not computed), cond_scale, sigma, timestep, input, model_sampling; returns the list the
#: guidance combines (ComfyUI's sampler_pre_cfg_function)
PreCfgFunction = Callable[[dict], list]


@dataclass(frozen=True)
class SamplingPatches:
    """How CFG combines the predictions: ``pre_cfg`` adjust the predictions in order before the
    combination (CFGGuider and BasicGuider apply them, as ComfyUI's ``sampling_function``),
    ``cfg_function`` replaces the combination (one; the last patch wins), ``post_cfg`` adjust the result
    in order. ``disable_cfg1_optimization``: compute the negative prediction even at cfg 1.

    ``model_patches``: patches on the network's calls for each run (step caching, torch.compile, FreeU,
    attention replacements: :class:`~nodegraph_nodes.sampling.run_patches.ModelPatch`, one per key).
    ``denoise_mask_function``: ``(sigma, mask, sigmas, model_sampling) -> mask``, the inpainting mask a
    step uses (DifferentialDiffusion)."""

    cfg_function: CfgFunction | None = None
    post_cfg: tuple[PostCfgFunction, ...] = ()
    disable_cfg1_optimization: bool = False
    pre_cfg: tuple[PreCfgFunction, ...] = ()
    model_patches: tuple = ()
    denoise_mask_function: Callable | None = None

    def with_cfg_function(self, fn: CfgFunction) -> "SamplingPatches":
        return replace(self, cfg_function=fn)

    def with_post_cfg(self, fn: PostCfgFunction, disable_cfg1_optimization: bool = False) -> "SamplingPatches":
        return replace(self, post_cfg=self.post_cfg + (fn,),
                       disable_cfg1_optimization=self.disable_cfg1_optimization or disable_cfg1_optimization)

    def with_pre_cfg(self, fn: PreCfgFunction, disable_cfg1_optimization: bool = False) -> "SamplingPatches":
        return replace(self, pre_cfg=self.pre_cfg + (fn,),
                       disable_cfg1_optimization=self.disable_cfg1_optimization or disable_cfg1_optimization)

    def with_model_patch(self, patch) -> "SamplingPatches":
        """One more model patch; it replaces one with the same ``key``."""
        return replace(self, model_patches=tuple(p for p in self.model_patches if p.key != patch.key) + (patch,))

    def with_denoise_mask_function(self, fn: Callable) -> "SamplingPatches":
        return replace(self, denoise_mask_function=fn)


class ModelRunner(Protocol):
    """One sampling run's handle on the loaded network."""

    device: str
    #: the dtype the network computes in (latents stay float32 between steps)
    dtype: torch.dtype

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        """Raw network output for the model input ``x_in`` (rows in the order of ``parts``)."""

    def begin_step(self, sigma: torch.Tensor, in_range: Callable[[float, float], bool]) -> None:
        """Called before each model evaluation; ``in_range(start, end)`` says whether ``sigma`` lies in
        that fraction of the schedule (0 = start, 1 = end)."""


class SamplingModel(Protocol):
    model_sampling: ModelSampling
    sampling_patches: SamplingPatches
    latent_channels: int

    def with_model_sampling(self, ms: ModelSampling) -> "SamplingModel": ...

    def with_sampling_patches(self, patches: SamplingPatches) -> "SamplingModel": ...

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor: ...

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor: ...

    def latent_preview(self, latent: torch.Tensor) -> torch.Tensor: ...

    def open_runner(self, ctx: Any, latent_shape: tuple) -> ContextManager[ModelRunner]: ...


def require_sampling_model(model: Any, where: str) -> SamplingModel:
    """``model`` if it implements the protocol, else a clear error naming the node input."""
    missing = [name for name in ("model_sampling", "open_runner", "process_latent_in", "with_model_sampling")
               if not hasattr(model, name)]
    if missing:
        raise TypeError(f"{where}: this MODEL ({type(model).__name__}) cannot be sampled by the sampling "
                        f"nodes (it lacks {', '.join(missing)})")
    return model


@dataclass
class Prediction:
    """What one guided model evaluation produced: the guided ``denoised`` latent and the prediction the
    guidance combined against (``uncond``: the negative's; zeros where none was computed), which the
    CFG++ samplers read."""

    denoised: torch.Tensor
    uncond: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
