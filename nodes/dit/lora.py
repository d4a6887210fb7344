"""LoRAs for the flow transformers (LoraLoader / LoraLoaderModelOnly on an SD3 or Flux MODEL).

Key layouts read (each as low-rank ``up``/``down`` pairs with an optional ``alpha``, see
:mod:`nodegraph_nodes.diffusion.lora` for the suffixes):

* diffusers / PEFT: ``transformer.<module>.lora_A/lora_B.weight`` (both families);
* kohya names of the diffusers modules: ``lora_transformer_<module with _>``;
* Flux.1 in Black Forest Labs' names — kohya / ComfyUI: ``lora_unet_double_blocks_0_img_attn_qkv``,
  ``diffusion_model.double_blocks.0.img_attn.qkv`` — where one original layer is several diffusers
  layers (fused q/k/v, the single blocks' ``linear1``) the ``up`` matrix is split by rows exactly as the
  weight is (:func:`~nodegraph_nodes.dit.convert.convert_flux`) and the ``down`` matrix is shared.

SD3 LoRAs in the original MMDiT names (``joint_blocks``) are not read yet (an error names the file).
The deltas are added to the transformer's weights for each run and removed after it
(:func:`nodegraph_nodes.diffusion.lora.patched`).
"""

from __future__ import annotations


import torch

from nodegraph_nodes.diffusion.components import LoraPatch
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.diffusion.lora import _module_names
from nodegraph_nodes.dit import convert
from nodegraph_nodes.dit.lora_common import TEXT_PREFIXES, diffusers_weight, finish, lora_layers

_ORIGINAL_PREFIXES = ("lora_unet_", "diffusion_model.", "model.diffusion_model.")


def _original_lookup(cfg) -> dict[str, str]:
    names = convert.flux_original_keys(int(cfg.num_layers), int(cfg.num_single_layers))
    return {**{n: n for n in names}, **{n.replace(".", "_"): n for n in names}}


def flow_lora_patch(family: str, net: torch.nn.Module, sd: dict, strength: float, name: str) -> LoraPatch:
    """The deltas of LoRA ``sd`` on the transformer ``net`` of ``family`` (``sd3`` / ``flux``)."""
    modules = _module_names(net, "unet")
    original = _original_lookup(net.config) if family == "flux" else {}
    inner = int(net.config.num_attention_heads) * int(net.config.attention_head_dim)
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unread = []
    for key, up, down, scale in lora_layers(sd):
        target = diffusers_weight(key, modules)
        if target is not None:
            deltas[target] = (up, down, scale)
            continue
        prefix = next((p for p in _ORIGINAL_PREFIXES if key.startswith(p)), None)
        if prefix is not None and key[len(prefix):] in original:
            layer = original[key[len(prefix):]]
            for target, up_part in convert.convert_flux({layer + ".weight": up}, inner).items():
                deltas[target] = (up_part, down, scale)
            continue
        if key.startswith(("lora_unet_joint_blocks", "diffusion_model.joint_blocks", "joint_blocks")):
            raise ModelFileError(f"LoRA {name}: SD3 LoRAs in the original MMDiT names (joint_blocks) are not supported "
                                 "yet; use one in diffusers' names (transformer.transformer_blocks…)")
        if not key.startswith(TEXT_PREFIXES):
            unread.append(key)
    return finish(name, family, deltas, unread, strength, sd)
