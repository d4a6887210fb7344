"""Tiny random-weight Wan Fun Camera / Fun Control transformers: diffusers' ``WanTransformer3DModel`` with the Fun
adapters (nodegraph's subclass of it, :mod:`nodegraph_nodes.dit.wan_fun_adapters`), saved in Wan's original names
under ``model.diffusion_model.`` beside the adapters' own names, as ComfyUI's repackaged files have them.

``write_fun(models, name, …)`` writes ``models/diffusion_models/<name>`` and returns the module; the text encoder,
VAE and CLIP vision tower are :mod:`tests.dit.tiny_wan`'s (and :mod:`tests.dit.tiny_wan22`'s 48-channel VAE).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_wan import CLIP_VISION_WIDTH, TEXT_WIDTH, wan_original_layout

#: ``(in_channels, image_dim, camera, reference channels, out_channels)`` of each kind
KINDS = {
    "camera21": (32, CLIP_VISION_WIDTH, True, None, 16),  # Wan 2.1 Fun Camera v1.1: start latent, CLIP attention
    "camera22": (36, None, True, None, 16),  # Wan 2.2 Fun Camera A14B: mask + start latent
    "control21": (48, CLIP_VISION_WIDTH, False, None, 16),  # Wan 2.1 Fun Control: control + start latents
    "control22": (52, None, False, 16, 16),  # Wan 2.2 Fun Control A14B: control, mask, start; ref_conv
    "control22_5b": (148, None, False, 48, 48),  # Wan 2.2 Fun Control 5B
}


def fun_transformer(kind: str, seed: int = 61):
    from nodegraph_nodes.dit.wan_fun_adapters import transformer_class

    in_channels, image_dim, camera, reference, out_channels = KINDS[kind]
    torch.manual_seed(0)
    net = transformer_class()(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                              in_channels=in_channels, out_channels=out_channels, text_dim=TEXT_WIDTH, freq_dim=32,
                              ffn_dim=96, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                              eps=1e-6, image_dim=image_dim, added_kv_proj_dim=256 if image_dim else None,
                              in_dim_control_adapter=24 if camera else None, in_dim_ref_conv=reference)
    return _random_transformer(net, seed)


def write_fun(models: Path, name: str, kind: str, seed: int = 61):
    """The tiny ``kind`` transformer saved as ``models/diffusion_models/<name>`` (ComfyUI's layout); the module."""
    net = fun_transformer(kind, seed)
    sd = net.state_dict()
    adapters = {k: v for k, v in sd.items() if k.startswith(("control_adapter.", "ref_conv."))}
    layout = wan_original_layout({k: v for k, v in sd.items() if k not in adapters})
    layout.update({"model.diffusion_model." + k: v.contiguous() for k, v in adapters.items()})
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(layout, str(models / "diffusion_models" / name))
    return net
