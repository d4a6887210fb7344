"""The Wan-Dancer transformer (music-to-dance, a Wan 2.1 I2V 14B variant): diffusers' Wan blocks
(``WanTransformerBlock``, the time / text / image embedders) with the Dancer parts written here after the official
code's math (Apache-2.0, Wan-Video/Wan-Dancer ``diffsynth/models/wan_video_dit.py`` and ``model_fn_wan_video`` in
``diffsynth/pipelines/wan_video_new.py``; none of it is imported).

What Wan-Dancer adds to Wan 2.1 I2V (36 input channels, CLIP image embedder):

* two input patchings and output heads: ``patch_embedding`` / ``head`` at 30 fps (the *local* model's use), and
  ``patch_embedding_global`` / ``head_global`` at any other frame rate (``int(fps + 0.5) != 30``), with the
  frame axis' rope *time-mapped*: latent frame ``i`` sits at ``i · 30 / fps`` of the 30-fps rope table, its
  complex rotations linearly interpolated between the two nearest entries (the last frame at
  ``int(30 / fps · frames + 0.5) - 1``), the table ``2794`` entries long;
* a reference image: ``img_emb_refimage`` (LayerNorm, Linear, GELU, Linear, LayerNorm) of its CLIP vision
  states goes *in front of* the start image's ``img_emb`` states and the text. The blocks' cross-attention takes
  its first 257 tokens (the reference) through the image keys (``add_k_proj``) and the rest (the start image's
  states and the 512 text states) through the text keys, as the official ``CrossAttention`` splits at 257;
* music: 35 librosa features per 30-fps audio frame → ``music_projection`` (35 → 256) → two pre-norm
  encoder layers (``music_encoder.N``: 4-head self-attention whose queries and keys are the normed input rotated
  by a 256-wide interleaved rope before the projection, a GELU MLP of 1024) → bilinear resize to ``149 × 4800``
  then to ``8 · latent frames × dim`` → after the blocks in ``inject_layers`` (0, 4, 8, … 27) the noisy tokens,
  split into ``8 · latent frames`` equal groups, each attend to one music token; with one key the softmax is 1,
  so the residual is ``o(v(music token))`` (``music_injector.injector.N``; its q / k / norms drop out),
  times ComfyUI's ``audio_inject_scale`` (1 in the official code).

Numerics follow the official code: sinusoidal timestep and rope tables in float64. ComfyUI's own Wan-Dancer model
differs from the official code in three places, where nodegraph follows the official one: it resizes the music
tokens once (straight to ``8 · frames × dim``), rotates the music queries and keys per head after their projection,
and takes both CLIP embeddings through the image keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

#: the official 14B's (and ComfyUI's) music injection layers; injector ``i`` follows block ``INJECT_LAYERS[i]``
INJECT_LAYERS = (0, 4, 8, 12, 16, 20, 24, 27)
#: the official rope table length of the Dancer models (149 frames · 30 fps · 5 s / 8)
ROPE_FRAMES = int(22350 / 8 + 0.5)
#: the music tokens' first resize (the official fixed size) and music tokens per latent frame
MUSIC_GRID = (149, 4800)
MUSIC_PER_FRAME = 8
IMAGE_TOKENS = 257
BASE_FPS = 30


def is_global(fps: float) -> bool:
    """Whether ``fps`` takes the global patching / head and the time-mapped rope."""
    return int(fps + 0.5) != BASE_FPS


def _freqs(dim: int, end: int) -> torch.Tensor:
    """The official ``precompute_freqs_cis``: complex128 ``[end, dim / 2]``."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
    angles = torch.outer(torch.arange(end, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)


def time_mapped(table: torch.Tensor, frames: int, fps: float) -> torch.Tensor:
    """The official ``get_single_freqs``: ``frames`` rows of the 30-fps ``table`` at ``i · 30 / fps``, linearly
    interpolated (complex values), the last row at the last 30-fps frame the clip spans."""
    interval = 30.0 / (fps + 1e-6)
    total = int(interval * frames + 0.5)
    source = table[:total]
    out = torch.zeros((frames, source.shape[1]), dtype=source.dtype)
    out[0] = source[0]
    out[-1] = source[total - 1]
    for i in range(1, frames - 1):
        pos = i * interval
        low = int(pos)
        high = min(low + 1, total - 1)
        out[i] = source[low] * (1.0 - (pos - low)) + source[high] * (pos - low)
    return out


def rope_tables(head_dim: int, grid: tuple[int, int, int], fps: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[1, f·h·w, 1, head_dim]`` in diffusers' interleaved layout (real and imaginary parts of the
    official complex rope, time-mapped at a global frame rate)."""
    f, h, w = grid
    tf = _freqs(head_dim - 2 * (head_dim // 3), ROPE_FRAMES)
    th = _freqs(head_dim // 3, ROPE_FRAMES)
    tw = th
    tf = time_mapped(tf, f, fps) if is_global(fps) else tf[:f]
    z = torch.cat([tf[:f].view(f, 1, 1, -1).expand(f, h, w, -1), th[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                   tw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, -1)
    z = z.repeat_interleave(2, dim=-1)
    return z.real.float()[None, :, None].to(device), z.imag.float()[None, :, None].to(device)


def sinusoid(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding (cos first), computed in float64."""
    half = dim // 2
    x = torch.outer(t.to(torch.float64), torch.pow(10000.0, -torch.arange(half, dtype=torch.float64,
                                                                             device=t.device) / half))
    return torch.cat([torch.cos(x), torch.sin(x)], dim=1).float()


class SplitCrossAttention:
    """A ``WanAttention`` processor for the blocks' cross-attention that takes the first ``image_tokens`` context
    tokens as the image ones (diffusers' own processor takes all but the last 512)."""

    image_tokens = IMAGE_TOKENS

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        n = self.image_tokens
        image, text = encoder_hidden_states[:, :n], encoder_hidden_states[:, n:]

        def heads(y):
            return y.unflatten(2, (attn.heads, -1)).transpose(1, 2)

        q = heads(attn.norm_q(attn.to_q(hidden_states)))
        out = F.scaled_dot_product_attention(q, heads(attn.norm_k(attn.to_k(text))), heads(attn.to_v(text)))
        out = out + F.scaled_dot_product_attention(q, heads(attn.norm_added_k(attn.add_k_proj(image))),
                                                   heads(attn.add_v_proj(image)))
        out = out.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class ImageMLP(nn.Module):
    """``img_emb_refimage``: LayerNorm, Linear, GELU, Linear, LayerNorm (the official ``MLP``; names ``proj.N``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Head(nn.Module):
    """``head_global``: the output head (LayerNorm without affine, modulated by the time embedding, Linear)."""

    def __init__(self, dim: int, out: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + temb.float()[:, None]).chunk(2, dim=1)
        return self.head((self.norm(x.float()) * (1 + scale) + shift).to(x.dtype))


def rotate_music(x: torch.Tensor) -> torch.Tensor:
    """``rotary_embedding_torch``'s ``rotate_queries_or_keys`` over the whole width (interleaved pairs, angles in
    float32) along the sequence axis ``-2``."""
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=x.device)[: d // 2].float() / d))
    angles = torch.outer(torch.arange(x.shape[-2], device=x.device).float(), inv).repeat_interleave(2, dim=-1)
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


class MusicAttention(nn.Module):
    """``nn.MultiheadAttention``'s weights (``in_proj_weight`` / ``in_proj_bias`` / ``out_proj``), batch first."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)

        def heads(y):
            return y.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(F.linear(qk, wq, bq)), heads(F.linear(qk, wk, bk)),
                                             heads(F.linear(v, wv, bv)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class MusicEncoderLayer(nn.Module):
    """``music_encoder.N``: pre-norm self-attention (rotated queries / keys) and a GELU MLP."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = MusicAttention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(rotate_music(h), h)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class MusicInjector(nn.Module):
    """``music_injector.injector.N``: the value and output projections (one key: the softmax is 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, music: torch.Tensor) -> torch.Tensor:
        return self.o(self.v(music))


class MusicInjectors(nn.Module):
    def __init__(self, dim: int, count: int):
        super().__init__()
        self.injector = nn.ModuleList([MusicInjector(dim) for _ in range(count)])


class WanDancerTransformer(ModelMixin, ConfigMixin):
    """Wan-Dancer: ``forward(x, timestep, context, clip, clip_ref, music, fps, music_scale)`` → the flow velocity
    of the noisy part of ``x`` (``x`` holds the 36 input channels: noisy latent, mask, start latent)."""

    @register_to_config
    def __init__(self, patch_size=(1, 2, 2), num_attention_heads: int = 40, attention_head_dim: int = 128,
                 in_channels: int = 36, out_channels: int = 16, text_dim: int = 4096, freq_dim: int = 256,
                 ffn_dim: int = 13824, num_layers: int = 40, eps: float = 1e-6, image_dim: int = 1280,
                 music_features: int = 35, music_dim: int = 256, music_heads: int = 4, music_ffn: int = 1024,
                 music_layers: int = 2, injectors: int = 8, inject_layers=INJECT_LAYERS):
        super().__init__()
        from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding, WanTransformerBlock

        dim = num_attention_heads * attention_head_dim
        out = out_channels * math.prod(patch_size)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.patch_embedding_global = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6,
                                                            text_embed_dim=text_dim, image_embed_dim=image_dim)
        self.blocks = nn.ModuleList([WanTransformerBlock(dim, ffn_dim, num_attention_heads, "rms_norm_across_heads",
                                                         True, eps, added_kv_proj_dim=dim) for _ in range(num_layers)])
        self.cross = SplitCrossAttention()
        for block in self.blocks:
            block.attn2.set_processor(self.cross)
        self.norm_out = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.head_global = Head(dim, out, eps)
        self.img_emb_refimage = ImageMLP(image_dim, dim)
        self.music_projection = nn.Linear(music_features, music_dim)
        self.music_encoder = nn.ModuleList([MusicEncoderLayer(music_dim, music_heads, music_ffn)
                                            for _ in range(music_layers)])
        self.music_injector = MusicInjectors(dim, injectors)
        self.injected = {layer: i for i, layer in enumerate(list(inject_layers)[:injectors])}

    def music_tokens(self, music: torch.Tensor, frames: int) -> torch.Tensor:
        """Music features ``[B, T, 35]`` → ``[B, 8 · frames, dim]``."""
        cfg = self.config
        x = self.music_projection(music.to(self.music_projection.weight.dtype))
        for layer in self.music_encoder:
            x = layer(x)
        x = F.interpolate(x[:, None], size=MUSIC_GRID, mode="bilinear")
        x = F.interpolate(x, size=(frames * MUSIC_PER_FRAME, cfg.num_attention_heads * cfg.attention_head_dim),
                          mode="bilinear")
        return x[:, 0]

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, clip: torch.Tensor | None,
                clip_ref: torch.Tensor | None = None, music: torch.Tensor | None = None, fps: float = 30.0,
                music_scale: float = 1.0) -> torch.Tensor:
        """``x`` ``[B, 36, T, h, w]`` in the model's space, ``timestep`` ``[B]`` (sigma · 1000), ``context``
        ``[B, 512, text_dim]``, ``clip`` / ``clip_ref`` the start / reference image's CLIP vision penultimate
        states ``[B, 257, 1280]``, ``music`` ``[B, frames, 35]`` (``None``: nothing injected), ``fps`` the clip's
        frame rate (from the music's length)."""
        cfg = self.config
        b, _, frames, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        grid = (frames // pt, h // ph, w // pw)
        glob = is_global(fps)
        if clip is None:
            raise ValueError("Wan-Dancer needs the start image's CLIP vision output (WanDancerVideo."
                             "clip_vision_output)")

        patch = self.patch_embedding_global if glob else self.patch_embedding
        hidden = patch(x.to(patch.weight.dtype)).flatten(2).transpose(1, 2)
        rope = rope_tables(cfg.attention_head_dim, grid, fps, hidden.device)

        emb = self.condition_embedder
        lin1 = emb.time_embedder.linear_1
        temb = emb.time_embedder.linear_2(F.silu(lin1(sinusoid(cfg.freq_dim, timestep.reshape(-1).expand(b)).to(
            lin1.weight.dtype))))
        e = emb.time_proj(F.silu(temb)).unflatten(1, (6, -1))
        parts = [emb.text_embedder(context.to(hidden.dtype))]
        parts.insert(0, emb.image_embedder(clip.to(hidden.dtype)))
        if clip_ref is not None:
            parts.insert(0, self.img_emb_refimage(clip_ref.to(hidden.dtype)))
        context = torch.cat(parts, dim=1)
        self.cross.image_tokens = parts[0].shape[1]

        tokens = self.music_tokens(music, grid[0]) if music is not None else None
        if tokens is not None and hidden.shape[1] % tokens.shape[1]:
            raise ValueError(f"Wan-Dancer: {hidden.shape[1]} video tokens do not split into the music's "
                             f"{tokens.shape[1]} groups (8 per latent frame): the latent's height × width / 4 "
                             "must be a multiple of 8")

        for i, block in enumerate(self.blocks):
            hidden = block(hidden, context, e, rope)
            if tokens is not None and i in self.injected:
                residual = self.music_injector.injector[self.injected[i]](tokens.to(hidden.dtype))
                group = hidden.shape[1] // tokens.shape[1]
                hidden = hidden + residual.repeat_interleave(group, dim=1) * music_scale

        if glob:
            out = self.head_global(hidden, temb)
        else:
            shift, scale = (self.scale_shift_table.float() + temb.float()[:, None]).chunk(2, dim=1)
            out = self.proj_out((self.norm_out(hidden.float()) * (1 + scale) + shift).to(hidden.dtype))
        nf, nh, nw = grid
        out = out.reshape(b, nf, nh, nw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, -1, nf * pt, nh * ph, nw * pw)
