"""InfiniteTalk's audio layers hooked into a diffusers ``WanTransformer3DModel``'s blocks for one sampling run.

The official block (MeiGen-AI ``WanAttentionBlock``) runs self-attention, text/image cross-attention, then
``x = x + audio_cross_attn(norm_x(x))``, then the FFN. A diffusers ``WanTransformerBlock`` has no such step,
so per block: a pre-hook on ``norm2`` keeps the block's ``x`` before the cross-attention, and a hook on
``attn2`` returns ``cross + scale · audio(x + cross)`` (the block adds it to ``x``). With two speakers a hook
on ``attn1`` recomputes that block's rotary-embedded self-attention ``q, k`` from its input to get each
token's speaker (:func:`~.wan_infinitetalk.speaker_attention_map`), as the official self-attention does.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .wan_infinitetalk import InfiniteTalkAdapter, speaker_attention_map, speaker_positions


@dataclass
class AudioCall:
    """What the hooks add in one run: the adapter, the latent frames' audio tokens ``[F, speakers·tokens,
    dim]``, ``audio_scale``, and with two speakers the speakers' (and background) masks on one latent frame's
    tokens ``[classes, frame_tokens]``."""

    adapter: InfiniteTalkAdapter
    tokens: torch.Tensor
    scale: float = 1.0
    token_masks: torch.Tensor | None = None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan rotary embedding on ``x [B, N, heads, head_dim]`` (interleaved pairs)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


def self_attention_qk(attn: nn.Module, hidden: torch.Tensor, rotary_emb) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary-embedded ``q, k`` ``[B, N, heads, head_dim]`` a diffusers ``WanAttention`` computes."""
    q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
    k = attn.norm_k(attn.to_k(hidden)).unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        q, k = rotary(q, *rotary_emb), rotary(k, *rotary_emb)
    return q, k


@contextmanager
def attach_audio(blocks: Sequence[nn.Module], call: AudioCall, where: str = "WanInfiniteTalkToVideo") -> Iterator[None]:
    """Hooks the adapter's layers into ``blocks`` (diffusers ``WanTransformerBlock``) while the context is open."""
    adapter = call.adapter
    if len(adapter.blocks) < len(blocks):
        raise ValueError(f"{where}: the InfiniteTalk patch has {len(adapter.blocks)} blocks but the model "
                         f"{len(blocks)}")
    frames = int(call.tokens.shape[0])
    two = call.token_masks is not None
    with ExitStack() as stack:
        for index, block in enumerate(blocks):
            state: dict = {}
            layer = adapter.blocks[index]

            def keep_x(module, args, state=state):
                state["x"] = args[0]

            def speakers(module, args, output, state=state):
                hidden, rotary_emb = args[0], args[3] if len(args) > 3 else None
                with torch.no_grad():
                    q, k = self_attention_qk(module, hidden, rotary_emb)
                    masks = call.token_masks.to(q.device)
                    state["positions"] = [speaker_positions(speaker_attention_map(q[i:i + 1], k[i:i + 1],
                                                                                   masks.shape[1], masks))
                                          for i in range(q.shape[0])]

            def add_audio(module, args, output, state=state, layer=layer):
                x = state.pop("x").to(output.dtype) + output
                if x.shape[1] % frames:
                    raise ValueError(f"{where}: {x.shape[1]} video tokens do not split into the audio's "
                                     f"{frames} latent frames")
                p = layer.norm_x.weight
                tokens = call.tokens.to(p.device, p.dtype)
                positions = state.pop("positions", None)
                if positions is None:
                    audio = layer(x.to(p.dtype), tokens, frames)
                else:
                    audio = torch.cat([layer(x[i:i + 1].to(p.dtype), tokens, frames, pos)
                                       for i, pos in enumerate(positions)])
                return output + audio.to(output.dtype) * call.scale

            stack.callback(block.norm2.register_forward_pre_hook(keep_x).remove)
            stack.callback(block.attn2.register_forward_hook(add_audio).remove)
            if two:
                stack.callback(block.attn1.register_forward_hook(speakers).remove)
        yield
