"""The Wan 2.2 S2V (speech-to-video) transformer: diffusers' Wan blocks (``WanTransformerBlock``, ``WanAttention``,
the time / text embedders) with the S2V parts written here after the official code's math (Apache-2.0,
Wan-Video/Wan2.2 ``wan/modules/s2v``; none of it is imported).

What S2V adds to a Wan 2.1 text-to-video transformer (``dim`` wide, heads of 128):

* ``cond_encoder``: a patch convolution of a 16-channel control latent added to the noisy tokens.
* a reference image latent patched by ``patch_embedding`` and put after the noisy tokens (rope frame 30),
  and FramePack motion tokens (``frame_packer``: the last 1, 2 and 16 motion latent frames patched 1×, 2× and
  4× coarser, rope frames -1, -3 and -19 … -4, counted backwards) after it; ``trainable_cond_mask`` rows 0 /
  1 / 2 are added to the noisy / reference / motion tokens. The reference and motion tokens take timestep 0
  (their own modulation: two segments in every block).
* the audio: wav2vec 2.0 layer states ``[B, layers, width, frames]`` (4 audio frames per latent frame)
  weighted by ``silu(weights)`` (normalized), through a causal 1-D convolution stack
  (``casual_audio_encoder``: ``num_token`` local tokens plus a padding token per latent frame, and a global
  vector for AdaIN); after the blocks in ``audio_inject_layers`` each latent frame's noisy tokens attend to
  their frame's audio tokens (``audio_injector.injector.N``, normalized by an AdaLayerNorm of the global
  vector, ``adain_mode`` ``attn_norm``) and the result is added.

Numerics follow the official code: sinusoidal timestep and rope angles in float64, modulation in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

#: ComfyUI's and the official 14B config's injection layers (ComfyUI uses them for every S2V file)
INJECT_LAYERS = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
#: FramePack buckets: the nearest 1, then 2, then 16 motion latent frames
ZIP_BUCKETS = (1, 2, 16)
REFERENCE_FRAME = 30


# -- audio ------------------------------------------------------------------------------------------

class CausalConv1d(nn.Module):
    """A 1-D convolution padded on the left only (replicating the first frame)."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.pad = kernel_size - 1
        self.conv = nn.Conv1d(chan_in, chan_out, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.pad, 0), mode="replicate"))


class AudioMotionEncoder(nn.Module):
    """Audio frames ``[B, T, in_dim]`` → local tokens ``[B, T/4, num_heads + 1, hidden]`` (and a global
    ``[B, T/4, 1, hidden]`` with ``need_global``): three causal convolutions (strides 1, 2, 2), each followed
    by a plain LayerNorm and SiLU; the local branch splits its first convolution into ``num_heads`` tokens."""

    def __init__(self, in_dim: int, hidden_dim: int, num_heads: int, need_global: bool):
        super().__init__()
        self.num_heads = num_heads
        self.need_global = need_global
        self.conv1_local = CausalConv1d(in_dim, hidden_dim // 4 * num_heads, 3, stride=1)
        if need_global:
            self.conv1_global = CausalConv1d(in_dim, hidden_dim // 4, 3, stride=1)
            self.final_linear = nn.Linear(hidden_dim, hidden_dim)
        self.conv2 = CausalConv1d(hidden_dim // 4, hidden_dim // 2, 3, stride=2)
        self.conv3 = CausalConv1d(hidden_dim // 2, hidden_dim, 3, stride=2)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, hidden_dim))

    @staticmethod
    def _norm_act(x: torch.Tensor) -> torch.Tensor:  # [N, C, T] → LayerNorm over C, SiLU, back
        x = x.transpose(1, 2)
        return F.silu(F.layer_norm(x, (x.shape[-1],), eps=1e-6)).transpose(1, 2)

    def _tail(self, x: torch.Tensor) -> torch.Tensor:  # [N, C/4, T] → [N, T/4, C]
        x = self._norm_act(self.conv2(x))
        return self._norm_act(self.conv3(x)).transpose(1, 2)

    def forward(self, x: torch.Tensor):
        b = x.shape[0]
        x = x.transpose(1, 2)  # b c t
        local = self.conv1_local(x)
        local = local.unflatten(1, (self.num_heads, -1)).flatten(0, 1)  # (b n) c t
        local = self._tail(self._norm_act(local))
        local = local.unflatten(0, (b, self.num_heads)).transpose(1, 2)  # b t n c
        local = torch.cat([local, self.padding_tokens.expand(b, local.shape[1], 1, -1)], dim=2)
        if not self.need_global:
            return None, local
        glob = self._tail(self._norm_act(self.conv1_global(x)))
        glob = self.final_linear(glob)[:, :, None]  # b t 1 c
        return glob, local


class CausalAudioEncoder(nn.Module):
    """wav2vec 2.0 layer states ``[B, layers, width, T]``: a learned SiLU-weighted mean over the layers, then
    :class:`AudioMotionEncoder`."""

    def __init__(self, dim: int, out_dim: int, num_token: int, num_layers: int, need_global: bool):
        super().__init__()
        self.encoder = AudioMotionEncoder(dim, out_dim, num_token, need_global)
        self.weights = nn.Parameter(torch.ones((1, num_layers, 1, 1)) * 0.01)

    def forward(self, features: torch.Tensor):
        weights = F.silu(self.weights.float())
        feat = (features.float() * weights / weights.sum(dim=1, keepdim=True)).sum(dim=1)  # b dim t
        return self.encoder(feat.transpose(1, 2).to(self.weights.dtype))


class AudioInjector(nn.Module):
    """The audio cross-attentions (diffusers ``WanAttention``, RMS-normed q/k across heads) and their AdaIN
    layers (diffusers ``AdaLayerNorm`` of the global audio vector, LayerNorm eps 1e-5)."""

    def __init__(self, dim: int, heads: int, count: int, adain: bool):
        super().__init__()
        from diffusers.models.normalization import AdaLayerNorm
        from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

        head = dim // heads
        self.injector = nn.ModuleList([WanAttention(dim, heads, head, eps=1e-6, cross_attention_dim_head=head,
                                                    processor=WanAttnProcessor()) for _ in range(count)])
        if adain:
            self.injector_adain_layers = nn.ModuleList([AdaLayerNorm(dim, output_dim=dim * 2, chunk_dim=1)
                                                        for _ in range(count)])
        self.adain = adain

    def forward(self, x: torch.Tensor, index: int, audio: torch.Tensor, audio_global, frames: int) -> torch.Tensor:
        """``x`` the noisy tokens ``[B, frames · n, C]``; the residual to add."""
        b = x.shape[0]
        hidden = x.unflatten(1, (frames, -1)).flatten(0, 1)  # (b t) n c
        if self.adain:
            hidden = self.injector_adain_layers[index](hidden, temb=audio_global.flatten(0, 1)[:, 0].to(hidden.dtype))
        else:
            hidden = F.layer_norm(hidden, (hidden.shape[-1],), eps=1e-6)
        out = self.injector[index](hidden, audio.flatten(0, 1).to(hidden.dtype))
        return out.unflatten(0, (b, frames)).flatten(1, 2)


# -- rope -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RopeGrid:
    """One block of tokens' rope positions (the official ``grid_sizes`` entry): the token grid ``count``
    (f, h, w) spread over ``span`` positions from ``start`` (frame positions negative: counted backwards)."""

    start: tuple[int, int, int]
    count: tuple[int, int, int]
    span: tuple[int, int, int]

    def positions(self) -> list[list[int]]:
        import numpy as np

        out = []
        for axis, (s, n, t) in enumerate(zip(self.start, self.count, self.span)):
            if axis == 0 and s < 0:  # the official code: conjugate freqs of positive positions
                out.append([-int(v) for v in np.linspace(-s, -t - s + 1, n).astype(int)])
            else:
                out.append([int(v) for v in np.linspace(s, t + s - 1, n).astype(int)])
        return out


def rope_tables(head_dim: int, grids: list[RopeGrid], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[1, L, 1, head_dim]`` in diffusers' interleaved layout for the tokens of ``grids`` in
    order (angles in float64, as the official code's complex rope)."""
    half = head_dim // 2
    sizes = (half - 2 * (half // 3), half // 3, half // 3)
    dims = [2 * s for s in sizes]
    inv = [1.0 / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d) for d in dims]
    angles = []
    for grid in grids:
        pf, ph, pw = (torch.tensor(p, dtype=torch.float64) for p in grid.positions())
        nf, nh, nw = len(pf), len(ph), len(pw)
        a = torch.cat([torch.outer(pf, inv[0]).view(nf, 1, 1, -1).expand(nf, nh, nw, -1),
                       torch.outer(ph, inv[1]).view(1, nh, 1, -1).expand(nf, nh, nw, -1),
                       torch.outer(pw, inv[2]).view(1, 1, nw, -1).expand(nf, nh, nw, -1)], dim=-1)
        angles.append(a.reshape(nf * nh * nw, -1))
    a = torch.cat(angles).repeat_interleave(2, dim=-1)
    return (a.cos().float()[None, :, None].to(device), a.sin().float()[None, :, None].to(device))


def sinusoid(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding (cos first), computed in float64."""
    half = dim // 2
    pos = t.to(torch.float64)
    x = torch.outer(pos, torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half))
    return torch.cat([torch.cos(x), torch.sin(x)], dim=1).float()


# -- motion -----------------------------------------------------------------------------------------

class FramePackMotioner(nn.Module):
    """Motion latents ``[B, 16, T, h, w]``: the last 19 frames (zero-padded in front) split into 16 / 2 / 1
    frames, patched by (4, 8, 8), (2, 4, 4) and (1, 2, 2) convolutions; tokens nearest first."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(16, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(16, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(16, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion: torch.Tensor) -> tuple[torch.Tensor, list[RopeGrid]]:
        b, _, frames, h, w = motion.shape
        total = sum(ZIP_BUCKETS)
        pad = motion.new_zeros(b, 16, total, h, w)
        keep = min(total, frames)
        if keep:
            pad[:, :, -keep:] = motion[:, :, -keep:]
        far, mid, near = pad.split(list(ZIP_BUCKETS)[::-1], dim=2)
        tokens = [self.proj(near), self.proj_2x(mid), self.proj_4x(far)]
        tokens = torch.cat([t.flatten(2).transpose(1, 2) for t in tokens], dim=1)
        grids = [RopeGrid((-1, 0, 0), (1, h // 2, w // 2), (1, h // 2, w // 2)),
                 RopeGrid((-3, 0, 0), (1, h // 4, w // 4), (2, h // 2, w // 2)),
                 RopeGrid((-19, 0, 0), (4, h // 8, w // 8), (16, h // 2, w // 2))]
        return tokens, grids


# -- transformer ------------------------------------------------------------------------------------

class WanS2VTransformer(ModelMixin, ConfigMixin):
    """Wan 2.2 S2V: ``forward(x, timestep, context, audio, reference, control, motion)`` → the flow velocity
    of ``x``."""

    @register_to_config
    def __init__(self, patch_size=(1, 2, 2), num_attention_heads: int = 40, attention_head_dim: int = 128,
                 in_channels: int = 16, out_channels: int = 16, text_dim: int = 4096, freq_dim: int = 256,
                 ffn_dim: int = 13824, num_layers: int = 40, eps: float = 1e-6, cond_dim: int = 16,
                 audio_dim: int = 1024, audio_layers: int = 25, num_audio_token: int = 4, enable_adain: bool = True,
                 audio_inject_layers=INJECT_LAYERS, injectors: int = 12):
        super().__init__()
        from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding, WanTransformerBlock

        dim = num_attention_heads * attention_head_dim
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6,
                                                            text_embed_dim=text_dim)
        self.blocks = nn.ModuleList([WanTransformerBlock(dim, ffn_dim, num_attention_heads, "rms_norm_across_heads",
                                                         True, eps) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        if cond_dim:
            self.cond_encoder = nn.Conv3d(cond_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.trainable_cond_mask = nn.Embedding(3, dim)
        self.casual_audio_encoder = CausalAudioEncoder(audio_dim, dim, num_audio_token, audio_layers, enable_adain)
        self.audio_injector = AudioInjector(dim, num_attention_heads, injectors, enable_adain)
        self.frame_packer = FramePackMotioner(dim)
        self.injected = {layer: i for i, layer in enumerate(list(audio_inject_layers)[:injectors])}

    def _block(self, block, x: torch.Tensor, context: torch.Tensor, e: torch.Tensor, rope, split: int) -> torch.Tensor:
        """A diffusers ``WanTransformerBlock``'s math with two modulation segments (tokens before ``split``: the
        timestep's ``e[:, 0]``; after: timestep 0's ``e[:, 1]``); ``e`` ``[B, 2, 6, C]`` in float32."""
        mod = (block.scale_shift_table[:, None].float() + e).unbind(2)  # 6 × [B, 2, C]

        def modulate(y, scale, shift):
            parts = [y[:, :split] * (1 + scale[:, :1]) + shift[:, :1], y[:, split:] * (1 + scale[:, 1:]) + shift[:, 1:]]
            return torch.cat(parts, dim=1)

        def gated(y, gate):
            return torch.cat([y[:, :split] * gate[:, :1], y[:, split:] * gate[:, 1:]], dim=1)

        norm = modulate(block.norm1(x.float()), mod[1], mod[0]).type_as(x)
        x = (x.float() + gated(block.attn1(norm, None, None, rope).float(), mod[2])).type_as(x)
        x = x + block.attn2(block.norm2(x.float()).type_as(x), context, None, None)
        norm = modulate(block.norm3(x.float()), mod[4], mod[3]).type_as(x)
        return (x.float() + gated(block.ffn(norm).float(), mod[5])).type_as(x)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, audio: torch.Tensor | None,
                reference: torch.Tensor | None = None, control: torch.Tensor | None = None,
                motion: torch.Tensor | None = None, audio_pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """``x`` ``[B, 16, T, h, w]`` in the model's latent space, ``timestep`` ``[B]`` (sigma · 1000),
        ``context`` ``[B, L, text_dim]``, ``audio`` ``[B, layers, width, ≥ 4T]`` (``None``: no audio injection), ``reference`` ``[B, 16, 1, h,
        w]``, ``control`` ``[B, cond_dim, T, h, w]``, ``motion`` ``[B, 16, Tm, h, w]`` (the earlier video's
        latents). ``audio_pad`` = (audio frames of the first one put in front, latent frames dropped after
        the audio encoder): the official pipeline's ``motion_frames`` (73, 19); ComfyUI's node: (0, 0)."""
        cfg = self.config
        b, _, frames, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        nf, nh, nw = frames // pt, h // ph, w // pw
        dim = cfg.num_attention_heads * cfg.attention_head_dim

        audio_local = audio_global = None
        if audio is not None:  # without audio (ComfyUI allows it) nothing is injected
            audio = audio[..., :frames * 4]
            if audio_pad[0]:
                audio = torch.cat([audio[..., :1].repeat(1, 1, 1, audio_pad[0]), audio], dim=-1)
            audio_global, audio_local = self.casual_audio_encoder(audio)
            audio_local = audio_local[:, audio_pad[1]:]
            audio_global = audio_global[:, audio_pad[1]:] if audio_global is not None else None

        tokens = self.patch_embedding(x)
        if control is not None and hasattr(self, "cond_encoder"):
            tokens = tokens + self.cond_encoder(control.to(tokens.dtype))
        tokens = tokens.flatten(2).transpose(1, 2)
        seq = tokens.shape[1]
        mask = torch.zeros(seq, dtype=torch.long)
        grids = [RopeGrid((0, 0, 0), (nf, nh, nw), (nf, nh, nw))]
        parts = [tokens]
        if reference is not None:
            ref = self.patch_embedding(reference.to(tokens.dtype)).flatten(2).transpose(1, 2)
            parts.append(ref)
            mask = torch.cat([mask, torch.ones(ref.shape[1], dtype=torch.long)])
            rf, rh, rw = reference.shape[2] // pt, reference.shape[3] // ph, reference.shape[4] // pw
            grids.append(RopeGrid((REFERENCE_FRAME, 0, 0), (rf, rh, rw), (rf, rh, rw)))
        if motion is not None:
            mot, mot_grids = self.frame_packer(motion.to(tokens.dtype))
            parts.append(mot)
            mask = torch.cat([mask, torch.full((mot.shape[1],), 2, dtype=torch.long)])
            grids += mot_grids
        hidden = torch.cat(parts, dim=1)
        hidden = hidden + self.trainable_cond_mask(mask.to(hidden.device)).to(hidden.dtype)[None]
        rope = rope_tables(cfg.attention_head_dim, grids, hidden.device)

        emb = self.condition_embedder
        t = torch.cat([timestep.reshape(-1).expand(b), timestep.new_zeros(1)])
        temb = emb.time_embedder.linear_2(F.silu(emb.time_embedder.linear_1(sinusoid(cfg.freq_dim, t).to(
            emb.time_embedder.linear_1.weight.dtype)).float()).to(emb.time_embedder.linear_2.weight.dtype)).float()
        e0 = emb.time_proj(F.silu(temb).to(emb.time_proj.weight.dtype)).float().unflatten(1, (6, dim))
        e = torch.stack([e0[:b], e0[b:].expand(b, -1, -1)], dim=1)  # [B, 2, 6, C]
        context = emb.text_embedder(context.to(hidden.dtype))

        for i, block in enumerate(self.blocks):
            hidden = self._block(block, hidden, context, e, rope, seq)
            if i in self.injected and audio_local is not None:
                residual = self.audio_injector(hidden[:, :seq], self.injected[i], audio_local, audio_global, nf)
                hidden = torch.cat([hidden[:, :seq] + residual, hidden[:, seq:]], dim=1)

        hidden = hidden[:, :seq]
        shift, scale = (self.scale_shift_table.float() + temb[:b, None]).chunk(2, dim=1)
        out = self.proj_out((self.norm_out(hidden.float()) * (1 + scale) + shift).to(hidden.dtype))
        out = out.reshape(b, nf, nh, nw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, -1, nf * pt, nh * ph, nw * pw)
