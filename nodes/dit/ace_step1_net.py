"""ACE-Step 1.0's transformer (``ACEStepTransformer2DModel`` of the ACE-Step release; not in diffusers 0.42.1),
written from the release's description with its parameter names, which ComfyUI's all-in-one file keeps under
``model.diffusion_model.``.

Facts it follows:

* input ``[B, 8, 16, W]`` (8 DCAE channels × 16 mel rows × W frames); ``proj_in`` a (16, 1) patch conv to
  ``8·256`` channels, GroupNorm(32), 1×1 conv to the width: one token per frame; the output layer
  (``final_layer``: RMSNorm without weight, adaLN shift/scale from the embedded time, linear) maps each token
  back to 16 × 8 values;
* the time: 256 sinusoidal channels (cos first) → ``timestep_embedder`` → ``t_block`` (SiLU, linear to 6 widths)
  for the blocks' adaLN-single (``scale_shift_table`` [6, width]); the network time is ``1000 · sigma``;
* each block: RMSNorm → adaLN → *linear* self-attention (ReLU kernel on queries and keys, RoPE on both, values
  padded with a row of ones for the normaliser, computed in float32, ``eps`` 1e-15) → gated residual;
  softmax cross-attention on the encoder states (RoPE on the queries with their positions and on the keys with
  theirs; the ``add_*_proj`` / ``to_add_out`` weights are in the files but unused) → plain residual; RMSNorm →
  adaLN → GLU conv feed-forward (1×1 conv + SiLU, depthwise 3-tap conv, SiLU gate, 1×1 conv without bias) →
  gated residual. Head size 128 (not in the weights; ComfyUI's constant); RoPE base 1e6 with the release's
  layout (cos/sin of ``cat(freqs, freqs)`` against interleaved pairs);
* encoder states: ``speaker_embedder`` of a zero 512-vector (one token), ``genre_embedder`` of the UMT5
  states, the lyric tokens through ``lyric_embs``, the Conformer ``lyric_encoder`` (Espnet relative positions,
  no convolution module, full attention) and ``lyric_proj``, scaled by ``lyrics_strength`` (ComfyUI);
  all masks are ones (ComfyUI passes none);
* ``projectors.*`` (the training-time SSL heads) are not used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 128
ROPE_THETA = 1_000_000.0
PATCH = (16, 1)


@dataclass(frozen=True)
class AceStep1Config:
    width: int = 2560
    layers: int = 24
    ff_hidden: int = 6400
    in_channels: int = 8
    out_channels: int = 8
    speaker_dim: int = 512
    text_dim: int = 768
    lyric_vocab: int = 6693
    lyric_width: int = 1024
    lyric_heads: int = 16
    lyric_ff: int = 4096
    lyric_layers: int = 6
    ssl_dims: tuple = (1024, 768)
    head_dim: int = HEAD_DIM

    @property
    def heads(self) -> int:
        return self.width // self.head_dim


def _rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm without weight, computed in float32 (diffusers' RMSNorm)."""
    var = x.float().pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(var + eps)).to(x.dtype)


def rope_tables(length: int, dim: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    freqs = torch.outer(torch.arange(length, device=device, dtype=torch.int64).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, tables) -> torch.Tensor:
    """``x`` ``[B, H, S, D]``: ``x·cos + rot(x)·sin`` with ``rot`` over interleaved pairs."""
    cos, sin = tables
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-odd, even], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Projections(nn.Module):
    """``to_q``/``to_k``/``to_v``/``to_out.0`` (with biases), plus the unused ``add_*`` ones of the cross
    attention so that the files load strictly."""

    def __init__(self, width: int, extra: bool):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(width, width), nn.Dropout(0.0)])
        if extra:
            self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(width, width) for _ in range(3))
            self.to_add_out = nn.Linear(width, width)


def linear_attention(attn: Projections, x: torch.Tensor, heads: int, rope) -> torch.Tensor:
    b, s, _ = x.shape
    q = attn.to_q(x).view(b, s, heads, -1).transpose(1, 2)  # [B, H, S, D]
    k = attn.to_k(x).view(b, s, heads, -1).transpose(1, 2)
    v = attn.to_v(x).view(b, s, heads, -1).permute(0, 2, 3, 1)  # [B, H, D, S]
    q, k = F.relu(apply_rope(q, rope)).float(), F.relu(apply_rope(k, rope)).float()
    v = F.pad(v.float(), (0, 0, 0, 1), value=1.0)  # a row of ones: the normaliser
    out = (v @ k) @ q.transpose(-1, -2)  # [B, H, D + 1, S]
    out = out[:, :, :-1] / (out[:, :, -1:] + 1e-15)
    out = out.reshape(b, -1, s).transpose(1, 2).to(x.dtype)
    return attn.to_out[0](out)


def cross_attention(attn: Projections, x: torch.Tensor, ctx: torch.Tensor, heads: int, rope, rope_ctx):
    b = x.shape[0]
    q = apply_rope(attn.to_q(x).view(b, x.shape[1], heads, -1).transpose(1, 2), rope)
    k = apply_rope(attn.to_k(ctx).view(b, ctx.shape[1], heads, -1).transpose(1, 2), rope_ctx)
    v = attn.to_v(ctx).view(b, ctx.shape[1], heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, x.shape[1], -1)
    return attn.to_out[0](out.to(q.dtype))


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=bias)


class GluConvFeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.inverted_conv = _Conv(width, hidden * 2, 1)
        self.depth_conv = _Conv(hidden * 2, hidden * 2, 3, groups=hidden * 2)
        self.point_conv = _Conv(hidden, width, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.inverted_conv.conv(x.transpose(1, 2)))
        x, gate = self.depth_conv.conv(x).chunk(2, dim=1)
        return self.point_conv.conv(x * F.silu(gate)).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, cfg: AceStep1Config):
        super().__init__()
        self.heads = cfg.heads
        self.attn = Projections(cfg.width, extra=False)
        self.cross_attn = Projections(cfg.width, extra=True)
        self.ff = GluConvFeedForward(cfg.width, cfg.ff_hidden)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, cfg.width))

    def forward(self, x, ctx, temb, rope, rope_ctx):
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (
            self.scale_shift_table[None] + temb.reshape(x.shape[0], 6, -1)).chunk(6, dim=1)
        h = _rms(x) * (1 + scale_a) + shift_a
        x = x + gate_a * linear_attention(self.attn, h, self.heads, rope)
        x = x + cross_attention(self.cross_attn, x, ctx, self.heads, rope, rope_ctx)
        h = _rms(x) * (1 + scale_f) + shift_f
        return x + gate_f * self.ff(h)


# -- lyric encoder (Conformer without convolution module) --------------------------------------------------

def relative_positions(length: int, width: int, device) -> torch.Tensor:
    """Espnet's relative sinusoids for offsets ``length-1 … -(length-1)``: ``[1, 2·length - 1, width]``."""
    pos = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(torch.arange(0, width, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / width))
    pe = torch.zeros(pos.shape[0], width, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe[None]


class RelAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.h, self.d = heads, width // heads
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (nn.Linear(width, width) for _ in range(4))
        self.linear_pos = nn.Linear(width, width, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d)
        k = self.linear_k(x).view(b, t, self.h, self.d).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d).transpose(1, 2)
        p = self.linear_pos(pos).view(1, -1, self.h, self.d).transpose(1, 2)  # [1, H, 2T-1, D]
        ac = (q + self.pos_bias_u).transpose(1, 2) @ k.transpose(-2, -1)
        bd = (q + self.pos_bias_v).transpose(1, 2) @ p.transpose(-2, -1)  # [B, H, T, 2T-1]
        # column j of query i holds offset (T-1) - j; take offset i - j' for key j': column (T-1) - i + j'
        idx = (torch.arange(t, device=x.device)[None, :] - torch.arange(t, device=x.device)[:, None]) + (t - 1)
        bd = torch.gather(bd, -1, idx.expand(b, self.h, t, t))
        attn = torch.softmax((ac + bd) / math.sqrt(self.d), dim=-1)
        return self.linear_out((attn @ v).transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = RelAttention(width, heads)
        self.feed_forward = FeedForward(width, hidden)
        self.norm_ff = nn.LayerNorm(width, eps=1e-5)
        self.norm_mha = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x, pos):
        x = x + self.self_attn(self.norm_mha(x), pos)
        return x + self.feed_forward(self.norm_ff(x))


class _Embed(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width, eps=1e-5), nn.Dropout(0.0))


class LyricEncoder(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, layers: int):
        super().__init__()
        self.width = width
        self.embed = _Embed(width)
        self.encoders = nn.ModuleList(ConformerLayer(width, heads, hidden) for _ in range(layers))
        self.after_norm = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed.out(x) * math.sqrt(self.width)
        pos = relative_positions(x.shape[1], self.width, x.device).to(x.dtype)
        for layer in self.encoders:
            x = layer(x, pos)
        return self.after_norm(x)


# -- the transformer ------------------------------------------------------------------------------------

class _PatchEmbed(nn.Module):
    def __init__(self, cin: int, width: int):
        super().__init__()
        self.early_conv_layers = nn.Sequential(
            nn.Conv2d(cin, cin * 256, kernel_size=PATCH, stride=PATCH),
            nn.GroupNorm(32, cin * 256, eps=1e-6), nn.Conv2d(cin * 256, width, 1))

    def forward(self, x):
        return self.early_conv_layers(x).flatten(2).transpose(1, 2)


class _FinalLayer(nn.Module):
    def __init__(self, width: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(width, PATCH[0] * PATCH[1] * cout)
        self.scale_shift_table = nn.Parameter(torch.zeros(2, width))
        self.cout = cout

    def forward(self, x, emb, frames: int):
        shift, scale = (self.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
        x = self.linear(_rms(x) * (1 + scale) + shift)  # [B, W, 16 · C]
        b, w = x.shape[:2]
        x = x.view(b, w, PATCH[0], self.cout).permute(0, 3, 2, 1)  # [B, C, 16, W]
        if frames > w:
            x = F.pad(x, (0, frames - w))
        return x[..., :frames]


class _Mlp(nn.Module):
    """The SSL projectors (training only; kept so the files load strictly)."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, 2 * width), nn.SiLU(),
                                 nn.Linear(2 * width, out))


class AceStep1Transformer(nn.Module):
    def __init__(self, cfg: AceStep1Config):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.cfg = cfg
        #: what the runners' shared helpers read (``num_attention_heads``, ``attention_head_dim``)
        self.config = SimpleNamespace(**asdict(cfg), num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim)
        w = cfg.width
        self.transformer_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=w)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
        self.speaker_embedder = nn.Linear(cfg.speaker_dim, w)
        self.genre_embedder = nn.Linear(cfg.text_dim, w)
        self.lyric_embs = nn.Embedding(cfg.lyric_vocab, cfg.lyric_width)
        self.lyric_encoder = LyricEncoder(cfg.lyric_width, cfg.lyric_heads, cfg.lyric_ff, cfg.lyric_layers)
        self.lyric_proj = nn.Linear(cfg.lyric_width, w)
        self.projectors = nn.ModuleList(_Mlp(w, d).seq for d in cfg.ssl_dims)
        self.proj_in = _PatchEmbed(cfg.in_channels, w)
        self.final_layer = _FinalLayer(w, cfg.out_channels)

    def encode(self, text: torch.Tensor, lyrics: torch.Tensor, lyrics_strength: float = 1.0) -> torch.Tensor:
        """Encoder states ``[B, 1 + L_text + L_lyrics, width]`` of UMT5 states and lyric token ids."""
        b = text.shape[0]
        speaker = self.speaker_embedder(torch.zeros(b, self.cfg.speaker_dim, device=text.device, dtype=text.dtype))
        lyric = self.lyric_proj(self.lyric_encoder(self.lyric_embs(lyrics.to(text.device)).to(text.dtype)))
        return torch.cat([speaker[:, None], self.genre_embedder(text), lyric * lyrics_strength], dim=1)

    def decode(self, x: torch.Tensor, timestep: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        emb = self.timestep_embedder(self.time_proj(timestep).to(x.dtype))
        temb = self.t_block(emb)
        h = self.proj_in(x)
        rope = rope_tables(h.shape[1], self.cfg.head_dim, h.device, h.dtype)
        rope_ctx = rope_tables(ctx.shape[1], self.cfg.head_dim, h.device, h.dtype)
        for block in self.transformer_blocks:
            h = block(h, ctx, temb, rope, rope_ctx)
        return self.final_layer(h, emb, x.shape[-1])

    def forward(self, x, timestep, text, lyrics, lyrics_strength: float = 1.0):
        return self.decode(x, timestep, self.encode(text, lyrics, lyrics_strength))


def _count(sd: dict, prefix: str) -> int:
    import re

    found = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(found) + 1 if found else 0


def config_from_weights(sd: dict) -> AceStep1Config:
    """The config of a state dict in the release's names (no prefix)."""
    from nodegraph_nodes.diffusion.files import ModelFileError

    try:
        width = int(sd["proj_in.early_conv_layers.2.weight"].shape[0])
        lyric = sd["lyric_embs.weight"]
        cfg = AceStep1Config(
            width=width, layers=_count(sd, "transformer_blocks."),
            ff_hidden=int(sd["transformer_blocks.0.ff.inverted_conv.conv.weight"].shape[0]) // 2,
            in_channels=int(sd["proj_in.early_conv_layers.0.weight"].shape[1]),
            out_channels=int(sd["final_layer.linear.weight"].shape[0]) // (PATCH[0] * PATCH[1]),
            speaker_dim=int(sd["speaker_embedder.weight"].shape[1]), text_dim=int(sd["genre_embedder.weight"].shape[1]),
            lyric_vocab=int(lyric.shape[0]), lyric_width=int(lyric.shape[1]),
            lyric_heads=int(sd["lyric_encoder.encoders.0.self_attn.pos_bias_u"].shape[0]),
            lyric_ff=int(sd["lyric_encoder.encoders.0.feed_forward.w_1.weight"].shape[0]),
            lyric_layers=_count(sd, "lyric_encoder.encoders."),
            ssl_dims=tuple(int(sd[f"projectors.{i}.4.weight"].shape[0]) for i in range(_count(sd, "projectors."))))
    except KeyError as exc:
        raise ModelFileError(f"the ACE-Step 1.0 transformer weights lack {exc.args[0]}") from None
    if cfg.width % HEAD_DIM:
        raise ModelFileError(f"the ACE-Step 1.0 transformer is {cfg.width} wide, not a multiple of its head size "
                             f"{HEAD_DIM}")
    return cfg
