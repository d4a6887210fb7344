"""LoRAs on Wan Animate 2 transformers (LoraLoader / LoraLoaderModelOnly; the template applies lightx2v's Wan 2.1
I2V 14B step-distill LoRA).

Wan LoRAs as users have them name Wan's original layers under ``diffusion_model.`` (or
``model.diffusion_model.``): ``diffusion_model.blocks.0.self_attn.q.lora_down.weight``. Wan Animate 2's blocks
are Wan 2.1's (the official file wraps each in ``blocks.N.block.``, a LoRA may or may not), so the layer names are
renamed the way diffusers converts the official transformer file
(:func:`diffusers.loaders.single_file_utils.convert_wan_animate_2_transformer_to_diffusers`: ``self_attn.q`` →
``self_attn.to_q``, ``cross_attn.k_img`` → ``cross_attn.add_k_proj`` …) and matched to the network's modules;
names already in the network's (diffusers') names under ``transformer.`` are read as they are.
"""

from __future__ import annotations

import torch

from nodegraph_nodes.diffusion.lora import _module_names
from nodegraph_nodes.dit.lora_common import diffusers_weight, finish, lora_layers
from nodegraph_nodes.dit.wan_lora import renamed_original


def renamed(sd: dict) -> dict:
    """LoRA ``sd`` with original-named keys renamed to the network's names under ``transformer.``."""
    from diffusers.loaders.single_file_utils import convert_wan_animate_2_transformer_to_diffusers

    return renamed_original(sd, convert_wan_animate_2_transformer_to_diffusers)


def animate2_lora_patch(net: torch.nn.Module, sd: dict, strength: float, name: str):
    """The LoRA patch of ``sd`` on the Wan Animate 2 transformer ``net``."""
    sd = renamed(sd)
    modules = _module_names(net, "unet")
    deltas, unread = {}, []
    for key, up, down, scale in lora_layers(sd):
        target = diffusers_weight(key, modules)
        if target is None:
            unread.append(key)
        else:
            deltas[target] = (up, down, scale)
    return finish(name, "wan", deltas, unread, strength, sd)
