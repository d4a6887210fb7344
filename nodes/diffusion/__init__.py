"""Stable Diffusion 1.x/2.x/SDXL in ComfyUI's node names: loaders, CLIP text encoding, conditioning,
latents/VAE, latent arithmetic and operations, KSampler, IP-Adapter image prompts, ControlNet,
inpainting / InstructPix2Pix conditioning, Canny edges, and the helpers
behind them (checkpoint conversion, prompt weights, LoRA, schedulers, the sampling loop).

Registered through the ``nodegraph.nodes`` entry point ``diffusion`` (``pyproject.toml``), like any pack:
:func:`node_modules` names the modules whose node classes the registry takes.
"""

from __future__ import annotations

from types import ModuleType


def node_modules() -> list[ModuleType]:
    """The modules of this family that hold node classes."""
    from . import (canny, clip_text_encode, conditioning, controlnet_nodes, image_prompt, inpaint_conditioning, ksampler,
                   latent, latent_ops, loaders, lotus)

    return [loaders, clip_text_encode, conditioning, latent, latent_ops, ksampler, image_prompt, controlnet_nodes,
            inpaint_conditioning, canny, lotus]
