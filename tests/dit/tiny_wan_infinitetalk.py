"""A tiny random InfiniteTalk adapter file (the released files' key layout) for the tiny Wan I2V transformer
(tests/dit/tiny_wan.py: dim 256, 2 blocks) and the tiny wav2vec2 large encoder (tests/dit/tiny_wan_s2v.py: 24
layers of 128)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def adapter_state(dim: int = 256, blocks: int = 2, audio_row: int = 24 * 128, inter: int = 16, tokens: int = 4,
                  token_dim: int = 32, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05, offset=0.0):
        return (torch.randn(*shape, generator=g) * scale + offset).contiguous()

    sd = {"audio_proj.proj1.weight": rnd(inter, 5 * audio_row, scale=0.01), "audio_proj.proj1.bias": rnd(inter),
          "audio_proj.proj1_vf.weight": rnd(inter, 8 * audio_row, scale=0.01), "audio_proj.proj1_vf.bias": rnd(inter),
          "audio_proj.proj2.weight": rnd(inter, inter, scale=0.3), "audio_proj.proj2.bias": rnd(inter),
          "audio_proj.proj3.weight": rnd(tokens * token_dim, inter, scale=0.3),
          "audio_proj.proj3.bias": rnd(tokens * token_dim),
          "audio_proj.norm.weight": rnd(token_dim, offset=1.0), "audio_proj.norm.bias": rnd(token_dim)}
    for i in range(blocks):
        p = f"blocks.{i}."
        sd.update({p + "norm_x.weight": rnd(dim, offset=1.0), p + "norm_x.bias": rnd(dim),
                   p + "audio_cross_attn.q_linear.weight": rnd(dim, dim),
                   p + "audio_cross_attn.q_linear.bias": rnd(dim),
                   p + "audio_cross_attn.kv_linear.weight": rnd(2 * dim, token_dim, scale=0.2),
                   p + "audio_cross_attn.kv_linear.bias": rnd(2 * dim),
                   p + "audio_cross_attn.proj.weight": rnd(dim, dim, scale=0.2),
                   p + "audio_cross_attn.proj.bias": rnd(dim)})
    return sd


def write_adapter(models: Path, name: str = "tiny_infinitetalk_single.safetensors", **kw) -> Path:
    folder = models / "model_patches"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in adapter_state(**kw).items()}, str(folder / name))
    return folder / name
