"""InfiniteTalk's audio adapter for Wan 2.1 I2V (MeiGen-AI; the MultiTalk-style audio cross-attention).

The adapter file (ComfyUI's ``model_patches/wan2.1_infiniteTalk_{single,multi}_fp16.safetensors``, the official
``infinitetalk.safetensors``) holds ``audio_proj.*`` (an MLP that turns windows of wav2vec2 hidden states
into 32 audio tokens per latent frame) and, per DiT block, ``blocks.N.norm_x`` (LayerNorm with affine) and
``blocks.N.audio_cross_attn.{q_linear,kv_linear,proj}``. In each block, after the text cross-attention,
``x += scale · proj(attn(q_linear(norm_x(x)) per latent frame, that frame's audio tokens))``.

What the official code does, reimplemented here:

- :func:`audio_windows`: for each video frame ``t`` the wav2vec2 frames ``t-2 … t+2`` (clamped to the
  clip), one stack per speaker: ``[speakers, frames, 5, layers, channels]``.
- :func:`frame_groups`: video frame 0 keeps its 5-window; each later latent frame (4 video frames) takes
  frame 1's first half-window, the middle frames' centres and frame 4's second half (8 rows).
- :class:`AudioProjection`: relu(proj1 / proj1_vf) → relu(proj2) → proj3 → LayerNorm, 32 tokens per latent
  frame; the speakers' tokens are joined per frame (``[1, latent_frames, speakers·32, dim]``).
- :class:`AudioCrossAttention`: per latent frame, the frame's visual tokens attend to its audio tokens.
  With two speakers the queries get a 1-D rotary position from the speaker the token belongs to
  (:func:`speaker_positions`, from :func:`speaker_attention_map` of the block's self-attention q/k against
  the speakers' masks on the first latent frame) and each speaker's keys the centre of its bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: the window of wav2vec2 frames around each video frame, and how many video frames a latent frame holds
AUDIO_WINDOW = 5
VAE_SCALE = 4
#: the two speakers' rotary buckets: positions 0..4 and 20..24, background 12
CLASS_RANGE = 24
CLASS_INTERVAL = 4


@dataclass(frozen=True)
class InfiniteTalkConfig:
    """The adapter's sizes, read off its weights (heads come from the Wan model it patches)."""

    dim: int
    num_blocks: int
    #: wav2vec2 layers × channels of one audio frame (12 × 768 in the released files)
    audio_row: int
    intermediate_dim: int
    context_tokens: int
    token_dim: int

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], name: str = "adapter") -> "InfiniteTalkConfig":
        need = ("audio_proj.proj1.weight", "audio_proj.proj3.weight", "audio_proj.norm.weight",
                "blocks.0.audio_cross_attn.q_linear.weight")
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"{name}: not an InfiniteTalk adapter (no {', '.join(missing)})")
        inter, first_in = sd["audio_proj.proj1.weight"].shape
        token_dim = int(sd["audio_proj.norm.weight"].shape[0])
        tokens = int(sd["audio_proj.proj3.weight"].shape[0]) // token_dim
        if first_in % AUDIO_WINDOW:
            raise ValueError(f"{name}: audio_proj.proj1 takes {first_in} inputs, not a multiple of the "
                             f"{AUDIO_WINDOW}-frame audio window")
        blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        return cls(dim=int(sd["blocks.0.audio_cross_attn.q_linear.weight"].shape[0]), num_blocks=blocks,
                   audio_row=int(first_in) // AUDIO_WINDOW, intermediate_dim=int(inter),
                   context_tokens=tokens, token_dim=token_dim)


def is_infinitetalk(sd) -> bool:
    """Whether a model-patch file (its state dict or its key set) is an InfiniteTalk adapter."""
    return "audio_proj.proj1_vf.weight" in sd and "blocks.0.audio_cross_attn.kv_linear.weight" in sd


def audio_windows(features: list[torch.Tensor], start: int, end: int, window: int = AUDIO_WINDOW) -> torch.Tensor:
    """``[speakers, end-start, window, layers, channels]``: per video frame ``t`` the feature rows
    ``t - window//2 … t + window//2`` of each speaker's ``[frames, layers, channels]``, clamped to its length.
    Where ``end`` passes the audio, the track is first padded to ``end`` with its first row (most likely
    silence; ComfyUI's rule, the official pipeline pads otherwise)."""
    half = window // 2
    offsets = torch.arange(window) - half
    out = []
    for feats in features:
        if end > feats.shape[0]:
            feats = torch.cat([feats, feats[:1].expand(end - feats.shape[0], *feats.shape[1:])])
        rows = (torch.arange(start, end)[:, None] + offsets[None]).clamp(0, feats.shape[0] - 1)
        out.append(feats[rows])
    return torch.stack(out)


def frame_groups(windows: torch.Tensor, window: int = AUDIO_WINDOW,
                 vae_scale: int = VAE_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first [S, 1, window, L, C], latter [S, latent_frames-1, window+vae_scale-1, L, C])`` from
    :func:`audio_windows` of ``1 + vae_scale·k`` video frames."""
    first, rest = windows[:, :1], windows[:, 1:]
    if rest.shape[1] % vae_scale:
        raise ValueError(f"InfiniteTalk: {windows.shape[1]} video frames; the audio needs 1 + {vae_scale}·k")
    s, n = rest.shape[:2]
    rest = rest.reshape(s, n // vae_scale, vae_scale, *rest.shape[2:])
    mid = window // 2
    head = rest[:, :, 0, :mid + 1]
    centre = rest[:, :, 1:-1, mid]
    tail = rest[:, :, -1, mid:]
    return first, torch.cat([head, centre, tail], dim=2)


class AudioProjection(nn.Module):
    """The audio-window MLP: ``audio_proj.{proj1, proj1_vf, proj2, proj3, norm}``."""

    def __init__(self, cfg: InfiniteTalkConfig, window: int = AUDIO_WINDOW, vae_scale: int = VAE_SCALE):
        super().__init__()
        per_row = cfg.audio_row
        self.context_tokens, self.token_dim = cfg.context_tokens, cfg.token_dim
        self.proj1 = nn.Linear(window * per_row, cfg.intermediate_dim)
        self.proj1_vf = nn.Linear((window + vae_scale - 1) * per_row, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.token_dim)
        self.norm = nn.LayerNorm(cfg.token_dim)

    def forward(self, first: torch.Tensor, latter: torch.Tensor) -> torch.Tensor:
        """``[speakers, latent_frames, tokens, token_dim]`` from :func:`frame_groups`' two parts."""
        s = first.shape[0]
        a = torch.relu(self.proj1(first.flatten(2)))
        b = torch.relu(self.proj1_vf(latter.flatten(2)))
        h = torch.relu(self.proj2(torch.cat([a, b], dim=1)))
        tokens = self.proj3(h).reshape(s, h.shape[1], self.context_tokens, self.token_dim)
        return self.norm(tokens.float()).to(tokens.dtype)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3…) → (-x1, x0, -x3, x2…)``: the interleaved-pair rotation of 1-D RoPE."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def rope_1d(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x [..., N, D]`` rotated by real ``positions [N]`` (base 10000, interleaved pairs), in float32."""
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=x.device)[: d // 2].float() / d))
    angles = (positions.float().to(x.device)[:, None] * inv[None]).repeat_interleave(2, dim=-1)
    xf = x.float()
    return (xf * angles.cos() + rotate_pairs(xf) * angles.sin()).type_as(x)


def speaker_attention_map(q: torch.Tensor, k: torch.Tensor, frame_tokens: int, masks: torch.Tensor,
                          split_num: int = 2) -> torch.Tensor:
    """``[speakers, tokens]``: for each visual token, its softmax attention (self-attention ``q, k``
    ``[B, tokens, heads, head_dim]``) onto the first latent frame's tokens inside each speaker's mask
    (``[speakers, frame_tokens]`` of 0/1), summed and divided by the mask's size, averaged over the heads in
    ``split_num`` groups then over the groups (the official order; ComfyUI's 1e-8 keeps an empty mask at 0)."""
    ref_k = k[:, :frame_tokens]
    heads = q.shape[2]
    chunk = heads // split_num
    masks = masks.to(q.dtype)
    total = torch.zeros(masks.shape[0], q.shape[1], dtype=q.dtype, device=q.device)
    for i in range(split_num):
        qs = (q[:, :, i * chunk:(i + 1) * chunk] * (1.0 / math.sqrt(q.shape[-1]))).transpose(1, 2)
        ks = ref_k[:, :, i * chunk:(i + 1) * chunk].transpose(1, 2)
        probs = (qs @ ks.transpose(-2, -1)).softmax(-1)
        maps = [(probs * m[None, None, None]).sum(-1) / (m.sum() + 1e-8) for m in masks]  # ComfyUI's eps: empty masks
        total = total + torch.cat([m.permute(0, 2, 1).mean(-1) for m in maps], dim=0)
    return total / split_num


def speaker_positions(attn_map: torch.Tensor) -> torch.Tensor:
    """Each token's rotary position from :func:`speaker_attention_map` ``[2 or 3, tokens]`` (speaker 1,
    speaker 2, the official code's background mask): min-max-scaled into speaker 1's bucket ``[0, 4]`` or
    speaker 2's ``[20, 24]``, or the background's 12, whichever row is largest for the token."""
    h1, h2 = (0, CLASS_INTERVAL), (CLASS_RANGE - CLASS_INTERVAL, CLASS_RANGE)

    def scaled(row, bucket):
        lo, hi = row.min(), row.max()
        return (row - lo) / (hi - lo + 1e-8) * (bucket[1] - bucket[0]) + bucket[0]

    back = torch.full_like(attn_map[0], CLASS_RANGE // 2)
    table = torch.stack([scaled(attn_map[0], h1), scaled(attn_map[1], h2), back], dim=1)
    return table[torch.arange(attn_map.shape[1]), attn_map.argmax(dim=0)]


class AudioCrossAttention(nn.Module):
    """``blocks.N.audio_cross_attn``: visual tokens of each latent frame attend to that frame's audio tokens."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"InfiniteTalk: dim {dim} does not split into {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, frames: int,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, frames·S, dim]``, ``audio [frames, speakers·tokens, audio_dim]``; ``positions [frames·S]``
        (two speakers) rotate the queries, and the two halves of the audio tokens get their bucket centres."""
        b, n, dim = x.shape
        s = n // frames
        q = self.q_linear(x).view(b * frames, s, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_linear(audio).view(frames, audio.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        if b != 1:
            k, v = k.repeat(b, 1, 1, 1), v.repeat(b, 1, 1, 1)
        if positions is not None:
            q = rope_1d(q.reshape(b, frames, self.num_heads, s, self.head_dim).transpose(1, 2)
                        .reshape(b, self.num_heads, frames * s, self.head_dim), positions)
            q = q.reshape(b, self.num_heads, frames, s, self.head_dim).transpose(1, 2) \
                .reshape(b * frames, self.num_heads, s, self.head_dim)
            tokens = audio.shape[1]
            centre = torch.empty(tokens, device=x.device)
            centre[: tokens // 2] = CLASS_INTERVAL / 2
            centre[tokens // 2:] = CLASS_RANGE - CLASS_INTERVAL / 2
            k = rope_1d(k, centre)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class InfiniteTalkBlock(nn.Module):
    """One DiT block's audio layers: ``norm_x`` and ``audio_cross_attn``."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim, eps=1e-6)
        self.audio_cross_attn = AudioCrossAttention(dim, audio_dim, num_heads)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, frames: int,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        normed = F.layer_norm(x.float(), (x.shape[-1],), self.norm_x.weight.float(), self.norm_x.bias.float(),
                              self.norm_x.eps).to(x.dtype)
        return self.audio_cross_attn(normed, audio, frames, positions)


class InfiniteTalkAdapter(nn.Module):
    """The whole adapter: the audio projection and one :class:`InfiniteTalkBlock` per DiT block."""

    def __init__(self, cfg: InfiniteTalkConfig, num_heads: int):
        super().__init__()
        self.cfg = cfg
        self.audio_proj = AudioProjection(cfg)
        self.blocks = nn.ModuleList(InfiniteTalkBlock(cfg.dim, cfg.token_dim, num_heads)
                                    for _ in range(cfg.num_blocks))

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], num_heads: int, name: str = "adapter",
                        dtype: torch.dtype = torch.float32) -> "InfiniteTalkAdapter":
        adapter = cls(InfiniteTalkConfig.from_state_dict(sd, name), num_heads)
        missing, unexpected = adapter.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False)
        if missing or unexpected:
            raise ValueError(f"{name}: InfiniteTalk weights do not fit (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
        return adapter.to(dtype)

    def set_heads(self, num_heads: int) -> None:
        """Use the patched model's head count (the weights do not record it)."""
        for block in self.blocks:
            attn = block.audio_cross_attn
            if attn.q_linear.out_features % num_heads:
                raise ValueError(f"InfiniteTalk: dim {attn.q_linear.out_features} does not split into "
                                 f"{num_heads} heads")
            attn.num_heads, attn.head_dim = num_heads, attn.q_linear.out_features // num_heads

    def audio_tokens(self, features: list[torch.Tensor], start: int, end: int) -> torch.Tensor:
        """``[latent_frames, speakers·tokens, token_dim]`` for video frames ``start … end-1``."""
        for i, feats in enumerate(features):
            if feats.ndim != 3 or feats.shape[1] * feats.shape[2] != self.cfg.audio_row:
                raise ValueError(f"InfiniteTalk: speaker {i + 1}'s audio features have shape {list(feats.shape)}; "
                                 f"the adapter takes [frames, layers, channels] with layers × channels = "
                                 f"{self.cfg.audio_row} (all hidden states of its wav2vec2 encoder)")
        first, latter = frame_groups(audio_windows(features, start, end))
        p = self.audio_proj.proj1.weight
        tokens = self.audio_proj(first.to(p), latter.to(p))
        return torch.cat(tokens.split(1), dim=2)[0]
