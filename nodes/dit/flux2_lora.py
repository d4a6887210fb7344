"""LoRAs on a Flux.2 transformer (LoraLoader / LoraLoaderModelOnly on a Flux.2 or Klein MODEL).

Key layouts read (low-rank ``up``/``down`` pairs with an optional ``alpha``, suffixes as in
:mod:`nodegraph_nodes.diffusion.lora`):

* diffusers / PEFT names: ``transformer.<module>.lora_A/lora_B.weight`` (or kohya-flattened
  ``lora_transformer_<module with _>``);
* Black Forest Labs' names as ComfyUI / ai-toolkit / kohya save them: ``diffusion_model.double_blocks.0.
  img_attn.qkv.lora_A.weight`` (also under ``model.diffusion_model.``, or ``lora_unet_double_blocks_0_
  img_attn_qkv``). Each original layer's ``up`` matrix goes through the same conversion as the weight it
  patches (diffusers' Flux.2 converter: the fused q/k/v rows split per projection, the final modulation's
  shift/scale halves swapped), the ``down`` matrix is shared.

The deltas are added to the transformer's weights for each run and removed after it.
"""

from __future__ import annotations

import torch

from nodegraph_nodes.diffusion.components import LoraPatch
from nodegraph_nodes.diffusion.lora import _module_names
from nodegraph_nodes.dit.lora_common import TEXT_PREFIXES, diffusers_weight, finish, lora_layers

ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "lora_unet_")
DOUBLE_LAYERS = ("img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2",
                 "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2")
TOP_LAYERS = ("img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "guidance_in.in_layer",
              "guidance_in.out_layer", "double_stream_modulation_img.lin", "double_stream_modulation_txt.lin",
              "single_stream_modulation.lin", "final_layer.linear", "final_layer.adaLN_modulation.1")


def original_layers(cfg) -> dict[str, str]:
    """BFL layer names of a transformer with ``cfg`` (dotted and kohya-flattened) → dotted."""
    names = list(TOP_LAYERS)
    names += [f"double_blocks.{i}.{n}" for i in range(int(cfg.num_layers)) for n in DOUBLE_LAYERS]
    names += [f"single_blocks.{i}.{n}" for i in range(int(cfg.num_single_layers)) for n in ("linear1", "linear2")]
    return {**{n: n for n in names}, **{n.replace(".", "_"): n for n in names}}


def _convert_up(layer: str, up: torch.Tensor) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    return convert_flux2_transformer_checkpoint_to_diffusers({layer + ".weight": up})


def flux2_lora_patch(net: torch.nn.Module, sd: dict, strength: float, name: str) -> LoraPatch:
    """The deltas of LoRA ``sd`` on the ``Flux2Transformer2DModel`` ``net``."""
    modules = _module_names(net, "unet")
    original = original_layers(net.config)
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unread = []
    for key, up, down, scale in lora_layers(sd):
        target = diffusers_weight(key, modules)
        if target is not None:
            deltas[target] = (up, down, scale)
            continue
        prefix = next((p for p in ORIGINAL_PREFIXES if key.startswith(p)), None)
        if prefix is not None and key[len(prefix):] in original:
            for target, up_part in _convert_up(original[key[len(prefix):]], up).items():
                deltas[target] = (up_part, down, scale)
            continue
        if not key.startswith(TEXT_PREFIXES):
            unread.append(key)
    return finish(name, "Flux.2", deltas, unread, strength, sd)
