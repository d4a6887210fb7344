"""A tiny random ControlNet for the tiny SD 1.x model of :mod:`tests.helpers.tiny_sd`, saved as ComfyUI
finds ControlNets (SD 1.x or SDXL-shaped, after the base model's UNet): the original single-file layout (``control_model.input_blocks…``, written here
independently of the loader, which converts with diffusers' own converter), a *difference* file (weights
minus the base UNet's, with the ``difference`` marker), a diffusers folder and a single file in diffusers'
key layout without its config (``<name>_hf.safetensors``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from tests.helpers.ldm_export import unet_to_ldm
from tests.helpers.tiny_sd import TinySD, _randomize


@dataclass
class TinyControlNet:
    module: object
    single_file: Path
    difference_file: Path
    folder: Path


def controlnet_to_ldm(sd: dict[str, torch.Tensor], config, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel keys → the original ControlNet layout."""
    blocks = len(config.conditioning_embedding_out_channels) * 2 - 2
    own = {"controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
           "controlnet_cond_embedding.conv_out.": f"input_hint_block.{2 * blocks + 2}.",
           "controlnet_mid_block.": "middle_block_out.0."}
    own.update({f"controlnet_cond_embedding.blocks.{i}.": f"input_hint_block.{2 * i + 2}." for i in range(blocks)})
    shared: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith("controlnet_down_blocks."):
            index, rest = key[len("controlnet_down_blocks."):].split(".", 1)
            out[f"{prefix}zero_convs.{index}.0.{rest}"] = value
            continue
        hit = next((hf for hf in own if key.startswith(hf)), None)
        if hit is not None:
            out[prefix + own[hit] + key[len(hit):]] = value
        else:
            shared[key] = value
    unet_cfg = SimpleNamespace(block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                               down_block_types=config.down_block_types,
                               up_block_types=[t.replace("Down", "Up") for t in reversed(config.down_block_types)])
    for key, value in unet_to_ldm(shared, unet_cfg).items():
        out[prefix + key[len("model.diffusion_model."):]] = value
    return out


def build_controlnet(root: Path, tiny: TinySD, name: str = "tiny_cn") -> TinyControlNet:
    from diffusers import ControlNetModel

    torch.manual_seed(5)
    cfg = tiny.unet.config
    keys = ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim", "attention_head_dim",
            "norm_num_groups", "transformer_layers_per_block", "use_linear_projection", "addition_embed_type",
            "addition_time_embed_dim", "projection_class_embeddings_input_dim")
    net = ControlNetModel(conditioning_embedding_out_channels=(8, 8, 8, 16),
                          **{k: getattr(cfg, k) for k in keys}).eval()
    _randomize(net, 0.05)
    folder = root / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    sd = net.state_dict()
    ldm = controlnet_to_ldm(sd, net.config)
    single = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(single))
    base = tiny.unet.state_dict()
    diff_sd = {k: (v - base[k]) if k in base else v for k, v in sd.items()}
    diff = controlnet_to_ldm(diff_sd, net.config)
    diff["difference"] = torch.tensor([])
    difference = folder / f"{name}_diff.safetensors"
    save_file({k: v.contiguous() for k, v in diff.items()}, str(difference))
    net_dir = folder / f"{name}_diffusers"
    net.save_pretrained(str(net_dir))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / f"{name}_hf.safetensors"))
    return TinyControlNet(net, single, difference, net_dir)
