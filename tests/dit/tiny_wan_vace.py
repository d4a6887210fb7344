"""A tiny random-weight Wan 2.1 VACE model from the real diffusers class (``WanVACETransformer3DModel``: 4
blocks, VACE blocks after blocks 0 and 2) saved as ComfyUI's repackaged single file has it (Wan's original
names under ``model.diffusion_model.``, ``vace_blocks.N.before_proj`` / ``after_proj``), beside the tiny
UMT5 text encoder, tokenizer and Wan 2.1 VAE of :mod:`tests.dit.tiny_wan`.

``build_wan_vace(root)`` writes ``root/models/diffusion_models/tiny_wan2.1_vace.safetensors``,
``text_encoders/tiny_umt5_xxl.safetensors`` (+ ``umt5_tokenizer/``) and ``vae/tiny_wan_2.1_vae.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_qwen import wan_vae_layout
from tests.dit.tiny_wan import TEXT_WIDTH, umt5, wan_original_layout, wan_vae, write_umt5_tokenizer

VACE_FILE = "tiny_wan2.1_vace.safetensors"


def vace_transformer(seed: int = 61):
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(0)
    net = WanVACETransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                    in_channels=16, out_channels=16, text_dim=TEXT_WIDTH, freq_dim=32, ffn_dim=96,
                                    num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                    vace_layers=[0, 2], vace_in_channels=96)
    return _random_transformer(net, seed)


def vace_original_layout(sd: dict, prefix: str = "model.diffusion_model.") -> dict:
    """Wan's original names for a diffusers VACE state dict (the VACE blocks' projections as
    ``before_proj`` / ``after_proj``)."""
    renamed = {}
    for k, v in sd.items():
        if k.startswith("vace_blocks."):
            k = k.replace(".proj_in.", ".before_proj.").replace(".proj_out.", ".after_proj.")
        renamed[k] = v
    return wan_original_layout(renamed, prefix)


@dataclass
class TinyWanVace:
    transformer: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    root: Path


def build_wan_vace(root: Path) -> TinyWanVace:
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_umt5_tokenizer(models / "text_encoders" / "umt5_tokenizer")
    te, net, vae = umt5(), vace_transformer(), wan_vae()
    save_file(vace_original_layout(net.state_dict()), str(models / "diffusion_models" / VACE_FILE))
    save_file({k: v.clone().contiguous() for k, v in te.state_dict().items()},
              str(models / "text_encoders" / "tiny_umt5_xxl.safetensors"))
    save_file(wan_vae_layout(vae.state_dict()), str(models / "vae" / "tiny_wan_2.1_vae.safetensors"))
    return TinyWanVace(net, te, tokenizer, vae, root)
