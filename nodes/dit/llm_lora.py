"""LoRAs for Qwen-Image and Z-Image transformers (LoraLoader / LoraLoaderModelOnly; the MODEL's
``lora_patch``), in the layouts users have:

* Qwen-Image: ComfyUI / lightx2v names (``diffusion_model.transformer_blocks.N.attn.to_q.lora_down.weight``
  + ``.alpha``, or ``lora_A``/``lora_B``), diffusers / PEFT names (``transformer.transformer_blocks.…``),
  kohya names (``lora_unet_transformer_blocks_N_attn_to_q``) and bare names — the transformer's own
  names in all of them.
* Z-Image: ComfyUI names of the NextDiT layout (``diffusion_model.layers.N.attention.qkv``, ``.out``,
  ``x_embedder`` …; a fused ``qkv`` delta is split by rows into ``to_q``/``to_k``/``to_v`` with the
  shared down matrix), their kohya forms (``lora_unet_layers_0_attention_qkv``, as ComfyUI maps every
  ``lora_unet_`` + flattened layer name) and diffusers names (dotted or kohya-flattened).

The deltas are ``strength · alpha/rank · up @ down`` on the matching weights (alpha defaults to the rank
when absent, as in ComfyUI), patched per run and restored (nodegraph_nodes.diffusion.lora.patched).
A file none of whose weights match is an error naming a key.
"""

from __future__ import annotations

import torch

from nodegraph_nodes.diffusion.components import LoraPatch
from nodegraph_nodes.diffusion.lora import _module_names
from nodegraph_nodes.dit.lora_common import TEXT_PREFIXES, finish, lora_layers

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet_", "lora_transformer_", "")


def _z_names(name: str, up: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diffusers' names (and the up matrix, split for a fused qkv) of a Z-Image layer in ComfyUI's names."""
    from nodegraph_nodes.dit.z_image import to_diffusers

    return {k[:-len(".weight")]: v for k, v in to_diffusers({name + ".weight": up}).items()}


def _z_original(modules: dict[str, str]) -> dict[str, str]:
    """ComfyUI's (NextDiT) names of a Z-Image transformer's layers, dotted and kohya-flattened → dotted."""
    out = {}
    for module in set(modules.values()):
        if ".attention.to_k" in module or ".attention.to_v" in module:
            continue
        dotted = (module.replace(".attention.to_q", ".attention.qkv").replace(".attention.to_out.0", ".attention.out")
                  .replace("all_x_embedder.2-1", "x_embedder").replace("all_final_layer.2-1", "final_layer"))
        out[dotted] = out[dotted.replace(".", "_")] = dotted
    return out


def llm_lora_patch(family: str, net: torch.nn.Module, sd: dict, strength: float, name: str) -> LoraPatch:
    """The deltas of LoRA ``sd`` on a ``qwen_image`` / ``z_image`` transformer ``net``."""
    modules = _module_names(net, "unet")
    original = _z_original(modules) if family == "z_image" else {}
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unread = []
    for key, up, down, scale in lora_layers(sd):
        hit = False
        for prefix in PREFIXES:
            if not key.startswith(prefix):
                continue
            layer = key[len(prefix):]
            if layer in modules:
                deltas[modules[layer] + ".weight"] = (up, down, scale)
                hit = True
                break
            dotted = layer if "." in layer else original.get(layer)
            if family == "z_image" and dotted:
                names = _z_names(dotted, up)
                if names and all(n in modules for n in names):
                    for n, part in names.items():
                        deltas[modules[n] + ".weight"] = (part, down, scale)
                    hit = True
                    break
        if not hit and not key.startswith(TEXT_PREFIXES):
            unread.append(key)
    return finish(name, family, deltas, unread, strength, sd)
