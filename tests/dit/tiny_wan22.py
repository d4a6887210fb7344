"""A tiny random-weight Wan 2.2 TI2V 5B model from the real diffusers classes: the transformer
(``WanTransformer3DModel``, 48 input and output channels) in Wan's original names under
``model.diffusion_model.`` and the 48-channel residual VAE (``AutoencoderKLWan``, ``is_residual``, 2×2 patches)
in Wan's original VAE names (``encoder.downsamples.N.downsamples.M.residual.…``, ``conv1`` / ``conv2``), as
ComfyUI's repackaged ``wan2.2_ti2v_5B_fp16.safetensors`` and ``wan2.2_vae.safetensors`` have them; beside the
tiny UMT5 encoder and tokenizer of :mod:`tests.dit.tiny_wan`.

``build_wan22(root)`` writes ``root/models/diffusion_models/tiny_wan2.2_ti2v_5B.safetensors`` (and a Fun InP 5B
transformer, 100 input channels: ``tiny_wan2.2_fun_inpaint_5B.safetensors``),
``vae/tiny_wan2.2_vae.safetensors``, ``text_encoders/tiny_umt5_xxl.safetensors`` (+ ``umt5_tokenizer/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.dit.tiny_wan import umt5, wan_original_layout, write_umt5_tokenizer
from tests.helpers.tiny_sd import _randomize

NET_FILE = "tiny_wan2.2_ti2v_5B.safetensors"
FUN_FILE = "tiny_wan2.2_fun_inpaint_5B.safetensors"  # 100 input channels: latent, 4-channel mask, image latent
VAE_FILE = "tiny_wan2.2_vae.safetensors"


def wan22_vae():
    from diffusers import AutoencoderKLWan

    from nodegraph_nodes.dit.wan22_5b import WAN22_MEAN, WAN22_STD

    torch.manual_seed(7)
    vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=48, in_channels=12, out_channels=12, patch_size=2,
                           is_residual=True, scale_factor_temporal=4, scale_factor_spatial=16, dim_mult=[1, 2, 4, 4],
                           temperal_downsample=[False, True, True], num_res_blocks=2, attn_scales=[],
                           latents_mean=list(WAN22_MEAN), latents_std=list(WAN22_STD)).eval()
    _randomize(vae, 0.1)
    return vae


_RESNET = (("norm1", "residual.0"), ("conv1", "residual.2"), ("norm2", "residual.3"), ("conv2", "residual.6"),
           ("conv_shortcut", "shortcut"))


def wan22_vae_original_layout(sd: dict) -> dict:
    """Wan's original names (Wan 2.2's ``vae2_2`` modules, as ComfyUI reads them) for a diffusers Wan 2.2 VAE."""
    resnets: dict[tuple[str, str], int] = {}
    for k in sd:
        if m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.", k):
            key = (m.group(1), m.group(3))
            resnets[key] = max(resnets.get(key, 0), int(m.group(4)) + 1)
    out = {}
    for k, v in sd.items():
        new = k
        if m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)", k):
            part, way, block, index, layer, rest = m.groups()
            layer = dict(_RESNET)[layer]
            new = f"{part}.{way}samples.{block}.{way}samples.{index}.{layer}.{rest}"
        elif m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(down|up)sampler\.(.*)", k):
            part, way, block, _, rest = m.groups()
            new = f"{part}.{way}samples.{block}.{way}samples.{resnets[(part, block)]}.{rest}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)\.(.*)", k):
            part, index, layer, rest = m.groups()
            new = f"{part}.middle.{2 * int(index)}.{dict(_RESNET)[layer]}.{rest}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k):
            new = f"{m.group(1)}.middle.1.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.(norm_out|conv_out|conv_in)\.(.*)", k):
            part, name, rest = m.groups()
            new = f"{part}.{ {'norm_out': 'head.0', 'conv_out': 'head.2', 'conv_in': 'conv1'}[name]}.{rest}"
        elif k.startswith("quant_conv."):
            new = "conv1." + k[len("quant_conv."):]
        elif k.startswith("post_quant_conv."):
            new = "conv2." + k[len("post_quant_conv."):]
        out[new] = v.contiguous()
    return out


@dataclass
class TinyWan22:
    transformer: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any
    root: Path
    fun_transformer: Any = None


def wan22_transformer(in_channels: int = 48, seed: int = 71):
    from diffusers import WanTransformer3DModel

    from tests.dit.tiny_flow import _random_transformer
    from tests.dit.tiny_wan import TEXT_WIDTH

    torch.manual_seed(0)
    net = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                in_channels=in_channels,
                                out_channels=48, text_dim=TEXT_WIDTH, freq_dim=32, ffn_dim=96, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    return _random_transformer(net, seed)


def build_wan22(root: Path) -> TinyWan22:
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tokenizer = write_umt5_tokenizer(models / "text_encoders" / "umt5_tokenizer")
    te, net, vae = umt5(), wan22_transformer(), wan22_vae()
    save_file(wan_original_layout(net.state_dict()), str(models / "diffusion_models" / NET_FILE))
    save_file({k: v.clone().contiguous() for k, v in te.state_dict().items()},
              str(models / "text_encoders" / "tiny_umt5_xxl.safetensors"))
    save_file(wan22_vae_original_layout(vae.state_dict()), str(models / "vae" / VAE_FILE))
    fun = wan22_transformer(100, 73)
    save_file(wan_original_layout(fun.state_dict()), str(models / "diffusion_models" / FUN_FILE))
    return TinyWan22(net, te, tokenizer, vae, root, fun)

