"""The SCAIL-2 transformer (zai-org/SCAIL-2, a Wan 2.1 14B I2V fine-tune for character animation and
replacement): diffusers' Wan blocks (``WanTransformerBlock`` with the image cross-attention,
``WanTimeTextImageEmbedding``) with the SCAIL-2 parts written here after the official code's math
(Apache-2.0, ``wan/modules/model_scail2.py`` ``SCAIL2Model``; none of it is imported). Without
``patch_embedding_mask`` (``mask_channels`` 0) it is the first SCAIL (zai-org/SCAIL ``SCAILModel``): one
reference, no masks, Animation Mode's positions.

What SCAIL-2 adds to a Wan 2.1 I2V transformer (``patch_embedding`` of 20 channels: the latent and 4 mask
channels):

* one token sequence ``[additional references, reference, video, pose]``: the reference latents (4 channels of
  ones appended) go before the video frames through ``patch_embedding``, the video's 4 channels are the history
  mask (1 on the clean frames a continued chunk starts with; zeros otherwise); the pose video's latent (half the
  size, ones appended) goes through ``patch_embedding_pose`` after the video;
* ``patch_embedding_mask``: a 28-channel identity-mask latent (7 colour classes × 4 frames) added to the
  reference and video tokens (the references' masks, zeros on the video frames: the convolution's bias) and
  another to the pose tokens (the driving video's masks);
* rope positions per part (frame, row, column): additional references frames ``0 … n-1``, the reference frame
  ``n``, both rows shifted by 120 in Replacement Mode; the video and the pose from frame ``n`` (Replacement) or
  ``n + 1`` (Animation); the pose's columns shifted by 120 and its positions taken on the video's grid, each
  pose token's cos / sin the mean of its 2 × 2 video tokens' (the official ``avg_pool2d`` of the complex
  frequencies);
* one timestep for every token; the output is the video tokens' prediction.

Numerics follow the official code: sinusoidal timestep and rope angles in float64, modulation in float32.
ComfyUI's port (``SCAILWanModel.rope_encode``) gives each pose token one rotation at the midpoint of its 2 × 2
video positions instead of the mean of their rotations (a factor ``cos(θ / 2)`` per frequency apart); this module
follows the official code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

#: the rope shift of the references' rows (Replacement Mode) and of the pose tokens' columns
REFERENCE_ROW_SHIFT = 120
POSE_COLUMN_SHIFT = 120
MASK_CHANNELS = 28


@dataclass(frozen=True)
class ScailInputs:
    """One call's conditions, all ``[B, C, frames, h, w]`` in the model's latent space where latents:
    ``reference`` the reference latents (additional ones first, the primary last), ``reference_mask`` their
    28-channel masks followed by the video frames' (zeros), ``pose`` the pose video's latent (half the video's
    size), ``pose_mask`` the driving video's 28-channel masks (as the pose), ``history`` the 4-channel history
    mask, ``image`` the CLIP vision penultimate states ``[B, tokens, width]``, ``replace`` Replacement Mode."""

    image: torch.Tensor
    reference: torch.Tensor | None = None
    reference_mask: torch.Tensor | None = None
    pose: torch.Tensor | None = None
    pose_mask: torch.Tensor | None = None
    history: torch.Tensor | None = None
    replace: bool = False


def _inv_freqs(head_dim: int) -> list[torch.Tensor]:
    """Wan's rope frequencies of the frame, row and column channel groups (float64)."""
    half = head_dim // 2
    dims = [2 * s for s in (half - 2 * (half // 3), half // 3, half // 3)]
    return [1.0 / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d) for d in dims]


def _grid_angles(inv: list[torch.Tensor], frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[f · h · w, head_dim / 2]`` of a token grid at these positions; ``pool``: each 2 × 2 of
    rows and columns averaged into one token (the positions' grid is twice the tokens')."""
    def axis(pos, freqs, pooled):
        a = torch.outer(pos.to(torch.float64), freqs)
        c, s = a.cos(), a.sin()
        if pooled:
            c, s = c.view(-1, 2, c.shape[-1]).mean(1), s.view(-1, 2, s.shape[-1]).mean(1)
        return c, s

    parts = [axis(frames, inv[0], False), axis(rows, inv[1], pool), axis(cols, inv[2], pool)]
    nf, nh, nw = parts[0][0].shape[0], parts[1][0].shape[0], parts[2][0].shape[0]
    out = []
    for k in range(2):
        out.append(torch.cat([parts[0][k].view(nf, 1, 1, -1).expand(nf, nh, nw, -1),
                              parts[1][k].view(1, nh, 1, -1).expand(nf, nh, nw, -1),
                              parts[2][k].view(1, 1, nw, -1).expand(nf, nh, nw, -1)], dim=-1).reshape(nf * nh * nw, -1))
    return out[0], out[1]


def rope_tables(head_dim: int, refs: int, frames: int, pose_frames: int, nh: int, nw: int, replace: bool,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[1, L, 1, head_dim]`` (diffusers' interleaved layout) of the tokens ``[refs reference
    frames, frames video frames, pose_frames pose frames]`` on an ``nh × nw`` token grid (the pose's
    ``nh/2 × nw/2``)."""
    inv = _inv_freqs(head_dim)
    row_shift = REFERENCE_ROW_SHIFT if replace else 0
    start = max(refs - 1, 0) if replace else refs
    ar = torch.arange
    grids = []
    if refs:
        grids.append(_grid_angles(inv, ar(refs), ar(nh) + row_shift, ar(nw), False))
    grids.append(_grid_angles(inv, ar(frames) + start, ar(nh), ar(nw), False))
    if pose_frames:
        grids.append(_grid_angles(inv, ar(pose_frames) + start, ar(nh), ar(nw) + POSE_COLUMN_SHIFT, True))
    cos = torch.cat([g[0] for g in grids]).repeat_interleave(2, dim=-1)
    sin = torch.cat([g[1] for g in grids]).repeat_interleave(2, dim=-1)
    return cos.float()[None, :, None].to(device), sin.float()[None, :, None].to(device)


def sinusoid(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding (cos first), computed in float64."""
    half = dim // 2
    x = torch.outer(t.to(torch.float64), torch.pow(10000.0, -torch.arange(half, dtype=torch.float64,
                                                                         device=t.device) / half))
    return torch.cat([torch.cos(x), torch.sin(x)], dim=1).float()


def _ones(latent: torch.Tensor) -> torch.Tensor:
    return torch.cat([latent, latent.new_ones(latent.shape[0], 4, *latent.shape[2:])], dim=1)


class WanSCAIL2Transformer(ModelMixin, ConfigMixin):
    """SCAIL-2: ``forward(x, timestep, context, inputs)`` → the flow velocity of ``x`` ``[B, 16, T, h, w]``."""

    @register_to_config
    def __init__(self, patch_size=(1, 2, 2), num_attention_heads: int = 40, attention_head_dim: int = 128,
                 in_channels: int = 20, out_channels: int = 16, mask_channels: int = MASK_CHANNELS,
                 text_dim: int = 4096, freq_dim: int = 256, ffn_dim: int = 13824, num_layers: int = 40,
                 image_dim: int = 1280, eps: float = 1e-6):
        super().__init__()
        from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding, WanTransformerBlock

        dim = num_attention_heads * attention_head_dim
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.patch_embedding_pose = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        if mask_channels:  # SCAIL-2 (SCAIL has none)
            self.patch_embedding_mask = nn.Conv3d(mask_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6,
                                                            text_embed_dim=text_dim, image_embed_dim=image_dim)
        self.blocks = nn.ModuleList([WanTransformerBlock(dim, ffn_dim, num_attention_heads, "rms_norm_across_heads",
                                                         True, eps, added_kv_proj_dim=dim)
                                     for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def _tokens(self, conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.to(conv.weight.dtype))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                inputs: ScailInputs) -> torch.Tensor:
        """``x`` ``[B, 16, T, h, w]`` in the model's latent space, ``timestep`` ``[B]`` (sigma · 1000),
        ``context`` ``[B, 512, text_dim]`` (the text states padded to 512)."""
        cfg = self.config
        b, _, frames, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        nf, nh, nw = frames // pt, h // ph, w // pw
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        history = inputs.history if inputs.history is not None else x.new_zeros(b, 4, frames, h, w)
        video = torch.cat([x, history.to(x.dtype)], dim=1)
        refs = 0
        if inputs.reference is not None:
            refs = inputs.reference.shape[2] // pt
            video = torch.cat([_ones(inputs.reference.to(x.dtype)), video], dim=2)
        tokens = self._tokens(self.patch_embedding, video)
        if inputs.reference_mask is not None:
            tokens = tokens + self._tokens(self.patch_embedding_mask, inputs.reference_mask)
        parts = [tokens.flatten(2).transpose(1, 2)]
        pose_frames = 0
        if inputs.pose is not None:
            pose = self._tokens(self.patch_embedding_pose, _ones(inputs.pose.to(x.dtype)))
            if inputs.pose_mask is not None:
                pose = pose + self._tokens(self.patch_embedding_mask, inputs.pose_mask)
            if tuple(pose.shape[3:]) != (nh // 2, nw // 2):
                raise ValueError(f"SCAIL-2's pose latent must be half the video latent's size ({h // 2}×{w // 2}); it "
                                 f"is {inputs.pose.shape[3]}×{inputs.pose.shape[4]}")
            pose_frames = pose.shape[2]
            parts.append(pose.flatten(2).transpose(1, 2))
        hidden = torch.cat(parts, dim=1)
        rope = rope_tables(cfg.attention_head_dim, refs, nf, pose_frames, nh, nw, inputs.replace, hidden.device)

        emb = self.condition_embedder
        t = timestep.reshape(-1).expand(b)
        temb = emb.time_embedder.linear_2(F.silu(emb.time_embedder.linear_1(sinusoid(cfg.freq_dim, t).to(
            emb.time_embedder.linear_1.weight.dtype)).float()).to(emb.time_embedder.linear_2.weight.dtype)).float()
        e0 = emb.time_proj(F.silu(temb).to(emb.time_proj.weight.dtype)).float().unflatten(1, (6, dim))
        text = emb.text_embedder(context.to(hidden.dtype))
        image = emb.image_embedder(inputs.image.to(hidden.dtype))
        context = torch.cat([image, text], dim=1)

        for block in self.blocks:
            hidden = block(hidden, context, e0, rope)

        start = refs * nh * nw
        hidden = hidden[:, start:start + nf * nh * nw]
        shift, scale = (self.scale_shift_table.float() + temb[:, None]).chunk(2, dim=1)
        out = self.proj_out((self.norm_out(hidden.float()) * (1 + scale) + shift).to(hidden.dtype))
        out = out.reshape(b, nf, nh, nw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, -1, nf * pt, nh * ph, nw * pw)
