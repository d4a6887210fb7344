"""The adapters of Wan Fun models that diffusers' ``WanTransformer3DModel`` lacks: the camera adapter of the Fun
Camera models and the reference-image convolution of the Fun Control (v1.1 / 2.2) models, in a subclass of it.

Facts (ComfyUI's ``comfy/ldm/wan/model.py`` and model detection; VideoX-Fun's Wan Fun releases):

* **Camera** (``control_adapter.*``; Wan 2.1 Fun Camera v1.1 with CLIP image attention: 32 input channels, the
  start image's latent without a mask; Wan 2.2 Fun Camera A14B: 36, with the mask): the camera's Plücker
  embedding ``[B, 24, latent frames, H, W]`` at pixel size (WanCameraEmbedding: 6 channels × 4 frames per latent
  frame) goes through ``PixelUnshuffle(8)`` per frame (``24 · 64`` channels at latent size), a convolution with
  the patch size as kernel and stride to the model width (``control_adapter.conv``), and residual blocks
  (``control_adapter.residual_blocks.N``: conv 3×3, ReLU, conv 3×3, plus the input); the result is added to the
  patch embedding of the latent before the transformer blocks.
* **Reference** (``ref_conv``; Wan 2.2 Fun Control's ``Wan22FunControlToVideo.ref_image``): the reference
  image's latent (first frame, the model's latent space) through a 2-D convolution with the patch size as kernel
  and stride; its tokens go before the video's, with rotary positions of one more leading frame, and are dropped
  from the output. With per-token timesteps (Wan 2.2 5B inpainting) they get timestep 0 (ComfyUI has no such
  case).

Files: ComfyUI's repackaged ``wan2.1_fun_camera_*`` / ``wan2.2_fun_camera_*`` / ``wan2.2_fun_control_*`` keep
these modules' names (``control_adapter.conv.weight``, ``control_adapter.residual_blocks.0.conv1.weight``,
``ref_conv.weight`` …), bare or under ``model.diffusion_model.``; they load as they are here.
"""

from __future__ import annotations

import torch
from torch import nn

ADAPTER_PREFIXES = ("control_adapter.", "ref_conv.")
CAMERA_MARKER = "control_adapter.conv.weight"
REFERENCE_MARKER = "ref_conv.weight"
UNSHUFFLE = 8


def split_adapters(sd: dict) -> tuple[dict, dict]:
    """``(the Wan weights, the adapter weights)`` of a transformer state dict (prefix stripped)."""
    adapters = {k: v for k, v in sd.items() if k.startswith(ADAPTER_PREFIXES)}
    return {k: v for k, v in sd.items() if k not in adapters}, adapters


def adapter_config(adapters: dict) -> dict:
    """The subclass's extra config from the adapter weights: ``in_dim_control_adapter`` (the camera embedding's
    channels, 24) and ``in_dim_ref_conv`` (the reference latent's channels)."""
    config = {}
    if CAMERA_MARKER in adapters:
        config["in_dim_control_adapter"] = int(adapters[CAMERA_MARKER].shape[1]) // (UNSHUFFLE * UNSHUFFLE)
        config["camera_residual_blocks"] = len({k.split(".")[2] for k in adapters
                                                if k.startswith("control_adapter.residual_blocks.")})
    if REFERENCE_MARKER in adapters:
        config["in_dim_ref_conv"] = int(adapters[REFERENCE_MARKER].shape[1])
    return config


class CameraResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class CameraAdapter(nn.Module):
    """Plücker embedding ``[B, C, F, H, W]`` (pixel size) → ``[B, dim, F, H / 8 / p, W / 8 / p]``."""

    def __init__(self, in_dim: int, dim: int, patch: tuple[int, int], residual_blocks: int = 1):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(UNSHUFFLE)
        self.conv = nn.Conv2d(in_dim * UNSHUFFLE * UNSHUFFLE, dim, kernel_size=patch, stride=patch)
        self.residual_blocks = nn.Sequential(*[CameraResidualBlock(dim) for _ in range(residual_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        out = self.residual_blocks(self.conv(self.unshuffle(frames)))
        return out.reshape(b, f, *out.shape[1:]).permute(0, 2, 1, 3, 4)


def transformer_class():
    """``WanFunTransformer3DModel`` (built on first use: diffusers is imported lazily)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _define()
    return _CLASS


_CLASS = None


def _define():
    from diffusers import WanTransformer3DModel
    from diffusers.configuration_utils import register_to_config

    class WanFunTransformer3DModel(WanTransformer3DModel):
        """``WanTransformer3DModel`` with the Fun models' camera adapter and / or reference convolution."""

        @register_to_config
        def __init__(self, patch_size: tuple = (1, 2, 2), num_attention_heads: int = 40,
                     attention_head_dim: int = 128, in_channels: int = 16, out_channels: int = 16,
                     text_dim: int = 4096, freq_dim: int = 256, ffn_dim: int = 13824, num_layers: int = 40,
                     cross_attn_norm: bool = True, qk_norm: str | None = "rms_norm_across_heads", eps: float = 1e-6,
                     image_dim: int | None = None, added_kv_proj_dim: int | None = None, rope_max_seq_len: int = 1024,
                     pos_embed_seq_len: int | None = None, in_dim_control_adapter: int | None = None,
                     camera_residual_blocks: int = 1, in_dim_ref_conv: int | None = None) -> None:
            super().__init__(patch_size=patch_size, num_attention_heads=num_attention_heads,
                             attention_head_dim=attention_head_dim, in_channels=in_channels,
                             out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
                             num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
                             image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim,
                             rope_max_seq_len=rope_max_seq_len, pos_embed_seq_len=pos_embed_seq_len)
            dim = num_attention_heads * attention_head_dim
            self.control_adapter = None
            if in_dim_control_adapter:
                self.control_adapter = CameraAdapter(in_dim_control_adapter, dim, tuple(patch_size[1:]),
                                                     camera_residual_blocks)
            self.ref_conv = None
            if in_dim_ref_conv:
                self.ref_conv = nn.Conv2d(in_dim_ref_conv, dim, kernel_size=tuple(patch_size[1:]),
                                          stride=tuple(patch_size[1:]))

        def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    encoder_hidden_states_image: torch.Tensor | None = None, return_dict: bool = True,
                    attention_kwargs=None, camera_conditions: torch.Tensor | None = None,
                    reference_latent: torch.Tensor | None = None):
            if camera_conditions is None or self.control_adapter is None:
                camera_conditions = None
            if reference_latent is None or self.ref_conv is None:
                reference_latent = None
            if camera_conditions is None and reference_latent is None:
                return super().forward(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                                       return_dict=return_dict, attention_kwargs=attention_kwargs)
            out = self._forward_fun(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                                    camera_conditions, reference_latent)
            if not return_dict:
                return (out,)
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)

        def _forward_fun(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                         camera, reference) -> torch.Tensor:
            """diffusers' Wan forward with the camera embedding added to the patch embedding and the reference
            tokens first."""
            b, _, frames, height, width = hidden_states.shape
            p_t, p_h, p_w = self.config.patch_size
            x = self.patch_embedding(hidden_states)
            if camera is not None:
                x = x + self.control_adapter(camera.to(x.dtype)).to(x.dtype)
            lead = 0
            if reference is not None:
                ref = self.ref_conv(reference.to(x.dtype))
                x = torch.cat([ref.unsqueeze(2), x], dim=2)  # the reference as one more leading frame
                lead = ref.shape[-2] * ref.shape[-1]
            rotary = self.rope(hidden_states.new_empty((1, 0, x.shape[2] * p_t, height, width)))
            x = x.flatten(2).transpose(1, 2).contiguous()

            seq = None
            if timestep.ndim == 2:
                if lead:
                    timestep = torch.cat([timestep.new_zeros(timestep.shape[0], lead), timestep], dim=1)
                seq = timestep.shape[1]
                timestep = timestep.flatten()
            temb, proj, text, image = self.condition_embedder(timestep, encoder_hidden_states,
                                                              encoder_hidden_states_image, timestep_seq_len=seq)
            proj = proj.unflatten(2, (6, -1)) if seq is not None else proj.unflatten(1, (6, -1))
            if image is not None:
                text = torch.concat([image, text], dim=1)
            for block in self.blocks:
                x = block(x, text, proj, rotary)

            if temb.ndim == 3:
                shift, scale = (self.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
                shift, scale = shift.squeeze(2), scale.squeeze(2)
            else:
                shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
            x = (self.norm_out(x.float()) * (1 + scale.to(x.device)) + shift.to(x.device)).type_as(x)
            x = self.proj_out(x)[:, lead:]
            x = x.reshape(b, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
            return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    return WanFunTransformer3DModel


def adapter_inputs(net, part, x: torch.Tensor, device: str, dtype: torch.dtype) -> dict:
    """``camera_conditions`` and ``reference_latent`` of one conditioning part for a Fun transformer's call
    (ComfyUI's ``WAN21_Camera`` / ``WAN21.extra_conds``): WanCameraImageToVideo's embedding as given, the last of
    the conditioning's ``reference_latents`` (Wan22FunControlToVideo.ref_image) in the model's latent space, its
    first frame. Either is left out where the conditioning lacks it."""
    from nodegraph_nodes.dit.model import _rows
    from nodegraph_nodes.dit.qwen_image import WAN21
    from nodegraph_nodes.dit.wan22_5b import WAN22

    out = {}
    camera = part.extras.get("camera_conditions")
    if camera is not None and net.control_adapter is not None:
        want = (x.shape[2], x.shape[3] * UNSHUFFLE, x.shape[4] * UNSHUFFLE)
        if camera.ndim != 5 or tuple(camera.shape[2:]) != want:
            raise ValueError(f"WanCameraImageToVideo.camera_conditions: the camera embedding {list(camera.shape)} "
                             f"does not fit the sampled latent {list(x.shape)} (it needs {want[0]} latent frames of "
                             f"{want[2]}×{want[1]} pixels): give WanCameraEmbedding the video's width, height and "
                             "length")
        out["camera_conditions"] = _rows(camera.to(device, dtype), x.shape[0])
    references = part.extras.get("reference_latents")
    if references and net.ref_conv is not None:
        fmt = WAN22 if int(net.config.out_channels) == WAN22.channels else WAN21  # the model's latent format
        ref = fmt.process_in(references[-1].float())
        if ref.ndim == 5:
            ref = ref[:, :, 0]
        if tuple(ref.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"Wan22FunControlToVideo.ref_image: the reference latent {list(ref.shape)} does not fit "
                             f"the sampled latent {list(x.shape)}: sample the latent that node gives")
        out["reference_latent"] = _rows(ref, x.shape[0]).to(device, dtype)
    return out
