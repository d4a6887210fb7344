"""Qwen-Image InstantX ControlNets (``controlnet/Qwen-Image-InstantX-ControlNet-Union.safetensors``,
``…-Inpainting.safetensors``): reading the file (ControlNetLoader) and evaluating the hints that
ControlNetApplyAdvanced / ControlNetInpaintingAliMamaApply put on CONDITIONING inside a Qwen-Image run.

The files use diffusers' ``QwenImageControlNetModel`` names (``img_in``, ``txt_in``, ``transformer_blocks.N``,
``controlnet_blocks.N``, ``controlnet_x_embedder``); the config is read off the shapes. An inpainting
ControlNet takes the mask as one more latent channel (``controlnet_x_embedder`` 68 = 4·(16 + 1) wide; ComfyUI's
``concat_mask``).

Per network call, as ComfyUI's ControlNet: the hint image (``[B, C, H, W]`` in 0..1) is resized
(``nearest-exact``, centre crop) to the latent's pixel size, encoded with the apply node's VAE and brought to
model space (Wan 2.1 mean/std); the extra channels (the inpaint node's ``1 - mask``, ones when an inpainting
ControlNet gets none) are resized the same way to the latent size and concatenated; the result is padded to
even sides and packed in 2×2 patches. The ControlNet runs on the image tokens, the text and the timestep of
the conditioning entry it rides on, and its block outputs times ``strength`` (summed over chained
ControlNets active at this step) are added after the transformer's blocks — block ``i`` gets output
``i // ceil(blocks / control blocks)`` (diffusers' rule; ComfyUI's equals it for the 60-block model) — to
the image tokens only (Qwen-Image-Edit reference tokens get nothing).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any, Callable

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices

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


class _EncodeContext:
    """What ``vae_encode`` needs of a node context: the model manager and the run's device."""

    def __init__(self, manager, device: str):
        self._manager = manager
        self.device = device

    def service(self, name: str):
        if name != "models":
            raise KeyError(name)
        return self._manager


class QwenControl:
    """One run's evaluation of the ControlNet hints on a Qwen-Image model's conditioning entries."""

    def __init__(self, manager, device: str, stack: ExitStack, process_in: Callable[[torch.Tensor], torch.Tensor]):
        self.manager = manager
        self.device = device
        self.stack = stack
        self.process_in = process_in
        self.in_range: Callable[[float, float], bool] = lambda start, end: True
        self._nets: dict[int, Any] = {}
        self._conds: dict[tuple, torch.Tensor] = {}

    def begin_step(self, in_range: Callable[[float, float], bool]) -> None:
        self.in_range = in_range

    def _net(self, hint):
        if hint.net.family != "qwen_image":
            raise ValueError(f"ControlNet {hint.net.name} is a {hint.net.family} ControlNet; this MODEL is Qwen-Image")
        key = id(hint.net.handle)
        if key not in self._nets:
            self._nets[key] = self.stack.enter_context(self.manager.use(hint.net.handle, self.device))
        return self._nets[key]

    def _cond(self, hint, net, h: int, w: int, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """The hint's packed latent ``[rows, tokens, 4·(16 + extra)]`` for an ``h``×``w`` latent."""
        key = (id(hint), h, w, rows)
        if key not in self._conds:
            from nodegraph_nodes.diffusion.latent import vae_encode
            from nodegraph_nodes.dit.model import pack_latents
            from nodegraph_nodes.dit.runner_common import pad_even
            from nodegraph_nodes.image.operations import common_upscale

            from nodegraph_nodes.diffusion.control_run import fit_rows

            if hint.vae is None:
                raise ValueError(f"ControlNet {hint.net.name} works on latents: connect a VAE to the apply node")
            scale = int(getattr(hint.vae, "scale_factor", 8))
            image = common_upscale(hint.image.float(), w * scale, h * scale, "nearest-exact", "center")
            latent = self.process_in(vae_encode(_EncodeContext(self.manager, self.device), hint.vae,
                                                image.movedim(1, -1)).float())
            if latent.ndim == 5:
                latent = latent[:, :, 0]
            extra = int(net.config.extra_condition_channels) // 4
            parts = [latent]
            if extra:
                concat = list(hint.extra_concat) or [torch.ones(1, 1, 1, 1)]
                for c in concat:
                    c = common_upscale(c.float(), latent.shape[-1], latent.shape[-2], "nearest-exact", "center")
                    parts.append(fit_rows(c, latent.shape[0]) if c.shape[0] != latent.shape[0] else c)
            cond = torch.cat(parts, dim=1)
            if cond.shape[1] != LATENT_CHANNELS + extra:
                raise ValueError(f"ControlNet {hint.net.name} takes {LATENT_CHANNELS + extra} latent channels, the "
                                 f"hint has {cond.shape[1]}")
            cond = pad_even(cond)
            self._conds[key] = pack_latents(fit_rows(cond, rows)).to(self.device, dtype)
        return self._conds[key]

    def block_samples(self, hint, xs: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
                      latent_hw: tuple[int, int], img_shape: tuple[int, int, int], refs: int,
                      blocks: int) -> list[torch.Tensor] | None:
        """The residuals of ``hint``'s chain for each of the ``blocks`` transformer blocks (``None`` when no
        ControlNet of the chain acts at this step) for the packed image tokens ``xs`` of a latent of
        ``latent_hw`` (before padding); ``refs`` reference tokens follow the image tokens."""
        total: list[torch.Tensor] | None = None
        for h in hint.chain():
            if not self.in_range(h.start_percent, h.end_percent) or h.strength == 0:
                continue
            net = self._net(h)
            dtype = next(net.parameters()).dtype
            cond = self._cond(h, net, *latent_hw, xs.shape[0], dtype)
            samples = net(hidden_states=xs.to(dtype), controlnet_cond=cond, conditioning_scale=float(h.strength),
                          encoder_hidden_states=states.to(dtype), encoder_hidden_states_mask=mask,
                          timestep=t.to(dtype), img_shapes=[[img_shape]] * xs.shape[0], return_dict=False)
            interval = math.ceil(blocks / len(samples))
            per_block = [samples[i // interval] for i in range(blocks)]
            total = per_block if total is None else [a + b for a, b in zip(total, per_block)]
        if total is None:
            return None
        if refs:
            total = [torch.nn.functional.pad(s, (0, 0, 0, refs)) for s in total]
        return [s.to(xs.dtype) for s in total]
