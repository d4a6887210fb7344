"""Qwen-Image InstantX ControlNets (``controlnet/Qwen-Image-InstantX-ControlNet-Union.safetensors``,
``…-Inpainting.safetensors``): reading the file (ControlNetLoader) and evaluating the hints that
ControlNetApplyAdvanced / ControlNetInpaintingAliMamaApply put on CONDITIONING inside a Qwen-Image run.

The files use diffusers' ``QwenImageControlNetModel`` names (``img_in``, ``txt_in``, ``transformer_blocks.N``,
``controlnet_blocks.N``, ``controlnet_x_embedder``); the config is read off the shapes. An inpainting
ControlNet takes the mask as one more latent channel (``controlnet_x_embedder`` 68 = 4·(16 + 1) wide; ComfyUI's
``concat_mask``).

Per network call, as ComfyUI's ControlNet: the hint's packed latent (:mod:`.latent_control`; model space is
Wan 2.1's mean/std). The ControlNet runs on the image tokens, the text and the timestep of
the conditioning entry it rides on, and its block outputs times ``strength`` (summed over chained
ControlNets active at this step) are added after the transformer's blocks — block ``i`` gets output
``i // ceil(blocks / control blocks)`` (diffusers' rule; ComfyUI's equals it for the 60-block model) — to
the image tokens only (Qwen-Image-Edit reference tokens get nothing).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.latent_control import LatentControl, per_block

MARKERS = ("controlnet_x_embedder.weight", "controlnet_blocks.0.weight", "img_in.weight")
#: latent channels of Qwen-Image (Wan 2.1 VAE); an inpainting ControlNet adds one mask channel
LATENT_CHANNELS = 16


def is_qwen_controlnet(keys) -> bool:
    keys = set(keys)
    return all(m in keys for m in MARKERS) and "transformer_blocks.0.img_mod.1.weight" in keys


def controlnet_config(sd: dict) -> dict:
    """``QwenImageControlNetModel`` config from the weights' shapes."""
    from nodegraph_nodes.dit.qwen_image import rope_axes

    try:
        img_in = sd["img_in.weight"]
        head_dim = int(sd["transformer_blocks.0.attn.norm_q.weight"].shape[0])
        txt_in = sd["txt_in.weight"]
        embedder = sd["controlnet_x_embedder.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Qwen-Image ControlNet weights lack {exc.args[0]}") from None
    inner, in_channels = int(img_in.shape[0]), int(img_in.shape[1])
    return {"patch_size": 2, "in_channels": in_channels, "out_channels": in_channels // 4,
            "num_layers": count_indices(sd, r"transformer_blocks\.(\d+)\."), "attention_head_dim": head_dim,
            "num_attention_heads": inner // head_dim, "joint_attention_dim": int(txt_in.shape[1]),
            "axes_dims_rope": rope_axes(head_dim), "extra_condition_channels": int(embedder.shape[1]) - in_channels}


def build_controlnet(sd: dict, dtype: torch.dtype, what: str):
    from diffusers import QwenImageControlNetModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.qwen_image import refuse_integer_weights

    refuse_integer_weights(sd, what)
    return _instantiate(QwenImageControlNetModel, controlnet_config(sd), sd, dtype, what)


def concat_mask(module) -> bool:
    """An inpainting ControlNet: the mask rides as one more latent channel."""
    return int(module.config.extra_condition_channels) == 4


class QwenControl(LatentControl):
    """One run's evaluation of the ControlNet hints on a Qwen-Image model's conditioning entries."""

    family = "qwen_image"

    def __init__(self, manager, device: str, stack: ExitStack, process_in: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(manager, device, stack, process_in, LATENT_CHANNELS)

    def block_samples(self, hint, xs: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
                      latent_hw: tuple[int, int], img_shape: tuple[int, int, int], refs: int,
                      blocks: int) -> list[torch.Tensor] | None:
        """The residuals of ``hint``'s chain for each of the ``blocks`` transformer blocks (``None`` when no
        ControlNet of the chain acts at this step) for the packed image tokens ``xs`` of a latent of
        ``latent_hw`` (before padding); ``refs`` reference tokens follow the image tokens."""
        total: list[torch.Tensor] | None = None
        for h in self.active(hint):
            net = self.net(h)
            dtype = next(net.parameters()).dtype
            extra = int(net.config.extra_condition_channels) // 4
            cond = self.cond(h, extra, *latent_hw, xs.shape[0], dtype)
            samples = net(hidden_states=xs.to(dtype), controlnet_cond=cond, conditioning_scale=float(h.strength),
                          encoder_hidden_states=states.to(dtype), encoder_hidden_states_mask=mask,
                          timestep=t.to(dtype), img_shapes=[[img_shape]] * xs.shape[0], return_dict=False)
            spread = per_block(samples, blocks)
            total = spread if total is None else [a + b for a, b in zip(total, spread)]
        if total is None:
            return None
        if refs:
            total = [torch.nn.functional.pad(s, (0, 0, 0, refs)) for s in total]
        return [s.to(xs.dtype) for s in total]
