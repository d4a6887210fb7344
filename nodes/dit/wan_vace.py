"""Wan 2.1 VACE (all-in-one video creation and editing): ComfyUI's ``WanVaceToVideo`` node and the VACE
transformer (diffusers ``WanVACETransformer3DModel``) behind UNETLoader.

Files: ComfyUI's repackaged ``wan2.1_vace_*.safetensors`` are Wan 2.1 text-to-video weights in Wan's original
names plus the VACE branch (``vace_patch_embedding`` — 96 input channels — and ``vace_blocks.N`` with
``before_proj`` / ``after_proj``); :mod:`.wan` detects them by ``vace_patch_embedding.weight`` and builds this
class. The VACE blocks sit after every ``num_layers / vace_blocks``-th transformer block (0, 2, 4 … for
1.3B, 0, 5, 10 … for 14B: ComfyUI's mapping, diffusers' ``vace_layers``).

Facts (ComfyUI's ``WanVaceToVideo``): the control video (resized to width × height, bilinear, center crop;
padded with gray to ``length`` frames; all gray without one) and the control masks (1 where the model
generates; all ones without them) make two videos, ``inactive = (video - 0.5) · (1 - mask) + 0.5`` and
``reactive = (video - 0.5) · mask + 0.5``, each encoded by the VAE; their latents side by side (32 channels)
are ``vace_frames``. A reference image is encoded alone and put before them as one more latent frame (with
zeros as its second half); the output latent then has that frame more and ``trim_latent`` says how many
frames TrimVideoLatent drops after sampling. The mask becomes 64 channels (each 8 × 8 pixel block's values)
over the latent frames (``nearest-exact`` in time), zeros for the reference frame. The runner gives the
transformer the frames in the model's latent space (each 16-channel half normalized like the sampled
latent) with the mask after them as ``control_hidden_states`` and ``strength`` for every VACE layer.

A VACE model sampled without WanVaceToVideo gets ComfyUI's default: zero frames and an all-ones mask.
Stricter than ComfyUI: several WanVaceToVideo nodes chained on one conditioning (ComfyUI adds each one's
hints) are an error naming the node, since diffusers' transformer takes one control video.
"""

from __future__ import annotations

import torch

from nodegraph.node import FLOAT, INT, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, MASK

from nodegraph_nodes.dit.wan_i2v import _resized, encode_video, video_inputs

VACE_MARKER = "vace_patch_embedding.weight"
VAE_STRIDE = 8


# -- transformer ------------------------------------------------------------------------------------

def is_vace(sd: dict) -> bool:
    """Whether diffusers-layout (or original-layout: the VACE names are the same) weights have a VACE branch."""
    return VACE_MARKER in sd


def vace_config(sd: dict, num_layers: int) -> dict:
    """The VACE part of a ``WanVACETransformer3DModel`` config from the weights: ``vace_layers`` (ComfyUI's
    mapping: every ``num_layers // blocks``-th layer from 0) and ``vace_in_channels``."""
    import re

    blocks = len({int(m.group(1)) for k in sd if (m := re.match(r"vace_blocks\.(\d+)\.", k))})
    if blocks == 0 or blocks > num_layers:
        from nodegraph_nodes.diffusion.files import ModelFileError

        raise ModelFileError(f"the Wan VACE weights have {blocks} VACE blocks for {num_layers} transformer blocks")
    return {"vace_layers": list(range(0, num_layers, num_layers // blocks))[:blocks],
            "vace_in_channels": int(sd[VACE_MARKER].shape[1])}


def transformer_class():
    from diffusers import WanVACETransformer3DModel

    return WanVACETransformer3DModel


def control_inputs(net, part, x: torch.Tensor, device: str, dtype: torch.dtype) -> dict:
    """``control_hidden_states`` (``[rows, 96, frames, h, w]``) and ``control_hidden_states_scale`` for one
    conditioning part of a VACE transformer's call (ComfyUI's ``WAN21_Vace.extra_conds``)."""
    from nodegraph_nodes.dit.model import _rows
    from nodegraph_nodes.dit.qwen_image import WAN21

    frames = part.extras.get("vace_frames")
    masks = part.extras.get("vace_mask")
    strengths = part.extras.get("vace_strength")
    if frames is None:
        shape = (1, 32, *x.shape[2:])
        frames, masks, strengths = [torch.zeros(shape)], None, [1.0]
    if len(frames) != 1:
        raise ValueError(f"WanVaceToVideo: {len(frames)} WanVaceToVideo nodes are chained on one conditioning; this "
                         "engine takes one control video per conditioning (diffusers' VACE transformer takes one)")
    vf = frames[0].float()
    if tuple(vf.shape[3:]) != tuple(x.shape[3:]) or vf.shape[2] > x.shape[2]:
        raise ValueError(f"WanVaceToVideo's control latent {list(vf.shape)} does not fit the sampled latent "
                         f"{list(x.shape)}: sample the latent WanVaceToVideo gives")
    vf = torch.cat([WAN21.process_in(vf[:, i:i + 16]) for i in range(0, vf.shape[1], 16)], dim=1)
    mask = masks[0].float() if masks is not None else torch.ones(vf.shape[0], 64, *vf.shape[2:])
    control = _rows(torch.cat([vf, mask], dim=1), x.shape[0])
    layers = len(net.config.vace_layers)
    scale = torch.full((layers,), float(strengths[0] if strengths else 1.0), device=device, dtype=dtype)
    return {"control_hidden_states": control.to(device, dtype), "control_hidden_states_scale": scale}


# -- node -------------------------------------------------------------------------------------------

def _append(conditioning: list, values: dict) -> list:
    """ComfyUI's ``conditioning_set_values(..., append=True)``: each value is appended to the entry's list."""
    out = []
    for cond, extras in conditioning:
        extras = dict(extras)
        for key, value in values.items():
            extras[key] = list(extras.get(key) or []) + [value]
        out.append([cond, extras])
    return out


class WanVaceToVideo(Node):
    """VACE conditioning for Wan 2.1 VACE models: the control video (gray without one) split by the control
    masks (1 = generate, ones without them) into kept and regenerated parts, both VAE-encoded, with an
    optional reference image as one more leading latent frame; an empty video latent to sample and
    ``trim_latent``, the number of leading frames TrimVideoLatent removes afterwards (1 with a reference
    image). Stricter than ComfyUI: chaining two of these on one conditioning is an error when sampling."""

    category = "conditioning/video_models"
    vars().update(video_inputs())
    strength = Input(FLOAT, default=1.0, min=0.0, max=1000.0, step=0.01)
    control_video = Input(IMAGE, optional=True)
    control_masks = Input(MASK, optional=True)
    reference_image = Input(IMAGE, optional=True)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"),
               Output(INT, "trim_latent"))

    def execute(self, positive, negative, vae, width: int, height: int, length: int, batch_size: int,
                strength: float, control_video: torch.Tensor | None = None, control_masks: torch.Tensor | None = None,
                reference_image: torch.Tensor | None = None) -> tuple:
        if width % VAE_STRIDE or height % VAE_STRIDE:
            raise ValueError(f"WanVaceToVideo: width and height must be multiples of {VAE_STRIDE} ({width}×{height})")
        latent_length = (length - 1) // 4 + 1
        if control_video is not None:
            video = _resized(control_video[:length], width, height)
            if video.shape[0] < length:
                video = torch.nn.functional.pad(video, (0, 0, 0, 0, 0, 0, 0, length - video.shape[0]), value=0.5)
        else:
            video = torch.full((length, height, width, 3), 0.5)

        reference = None
        if reference_image is not None:
            ref = _resized(reference_image[:1], width, height)
            reference = encode_video(self.ctx, vae, ref, "WanVaceToVideo")
            reference = torch.cat([reference, _raw_zeros(reference)], dim=1)

        if control_masks is None:
            mask = torch.ones((length, height, width, 1))
        else:
            mask = control_masks.float()
            if mask.ndim == 2:
                mask = mask[None]
            if mask.ndim == 3:
                mask = mask.unsqueeze(1)
            elif mask.ndim == 4 and mask.shape[-1] == 1:
                mask = mask.movedim(-1, 1)
            from nodegraph_nodes.image.operations import common_upscale

            mask = common_upscale(mask[:length], width, height, "bilinear", "center").movedim(1, -1)
            if mask.shape[0] < length:
                mask = torch.nn.functional.pad(mask, (0, 0, 0, 0, 0, 0, 0, length - mask.shape[0]), value=1.0)

        video = video - 0.5
        inactive = encode_video(self.ctx, vae, video * (1 - mask) + 0.5, "WanVaceToVideo")
        reactive = encode_video(self.ctx, vae, video * mask + 0.5, "WanVaceToVideo")
        control = torch.cat((inactive, reactive), dim=1)
        if reference is not None:
            control = torch.cat((reference, control), dim=2)

        hm, wm = height // VAE_STRIDE, width // VAE_STRIDE
        mask = mask.reshape(length, hm, VAE_STRIDE, wm, VAE_STRIDE).permute(2, 4, 0, 1, 3)
        mask = mask.reshape(VAE_STRIDE * VAE_STRIDE, length, hm, wm)
        mask = torch.nn.functional.interpolate(mask[None], size=(latent_length, hm, wm), mode="nearest-exact")[0]
        trim = 0
        if reference is not None:
            mask = torch.cat((torch.zeros_like(mask[:, :reference.shape[2]]), mask), dim=1)
            latent_length += reference.shape[2]
            trim = reference.shape[2]
        values = {"vace_frames": control, "vace_mask": mask[None], "vace_strength": float(strength)}
        latent = torch.zeros([batch_size, 16, latent_length, hm, wm])
        return _append(positive, values), _append(negative, values), {"samples": latent}, trim


def _raw_zeros(latent: torch.Tensor) -> torch.Tensor:
    """Zeros of the model's latent space in the VAE's raw space (ComfyUI's ``Wan21().process_out(zeros)``)."""
    from nodegraph_nodes.dit.qwen_image import WAN21

    return WAN21.process_out(torch.zeros_like(latent))
