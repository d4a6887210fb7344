"""LoRAs on a FLUX.3 transformer (LoraLoader / LoraLoaderModelOnly on a FLUX.3 MODEL).

Key layouts read (low-rank ``up``/``down`` pairs with an optional ``alpha``, suffixes as in
:mod:`nodegraph_nodes.diffusion.lora`):

* diffusers / PEFT names: ``transformer.<module>.lora_A/lora_B.weight`` (or kohya-flattened
  ``lora_transformer_<module with _>``);
* Black Forest Labs' names as ComfyUI / ai-toolkit save them: ``diffusion_model.single_blocks.0.q_proj.lora_A.weight``
  (also under ``model.diffusion_model.``): each layer's ``up`` matrix is renamed by the same conversion as the weight
  it patches (diffusers' FLUX.3 single-file converter; the final modulation's shift/scale halves swapped), the
  ``down`` matrix is shared. diffusers' ``Flux3LoraLoaderMixin`` reads the block layers of this layout the same way.

The deltas are added to the transformer's weights for each run and removed after it.
"""

from __future__ import annotations

import torch

from nodegraph_nodes.diffusion.components import LoraPatch
from nodegraph_nodes.diffusion.lora import _module_names
from nodegraph_nodes.dit.lora_common import TEXT_PREFIXES, finish, lora_layers

DIFFUSERS_PREFIXES = ("transformer.", "lora_transformer_")
ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _converted(layer: str, up: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """The diffusers module an original (BFL) ``layer`` is, with ``up`` converted as its weight would be."""
    from diffusers.loaders.single_file_utils import convert_flux3_transformer_checkpoint_to_diffusers

    out = convert_flux3_transformer_checkpoint_to_diffusers({layer + ".weight": up})
    if len(out) != 1:
        return None
    (key, value), = out.items()
    return (key[:-len(".weight")], value) if key.endswith(".weight") else None


def flux3_lora_patch(net: torch.nn.Module, sd: dict, strength: float, name: str) -> LoraPatch:
    """The deltas of LoRA ``sd`` on the ``Flux3Transformer2DModel`` ``net``."""
    modules = _module_names(net, "unet")
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    unread = []
    for key, up, down, scale in lora_layers(sd):
        prefix = next((p for p in DIFFUSERS_PREFIXES if key.startswith(p)), None)
        if prefix is not None and key[len(prefix):] in modules:
            deltas[modules[key[len(prefix):]] + ".weight"] = (up, down, scale)
            continue
        prefix = next((p for p in ORIGINAL_PREFIXES if key.startswith(p)), None)
        converted = _converted(key[len(prefix):], up) if prefix is not None else None
        if converted is not None and converted[0] in modules:
            deltas[modules[converted[0]] + ".weight"] = (converted[1], down, scale)
            continue
        if not key.startswith(TEXT_PREFIXES):
            unread.append(key)
    return finish(name, "FLUX.3", deltas, unread, strength, sd)
