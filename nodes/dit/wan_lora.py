"""LoRAs for Wan transformers (LoraLoader / LoraLoaderModelOnly on a Wan MODEL).

Besides diffusers' names (``transformer.blocks.0.attn1.to_q.lora_A.weight``, read by
:func:`nodegraph_nodes.dit.lora.flow_lora_patch`), Wan LoRAs as ComfyUI users have them (CausVid,
lightx2v …) use Wan's original layer names under ``diffusion_model.`` (or ``model.diffusion_model.``):
``diffusion_model.blocks.0.self_attn.q.lora_down.weight``. Their layer names are renamed the way diffusers
converts Wan's original transformer files (:func:`diffusers.loaders.single_file_utils.
convert_wan_transformer_to_diffusers`: ``self_attn.q`` → ``attn1.to_q``, ``ffn.0`` → ``ffn.net.0.proj``,
the norm2/norm3 swap, the VACE blocks' ``before_proj`` / ``after_proj`` …) and read like diffusers-named
ones. Kohya's underscore names (``lora_unet_blocks_0_self_attn_q``) are not read (the error names the
file).
"""

from __future__ import annotations

from typing import Callable

import torch

ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def renamed_original(sd: dict, convert: Callable[[dict], dict]) -> dict:
    """LoRA ``sd`` with its keys in Wan's original names (under one of :data:`ORIGINAL_PREFIXES`) renamed by
    ``convert`` (a diffusers converter of original transformer weights, given them without the prefix) and put
    under ``transformer.``; other keys are kept (``sd`` itself when it has no original names)."""
    original, kept = {}, {}
    for key, value in sd.items():
        prefix = next((p for p in ORIGINAL_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            kept[key] = value
        else:
            original[key[len(prefix):]] = value
    if not original:
        return sd
    converted = convert(original)
    return {**kept, **{"transformer." + k: v for k, v in converted.items()}}


def diffusers_names(sd: dict) -> dict:
    """LoRA ``sd`` with its keys in Wan's original names (under ``diffusion_model.``) renamed to diffusers'
    names under ``transformer.``; other keys are kept."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return renamed_original(sd, convert_wan_transformer_to_diffusers)


def wan_lora_patch(net: torch.nn.Module, sd: dict, strength: float, name: str):
    """The LoRA patch of ``sd`` (diffusers' or Wan's original names) on the Wan transformer ``net``."""
    from nodegraph_nodes.dit.lora import flow_lora_patch

    return flow_lora_patch("wan", net, diffusers_names(sd), strength, name)
